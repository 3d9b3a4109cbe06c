//! [`MetaHandle`]: what upper layers (registry) hold to change and read metadata.

use std::sync::Arc;

use wharf_types::ErrorCode;

use crate::command::{Command, CommandResult, RequestId};

/// Who asks for a change and under which request id.
#[derive(Debug, Clone)]
pub struct ProposeContext {
    pub request_id: RequestId,
    pub actor: String,
}

/// Why a proposal or a read barrier did not give an answer.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// The command was not proposed (no leader / no quorum): safe to retry.
    #[error("no quorum: the write was not proposed ({0}); retry later")]
    NoQuorum(String),
    /// The command was proposed but its outcome is unknown; retrying with the same request id
    /// is safe.
    #[error(
        "outcome unknown: the write was proposed but its result is unknown ({0}); retry with the same request"
    )]
    OutcomeUnknown(String),
    /// This node is broken (storage fault, fatal raft error).
    #[error("metadata store failure: {0}")]
    Fatal(String),
    /// Reading local state failed.
    #[error("metadata read failed: {0}")]
    Storage(#[from] redb::Error),
}

impl MetaError {
    /// The stable code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            MetaError::NoQuorum(_) => ErrorCode::NoQuorum,
            MetaError::OutcomeUnknown(_) => ErrorCode::OutcomeUnknown,
            MetaError::Fatal(_) | MetaError::Storage(_) => ErrorCode::Internal,
        }
    }
}

macro_rules! storage_error_from {
    ($($t:ty),*) => {$(
        impl From<$t> for MetaError {
            fn from(e: $t) -> Self {
                MetaError::Storage(e.into())
            }
        }
    )*};
}
storage_error_from!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// The metadata service of a node: propose commands, read local state, run a read barrier.
#[async_trait::async_trait]
pub trait MetaHandle: Send + Sync + 'static {
    /// Proposes `command`, waits until this node has applied it, and returns the apply result.
    async fn propose(
        &self,
        ctx: ProposeContext,
        command: Command,
    ) -> Result<CommandResult, MetaError>;

    /// Waits until this node's state includes every write acknowledged anywhere before the
    /// call (a ReadIndex through the leader). Reads after it are linearizable.
    async fn read_barrier(&self) -> Result<(), MetaError>;

    /// The state-machine database, for queries in [`crate::query`] inside one read transaction.
    fn state(&self) -> Arc<redb::Database>;

    /// Whether local state is fresh enough for a `bounded` read: this node heard from a leader
    /// (or, leading, from a quorum) within `max_staleness` and has applied everything it knows
    /// to be committed. The default says no, so reads fall back to a barrier.
    fn fresh_within(&self, _max_staleness: std::time::Duration) -> bool {
        false
    }
}
