//! [`ClusterNode`]: one openraft node over the redb log store and state machine of
//! `wharf-meta`, its cluster gRPC listener, and the [`MetaHandle`] upper layers hold.
//!
//! ```text
//! <data_dir>/raft/log.redb     raft log + vote + committed      (wharf_meta::log_store)
//! <data_dir>/raft/state.redb   state tables + last applied      (wharf_meta::state_machine)
//! <data_dir>/raft/snapshot/    current state snapshot
//! <data_dir>/raft/incoming/    snapshots being received from the leader
//! ```
//!
//! Errors keep what the client needs to know apart (DESIGN.md §1.2): a proposal that never
//! reached a log is [`MetaError::NoQuorum`], one that may have reached it is
//! [`MetaError::OutcomeUnknown`] (retrying with the same request id is safe), and a broken node
//! is [`MetaError::Fatal`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openraft::errors::{Fatal, InitializeError, RaftError};
use openraft::{Config, SnapshotPolicy};
use tokio::sync::watch;
use wharf_meta::command::ENVELOPE_VERSION;
use wharf_meta::log_store::{LogStore, LogStoreError};
use wharf_meta::raft_types::NodeInfo;
use wharf_meta::state_machine::{StateMachineError, StateMachineStore};
use wharf_meta::{
    Command, CommandResult, Envelope, MetaError, MetaHandle, Outcome, ProposeContext, TypeConfig,
};
use wharf_proto::admin as pb;
use wharf_types::NodeId;

use crate::Raft;
use crate::admin_service::{AdminService, action_to_wire};
use crate::core::{AdminError, Core};
use crate::incarnation::Incarnation;
use crate::membership::{ClusterStatus, MembershipAction, MembershipPlan};
use crate::network::GrpcNetworkFactory;
use crate::peers::{Identity, Peers};
use crate::raft_service::RaftService;
use crate::read_batch::{BarrierFailure, ReadBatcher};
use crate::rotation::NodeCert;
use crate::tls::{ClusterTls, TlsFiles};
use wharf_meta::state_machine::Checkpoints;
use wharf_meta::versions::Divergence;

/// How long a proposal may wait for its apply result before the answer is "outcome unknown".
pub const PROPOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a read barrier may wait before the answer is "no quorum".
pub const READ_BARRIER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long startup of a single-voter cluster waits for the node to lead and catch up.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long shutdown waits for raft's tasks to close the databases.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often `incarnation.toml` is brought up to date at most.
const INCARNATION_INTERVAL: Duration = Duration::from_secs(1);
/// How long a write waits for a leader to appear before it is refused with `NoQuorum`.
const NO_LEADER_WAIT: Duration = Duration::from_secs(3);

/// Raft timing; defaults suit links of up to ~150 ms RTT (see the config reference).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftTiming {
    /// Leader heartbeat period; also the timeout of one append RPC, so keep it ≥ 2 × RTT.
    pub heartbeat: Duration,
    /// A follower that hears nothing for a random time in [min, max] campaigns.
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// Each snapshot chunk must be taken by the receiver within this time.
    pub snapshot_chunk_timeout: Duration,
    /// Take a snapshot after this many entries since the last one.
    pub snapshot_every_entries: u64,
    /// Entries kept in the log behind the snapshot, so a briefly-down member catches up from the
    /// log rather than a snapshot.
    pub log_entries_kept: u64,
    /// A learner within this many entries of the leader can be promoted.
    pub promote_max_lag: u64,
}

impl Default for RaftTiming {
    fn default() -> Self {
        RaftTiming {
            heartbeat: Duration::from_millis(300),
            election_timeout_min: Duration::from_millis(1500),
            election_timeout_max: Duration::from_millis(3000),
            snapshot_chunk_timeout: Duration::from_secs(10),
            snapshot_every_entries: 100_000,
            log_entries_kept: 20_000,
            promote_max_lag: 1000,
        }
    }
}

/// How a node comes up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartMode {
    /// `wharf cluster init`: a fresh directory becomes the single voter of a new cluster.
    Bootstrap,
    /// An existing node (or one that just joined): the leader brings it up to date.
    Member,
}

/// Everything a node needs to start.
#[derive(Clone)]
pub struct StartOptions {
    pub data_dir: PathBuf,
    pub node_id: NodeId,
    pub cluster_id: String,
    /// What the membership records about this node (cluster address, region, client URL).
    pub info: NodeInfo,
    /// Where the cluster gRPC listener binds.
    pub listen: SocketAddr,
    pub timing: RaftTiming,
    pub mode: StartMode,
    /// Injected network faults (tests only; `None` in production).
    pub links: Option<Arc<dyn crate::LinkFilter>>,
    /// Mutual TLS under the cluster CA; `None` only when every cluster address is loopback.
    pub tls: Option<Arc<ClusterTls>>,
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The raft log could not be opened.
    #[error(transparent)]
    LogStore(#[from] LogStoreError),
    /// The state machine could not be opened.
    #[error(transparent)]
    StateMachine(#[from] StateMachineError),
    /// The raft configuration is invalid.
    #[error("invalid raft config: {0}")]
    Config(#[from] openraft::ConfigError),
    /// The raft node stopped (storage failure or panic) while starting.
    #[error("raft node stopped: {0}")]
    Fatal(#[from] Fatal<TypeConfig>),
    /// Bootstrapping the single-member cluster failed.
    #[error("cannot initialize the cluster: {0}")]
    Initialize(#[from] RaftError<TypeConfig, InitializeError<TypeConfig>>),
    /// The raft state on disk belongs to a cluster in which this node id is not a member.
    #[error(
        "the raft state in {dir} does not list node {node_id} as a member (members: {members:?}); \
         was it removed, or the data directory copied from another node?"
    )]
    NotAMember {
        dir: String,
        node_id: u64,
        members: Vec<u64>,
    },
    /// The raft state is older than what this node had already reached.
    #[error(
        "the raft state in {dir} is behind this node's recorded incarnation: {reason}; it was \
         probably restored from an older copy, and a node that forgot votes or entries it \
         acknowledged breaks raft's guarantees: move the data directory away and join again \
         with a new token"
    )]
    Behind { dir: String, reason: String },
    /// The cluster runs a version this binary cannot.
    #[error(
        "the cluster runs version {running}, and this wharf supports up to {}: install a newer \
         wharf",
        wharf_meta::versions::SUPPORTED_CLUSTER_VERSION
    )]
    UnsupportedVersion { running: u32 },
    /// The node did not become leader and catch up in time.
    #[error("node {node_id} did not become leader within {waited:?}: {reason}")]
    NotReady {
        node_id: u64,
        waited: Duration,
        reason: String,
    },
    /// The cluster listener could not bind.
    #[error("cannot listen for cluster traffic on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// Joining a cluster failed.
    #[error("cannot join through {addr}: {reason}")]
    Join { addr: String, reason: String },
    /// A blocking startup task failed.
    #[error("startup task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("raft directory: {0}")]
    Io(std::io::Error),
}

/// What a joining node gets from the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinTicket {
    pub node_id: NodeId,
    pub cluster_id: String,
    pub members: Vec<String>,
    /// This node's certificates, on a TLS cluster.
    pub tls: Option<TlsFiles>,
}

/// A join token as printed: `wharf-join.<cluster id>.<secret>[.<cluster CA, base64url DER>]`.
/// The CA part is there on a TLS cluster: the joining node trusts that CA, and only it, for its
/// join call.
struct JoinToken {
    cluster_id: String,
    ca_der: Option<Vec<u8>>,
}

const TOKEN_PREFIX: &str = "wharf-join";

fn format_token(cluster_id: &str, secret: &str, ca_der: Option<&[u8]>) -> String {
    use base64::Engine as _;
    match ca_der {
        Some(der) => format!(
            "{TOKEN_PREFIX}.{cluster_id}.{secret}.{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(der)
        ),
        None => format!("{TOKEN_PREFIX}.{cluster_id}.{secret}"),
    }
}

fn parse_token(token: &str) -> Result<JoinToken, String> {
    use base64::Engine as _;
    let parts: Vec<&str> = token.trim().split('.').collect();
    match parts.as_slice() {
        [TOKEN_PREFIX, cluster_id, _secret] => Ok(JoinToken {
            cluster_id: (*cluster_id).to_string(),
            ca_der: None,
        }),
        [TOKEN_PREFIX, cluster_id, _secret, ca] => Ok(JoinToken {
            cluster_id: (*cluster_id).to_string(),
            ca_der: Some(
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(ca)
                    .map_err(|e| format!("the token's CA part is not base64url: {e}"))?,
            ),
        }),
        _ => Err("not a join token (wharf-join.<cluster>.<secret>[.<ca>])".to_string()),
    }
}

/// Pause between join attempts refused as unavailable.
const JOIN_RETRY_PAUSE: Duration = Duration::from_millis(250);

/// Asks the cluster member at `addr` to admit this node (`wharf serve --join`). `nonce` is a
/// random string the caller has stored durably before asking, so that a retry after a crash
/// gets the same id and nobody else can reuse the token. On a TLS cluster the call is made over
/// TLS trusting only the CA in the token, and the ticket carries this node's certificates.
pub async fn join(
    addr: &str,
    token: &str,
    nonce: &str,
    info: &NodeInfo,
    timeout: Duration,
) -> Result<JoinTicket, ClusterError> {
    let failed = |reason: String| ClusterError::Join {
        addr: addr.to_string(),
        reason,
    };
    let parsed = parse_token(token).map_err(failed)?;
    let tls = match &parsed.ca_der {
        Some(der) => Some((
            crate::transport::ClientTls::Fixed(
                crate::tls::joiner_client_config(der).map_err(|e| failed(e.to_string()))?,
            ),
            crate::tls::cluster_name(&parsed.cluster_id),
        )),
        None => None,
    };
    let channel =
        crate::transport::channel(addr, tls, timeout).map_err(|e| failed(e.to_string()))?;
    let mut client = pb::admin_client::AdminClient::new(channel);
    let request = pb::JoinRequest {
        token: token.trim().to_string(),
        cluster_addr: info.addr.clone(),
        client_url: info.client_url.clone(),
        blob_addr: info.blob_addr.clone(),
        region: info.region.clone(),
        nonce: nonce.to_string(),
        supported_cluster_version: wharf_meta::versions::SUPPORTED_CLUSTER_VERSION,
    };
    // A leader without quorum or busy with another change answers `Unavailable`; the nonce makes
    // a retry safe (the same joiner gets the same id), so retry until `timeout`.
    let deadline = tokio::time::Instant::now() + timeout;
    let response = loop {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let mut attempt = tonic::Request::new(request.clone());
        attempt.set_timeout(remaining);
        let answer = tokio::time::timeout(remaining, client.join(attempt))
            .await
            .map_err(|_| failed(format!("no answer within {timeout:?}")))?;
        match answer {
            Ok(response) => break response.into_inner(),
            Err(s)
                if s.code() == tonic::Code::Unavailable
                    && tokio::time::Instant::now() + JOIN_RETRY_PAUSE < deadline =>
            {
                tracing::warn!(%addr, reason = s.message(), "join not admitted yet; retrying");
                tokio::time::sleep(JOIN_RETRY_PAUSE).await;
            }
            Err(s) => return Err(failed(s.message().to_string())),
        }
    };
    if response.cluster_id != parsed.cluster_id {
        return Err(failed(format!(
            "the token is for cluster {}, but {addr} belongs to {}",
            parsed.cluster_id, response.cluster_id
        )));
    }
    let tls = if parsed.ca_der.is_some() {
        if response.node_cert_pem.is_empty() {
            return Err(failed("a TLS cluster sent no certificate".to_string()));
        }
        Some(TlsFiles {
            ca_pem: response.ca_pem,
            ca_key_pem: response.ca_key_pem,
            node_pem: response.node_cert_pem,
            node_key_pem: response.node_key_pem,
        })
    } else {
        None
    };
    Ok(JoinTicket {
        node_id: response.node_id,
        cluster_id: response.cluster_id,
        members: response.members,
        tls,
    })
}

/// Refuses raft state that is behind `incarnation.toml` ([`crate::incarnation`]); returns
/// how far it has come.
async fn refuse_if_behind(
    opts: &StartOptions,
    log: &mut LogStore,
    sm: &mut StateMachineStore,
) -> Result<Incarnation, ClusterError> {
    let data_dir = &opts.data_dir;
    use openraft::RaftLogReader as _;
    use openraft::storage::RaftStateMachine as _;
    let vote_term = log
        .read_vote()
        .await
        .map_err(ClusterError::Io)?
        .map_or(0, |v| v.leader_id.term);
    let (applied, _) = sm.applied_state().await.map_err(ClusterError::Io)?;
    let reached = Incarnation {
        term: applied.map_or(0, |id| id.leader_id.term),
        applied_index: applied.map_or(0, |id| id.index),
    };
    let recorded = crate::incarnation::recorded(data_dir, opts.node_id, &opts.cluster_id)
        .map_err(ClusterError::Io)?;
    if let Some(recorded) = recorded
        && let Some(reason) = crate::incarnation::behind(&recorded, vote_term, &reached)
    {
        return Err(ClusterError::Behind {
            dir: data_dir.join("raft").display().to_string(),
            reason,
        });
    }
    Ok(reached)
}

/// Refuses a state whose cluster version is newer than this binary supports: it could not
/// decode what the cluster writes.
fn refuse_if_unsupported(state: &redb::Database) -> Result<(), ClusterError> {
    use redb::ReadableDatabase as _;
    let running = state
        .begin_read()
        .map_err(|e| ClusterError::Io(std::io::Error::other(e)))
        .and_then(|txn| {
            wharf_meta::versions::cluster_version(&txn)
                .map_err(|e| ClusterError::Io(std::io::Error::other(e.to_string())))
        })?;
    if running > wharf_meta::versions::SUPPORTED_CLUSTER_VERSION {
        return Err(ClusterError::UnsupportedVersion { running });
    }
    Ok(())
}

/// Keeps `incarnation.toml` up with what the node has applied: at most once per
/// [`INCARNATION_INTERVAL`], and once more when raft stops.
async fn record_incarnation(
    raft: Raft,
    data_dir: PathBuf,
    identity: (NodeId, String),
    mut recorded: Incarnation,
) {
    use openraft::async_runtime::watch::WatchReceiver as _;
    let mut metrics = raft.metrics();
    loop {
        let stopped = metrics.changed().await.is_err();
        let reached = {
            let m = metrics.borrow_watched();
            m.last_applied.map_or(recorded, |id| Incarnation {
                term: id.leader_id.term,
                applied_index: id.index,
            })
        };
        if reached.is_past(&recorded) {
            let dir = data_dir.clone();
            let (node_id, cluster_id) = identity.clone();
            let stored = tokio::task::spawn_blocking(move || {
                crate::incarnation::advance(&dir, node_id, &cluster_id, &reached)
            })
            .await;
            match stored {
                Ok(Ok(())) => recorded = reached,
                Ok(Err(e)) => tracing::warn!("cannot record incarnation.toml: {e}"),
                Err(e) => tracing::warn!("cannot record incarnation.toml: {e}"),
            }
        }
        if stopped {
            return;
        }
        tokio::time::sleep(INCARNATION_INTERVAL).await;
    }
}

/// A running raft node: proposes commands, runs read barriers, exposes its state database,
/// serves the cluster gRPC listener.
pub struct ClusterNode {
    core: Arc<Core>,
    state: Arc<redb::Database>,
    /// Held only to learn when raft's tasks have let go of the log (see [`Self::shutdown`]).
    log: LogStore,
    /// Shares ReadIndex rounds between concurrent linearizable reads.
    reads: Arc<ReadBatcher<BarrierFn>>,
    cluster_addr: SocketAddr,
    stop_server: watch::Sender<bool>,
    server: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// The barrier the read batcher runs: one ReadIndex round.
type BarrierFn = Box<
    dyn Fn() -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<(), BarrierFailure>> + Send>,
        > + Send
        + Sync,
>;

impl ClusterNode {
    /// Starts a node from `<data_dir>/raft/` and its cluster listener.
    ///
    /// [`StartMode::Bootstrap`] initializes a fresh directory with this node as the only
    /// voter. A single-voter cluster returns once the node leads and has applied its whole
    /// log; a member of a larger cluster returns at once (`is_ready` tells when it caught up).
    pub async fn start(opts: StartOptions) -> Result<ClusterNode, ClusterError> {
        let dir = opts.data_dir.join("raft");
        let incoming_dir = dir.join("incoming");
        let (mut log, mut sm) = {
            let dir = dir.clone();
            let incoming = incoming_dir.clone();
            tokio::task::spawn_blocking(move || -> Result<_, ClusterError> {
                let stores = (LogStore::open(&dir)?, StateMachineStore::open(&dir)?);
                // Partial snapshots from before a crash are useless.
                let _ = std::fs::remove_dir_all(&incoming);
                std::fs::create_dir_all(&incoming).map_err(ClusterError::Io)?;
                Ok(stores)
            })
            .await??
        };
        let reached = refuse_if_behind(&opts, &mut log, &mut sm).await?;
        refuse_if_unsupported(&sm.db())?;
        let (checkpoint_sink, checkpoints_taken) = tokio::sync::mpsc::channel(2);
        let sm = sm.with_checkpoints(Checkpoints {
            every: opts.timing.snapshot_every_entries,
            sink: checkpoint_sink,
        });
        let state = sm.db();
        let log_handle = log.clone();
        let t = &opts.timing;
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let config = Config {
            cluster_name: "wharf".to_string(),
            heartbeat_interval: millis(t.heartbeat),
            election_timeout_min: millis(t.election_timeout_min),
            election_timeout_max: millis(t.election_timeout_max),
            install_snapshot_timeout: millis(t.snapshot_chunk_timeout),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(t.snapshot_every_entries),
            max_in_snapshot_log_to_keep: t.log_entries_kept,
            enable_pre_vote: Some(true),
            // Check-quorum: a leader that stops hearing from a quorum (say its inbound traffic
            // is cut) stops sending heartbeats after its lease, so the others can elect a new
            // leader instead of waiting on one that cannot commit. openraft requires the phase
            // length to be at least lease (= election_timeout_max) + election_timeout_max.
            quorum_loss_probe_interval: Some(2 * millis(t.election_timeout_max)),
            // A leader that restarts before anyone else campaigns keeps leading. Safe here
            // because apply is durable before it answers and `committed` is persisted.
            enable_leader_restore: Some(true),
            ..Default::default()
        }
        .validate()?;

        let listener = tokio::net::TcpListener::bind(opts.listen)
            .await
            .map_err(|source| ClusterError::Bind {
                addr: opts.listen,
                source,
            })?;
        let cluster_addr = listener.local_addr().map_err(|source| ClusterError::Bind {
            addr: opts.listen,
            source,
        })?;

        let peers = Arc::new(Peers::new(
            opts.cluster_id.clone(),
            opts.node_id,
            t.election_timeout_min,
            opts.links.clone(),
            opts.tls.clone(),
        ));
        let network = GrpcNetworkFactory {
            peers: peers.clone(),
            snapshot_chunk_timeout: t.snapshot_chunk_timeout,
        };
        let raft = Raft::new(opts.node_id, Arc::new(config), network, log, sm).await?;
        tokio::spawn(record_incarnation(
            raft.clone(),
            opts.data_dir.clone(),
            (opts.node_id, opts.cluster_id.clone()),
            reached,
        ));
        let core = Arc::new(Core {
            node_id: opts.node_id,
            cluster_id: opts.cluster_id.clone(),
            raft: raft.clone(),
            peers,
            promote_max_lag: t.promote_max_lag,
            leader_silence_limit: t.election_timeout_max,
            leader_contact_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            tls: opts.tls.clone(),
            membership_lock: tokio::sync::Mutex::new(()),
            data_dir: opts.data_dir.clone(),
            tls_lock: tokio::sync::Mutex::new(()),
            rotation_lock: tokio::sync::Mutex::new(()),
        });
        let identity = Identity {
            cluster_id: opts.cluster_id.clone(),
            self_id: opts.node_id,
            raft: raft.clone(),
            links: opts.links.clone(),
            tls: opts.tls.is_some(),
        };
        let barrier_core = core.clone();
        let barrier: BarrierFn = Box::new(move || {
            let core = barrier_core.clone();
            Box::pin(async move { core.barrier(READ_BARRIER_TIMEOUT).await })
        });
        let node = ClusterNode {
            core,
            state,
            log: log_handle,
            reads: ReadBatcher::new(barrier),
            cluster_addr,
            stop_server: watch::channel(false).0,
            server: tokio::sync::Mutex::new(None),
        };

        let node_id = opts.node_id;
        let mut bootstrapped = false;
        if node.core.raft.is_initialized().await? {
            let m = node.core.metrics();
            let membership = m.membership_config.membership();
            if membership.get_node(&node_id).is_none() {
                let members = membership.nodes().map(|(id, _)| *id).collect();
                node.shutdown().await;
                return Err(ClusterError::NotAMember {
                    dir: dir.display().to_string(),
                    node_id,
                    members,
                });
            }
            tracing::info!(node_id, "resuming raft node");
        } else if opts.mode == StartMode::Bootstrap {
            tracing::info!(node_id, node = %opts.info, "initializing a new cluster");
            node.core
                .raft
                .initialize(BTreeMap::from([(node_id, opts.info.clone())]))
                .await?;
            bootstrapped = true;
        } else {
            tracing::info!(
                node_id,
                "waiting for the leader to replicate to this new member"
            );
        }

        // Only now take peer traffic: the checks above read the state this node started with,
        // not entries a leader is already replicating to it.
        let (stop_server, stopped) = watch::channel(false);
        let server = tokio::spawn(serve_cluster(
            crate::transport::incoming(listener, opts.tls.clone()),
            RaftService {
                raft: node.core.raft.clone(),
                identity: identity.clone(),
                incoming_dir,
                chunk_timeout: t.snapshot_chunk_timeout,
                next_incoming: AtomicU64::new(0),
                core: node.core.clone(),
            },
            AdminService {
                core: node.core.clone(),
                identity,
                propose_timeout: PROPOSE_TIMEOUT,
                read_timeout: READ_BARRIER_TIMEOUT,
            },
            stopped,
        ));
        let mut node = node;
        tokio::spawn(crate::housekeeping::keep_versions(
            node.core.clone(),
            node.state.clone(),
            stop_server.subscribe(),
        ));
        tokio::spawn(crate::housekeeping::report_checkpoints(
            node.core.clone(),
            checkpoints_taken,
            stop_server.subscribe(),
        ));
        node.stop_server = stop_server;
        *node.server.get_mut() = Some(server);

        let voters: Vec<NodeId> = node
            .core
            .metrics()
            .membership_config
            .membership()
            .voter_ids()
            .collect();
        if bootstrapped || voters == [node_id] {
            // A single voter commits its whole log once it leads, including the blank entry of
            // its new term: wait until that is applied, so it serves writes at once.
            let waited = node
                .core
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
            let alone = node
                .core
                .metrics()
                .membership_config
                .membership()
                .nodes()
                .count()
                == 1;
            if alone {
                crate::housekeeping::raise_alone(&node.core, &node.state).await;
            }
        }
        Ok(node)
    }

    /// Starts the single voter of a one-node cluster on an ephemeral loopback port (tests).
    pub async fn start_single(
        data_dir: &Path,
        node_id: u64,
        info: NodeInfo,
    ) -> Result<ClusterNode, ClusterError> {
        ClusterNode::start(StartOptions {
            data_dir: data_dir.to_path_buf(),
            node_id,
            cluster_id: "test".to_string(),
            info,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            timing: RaftTiming {
                heartbeat: Duration::from_millis(100),
                election_timeout_min: Duration::from_millis(300),
                election_timeout_max: Duration::from_millis(600),
                ..RaftTiming::default()
            },
            mode: StartMode::Bootstrap,
            links: None,
            tls: None,
        })
        .await
    }

    /// This node's id.
    pub fn node_id(&self) -> u64 {
        self.core.node_id
    }

    /// The id of this node's cluster.
    pub fn cluster_id(&self) -> &str {
        &self.core.cluster_id
    }

    /// Where the cluster gRPC listener is bound.
    pub fn cluster_addr(&self) -> SocketAddr {
        self.cluster_addr
    }

    /// The leader this node knows of.
    pub fn current_leader(&self) -> Option<u64> {
        self.core.metrics().current_leader
    }

    /// The current raft term.
    pub fn current_term(&self) -> u64 {
        self.core.metrics().current_term
    }

    /// Index of the last entry applied to the state machine.
    pub fn last_applied_index(&self) -> Option<u64> {
        self.core.metrics().last_applied.map(|id| id.index)
    }

    /// Log index of the last snapshot this node built or installed.
    pub fn snapshot_index(&self) -> Option<u64> {
        self.core.metrics().snapshot.map(|id| id.index)
    }

    /// Log index up to which this node's log was purged (behind its snapshot).
    pub fn purged_index(&self) -> Option<u64> {
        self.core.metrics().purged.map(|id| id.index)
    }

    /// Every member of the configuration this node knows (voters and learners), with what the
    /// configuration records about it.
    pub fn members(&self) -> Vec<(NodeId, NodeInfo)> {
        let m = self.core.metrics();
        m.membership_config
            .membership()
            .nodes()
            .map(|(id, info)| (*id, info.clone()))
            .collect()
    }

    /// On the leader: the members it heard from within `within` (itself included). Elsewhere:
    /// every member (only the leader knows who answers).
    pub fn responsive_members(&self, within: Duration) -> Vec<NodeId> {
        let m = self.core.metrics();
        let members = m.membership_config.membership().nodes().map(|(id, _)| *id);
        let Some(heartbeat) = &m.heartbeat else {
            return members.collect();
        };
        members
            .filter(|id| {
                *id == self.core.node_id
                    || heartbeat
                        .get(id)
                        .and_then(|t| t.as_ref())
                        .is_some_and(|t| openraft::Instant::elapsed(&**t) < within)
            })
            .collect()
    }

    /// This node's cluster TLS (certificates that a rotation may replace), on a TLS cluster.
    pub fn tls(&self) -> Option<Arc<ClusterTls>> {
        self.core.tls.clone()
    }

    /// When this node's cluster certificate expires (unix seconds), on a TLS cluster.
    pub fn cert_not_after(&self) -> Option<i64> {
        self.core.tls.as_ref().map(|t| t.not_after())
    }

    /// Whether this node is a voter in the configuration it knows.
    pub fn is_voter(&self) -> bool {
        let m = self.core.metrics();
        m.membership_config
            .membership()
            .voter_ids()
            .any(|id| id == self.core.node_id)
    }

    /// For `/readyz`: a leader is known (and, on another node, heard from recently), and this
    /// node has applied every entry it knows to be committed. A new learner stays unready until
    /// it has caught up.
    pub fn is_ready(&self) -> bool {
        self.core.is_caught_up()
    }

    /// The cluster as the leader sees it (asked of the leader from any node).
    pub async fn status(&self) -> Result<ClusterStatus, AdminError> {
        let mut status = if self.current_leader() == Some(self.core.node_id) {
            self.core.status_here()?
        } else {
            let peers = self.core.peers.clone();
            let json = self
                .core
                .on_leader(READ_BARRIER_TIMEOUT, |mut client, leader| {
                    let request = peers.request(leader, pb::StatusRequest {});
                    async move { client.status(request).await.map(|r| r.into_inner().json) }
                })
                .await?;
            serde_json::from_slice::<ClusterStatus>(&json)
                .map_err(|e| AdminError::Internal(e.to_string()))?
        };
        let (version, divergence) = self
            .versions()
            .map_err(|e| AdminError::Internal(e.to_string()))?;
        status.cluster_version = version;
        status.divergence = divergence;
        use redb::ReadableDatabase as _;
        let txn = self
            .state
            .begin_read()
            .map_err(|e| AdminError::Internal(e.to_string()))?;
        for member in &mut status.members {
            member.supported_version = wharf_meta::versions::node_version(&txn, member.id)
                .map_err(|e| AdminError::Internal(e.to_string()))?;
        }
        Ok(status)
    }

    /// The committed cluster version and the first state divergence, from this node's state.
    pub fn versions(&self) -> Result<(u32, Option<Divergence>), MetaError> {
        use redb::ReadableDatabase as _;
        let txn = self
            .state
            .begin_read()
            .map_err(|e| MetaError::Fatal(e.to_string()))?;
        Ok((
            wharf_meta::versions::cluster_version(&txn)?,
            wharf_meta::versions::divergence(&txn)?,
        ))
    }

    /// Mints a one-time join token valid for `ttl` (consumed through raft when used).
    pub async fn create_join_token(
        &self,
        ctx: ProposeContext,
        ttl: Duration,
    ) -> Result<String, MetaError> {
        let secret = hex::encode(rand::random::<[u8; 24]>());
        let ca_der = match &self.core.tls {
            Some(tls) => Some(
                crate::tls::first_cert_der(&tls.files().ca_pem)
                    .map_err(|e| MetaError::Fatal(e.to_string()))?,
            ),
            None => None,
        };
        let token = format_token(&self.core.cluster_id, &secret, ca_der.as_deref());
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let command = Command::CreateJoinToken {
            token_sha256: crate::core::token_digest(&token),
            expires_at_ms: now_ms().saturating_add(ttl_ms),
        };
        match self.propose(ctx, command).await? {
            CommandResult::Ok(Outcome::Applied | Outcome::Unchanged) => Ok(token),
            other => Err(MetaError::Fatal(format!(
                "unexpected result storing a join token: {other:?}"
            ))),
        }
    }

    /// Plans a membership change and, unless `dry_run`, applies it on the leader against the
    /// configuration at `expected_membership_index`.
    pub async fn change_membership(
        &self,
        action: MembershipAction,
        node_id: NodeId,
        expected_membership_index: Option<u64>,
        dry_run: bool,
    ) -> Result<MembershipPlan, AdminError> {
        if self.current_leader() == Some(self.core.node_id) {
            return self
                .core
                .change_membership_here(
                    action,
                    node_id,
                    expected_membership_index,
                    dry_run,
                    PROPOSE_TIMEOUT,
                )
                .await;
        }
        let peers = self.core.peers.clone();
        let request = pb::ChangeMembershipRequest {
            action: action_to_wire(action),
            node_id,
            expected_membership_index: expected_membership_index.unwrap_or(0),
            dry_run: dry_run || expected_membership_index.is_none(),
        };
        let response = self
            .core
            .on_leader(PROPOSE_TIMEOUT, |mut client, leader| {
                let request = peers.request(leader, request);
                async move {
                    client
                        .change_membership(request)
                        .await
                        .map(|r| r.into_inner())
                }
            })
            .await?;
        Ok(MembershipPlan {
            action,
            node_id,
            voters_before: response.voters_before,
            voters_after: response.voters_after,
            membership_index: response.membership_index,
        })
    }

    /// Makes `to` the leader.
    pub async fn transfer_leader(&self, to: NodeId) -> Result<NodeId, AdminError> {
        if self.current_leader() == Some(self.core.node_id) {
            return self.core.transfer_leader_here(to, PROPOSE_TIMEOUT).await;
        }
        let peers = self.core.peers.clone();
        self.core
            .on_leader(PROPOSE_TIMEOUT, |mut client, leader| {
                let request = peers.request(leader, pb::TransferLeaderRequest { node_id: to });
                async move {
                    client
                        .transfer_leader(request)
                        .await
                        .map(|r| r.into_inner().leader)
                }
            })
            .await
    }

    /// Rotates the cluster CA on every member (see [`crate::rotation`]); with `finish`, stops
    /// trusting every CA but the signing one. Runs on the leader, wherever it is asked.
    pub async fn rotate_certs(&self, finish: bool) -> Result<Vec<NodeCert>, AdminError> {
        if self.current_leader() == Some(self.core.node_id) {
            return self.core.rotate_certs_here(finish, PROPOSE_TIMEOUT).await;
        }
        let peers = self.core.peers.clone();
        self.core
            .on_leader(PROPOSE_TIMEOUT * 4, |mut client, leader| {
                let mut request = peers.request(leader, pb::RotateCertsRequest { finish });
                request.set_timeout(PROPOSE_TIMEOUT * 4);
                async move {
                    client.rotate_certs(request).await.map(|r| {
                        r.into_inner()
                            .nodes
                            .iter()
                            .map(NodeCert::from_wire)
                            .collect()
                    })
                }
            })
            .await
    }

    /// The certificates this node presents and trusts, on a TLS cluster.
    pub fn tls_files(&self) -> Option<TlsFiles> {
        self.core.tls.as_ref().map(|t| t.files())
    }

    /// Stops the cluster listener and the raft node and waits (bounded) until raft's tasks
    /// have let go of both databases, so that dropping this node (after every
    /// [`MetaHandle::state`] clone) closes them and the directory can be opened again in this
    /// process.
    pub async fn shutdown(&self) {
        let _ = self.stop_server.send(true);
        if let Some(server) = self.server.lock().await.take() {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, server).await;
        }
        if let Err(e) = self.core.raft.shutdown().await {
            tracing::warn!(
                node_id = self.core.node_id,
                "raft core ended abnormally: {e}"
            );
        }
        // Record how far this node got before the process exits.
        if let Some(id) = self.core.metrics().last_applied {
            let reached = Incarnation {
                term: id.leader_id.term,
                applied_index: id.index,
            };
            let dir = self.core.data_dir.clone();
            let (node_id, cluster_id) = (self.core.node_id, self.core.cluster_id.clone());
            let recorded = tokio::task::spawn_blocking(move || {
                crate::incarnation::advance(&dir, node_id, &cluster_id, &reached)
            })
            .await;
            if !matches!(recorded, Ok(Ok(()))) {
                tracing::warn!(
                    node_id = self.core.node_id,
                    "cannot record incarnation.toml"
                );
            }
        }
        let deadline = tokio::time::Instant::now() + CLOSE_TIMEOUT;
        while self.log.handle_count() > 1 || Arc::strong_count(&self.state) > 1 {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    node_id = self.core.node_id,
                    "raft databases still in use {CLOSE_TIMEOUT:?} after shutdown"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[cfg(test)]
    fn raft(&self) -> &Raft {
        &self.core.raft
    }
}

/// Serves `wharf.raft.v1` and `wharf.admin.v1` on `incoming` connections until `stop` turns
/// true.
async fn serve_cluster(
    incoming: tokio_stream::wrappers::ReceiverStream<std::io::Result<crate::transport::PeerStream>>,
    raft: RaftService,
    admin: AdminService,
    mut stop: watch::Receiver<bool>,
) {
    let served = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .add_service(
            wharf_proto::raft::raft_server::RaftServer::new(raft)
                .max_decoding_message_size(usize::MAX)
                .max_encoding_message_size(usize::MAX),
        )
        .add_service(wharf_proto::admin::admin_server::AdminServer::new(admin))
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        })
        .await;
    if let Err(e) = served {
        tracing::error!("cluster listener failed: {e}");
    }
}

/// Milliseconds since the epoch on this node's clock (only the proposer reads a clock).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[async_trait::async_trait]
impl MetaHandle for ClusterNode {
    async fn propose(
        &self,
        ctx: ProposeContext,
        command: Command,
    ) -> Result<CommandResult, MetaError> {
        let envelope = Envelope {
            version: ENVELOPE_VERSION,
            request_id: ctx.request_id,
            proposer: self.core.node_id,
            actor: ctx.actor,
            timestamp_ms: now_ms(),
            command,
        };
        let deadline = Instant::now() + PROPOSE_TIMEOUT;
        self.core.propose(envelope, deadline, NO_LEADER_WAIT).await
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

    fn fresh_within(&self, max_staleness: Duration) -> bool {
        self.core.fresh_within(max_staleness) && self.is_ready()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeSet;

    use redb::ReadableDatabase;
    use wharf_meta::command::RepoSettings;
    use wharf_meta::{RequestId, tables};
    use wharf_types::{Format, RepoName};

    use super::*;

    fn info() -> NodeInfo {
        NodeInfo {
            addr: "127.0.0.1:7071".to_string(),
            region: "local".to_string(),
            client_url: "http://127.0.0.1:7070".to_string(),
            blob_addr: String::new(),
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
                consistency: wharf_meta::Consistency::Strong,
                replication: Default::default(),
                regions: Default::default(),
                allow_unpublish: false,
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
        let wait = node.raft().wait(Some(Duration::from_secs(5)));
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
        let wait = node.raft().wait(Some(Duration::from_secs(5)));
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
            matches!(err, ClusterError::NotAMember { node_id: 2, .. }),
            "{err}"
        );
    }

    fn free_port() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }

    fn fast() -> RaftTiming {
        RaftTiming {
            heartbeat: Duration::from_millis(100),
            election_timeout_min: Duration::from_millis(500),
            election_timeout_max: Duration::from_millis(1000),
            ..RaftTiming::default()
        }
    }

    async fn start_member(
        dir: &Path,
        node_id: u64,
        cluster_id: &str,
        listen: SocketAddr,
        mode: StartMode,
        tls: Option<TlsFiles>,
    ) -> ClusterNode {
        ClusterNode::start(StartOptions {
            data_dir: dir.to_path_buf(),
            node_id,
            cluster_id: cluster_id.to_string(),
            info: NodeInfo {
                addr: listen.to_string(),
                region: format!("region-{node_id}"),
                client_url: String::new(),
                blob_addr: String::new(),
            },
            listen,
            timing: fast(),
            mode,
            links: None,
            tls: tls.map(|files| Arc::new(ClusterTls::new(files).unwrap())),
        })
        .await
        .unwrap()
    }

    async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !check() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn repo_exists(node: &ClusterNode, name: &str) -> bool {
        let txn = node.state().begin_read().unwrap();
        let table = txn.open_table(tables::REPOS).unwrap();
        table.get(name.as_bytes()).unwrap().is_some()
    }

    /// `raft/` restored from an older copy is refused (it may have forgotten votes and entries
    /// it acknowledged); the newer state it was replaced with starts.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn raft_state_behind_its_incarnation_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let raft = dir.path().join("raft");
        let run = |writes: Vec<&'static str>| {
            let data_dir = dir.path().to_path_buf();
            async move {
                let node = ClusterNode::start_single(&data_dir, 1, info())
                    .await
                    .unwrap();
                for w in writes {
                    node.propose(ctx(w), create_repo(w)).await.unwrap();
                }
                let applied = node.last_applied_index().unwrap();
                node.shutdown().await;
                drop(node);
                wait_for("the incarnation is recorded", || {
                    crate::incarnation::recorded(&data_dir, 1, "test")
                        .unwrap()
                        .is_some_and(|i| i.applied_index >= applied)
                })
                .await;
            }
        };
        run(vec!["first"]).await;
        copy_dir(&raft, &dir.path().join("raft-old"));
        run(vec!["second", "third"]).await;

        std::fs::rename(&raft, dir.path().join("raft-new")).unwrap();
        std::fs::rename(dir.path().join("raft-old"), &raft).unwrap();
        let err = ClusterNode::start_single(dir.path(), 1, info())
            .await
            .err()
            .expect("raft state from an older copy started");
        assert!(matches!(err, ClusterError::Behind { .. }), "{err}");

        std::fs::remove_dir_all(&raft).unwrap();
        std::fs::rename(dir.path().join("raft-new"), &raft).unwrap();
        let node = ClusterNode::start_single(dir.path(), 1, info())
            .await
            .unwrap();
        assert!(repo_exists(&node, "third"));
        node.shutdown().await;
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy_dir(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), &target).unwrap();
            }
        }
    }

    /// Nodes joining at the same moment all get in: their learner changes take turns instead
    /// of failing with "a configuration change is already in progress".
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_joins_all_get_in() {
        let dir = tempfile::tempdir().unwrap();
        let n1 = start_member(dir.path(), 1, "c1", free_port(), StartMode::Bootstrap, None).await;
        let via = n1.cluster_addr().to_string();
        let mut joins = Vec::new();
        for i in 0..4 {
            let token = n1
                .create_join_token(ctx(&format!("token-{i}")), Duration::from_secs(60))
                .await
                .unwrap();
            let via = via.clone();
            joins.push(tokio::spawn(async move {
                let info = NodeInfo {
                    addr: free_port().to_string(),
                    region: "r".to_string(),
                    client_url: String::new(),
                    blob_addr: String::new(),
                };
                let nonce = format!("concurrent-joiner-{i}-0123456789");
                join(&via, &token, &nonce, &info, Duration::from_secs(20)).await
            }));
        }
        let mut ids = BTreeSet::new();
        for j in joins {
            let ticket = j.await.unwrap().expect("a concurrent join failed");
            ids.insert(ticket.node_id);
        }
        assert_eq!(ids, BTreeSet::from([2, 3, 4, 5]), "distinct, fresh ids");

        // The step that collided: learner changes entering raft at the same instant.
        let adds: Vec<_> = (10..18)
            .map(|id| {
                let core = n1.core.clone();
                tokio::spawn(async move {
                    let info = NodeInfo {
                        addr: free_port().to_string(),
                        region: "r".to_string(),
                        client_url: String::new(),
                        blob_addr: String::new(),
                    };
                    core.add_learner_once(id, &info, Duration::from_secs(20))
                        .await
                })
            })
            .collect();
        for add in adds {
            add.await
                .unwrap()
                .expect("a concurrent learner change failed");
        }
        let status = n1.status().await.unwrap();
        let members: BTreeSet<_> = status.members.iter().map(|m| m.id).collect();
        let expected: BTreeSet<u64> = [1, 2, 3, 4, 5].into_iter().chain(10..18).collect();
        assert_eq!(members, expected);
        n1.shutdown().await;
    }

    /// Three nodes over gRPC: join with a one-time token, promote, write through a follower
    /// (forwarded, applied there before the answer), fail over after the leader stops, and a
    /// retried request id applies once across the leader change.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn three_nodes_join_forward_and_fail_over() {
        three_nodes(false).await;
    }

    /// The same over mutual TLS: the join token carries the CA, joiners get certificates that
    /// name their node id and the cluster, and every call is checked against them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn three_nodes_over_mutual_tls() {
        three_nodes(true).await;
    }

    async fn three_nodes(tls: bool) {
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let addrs: Vec<_> = (0..3).map(|_| free_port()).collect();
        let first_tls = tls.then(|| crate::tls::new_cluster_files("c1", 1).unwrap());
        let n1 = start_member(
            dirs[0].path(),
            1,
            "c1",
            addrs[0],
            StartMode::Bootstrap,
            first_tls,
        )
        .await;

        let mut nodes = vec![n1];
        for i in 1..3 {
            let token = nodes[0]
                .create_join_token(ctx(&format!("token-{i}")), Duration::from_secs(60))
                .await
                .unwrap();
            let info = NodeInfo {
                addr: addrs[i].to_string(),
                region: format!("region-{}", i + 1),
                client_url: String::new(),
                blob_addr: String::new(),
            };
            // Join through the newest member, which forwards to the leader if needed.
            let via = nodes.last().unwrap().cluster_addr().to_string();
            let nonce = format!("nonce-of-node-{i}-0123456789");
            let wait = Duration::from_secs(10);
            let ticket = join(&via, &token, &nonce, &info, wait).await.unwrap();
            assert_eq!(ticket.cluster_id, "c1");
            assert_eq!(ticket.node_id, i as u64 + 1, "ids are minted in order");
            // The same joiner retrying gets its ticket again; anyone else is refused, so a
            // wiped node cannot come back under the id a spent token gave it.
            let again = join(&via, &token, &nonce, &info, wait).await.unwrap();
            assert_eq!(again.node_id, ticket.node_id);
            let other = join(&via, &token, "another-joiner-0123456789", &info, wait).await;
            assert!(other.is_err(), "a used token admitted a second node");
            assert_eq!(
                ticket.tls.is_some(),
                tls,
                "certificates come with a TLS join"
            );
            if tls {
                assert!(token.split('.').count() == 4, "a TLS token carries the CA");
            }
            let node = start_member(
                dirs[i].path(),
                ticket.node_id,
                "c1",
                addrs[i],
                StartMode::Member,
                ticket.tls.clone(),
            )
            .await;
            wait_for("learner catches up", || node.is_ready()).await;
            nodes.push(node);
        }
        let bad = join(
            &addrs[0].to_string(),
            "wharf-join-bogus",
            "some-nonce-0123456789",
            &NodeInfo::default(),
            Duration::from_secs(5),
        )
        .await;
        assert!(bad.is_err());
        if tls {
            // A token naming another CA: the handshake with this cluster fails.
            let other = crate::tls::new_cluster_files("c1", 1).unwrap();
            let der = crate::tls::first_cert_der(&other.ca_pem).unwrap();
            let forged = format_token("c1", "secret", Some(&der));
            let wait = Duration::from_secs(5);
            let err = join(
                &addrs[0].to_string(),
                &forged,
                "nonce-0123456789ab",
                &NodeInfo::default(),
                wait,
            )
            .await
            .unwrap_err();
            assert!(err.to_string().contains("cannot join"), "{err}");
        }

        for id in [2, 3] {
            let dry = nodes[1]
                .change_membership(MembershipAction::Promote, id, None, true)
                .await
                .unwrap();
            assert!(dry.voters_after.contains(&id));
            let done = nodes[2]
                .change_membership(
                    MembershipAction::Promote,
                    id,
                    Some(dry.membership_index),
                    false,
                )
                .await
                .unwrap();
            assert!(done.voters_after.contains(&id));
        }
        let status = nodes[1].status().await.unwrap();
        assert_eq!(status.voters, vec![1, 2, 3]);
        assert_eq!(status.leader, Some(1));

        tracing::info!("--- a write through a follower is applied there before the answer");
        nodes[2]
            .propose(ctx("w1"), create_repo("through-follower"))
            .await
            .unwrap();
        assert!(repo_exists(&nodes[2], "through-follower"));
        nodes[1].read_barrier().await.unwrap();
        assert!(repo_exists(&nodes[1], "through-follower"));

        if tls {
            rotate_certs_under_traffic(&nodes, &dirs, addrs[0]).await;
        }

        tracing::info!("--- the leader stops; the others elect a new one and keep taking writes");
        nodes[0].shutdown().await;
        wait_for("a new leader", || {
            matches!(nodes[1].current_leader(), Some(2 | 3))
                && nodes[1].current_leader() == nodes[2].current_leader()
        })
        .await;
        let r1 = nodes[1]
            .propose(ctx("after-failover"), create_repo("after"))
            .await
            .unwrap();
        let r2 = nodes[2]
            .propose(ctx("after-failover"), create_repo("after-dup"))
            .await
            .unwrap();
        assert_eq!(r1, r2, "a retried request id returns the first result");
        nodes[2].read_barrier().await.unwrap();
        assert!(repo_exists(&nodes[2], "after"));
        assert!(
            !repo_exists(&nodes[2], "after-dup"),
            "the retry did not apply again"
        );
        for n in &nodes[1..] {
            n.shutdown().await;
        }
    }

    /// `rotate-certs` asked on a follower: every member ends up signing with, presenting and
    /// storing the new CA's certificates, writes keep flowing over fresh connections, and after
    /// `--finish` a certificate from the old CA is refused by the listener.
    async fn rotate_certs_under_traffic(
        nodes: &[ClusterNode],
        dirs: &[tempfile::TempDir],
        leader_addr: SocketAddr,
    ) {
        tracing::info!("--- certificate rotation");
        let old = nodes[1].tls_files().unwrap();
        let old_ca = crate::tls::first_cert_der(&old.ca_pem).unwrap();
        let certs = nodes[2].rotate_certs(false).await.unwrap();
        let ids: Vec<_> = certs.iter().map(|c| c.node_id).collect();
        assert_eq!(ids, vec![1, 2, 3]);
        assert!(certs.iter().all(|c| c.trusted_cas == 2), "{certs:?}");
        let new = nodes[1].tls_files().unwrap();
        let new_ca = crate::tls::first_cert_der(&new.ca_pem).unwrap();
        assert_ne!(new_ca, old_ca, "a new CA signs");
        for (node, dir) in nodes.iter().zip(dirs) {
            let files = node.tls_files().unwrap();
            assert_eq!(crate::tls::first_cert_der(&files.ca_pem).unwrap(), new_ca);
            assert_ne!(files.node_pem, old.node_pem);
            let stored = crate::tls::load(dir.path()).unwrap().unwrap();
            assert_eq!(stored, files, "what a node uses is on its disk");
        }
        nodes[1]
            .propose(ctx("after-rotate"), create_repo("after-rotate"))
            .await
            .unwrap();

        let finished = nodes[1].rotate_certs(true).await.unwrap();
        assert!(finished.iter().all(|c| c.trusted_cas == 1), "{finished:?}");
        nodes[2]
            .propose(ctx("after-finish"), create_repo("after-finish"))
            .await
            .unwrap();

        // Node 2 presenting its old certificate (while trusting the new CA) is refused; the
        // same call with its current certificate goes through.
        let call = |files: TlsFiles| async move {
            let tls = Arc::new(ClusterTls::new(files).unwrap());
            let peers = Peers::new("c1".into(), 2, Duration::from_secs(5), None, Some(tls));
            let channel = peers
                .channel(1, &leader_addr.to_string(), crate::peers::Lane::Rpc)
                .unwrap();
            let request = peers.request(1, pb::StatusRequest {});
            pb::admin_client::AdminClient::new(channel)
                .status(request)
                .await
        };
        let current = nodes[1].tls_files().unwrap();
        call(current.clone())
            .await
            .expect("the current certificate works");
        let stale = TlsFiles {
            ca_pem: format!("{}{}", current.ca_pem, old.ca_pem),
            ..old
        };
        assert!(
            call(stale).await.is_err(),
            "a certificate from the old CA was accepted after --finish"
        );
    }
}
