//! An index document read over and over (an npm packument, a PyPI simple page): fetched once
//! after setup with the scenario's request headers, then every op must get the same status,
//! `Content-Type` and bytes.

use bytes::Bytes;
use http::{Method, StatusCode, header::HeaderName};

use crate::client::{self, Conn, ReqBody};

/// The headers a scenario's client sends with every GET.
pub type Headers = &'static [(HeaderName, &'static str)];

/// The document as the server served it after setup.
pub struct Document {
    path: String,
    headers: Headers,
    body: Bytes,
    content_type: String,
}

/// One GET of `path` with `headers`.
pub async fn get(
    conn: &mut Conn,
    path: &str,
    headers: Headers,
) -> anyhow::Result<http::Response<hyper::body::Incoming>> {
    let mut req = conn.request(Method::GET, path);
    for (name, value) in headers {
        req = req.header(name, *value);
    }
    conn.send(req.body(ReqBody::Empty)?).await
}

impl Document {
    /// Reads the document once; its `Content-Type` must start with `media_type` (so that both
    /// servers of a comparison serve the same representation).
    pub async fn read(
        conn: &mut Conn,
        path: String,
        headers: Headers,
        media_type: &str,
    ) -> anyhow::Result<Self> {
        let what = format!("GET {path}");
        let resp = get(conn, &path, headers).await?;
        let resp = client::expect_status(resp, StatusCode::OK, &what).await?;
        let content_type = client::header_str(resp.headers(), "content-type", &what)?.to_string();
        anyhow::ensure!(
            content_type.starts_with(media_type),
            "{what}: Content-Type {content_type:?}, expected {media_type}"
        );
        let body = client::collect(resp, &what).await?;
        Ok(Self {
            path,
            headers,
            body,
            content_type,
        })
    }

    /// Length of the document served.
    pub fn len(&self) -> u64 {
        self.body.len() as u64
    }

    /// One GET; status, `Content-Type` and bytes must be what setup saw.
    pub async fn op(&self, conn: &mut Conn) -> anyhow::Result<u64> {
        let what = format!("GET {}", self.path);
        let resp = get(conn, &self.path, self.headers).await?;
        let resp = client::expect_status(resp, StatusCode::OK, &what).await?;
        client::expect_header(resp.headers(), "content-type", &self.content_type, &what)?;
        let got = client::collect(resp, &what).await?;
        anyhow::ensure!(
            got == self.body,
            "{what}: {} bytes differ from the document read after setup",
            got.len()
        );
        Ok(0)
    }
}
