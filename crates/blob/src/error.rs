//! Errors of the blob store and their stable client codes.

use std::fmt;
use std::io;

use wharf_types::{Digest, ErrorCode};

/// Why a blob store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// No upload session has this id on this node (never created, committed, cancelled or expired).
    #[error("upload session unknown on this node; start a new upload")]
    UnknownSession,
    /// Another request is writing to or committing this session right now.
    #[error("upload session is busy with another request; wait for it to finish, then retry")]
    SessionBusy,
    /// An earlier write failed half-way, so the session's bytes and hashes no longer agree.
    #[error("upload session is broken by an earlier failed write; start a new upload")]
    SessionBroken,
    /// The request's start offset is not where the session ends.
    #[error("upload range does not start at the current upload size {expected}; resume from there")]
    RangeMismatch {
        /// The session's current size: the offset the next append must start at.
        expected: u64,
    },
    /// The uploaded bytes do not hash to the digest the client gave. The session is removed.
    #[error("uploaded bytes hash to {actual}, not to the expected {expected}")]
    DigestMismatch {
        /// What the client said.
        expected: Digest,
        /// What the bytes hash to.
        actual: Digest,
    },
    /// The uploaded bytes are not as long as the client said. The session is removed.
    #[error("uploaded {actual} bytes, but {expected} were declared")]
    SizeMismatch {
        /// What the client said.
        expected: u64,
        /// How many bytes arrived.
        actual: u64,
    },
    /// A read range that starts at or past the end of the blob, or ends before it starts.
    #[error("requested range is not satisfiable for a blob of {size} bytes")]
    RangeNotSatisfiable {
        /// Size of the whole blob.
        size: u64,
    },
    /// The blob is not stored on this node.
    #[error("blob not found on this node")]
    NotFound,
    /// The request body failed while it was being received (client disconnect, transport error).
    /// The bytes received before the failure are kept: the session's size says where to resume.
    #[error("request body failed: {0}")]
    Body(String),
    /// A stored blob or its sidecar is damaged or inconsistent; the copy must be repaired.
    #[error(transparent)]
    Corrupt(#[from] CorruptBlob),
    /// An fsync failed: the node can no longer tell what is on disk and must stop (DESIGN.md §1.2).
    #[error("fsync failed, the node must stop: {0}")]
    Fsync(#[source] io::Error),
    /// Free space on the store's file system is below the configured minimum.
    #[error(
        "only {available} bytes are free, below the {required} bytes this node keeps free; uploads are refused until space is freed"
    )]
    InsufficientStorage {
        /// Bytes available to the server.
        available: u64,
        /// The configured minimum.
        required: u64,
    },
    /// Any other file system error.
    #[error("blob store I/O error: {0}")]
    Io(#[from] io::Error),
}

impl BlobError {
    /// The stable code for responses, logs and metrics.
    pub fn code(&self) -> ErrorCode {
        match self {
            BlobError::UnknownSession => ErrorCode::BlobUploadUnknown,
            BlobError::SessionBusy
            | BlobError::SessionBroken
            | BlobError::RangeMismatch { .. }
            | BlobError::Body(_) => ErrorCode::BlobUploadInvalid,
            BlobError::DigestMismatch { .. } => ErrorCode::DigestInvalid,
            BlobError::SizeMismatch { .. } => ErrorCode::SizeInvalid,
            BlobError::RangeNotSatisfiable { .. } => ErrorCode::BadRequest,
            BlobError::NotFound => ErrorCode::BlobUnknown,
            BlobError::InsufficientStorage { .. } => ErrorCode::InsufficientStorage,
            BlobError::Corrupt(_) | BlobError::Fsync(_) | BlobError::Io(_) => ErrorCode::Internal,
        }
    }

    /// True when the node must stop rather than carry on (an fsync failed, DESIGN.md §1.2).
    pub fn is_fatal(&self) -> bool {
        matches!(self, BlobError::Fsync(_))
    }
}

/// A stored copy that does not match what was recorded at commit.
///
/// Returned as [`BlobError::Corrupt`] before a read starts, and carried inside the
/// [`io::Error`] (kind [`io::ErrorKind::InvalidData`]) that aborts a read stream; get it back with
/// `err.get_ref().and_then(|e| e.downcast_ref::<CorruptBlob>())`. The caller should drop this copy
/// and fetch the blob again from another holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorruptBlob {
    /// The blob whose copy is damaged.
    pub digest: Digest,
    /// The chunk that failed its check, if the damage was found in one chunk.
    pub chunk: Option<u64>,
    /// What was wrong.
    pub reason: String,
}

impl fmt::Display for CorruptBlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.chunk {
            Some(chunk) => write!(
                f,
                "stored copy of {} is corrupt in chunk {chunk}: {}",
                self.digest, self.reason
            ),
            None => write!(
                f,
                "stored copy of {} is corrupt: {}",
                self.digest, self.reason
            ),
        }
    }
}

impl std::error::Error for CorruptBlob {}

impl From<CorruptBlob> for io::Error {
    fn from(c: CorruptBlob) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, c)
    }
}
