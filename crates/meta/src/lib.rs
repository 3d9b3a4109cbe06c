//! Wharf's metadata layer: every mutation is a [`Command`] in an [`Envelope`], committed through
//! Raft and applied by the pure [`apply::apply_entry`] into redb tables ([`tables`]).
//!
//! Start reading at [`command`] (what can change), then [`apply`] (how it changes, decided
//! deterministically, including reference checks and immutability), then [`query`] (how the
//! rest of Wharf reads state). [`log_store`] and [`state_machine`] adapt redb to openraft;
//! [`MetaHandle`] is what upper layers hold; [`versions`] gates new command kinds and compares
//! state hashes across nodes.

pub mod apply;
pub mod command;
mod handle;
pub mod log_store;
pub mod packages;
pub mod query;
pub mod raft_types;
pub mod records;
pub mod state_machine;
pub mod tables;
pub mod versions;

pub use command::{
    Command, CommandResult, Consistency, ENVELOPE_VERSION, Envelope, HeldBlob, ManifestPut,
    Outcome, ReferrerDescriptor, Rejection, ReplicationPolicy, RepoSettings, RequestId,
};
pub use handle::{MetaError, MetaHandle, ProposeContext};
pub use log_store::{decode, encode};
pub use raft_types::TypeConfig;
