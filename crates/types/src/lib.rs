//! Plain domain types shared by every Wharf crate: [`Digest`], validated names
//! ([`RepoName`], [`ImageName`], [`Tag`]), [`NodeId`], [`Format`] and the stable
//! [`ErrorCode`] strings that reach clients, logs and metrics.
//!
//! Nothing here does I/O or is async; start with [`Digest`].

mod digest;
mod error_code;
mod names;

pub use digest::{Digest, DigestAlgorithm, DigestError};
pub use error_code::ErrorCode;
pub use names::{Format, ImageName, NameError, RepoName, Tag};

/// A node's id: minted once, never reused (DESIGN.md §1.8).
pub type NodeId = u64;
