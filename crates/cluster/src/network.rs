//! The raft network of a node, for now deliberately absent.
//!
//! A single voter never sends a raft RPC: it elects itself and commits alone. The tonic
//! transport between nodes (DESIGN.md §2, `proto/raft.proto`) is deferred to the cluster issue;
//! until then every RPC fails with [`Unreachable`], so that if a second member were ever added
//! openraft backs off and reports the peer as unreachable instead of pretending it answered.

use std::future::Future;

use openraft::errors::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::type_config::alias::{SnapshotOf, VoteOf};
use openraft::{OptionalSend, RaftNetworkFactory, RaftNetworkV2};
use wharf_meta::TypeConfig;
use wharf_meta::raft_types::NodeInfo;
use wharf_meta::state_machine::SnapshotFile;

/// Why every RPC fails.
const DEFERRED: &str = "node-to-node transport arrives with the cluster issue";

/// Builds [`DeferredNetwork`] clients.
pub(crate) struct DeferredNetworkFactory;

impl RaftNetworkFactory<TypeConfig> for DeferredNetworkFactory {
    type Network = DeferredNetwork;

    async fn new_client(&mut self, target: u64, node: &NodeInfo) -> Self::Network {
        tracing::warn!(target, node = %node, "raft wants to reach a peer, but {DEFERRED}");
        DeferredNetwork { target }
    }
}

/// A raft client whose every RPC returns [`Unreachable`] (deliberately deferred, see the
/// module docs).
pub(crate) struct DeferredNetwork {
    target: u64,
}

impl DeferredNetwork {
    fn unreachable(&self) -> Unreachable<TypeConfig> {
        Unreachable::from_string(format!("node {}: {DEFERRED}", self.target))
    }
}

impl RaftNetworkV2<TypeConfig> for DeferredNetwork {
    type SnapshotData = SnapshotFile;

    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        Err(RPCError::Unreachable(self.unreachable()))
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        Err(RPCError::Unreachable(self.unreachable()))
    }

    // The default pre-vote grants unconditionally; an unreachable peer must not count as a grant.
    async fn pre_vote(
        &mut self,
        _rpc: VoteRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        Err(RPCError::Unreachable(self.unreachable()))
    }

    async fn full_snapshot(
        &mut self,
        _vote: VoteOf<TypeConfig>,
        _snapshot: SnapshotOf<TypeConfig, SnapshotFile>,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        Err(StreamingError::Unreachable(self.unreachable()))
    }
}
