//! The cluster part of the admin HTTP API, which `wharf cluster …` talks to. Any node
//! answers; what only the leader can do is forwarded to it over gRPC.
//!
//! ```text
//! GET  /api/v1/cluster                 status: leader, term, members with role, region, lag
//! POST /api/v1/cluster/join-tokens     {"ttl_secs"} -> {"token","ttl_secs"}
//! POST /api/v1/cluster/membership      {"action":"promote|demote|remove","node_id",
//!                                       "expected_membership_index"?,"dry_run"} -> plan
//! POST /api/v1/cluster/leader          {"node_id"} -> {"leader"}
//! POST /api/v1/cluster/rotate-certs    {"finish"?} -> {"nodes":[{"node_id","not_after",
//!                                       "trusted_cas"}]}  (every member must be up)
//! GET  /api/v1/cluster/state-hash      this node: {"node","applied_index","sha256",
//!                                       "checkpoints":[{"index","hashes"}],"divergence"} (local)
//! ```

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use wharf_cluster::{AdminError, ClusterNode, MembershipAction};
use wharf_meta::{MetaError, ProposeContext, RequestId};
use wharf_types::{ErrorCode, NodeId};

use crate::admin::error;

/// Longest a join token may live.
const MAX_TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default lifetime of a join token.
const DEFAULT_TOKEN_TTL_SECS: u64 = 3600;

#[derive(Clone)]
pub(crate) struct ClusterApiState {
    pub cluster: Arc<ClusterNode>,
    pub replication: Arc<wharf_replication::Replicator>,
    pub max_body: u64,
}

/// How long removing a node may wait for its blobs to reach `min_copies` elsewhere.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);

pub(crate) fn router(state: ClusterApiState) -> Router {
    Router::new()
        .route("/api/v1/cluster", axum::routing::get(status))
        .route(
            "/api/v1/cluster/join-tokens",
            axum::routing::post(join_token),
        )
        .route(
            "/api/v1/cluster/membership",
            axum::routing::post(membership),
        )
        .route(
            "/api/v1/cluster/leader",
            axum::routing::post(transfer_leader),
        )
        .route(
            "/api/v1/cluster/rotate-certs",
            axum::routing::post(rotate_certs),
        )
        .route("/api/v1/cluster/state-hash", axum::routing::get(state_hash))
        .with_state(state)
}

fn unavailable(code: ErrorCode, message: String) -> Response {
    let mut response = error(StatusCode::SERVICE_UNAVAILABLE, code, message);
    response.headers_mut().insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static("1"),
    );
    response
}

fn admin_error(e: AdminError) -> Response {
    match e {
        AdminError::NoQuorum(m) => unavailable(ErrorCode::NoQuorum, m),
        AdminError::OutcomeUnknown(m) => unavailable(ErrorCode::OutcomeUnknown, m),
        AdminError::Refused(m) => error(StatusCode::CONFLICT, ErrorCode::Conflict, m),
        AdminError::Unauthorized(m) => error(StatusCode::FORBIDDEN, ErrorCode::Denied, m),
        AdminError::Internal(m) => error(StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal, m),
    }
}

fn meta_error(e: MetaError) -> Response {
    match e {
        MetaError::NoQuorum(m) => unavailable(ErrorCode::NoQuorum, m),
        MetaError::OutcomeUnknown(m) => unavailable(ErrorCode::OutcomeUnknown, m),
        other => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            other.to_string(),
        ),
    }
}

async fn json_body<T: DeserializeOwned>(request: Request, max: u64) -> Result<T, Response> {
    let bytes = wharf_http::read_limited(request.into_body(), max)
        .await
        .map_err(|_| {
            error(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::BadRequest,
                "request body too large or broken",
            )
        })?;
    let bytes = if bytes.is_empty() {
        &b"{}"[..]
    } else {
        &bytes[..]
    };
    serde_json::from_slice(bytes).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            format!("invalid JSON: {e}"),
        )
    })
}

async fn status(State(state): State<ClusterApiState>) -> Response {
    match state.cluster.status().await {
        Ok(mut status) => {
            // Unreadable holdings leave the column empty; the status itself is still useful.
            if let Ok(backlog) = state.replication.backlog_by_member() {
                for member in &mut status.members {
                    member.backlog = backlog.get(&member.id).copied();
                }
            }
            axum::Json(status).into_response()
        }
        Err(e) => admin_error(e),
    }
}

/// Before a node leaves: copies every blob it holds until it has `min_copies` copies on the
/// other members (this node pushes or fetches them; the resync workers help), or refuses
/// after [`DRAIN_TIMEOUT`].
///
/// It waits for the blobs that were short when it began. Blobs recorded later are on their way
/// to their copies through their uploads and the resync workers; under a steady write load
/// there is always a fresh one, so waiting for those too would refuse every removal (found by
/// the jepsen harness's membership nemesis).
async fn drain(state: &ClusterApiState, leaving: NodeId) -> Result<(), Response> {
    let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
    let mut at_start: Option<std::collections::BTreeSet<wharf_types::Digest>> = None;
    loop {
        let short = state
            .replication
            .copy_for_leaving(leaving)
            .await
            .map_err(|e| {
                error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorCode::Internal,
                    e.to_string(),
                )
            })?;
        let pending = match &at_start {
            None => {
                at_start = Some(short.clone());
                short.len()
            }
            Some(first) => short.intersection(first).count(),
        };
        if pending == 0 {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(error(
                StatusCode::CONFLICT,
                ErrorCode::Conflict,
                format!(
                    "{pending} blob(s) held by node {leaving} would have fewer than \
                     durability.min_copies copies without it; the other members are still \
                     copying them (see wharf_replication_backlog); try again later"
                ),
            ));
        }
        tracing::info!(
            leaving,
            pending,
            "waiting for blobs to be copied before the node leaves"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinTokenRequest {
    #[serde(default)]
    ttl_secs: Option<u64>,
}

async fn join_token(State(state): State<ClusterApiState>, request: Request) -> Response {
    let body: JoinTokenRequest = match json_body(request, state.max_body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let ttl = Duration::from_secs(body.ttl_secs.unwrap_or(DEFAULT_TOKEN_TTL_SECS));
    if ttl.is_zero() || ttl > MAX_TOKEN_TTL {
        return error(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            format!("ttl_secs must be between 1 and {}", MAX_TOKEN_TTL.as_secs()),
        );
    }
    let ctx = ProposeContext {
        request_id: RequestId(hex::encode(rand::random::<[u8; 16]>())),
        actor: "admin".to_string(),
    };
    match state.cluster.create_join_token(ctx, ttl).await {
        Ok(token) => (
            StatusCode::CREATED,
            axum::Json(serde_json::json!({ "token": token, "ttl_secs": ttl.as_secs() })),
        )
            .into_response(),
        Err(e) => meta_error(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MembershipRequest {
    action: MembershipAction,
    node_id: NodeId,
    #[serde(default)]
    expected_membership_index: Option<u64>,
    #[serde(default)]
    dry_run: bool,
}

async fn membership(State(state): State<ClusterApiState>, request: Request) -> Response {
    let body: MembershipRequest = match json_body(request, state.max_body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    if !body.dry_run && body.expected_membership_index.is_none() {
        return error(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            "a membership change names the configuration it was planned against \
             (expected_membership_index); plan it first with dry_run",
        );
    }
    let expected = body.expected_membership_index.filter(|_| !body.dry_run);
    if body.action == MembershipAction::Remove
        && !body.dry_run
        && let Err(refused) = drain(&state, body.node_id).await
    {
        return refused;
    }
    match state
        .cluster
        .change_membership(body.action, body.node_id, expected, body.dry_run)
        .await
    {
        Ok(plan) => axum::Json(plan).into_response(),
        Err(e) => admin_error(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LeaderRequest {
    node_id: NodeId,
}

async fn transfer_leader(State(state): State<ClusterApiState>, request: Request) -> Response {
    let body: LeaderRequest = match json_body(request, state.max_body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    match state.cluster.transfer_leader(body.node_id).await {
        Ok(leader) => axum::Json(serde_json::json!({ "leader": leader })).into_response(),
        Err(e) => admin_error(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateCertsRequest {
    #[serde(default)]
    finish: bool,
}

async fn rotate_certs(State(state): State<ClusterApiState>, request: Request) -> Response {
    let body: RotateCertsRequest = match json_body(request, state.max_body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    match state.cluster.rotate_certs(body.finish).await {
        Ok(nodes) => axum::Json(serde_json::json!({ "nodes": nodes })).into_response(),
        Err(e) => admin_error(e),
    }
}

/// This node's state hash at its applied index, read locally (no barrier): operators and tests
/// compare nodes at equal applied indexes.
async fn state_hash(State(state): State<ClusterApiState>) -> Response {
    use redb::ReadableDatabase;
    use wharf_meta::MetaHandle;
    let db = state.cluster.state();
    let hashed = tokio::task::spawn_blocking(move || {
        let txn = db.begin_read().map_err(MetaError::from)?;
        let (applied, sha256) = wharf_meta::query::state_hash(&txn)?;
        let checkpoints = wharf_meta::versions::checkpoints(&txn)?;
        let divergence = wharf_meta::versions::divergence(&txn)?;
        Ok::<_, MetaError>((applied, sha256, checkpoints, divergence))
    })
    .await;
    match hashed {
        Ok(Ok((applied, sha256, checkpoints, divergence))) => axum::Json(serde_json::json!({
            "node": state.cluster.node_id(),
            "applied_index": applied,
            "sha256": sha256,
            "checkpoints": checkpoints,
            "divergence": divergence,
        }))
        .into_response(),
        Ok(Err(e)) => meta_error(e),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            e.to_string(),
        ),
    }
}
