//! [`ClusterNode`]: one openraft node over the redb log store and state machine of
//! `wharf-meta`, and the [`MetaHandle`] upper layers hold.
//!
//! ```text
//! <data_dir>/raft/log.redb     raft log + vote + committed      (wharf_meta::log_store)
//! <data_dir>/raft/state.redb   state tables + last applied      (wharf_meta::state_machine)
//! <data_dir>/raft/snapshot/    current state snapshot
//! ```
//!
//! Errors keep what the client needs to know apart (DESIGN.md §1.2): a proposal that never
//! reached the log is [`MetaError::NoQuorum`], one that may have reached it is
//! [`MetaError::OutcomeUnknown`] (retrying with the same request id is safe), and a broken node
//! is [`MetaError::Fatal`].

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::async_runtime::watch::WatchReceiver;
use openraft::errors::{
    ClientWriteError, Fatal, InitializeError, LinearizableReadError, RaftError,
};
use openraft::{Config, RaftMetrics, ReadPolicy, SnapshotPolicy};
use wharf_meta::command::ENVELOPE_VERSION;
use wharf_meta::log_store::{LogStore, LogStoreError};
use wharf_meta::raft_types::NodeInfo;
use wharf_meta::state_machine::{StateMachineError, StateMachineStore};
use wharf_meta::{
    Command, CommandResult, Envelope, MetaError, MetaHandle, ProposeContext, TypeConfig,
};

use crate::network::DeferredNetworkFactory;
use crate::read_batch::{BarrierFailure, ReadBatcher};

/// The openraft node type of Wharf.
type Raft = openraft::Raft<TypeConfig, StateMachineStore>;

/// How long a proposal may wait for its apply result before the answer is "outcome unknown".
pub const PROPOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a read barrier may wait before the answer is "no quorum".
pub const READ_BARRIER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long startup waits for the node to lead and catch up.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long shutdown waits for raft's tasks to close the databases.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The raft log could not be opened.
    #[error(transparent)]
    LogStore(#[from] LogStoreError),
    /// The state machine could not be opened.
    #[error(transparent)]
    StateMachine(#[from] StateMachineError),
    /// The raft configuration is invalid (a bug: it is built in code).
    #[error("invalid raft config: {0}")]
    Config(#[from] openraft::ConfigError),
    /// The raft node stopped (storage failure or panic) while starting.
    #[error("raft node stopped: {0}")]
    Fatal(#[from] Fatal<TypeConfig>),
    /// Bootstrapping the single-member cluster failed.
    #[error("cannot initialize the cluster: {0}")]
    Initialize(#[from] RaftError<TypeConfig, InitializeError<TypeConfig>>),
    /// The raft state on disk belongs to a cluster in which this node id is not a voter.
    #[error(
        "the raft state in {dir} does not list node {node_id} as a voter (voters: {voters:?}); \
         was the data directory copied from another node?"
    )]
    NotAVoter {
        dir: String,
        node_id: u64,
        voters: Vec<u64>,
    },
    /// The node did not become leader and catch up in time.
    #[error("node {node_id} did not become leader within {waited:?}: {reason}")]
    NotReady {
        node_id: u64,
        waited: Duration,
        reason: String,
    },
    /// A blocking startup task failed.
    #[error("startup task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// A running raft node: proposes commands, runs read barriers, exposes its state database.
pub struct ClusterNode {
    node_id: u64,
    raft: Raft,
    state: Arc<redb::Database>,
    /// Held only to learn when raft's tasks have let go of the log (see [`Self::shutdown`]).
    log: LogStore,
    /// Shares ReadIndex rounds between concurrent linearizable reads.
    reads: Arc<ReadBatcher<BarrierFn>>,
}

/// The barrier the read batcher runs: one ReadIndex round on this node's raft.
type BarrierFn = Box<
    dyn Fn() -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<(), BarrierFailure>> + Send>,
        > + Send
        + Sync,
>;

impl ClusterNode {
    /// Starts the single voter of a one-node cluster from `<data_dir>/raft/`.
    ///
    /// A fresh directory is initialized with `node_id` as its only member; an existing one is
    /// resumed. Returns once the node leads and has applied its whole log.
    pub async fn start_single(
        data_dir: &Path,
        node_id: u64,
        info: NodeInfo,
    ) -> Result<ClusterNode, ClusterError> {
        let dir = data_dir.join("raft");
        let (log, sm) = {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || -> Result<_, ClusterError> {
                Ok((LogStore::open(&dir)?, StateMachineStore::open(&dir)?))
            })
            .await??
        };
        let state = sm.db();
        let log_handle = log.clone();

        let config = Config {
            cluster_name: "wharf".to_string(),
            heartbeat_interval: 100,
            election_timeout_min: 300,
            election_timeout_max: 600,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(100_000),
            // Keep enough log that a briefly-down member catches up from the log, not a snapshot.
            max_in_snapshot_log_to_keep: 10_000,
            enable_pre_vote: Some(true),
            // A leader that restarts before anyone else campaigns keeps leading. Safe here
            // because apply is durable before it answers and `committed` is persisted.
            enable_leader_restore: Some(true),
            ..Default::default()
        }
        .validate()?;
        let raft = Raft::new(node_id, Arc::new(config), DeferredNetworkFactory, log, sm).await?;
        let barrier_raft = raft.clone();
        let barrier: BarrierFn =
            Box::new(move || Box::pin(read_index_once(barrier_raft.clone(), node_id)));
        let node = ClusterNode {
            node_id,
            raft,
            state,
            log: log_handle,
            reads: ReadBatcher::new(barrier),
        };

        if node.raft.is_initialized().await? {
            let voters: Vec<u64> = node
                .metrics()
                .membership_config
                .membership()
                .voter_ids()
                .collect();
            if !voters.contains(&node_id) {
                node.shutdown().await;
                return Err(ClusterError::NotAVoter {
                    dir: dir.display().to_string(),
                    node_id,
                    voters,
                });
            }
            tracing::info!(node_id, "resuming raft node");
        } else {
            tracing::info!(node_id, node = %info, "initializing a single-node cluster");
            node.raft
                .initialize(BTreeMap::from([(node_id, info)]))
                .await?;
        }

        // A single voter commits its whole log once it leads, including the blank entry of its
        // new term: wait until that is applied, so the node serves writes and barriers at once.
        let waited = node
            .raft
            .wait(Some(STARTUP_TIMEOUT))
            .metrics(
                |m| {
                    m.current_leader == Some(node_id)
                        && m.last_applied.as_ref().map(|id| id.index) >= m.last_log_index
                },
                "leader with its whole log applied",
            )
            .await;
        if let Err(e) = waited {
            node.shutdown().await;
            return Err(ClusterError::NotReady {
                node_id,
                waited: STARTUP_TIMEOUT,
                reason: e.to_string(),
            });
        }
        Ok(node)
    }

    /// This node's id.
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// The leader this node knows of.
    pub fn current_leader(&self) -> Option<u64> {
        self.metrics().current_leader
    }

    /// The current raft term.
    pub fn current_term(&self) -> u64 {
        self.metrics().current_term
    }

    /// Index of the last entry applied to the state machine.
    pub fn last_applied_index(&self) -> Option<u64> {
        self.metrics().last_applied.map(|id| id.index)
    }

    /// For `/readyz`: there is a leader, and this node has applied every entry it knows to be
    /// committed.
    pub fn is_ready(&self) -> bool {
        let m = self.metrics();
        m.running_state.is_ok() && m.current_leader.is_some() && caught_up(&m)
    }

    /// Stops the raft node and waits (bounded) until its tasks have let go of both databases,
    /// so that dropping this node (after every [`MetaHandle::state`] clone) closes them and the
    /// directory can be opened again in this process.
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(node_id = self.node_id, "raft core ended abnormally: {e}");
        }
        // openraft's state-machine and log workers exit after the core, on their own. Once
        // this node holds the only handles, dropping it closes both files synchronously.
        let deadline = tokio::time::Instant::now() + CLOSE_TIMEOUT;
        while self.log.handle_count() > 1 || Arc::strong_count(&self.state) > 1 {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    node_id = self.node_id,
                    "raft databases still in use {CLOSE_TIMEOUT:?} after shutdown"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn metrics(&self) -> RaftMetrics<TypeConfig> {
        self.raft.metrics().borrow_watched().clone()
    }
}

/// One ReadIndex round: confirms leadership with a quorum and waits until this node has
/// applied up to the read index. Shared by every read queued before it started.
async fn read_index_once(raft: Raft, node_id: u64) -> Result<(), BarrierFailure> {
    let read = tokio::time::timeout(
        READ_BARRIER_TIMEOUT,
        raft.ensure_linearizable(ReadPolicy::ReadIndex),
    );
    match read.await {
        Ok(Ok(_read_log_id)) => Ok(()),
        Err(_elapsed) => Err(BarrierFailure::NoQuorum(format!(
            "read barrier did not complete within {READ_BARRIER_TIMEOUT:?}"
        ))),
        Ok(Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f)))) => Err(
            BarrierFailure::NoQuorum(format!("node {node_id} is not the leader: {f}")),
        ),
        Ok(Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(q)))) => {
            Err(BarrierFailure::NoQuorum(q.to_string()))
        }
        Ok(Err(RaftError::Fatal(fatal))) => Err(match not_running(&fatal) {
            MetaError::NoQuorum(m) => BarrierFailure::NoQuorum(m),
            other => BarrierFailure::Fatal(other.to_string()),
        }),
    }
}

/// Whether the state machine has applied everything this node knows to be committed.
fn caught_up(m: &RaftMetrics<TypeConfig>) -> bool {
    let committed = m
        .local_committed
        .as_ref()
        .max(m.cluster_committed.as_ref())
        .map(|id| id.index);
    m.last_applied.as_ref().map(|id| id.index) >= committed
}

/// Milliseconds since the epoch on this node's clock (only the proposer reads a clock).
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Maps a stopped node to the error for a request that did not get in.
fn not_running(fatal: &Fatal<TypeConfig>) -> MetaError {
    match fatal {
        Fatal::Stopped => MetaError::NoQuorum("the raft node is shut down".to_string()),
        other => MetaError::Fatal(other.to_string()),
    }
}

#[async_trait::async_trait]
impl MetaHandle for ClusterNode {
    async fn propose(
        &self,
        ctx: ProposeContext,
        command: Command,
    ) -> Result<CommandResult, MetaError> {
        // A node that already stopped certainly did not take the proposal.
        if let Err(fatal) = &self.metrics().running_state {
            return Err(not_running(fatal));
        }
        let kind = command.kind();
        let envelope = Envelope {
            version: ENVELOPE_VERSION,
            request_id: ctx.request_id,
            proposer: self.node_id,
            actor: ctx.actor,
            timestamp_ms: now_ms(),
            command,
        };
        let written = tokio::time::timeout(PROPOSE_TIMEOUT, self.raft.client_write(envelope)).await;
        match written {
            Ok(Ok(response)) => Ok(response.data),
            Err(_elapsed) => Err(MetaError::OutcomeUnknown(format!(
                "{kind} got no result within {PROPOSE_TIMEOUT:?}"
            ))),
            Ok(Err(RaftError::APIError(e))) => Err(match e {
                ClientWriteError::ForwardToLeader(f) => {
                    MetaError::NoQuorum(format!("node {} is not the leader: {f}", self.node_id))
                }
                ClientWriteError::LogEntryDiscarded(f) => MetaError::OutcomeUnknown(f.to_string()),
                // Neither can happen for a normal entry without a precondition; neither was
                // appended.
                e @ (ClientWriteError::ChangeMembershipError(_)
                | ClientWriteError::PreconditionFailed(_)) => MetaError::NoQuorum(e.to_string()),
            }),
            // The core stopped while the proposal was in flight: it may have been appended.
            Ok(Err(RaftError::Fatal(Fatal::Stopped))) => Err(MetaError::OutcomeUnknown(
                "the raft node shut down during the write".to_string(),
            )),
            Ok(Err(RaftError::Fatal(fatal))) => Err(MetaError::Fatal(fatal.to_string())),
        }
    }

    async fn read_barrier(&self) -> Result<(), MetaError> {
        self.reads.barrier().await.map_err(|failure| match failure {
            BarrierFailure::NoQuorum(m) => MetaError::NoQuorum(m),
            BarrierFailure::Fatal(m) => MetaError::Fatal(m),
        })
    }

    fn state(&self) -> Arc<redb::Database> {
        self.state.clone()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use redb::ReadableDatabase;
    use wharf_meta::command::RepoSettings;
    use wharf_meta::{RequestId, tables};
    use wharf_types::{Format, RepoName};

    use super::*;

    fn info() -> NodeInfo {
        NodeInfo {
            addr: "127.0.0.1:7071".to_string(),
            region: "local".to_string(),
        }
    }

    fn ctx(id: &str) -> ProposeContext {
        ProposeContext {
            request_id: RequestId(id.to_string()),
            actor: "tester".to_string(),
        }
    }

    fn create_repo(name: &str) -> Command {
        Command::CreateRepo {
            name: RepoName::new(name).unwrap(),
            settings: RepoSettings {
                format: Format::Oci,
                immutable: false,
                allow_sparse_index: false,
            },
            if_absent: true,
        }
    }

    /// Reads `sm_meta/last_applied` straight from the state database.
    fn stored_last_applied(node: &ClusterNode) -> Vec<u8> {
        let txn = node.state().begin_read().unwrap();
        let table = txn.open_table(tables::SM_META).unwrap();
        table
            .get(b"last_applied".as_slice())
            .unwrap()
            .unwrap()
            .value()
            .to_vec()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn single_node_proposes_and_survives_restart() {
        let dir = tempfile::tempdir().unwrap();

        tracing::info!("--- fresh node initializes itself and leads");
        let node = ClusterNode::start_single(dir.path(), 1, info())
            .await
            .unwrap();
        assert_eq!(node.node_id(), 1);
        assert_eq!(node.current_leader(), Some(1));
        assert!(node.is_ready());
        let term = node.current_term();
        assert!(term >= 1);

        tracing::info!("--- proposals round-trip");
        let before = node.last_applied_index().unwrap();
        for (i, repo) in ["alpha", "beta", "alpha"].iter().enumerate() {
            let result = node
                .propose(ctx(&format!("req-{i}")), create_repo(repo))
                .await
                .unwrap();
            // The result is whatever apply decided; the write must have been applied here.
            let _: CommandResult = result;
        }
        // Metrics trail the apply responses a little.
        let wait = node.raft.wait(Some(Duration::from_secs(5)));
        wait.applied_index(Some(before + 3), "three proposals applied")
            .await
            .unwrap();
        node.read_barrier().await.unwrap();
        let applied_bytes = stored_last_applied(&node);
        let applied_index = node.last_applied_index().unwrap();

        tracing::info!("--- shut down, then a write is refused");
        node.shutdown().await;
        let err = node
            .propose(ctx("req-late"), create_repo("gamma"))
            .await
            .unwrap_err();
        assert!(matches!(err, MetaError::NoQuorum(_)), "{err}");
        assert!(!node.is_ready());
        drop(node);

        tracing::info!("--- restart resumes from disk and accepts writes again");
        let node = ClusterNode::start_single(dir.path(), 1, info())
            .await
            .unwrap();
        assert_eq!(node.current_leader(), Some(1));
        assert!(node.current_term() >= term);
        assert!(node.last_applied_index().unwrap() >= applied_index);
        assert!(!stored_last_applied(&node).is_empty());
        let resumed_at = node.last_applied_index().unwrap();
        node.propose(ctx("req-after-restart"), create_repo("gamma"))
            .await
            .unwrap();
        node.read_barrier().await.unwrap();
        let wait = node.raft.wait(Some(Duration::from_secs(5)));
        wait.applied_index_at_least(Some(resumed_at + 1), "write after restart applied")
            .await
            .unwrap();
        assert_ne!(stored_last_applied(&node), applied_bytes);
        assert!(node.is_ready());
        node.shutdown().await;
        drop(node);

        tracing::info!("--- the data directory of node 1 refuses to start as node 2");
        let err = ClusterNode::start_single(dir.path(), 2, info())
            .await
            .err()
            .unwrap();
        assert!(
            matches!(err, ClusterError::NotAVoter { node_id: 2, .. }),
            "{err}"
        );
    }
}
