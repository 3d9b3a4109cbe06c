//! A thin OCI distribution client for protocol-level tests: every request goes through
//! [`OciHttp::send`], which reads the whole response and checks what every response must carry
//! (`X-Wharf-Node`; `Docker-Distribution-API-Version` under `/v2/`; error bodies in the OCI shape
//! with only the spec's codes). [`raw_request`] sends bytes exactly as written, for paths an HTTP
//! client library would normalize.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use reqwest::Method;
use reqwest::blocking::{Client, RequestBuilder};
use reqwest::header::HeaderMap;
use serde_json::Value;

use crate::{Wharf, http_client, sha256_digest};

/// The fourteen error codes of the OCI distribution spec v1.1.
pub const SPEC_ERROR_CODES: [&str; 14] = [
    "BLOB_UNKNOWN",
    "BLOB_UPLOAD_INVALID",
    "BLOB_UPLOAD_UNKNOWN",
    "DIGEST_INVALID",
    "MANIFEST_BLOB_UNKNOWN",
    "MANIFEST_INVALID",
    "MANIFEST_UNKNOWN",
    "NAME_INVALID",
    "NAME_UNKNOWN",
    "SIZE_INVALID",
    "UNAUTHORIZED",
    "DENIED",
    "UNSUPPORTED",
    "TOOMANYREQUESTS",
];

/// A fully read response.
#[derive(Debug)]
pub struct Resp {
    /// `METHOD path`, for messages.
    pub what: String,
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Resp {
    /// Panics unless the status is `want`; returns `self` for more checks.
    pub fn expect(self, want: u16) -> Resp {
        assert_eq!(
            self.status,
            want,
            "{}: expected HTTP {want}, got {}\nheaders: {:?}\nbody: {}",
            self.what,
            self.status,
            self.headers,
            self.text_excerpt()
        );
        self
    }

    /// Panics unless the status is `status` and the (first) error code is `code`.
    pub fn expect_error(self, status: u16, code: &str) -> Resp {
        let r = self.expect(status);
        assert_eq!(
            r.error_code().as_deref(),
            Some(code),
            "{}: error code; body: {}",
            r.what,
            r.text_excerpt()
        );
        r
    }

    /// A header as text (panics if it is not visible ASCII).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("header is text"))
    }

    /// A header that must be present.
    pub fn must_header(&self, name: &str) -> &str {
        self.header(name).unwrap_or_else(|| {
            panic!(
                "{}: no {name} header; headers: {:?}",
                self.what, self.headers
            )
        })
    }

    /// The body as JSON (panics otherwise).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{}: body is not JSON ({e}): {}",
                self.what,
                self.text_excerpt()
            )
        })
    }

    /// The first OCI error code of the body, if it has one.
    pub fn error_code(&self) -> Option<String> {
        let v: Value = serde_json::from_slice(&self.body).ok()?;
        v["errors"][0]["code"].as_str().map(str::to_string)
    }

    /// The first OCI error message of the body, if it has one.
    pub fn error_message(&self) -> Option<String> {
        let v: Value = serde_json::from_slice(&self.body).ok()?;
        v["errors"][0]["message"].as_str().map(str::to_string)
    }

    /// At most 2000 characters of the body, for messages.
    pub fn text_excerpt(&self) -> String {
        String::from_utf8_lossy(&self.body)
            .chars()
            .take(2000)
            .collect()
    }
}

/// A registry under test, spoken to one request at a time.
pub struct OciHttp {
    pub client: Client,
    pub base: String,
}

impl OciHttp {
    pub fn new(server: &Wharf) -> OciHttp {
        OciHttp::at(&server.url())
    }

    /// A client for the node at `base` (`http://host:port`).
    pub fn at(base: &str) -> OciHttp {
        OciHttp {
            client: http_client(),
            base: base.to_string(),
        }
    }

    /// `base` + `path` unless `path` is already absolute (`http://…`, e.g. a `Location`).
    pub fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_string()
        } else {
            format!("{}{path}", self.base)
        }
    }

    /// A request builder for `method` on `path` (relative to the server, or absolute).
    pub fn req(&self, method: &str, path: &str) -> RequestBuilder {
        let method: Method = method.parse().expect("HTTP method");
        self.client.request(method, self.url(path))
    }

    /// Sends, reads the whole response and checks the headers every response carries.
    pub fn send(&self, rb: RequestBuilder) -> Resp {
        let request = rb.build().expect("request builds");
        let what = format!("{} {}", request.method(), request.url().path());
        let is_head = request.method() == Method::HEAD;
        let is_v2 = request.url().path().starts_with("/v2");
        let resp = self
            .client
            .execute(request)
            .unwrap_or_else(|e| panic!("{what}: {e:?}"));
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .bytes()
            .unwrap_or_else(|e| panic!("{what}: reading body: {e:?}"))
            .to_vec();
        let r = Resp {
            what,
            status,
            headers,
            body,
        };
        check_common(&r, is_head, is_v2);
        r
    }

    /// Shorthand: `send(req(method, path))`.
    pub fn call(&self, method: &str, path: &str) -> Resp {
        self.send(self.req(method, path))
    }

    /// Pushes `data` into `name` with a monolithic `POST …/blobs/uploads/?digest=`; returns the digest.
    pub fn push_blob(&self, name: &str, data: &[u8]) -> String {
        let digest = sha256_digest(data);
        self.send(
            self.req(
                "POST",
                &format!("/v2/{name}/blobs/uploads/?digest={digest}"),
            )
            .body(data.to_vec()),
        )
        .expect(201);
        digest
    }

    /// PUTs manifest `bytes` with `content_type` to `name:reference`; returns the response.
    pub fn put_manifest(
        &self,
        name: &str,
        reference: &str,
        content_type: Option<&str>,
        bytes: &[u8],
    ) -> Resp {
        let mut rb = self
            .req("PUT", &format!("/v2/{name}/manifests/{reference}"))
            .body(bytes.to_vec());
        if let Some(ct) = content_type {
            rb = rb.header("Content-Type", ct);
        }
        self.send(rb)
    }

    /// Asserts `name:reference` is not served (404 MANIFEST_UNKNOWN or NAME_UNKNOWN).
    pub fn assert_no_manifest(&self, name: &str, reference: &str) {
        let r = self.call("GET", &format!("/v2/{name}/manifests/{reference}"));
        assert_eq!(
            r.status,
            404,
            "{}: expected 404, got {}: {}",
            r.what,
            r.status,
            r.text_excerpt()
        );
        let code = r.error_code().unwrap_or_default();
        assert!(
            code == "MANIFEST_UNKNOWN" || code == "NAME_UNKNOWN",
            "{}: code {code}",
            r.what
        );
    }
}

fn check_common(r: &Resp, is_head: bool, is_v2: bool) {
    assert!(
        r.headers.contains_key("x-wharf-node"),
        "{} → {}: no X-Wharf-Node header; headers: {:?}",
        r.what,
        r.status,
        r.headers
    );
    if is_v2 {
        assert_eq!(
            r.headers
                .get("docker-distribution-api-version")
                .and_then(|v| v.to_str().ok()),
            Some("registry/2.0"),
            "{} → {}: Docker-Distribution-API-Version; headers: {:?}",
            r.what,
            r.status,
            r.headers
        );
    }
    if is_head {
        assert!(r.body.is_empty(), "{}: HEAD response has a body", r.what);
        return;
    }
    if r.status >= 400 && is_v2 && !r.body.is_empty() {
        let v: Value = serde_json::from_slice(&r.body).unwrap_or_else(|e| {
            panic!(
                "{} → {}: error body is not JSON ({e}): {}",
                r.what,
                r.status,
                r.text_excerpt()
            )
        });
        let errors = v["errors"]
            .as_array()
            .unwrap_or_else(|| panic!("{}: error body has no errors[]: {v}", r.what));
        assert!(!errors.is_empty(), "{}: empty errors[]: {v}", r.what);
        for e in errors {
            let code = e["code"].as_str().unwrap_or_default();
            assert!(
                SPEC_ERROR_CODES.contains(&code),
                "{}: error code {code:?} is not one of the spec's: {v}",
                r.what
            );
            assert!(
                e["message"].is_string(),
                "{}: error without a message: {v}",
                r.what
            );
        }
    }
}

/// A response to [`raw_request`].
#[derive(Debug)]
pub struct RawResp {
    pub status: u16,
    /// Header lines, names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResp {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first OCI error code of the body, if any.
    pub fn error_code(&self) -> Option<String> {
        let v: Value = serde_json::from_slice(&self.body).ok()?;
        v["errors"][0]["code"].as_str().map(str::to_string)
    }
}

/// Sends `METHOD target HTTP/1.1` with no body over a fresh connection to `addr`, exactly as
/// written (no path normalization), with `Connection: close`, and reads the response to the end.
/// Checks `X-Wharf-Node`.
pub fn raw_request(addr: &str, method: &str, target: &str) -> RawResp {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("{method} {target}: no header end in response"));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{method} {target}: bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    let r = RawResp {
        status,
        headers,
        body,
    };
    assert!(
        r.header("x-wharf-node").is_some(),
        "{method} {target} → {status}: no X-Wharf-Node; headers: {:?}",
        r.headers
    );
    r
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = data.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size_text = String::from_utf8_lossy(&data[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .unwrap_or(0);
        if size == 0 {
            return out;
        }
        let start = eol + 2;
        let end = (start + size).min(data.len());
        out.extend_from_slice(&data[start..end]);
        data = data.get(end + 2..).unwrap_or_default();
    }
}

/// An OCI image manifest (compact JSON) with the given config and layers
/// (`(media type, digest, size)` each).
pub fn image_manifest(config: (&str, &str, usize), layers: &[(&str, &str, usize)]) -> Vec<u8> {
    let desc = |(mt, d, s): (&str, &str, usize)| serde_json::json!({ "mediaType": mt, "digest": d, "size": s });
    let layers: Vec<Value> = layers.iter().map(|l| desc(*l)).collect();
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": crate::oci::MANIFEST_V1,
        "config": desc(config),
        "layers": layers,
    })
    .to_string()
    .into_bytes()
}
