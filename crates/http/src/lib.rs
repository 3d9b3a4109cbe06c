//! HTTP plumbing every format shares: the `X-Wharf-Node` header and one tracing span per
//! request ([`node_and_span`]), external URLs built from config or trusted proxy headers
//! ([`ExternalUrl`]), and request bodies either streamed or read whole under a limit
//! ([`read_limited`]).

pub mod document;
pub mod range;

/// The HTTP status of an error code, as the generic, npm, PyPI and Cargo APIs answer it (each may
/// override a few: npm's 403 for a version it cannot publish over, 503 for `UNSUPPORTED` where
/// only the cluster-version gate says it). OCI has its own table (the distribution spec's).
pub fn status_for(code: wharf_types::ErrorCode) -> http::StatusCode {
    use http::StatusCode;
    use wharf_types::ErrorCode::*;
    match code {
        BlobUnknown | NameUnknown | NotFound | ManifestUnknown | BlobUploadUnknown => {
            StatusCode::NOT_FOUND
        }
        DigestInvalid | SizeInvalid | BadRequest | NameInvalid | BlobUploadInvalid
        | ManifestInvalid | ManifestBlobUnknown => StatusCode::BAD_REQUEST,
        Conflict | TagImmutable | RepositoryExists => StatusCode::CONFLICT,
        Denied => StatusCode::FORBIDDEN,
        Unauthorized => StatusCode::UNAUTHORIZED,
        Unsupported => StatusCode::METHOD_NOT_ALLOWED,
        TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
        NoQuorum | OutcomeUnknown | NotHeldHere | NotEnoughCopies => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        InsufficientStorage => StatusCode::INSUFFICIENT_STORAGE,
        Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use futures::Stream;
use http::{HeaderMap, HeaderValue};
use http_body_util::BodyExt;
use tracing::Instrument;

/// Header naming the node that answered; on every response (DESIGN.md §1.10).
pub const NODE_HEADER: &str = "x-wharf-node";

/// Per-node facts the middleware needs.
#[derive(Clone)]
pub struct NodeHeader {
    value: HeaderValue,
}

impl NodeHeader {
    /// The header value for node `id`.
    pub fn new(id: u64) -> Self {
        NodeHeader {
            value: HeaderValue::from(id),
        }
    }
}

/// Middleware: opens one span per request and stamps `X-Wharf-Node` on the response.
pub async fn node_and_span(
    State(node): State<NodeHeader>,
    request: Request,
    next: Next,
) -> Response {
    let span = tracing::info_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        node = ?node.value,
        status = tracing::field::Empty,
    );
    let started = std::time::Instant::now();
    let may_leave_body_unread = carries_body(&request);
    let mut response = next.run(request).instrument(span.clone()).await;
    if may_leave_body_unread
        && (response.status().is_client_error() || response.status().is_server_error())
    {
        // An error can be answered before the request body was read. hyper then closes the
        // connection instead of reusing it, and a keep-alive client would send its next
        // request into a closed socket; saying so lets it open a new one.
        response
            .headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    span.record("status", response.status().as_u16());
    let _enter = span.enter();
    tracing::debug!(elapsed_ms = started.elapsed().as_millis() as u64, "done");
    response
        .headers_mut()
        .insert(NODE_HEADER, node.value.clone());
    response
}

/// An HTTP/1 request with a body (HTTP/2 streams are independent and need no care).
fn carries_body(request: &Request) -> bool {
    let h1 = matches!(
        request.version(),
        http::Version::HTTP_10 | http::Version::HTTP_11
    );
    let headers = request.headers();
    let length = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    h1 && (length.is_some_and(|l| l > 0) || headers.contains_key(http::header::TRANSFER_ENCODING))
}

/// How a request body ended before it was fully read.
#[derive(Debug)]
pub enum BodyError {
    /// The body exceeds the route's limit.
    TooLarge { limit: u64 },
    /// The client disconnected or sent a broken body.
    Transport(String),
}

/// A body over its limit is still read (and dropped) up to this many bytes, so that a client
/// still writing it gets the error response instead of a broken pipe.
const DRAIN_MAX: u64 = 64 * 1024 * 1024;

/// Reads a whole body of at most `limit` bytes (for manifests and JSON documents; blobs are
/// always streamed). A longer body is [`BodyError::TooLarge`]; its rest is drained (up to
/// 64 MiB) before the error is returned.
pub async fn read_limited(body: Body, limit: u64) -> Result<Bytes, BodyError> {
    let mut body = body;
    let mut collected = bytes::BytesMut::new();
    let mut total = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Transport(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total += data.len() as u64;
        if total > limit {
            while total <= DRAIN_MAX {
                match body.frame().await {
                    Some(Ok(frame)) => {
                        total += frame.into_data().map_or(0, |d| d.len() as u64);
                    }
                    _ => break,
                }
            }
            return Err(BodyError::TooLarge { limit });
        }
        collected.extend_from_slice(&data);
    }
    Ok(collected.freeze())
}

/// A streamed request body.
pub fn stream_body(body: Body) -> impl Stream<Item = Result<Bytes, axum::Error>> + Unpin + Send {
    body.into_data_stream()
}

/// Builds the absolute base URL clients are told to use (DESIGN.md §4 "URLs"): from
/// `server.public_url` when configured, else from `Forwarded` / `X-Forwarded-*` when the peer
/// is a trusted proxy, else from `Host`.
#[derive(Clone, Debug)]
pub struct ExternalUrl {
    public_url: Option<Arc<str>>,
    trusted_proxies: Arc<[IpAddr]>,
    tls: bool,
}

impl ExternalUrl {
    /// `public_url` may carry a path prefix; a trailing `/` is dropped.
    pub fn new(public_url: Option<&str>, trusted_proxies: &[IpAddr], tls: bool) -> Self {
        ExternalUrl {
            public_url: public_url.map(|u| Arc::from(u.trim_end_matches('/'))),
            trusted_proxies: Arc::from(trusted_proxies),
            tls,
        }
    }

    /// The base URL of one request: as [`ExternalUrl::base`], with the request's own
    /// authority (HTTP/2 `:authority`, which arrives without a `Host` header) as the host when
    /// there is no `Host`.
    pub fn base_of(&self, request: &Request) -> String {
        self.base_with(
            request.headers(),
            peer_addr(request),
            request.uri().authority().map(|a| a.as_str()),
        )
    }

    /// The base URL (scheme, host, optional prefix; no trailing slash) for one request.
    pub fn base(&self, headers: &HeaderMap, peer: Option<SocketAddr>) -> String {
        self.base_with(headers, peer, None)
    }

    fn base_with(
        &self,
        headers: &HeaderMap,
        peer: Option<SocketAddr>,
        authority: Option<&str>,
    ) -> String {
        if let Some(url) = &self.public_url {
            return url.to_string();
        }
        let trusted = peer.is_some_and(|p| self.trusted_proxies.contains(&p.ip()));
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
        };
        let (mut scheme, mut host) = (
            if self.tls { "https" } else { "http" }.to_string(),
            header("host").or(authority).map(str::to_string),
        );
        let mut prefix = String::new();
        if trusted {
            if let Some(forwarded) = header("forwarded") {
                // Only the first (client-nearest) element matters.
                let first = forwarded.split(',').next().unwrap_or_default();
                for pair in first.split(';') {
                    if let Some((k, v)) = pair.trim().split_once('=') {
                        let v = v.trim_matches('"');
                        match k.to_ascii_lowercase().as_str() {
                            "proto" => scheme = v.to_string(),
                            "host" => host = Some(v.to_string()),
                            _ => {}
                        }
                    }
                }
            } else {
                if let Some(proto) = header("x-forwarded-proto") {
                    scheme = proto.split(',').next().unwrap_or(proto).trim().to_string();
                }
                if let Some(h) = header("x-forwarded-host") {
                    host = Some(h.split(',').next().unwrap_or(h).trim().to_string());
                }
            }
            if let Some(p) = header("x-forwarded-prefix") {
                prefix = p.trim_end_matches('/').to_string();
            }
        }
        // Never the peer's address: that is the client, not this server.
        let host = host.unwrap_or_else(|| "localhost".into());
        format!("{scheme}://{host}{prefix}")
    }
}

/// The peer address of a request, when the server recorded it.
pub fn peer_addr(request: &Request) -> Option<SocketAddr> {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn public_url_wins() {
        let u = ExternalUrl::new(Some("https://reg.example/prefix/"), &[], false);
        assert_eq!(
            u.base(&headers(&[("host", "x")]), None),
            "https://reg.example/prefix"
        );
    }

    #[test]
    fn forwarded_headers_only_from_trusted_peers() {
        let proxy: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let other: SocketAddr = "10.0.0.2:5000".parse().unwrap();
        let u = ExternalUrl::new(None, &[proxy.ip()], false);
        let h = headers(&[
            ("host", "internal:7070"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "reg.example"),
        ]);
        assert_eq!(u.base(&h, Some(proxy)), "https://reg.example");
        assert_eq!(u.base(&h, Some(other)), "http://internal:7070");
        let h = headers(&[
            ("host", "internal"),
            (
                "forwarded",
                "for=1.2.3.4;proto=https;host=\"a.example\", for=5.6.7.8",
            ),
        ]);
        assert_eq!(u.base(&h, Some(proxy)), "https://a.example");
    }
}
