//! Generated gRPC code for `proto/raft.proto` (`wharf.raft.v1`) and `proto/admin.proto`
//! (`wharf.admin.v1`). The only crate that sees prost types; `wharf-cluster` uses the clients
//! and service traits re-exported here.

#![allow(clippy::unwrap_used)] // generated code

/// `wharf.raft.v1`: raft RPCs between members.
pub mod raft {
    tonic::include_proto!("wharf.raft.v1");
}

/// `wharf.admin.v1`: write forwarding, follower reads, join, membership.
pub mod admin {
    tonic::include_proto!("wharf.admin.v1");
}

pub use tonic;
