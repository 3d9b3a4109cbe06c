//! OCI error bodies: `{"errors":[{"code","message","detail"}]}` with only the spec's fourteen
//! codes; Wharf's own code, when it has a more precise one, goes into `detail`.

use axum::body::Body;
use axum::response::Response;
use http::{HeaderValue, StatusCode, header};
use wharf_registry::RegistryError;
use wharf_types::ErrorCode;

/// An error on its way to an OCI client.
#[derive(Debug)]
pub struct OciError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
    /// Extra headers (e.g. `Range` on a 416, `Retry-After` on a 503).
    pub headers: Vec<(http::HeaderName, HeaderValue)>,
}

impl OciError {
    /// An error with the status the spec gives its code.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        OciError {
            status: default_status(code),
            code,
            message: message.into(),
            headers: Vec::new(),
        }
    }

    /// Overrides the status.
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// Adds a header.
    pub fn with_header(mut self, name: http::HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// Renders the response; `head` drops the body (HEAD errors carry none).
    pub fn into_response(self, head: bool) -> Response {
        let (wire_code, wharf_code) = wire_code(self.code);
        let mut entry = serde_json::json!({ "code": wire_code, "message": self.message });
        if let Some(wharf_code) = wharf_code {
            entry["detail"] = serde_json::json!({ "wharf_code": wharf_code });
        }
        let body = serde_json::json!({ "errors": [entry] }).to_string();
        let mut builder = Response::builder()
            .status(self.status)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_LENGTH, body.len());
        for (name, value) in self.headers {
            builder = builder.header(name, value);
        }
        if matches!(
            self.code,
            ErrorCode::NoQuorum
                | ErrorCode::OutcomeUnknown
                | ErrorCode::TooManyRequests
                | ErrorCode::NotHeldHere
                | ErrorCode::NotEnoughCopies
        ) {
            builder = builder.header(header::RETRY_AFTER, "1");
        }
        let body = if head {
            Body::empty()
        } else {
            Body::from(body)
        };
        builder
            .body(body)
            .unwrap_or_else(|_| Response::new(Body::empty()))
    }
}

impl From<RegistryError> for OciError {
    fn from(e: RegistryError) -> Self {
        let code = e.code();
        if code == ErrorCode::Internal {
            tracing::error!(error = %e, "internal error");
        }
        OciError::new(code, e.to_string())
    }
}

impl From<wharf_types::NameError> for OciError {
    fn from(e: wharf_types::NameError) -> Self {
        OciError::new(ErrorCode::NameInvalid, e.to_string())
    }
}

impl From<wharf_types::DigestError> for OciError {
    fn from(e: wharf_types::DigestError) -> Self {
        OciError::new(ErrorCode::DigestInvalid, e.to_string())
    }
}

fn default_status(code: ErrorCode) -> StatusCode {
    use ErrorCode::*;
    match code {
        BlobUnknown | BlobUploadUnknown | ManifestUnknown | NameUnknown | NotFound => {
            StatusCode::NOT_FOUND
        }
        BlobUploadInvalid | DigestInvalid | ManifestBlobUnknown | ManifestInvalid | NameInvalid
        | SizeInvalid | BadRequest => StatusCode::BAD_REQUEST,
        Unauthorized => StatusCode::UNAUTHORIZED,
        Denied => StatusCode::FORBIDDEN,
        Unsupported => StatusCode::METHOD_NOT_ALLOWED,
        TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
        NoQuorum | OutcomeUnknown | NotHeldHere | NotEnoughCopies => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        TagImmutable | Conflict | RepositoryExists => StatusCode::CONFLICT,
        Internal => StatusCode::INTERNAL_SERVER_ERROR,
        InsufficientStorage => StatusCode::INSUFFICIENT_STORAGE,
    }
}

/// The spec code sent on the wire, and Wharf's own code when it is not one of the spec's.
fn wire_code(code: ErrorCode) -> (&'static str, Option<&'static str>) {
    use ErrorCode::*;
    match code {
        BlobUnknown | BlobUploadInvalid | BlobUploadUnknown | DigestInvalid
        | ManifestBlobUnknown | ManifestInvalid | ManifestUnknown | NameInvalid | NameUnknown
        | SizeInvalid | Unauthorized | Denied | Unsupported | TooManyRequests => {
            (code.as_str(), None)
        }
        NoQuorum | OutcomeUnknown | NotHeldHere | NotEnoughCopies => {
            ("TOOMANYREQUESTS", Some(code.as_str()))
        }
        TagImmutable | Conflict | RepositoryExists | InsufficientStorage => {
            ("DENIED", Some(code.as_str()))
        }
        NotFound => ("NAME_UNKNOWN", Some(code.as_str())),
        BadRequest => ("UNSUPPORTED", Some(code.as_str())),
        Internal => ("UNSUPPORTED", Some(code.as_str())),
    }
}
