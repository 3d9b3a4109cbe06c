//! HTTP/1.1 helpers: one keep-alive connection per client, request bodies generated on the fly,
//! response checks that say exactly what was wrong.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::{Context as _, bail};
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::prng::{CHUNK, PrngStream};

/// The registry under test: where to connect and what to put in `Host`.
#[derive(Debug)]
pub struct Target {
    /// Resolved address.
    pub addr: SocketAddr,
    /// `host:port` as given, sent as `Host`.
    pub authority: String,
}

impl Target {
    /// Parses `http://host:port[/]` and resolves the host once.
    pub async fn resolve(url: &str) -> anyhow::Result<Self> {
        let uri: http::Uri = url
            .parse()
            .with_context(|| format!("--target {url:?} is not a URL"))?;
        if uri.scheme_str() != Some("http") {
            bail!("--target {url:?}: only http:// is supported");
        }
        let Some(auth) = uri.authority() else {
            bail!("--target {url:?} has no host")
        };
        let port = auth.port_u16().unwrap_or(80);
        let addr = tokio::net::lookup_host((auth.host(), port))
            .await
            .with_context(|| format!("resolving {auth}"))?
            .next()
            .with_context(|| format!("{auth} resolves to no address"))?;
        Ok(Self {
            addr,
            authority: auth.to_string(),
        })
    }
}

/// A request body: nothing, a small buffer, or a generated blob streamed in [`CHUNK`]s.
#[derive(Debug)]
pub enum ReqBody {
    /// No body.
    Empty,
    /// A small in-memory body (manifests); `None` once sent.
    Full(Option<Bytes>),
    /// `remaining` more bytes of a PRNG stream.
    Prng {
        /// The generator, positioned at the next byte to send.
        stream: PrngStream,
        /// Bytes still to send.
        remaining: u64,
    },
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let frame = match self.get_mut() {
            ReqBody::Empty => None,
            ReqBody::Full(b) => b.take().map(Frame::data),
            ReqBody::Prng { remaining: 0, .. } => None,
            ReqBody::Prng { stream, remaining } => {
                let n = usize::try_from(*remaining).map_or(CHUNK, |r| r.min(CHUNK));
                let mut buf = BytesMut::zeroed(n);
                stream.fill(&mut buf);
                *remaining -= n as u64;
                Some(Frame::data(buf.freeze()))
            }
        };
        Poll::Ready(frame.map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Empty => true,
            ReqBody::Full(b) => b.is_none(),
            ReqBody::Prng { remaining, .. } => *remaining == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Empty => SizeHint::with_exact(0),
            ReqBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ReqBody::Prng { remaining, .. } => SizeHint::with_exact(*remaining),
        }
    }
}

/// One client's connection; reconnects when the server closed the previous one.
pub struct Conn {
    target: Arc<Target>,
    sender: Option<SendRequest<ReqBody>>,
    /// Connections opened so far (1 for a client that kept alive throughout).
    pub connects: u64,
}

impl Conn {
    /// A client that connects on first use.
    pub fn new(target: Arc<Target>) -> Self {
        Self {
            target,
            sender: None,
            connects: 0,
        }
    }

    /// A request builder for `path` (origin form) with `Host` set.
    pub fn request(&self, method: Method, path: &str) -> http::request::Builder {
        Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &self.target.authority)
    }

    /// Sends a bodiless `method` request for `path` (HEAD, POST starting an upload, GET).
    pub async fn send_empty(
        &mut self,
        method: Method,
        path: &str,
    ) -> anyhow::Result<Response<Incoming>> {
        let req = self.request(method, path).body(ReqBody::Empty)?;
        self.send(req).await
    }

    /// Sends `req` on this client's connection, opening one if there is none usable.
    pub async fn send(&mut self, req: Request<ReqBody>) -> anyhow::Result<Response<Incoming>> {
        let what = format!("{} {}", req.method(), req.uri());
        let usable = match self.sender.as_mut() {
            Some(s) => s.ready().await.is_ok(),
            None => false,
        };
        if !usable {
            let stream = TcpStream::connect(self.target.addr)
                .await
                .with_context(|| format!("connecting to {}", self.target.addr))?;
            stream.set_nodelay(true).context("TCP_NODELAY")?;
            let (sender, conn) = http1::handshake(TokioIo::new(stream))
                .await
                .context("HTTP/1.1 handshake")?;
            tokio::spawn(async move {
                // The connection ends when the sender is dropped or the server closes it; the
                // next send notices and reconnects, so its error has nowhere useful to go.
                let _ = conn.await;
            });
            self.connects += 1;
            self.sender = Some(sender);
        }
        let Some(sender) = self.sender.as_mut() else {
            bail!("no connection")
        };
        sender.send_request(req).await.with_context(|| what.clone())
    }
}

/// Checks the status; on mismatch reads a little of the body into the error.
pub async fn expect_status(
    resp: Response<Incoming>,
    want: StatusCode,
    what: &str,
) -> anyhow::Result<Response<Incoming>> {
    if resp.status() == want {
        return Ok(resp);
    }
    let status = resp.status();
    let body = match resp.into_body().collect().await {
        Ok(b) => {
            let b = b.to_bytes();
            String::from_utf8_lossy(&b[..b.len().min(512)]).into_owned()
        }
        Err(e) => format!("(body unreadable: {e})"),
    };
    bail!("{what}: expected {want}, got {status}: {body}")
}

/// The value of a header that must be present and ASCII.
pub fn header_str<'a>(headers: &'a HeaderMap, name: &str, what: &str) -> anyhow::Result<&'a str> {
    let v = headers
        .get(name)
        .with_context(|| format!("{what}: response has no {name} header"))?;
    v.to_str()
        .with_context(|| format!("{what}: {name} header is not ASCII"))
}

/// Checks that a header is present and equals `want`.
pub fn expect_header(
    headers: &HeaderMap,
    name: &str,
    want: &str,
    what: &str,
) -> anyhow::Result<()> {
    let got = header_str(headers, name, what)?;
    if got != want {
        bail!("{what}: {name} is {got:?}, expected {want:?}");
    }
    Ok(())
}

/// Reads and discards the body (needed to reuse the connection); returns its length.
pub async fn drain(resp: Response<Incoming>, what: &str) -> anyhow::Result<u64> {
    let mut body = resp.into_body();
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.with_context(|| format!("{what}: reading body"))?;
        if let Some(d) = frame.data_ref() {
            n += d.len() as u64;
        }
    }
    Ok(n)
}

/// Reads the whole (small) body.
pub async fn collect(resp: Response<Incoming>, what: &str) -> anyhow::Result<Bytes> {
    Ok(resp
        .into_body()
        .collect()
        .await
        .with_context(|| format!("{what}: reading body"))?
        .to_bytes())
}

/// The path and query to request for a `Location` header value: absolute URLs are reduced to
/// their path and query (the same connection is used), relative ones must start with `/`.
pub fn location_path(location: &str) -> anyhow::Result<String> {
    if location.starts_with('/') {
        return Ok(location.to_owned());
    }
    if location.starts_with("http://") || location.starts_with("https://") {
        let uri: http::Uri = location
            .parse()
            .with_context(|| format!("Location {location:?} is not a URL"))?;
        return Ok(uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned()));
    }
    bail!("Location {location:?} is neither absolute nor rooted at /")
}

/// `location` (already reduced by [`location_path`]) with `digest=<d>` added to its query,
/// keeping what is there: `?digest=` if it has no query, `&digest=` otherwise.
pub fn with_digest(location: &str, digest: &str) -> String {
    let encoded = digest.replace(':', "%3A");
    let sep = match location.find('?') {
        None => "?",
        Some(i) if i + 1 == location.len() || location.ends_with('&') => "",
        Some(_) => "&",
    };
    format!("{location}{sep}digest={encoded}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:abc";

    #[test]
    fn relative_location_without_query() {
        let p = location_path("/v2/a/b/blobs/uploads/123").expect("relative");
        assert_eq!(
            with_digest(&p, D),
            "/v2/a/b/blobs/uploads/123?digest=sha256%3Aabc"
        );
    }

    #[test]
    fn absolute_location_keeps_its_query() {
        let p = location_path("http://127.0.0.1:5055/v2/a/blobs/uploads/u?_state=x%3D&n=1")
            .expect("absolute");
        assert_eq!(p, "/v2/a/blobs/uploads/u?_state=x%3D&n=1");
        assert_eq!(
            with_digest(&p, D),
            "/v2/a/blobs/uploads/u?_state=x%3D&n=1&digest=sha256%3Aabc"
        );
    }

    #[test]
    fn trailing_separators_are_not_doubled() {
        assert_eq!(with_digest("/u?", D), "/u?digest=sha256%3Aabc");
        assert_eq!(with_digest("/u?a=1&", D), "/u?a=1&digest=sha256%3Aabc");
    }

    #[test]
    fn bare_relative_location_is_rejected() {
        assert!(location_path("uploads/123").is_err());
    }
}
