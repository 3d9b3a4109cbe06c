//! gRPC channels to the other members, and the identity every call carries.
//!
//! Each peer gets two HTTP/2 connections: `Lane::Rpc` for heartbeats, appends, votes and
//! forwarded writes, and `Lane::Bulk` for snapshot transfers, so that a large snapshot never
//! delays a heartbeat behind it (which would trigger a needless election).
//!
//! Every request carries the cluster id and the sender's and target's node ids as gRPC
//! metadata; [`Identity::check`] refuses a call meant for another cluster or another node, or
//! sent by a node that is not (or no longer) a member. Over mutual TLS the claimed sender must
//! also be the node its certificate names ([`crate::tls`]); plaintext is allowed only on a
//! loopback-only cluster.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use openraft::async_runtime::watch::WatchReceiver;
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;
use wharf_types::NodeId;

use crate::Raft;

pub(crate) const HEADER_CLUSTER: &str = "x-wharf-cluster";
pub(crate) const HEADER_FROM: &str = "x-wharf-from";
pub(crate) const HEADER_TO: &str = "x-wharf-to";

/// Which connection to a peer a call uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Lane {
    Rpc,
    Bulk,
}

/// Decides whether traffic between two nodes gets through, and how late. Production nodes use
/// none; `wharf-testkit` injects partitions and delays with it. Checked before every call a
/// node makes and for every call (and streamed append) it receives.
pub trait LinkFilter: Send + Sync + 'static {
    /// Whether a message from `from` reaches `to`.
    fn allows(&self, from: NodeId, to: NodeId) -> bool;
    /// Extra latency for a call from `from` to `to`.
    fn delay(&self, _from: NodeId, _to: NodeId) -> Duration {
        Duration::ZERO
    }
}

/// Lazily connected channels to peers, keyed by node id, lane and address.
pub(crate) struct Peers {
    pub(crate) cluster_id: String,
    pub(crate) self_id: NodeId,
    pub(crate) links: Option<std::sync::Arc<dyn LinkFilter>>,
    /// Mutual TLS under the cluster CA; `None` on a loopback-only cluster.
    pub(crate) tls: Option<std::sync::Arc<crate::tls::ClusterTls>>,
    connect_timeout: Duration,
    channels: Mutex<HashMap<(NodeId, Lane), (String, Channel)>>,
}

impl Peers {
    pub(crate) fn new(
        cluster_id: String,
        self_id: NodeId,
        connect_timeout: Duration,
        links: Option<std::sync::Arc<dyn LinkFilter>>,
        tls: Option<std::sync::Arc<crate::tls::ClusterTls>>,
    ) -> Peers {
        Peers {
            cluster_id,
            self_id,
            links,
            tls,
            connect_timeout,
            channels: Mutex::new(HashMap::new()),
        }
    }

    /// The channel to `target` at `addr` (`host:port`), reusing a live one for the same
    /// address. Connecting happens on first use and again after a failure.
    pub(crate) fn channel(
        &self,
        target: NodeId,
        addr: &str,
        lane: Lane,
    ) -> Result<Channel, tonic::transport::Error> {
        let mut channels = self
            .channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((known, channel)) = channels.get(&(target, lane))
            && known == addr
        {
            return Ok(channel.clone());
        }
        let tls = self.tls.as_ref().map(|t| {
            (
                crate::transport::ClientTls::Member(t.clone()),
                crate::tls::node_name(&self.cluster_id, target),
            )
        });
        let channel = crate::transport::channel(addr, tls, self.connect_timeout)?;
        channels.insert((target, lane), (addr.to_string(), channel.clone()));
        Ok(channel)
    }

    /// Drops every cached channel, so the next call to each peer connects afresh (with the
    /// certificates in use by then). Calls in flight finish on their connections.
    pub(crate) fn reconnect_all(&self) {
        self.channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clear();
    }

    /// Waits out an injected delay, or fails if the link to `target` is cut.
    pub(crate) async fn link_to(&self, target: NodeId) -> Result<(), String> {
        let Some(links) = &self.links else {
            return Ok(());
        };
        if !links.allows(self.self_id, target) {
            return Err(format!("link {} → {target} is cut", self.self_id));
        }
        let delay = links.delay(self.self_id, target);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Ok(())
    }

    /// Wraps `message` with this node's identity, addressed to `target`.
    pub(crate) fn request<T>(&self, target: NodeId, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        let meta = request.metadata_mut();
        insert(meta, HEADER_CLUSTER, &self.cluster_id);
        insert(meta, HEADER_FROM, &self.self_id.to_string());
        insert(meta, HEADER_TO, &target.to_string());
        request
    }
}

fn insert(meta: &mut MetadataMap, key: &'static str, value: &str) {
    // Cluster ids are hex and node ids are digits: always valid ASCII metadata.
    if let Ok(v) = value.parse() {
        meta.insert(key, v);
    }
}

/// Server-side check of the identity a call carries.
#[derive(Clone)]
pub(crate) struct Identity {
    pub(crate) cluster_id: String,
    pub(crate) self_id: NodeId,
    pub(crate) raft: Raft,
    pub(crate) links: Option<std::sync::Arc<dyn LinkFilter>>,
    /// Whether calls come over mutual TLS (then the claimed sender must match its certificate).
    pub(crate) tls: bool,
}

impl Identity {
    /// Refuses a call for another cluster or node, or from a node that is not a member.
    ///
    /// A node that does not yet find itself in its own membership (a learner that has not
    /// received the configuration that added it) accepts any sender of its cluster: only the
    /// leader that added it talks to it then.
    /// Whether an injected fault cuts traffic from `from` to this node.
    pub(crate) fn allows_from(&self, from: NodeId) -> bool {
        self.links
            .as_ref()
            .is_none_or(|l| l.allows(from, self.self_id))
    }

    /// The injected latency of messages from `from` to this node.
    pub(crate) fn delay_from(&self, from: NodeId) -> Duration {
        self.links
            .as_ref()
            .map_or(Duration::ZERO, |l| l.delay(from, self.self_id))
    }

    pub(crate) fn check<T>(&self, request: &tonic::Request<T>) -> Result<NodeId, tonic::Status> {
        let meta = request.metadata();
        let get = |key: &str| {
            meta.get(key)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| tonic::Status::unauthenticated(format!("missing {key}")))
        };
        let cluster = get(HEADER_CLUSTER)?;
        if cluster != self.cluster_id {
            return Err(tonic::Status::permission_denied(format!(
                "this node belongs to cluster {}, not {cluster}",
                self.cluster_id
            )));
        }
        let to: NodeId = get(HEADER_TO)?
            .parse()
            .map_err(|_| tonic::Status::invalid_argument("bad x-wharf-to"))?;
        if to != self.self_id {
            return Err(tonic::Status::permission_denied(format!(
                "this is node {}, not node {to}",
                self.self_id
            )));
        }
        let from: NodeId = get(HEADER_FROM)?
            .parse()
            .map_err(|_| tonic::Status::invalid_argument("bad x-wharf-from"))?;
        if self.tls {
            // The handshake verified the chain against the cluster CA; the certificate must
            // also name the node the call claims to come from.
            let certs = request
                .extensions()
                .get::<crate::transport::PeerCerts>()
                .map(|c| c.0.clone())
                .unwrap_or_default();
            let named = certs
                .first()
                .is_some_and(|leaf| crate::tls::names_node(leaf, &self.cluster_id, from));
            if !named {
                return Err(tonic::Status::unauthenticated(format!(
                    "the caller's certificate does not name node {from} of cluster {}",
                    self.cluster_id
                )));
            }
        }
        if !self.allows_from(from) {
            return Err(tonic::Status::unavailable(format!(
                "link {from} → {} is cut",
                self.self_id
            )));
        }
        let metrics = self.raft.metrics().borrow_watched().clone();
        let membership = metrics.membership_config.membership();
        let knows_itself = membership.get_node(&self.self_id).is_some();
        if knows_itself && membership.get_node(&from).is_none() {
            return Err(tonic::Status::permission_denied(format!(
                "node {from} is not a member of cluster {}",
                self.cluster_id
            )));
        }
        Ok(from)
    }
}
