//! Blobs across the cluster (DESIGN.md §1.2, §1.4, §4 "Replication"): a QUIC endpoint per node
//! (quinn, mutual TLS under the cluster CA) that answers have-queries, serves fetches from an
//! offset and takes pushed copies; the client side that pushes copies until `min_copies`
//! members hold an upload, reads a blob through from the nearest holder while keeping a verified
//! copy, and a resync worker that fetches what this node should hold and keeps its holdings
//! (`HoldingsChanged` through Raft) equal to what is on its disk.
//!
//! Start at [`Replicator::start`]; the wire protocol is in [`protocol`], chunk verification in
//! [`verify`], and the pure choices (who to ask, whom to push to) in [`placement`].

mod forward;
pub mod placement;
pub mod protocol;
pub mod quic;
mod resync;
mod transfer;
pub mod verify;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use wharf_blob::FsBlobStore;
use wharf_cluster::{ClusterNode, NodeInfo};
use wharf_meta::MetaHandle;
use wharf_types::{Digest, ErrorCode, NodeId};

pub use forward::{ForwardBody, ForwardHandler, ForwardRequest, Forwarded};
pub use quic::{Security, Windows};
pub use transfer::HoldingChange;

/// What replication needs to know about the cluster.
pub trait ClusterView: Send + Sync + 'static {
    /// Every member of the configuration (voters and learners).
    fn members(&self) -> Vec<(NodeId, NodeInfo)>;
    /// Index of the last entry this node applied.
    fn applied_index(&self) -> Option<u64>;
    /// Whether this node leads the cluster (it runs the repair worker).
    fn is_leader(&self) -> bool;
    /// Members known to be up (on the leader: heard from recently; elsewhere: all).
    fn live_members(&self) -> Vec<NodeId>;
}

impl ClusterView for ClusterNode {
    fn members(&self) -> Vec<(NodeId, NodeInfo)> {
        ClusterNode::members(self)
    }
    fn applied_index(&self) -> Option<u64> {
        self.last_applied_index()
    }
    fn is_leader(&self) -> bool {
        self.current_leader() == Some(self.node_id())
    }
    fn live_members(&self) -> Vec<NodeId> {
        self.responsive_members(LIVE_WITHIN)
    }
}

/// A member the leader has not heard from for this long counts as down for repairs.
const LIVE_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Why a transfer failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    #[error("no member other than this node holds {0}")]
    NoHolder(Digest),
    #[error(
        "{have} of the {needed} copies required (durability.min_copies) could be made: {reason}"
    )]
    NotEnoughCopies {
        have: usize,
        needed: usize,
        reason: String,
    },
    #[error("node {peer}: {message}")]
    Peer { peer: NodeId, message: String },
    #[error("blob store: {0}")]
    Blob(#[from] wharf_blob::BlobError),
    #[error("metadata: {0}")]
    Meta(#[from] wharf_meta::MetaError),
    #[error("{0}")]
    Setup(String),
}

impl ReplicationError {
    /// The stable code a client sees.
    pub fn code(&self) -> ErrorCode {
        match self {
            ReplicationError::NoHolder(_) | ReplicationError::Peer { .. } => ErrorCode::NotHeldHere,
            ReplicationError::NotEnoughCopies { .. } => ErrorCode::NotEnoughCopies,
            ReplicationError::Blob(e) => e.code(),
            ReplicationError::Meta(_) | ReplicationError::Setup(_) => ErrorCode::Internal,
        }
    }
}

/// How to start a node's replication.
pub struct ReplicatorOptions {
    pub node_id: NodeId,
    pub region: String,
    /// Where the QUIC endpoint binds (UDP).
    pub listen: SocketAddr,
    pub security: Security,
    pub windows: Windows,
    /// Bytes received from peers at once, over every transfer.
    pub max_bytes_in_flight: u64,
    /// `durability.min_copies` (unset: 2, or 1 on a single-member cluster).
    pub min_copies: Option<u32>,
    /// How often every held blob is re-hashed (`None`: never).
    pub scrub_interval: Option<std::time::Duration>,
    pub blobs: FsBlobStore,
    pub meta: Arc<dyn MetaHandle>,
    pub cluster: Arc<dyn ClusterView>,
    /// Called when a storage error means the node must stop (an fsync failed).
    pub on_fatal: FatalHandler,
}

/// Stops the node (see [`ReplicatorOptions::on_fatal`]).
pub type FatalHandler = Arc<dyn Fn(&str) + Send + Sync>;

/// Counters exported on `/metrics`.
#[derive(Default)]
struct Counters {
    /// Per peer: bytes received from it, bytes sent to it.
    bytes: Mutex<BTreeMap<NodeId, (u64, u64)>>,
    /// Blobs this node should hold and does not (last resync round).
    backlog: AtomicU64,
    /// Copies fetched by the resync worker (eager replication and repairs).
    resynced: AtomicU64,
    /// Corrupt local copies dropped (then fetched again from a peer).
    corrupt_dropped: AtomicU64,
    /// Blobs the scrubber re-hashed.
    scrubbed: AtomicU64,
    /// Copies the leader's repair worker made (pushed or fetched) to restore `min_copies`.
    repairs: AtomicU64,
    /// Transfers from a peer that failed verification.
    verify_failures: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One node's replication: its QUIC endpoint, connections to peers, and workers.
pub struct Replicator {
    node_id: NodeId,
    region: String,
    security: Security,
    windows: Windows,
    endpoint: quinn::Endpoint,
    blobs: FsBlobStore,
    meta: Arc<dyn MetaHandle>,
    cluster: Arc<dyn ClusterView>,
    min_copies: Option<u32>,
    scrub_interval: Option<std::time::Duration>,
    connections: tokio::sync::Mutex<HashMap<NodeId, quinn::Connection>>,
    /// Receive buffers, in units of [`PERMIT_BYTES`].
    in_flight: Arc<tokio::sync::Semaphore>,
    /// Fills under way, so that concurrent reads of one digest share one fetch.
    fills: Mutex<HashMap<Digest, tokio::sync::watch::Receiver<transfer::FillStatus>>>,
    holdings: tokio::sync::mpsc::UnboundedSender<HoldingChange>,
    counters: Counters,
    on_fatal: FatalHandler,
    forward_handler: std::sync::OnceLock<ForwardHandler>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// Unit of the in-flight semaphore.
const PERMIT_BYTES: u64 = 64 * 1024;

impl Replicator {
    /// Binds the QUIC endpoint and starts the listener, the holdings reporter and the resync
    /// worker.
    pub fn start(opts: ReplicatorOptions) -> Result<Arc<Replicator>, ReplicationError> {
        let setup = |e: &dyn std::fmt::Display| ReplicationError::Setup(e.to_string());
        let server = opts
            .security
            .server_config(&opts.windows)
            .map_err(|e| setup(&e))?;
        let endpoint = quinn::Endpoint::server(server, opts.listen).map_err(|e| {
            ReplicationError::Setup(format!(
                "cannot bind the QUIC endpoint on {}: {e}",
                opts.listen
            ))
        })?;
        let permits = usize::try_from(opts.max_bytes_in_flight / PERMIT_BYTES)
            .unwrap_or(usize::MAX)
            .clamp(
                usize::try_from(transfer::TRANSFER_BUFFER / PERMIT_BYTES).unwrap_or(1),
                tokio::sync::Semaphore::MAX_PERMITS,
            );
        let (holdings, reports) = tokio::sync::mpsc::unbounded_channel();
        let replicator = Arc::new(Replicator {
            node_id: opts.node_id,
            region: opts.region,
            security: opts.security,
            windows: opts.windows,
            endpoint,
            blobs: opts.blobs,
            meta: opts.meta,
            cluster: opts.cluster,
            min_copies: opts.min_copies,
            scrub_interval: opts.scrub_interval,
            connections: tokio::sync::Mutex::new(HashMap::new()),
            in_flight: Arc::new(tokio::sync::Semaphore::new(permits)),
            fills: Mutex::new(HashMap::new()),
            holdings,
            counters: Counters::default(),
            on_fatal: opts.on_fatal,
            forward_handler: std::sync::OnceLock::new(),
            tasks: Mutex::new(Vec::new()),
        });
        let tasks = vec![
            tokio::spawn(transfer::serve(
                Arc::downgrade(&replicator),
                replicator.endpoint.clone(),
            )),
            tokio::spawn(resync::report_holdings(
                Arc::downgrade(&replicator),
                reports,
            )),
            tokio::spawn(resync::run(Arc::downgrade(&replicator))),
            tokio::spawn(resync::repair(Arc::downgrade(&replicator))),
            tokio::spawn(resync::scrub(Arc::downgrade(&replicator))),
        ];
        *lock(&replicator.tasks) = tasks;
        tracing::info!(addr = %replicator.local_addr(), "blob transfer (QUIC) listening");
        Ok(replicator)
    }

    /// This node's region (placement and data residency go by it).
    pub fn region(&self) -> &str {
        &self.region
    }

    /// Where the QUIC endpoint is bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.endpoint
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Stops the workers and closes every connection.
    pub async fn shutdown(&self) {
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
        self.endpoint
            .close(quinn::VarInt::from_u32(0), b"shutting down");
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), self.endpoint.wait_idle())
            .await;
    }

    /// The `/metrics` lines of this node's replication.
    pub fn metrics_text(&self) -> String {
        let id = self.node_id;
        let mut out = String::new();
        out.push_str("# TYPE wharf_replication_bytes_in_total counter\n");
        out.push_str("# TYPE wharf_replication_bytes_out_total counter\n");
        for (peer, (bytes_in, bytes_out)) in lock(&self.counters.bytes).iter() {
            out.push_str(&format!(
                "wharf_replication_bytes_in_total{{node=\"{id}\",peer=\"{peer}\"}} {bytes_in}\n\
                 wharf_replication_bytes_out_total{{node=\"{id}\",peer=\"{peer}\"}} {bytes_out}\n"
            ));
        }
        let c = &self.counters;
        out.push_str(&format!(
            "# HELP wharf_replication_backlog Blobs this node should hold and does not yet.\n\
             # TYPE wharf_replication_backlog gauge\nwharf_replication_backlog{{node=\"{id}\"}} {}\n\
             # TYPE wharf_replication_resynced_total counter\nwharf_replication_resynced_total{{node=\"{id}\"}} {}\n\
             # TYPE wharf_replication_corrupt_dropped_total counter\nwharf_replication_corrupt_dropped_total{{node=\"{id}\"}} {}\n\
             # TYPE wharf_replication_verify_failures_total counter\nwharf_replication_verify_failures_total{{node=\"{id}\"}} {}\n\
             # TYPE wharf_replication_scrubbed_total counter\nwharf_replication_scrubbed_total{{node=\"{id}\"}} {}\n\
             # TYPE wharf_replication_repairs_total counter\nwharf_replication_repairs_total{{node=\"{id}\"}} {}\n",
            c.backlog.load(Ordering::Relaxed),
            c.resynced.load(Ordering::Relaxed),
            c.corrupt_dropped.load(Ordering::Relaxed),
            c.verify_failures.load(Ordering::Relaxed),
            c.scrubbed.load(Ordering::Relaxed),
            c.repairs.load(Ordering::Relaxed),
        ));
        out
    }

    /// Blobs this node should hold and does not, as of the last resync round.
    pub fn backlog(&self) -> u64 {
        self.counters.backlog.load(Ordering::Relaxed)
    }

    fn count_bytes(&self, peer: NodeId, received: u64, sent: u64) {
        let mut bytes = lock(&self.counters.bytes);
        let entry = bytes.entry(peer).or_default();
        entry.0 += received;
        entry.1 += sent;
    }
}
