//! The generic API's error shape: `{"errors":[{"code","message"}]}` with a fitting status.

use axum::body::Body;
use axum::response::Response;
use http::{StatusCode, header};
use wharf_registry::RegistryError;
use wharf_types::ErrorCode;

/// An error on its way to a generic-files client.
#[derive(Debug)]
pub struct GenericError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
}

impl GenericError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        GenericError {
            status,
            code,
            message: message.into(),
        }
    }

    /// Renders it; HEAD responses carry no body.
    pub fn into_response(self, head: bool) -> Response {
        let body = serde_json::json!({ "errors": [{ "code": self.code.as_str(), "message": self.message }] }).to_string();
        let mut builder = Response::builder()
            .status(self.status)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_LENGTH, body.len());
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            builder = builder.header(header::RETRY_AFTER, "1");
        }
        let body = if head {
            Body::empty()
        } else {
            Body::from(body)
        };
        builder.body(body).unwrap_or_default()
    }
}

impl From<RegistryError> for GenericError {
    fn from(e: RegistryError) -> Self {
        let code = e.code();
        let status = match code {
            ErrorCode::Internal => {
                tracing::error!(error = %e, "internal error");
                StatusCode::INTERNAL_SERVER_ERROR
            }
            other => wharf_http::status_for(other),
        };
        GenericError::new(status, code, e.to_string())
    }
}
