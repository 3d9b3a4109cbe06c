//! The openraft node of a Wharf server; implements [`wharf_meta::MetaHandle`] for a cluster.
//!
//! Start reading at [`ClusterNode`] ([`node`]): it opens the redb log store and state machine
//! of `wharf-meta` under `<data_dir>/raft/`, runs openraft over them, serves the cluster gRPC
//! listener ([`raft_service`] for `wharf.raft.v1`, [`admin_service`] for `wharf.admin.v1`),
//! and maps openraft's errors onto the client-facing [`wharf_meta::MetaError`]s.
//!
//! - [`network`]: the raft client side over tonic (streamed appends, chunked snapshots).
//! - [`core`]: what only a leader can do (propose, read index, join, membership changes), and
//!   forwarding to the leader from any other node.
//! - [`membership`]: the operator's view ([`ClusterStatus`]) and pure change planning.
//! - [`read_batch`]: concurrent linearizable reads share ReadIndex rounds.
//! - [`tls`], [`rotation`]: the cluster CA, node certificates, and rotating them.

mod admin_service;
mod core;
mod housekeeping;
pub mod incarnation;
pub mod membership;
mod network;
pub mod node;
mod peers;
mod raft_service;
pub mod read_batch;
pub mod rotation;
pub mod tls;
mod transport;

pub use core::AdminError;
pub use membership::{ClusterStatus, MemberStatus, MembershipAction, MembershipPlan, Role};
pub use node::{ClusterError, ClusterNode, JoinTicket, RaftTiming, StartMode, StartOptions, join};
pub use peers::LinkFilter;
pub use rotation::NodeCert;
pub use tls::{ClusterTls, TlsFiles};
pub use wharf_meta::raft_types::NodeInfo;

/// The openraft node type of Wharf.
pub(crate) type Raft =
    openraft::Raft<wharf_meta::TypeConfig, wharf_meta::state_machine::StateMachineStore>;
