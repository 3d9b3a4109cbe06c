//! The node's workers: the holdings reporter (this node's `HoldingsChanged` commands, batched)
//! and the resync worker (fetch what this node should hold; keep holdings equal to the disk).
//!
//! The resync worker's queue is the state machine itself: every blob record whose holders lack
//! this node is work to do, so the queue survives restarts and a healed partition without a
//! file of its own. Each round walks the records in pages; failures back off exponentially
//! per digest (1 s doubling to 5 min, in memory: a restart retries at once).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use wharf_meta::{Command, CommandResult, HeldBlob, ProposeContext, RequestId};
use wharf_types::Digest;

use crate::transfer::HoldingChange;
use crate::{ReplicationError, Replicator};

/// How often the worker looks for work when nothing was applied meanwhile.
const IDLE_ROUND: Duration = Duration::from_secs(5);
/// How often it checks the round's trigger (a newly applied index).
const POLL: Duration = Duration::from_millis(200);
/// How often held copies are checked against the disk (anti-entropy).
const DISK_CHECK_EVERY: Duration = Duration::from_secs(60);
/// How often the leader looks for blobs below `min_copies`.
const REPAIR_EVERY: Duration = Duration::from_secs(2);
/// Fetches one round runs at once.
const CONCURRENT_FETCHES: usize = 4;
/// Records read per page.
const PAGE: usize = 1000;
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// Changes gathered into one command.
const BATCH_MAX: usize = 512;
/// How long the reporter waits for more changes before proposing.
const BATCH_WINDOW: Duration = Duration::from_millis(20);

impl Replicator {
    /// Queues a change of this node's holdings for the reporter.
    pub(crate) fn report(&self, change: HoldingChange) {
        let _ = self.holdings.send(change);
    }

    async fn propose_holdings(
        &self,
        added: Vec<HeldBlob>,
        removed: Vec<Digest>,
    ) -> Result<(), ReplicationError> {
        let ctx = ProposeContext {
            request_id: RequestId(format!(
                "holdings-{}-{:032x}",
                self.node_id,
                rand::random::<u128>()
            )),
            actor: format!("node-{}", self.node_id),
        };
        let command = Command::HoldingsChanged {
            node_id: self.node_id,
            added,
            removed,
        };
        match self.meta.propose(ctx, command).await? {
            CommandResult::Rejected(r) => Err(ReplicationError::Setup(format!(
                "holdings not recorded: {}: {}",
                r.code, r.message
            ))),
            _ => Ok(()),
        }
    }

    /// Records at once that this node no longer holds `digest` (before its file changes).
    pub(crate) async fn remove_holding_now(&self, digest: &Digest) -> Result<(), ReplicationError> {
        self.propose_holdings(Vec::new(), vec![digest.clone()])
            .await
    }
}

/// Proposes this node's holding changes in batches; a batch that fails is retried (with what
/// arrived meanwhile) until it is committed.
pub(crate) async fn report_holdings(
    me: Weak<Replicator>,
    mut changes: tokio::sync::mpsc::UnboundedReceiver<HoldingChange>,
) {
    let mut added: HashMap<Digest, HeldBlob> = HashMap::new();
    let mut removed: HashMap<Digest, ()> = HashMap::new();
    let mut backoff = BACKOFF_MIN;
    loop {
        if added.is_empty() && removed.is_empty() {
            match changes.recv().await {
                Some(change) => take(change, &mut added, &mut removed),
                None => return,
            }
        }
        let deadline = tokio::time::Instant::now() + BATCH_WINDOW;
        while added.len() + removed.len() < BATCH_MAX {
            match tokio::time::timeout_at(deadline, changes.recv()).await {
                Ok(Some(change)) => take(change, &mut added, &mut removed),
                Ok(None) | Err(_) => break,
            }
        }
        let Some(replicator) = me.upgrade() else {
            return;
        };
        // At most BATCH_MAX per command, even after a long outage piled changes up.
        let batch_added: Vec<HeldBlob> = added.values().take(BATCH_MAX).cloned().collect();
        let batch_removed: Vec<Digest> = removed
            .keys()
            .take(BATCH_MAX.saturating_sub(batch_added.len()))
            .cloned()
            .collect();
        match replicator
            .propose_holdings(batch_added.clone(), batch_removed.clone())
            .await
        {
            Ok(()) => {
                for blob in &batch_added {
                    added.remove(&blob.digest);
                }
                for digest in &batch_removed {
                    removed.remove(digest);
                }
                backoff = BACKOFF_MIN;
            }
            Err(e) => {
                tracing::debug!(error = %e, "holdings not recorded yet; retrying");
                drop(replicator);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

fn take(
    change: HoldingChange,
    added: &mut HashMap<Digest, HeldBlob>,
    removed: &mut HashMap<Digest, ()>,
) {
    match change {
        HoldingChange::Add(blob) => {
            removed.remove(&blob.digest);
            added.insert(blob.digest.clone(), blob);
        }
        HoldingChange::Remove(digest) => {
            added.remove(&digest);
            removed.insert(digest, ());
        }
    }
}

/// A page of blob records and whether more follow.
type RecordPage = (Vec<(Digest, wharf_meta::records::BlobRecord)>, bool);

/// Per-digest retry state of the resync worker.
struct Backoff {
    next_try: Instant,
    wait: Duration,
}

/// The resync worker: after every applied change (and every few seconds), fetches the blobs
/// this node should hold and lacks; about once a minute, checks that what its holdings claim
/// is on its disk, and records what the disk has that its holdings lack.
pub(crate) async fn run(me: Weak<Replicator>) {
    let mut seen_index = None;
    let mut last_round = Instant::now() - IDLE_ROUND;
    let mut last_disk_check = Instant::now() - DISK_CHECK_EVERY;
    let mut backoff: HashMap<Digest, Backoff> = HashMap::new();
    let mut tls_files = None;
    loop {
        tokio::time::sleep(POLL).await;
        let Some(replicator) = me.upgrade() else {
            return;
        };
        replicator.refresh_server_tls(&mut tls_files);
        let index = replicator.cluster.applied_index();
        if index == seen_index && last_round.elapsed() < IDLE_ROUND {
            continue;
        }
        seen_index = index;
        last_round = Instant::now();
        let check_disk = last_disk_check.elapsed() >= DISK_CHECK_EVERY;
        if check_disk {
            last_disk_check = Instant::now();
        }
        if let Err(e) = replicator.resync_round(&mut backoff, check_disk).await {
            tracing::warn!(error = %e, "resync round failed");
        }
    }
}

/// The leader's repair worker, in its own task (see [`Replicator::repair_round`]).
pub(crate) async fn repair(me: Weak<Replicator>) {
    loop {
        tokio::time::sleep(REPAIR_EVERY).await;
        let Some(replicator) = me.upgrade() else {
            return;
        };
        if replicator.cluster.is_leader()
            && let Err(e) = replicator.repair_round().await
        {
            tracing::warn!(error = %e, "repair round failed");
        }
    }
}

/// The scrubber, in its own task: a full pass every `scrub_interval`.
pub(crate) async fn scrub(me: Weak<Replicator>) {
    let Some(every) = me.upgrade().and_then(|r| r.scrub_interval) else {
        return;
    };
    loop {
        tokio::time::sleep(every).await;
        let Some(replicator) = me.upgrade() else {
            return;
        };
        if let Err(e) = replicator.scrub().await {
            tracing::warn!(error = %e, "scrub failed");
        }
    }
}

impl Replicator {
    /// The leader's repair worker: every blob that some member holds but fewer than
    /// `min_copies` members do gets copies — pushed from here if this node holds it, else
    /// fetched here (one more copy per round until enough). Eager blobs are also fetched by
    /// every node's resync; this matters most for `on-demand` repositories after a node died
    /// or lost a copy.
    async fn repair_round(self: &Arc<Self>) -> Result<(), ReplicationError> {
        let members = self.cluster.members().len();
        let live = self.cluster.live_members();
        let needed = crate::placement::min_copies(self.min_copies, members);
        let mut short = Vec::new();
        self.each_record(|digest, record| {
            // A copy pushed for an upload that was never committed: no repository needs it.
            if record.regions.as_ref().is_some_and(|r| r.is_empty()) {
                return;
            }
            let copies = live.iter().filter(|id| record.holders.contains(id)).count();
            if copies > 0 && copies < needed {
                let mut record = record.clone();
                // Copies on a member that is down do not count while it is down.
                record.holders.retain(|id| live.contains(id));
                short.push((digest.clone(), record));
            }
        })?;
        for (digest, record) in short {
            let result = if !record.stores_in(&self.region) {
                // Data residency: a live member of the blob's regions that lacks it fetches it.
                self.ask_region_to_copy(&digest, &record, &live).await
            } else if record.holders.contains(&self.node_id) {
                match self.blobs.info(&digest).await? {
                    Some(info) => self
                        .ensure_copies(&info, &record.holders, &residency(&record))
                        .await
                        .map(|_| ()),
                    None => self.ensure_local(&digest, &record).await,
                }
            } else {
                self.ensure_local(&digest, &record).await
            };
            match result {
                Ok(()) => {
                    self.counters.repairs.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(%digest, "repaired a blob below min_copies");
                }
                Err(e) => {
                    tracing::debug!(%digest, error = %e, "repair failed; retrying next round")
                }
            }
        }
        Ok(())
    }

    /// Asks the live members of `record`'s regions that lack it, one at a time, to fetch it
    /// (the repair of a blob this node may not store).
    async fn ask_region_to_copy(
        &self,
        digest: &Digest,
        record: &wharf_meta::records::BlobRecord,
        live: &[wharf_types::NodeId],
    ) -> Result<(), ReplicationError> {
        let candidates: Vec<_> = self
            .cluster
            .members()
            .into_iter()
            .filter(|(id, info)| {
                live.contains(id) && !record.holders.contains(id) && record.stores_in(&info.region)
            })
            .map(|(id, _)| id)
            .collect();
        let mut last = ReplicationError::NoHolder(digest.clone());
        for peer in candidates {
            match self.ask_to_copy(peer, digest, record.size).await {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The scrubber: re-hashes every blob this node holds (each chunk and the whole digest);
    /// a corrupt copy is dropped from the holdings and replaced by a verified copy from a peer
    /// (DESIGN.md §1.4). Runs in the resync task, one blob at a time.
    async fn scrub(self: &Arc<Self>) -> Result<(), ReplicationError> {
        let mut after: Option<String> = None;
        let (mut checked, mut corrupt) = (0u64, 0u64);
        loop {
            let (page, more) = self.records_page(after.as_deref())?;
            for (digest, record) in &page {
                if !record.holders.contains(&self.node_id) {
                    continue;
                }
                checked += 1;
                self.counters.scrubbed.fetch_add(1, Ordering::Relaxed);
                match self.blobs.verify(digest).await {
                    Ok(_) | Err(wharf_blob::BlobError::NotFound) => {}
                    Err(wharf_blob::BlobError::Corrupt(c)) => {
                        corrupt += 1;
                        tracing::error!(%digest, reason = %c.reason, "scrubber found a corrupt copy");
                        self.drop_corrupt(digest).await;
                    }
                    Err(e) => tracing::warn!(%digest, error = %e, "scrubber could not read a blob"),
                }
            }
            after = page.last().map(|(d, _)| d.to_string());
            if !more || after.is_none() {
                break;
            }
        }
        tracing::info!(checked, corrupt, "scrub finished");
        Ok(())
    }

    /// Swaps the endpoint's server certificate after a rotation.
    fn refresh_server_tls(&self, seen: &mut Option<(String, String)>) {
        let Some(files) = self.security.files() else {
            return;
        };
        let current = (files.ca_pem.clone(), files.node_pem.clone());
        if seen.as_ref() == Some(&current) {
            return;
        }
        if seen.is_some() {
            match self.security.server_config(&self.windows) {
                Ok(config) => {
                    self.endpoint.set_server_config(Some(config));
                    tracing::info!("blob-transfer endpoint uses the rotated certificates");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "rotated certificates unusable for QUIC");
                    return;
                }
            }
        }
        *seen = Some(current);
    }

    async fn resync_round(
        self: &Arc<Self>,
        backoff: &mut HashMap<Digest, Backoff>,
        check_disk: bool,
    ) -> Result<(), ReplicationError> {
        let mut after: Option<String> = None;
        let mut wanted = Vec::new();
        let mut backlog = 0u64;
        loop {
            let (page, more) = self.records_page(after.as_deref())?;
            for (digest, record) in &page {
                let recorded = record.holders.contains(&self.node_id);
                if recorded && !check_disk {
                    continue;
                }
                let on_disk = match self.blobs.info(digest).await {
                    Ok(info) => info.filter(|i| i.size == record.size),
                    Err(_) => None,
                };
                // Not wanted everywhere (copies come from uploads, reads and repairs), or not
                // in this node's region (data residency).
                let wanted_here = !record.on_demand && record.stores_in(&self.region);
                match (recorded, on_disk) {
                    (true, Some(_)) => {}
                    (false, None) if !wanted_here => {}
                    (true, None) => {
                        tracing::warn!(%digest, "holdings say this node holds a blob its disk lacks; fetching it again");
                        self.report(HoldingChange::Remove(digest.clone()));
                        if wanted_here {
                            backlog += 1;
                            wanted.push((digest.clone(), record.clone()));
                        }
                    }
                    (false, Some(info)) => {
                        if info.chunk_root == record.chunk_root {
                            self.report(HoldingChange::Add(HeldBlob {
                                digest: info.digest,
                                size: info.size,
                                chunk_root: info.chunk_root,
                            }));
                        }
                    }
                    (false, None) => {
                        backlog += 1;
                        wanted.push((digest.clone(), record.clone()));
                    }
                }
            }
            after = page.last().map(|(d, _)| d.to_string());
            if !more || after.is_none() {
                break;
            }
        }
        self.counters.backlog.store(backlog, Ordering::Relaxed);
        let now = Instant::now();
        backoff.retain(|d, _| wanted.iter().any(|(w, _)| w == d));
        let due: Vec<_> = wanted
            .into_iter()
            .filter(|(d, _)| backoff.get(d).is_none_or(|b| b.next_try <= now))
            .collect();
        let results = futures::stream::iter(due)
            .map(|(digest, record)| {
                let me = Arc::clone(self);
                async move {
                    let result = me.ensure_local(&digest, &record).await;
                    (digest, result)
                }
            })
            .buffer_unordered(CONCURRENT_FETCHES);
        let results: Vec<_> = futures::StreamExt::collect(results).await;
        for (digest, result) in results {
            match result {
                Ok(()) => {
                    self.counters.resynced.fetch_add(1, Ordering::Relaxed);
                    backoff.remove(&digest);
                }
                Err(e) => {
                    let entry = backoff.entry(digest.clone()).or_insert(Backoff {
                        next_try: now,
                        wait: BACKOFF_MIN / 2,
                    });
                    entry.wait = (entry.wait * 2).clamp(BACKOFF_MIN, BACKOFF_MAX);
                    entry.next_try = Instant::now() + entry.wait;
                    tracing::debug!(%digest, error = %e, retry_in = ?entry.wait, "resync fetch failed");
                }
            }
        }
        Ok(())
    }
}

use futures::StreamExt as _;

/// Copies across the cluster, as this node's state records them.
impl Replicator {
    /// Per member: how many blobs it should hold but does not yet (those wanted everywhere
    /// that its region may store).
    pub fn backlog_by_member(
        &self,
    ) -> Result<std::collections::BTreeMap<wharf_types::NodeId, u64>, ReplicationError> {
        let members: Vec<_> = self
            .cluster
            .members()
            .into_iter()
            .map(|(id, info)| (id, info.region))
            .collect();
        let mut backlog: std::collections::BTreeMap<_, u64> =
            members.iter().map(|(id, _)| (*id, 0)).collect();
        self.each_record(|_, record| {
            if record.on_demand {
                return;
            }
            for (id, region) in &members {
                if !record.holders.contains(id)
                    && record.stores_in(region)
                    && let Some(n) = backlog.get_mut(id)
                {
                    *n += 1;
                }
            }
        })?;
        Ok(backlog)
    }

    /// How many blobs would be short of copies without `leaving` (removing it waits until this
    /// is 0): blobs it holds with fewer than `min_copies` (at least one) recorded copies on the
    /// other members, and blobs the others hold fewer than `min_copies` of (the leaving node's
    /// own copy may not be recorded yet).
    pub fn short_without(&self, leaving: wharf_types::NodeId) -> Result<u64, ReplicationError> {
        Ok(self.records_short_without(leaving)?.len() as u64)
    }

    fn records_short_without(
        &self,
        leaving: wharf_types::NodeId,
    ) -> Result<Vec<(Digest, wharf_meta::records::BlobRecord)>, ReplicationError> {
        let remaining: Vec<_> = self
            .cluster
            .members()
            .into_iter()
            .map(|(id, _)| id)
            .filter(|id| *id != leaving)
            .collect();
        let needed = crate::placement::min_copies(self.min_copies, remaining.len());
        let mut short = Vec::new();
        self.each_record(|digest, record| {
            // A copy pushed for an upload that was never committed: no repository needs it.
            if record.regions.as_ref().is_some_and(|r| r.is_empty()) {
                return;
            }
            let copies = remaining
                .iter()
                .filter(|id| record.holders.contains(id))
                .count();
            let held_by_leaving = record.holders.contains(&leaving);
            if (held_by_leaving && copies < needed.max(1)) || (copies > 0 && copies < needed) {
                short.push((digest.clone(), record.clone()));
            }
        })?;
        Ok(short)
    }

    /// Copies what would be short without `leaving` (for `wharf cluster remove`), as far as
    /// this node can: a blob it holds is pushed to other members (never to the leaving one),
    /// one it lacks and may store is fetched. Resync workers copy blobs wanted everywhere on
    /// their own; this also covers `on-demand` ones. Returns how many are still short.
    pub async fn copy_for_leaving(
        self: &Arc<Self>,
        leaving: wharf_types::NodeId,
    ) -> Result<std::collections::BTreeSet<Digest>, ReplicationError> {
        for (digest, record) in self.records_short_without(leaving)? {
            let result = match self.blobs.info(&digest).await? {
                Some(info) if record.holders.contains(&self.node_id) => self
                    .ensure_copies_without(
                        &info,
                        &record.holders,
                        &residency(&record),
                        Some(leaving),
                    )
                    .await
                    .map(|_| ()),
                _ if self.node_id != leaving && record.stores_in(&self.region) => {
                    self.ensure_local(&digest, &record).await
                }
                _ => continue,
            };
            if let Err(e) = result {
                tracing::info!(%digest, leaving, error = %e, "copying a blob off a leaving node failed; retrying");
            }
        }
        Ok(self
            .records_short_without(leaving)?
            .into_iter()
            .map(|(digest, _)| digest)
            .collect())
    }

    /// One page of blob records after `after` (a digest), from a fresh read of the state.
    fn records_page(&self, after: Option<&str>) -> Result<RecordPage, ReplicationError> {
        use redb::ReadableDatabase as _;
        let db = self.meta.state();
        let txn = db.begin_read().map_err(wharf_meta::MetaError::from)?;
        Ok(wharf_meta::query::blobs_after(&txn, after, PAGE)?)
    }

    fn each_record(
        &self,
        mut f: impl FnMut(&Digest, &wharf_meta::records::BlobRecord),
    ) -> Result<(), ReplicationError> {
        let mut after: Option<String> = None;
        loop {
            let (page, more) = self.records_page(after.as_deref())?;
            for (digest, record) in &page {
                f(digest, record);
            }
            after = page.last().map(|(d, _)| d.to_string());
            if !more || after.is_none() {
                return Ok(());
            }
        }
    }
}

/// A record's residency as [`Replicator::ensure_copies`] takes it (empty: anywhere).
fn residency(record: &wharf_meta::records::BlobRecord) -> std::collections::BTreeSet<String> {
    record.regions.clone().unwrap_or_default()
}
