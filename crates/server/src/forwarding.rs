//! Upload sessions are node-local (DESIGN.md §4): a request for a session that another node
//! owns (its id names the node) is run by the owner, over the blob-transfer connection, and
//! its response streamed back — so a cluster behind a non-sticky load balancer works.

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

/// Marks a forwarded request, so that it is never forwarded again.
const FORWARDED_FROM: &str = "x-wharf-forwarded-from";

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

/// Middleware: runs requests for other nodes' upload sessions on their owner.
pub(crate) async fn forward_foreign_uploads(
    State(f): State<UploadForwarding>,
    request: Request,
    next: Next,
) -> Response {
    let owner = session_owner(request.uri().path());
    let Some(owner) = owner.filter(|o| *o != f.node_id) else {
        return next.run(request).await;
    };
    let head = request.method() == http::Method::HEAD;
    if request.headers().contains_key(FORWARDED_FROM) || !f.replication.is_member(owner) {
        return oci_error(
            ErrorCode::BlobUploadUnknown,
            format!("no upload session {} is open", request.uri().path()),
            head,
        );
    }
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
            tracing::warn!(owner, error = %e, "could not forward a request to the upload's node");
            oci_error(
                ErrorCode::NotHeldHere,
                format!("the upload session lives on node {owner}, which cannot be reached: {e}"),
                head,
            )
        }
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
                .uri(request.uri.as_str());
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
mod tests {
    use super::*;

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
}
