//! The openraft node of a Wharf server; implements [`wharf_meta::MetaHandle`].
//!
//! Start reading at [`ClusterNode`] ([`node`]): it opens the redb log store and state machine
//! of `wharf-meta` under `<data_dir>/raft/`, runs openraft over them, and maps openraft's
//! errors onto the client-facing [`wharf_meta::MetaError`]s. Today a cluster has one voter and
//! [`network`] is a deliberate stub; the gRPC transport, leader forwarding and membership
//! changes arrive with the cluster issue.

mod network;
pub mod node;
pub mod read_batch;

pub use node::{ClusterError, ClusterNode};
pub use wharf_meta::raft_types::NodeInfo;
