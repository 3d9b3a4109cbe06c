//! The openraft type configuration of Wharf's metadata group: what an entry carries
//! ([`Envelope`]), what applying it returns ([`CommandResult`]), and how members are named
//! (`u64` node ids with a [`NodeInfo`] each).
//!
//! Everything here is written to the raft log or to snapshots (membership entries carry
//! [`NodeInfo`]), so fields are only ever added with `#[serde(default)]`.

use serde::{Deserialize, Serialize};

use crate::command::{CommandResult, Envelope};

/// What the membership config records about a member.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Cluster (gRPC) address of the node, `host:port`.
    pub addr: String,
    /// The region the node runs in.
    pub region: String,
    /// The node's client (HTTP) URL, for `wharf cluster status`.
    #[serde(default)]
    pub client_url: String,
    /// The node's blob-transfer (QUIC, UDP) address, `host:port`; empty in entries written
    /// before replication existed, which means the cluster port + 1 (see [`Self::blob_addr`]).
    #[serde(default)]
    pub blob_addr: String,
}

impl NodeInfo {
    /// Where the node's QUIC blob-transfer endpoint listens: `blob_addr`, or by default the
    /// cluster address with the next port.
    pub fn blob_addr(&self) -> String {
        if !self.blob_addr.is_empty() {
            return self.blob_addr.clone();
        }
        match self.addr.rsplit_once(':') {
            Some((host, port)) => match port.parse::<u16>() {
                Ok(port) => format!("{host}:{}", port.wrapping_add(1)),
                Err(_) => self.addr.clone(),
            },
            None => self.addr.clone(),
        }
    }
}

impl std::fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.addr, self.region)
    }
}

openraft::declare_raft_types!(
    /// The openraft type configuration of the metadata group.
    pub TypeConfig:
        D = Envelope,
        R = CommandResult,
        NodeId = u64,
        Node = NodeInfo,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A raft log entry of the metadata group.
pub type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;
/// A raft log id of the metadata group.
pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
/// A vote of the metadata group.
pub type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
/// A membership config with the log id that introduced it.
pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<TypeConfig>;
/// Metadata of a state-machine snapshot.
pub type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<TypeConfig>;
