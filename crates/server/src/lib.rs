//! Assembles a node: config → data dir and identity → blob store → raft (`wharf-cluster`) →
//! registry → HTTP routes (formats, admin API, health) → listener (plain or TLS) → workers;
//! and shuts it down in reverse on SIGTERM / Ctrl-C.
//!
//! Start at [`run`].

mod admin;
mod cluster_api;
mod forwarding;
mod identity;
mod listener;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use wharf_blob::FsBlobStore;
use wharf_cluster::{ClusterNode, ClusterTls, NodeInfo, RaftTiming, StartMode, StartOptions};
use wharf_config::Config;
use wharf_registry::Registry;
use wharf_replication::{Replicator, ReplicatorOptions, Security, Windows};

pub use identity::NodeIdentity;

/// Largest page of tags / catalog entries / referrers.
const MAX_PAGE: usize = 1000;
/// How often expired upload sessions are swept.
const SWEEP_INTERVAL: Duration = Duration::from_secs(600);

/// Why a node could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("node identity: {0}")]
    Identity(String),
    #[error("blob store: {0}")]
    Blob(#[from] wharf_blob::BlobError),
    #[error("raft: {0}")]
    Cluster(#[from] wharf_cluster::ClusterError),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("blob replication: {0}")]
    Replication(String),
    #[error(transparent)]
    PlantedBug(#[from] wharf_types::planted::PlantedBugError),
}

/// Health facts shared with the `/readyz` and `/metrics` handlers.
#[derive(Clone)]
struct Health {
    cluster: Arc<ClusterNode>,
    replication: Arc<Replicator>,
}

/// How a node may come up when its data directory is not part of a cluster yet.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Create a new single-node cluster in a fresh directory (`wharf dev`, `wharf cluster
    /// init`). Otherwise a fresh directory must join (`cluster.join` + a token).
    pub bootstrap: bool,
    /// The one-time token for `cluster.join` (`--token` / `WHARF_JOIN_TOKEN`).
    pub join_token: Option<String>,
}

/// How long joining a cluster may take.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The raft timing a configuration asks for.
fn timing(config: &Config) -> RaftTiming {
    let c = &config.cluster;
    RaftTiming {
        heartbeat: Duration::from_millis(c.heartbeat_ms),
        election_timeout_min: Duration::from_millis(c.election_timeout_min_ms),
        election_timeout_max: Duration::from_millis(c.election_timeout_max_ms),
        snapshot_chunk_timeout: Duration::from_millis(c.snapshot_chunk_timeout_ms),
        snapshot_every_entries: c.snapshot_every_entries,
        log_entries_kept: c.log_entries_kept,
        promote_max_lag: c.promote_max_lag,
    }
}

fn tls_error(e: wharf_cluster::tls::TlsError) -> ServerError {
    ServerError::Tls(format!("cluster certificates: {e}"))
}

/// The client URL other nodes show for this one.
fn client_url(config: &Config) -> String {
    match &config.server.public_url {
        Some(url) => url.trim_end_matches('/').to_string(),
        None => {
            let scheme = if config.http.tls.is_some() {
                "https"
            } else {
                "http"
            };
            format!("{scheme}://{}", config.server.listen)
        }
    }
}

/// Finds out who this node is: from `node.toml`, by joining a cluster, or by creating one.
async fn establish_identity(
    config: &Config,
    options: &RunOptions,
) -> Result<(NodeIdentity, StartMode), ServerError> {
    let data_dir = &config.server.data_dir;
    if let Some(identity) = identity::load(data_dir)? {
        if identity.region != config.server.region {
            tracing::warn!(
                recorded = identity.region,
                configured = config.server.region,
                "server.region differs from the region this node joined with; keeping the recorded one"
            );
        }
        return Ok((identity, StartMode::Member));
    }
    if let Some(join) = &config.cluster.join {
        let token = options.join_token.clone().ok_or_else(|| {
            ServerError::Identity(format!(
                "joining {join} needs a token from `wharf cluster join-token` (--token or WHARF_JOIN_TOKEN)"
            ))
        })?;
        let info = NodeInfo {
            addr: config.cluster.advertised().to_string(),
            region: config.server.region.clone(),
            client_url: client_url(config),
            blob_addr: config.replication_advertised().to_string(),
        };
        let nonce = identity::join_nonce(data_dir)?;
        let ticket = wharf_cluster::join(join, &token, &nonce, &info, JOIN_TIMEOUT).await?;
        tracing::info!(
            node_id = ticket.node_id,
            cluster_id = ticket.cluster_id,
            "joined the cluster as a learner"
        );
        let identity = NodeIdentity {
            node_id: ticket.node_id,
            region: config.server.region.clone(),
            cluster_id: ticket.cluster_id,
        };
        if let Some(files) = &ticket.tls {
            wharf_cluster::tls::store(data_dir, files).map_err(tls_error)?;
        }
        identity::store_with_raft_dir(data_dir, &identity)?;
        return Ok((identity, StartMode::Member));
    }
    if options.bootstrap {
        let identity = NodeIdentity {
            node_id: wharf_meta::apply::FIRST_NODE_ID,
            region: config.server.region.clone(),
            cluster_id: hex::encode(rand::random::<[u8; 16]>()),
        };
        if config.cluster.wants_tls() {
            let files =
                wharf_cluster::tls::new_cluster_files(&identity.cluster_id, identity.node_id)
                    .map_err(tls_error)?;
            wharf_cluster::tls::store(data_dir, &files).map_err(tls_error)?;
        }
        identity::store_with_raft_dir(data_dir, &identity)?;
        return Ok((identity, StartMode::Bootstrap));
    }
    Err(ServerError::Identity(format!(
        "{} is not part of a cluster yet: create one with `wharf cluster init --config FILE`, or \
         join one with `cluster.join` / `--join ADDR --token TOKEN`",
        data_dir.display()
    )))
}

/// Starts the raft node of this data directory.
async fn start_cluster(
    config: &Config,
    options: &RunOptions,
) -> Result<Arc<ClusterNode>, ServerError> {
    std::fs::create_dir_all(&config.server.data_dir)?;
    let (identity, mode) = establish_identity(config, options).await?;
    let info = NodeInfo {
        addr: config.cluster.advertised().to_string(),
        region: identity.region.clone(),
        client_url: client_url(config),
        blob_addr: config.replication_advertised().to_string(),
    };
    let tls = match wharf_cluster::tls::load(&config.server.data_dir).map_err(tls_error)? {
        Some(files) => Some(Arc::new(ClusterTls::new(files).map_err(tls_error)?)),
        None if !config.cluster.all_loopback() => {
            return Err(ServerError::Tls(format!(
                "{} has no cluster certificates (tls/), and plaintext between nodes is allowed \
                 only on loopback; this cluster was created without TLS",
                config.server.data_dir.display()
            )));
        }
        None => None,
    };
    let node = ClusterNode::start(StartOptions {
        data_dir: config.server.data_dir.clone(),
        node_id: identity.node_id,
        cluster_id: identity.cluster_id.clone(),
        info,
        listen: config.cluster.listen,
        timing: timing(config),
        mode,
        links: None,
        tls,
    })
    .await?;
    Ok(Arc::new(node))
}

/// `wharf cluster init`: makes a fresh data directory the first voter of a new cluster and
/// returns its node id and cluster id.
pub async fn init_cluster(config: &Config) -> Result<NodeIdentity, ServerError> {
    if identity::load(&config.server.data_dir)?.is_some() {
        return Err(ServerError::Identity(format!(
            "{} already belongs to a cluster",
            config.server.data_dir.display()
        )));
    }
    let options = RunOptions {
        bootstrap: true,
        join_token: None,
    };
    let cluster = start_cluster(config, &options).await?;
    cluster.shutdown().await;
    identity::load(&config.server.data_dir)?
        .ok_or_else(|| ServerError::Identity("node.toml was not written".into()))
}

/// Runs a node until `shutdown` resolves, then stops it gracefully (in-flight requests finish,
/// raft closes its databases).
pub async fn run(
    config: Config,
    options: RunOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    if let Some(bug) = wharf_types::planted::from_env()? {
        tracing::warn!(
            planted_bug = %bug,
            "planted bug {bug} is active: this node breaks a guarantee on purpose, for \
             fault-injection tests (a --features planted-bugs build)"
        );
    }
    let data_dir: PathBuf = config.server.data_dir.clone();
    let bound = listener::bind(&config).await?;
    let cluster = start_cluster(&config, &options).await?;
    let node_id = cluster.node_id();
    tracing::info!(node_id, cluster_id = cluster.cluster_id(), cluster_addr = %cluster.cluster_addr(), data_dir = %data_dir.display(), "starting");

    let blobs = FsBlobStore::open(&data_dir, node_id)?;
    blobs.set_min_free(config.storage.min_free_bytes);
    let replication = start_replication(&config, &cluster, &blobs)?;
    let registry = Registry::new(
        cluster.clone(),
        blobs.clone(),
        node_id,
        config.server.auto_create_repos,
        Arc::new(stop_on_fatal),
    )
    .with_max_staleness(Duration::from_millis(config.read.max_staleness_ms))
    .with_replication(replication.clone());

    let sweeper = tokio::spawn(sweep_uploads(
        blobs,
        Duration::from_secs(config.uploads.session_idle_timeout_secs),
    ));
    let app = routes(
        &config,
        registry,
        cluster.clone(),
        replication.clone(),
        node_id,
    );
    replication.set_forward_handler(forwarding::handler(app.clone()));
    let served = listener::serve(bound, app, shutdown).await;
    sweeper.abort();
    replication.shutdown().await;
    cluster.shutdown().await;
    tracing::info!(node_id, "stopped");
    served
}

/// Starts this node's QUIC blob transfer: mutual TLS under the cluster CA, or on a loopback
/// cluster without one, a throwaway certificate (DESIGN.md §2).
fn start_replication(
    config: &Config,
    cluster: &Arc<ClusterNode>,
    blobs: &FsBlobStore,
) -> Result<Arc<Replicator>, ServerError> {
    let security = match cluster.tls() {
        Some(tls) => Security::Cluster {
            cluster_id: cluster.cluster_id().to_string(),
            tls,
        },
        None => Security::loopback().map_err(|e| ServerError::Tls(e.to_string()))?,
    };
    let r = &config.replication;
    let identity = identity::load(&config.server.data_dir)?
        .ok_or_else(|| ServerError::Identity("node.toml disappeared".into()))?;
    Replicator::start(ReplicatorOptions {
        node_id: cluster.node_id(),
        region: identity.region,
        listen: config.replication_listen(),
        security,
        windows: Windows {
            stream: r.stream_window_bytes,
            connection: r.connection_window_bytes,
        },
        max_bytes_in_flight: r.max_bytes_in_flight,
        min_copies: config.durability.min_copies,
        scrub_interval: (r.scrub_interval_secs > 0)
            .then(|| Duration::from_secs(r.scrub_interval_secs)),
        blobs: blobs.clone(),
        meta: cluster.clone(),
        cluster: cluster.clone(),
        on_fatal: Arc::new(stop_on_fatal),
    })
    .map_err(|e| ServerError::Replication(e.to_string()))
}

fn routes(
    config: &Config,
    registry: Registry,
    cluster: Arc<ClusterNode>,
    replication: Arc<Replicator>,
    node_id: u64,
) -> Router {
    let forwarding_registry = registry.clone();
    let oci = wharf_oci::router(wharf_oci::OciState {
        registry: registry.clone(),
        max_manifest_bytes: config.http.max_manifest_bytes,
        max_page: MAX_PAGE,
    });
    let external = wharf_http::ExternalUrl::new(
        config.server.public_url.as_deref(),
        &config.server.trusted_proxies,
        config.http.tls.is_some(),
    );
    let generic = wharf_generic::router(wharf_generic::GenericState {
        registry: registry.clone(),
        external: external.clone(),
    });
    let npm = wharf_npm::router(wharf_npm::NpmState::new(
        registry.clone(),
        external.clone(),
        config.http.max_npm_publish_bytes,
    ));
    let cargo = wharf_cargo::router(wharf_cargo::CargoState::new(
        registry.clone(),
        external.clone(),
        config.http.max_cargo_publish_bytes,
        config.http.max_crate_unpacked_bytes,
    ));
    let pypi = wharf_pypi::router(wharf_pypi::PypiState::new(
        registry.clone(),
        external,
        config.http.max_pypi_upload_bytes,
    ));
    let admin = admin::router(admin::AdminState {
        registry,
        max_body: config.http.max_admin_body_bytes,
    });
    let cluster_api = cluster_api::router(cluster_api::ClusterApiState {
        cluster: cluster.clone(),
        replication: replication.clone(),
        max_body: config.http.max_admin_body_bytes,
    });
    let health = Router::new()
        .route("/livez", axum::routing::get(|| async { "ok\n" }))
        .route("/readyz", axum::routing::get(readyz))
        .route("/metrics", axum::routing::get(metrics))
        .with_state(Health {
            cluster,
            replication: replication.clone(),
        });
    Router::new()
        .merge(oci)
        .merge(generic)
        .merge(npm)
        .merge(cargo)
        .merge(pypi)
        .merge(admin)
        .merge(cluster_api)
        .merge(health)
        .fallback(|| async { (StatusCode::NOT_FOUND, "no such endpoint\n") })
        .layer(axum::middleware::from_fn_with_state(
            forwarding::UploadForwarding {
                node_id,
                replication,
                registry: forwarding_registry,
            },
            forwarding::forward_foreign_uploads,
        ))
        // Every body is either streamed or read under its route's own limit; axum's 2 MB default
        // must not apply anywhere.
        .layer(DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(
            wharf_http::NodeHeader::new(node_id),
            wharf_http::node_and_span,
        ))
}

async fn readyz(State(h): State<Health>) -> Response {
    if h.cluster.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no leader yet, or still catching up with the log\n",
        )
            .into_response()
    }
}

async fn metrics(State(h): State<Health>) -> Response {
    let c = &h.cluster;
    // Unreadable state reads as "no divergence known" here; the state-hash endpoint reports it.
    let (cluster_version, divergence) = c.versions().unwrap_or((0, None));
    let body = format!(
        "# TYPE wharf_node_ready gauge\nwharf_node_ready{{node=\"{id}\"}} {ready}\n\
         # TYPE wharf_raft_term gauge\nwharf_raft_term{{node=\"{id}\"}} {term}\n\
         # TYPE wharf_raft_last_applied gauge\nwharf_raft_last_applied{{node=\"{id}\"}} {applied}\n\
         # TYPE wharf_raft_is_leader gauge\nwharf_raft_is_leader{{node=\"{id}\"}} {leader}\n\
         # TYPE wharf_raft_is_voter gauge\nwharf_raft_is_voter{{node=\"{id}\"}} {voter}\n\
         # TYPE wharf_raft_snapshot_index gauge\nwharf_raft_snapshot_index{{node=\"{id}\"}} {snapshot}\n\
         # TYPE wharf_raft_purged_index gauge\nwharf_raft_purged_index{{node=\"{id}\"}} {purged}\n\
         # TYPE wharf_cluster_version gauge\nwharf_cluster_version{{node=\"{id}\"}} {cluster_version}\n\
         # HELP wharf_cluster_state_divergence 1 once two nodes reported different state hashes at the same index.\n\
         # TYPE wharf_cluster_state_divergence gauge\nwharf_cluster_state_divergence{{node=\"{id}\"}} {diverged}\n{cert}{replication}",
        id = c.node_id(),
        ready = u8::from(c.is_ready()),
        term = c.current_term(),
        applied = c.last_applied_index().unwrap_or(0),
        leader = u8::from(c.current_leader() == Some(c.node_id())),
        voter = u8::from(c.is_voter()),
        snapshot = c.snapshot_index().unwrap_or(0),
        purged = c.purged_index().unwrap_or(0),
        diverged = u8::from(divergence.is_some()),
        replication = h.replication.metrics_text(),
        cert = c.cert_not_after().map_or(String::new(), |t| format!(
            "# HELP wharf_cluster_cert_expiry_timestamp_seconds When this node's cluster certificate expires.\n\
             # TYPE wharf_cluster_cert_expiry_timestamp_seconds gauge\n\
             wharf_cluster_cert_expiry_timestamp_seconds{{node=\"{}\"}} {t}\n",
            c.node_id()
        )),
    );
    (
        [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        body,
    )
        .into_response()
}

/// An fsync failed: the node can no longer tell what is on disk, so it stops at once rather
/// than acknowledge anything else (DESIGN.md §1.2). A restart cleans partial uploads.
fn stop_on_fatal(reason: &str) {
    tracing::error!(reason, "fatal storage error; stopping the node");
    eprintln!("wharf: fatal storage error, stopping: {reason}");
    std::process::exit(70);
}

/// Drops upload sessions idle longer than `max_idle` (24 h by default).
async fn sweep_uploads(blobs: FsBlobStore, max_idle: Duration) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL.min(max_idle));
    loop {
        tick.tick().await;
        let dropped = blobs.sweep_expired_uploads(max_idle);
        if dropped > 0 {
            tracing::info!(dropped, "expired upload sessions removed");
        }
    }
}
