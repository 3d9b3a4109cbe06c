//! File handlers: put, get (with `Range` and the `.sha256` sidecar), delete, list.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use http::{HeaderMap, StatusCode, header};
use serde_json::json;
use wharf_http::range::{FileAnswer, file_answer};
use wharf_registry::RequestCtx;
use wharf_types::{Digest, ErrorCode, RepoName};

use crate::{GenericError, GenericState};

/// The header carrying a file's sha256 (hex), on requests and responses.
pub const CHECKSUM_HEADER: &str = "x-checksum-sha256";
const SIDECAR: &str = ".sha256";
const MAX_LISTING: usize = 10_000;

type HandlerResult = Result<Response, GenericError>;

fn bad_request(code: ErrorCode, message: impl Into<String>) -> GenericError {
    GenericError::new(StatusCode::BAD_REQUEST, code, message)
}

/// `PUT`: streams the body into the blob store, checked against `X-Checksum-Sha256` when sent,
/// then binds the path. A mismatch stores nothing.
pub async fn put(
    state: &GenericState,
    ctx: &RequestCtx,
    repo: &RepoName,
    path: &str,
    base_url: &str,
    request: Request,
) -> HandlerResult {
    if path.ends_with(SIDECAR) {
        return Err(bad_request(
            ErrorCode::BadRequest,
            format!(
                "{path}: paths ending in {SIDECAR} are the checksum sidecars Wharf serves itself"
            ),
        ));
    }
    let expected = match request.headers().get(CHECKSUM_HEADER) {
        None => None,
        Some(v) => {
            let text = v.to_str().unwrap_or_default().trim().to_ascii_lowercase();
            let digest = format!("sha256:{text}").parse::<Digest>().map_err(|_| {
                bad_request(
                    ErrorCode::DigestInvalid,
                    format!("{CHECKSUM_HEADER} must be 64 hex characters, got {text:?}"),
                )
            })?;
            Some(digest)
        }
    };
    let body = wharf_http::stream_body(request.into_body());
    let (record, outcome) = state
        .registry
        .put_file(ctx, repo, path, body, expected.as_ref())
        .await?;
    let status = match outcome {
        wharf_registry::Outcome::Applied => StatusCode::CREATED,
        // Only an unchanged binding (or, never for a file, a node admission) is not new.
        wharf_registry::Outcome::Unchanged | wharf_registry::Outcome::NodeAdmitted { .. } => {
            StatusCode::OK
        }
    };
    let body = json!({ "repo": repo.as_str(), "path": path, "size": record.size, "sha256": record.digest.hex(), "url": format!("{base_url}/generic/{repo}/{path}") }).to_string();
    Ok(Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, body.len())
        .header(header::ETAG, format!("\"{}\"", record.digest.hex()))
        .header(CHECKSUM_HEADER, record.digest.hex())
        .header(header::LOCATION, format!("/generic/{repo}/{path}"))
        .body(Body::from(body))
        .unwrap_or_default())
}

/// `GET`/`HEAD`: the file (whole or one range), or `<path>.sha256` as text.
pub async fn get(
    state: &GenericState,
    repo: &RepoName,
    path: &str,
    headers: &HeaderMap,
    head: bool,
) -> HandlerResult {
    if let Some(file_path) = path.strip_suffix(SIDECAR)
        && let Some(record) = state.registry.file(repo, file_path).await?
    {
        let name = file_path.rsplit('/').next().unwrap_or(file_path);
        let body = format!("{}  {name}\n", record.digest.hex());
        return Ok(Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .header(header::CONTENT_LENGTH, body.len())
            .body(if head {
                Body::empty()
            } else {
                Body::from(body)
            })
            .unwrap_or_default());
    }
    let record = state.registry.file(repo, path).await?.ok_or_else(|| {
        GenericError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            format!("{path} is not in {repo}"),
        )
    })?;
    let etag = format!("\"{}\"", record.digest.hex());
    let checksum = [(
        http::HeaderName::from_static(CHECKSUM_HEADER),
        record.digest.hex().to_string(),
    )];
    let (builder, range) = match file_answer(
        headers,
        record.size,
        &etag,
        "application/octet-stream",
        &checksum,
    ) {
        FileAnswer::Done(response) => return Ok(response),
        FileAnswer::Read { head, range } => (head, range),
    };
    if head {
        return Ok(builder.body(Body::empty()).unwrap_or_default());
    }
    let reader = state.registry.read_blob(&record.digest, range).await?;
    Ok(builder
        .body(Body::from_stream(reader.stream))
        .unwrap_or_default())
}

/// `DELETE`: unbinds the path (refused in immutable repositories).
pub async fn delete(
    state: &GenericState,
    ctx: &RequestCtx,
    repo: &RepoName,
    path: &str,
) -> HandlerResult {
    state.registry.delete_file(ctx, repo, path).await?;
    Ok(Response::builder()
        .status(StatusCode::NO_CONTENT)
        .body(Body::empty())
        .unwrap_or_default())
}

/// `GET <dir>/`: the directory's immediate children as JSON.
pub async fn list(state: &GenericState, repo: &RepoName, dir: &str) -> HandlerResult {
    state.registry.repo(repo).await?;
    let files = state.registry.files_under(repo, dir, MAX_LISTING).await?;
    let mut children: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    for (path, record) in files {
        let rest = path.strip_prefix(dir).unwrap_or(&path);
        match rest.split_once('/') {
            Some((sub, _)) => {
                children
                    .entry(format!("{sub}/"))
                    .or_insert_with(|| json!({ "name": sub, "type": "dir" }));
            }
            None => {
                children.insert(
                    rest.to_string(),
                    json!({ "name": rest, "type": "file", "size": record.size, "sha256": record.digest.hex(), "created_ms": record.created_ms }),
                );
            }
        }
    }
    if children.is_empty() && !dir.is_empty() {
        return Err(GenericError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            format!("{dir} is not in {repo}"),
        ));
    }
    let body = json!({ "repo": repo.as_str(), "path": dir, "children": children.into_values().collect::<Vec<_>>() }).to_string();
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, body.len())
        .body(Body::from(body))
        .unwrap_or_default())
}
