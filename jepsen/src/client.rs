//! HTTP to one node, and how an answer becomes `ok`, `fail` or `info` (DESIGN.md §1.2: `NO_QUORUM`
//! is a definite failure, `OUTCOME_UNKNOWN` or no answer to a write an indeterminate one).

use std::time::Duration;

use reqwest::blocking::{Client, RequestBuilder};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::history::Kind;

/// How long one request may take before the harness gives up on it (a paused node never
/// answers; the write is then indeterminate).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How a completed operation is recorded.
#[derive(Debug, Clone)]
pub struct Answer {
    pub kind: Kind,
    pub value: Value,
    pub served_by: Option<String>,
    pub error: Option<String>,
    pub body_sha256: Option<String>,
}

impl Answer {
    pub fn ok(value: Value) -> Answer {
        Answer {
            kind: Kind::Ok,
            value,
            served_by: None,
            error: None,
            body_sha256: None,
        }
    }

    pub fn fail(error: impl Into<String>) -> Answer {
        Answer {
            kind: Kind::Fail,
            value: Value::Null,
            served_by: None,
            error: Some(error.into()),
            body_sha256: None,
        }
    }

    fn info(error: impl Into<String>) -> Answer {
        Answer {
            kind: Kind::Info,
            ..Answer::fail(error)
        }
    }
}

/// Whether an operation changes state: a write that got no clear answer may have happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Write,
    Read,
}

/// A response read whole.
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
    pub served_by: Option<String>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn body_sha256(&self) -> String {
        hex::encode(Sha256::digest(&self.body))
    }

    /// The answer for a status this operation does not expect: the Wharf error code in the
    /// body decides between definite and indeterminate.
    pub fn unexpected(&self, effect: Effect) -> Answer {
        let text = String::from_utf8_lossy(&self.body);
        let excerpt: String = text.chars().take(200).collect();
        let error = format!("{} {excerpt}", self.status);
        let mut answer = if text.contains("OUTCOME_UNKNOWN") {
            Answer::info(error)
        } else if text.contains("NO_QUORUM")
            // npm's error JSON carries the message only
            || text.contains("no quorum: the write was not proposed")
            || text.contains("NOT_ENOUGH_COPIES")
            || self.status < 500
            || effect == Effect::Read
        {
            Answer::fail(error)
        } else {
            // Another 5xx to a write: nothing says it did not happen.
            Answer::info(error)
        };
        answer.served_by = self.served_by.clone();
        answer
    }
}

/// A blocking HTTP client without proxies (lab addresses are not loopback).
pub fn http_client() -> Client {
    Client::builder()
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(Duration::from_secs(3))
        .pool_max_idle_per_host(2)
        .build()
        .expect("an HTTP client")
}

/// Sends `request` and reads the whole body; a transport error (timeout, reset, refused, a
/// body cut short) becomes the answer directly.
pub fn send(request: RequestBuilder, effect: Effect) -> Result<Reply, Answer> {
    let transport = |e: reqwest::Error| {
        let error = format!("transport: {e}");
        // A refused connection sent nothing; anything later may have reached the node.
        if effect == Effect::Read || e.is_connect() {
            Answer::fail(error)
        } else {
            Answer::info(error)
        }
    };
    let response = request.send().map_err(transport)?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let served_by = headers
        .get("x-wharf-node")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = response.bytes().map_err(transport)?.to_vec();
    Ok(Reply {
        status,
        headers,
        body,
        served_by,
    })
}

/// `sha256:<hex>` of `bytes`.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}
