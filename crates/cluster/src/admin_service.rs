//! The server side of `wharf.admin.v1`: leader-only operations asked for by other members
//! (and join requests from nodes that are not members yet).

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};
use wharf_meta::raft_types::NodeInfo;
use wharf_meta::{Envelope, decode, encode};
use wharf_proto::admin as pb;

use crate::core::{AdminError, Core};
use crate::membership::MembershipAction;
use crate::peers::Identity;

/// Implements [`pb::admin_server::Admin`].
pub(crate) struct AdminService {
    pub(crate) core: Arc<Core>,
    pub(crate) identity: Identity,
    pub(crate) propose_timeout: Duration,
    pub(crate) read_timeout: Duration,
}

pub(crate) fn action_from_wire(action: i32) -> Result<MembershipAction, AdminError> {
    match pb::change_membership_request::Action::try_from(action) {
        Ok(pb::change_membership_request::Action::Promote) => Ok(MembershipAction::Promote),
        Ok(pb::change_membership_request::Action::Demote) => Ok(MembershipAction::Demote),
        Ok(pb::change_membership_request::Action::Remove) => Ok(MembershipAction::Remove),
        _ => Err(AdminError::Refused(format!(
            "unknown membership action {action}"
        ))),
    }
}

pub(crate) fn action_to_wire(action: MembershipAction) -> i32 {
    let a = match action {
        MembershipAction::Promote => pb::change_membership_request::Action::Promote,
        MembershipAction::Demote => pb::change_membership_request::Action::Demote,
        MembershipAction::Remove => pb::change_membership_request::Action::Remove,
    };
    a as i32
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn propose(
        &self,
        request: Request<pb::ProposeRequest>,
    ) -> Result<Response<pb::ProposeResponse>, Status> {
        self.identity.check(&request)?;
        let envelope: Envelope = decode(&request.into_inner().envelope)
            .map_err(|e| Status::invalid_argument(format!("undecodable envelope: {e}")))?;
        let (log_index, result) = self
            .core
            .propose_for_peer(envelope, self.propose_timeout)
            .await
            .map_err(AdminError::into_status)?;
        let result = encode(&result).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::ProposeResponse { log_index, result }))
    }

    async fn read_index(
        &self,
        request: Request<pb::ReadIndexRequest>,
    ) -> Result<Response<pb::ReadIndexResponse>, Status> {
        self.identity.check(&request)?;
        let read_index = self
            .core
            .read_index_here(self.read_timeout)
            .await
            .map_err(|f| match f {
                crate::read_batch::BarrierFailure::NoQuorum(m) => AdminError::NoQuorum(m),
                crate::read_batch::BarrierFailure::Fatal(m) => AdminError::Internal(m),
            })
            .map_err(AdminError::into_status)?;
        Ok(Response::new(pb::ReadIndexResponse { read_index }))
    }

    async fn join(
        &self,
        request: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        // No identity yet: the token is the credential.
        let join = request.into_inner();
        if join.cluster_addr.is_empty() || join.region.is_empty() {
            return Err(Status::invalid_argument(
                "cluster_addr and region are required",
            ));
        }
        let leads = self.core.metrics().current_leader == Some(self.core.node_id);
        if !leads {
            let admitted = self
                .core
                .on_leader(self.propose_timeout, |mut client, _leader| {
                    let join = join.clone();
                    async move { client.join(join).await.map(|r| r.into_inner()) }
                })
                .await
                .map_err(AdminError::into_status)?;
            return Ok(Response::new(admitted));
        }
        let info = NodeInfo {
            addr: join.cluster_addr,
            region: join.region,
            client_url: join.client_url,
            blob_addr: join.blob_addr,
        };
        let admission = self
            .core
            .join_here(
                &join.token,
                &join.nonce,
                info,
                join.supported_cluster_version,
                self.propose_timeout,
            )
            .await
            .map_err(AdminError::into_status)?;
        let tls = admission.tls.unwrap_or(crate::tls::TlsFiles {
            ca_pem: String::new(),
            ca_key_pem: String::new(),
            node_pem: String::new(),
            node_key_pem: String::new(),
        });
        Ok(Response::new(pb::JoinResponse {
            node_id: admission.node_id,
            cluster_id: self.core.cluster_id.clone(),
            members: admission.members,
            ca_pem: tls.ca_pem,
            ca_key_pem: tls.ca_key_pem,
            node_cert_pem: tls.node_pem,
            node_key_pem: tls.node_key_pem,
        }))
    }

    async fn change_membership(
        &self,
        request: Request<pb::ChangeMembershipRequest>,
    ) -> Result<Response<pb::ChangeMembershipResponse>, Status> {
        self.identity.check(&request)?;
        let change = request.into_inner();
        let action = action_from_wire(change.action).map_err(AdminError::into_status)?;
        let plan = self
            .core
            .change_membership_here(
                action,
                change.node_id,
                Some(change.expected_membership_index).filter(|_| !change.dry_run),
                change.dry_run,
                self.propose_timeout,
            )
            .await
            .map_err(AdminError::into_status)?;
        Ok(Response::new(pb::ChangeMembershipResponse {
            voters_before: plan.voters_before,
            voters_after: plan.voters_after,
            membership_index: plan.membership_index,
        }))
    }

    async fn transfer_leader(
        &self,
        request: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::TransferLeaderResponse>, Status> {
        self.identity.check(&request)?;
        let to = request.into_inner().node_id;
        let leader = self
            .core
            .transfer_leader_here(to, self.propose_timeout)
            .await
            .map_err(AdminError::into_status)?;
        Ok(Response::new(pb::TransferLeaderResponse { leader }))
    }

    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        self.identity.check(&request)?;
        let status = self.core.status_here().map_err(AdminError::into_status)?;
        let json = serde_json::to_vec(&status).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::StatusResponse { json }))
    }

    async fn rotate_certs(
        &self,
        request: Request<pb::RotateCertsRequest>,
    ) -> Result<Response<pb::RotateCertsResponse>, Status> {
        self.identity.check(&request)?;
        let finish = request.into_inner().finish;
        let nodes = self
            .core
            .rotate_certs_here(finish, self.propose_timeout)
            .await
            .map_err(AdminError::into_status)?;
        Ok(Response::new(pb::RotateCertsResponse {
            nodes: nodes.iter().map(|n| n.to_wire()).collect(),
        }))
    }

    async fn install_tls(
        &self,
        request: Request<pb::InstallTlsRequest>,
    ) -> Result<Response<pb::InstallTlsResponse>, Status> {
        let from = self.identity.check(&request)?;
        // Certificates (and the CA key) are taken only from the leader this node follows.
        let leader = self.core.metrics().current_leader;
        if leader != Some(from) {
            return Err(Status::permission_denied(format!(
                "node {from} is not this node's leader ({leader:?}); certificates come from the \
                 leader only"
            )));
        }
        let install = request.into_inner();
        let node = self
            .core
            .install_tls_here(&install.ca_pem, &install.ca_key_pem)
            .await
            .map_err(AdminError::into_status)?;
        Ok(Response::new(pb::InstallTlsResponse {
            node: Some(node.to_wire()),
        }))
    }
}
