//! gRPC channels to the other members, and the identity every call carries.
//!
//! Each peer gets two HTTP/2 connections: `Lane::Rpc` for heartbeats, appends, votes and
//! forwarded writes, and `Lane::Bulk` for snapshot transfers, so that a large snapshot never
//! delays a heartbeat behind it (which would trigger a needless election).
//!
//! Every request carries the cluster id and the sender's and target's node ids as gRPC
//! metadata; [`Identity::check`] refuses a call meant for another cluster or another node, or
//! sent by a node that is not (or no longer) a member. Until the cluster CA lands these ids are
//! asserted, not proven: plaintext is allowed only on loopback (see `wharf-server`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use openraft::async_runtime::watch::WatchReceiver;
use tonic::metadata::MetadataMap;
use tonic::transport::{Channel, Endpoint};
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

/// Lazily connected channels to peers, keyed by node id, lane and address.
pub(crate) struct Peers {
    pub(crate) cluster_id: String,
    pub(crate) self_id: NodeId,
    connect_timeout: Duration,
    channels: Mutex<HashMap<(NodeId, Lane), (String, Channel)>>,
}

impl Peers {
    pub(crate) fn new(cluster_id: String, self_id: NodeId, connect_timeout: Duration) -> Peers {
        Peers {
            cluster_id,
            self_id,
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
        let channel = Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(20))
            .keep_alive_while_idle(true)
            .connect_lazy();
        channels.insert((target, lane), (addr.to_string(), channel.clone()));
        Ok(channel)
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
}

impl Identity {
    /// Refuses a call for another cluster or node, or from a node that is not a member.
    ///
    /// A node that does not yet find itself in its own membership (a learner that has not
    /// received the configuration that added it) accepts any sender of its cluster: only the
    /// leader that added it talks to it then.
    pub(crate) fn check(&self, meta: &MetadataMap) -> Result<NodeId, tonic::Status> {
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
