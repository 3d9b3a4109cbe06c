//! Cargo's error shape: `{"errors":[{"detail":"…"}]}` (what cargo prints), plus the stable
//! Wharf code in each error and the fitting status.

use axum::body::Body;
use axum::response::Response;
use http::{StatusCode, header};
use wharf_registry::RegistryError;
use wharf_types::ErrorCode;

/// An error on its way to cargo.
#[derive(Debug)]
pub struct CargoError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
}

impl CargoError {
    /// An error with its status, stable code and message.
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        CargoError {
            status,
            code,
            message: message.into(),
        }
    }

    /// A 400 BAD_REQUEST.
    pub fn bad_request(message: impl Into<String>) -> Self {
        CargoError::new(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, message)
    }

    /// Renders it; HEAD responses carry no body.
    pub fn into_response(self, head: bool) -> Response {
        let body = serde_json::json!({
            "errors": [{ "detail": self.message, "code": self.code.as_str() }]
        })
        .to_string();
        let mut builder = Response::builder()
            .status(self.status)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_LENGTH, body.len());
        if self.status == StatusCode::SERVICE_UNAVAILABLE
            || self.status == StatusCode::TOO_MANY_REQUESTS
        {
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

impl From<RegistryError> for CargoError {
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
        CargoError::new(status, code, e.to_string())
    }
}
