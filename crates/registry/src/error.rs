//! The registry's error: a stable code plus a message, whatever layer it came from.

use wharf_blob::BlobError;
use wharf_meta::{MetaError, Rejection};
use wharf_types::ErrorCode;

/// Why a registry operation failed. Formats map [`RegistryError::code`] to their wire shape.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// `apply` refused the committed command (conflict, immutability, missing reference).
    #[error("{}", .0.message)]
    Rejected(Rejection),
    /// The metadata layer could not answer (no quorum, outcome unknown, storage).
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// The blob store failed or refused the bytes.
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// A domain-level refusal decided before proposing (unknown name, wrong format).
    #[error("{message}")]
    Domain { code: ErrorCode, message: String },
}

impl RegistryError {
    /// A domain error with a stable code.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        RegistryError::Domain {
            code,
            message: message.into(),
        }
    }

    /// The stable code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            RegistryError::Rejected(r) => {
                ErrorCode::from_wire(&r.code).unwrap_or(ErrorCode::Internal)
            }
            RegistryError::Meta(e) => e.code(),
            RegistryError::Blob(e) => e.code(),
            RegistryError::Domain { code, .. } => *code,
        }
    }

    /// True when the failure says nothing about the request: the client should retry later.
    pub fn is_unavailable(&self) -> bool {
        matches!(self.code(), ErrorCode::NoQuorum | ErrorCode::OutcomeUnknown)
    }
}

impl From<redb::Error> for RegistryError {
    fn from(e: redb::Error) -> Self {
        RegistryError::Meta(MetaError::Storage(e))
    }
}
