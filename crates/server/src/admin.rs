//! The admin HTTP API under `/api/v1/` that `wharf repo …` talks to.
//!
//! `GET /api/v1/repos` lists repositories; `POST /api/v1/repos` creates one from
//! `{"name","format","immutable","allow_sparse_index","consistency","replication","regions",
//! "allow_unpublish"}` (`strong` | `bounded`).
//! `GET /api/v1/blobs/{digest}` shows a blob's record: size, chunk root and the members holding
//! verified copies. Errors are `{"errors":[{code,message}]}`.

use axum::Router;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use wharf_registry::{Registry, RegistryError, RepoSettings, RequestCtx};
use wharf_types::{ErrorCode, Format, RepoName};

#[derive(Clone)]
pub(crate) struct AdminState {
    pub registry: Registry,
    pub max_body: u64,
}

pub(crate) fn router(state: AdminState) -> Router {
    Router::new()
        .route(
            "/api/v1/repos",
            axum::routing::get(list_repos).post(create_repo),
        )
        .route("/api/v1/blobs/{digest}", axum::routing::get(blob_record))
        .with_state(state)
}

/// One repository as the admin API shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct RepoView {
    pub name: String,
    pub format: Format,
    pub immutable: bool,
    #[serde(default)]
    pub allow_sparse_index: bool,
    /// `strong` (default) or `bounded`.
    #[serde(default)]
    pub consistency: wharf_meta::Consistency,
    /// `all-regions` (default) or `on-demand`.
    #[serde(default)]
    pub replication: wharf_meta::ReplicationPolicy,
    /// Data residency: the regions whose nodes store its bytes (empty: every region).
    #[serde(default)]
    pub regions: std::collections::BTreeSet<String>,
    /// npm repositories: whether versions may be unpublished (each stays reserved forever).
    #[serde(default)]
    pub allow_unpublish: bool,
    #[serde(default, skip_deserializing)]
    pub created_ms: u64,
}

async fn blob_record(
    State(state): State<AdminState>,
    axum::extract::Path(digest): axum::extract::Path<String>,
) -> Response {
    let Ok(digest) = digest.parse::<wharf_types::Digest>() else {
        return error(
            StatusCode::BAD_REQUEST,
            ErrorCode::DigestInvalid,
            format!("{digest:?} is not a digest"),
        );
    };
    match state.registry.blob_record(&digest).await {
        Ok(Some(record)) => axum::Json(serde_json::json!({
            "digest": digest.to_string(),
            "size": record.size,
            "chunk_root": record.chunk_root.to_string(),
            "holders": record.holders,
        }))
        .into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            ErrorCode::BlobUnknown,
            format!("no blob {digest} is stored in the cluster"),
        ),
        Err(e) => registry_error(e),
    }
}

pub(crate) fn error(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Response {
    let body =
        serde_json::json!({ "errors": [{ "code": code.as_str(), "message": message.into() }] });
    (status, axum::Json(body)).into_response()
}

fn registry_error(e: RegistryError) -> Response {
    let code = e.code();
    let status = match code {
        ErrorCode::RepositoryExists | ErrorCode::Conflict | ErrorCode::Unsupported => {
            StatusCode::CONFLICT
        }
        ErrorCode::NameInvalid | ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
        ErrorCode::Denied => StatusCode::FORBIDDEN,
        ErrorCode::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::NoQuorum
        | ErrorCode::OutcomeUnknown
        | ErrorCode::NotHeldHere
        | ErrorCode::NotEnoughCopies => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::NameUnknown | ErrorCode::NotFound => StatusCode::NOT_FOUND,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let mut response = error(status, code, e.to_string());
    if matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    ) {
        response.headers_mut().insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("1"),
        );
    }
    response
}

async fn list_repos(State(state): State<AdminState>) -> Response {
    match state.registry.list_repos().await {
        Ok(repos) => {
            let views: Vec<RepoView> = repos
                .into_iter()
                .map(|(name, r)| RepoView {
                    name,
                    format: r.settings.format,
                    immutable: r.settings.immutable,
                    allow_sparse_index: r.settings.allow_sparse_index,
                    consistency: r.settings.consistency,
                    replication: r.settings.replication,
                    regions: r.settings.regions,
                    allow_unpublish: r.settings.allow_unpublish,
                    created_ms: r.created_ms,
                })
                .collect();
            axum::Json(serde_json::json!({ "repositories": views })).into_response()
        }
        Err(e) => registry_error(e),
    }
}

async fn create_repo(State(state): State<AdminState>, request: Request) -> Response {
    let bytes = match wharf_http::read_limited(request.into_body(), state.max_body).await {
        Ok(b) => b,
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::BadRequest,
                "request body too large or broken",
            );
        }
    };
    let view: RepoView = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadRequest,
                format!("invalid JSON: {e}"),
            );
        }
    };
    let name = match RepoName::new(&view.name) {
        Ok(n) => n,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                ErrorCode::NameInvalid,
                e.to_string(),
            );
        }
    };
    let settings = RepoSettings {
        format: view.format,
        immutable: view.immutable,
        allow_sparse_index: view.allow_sparse_index,
        consistency: view.consistency,
        replication: view.replication,
        regions: view.regions.clone(),
        allow_unpublish: view.allow_unpublish,
    };
    match state
        .registry
        .create_repo(&RequestCtx::new("admin"), &name, settings)
        .await
    {
        Ok(()) => (StatusCode::CREATED, axum::Json(view)).into_response(),
        Err(e) => registry_error(e),
    }
}
