//! Assembles a node: config → data dir and identity → blob store → raft (`wharf-cluster`) →
//! registry → HTTP routes (formats, admin API, health) → listener (plain or TLS) → workers;
//! and shuts it down in reverse on SIGTERM / Ctrl-C.
//!
//! Start at [`run`].

mod admin;
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
use wharf_cluster::{ClusterNode, NodeInfo};
use wharf_config::Config;
use wharf_registry::Registry;

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
}

/// Health facts shared with the `/readyz` and `/metrics` handlers.
#[derive(Clone)]
struct Health {
    cluster: Arc<ClusterNode>,
}

/// Runs a node until `shutdown` resolves, then stops it gracefully (in-flight requests finish,
/// raft closes its databases).
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let data_dir: PathBuf = config.server.data_dir.clone();
    std::fs::create_dir_all(&data_dir)?;
    let identity = identity::load_or_create(&data_dir, &config.server.region)?;
    let node_id = identity.node_id;
    tracing::info!(node_id, data_dir = %data_dir.display(), "starting");

    let blobs = FsBlobStore::open(&data_dir, node_id)?;
    blobs.set_min_free(config.storage.min_free_bytes);
    let info = NodeInfo {
        addr: config.server.listen.to_string(),
        region: identity.region.clone(),
        client_url: format!("http://{}", config.server.listen),
    };
    let cluster = Arc::new(ClusterNode::start_single(&data_dir, node_id, info).await?);
    let registry = Registry::new(
        cluster.clone(),
        blobs.clone(),
        node_id,
        config.server.auto_create_repos,
        Arc::new(stop_on_fatal),
    );

    let sweeper = tokio::spawn(sweep_uploads(
        blobs,
        Duration::from_secs(config.uploads.session_idle_timeout_secs),
    ));
    let app = routes(&config, registry, cluster.clone(), node_id);
    let served = listener::serve(&config, app, shutdown).await;
    sweeper.abort();
    cluster.shutdown().await;
    tracing::info!(node_id, "stopped");
    served
}

fn routes(config: &Config, registry: Registry, cluster: Arc<ClusterNode>, node_id: u64) -> Router {
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
        external,
    });
    let admin = admin::router(admin::AdminState {
        registry,
        max_body: config.http.max_admin_body_bytes,
    });
    let health = Router::new()
        .route("/livez", axum::routing::get(|| async { "ok\n" }))
        .route("/readyz", axum::routing::get(readyz))
        .route("/metrics", axum::routing::get(metrics))
        .with_state(Health { cluster });
    Router::new()
        .merge(oci)
        .merge(generic)
        .merge(admin)
        .merge(health)
        .fallback(|| async { (StatusCode::NOT_FOUND, "no such endpoint\n") })
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
            "not ready: no leader yet or still applying the log\n",
        )
            .into_response()
    }
}

async fn metrics(State(h): State<Health>) -> Response {
    let c = &h.cluster;
    let body = format!(
        "# TYPE wharf_node_ready gauge\nwharf_node_ready{{node=\"{id}\"}} {ready}\n\
         # TYPE wharf_raft_term gauge\nwharf_raft_term{{node=\"{id}\"}} {term}\n\
         # TYPE wharf_raft_last_applied gauge\nwharf_raft_last_applied{{node=\"{id}\"}} {applied}\n\
         # TYPE wharf_raft_is_leader gauge\nwharf_raft_is_leader{{node=\"{id}\"}} {leader}\n",
        id = c.node_id(),
        ready = u8::from(c.is_ready()),
        term = c.current_term(),
        applied = c.last_applied_index().unwrap_or(0),
        leader = u8::from(c.current_leader() == Some(c.node_id())),
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
