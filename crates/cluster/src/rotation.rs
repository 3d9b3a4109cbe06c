//! `wharf cluster rotate-certs`: replacing the cluster CA without a moment in which two
//! members distrust each other.
//!
//! The leader takes every member through each step before starting the next:
//!
//! 1. trust the new CA next to the old one (certificates unchanged);
//! 2. sign with the new CA: each member re-issues its own certificate from it;
//! 3. (`--finish`, run later) trust only the signing CA.
//!
//! Between steps every member trusts every certificate any member presents. A step that does
//! not reach every member stops the rotation with an error naming the node; nothing a member
//! already took is unsafe, and running the command again resumes (a new run of step 1 simply
//! adds another CA to the bundle, which `--finish` drops). Step 3 runs step 2's check again
//! first, so no member is left with a certificate from a CA about to be distrusted.

use std::time::Duration;

use wharf_proto::admin as pb;
use wharf_types::NodeId;

use crate::core::{AdminError, Core};
use crate::peers::Lane;

/// One member's certificate after a step.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeCert {
    pub node_id: NodeId,
    /// Unix seconds after which its certificate is no longer valid.
    pub not_after: i64,
    /// How many CAs it trusts.
    pub trusted_cas: u32,
}

impl NodeCert {
    pub(crate) fn to_wire(&self) -> pb::NodeCert {
        pb::NodeCert {
            node_id: self.node_id,
            not_after: self.not_after,
            trusted_cas: self.trusted_cas,
        }
    }

    pub(crate) fn from_wire(n: &pb::NodeCert) -> NodeCert {
        NodeCert {
            node_id: n.node_id,
            not_after: n.not_after,
            trusted_cas: n.trusted_cas,
        }
    }
}

fn tls_error(e: crate::tls::TlsError) -> AdminError {
    AdminError::Internal(e.to_string())
}

impl Core {
    fn cluster_tls(&self) -> Result<&std::sync::Arc<crate::tls::ClusterTls>, AdminError> {
        self.tls.as_ref().ok_or_else(|| {
            AdminError::Refused(
                "this cluster runs without TLS (every address is loopback); there are no \
                 certificates to rotate"
                    .to_string(),
            )
        })
    }

    /// Takes a bundle (signer first) and the signer's key: stores this node's resulting files
    /// durably, then uses them for new connections.
    pub(crate) async fn install_tls_here(
        &self,
        ca_pem: &str,
        ca_key_pem: &str,
    ) -> Result<NodeCert, AdminError> {
        let tls = self.cluster_tls()?.clone();
        let _turn = self.tls_lock.lock().await;
        let current = tls.files();
        let next = crate::tls::settle(&current, &self.cluster_id, self.node_id, ca_pem, ca_key_pem)
            .map_err(|e| AdminError::Refused(format!("unusable certificates: {e}")))?;
        if next != current {
            let data_dir = self.data_dir.clone();
            let stored = next.clone();
            tokio::task::spawn_blocking(move || crate::tls::store(&data_dir, &stored))
                .await
                .map_err(|e| AdminError::Internal(e.to_string()))?
                .map_err(tls_error)?;
            tls.replace(next.clone()).map_err(tls_error)?;
            // Connections made from now on present (and check) the new certificates.
            self.peers.reconnect_all();
            tracing::info!(
                node_id = self.node_id,
                trusted_cas = crate::tls::trusted_cas(&next).unwrap_or(0),
                "cluster certificates installed"
            );
        }
        Ok(NodeCert {
            node_id: self.node_id,
            not_after: tls.not_after(),
            trusted_cas: crate::tls::trusted_cas(&next).map_err(tls_error)? as u32,
        })
    }

    /// Runs a rotation (or with `finish`, its last step) on every member; this node leads.
    pub(crate) async fn rotate_certs_here(
        &self,
        finish: bool,
        timeout: Duration,
    ) -> Result<Vec<NodeCert>, AdminError> {
        self.require_leader()?;
        let tls = self.cluster_tls()?.clone();
        let Ok(_rotation) = self.rotation_lock.try_lock() else {
            return Err(AdminError::Refused(
                "a certificate rotation is already running".to_string(),
            ));
        };
        let current = tls.files();
        let mut steps = Vec::new();
        if finish {
            steps.push((
                "check",
                (current.ca_pem.clone(), current.ca_key_pem.clone()),
            ));
            let only = crate::tls::trusting_only_signer(&current).map_err(tls_error)?;
            steps.push(("trust only the signing CA", only));
        } else {
            let (new_ca, new_key) = crate::tls::create_ca(&self.cluster_id).map_err(tls_error)?;
            let both = crate::tls::trusting_also(&current, &new_ca).map_err(tls_error)?;
            steps.push(("trust the new CA", both));
            let sign = crate::tls::signing_with(&current, &new_ca, &new_key).map_err(tls_error)?;
            steps.push(("sign with the new CA", sign));
        }
        let mut certs = Vec::new();
        for (step, (ca_pem, ca_key_pem)) in steps {
            certs = self
                .install_everywhere(step, &ca_pem, &ca_key_pem, timeout)
                .await?;
        }
        Ok(certs)
    }

    /// One rotation step on every member, this node last (its channels are renewed then).
    async fn install_everywhere(
        &self,
        step: &str,
        ca_pem: &str,
        ca_key_pem: &str,
        timeout: Duration,
    ) -> Result<Vec<NodeCert>, AdminError> {
        let members: Vec<(NodeId, String)> = self
            .metrics()
            .membership_config
            .membership()
            .nodes()
            .map(|(id, info)| (*id, info.addr.clone()))
            .collect();
        let mut certs = Vec::new();
        for (id, addr) in members.iter().filter(|(id, _)| *id != self.node_id) {
            // Refused, not NoQuorum: a forwarding node would retry a NoQuorum, each time
            // with a new CA.
            let failed = |reason: String| {
                AdminError::Refused(format!(
                    "node {id} ({addr}) did not take the step \"{step}\": {reason}; members that \
                     did still trust every certificate in use, so the cluster keeps working — \
                     run the command again once every member is up"
                ))
            };
            let channel = self
                .peers
                .channel(*id, addr, Lane::Rpc)
                .map_err(|e| failed(e.to_string()))?;
            self.peers.link_to(*id).await.map_err(failed)?;
            let mut request = self.peers.request(
                *id,
                pb::InstallTlsRequest {
                    ca_pem: ca_pem.to_string(),
                    ca_key_pem: ca_key_pem.to_string(),
                },
            );
            request.set_timeout(timeout);
            let answer = tokio::time::timeout(
                timeout,
                pb::admin_client::AdminClient::new(channel).install_tls(request),
            )
            .await
            .map_err(|_| failed(format!("no answer within {timeout:?}")))?
            .map_err(|s| failed(s.message().to_string()))?
            .into_inner();
            let node = answer
                .node
                .ok_or_else(|| failed("an empty answer".to_string()))?;
            certs.push(NodeCert::from_wire(&node));
        }
        certs.push(self.install_tls_here(ca_pem, ca_key_pem).await?);
        certs.sort_by_key(|c| c.node_id);
        tracing::info!(step, nodes = certs.len(), "certificate rotation step done");
        Ok(certs)
    }
}
