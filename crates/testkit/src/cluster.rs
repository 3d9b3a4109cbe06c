//! An in-process cluster: N raft nodes of `wharf-cluster` on loopback gRPC, in one test
//! process, behind [`Net`] — a network layer that can cut links (partitions, one-way
//! isolation) and delay them. Nodes join the way real ones do (join token, learner, promote).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use wharf_cluster::{
    ClusterNode, LinkFilter, MembershipAction, NodeInfo, RaftTiming, StartMode, StartOptions,
};
use wharf_meta::{ProposeContext, RequestId};

/// Which links are cut or slow. Node ids on both ends.
#[derive(Default)]
pub struct Net {
    cut: RwLock<BTreeSet<(u64, u64)>>,
    delays: RwLock<BTreeMap<(u64, u64), Duration>>,
}

impl Net {
    /// Cuts every link between nodes of different groups, both ways. Nodes in no group keep
    /// their links.
    pub fn partition(&self, groups: &[&[u64]]) {
        let mut cut = self.cut.write().unwrap_or_else(|p| p.into_inner());
        for (i, a) in groups.iter().enumerate() {
            for b in groups.iter().skip(i + 1) {
                for &x in *a {
                    for &y in *b {
                        cut.insert((x, y));
                        cut.insert((y, x));
                    }
                }
            }
        }
    }

    /// Cuts calls that `from` makes to `to` (its answers to calls from `to` still get through).
    pub fn cut_one_way(&self, from: u64, to: u64) {
        self.cut
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert((from, to));
    }

    /// Adds `delay` to every call from `from` to `to`.
    pub fn delay(&self, from: u64, to: u64, delay: Duration) {
        self.delays
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert((from, to), delay);
    }

    /// Restores every link and removes every delay.
    pub fn heal(&self) {
        self.cut.write().unwrap_or_else(|p| p.into_inner()).clear();
        self.delays
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

impl LinkFilter for Net {
    fn allows(&self, from: u64, to: u64) -> bool {
        !self
            .cut
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&(from, to))
    }

    fn delay(&self, from: u64, to: u64) -> Duration {
        self.delays
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(from, to))
            .copied()
            .unwrap_or_default()
    }
}

/// Loopback timing fast enough for tests.
pub fn fast_timing() -> RaftTiming {
    RaftTiming {
        heartbeat: Duration::from_millis(100),
        election_timeout_min: Duration::from_millis(500),
        election_timeout_max: Duration::from_millis(1000),
        ..RaftTiming::default()
    }
}

/// A propose context with a given request id.
pub fn ctx(request_id: &str) -> ProposeContext {
    ProposeContext {
        request_id: RequestId(request_id.to_string()),
        actor: "testkit".to_string(),
    }
}

/// N in-process nodes behind one [`Net`]. Node ids are 1..=N.
pub struct InProcessCluster {
    pub net: Arc<Net>,
    nodes: BTreeMap<u64, ClusterNode>,
    addrs: BTreeMap<u64, SocketAddr>,
    dirs: BTreeMap<u64, tempfile::TempDir>,
    timing: RaftTiming,
}

impl InProcessCluster {
    /// Starts `n` voters: node 1 creates the cluster, the others join with tokens and are
    /// promoted once caught up.
    pub async fn start(n: usize, timing: RaftTiming) -> InProcessCluster {
        let mut cluster = InProcessCluster {
            net: Arc::new(Net::default()),
            nodes: BTreeMap::new(),
            addrs: BTreeMap::new(),
            dirs: BTreeMap::new(),
            timing,
        };
        cluster.launch(1, StartMode::Bootstrap).await;
        for _ in 1..n {
            let id = cluster.join().await;
            cluster.promote(id).await;
        }
        cluster
    }

    fn info(&self, id: u64) -> NodeInfo {
        NodeInfo {
            addr: self.addrs[&id].to_string(),
            region: format!("region-{id}"),
            client_url: String::new(),
            blob_addr: String::new(),
        }
    }

    async fn launch(&mut self, id: u64, mode: StartMode) {
        let addr = *self.addrs.entry(id).or_insert_with(free_addr);
        let dir = self
            .dirs
            .entry(id)
            .or_insert_with(|| tempfile::tempdir().expect("temp dir"));
        let node = ClusterNode::start(StartOptions {
            data_dir: dir.path().to_path_buf(),
            node_id: id,
            cluster_id: "testkit".to_string(),
            info: NodeInfo {
                addr: addr.to_string(),
                region: format!("region-{id}"),
                client_url: String::new(),
                blob_addr: String::new(),
            },
            listen: addr,
            timing: self.timing.clone(),
            mode,
            links: Some(self.net.clone() as Arc<dyn LinkFilter>),
            tls: None,
        })
        .await
        .expect("node starts");
        self.nodes.insert(id, node);
    }

    /// Joins a new node as a learner; returns its id.
    pub async fn join(&mut self) -> u64 {
        let any = *self.nodes.keys().next().expect("a running node");
        let token = self.nodes[&any]
            .create_join_token(
                ctx(&format!("token-{}", self.addrs.len())),
                Duration::from_secs(60),
            )
            .await
            .expect("join token");
        let next = self.addrs.keys().max().copied().unwrap_or(0) + 1;
        let addr = free_addr();
        self.addrs.insert(next, addr);
        let via = self.nodes[&any].cluster_addr().to_string();
        let nonce = format!("testkit-nonce-{next}-0123456789");
        let ticket = wharf_cluster::join(
            &via,
            &token,
            &nonce,
            &self.info(next),
            Duration::from_secs(10),
        )
        .await
        .expect("join");
        assert_eq!(ticket.node_id, next, "ids are minted in order");
        self.launch(next, StartMode::Member).await;
        next
    }

    /// Promotes a learner, retrying while it catches up.
    pub async fn promote(&self, id: u64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let via = self.node(*self.nodes.keys().next().expect("a node"));
            let plan = via
                .change_membership(MembershipAction::Promote, id, None, true)
                .await;
            if let Ok(plan) = plan
                && via
                    .change_membership(
                        MembershipAction::Promote,
                        id,
                        Some(plan.membership_index),
                        false,
                    )
                    .await
                    .is_ok()
            {
                return;
            }
            assert!(Instant::now() < deadline, "node {id} never became a voter");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A running node.
    pub fn node(&self, id: u64) -> &ClusterNode {
        self.nodes
            .get(&id)
            .unwrap_or_else(|| panic!("node {id} is not running"))
    }

    /// Ids of the running nodes.
    pub fn running(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// Waits until the running nodes in `among` agree on a leader from `among`.
    pub async fn leader_among(&self, among: &[u64]) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let views: BTreeSet<Option<u64>> = among
                .iter()
                .filter_map(|id| self.nodes.get(id))
                .map(|n| n.current_leader())
                .collect();
            if views.len() == 1
                && let Some(Some(leader)) = views.into_iter().next()
                && among.contains(&leader)
            {
                return leader;
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader among {among:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops a node (its directory stays for a restart).
    pub async fn stop(&mut self, id: u64) {
        if let Some(node) = self.nodes.remove(&id) {
            node.shutdown().await;
        }
    }

    /// Starts a stopped node again from its directory.
    pub async fn restart(&mut self, id: u64) {
        self.launch(id, StartMode::Member).await;
    }

    /// Stops every node.
    pub async fn shutdown(&mut self) {
        for id in self.running() {
            self.stop(id).await;
        }
    }
}

fn free_addr() -> SocketAddr {
    crate::ports::free_loopback_addr()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use redb::ReadableDatabase;
    use wharf_meta::command::RepoSettings;
    use wharf_meta::{Command, CommandResult, MetaError, MetaHandle, query};
    use wharf_types::{Format, RepoName};

    use super::*;

    fn create_repo(name: &str) -> Command {
        Command::CreateRepo {
            name: RepoName::new(name).unwrap(),
            settings: RepoSettings {
                format: Format::Generic,
                immutable: true,
                allow_sparse_index: false,
                consistency: wharf_meta::Consistency::Strong,
                replication: Default::default(),
                regions: Default::default(),
                allow_unpublish: false,
            },
            if_absent: false,
        }
    }

    fn has_repo(node: &ClusterNode, name: &str) -> bool {
        let txn = node.state().begin_read().unwrap();
        query::repo(&txn, &RepoName::new(name).unwrap())
            .unwrap()
            .is_some()
    }

    /// §1.6 with five voters: a minority {4, 5} cut off from the leader's majority refuses
    /// writes and strong reads with NO_QUORUM (not a timeout's OUTCOME_UNKNOWN), keeps
    /// answering local reads, and converges after the heal; the majority keeps writing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_minority_partition_refuses_and_then_converges() {
        let mut c = InProcessCluster::start(5, fast_timing()).await;
        let leader = c.leader_among(&[1, 2, 3, 4, 5]).await;
        c.node(5)
            .propose(ctx("before"), create_repo("before"))
            .await
            .unwrap();
        c.node(5).read_barrier().await.unwrap();
        assert!(has_repo(c.node(5), "before"));

        let majority: Vec<u64> = [1, 2, 3, 4, 5]
            .into_iter()
            .filter(|id| *id == leader || ![4, 5].contains(id))
            .take(3)
            .collect();
        let minority: Vec<u64> = [1, 2, 3, 4, 5]
            .into_iter()
            .filter(|id| !majority.contains(id))
            .collect();
        c.net.partition(&[&majority, &minority]);

        let m = minority[0];
        let started = Instant::now();
        let err = c
            .node(m)
            .propose(ctx("cut-off"), create_repo("cut-off"))
            .await
            .unwrap_err();
        assert!(matches!(err, MetaError::NoQuorum(_)), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "took {:?}",
            started.elapsed()
        );
        let err = c.node(m).read_barrier().await.unwrap_err();
        assert!(matches!(err, MetaError::NoQuorum(_)), "{err}");
        // Local state still answers what cannot be stale.
        assert!(has_repo(c.node(m), "before"));

        for i in 0..10 {
            let via = majority[i % majority.len()];
            c.node(via)
                .propose(
                    ctx(&format!("during-{i}")),
                    create_repo(&format!("during-{i}")),
                )
                .await
                .unwrap();
        }
        assert!(!has_repo(c.node(m), "during-9"));

        c.net.heal();
        let deadline = Instant::now() + Duration::from_secs(20);
        for id in minority {
            loop {
                if c.node(id).read_barrier().await.is_ok() && has_repo(c.node(id), "during-9") {
                    break;
                }
                assert!(Instant::now() < deadline, "node {id} did not converge");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert!(
                !has_repo(c.node(id), "cut-off"),
                "a refused write was applied"
            );
        }
        c.shutdown().await;
    }

    /// The leader is cut off with one follower: the other three elect a new leader and keep
    /// writing; the old leader refuses writes; after the heal a write retried with the same
    /// request id applies once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn an_isolated_leader_is_replaced_and_retries_apply_once() {
        let mut c = InProcessCluster::start(5, fast_timing()).await;
        let old = c.leader_among(&[1, 2, 3, 4, 5]).await;
        let buddy = if old == 1 { 2 } else { 1 };
        let rest: Vec<u64> = (1..=5).filter(|id| *id != old && *id != buddy).collect();
        c.net.partition(&[&[old, buddy], &rest]);
        let new = c.leader_among(&rest).await;
        assert_ne!(new, old);

        let refused = c
            .node(old)
            .propose(ctx("on-old"), create_repo("on-old"))
            .await;
        assert!(
            matches!(
                refused,
                Err(MetaError::NoQuorum(_) | MetaError::OutcomeUnknown(_))
            ),
            "{refused:?}"
        );
        let first = c
            .node(rest[0])
            .propose(ctx("retried"), create_repo("retried"))
            .await
            .unwrap();

        c.net.heal();
        // The same request again, through the old leader: the stored result, not a second apply
        // (a second apply of a non-idempotent create would be REPOSITORY_EXISTS).
        let deadline = Instant::now() + Duration::from_secs(20);
        let again = loop {
            match c
                .node(old)
                .propose(ctx("retried"), create_repo("retried"))
                .await
            {
                Ok(r) => break r,
                Err(e) => {
                    assert!(Instant::now() < deadline, "{e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        assert_eq!(again, first);
        assert!(matches!(first, CommandResult::Ok(_)), "{first:?}");
        // Whatever the old leader held uncommitted during the partition was discarded or
        // committed once: every node agrees after a barrier.
        for id in c.running() {
            c.node(id).read_barrier().await.unwrap();
        }
        let on_old: BTreeSet<bool> = c
            .running()
            .iter()
            .map(|id| has_repo(c.node(*id), "on-old"))
            .collect();
        assert_eq!(on_old.len(), 1, "nodes disagree about on-old");
        c.shutdown().await;
    }

    /// Slow links (30 ms each way, like a long-distance link) slow writes down but keep the
    /// cluster writing from every node, with no leader churn.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn delayed_links_slow_writes_without_leader_churn() {
        let mut c = InProcessCluster::start(3, fast_timing()).await;
        let leader = c.leader_among(&[1, 2, 3]).await;
        let term = c.node(leader).current_term();
        for a in 1..=3 {
            for b in 1..=3 {
                if a != b {
                    c.net.delay(a, b, Duration::from_millis(30));
                }
            }
        }
        let started = Instant::now();
        for n in 0..12u64 {
            let via = 1 + n % 3;
            c.node(via)
                .propose(ctx(&format!("slow-{n}")), create_repo(&format!("slow-{n}")))
                .await
                .unwrap();
        }
        // Every write waits for at least one delayed append (30 ms).
        assert!(
            started.elapsed() >= Duration::from_millis(12 * 30),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(
            c.node(leader).current_term(),
            term,
            "the delay caused an election"
        );
        c.net.heal();
        c.shutdown().await;
    }

    /// DESIGN.md §1.1: the cluster version rises by itself once every member reported
    /// supporting it; from then on every node hashes its state at each checkpoint index and
    /// reports it, and the reports of all three nodes agree.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn nodes_compare_state_hashes_at_checkpoints() {
        use wharf_meta::versions::{self, SUPPORTED_CLUSTER_VERSION};
        let timing = RaftTiming {
            snapshot_every_entries: 25,
            ..fast_timing()
        };
        let mut c = InProcessCluster::start(3, timing).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while c.node(3).versions().unwrap().0 < SUPPORTED_CLUSTER_VERSION {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the cluster version was never raised"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for i in 0..60u64 {
            c.node(1 + i % 3)
                .propose(ctx(&format!("w{i}")), create_repo(&format!("r{i}")))
                .await
                .unwrap();
        }
        let complete = loop {
            let txn = c.node(1).state().begin_read().unwrap();
            let checkpoints = versions::checkpoints(&txn).unwrap();
            if let Some(cp) = checkpoints.into_iter().find(|cp| cp.hashes.len() == 3) {
                break cp;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no checkpoint was reported by all three nodes"
            );
            drop(txn);
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let first = complete.hashes.values().next().unwrap();
        assert!(complete.hashes.values().all(|h| h == first), "{complete:?}");
        for id in [1, 2, 3] {
            assert_eq!(c.node(id).versions().unwrap().1, None, "node {id}");
        }
        c.shutdown().await;
    }
}
