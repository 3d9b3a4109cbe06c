//! Requests that another node must run, over the blob-transfer connection, with the response
//! streamed back:
//! - Upload sessions are node-local (DESIGN.md §4): a request for a session that another node
//!   owns (its id names the node) is run by the owner — so a cluster behind a non-sticky load
//!   balancer works.
//! - A write that stores bytes of a repository with data residency, arriving on a node outside
//!   its regions, is run by the nearest node of those regions (its upload session then lives
//!   there, so the session's later requests follow by the rule above).

use std::io;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use futures::StreamExt;
use http::StatusCode;
use wharf_blob::FsBlobStore;
use wharf_oci::OciError;
use wharf_replication::{ForwardBody, ForwardRequest, Forwarded, Replicator};
use wharf_types::{ErrorCode, NodeId};

/// Names the node a forwarded request came from (for the logs of the node that runs it).
const FORWARDED_FROM: &str = "x-wharf-forwarded-from";

/// Marks a request that arrived over the blob-transfer connection (set by [`handler`], never by
/// a client: a header could be sent by anyone), so that it is never forwarded again.
#[derive(Debug, Clone, Copy)]
struct ArrivedForwarded;

/// Headers that describe one hop, not the message.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
];

#[derive(Clone)]
pub(crate) struct UploadForwarding {
    pub node_id: NodeId,
    pub replication: Arc<Replicator>,
    pub registry: wharf_registry::Registry,
}

/// The repository named by a request that stores bytes: an OCI upload start (`POST
/// /v2/<repo>/…/blobs/uploads/`, also monolithic and mount), an OCI manifest `PUT`, a generic
/// file or npm publish `PUT`, a `cargo publish` (`PUT /cargo/<repo>/api/v1/crates/new`), or a
/// PyPI upload (`POST /pypi/<repo>/`).
fn storing_write<'a>(method: &http::Method, path: &'a str) -> Option<&'a str> {
    if let Some(rest) = path.strip_prefix("/v2/") {
        let stores = (*method == http::Method::POST
            && (rest.ends_with("/blobs/uploads/") || rest.ends_with("/blobs/uploads")))
            || (*method == http::Method::PUT && rest.contains("/manifests/"));
        return stores.then(|| rest.split('/').next()).flatten();
    }
    if *method == http::Method::PUT {
        if let Some(rest) = path.strip_prefix("/cargo/") {
            let (repo, rest) = rest.split_once('/')?;
            return (rest == "api/v1/crates/new").then_some(repo);
        }
        // A generic file, or an npm publish (a metadata PUT stores nothing, but runs as well
        // on a node of the regions).
        let rest = path
            .strip_prefix("/generic/")
            .or_else(|| path.strip_prefix("/npm/"))?;
        return rest.split('/').next();
    }
    if *method == http::Method::POST {
        // A PyPI upload: `/pypi/<repo>` or `/pypi/<repo>/` (twine posts to the repository URL).
        let rest = path.strip_prefix("/pypi/")?;
        let repo = rest.strip_suffix('/').unwrap_or(rest);
        return (!repo.is_empty() && !repo.contains('/')).then_some(repo);
    }
    None
}

/// The node that owns the upload session a path names, if it names one.
fn session_owner(path: &str) -> Option<NodeId> {
    let (prefix, session) = path.rsplit_once("/blobs/uploads/")?;
    if !prefix.starts_with("/v2/") || session.is_empty() || session.contains('/') {
        return None;
    }
    FsBlobStore::session_node(session)
}

fn end_to_end(headers: &http::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(name, _)| !HOP_BY_HOP.contains(&name.as_str()))
        .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_string())))
        .collect()
}

fn stream_of(body: Body) -> ForwardBody {
    Box::pin(body.into_data_stream().map(|r| r.map_err(io::Error::other)))
}

/// The node that must run a write of a residency-pinned repository, when it is not this one;
/// `Err` when none of the repository's regions has a live member.
async fn resident_writer(
    f: &UploadForwarding,
    method: &http::Method,
    path: &str,
) -> Option<Result<NodeId, String>> {
    let repo = storing_write(method, path)?;
    let repo = wharf_types::RepoName::new(repo).ok()?;
    // A repository that does not exist (yet) is the handler's to answer.
    let settings = f.registry.repo(&repo).await.ok()?.settings;
    if settings.stores_in(f.replication.region()) {
        return None;
    }
    Some(f.replication.nearest_in(&settings.regions).ok_or_else(|| {
        format!(
            "repository {repo} keeps its bytes in region(s) {}, and no node there can be reached",
            settings
                .regions
                .iter()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )
    }))
}

/// Middleware: runs requests for other nodes' upload sessions on their owner, and writes of
/// residency-pinned repositories on a node of their regions.
pub(crate) async fn forward_foreign_uploads(
    State(f): State<UploadForwarding>,
    request: Request,
    next: Next,
) -> Response {
    let head = request.method() == http::Method::HEAD;
    let forwarded = request.extensions().get::<ArrivedForwarded>().is_some();
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    let owner = match session_owner(&path) {
        Some(owner) if owner == f.node_id => return next.run(request).await,
        Some(owner) => {
            if forwarded || !f.replication.is_member(owner) {
                return oci_error(
                    ErrorCode::BlobUploadUnknown,
                    format!("no upload session {} is open", request.uri().path()),
                    head,
                );
            }
            owner
        }
        None if forwarded => return next.run(request).await,
        None => match resident_writer(&f, &method, &path).await {
            None => return next.run(request).await,
            Some(Ok(node)) => node,
            Some(Err(message)) => {
                return format_error(&path, ErrorCode::NotHeldHere, message, head);
            }
        },
    };
    let (parts, body) = request.into_parts();
    let mut headers = end_to_end(&parts.headers);
    headers.push((FORWARDED_FROM.to_string(), f.node_id.to_string()));
    let uri = parts.uri.path_and_query().map_or_else(
        || parts.uri.path().to_string(),
        |pq| pq.as_str().to_string(),
    );
    let forwarded = ForwardRequest {
        method: parts.method.to_string(),
        uri,
        headers,
        body: stream_of(body),
    };
    match f.replication.forward(owner, forwarded).await {
        Ok(response) => into_response(response),
        Err(e) => {
            tracing::warn!(owner, error = %e, "could not forward a request");
            format_error(
                &path,
                ErrorCode::NotHeldHere,
                format!("the request must run on node {owner}, which cannot be reached: {e}"),
                head,
            )
        }
    }
}

/// An error answered here (503 + `Retry-After` for NOT_HELD_HERE), in the shape of the API the
/// path belongs to: npm, Cargo and PyPI clients print their own error fields, not OCI's.
fn format_error(path: &str, code: ErrorCode, message: String, head: bool) -> Response {
    let status = wharf_http::status_for(code);
    if path.starts_with("/npm/") {
        wharf_npm::NpmError::new(status, message).into_response(head)
    } else if path.starts_with("/cargo/") {
        wharf_cargo::CargoError::new(status, code, message).into_response(head)
    } else if path.starts_with("/pypi/") {
        wharf_pypi::PypiError::new(status, code, message)
            .into_response(wharf_pypi::Shape::Text, head)
    } else if path.starts_with("/generic/") {
        wharf_generic::GenericError::new(status, code, message).into_response(head)
    } else {
        oci_error(code, message, head)
    }
}

/// An OCI error answered here, with the header every `/v2` response carries.
fn oci_error(code: ErrorCode, message: String, head: bool) -> Response {
    let mut response = OciError::new(code, message).into_response(head);
    response.headers_mut().insert(
        "docker-distribution-api-version",
        http::HeaderValue::from_static("registry/2.0"),
    );
    response
}

fn into_response(forwarded: Forwarded) -> Response {
    let mut response = Response::new(Body::from_stream(forwarded.body));
    *response.status_mut() =
        StatusCode::from_u16(forwarded.status).unwrap_or(StatusCode::BAD_GATEWAY);
    for (name, value) in forwarded.headers {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            response.headers_mut().append(name, value);
        }
    }
    response
}

/// Runs requests forwarded to this node through its own routes.
pub(crate) fn handler(app: Router) -> wharf_replication::ForwardHandler {
    Arc::new(move |request: ForwardRequest| {
        let app = app.clone();
        Box::pin(async move {
            let mut builder = http::Request::builder()
                .method(request.method.as_str())
                .uri(request.uri.as_str())
                .extension(ArrivedForwarded);
            for (name, value) in &request.headers {
                builder = builder.header(name.as_str(), value.as_str());
            }
            let response = match builder.body(Body::from_stream(request.body)) {
                Ok(req) => match tower::ServiceExt::oneshot(app, req).await {
                    Ok(r) => r,
                    Err(never) => match never {},
                },
                Err(e) => OciError::new(ErrorCode::BadRequest, format!("forwarded request: {e}"))
                    .into_response(false),
            };
            let (parts, body) = response.into_parts();
            Forwarded {
                status: parts.status.as_u16(),
                headers: end_to_end(&parts.headers),
                body: stream_of(body),
            }
        })
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn errors_answered_here_speak_the_format_of_the_path() {
        async fn body(path: &str) -> (String, String) {
            let r = format_error(path, ErrorCode::NotHeldHere, "away".into(), false);
            assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE, "{path}");
            assert!(
                r.headers().contains_key(http::header::RETRY_AFTER),
                "{path}"
            );
            let ct = r.headers()[http::header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .to_string();
            let bytes = http_body_util::BodyExt::collect(r.into_body())
                .await
                .unwrap();
            (ct, String::from_utf8(bytes.to_bytes().to_vec()).unwrap())
        }
        let json = |text: &str| serde_json::from_str::<serde_json::Value>(text).unwrap();
        let (_, npm) = body("/npm/js/tiny").await;
        assert_eq!(json(&npm)["error"], "away");
        let (_, cargo) = body("/cargo/c/api/v1/crates/new").await;
        assert_eq!(json(&cargo)["errors"][0]["detail"], "away");
        let (ct, pypi) = body("/pypi/py/").await;
        assert!(
            ct.starts_with("text/plain") && pypi.contains("away"),
            "{ct} {pypi}"
        );
        let (_, generic) = body("/generic/files/a").await;
        assert_eq!(json(&generic)["errors"][0]["code"], "NOT_HELD_HERE");
        // OCI clients know only the distribution spec's codes: Wharf's own is mapped.
        let (_, oci) = body("/v2/r/img/blobs/uploads/").await;
        assert_eq!(json(&oci)["errors"][0]["message"], "away");
    }

    #[test]
    fn only_session_paths_name_an_owner() {
        let id = "3-0123456789abcdef0123456789abcdef";
        assert_eq!(
            session_owner(&format!("/v2/a/b/blobs/uploads/{id}")),
            Some(3)
        );
        assert_eq!(session_owner("/v2/a/b/blobs/uploads/"), None);
        assert_eq!(session_owner("/v2/a/b/blobs/uploads/nope"), None);
        assert_eq!(session_owner(&format!("/api/blobs/uploads/{id}")), None);
    }

    #[test]
    fn writes_that_store_bytes_name_their_repository() {
        use http::Method;
        let cases = [
            (Method::POST, "/v2/team/app/blobs/uploads/", Some("team")),
            (Method::POST, "/v2/team/app/blobs/uploads", Some("team")),
            (Method::PUT, "/v2/team/app/manifests/v1", Some("team")),
            (Method::PUT, "/generic/files/a/b.tgz", Some("files")),
            (
                Method::PUT,
                "/cargo/crates/api/v1/crates/new",
                Some("crates"),
            ),
            (
                Method::PUT,
                "/cargo/crates/api/v1/crates/tiny/1.0.0/unyank",
                None,
            ),
            (Method::GET, "/v2/team/app/manifests/v1", None),
            (Method::PATCH, "/v2/team/app/blobs/uploads/1-ab", None),
            (Method::DELETE, "/generic/files/a/b.tgz", None),
            (Method::POST, "/api/v1/repos", None),
            (Method::POST, "/pypi/py/", Some("py")),
            (Method::POST, "/pypi/py", Some("py")),
            (Method::GET, "/pypi/py/simple/tiny/", None),
            (Method::POST, "/pypi/py/simple/", None),
        ];
        for (method, path, repo) in cases {
            assert_eq!(storing_write(&method, path), repo, "{method} {path}");
        }
    }
}
