//! npm's error shape: `{"error": "<message>"}` with a fitting status (npm prints `error`).

use axum::body::Body;
use axum::response::Response;
use http::{StatusCode, header};
use wharf_registry::RegistryError;
use wharf_types::ErrorCode;

/// An error on its way to an npm client.
#[derive(Debug)]
pub struct NpmError {
    pub status: StatusCode,
    pub message: String,
}

impl NpmError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        NpmError {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        NpmError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        NpmError::new(StatusCode::NOT_FOUND, message)
    }

    /// Renders it; HEAD responses carry no body.
    pub fn into_response(self, head: bool) -> Response {
        let body = serde_json::json!({ "error": self.message }).to_string();
        let mut builder = Response::builder()
            .status(self.status)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_LENGTH, body.len());
        if matches!(
            self.status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
        ) {
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

impl From<RegistryError> for NpmError {
    fn from(e: RegistryError) -> Self {
        let status = match e.code() {
            // npm's own status for a version that cannot be published over.
            ErrorCode::Conflict | ErrorCode::TagImmutable => StatusCode::FORBIDDEN,
            // Only the cluster-version gate says this here: retry once the upgrade is done.
            ErrorCode::Unsupported => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal => {
                tracing::error!(error = %e, "internal error");
                StatusCode::INTERNAL_SERVER_ERROR
            }
            other => wharf_http::status_for(other),
        };
        NpmError::new(status, e.to_string())
    }
}
