//! What every node does in the background besides raft (DESIGN.md §1.1, see
//! [`wharf_meta::versions`]):
//!
//! - report the cluster version its binary supports, and as leader raise the cluster version
//!   once every member supports it ([`keep_versions`]);
//! - hash the state at every checkpoint index and report it, so that nodes compare their
//!   states at equal indexes ([`report_checkpoints`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use redb::ReadableDatabase;
use tokio::sync::watch;
use wharf_meta::command::Command;
use wharf_meta::versions::{self, SUPPORTED_CLUSTER_VERSION};
use wharf_meta::{ENVELOPE_VERSION, Envelope, RequestId};

use crate::core::Core;

/// How often a node looks at its reported and the cluster's version.
const VERSION_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// How long a housekeeping proposal may take.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a proposal waits for a leader to appear.
const NO_LEADER_WAIT: Duration = Duration::from_secs(1);

/// A request id for one attempt: these commands are idempotent, and a fresh id per attempt
/// keeps a rejected attempt's stored answer from being returned to every later one.
fn attempt_id(what: &str, core: &Core) -> String {
    format!(
        "{what}-{}-{}",
        core.node_id,
        hex::encode(rand::random::<[u8; 8]>())
    )
}

async fn propose(core: &Core, request_id: String, command: Command) -> Result<(), String> {
    let envelope = Envelope {
        version: ENVELOPE_VERSION,
        request_id: RequestId(request_id),
        proposer: core.node_id,
        actor: "cluster".to_string(),
        timestamp_ms: crate::node::now_ms(),
        command,
    };
    let deadline = Instant::now() + PROPOSE_TIMEOUT;
    match core.propose(envelope, deadline, NO_LEADER_WAIT).await {
        Ok(wharf_meta::CommandResult::Rejected(r)) => Err(r.message),
        Ok(_) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// What the local state says about versions: this node's report and the cluster's version,
/// and whether every member supports this binary's version.
fn version_view(core: &Core, db: &redb::Database) -> Result<(Option<u32>, u32, bool), String> {
    let txn = db.begin_read().map_err(|e| e.to_string())?;
    let mine = versions::node_version(&txn, core.node_id).map_err(|e| e.to_string())?;
    let running = versions::cluster_version(&txn).map_err(|e| e.to_string())?;
    let members: Vec<_> = core
        .metrics()
        .membership_config
        .membership()
        .nodes()
        .map(|(id, _)| *id)
        .collect();
    let mut all_support = true;
    for id in members {
        let supported = versions::node_version(&txn, id).map_err(|e| e.to_string())?;
        all_support &= supported.is_some_and(|v| v >= SUPPORTED_CLUSTER_VERSION);
    }
    Ok((mine, running, all_support))
}

/// A cluster whose only member is this node reports and raises its version at once, before it
/// serves anything: a fresh `wharf dev` (or `cluster init`) runs its binary's cluster version
/// from its first request. A failure is only logged; [`keep_versions`] keeps trying.
pub(crate) async fn raise_alone(core: &Core, db: &redb::Database) {
    let (mine, running, _) = match version_view(core, db) {
        Ok(view) => view,
        Err(e) => return tracing::warn!("cannot read cluster versions: {e}"),
    };
    if mine != Some(SUPPORTED_CLUSTER_VERSION) {
        let report = Command::ReportNodeVersion {
            node_id: core.node_id,
            supported: SUPPORTED_CLUSTER_VERSION,
        };
        if let Err(e) = propose(core, attempt_id("node-version", core), report).await {
            return tracing::warn!("cannot report this node's version: {e}");
        }
    }
    if running < SUPPORTED_CLUSTER_VERSION {
        let raise = Command::SetClusterVersion {
            version: SUPPORTED_CLUSTER_VERSION,
        };
        if let Err(e) = propose(core, attempt_id("cluster-version", core), raise).await {
            tracing::warn!("cannot raise the cluster version: {e}");
        }
    }
}

/// Reports this node's supported version until it is recorded; while leading, raises the
/// cluster version once every member supports it. Ends when `stop` turns true.
pub(crate) async fn keep_versions(
    core: Arc<Core>,
    db: Arc<redb::Database>,
    mut stop: watch::Receiver<bool>,
) {
    // The first look comes at once and a successful report is followed by another look at
    // once, so a fresh cluster (`wharf dev`) runs its binary's version within moments of start.
    let mut pause = Duration::ZERO;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(pause) => {}
        }
        if *stop.borrow() {
            return;
        }
        pause = VERSION_CHECK_INTERVAL;
        // A node still catching up would see its own earlier report only later: wait.
        if !core.is_caught_up() {
            continue;
        }
        let (mine, running, all_support) = match version_view(&core, &db) {
            Ok(view) => view,
            Err(e) => {
                tracing::warn!("cannot read cluster versions: {e}");
                continue;
            }
        };
        if mine != Some(SUPPORTED_CLUSTER_VERSION) {
            let report = Command::ReportNodeVersion {
                node_id: core.node_id,
                supported: SUPPORTED_CLUSTER_VERSION,
            };
            let proposed = tokio::select! {
                _ = stop.changed() => return,
                proposed = propose(&core, attempt_id("node-version", &core), report) => proposed,
            };
            match proposed {
                Ok(()) => pause = Duration::ZERO,
                Err(e) => tracing::debug!("cannot report this node's version yet: {e}"),
            }
            continue;
        }
        let leads = core.metrics().current_leader == Some(core.node_id);
        if leads && running < SUPPORTED_CLUSTER_VERSION && all_support {
            let raise = Command::SetClusterVersion {
                version: SUPPORTED_CLUSTER_VERSION,
            };
            let proposed = tokio::select! {
                _ = stop.changed() => return,
                proposed = propose(&core, attempt_id("cluster-version", &core), raise) => proposed,
            };
            match proposed {
                Ok(()) => tracing::info!(
                    version = SUPPORTED_CLUSTER_VERSION,
                    "every member supports the new cluster version"
                ),
                Err(e) => tracing::debug!("cannot raise the cluster version yet: {e}"),
            }
        }
    }
}

/// Hashes the state at each checkpoint the state machine hands over and reports it. Ends when
/// the state machine goes away.
pub(crate) async fn report_checkpoints(
    core: Arc<Core>,
    mut taken: tokio::sync::mpsc::Receiver<(u64, redb::ReadTransaction)>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (index, txn) = tokio::select! {
            _ = stop.changed() => return,
            taken = taken.recv() => match taken {
                Some(taken) => taken,
                None => return,
            },
        };
        let hashed = tokio::task::spawn_blocking(move || {
            let running = versions::cluster_version(&txn)?;
            let (applied, sha256) = wharf_meta::query::state_hash(&txn)?;
            Ok::<_, wharf_meta::MetaError>((running, applied, sha256))
        })
        .await;
        let (running, applied, sha256) = match hashed {
            Ok(Ok(hashed)) => hashed,
            Ok(Err(e)) => {
                tracing::warn!(index, "cannot hash the state at a checkpoint: {e}");
                continue;
            }
            Err(e) => {
                tracing::warn!(index, "cannot hash the state at a checkpoint: {e}");
                continue;
            }
        };
        let report = Command::ReportStateHash {
            node_id: core.node_id,
            index,
            sha256,
        };
        if applied != Some(index) || running < report.since_version() {
            // Not yet allowed by the cluster version (or not the state it claims to be).
            continue;
        }
        let id = format!("state-hash-{}-{index}", core.node_id);
        let proposed = tokio::select! {
            _ = stop.changed() => return,
            proposed = propose(&core, id, report) => proposed,
        };
        if let Err(e) = proposed {
            tracing::warn!(index, "cannot report the state hash of a checkpoint: {e}");
        }
    }
}
