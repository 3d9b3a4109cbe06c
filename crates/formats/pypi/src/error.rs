//! The PyPI error shape. Upload clients show the status line: twine prints the reason phrase
//! (as the reference index does, the message *is* the reason phrase, e.g. `409 File already
//! exists ('x.whl')`) and uv prints the body, so both carry the message. Index and file
//! errors are the same plain text. The admin endpoints ([`crate::admin`]) answer in the admin
//! API's JSON shape instead.

use axum::body::Body;
use axum::response::Response;
use http::{StatusCode, header};
use wharf_registry::RegistryError;
use wharf_types::ErrorCode;

/// How an error is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `text/plain` body, message as the HTTP/1 reason phrase.
    Text,
    /// `{"errors":[{"code","message"}]}` (the admin API).
    Json,
}

/// An error on its way to a PyPI client.
#[derive(Debug)]
pub struct PypiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
}

impl PypiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        PypiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400 with `code`.
    pub fn bad_request(code: ErrorCode, message: impl Into<String>) -> Self {
        PypiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 404 NOT_FOUND.
    pub fn not_found(message: impl Into<String>) -> Self {
        PypiError::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, message)
    }

    /// Renders it; HEAD responses carry no body.
    pub fn into_response(self, shape: Shape, head: bool) -> Response {
        let (content_type, body) = match shape {
            Shape::Text => ("text/plain; charset=utf-8", format!("{}\n", self.message)),
            Shape::Json => (
                "application/json",
                serde_json::json!({ "errors": [{ "code": self.code.as_str(), "message": self.message }] })
                    .to_string(),
            ),
        };
        let mut builder = Response::builder()
            .status(self.status)
            .header(header::CONTENT_TYPE, content_type)
            .header(header::CONTENT_LENGTH, body.len())
            .header("x-wharf-error-code", self.code.as_str());
        if matches!(
            self.status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
        ) {
            builder = builder.header(header::RETRY_AFTER, "1");
        }
        if shape == Shape::Text
            && let Ok(reason) = hyper::ext::ReasonPhrase::try_from(reason_phrase(&self.message))
        {
            builder = builder.extension(reason);
        }
        let body = if head {
            Body::empty()
        } else {
            Body::from(body)
        };
        builder.body(body).unwrap_or_default()
    }
}

/// The message as a valid reason phrase: visible ASCII and spaces only, at most 300 bytes (a 255-byte filename fits in the 409 message).
fn reason_phrase(message: &str) -> Vec<u8> {
    let mut out: Vec<u8> = message
        .chars()
        .map(|c| match c {
            ' '..='~' => c as u8,
            _ => b' ',
        })
        .collect();
    out.truncate(300);
    out
}

impl From<RegistryError> for PypiError {
    fn from(e: RegistryError) -> Self {
        let code = e.code();
        let status = match code {
            // Only the cluster-version gate says this here: retry once the upgrade is done.
            ErrorCode::Unsupported => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal => {
                tracing::error!(error = %e, "internal error");
                StatusCode::INTERNAL_SERVER_ERROR
            }
            other => wharf_http::status_for(other),
        };
        PypiError::new(status, code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_phrases_are_always_valid() {
        assert_eq!(
            reason_phrase("File already exists ('a.whl')"),
            b"File already exists ('a.whl')"
        );
        assert_eq!(reason_phrase("a\r\nb\u{e9}"), b"a  b ");
        assert_eq!(reason_phrase(&"x".repeat(500)).len(), 300);
    }
}
