//! Plain domain types shared by every Wharf crate: [`Digest`], validated names
//! ([`RepoName`], [`ImageName`], [`Tag`]), [`NodeId`], [`Format`] and the stable
//! [`ErrorCode`] strings that reach clients, logs and metrics; and [`planted`], the switch of
//! the bugs a test build can plant.
//!
//! Nothing here does I/O or is async (except that [`planted`] reads one environment
//! variable); start with [`Digest`].

mod digest;
mod error_code;
mod names;
pub mod planted;

pub use digest::{Digest, DigestAlgorithm, DigestError};
pub use error_code::ErrorCode;
pub use names::{Format, ImageName, NameError, RepoName, Tag};

/// A node's id: minted once, never reused (DESIGN.md §1.8).
pub type NodeId = u64;
