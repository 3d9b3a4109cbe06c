//! Stable error codes: the same string appears in responses, logs, metrics and audit.

use std::fmt;

/// Every error that can reach a client, named once.
///
/// The first fourteen are the OCI distribution spec's codes and are the only ones sent in
/// OCI error bodies; the rest are Wharf's own and appear in its other APIs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    SizeInvalid,
    Unauthorized,
    Denied,
    Unsupported,
    TooManyRequests,
    /// The write was not proposed: safe to retry.
    NoQuorum,
    /// The write was proposed but its outcome is unknown; retrying with the same request id is safe.
    OutcomeUnknown,
    /// A binding in an immutable repository already points elsewhere.
    TagImmutable,
    /// A repository with this name already exists.
    RepositoryExists,
    /// The request is malformed in a way no more specific code covers.
    BadRequest,
    /// Something exists already and differs.
    Conflict,
    /// The path or object does not exist.
    NotFound,
    /// The node hit an internal fault (I/O error, corrupt data).
    Internal,
    /// Free disk space is below `storage.min_free`: uploads are refused (507).
    InsufficientStorage,
    /// The content exists in the cluster but its bytes are on other nodes only, and this node
    /// cannot fetch them (503 + Retry-After): never a false "not found".
    NotHeldHere,
    /// Fewer than `durability.min_copies` members could store a verified copy of an upload
    /// (503 + Retry-After): nothing was acknowledged (DESIGN.md §1.2).
    NotEnoughCopies,
}

impl ErrorCode {
    /// Every code, in declaration order.
    pub const ALL: &'static [ErrorCode] = &[
        ErrorCode::BlobUnknown,
        ErrorCode::BlobUploadInvalid,
        ErrorCode::BlobUploadUnknown,
        ErrorCode::DigestInvalid,
        ErrorCode::ManifestBlobUnknown,
        ErrorCode::ManifestInvalid,
        ErrorCode::ManifestUnknown,
        ErrorCode::NameInvalid,
        ErrorCode::NameUnknown,
        ErrorCode::SizeInvalid,
        ErrorCode::Unauthorized,
        ErrorCode::Denied,
        ErrorCode::Unsupported,
        ErrorCode::TooManyRequests,
        ErrorCode::NoQuorum,
        ErrorCode::OutcomeUnknown,
        ErrorCode::TagImmutable,
        ErrorCode::RepositoryExists,
        ErrorCode::BadRequest,
        ErrorCode::Conflict,
        ErrorCode::NotFound,
        ErrorCode::Internal,
        ErrorCode::InsufficientStorage,
        ErrorCode::NotHeldHere,
        ErrorCode::NotEnoughCopies,
    ];

    /// The code whose wire string is `s`, if any.
    pub fn from_wire(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.iter().copied().find(|c| c.as_str() == s)
    }

    /// The wire string, e.g. `BLOB_UNKNOWN`.
    pub fn as_str(self) -> &'static str {
        use ErrorCode::*;
        match self {
            BlobUnknown => "BLOB_UNKNOWN",
            BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            DigestInvalid => "DIGEST_INVALID",
            ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            ManifestInvalid => "MANIFEST_INVALID",
            ManifestUnknown => "MANIFEST_UNKNOWN",
            NameInvalid => "NAME_INVALID",
            NameUnknown => "NAME_UNKNOWN",
            SizeInvalid => "SIZE_INVALID",
            Unauthorized => "UNAUTHORIZED",
            Denied => "DENIED",
            Unsupported => "UNSUPPORTED",
            TooManyRequests => "TOOMANYREQUESTS",
            NoQuorum => "NO_QUORUM",
            OutcomeUnknown => "OUTCOME_UNKNOWN",
            TagImmutable => "TAG_IMMUTABLE",
            RepositoryExists => "REPOSITORY_EXISTS",
            BadRequest => "BAD_REQUEST",
            Conflict => "CONFLICT",
            NotFound => "NOT_FOUND",
            Internal => "INTERNAL",
            InsufficientStorage => "INSUFFICIENT_STORAGE",
            NotHeldHere => "NOT_HELD_HERE",
            NotEnoughCopies => "NOT_ENOUGH_COPIES",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::ErrorCode;

    #[test]
    fn every_code_round_trips_through_its_wire_string() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_wire(code.as_str()), Some(*code));
        }
        assert_eq!(ErrorCode::from_wire("NOPE"), None);
    }
}
