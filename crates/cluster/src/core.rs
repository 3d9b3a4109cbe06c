//! What only the leader can do — propose, hand out a read index, admit a node, change
//! membership, transfer leadership, report status — and how any other node gets it done by
//! forwarding to the leader over `wharf.admin.v1`.
//!
//! **Writes from any node** (DESIGN.md §1.1/§1.2). [`Core::propose`] proposes locally when this
//! node leads and otherwise forwards the envelope, with its `request_id`, to the leader; it
//! then waits until this node has applied the entry itself, so a read after the answer sees
//! the write. Failed attempts are retried until the deadline with the same envelope (apply
//! deduplicates by `request_id`, so a retry applies at most once, across leader changes too).
//! The final error says what is known: `NoQuorum` if no attempt can have reached a log,
//! `OutcomeUnknown` otherwise.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use openraft::async_runtime::watch::WatchReceiver;
use openraft::errors::{
    ChangeMembershipError, ClientWriteError, Fatal, LinearizableReadError, RaftError,
};
use openraft::raft::Precondition;
use openraft::{ChangeMembers, RaftMetrics, ReadPolicy};
use sha2::{Digest as _, Sha256};
use tonic::transport::Channel;
use wharf_meta::raft_types::NodeInfo;
use wharf_meta::{
    Command, CommandResult, Envelope, MetaError, Outcome, TypeConfig, decode, encode,
};
use wharf_proto::admin as pb;
use wharf_proto::admin::admin_client::AdminClient;
use wharf_types::NodeId;
use wharf_types::planted::{self, PlantedBug};

use crate::Raft;
use crate::membership::{
    self, ClusterStatus, MemberStatus, MembershipAction, MembershipPlan, Role,
};
use crate::peers::{Lane, Peers};
use crate::read_batch::BarrierFailure;

/// gRPC metadata naming a Wharf error code on a failed admin call.
pub(crate) const HEADER_ERROR: &str = "x-wharf-error";
/// Pause between attempts of a write or admin call that found no usable leader.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// How long to wait before retrying a membership change behind one still in progress.
const MEMBERSHIP_RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Why an administrative operation (membership, join, status) failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AdminError {
    /// No leader could be reached: nothing changed; retry later.
    #[error("no quorum: {0}")]
    NoQuorum(String),
    /// The change was proposed but its result is unknown.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// The change is not allowed now (lagging learner, lost quorum, stale configuration).
    #[error("refused: {0}")]
    Refused(String),
    /// A join token was not accepted.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    #[error("internal: {0}")]
    Internal(String),
}

impl AdminError {
    pub(crate) fn into_status(self) -> tonic::Status {
        let (status, code) = match &self {
            AdminError::NoQuorum(m) => (tonic::Status::unavailable(m.clone()), "NO_QUORUM"),
            AdminError::OutcomeUnknown(m) => {
                (tonic::Status::unavailable(m.clone()), "OUTCOME_UNKNOWN")
            }
            AdminError::Refused(m) => (tonic::Status::failed_precondition(m.clone()), "REFUSED"),
            AdminError::Unauthorized(m) => {
                (tonic::Status::permission_denied(m.clone()), "UNAUTHORIZED")
            }
            AdminError::Internal(m) => (tonic::Status::internal(m.clone()), "INTERNAL"),
        };
        let mut status = status;
        if let Ok(v) = code.parse() {
            status.metadata_mut().insert(HEADER_ERROR, v);
        }
        status
    }

    /// The error a failed call to the leader stands for. `sent` tells whether the request may
    /// have reached the leader at all.
    fn from_status(status: &tonic::Status) -> AdminError {
        let code = status
            .metadata()
            .get(HEADER_ERROR)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let m = status.message().to_string();
        match code {
            "NO_QUORUM" => AdminError::NoQuorum(m),
            "OUTCOME_UNKNOWN" => AdminError::OutcomeUnknown(m),
            "REFUSED" => AdminError::Refused(m),
            "UNAUTHORIZED" => AdminError::Unauthorized(m),
            "INTERNAL" => AdminError::Internal(m),
            // No Wharf code: the call failed in transport. A refused connection never carried
            // the request; anything else may have.
            _ if never_sent(status) => AdminError::NoQuorum(format!("leader unreachable: {m}")),
            _ => AdminError::OutcomeUnknown(format!("leader call failed: {m}")),
        }
    }
}

/// Whether a transport failure happened before the request could leave this node.
fn never_sent(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unavailable
        && (status.message().contains("connect") || status.message().contains("Connection refused"))
}

/// One attempt at a write.
enum Attempt {
    NotProposed(String),
    MaybeProposed(String),
    Stopped,
    Fatal(String),
}

/// Answers to a join request.
pub(crate) struct Admission {
    pub(crate) node_id: NodeId,
    pub(crate) members: Vec<String>,
    /// The new node's certificates (with the CA), on a TLS cluster.
    pub(crate) tls: Option<crate::tls::TlsFiles>,
}

/// The raft node plus what forwarding needs; shared by the gRPC services and [`ClusterNode`].
///
/// [`ClusterNode`]: crate::ClusterNode
pub(crate) struct Core {
    pub(crate) node_id: NodeId,
    pub(crate) cluster_id: String,
    pub(crate) raft: Raft,
    pub(crate) peers: Arc<Peers>,
    /// A learner within this many entries of the leader may be promoted; a voter within it
    /// counts as reachable.
    pub(crate) promote_max_lag: u64,
    /// How long without hearing from the leader before this node stops trusting it.
    pub(crate) leader_silence_limit: Duration,
    /// When this node last heard from a leader (ms since `epoch`), set by the raft service.
    pub(crate) leader_contact_ms: AtomicU64,
    pub(crate) epoch: Instant,
    /// The cluster CA and this node's certificate, on a TLS cluster.
    pub(crate) tls: Option<Arc<crate::tls::ClusterTls>>,
    /// Held across each membership change this node makes as leader, so concurrent joins
    /// (or a join next to an operator's change) take turns instead of failing with openraft's
    /// "a configuration change is already in progress".
    pub(crate) membership_lock: tokio::sync::Mutex<()>,
    /// Where this node keeps its files (its certificates under `tls/`).
    pub(crate) data_dir: std::path::PathBuf,
    /// Held while this node installs new certificates.
    pub(crate) tls_lock: tokio::sync::Mutex<()>,
    /// Held while this node, as leader, runs a certificate rotation.
    pub(crate) rotation_lock: tokio::sync::Mutex<()>,
}

impl Core {
    pub(crate) fn metrics(&self) -> RaftMetrics<TypeConfig> {
        self.raft.metrics().borrow_watched().clone()
    }

    /// Whether this node knows a leader and has applied everything it knows is committed.
    pub(crate) fn is_caught_up(&self) -> bool {
        let m = self.metrics();
        if m.running_state.is_err() || m.current_leader.is_none() {
            return false;
        }
        let committed = m
            .local_committed
            .as_ref()
            .max(m.cluster_committed.as_ref())
            .map(|id| id.index);
        let applied = m.last_applied.as_ref().map(|id| id.index);
        applied.is_some() && applied >= committed
    }

    /// Whether this node heard from its leader within `max` (a leader: from a quorum).
    pub(crate) fn fresh_within(&self, max: Duration) -> bool {
        let m = self.metrics();
        let Some(leader) = m.current_leader else {
            return false;
        };
        if leader == self.node_id {
            let voters = m.membership_config.membership().voter_ids().count();
            return voters <= 1
                || m.last_quorum_acked.is_some_and(|at| {
                    openraft::async_runtime::Instant::elapsed(&at.into_inner()) <= max
                });
        }
        let last = Duration::from_millis(self.leader_contact_ms.load(Ordering::Relaxed));
        last > Duration::ZERO && self.epoch.elapsed().saturating_sub(last) <= max
    }

    /// Records that a leader just reached this node.
    pub(crate) fn heard_from_leader(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.leader_contact_ms.store(ms, Ordering::Relaxed);
    }

    /// The leader and its address, if this node knows one it heard from recently.
    fn usable_leader(&self) -> Result<(NodeId, NodeInfo), String> {
        let m = self.metrics();
        let Some(leader) = m.current_leader else {
            return Err("no leader is known".to_string());
        };
        let Some(info) = m.membership_config.membership().get_node(&leader).cloned() else {
            return Err(format!("leader {leader} is not in this node's membership"));
        };
        if leader == self.node_id {
            // A leader cut off from its quorum cannot commit: say so before proposing, so the
            // client learns "not proposed" instead of waiting for "outcome unknown".
            let voters = m.membership_config.membership().voter_ids().count();
            let acked = m
                .last_quorum_acked
                .map(|at| openraft::async_runtime::Instant::elapsed(&at.into_inner()));
            if voters > 1 && acked.is_some_and(|age| age > self.leader_silence_limit) {
                return Err(format!(
                    "leader {leader} has not heard from a quorum for {:?}",
                    acked.unwrap_or_default()
                ));
            }
        } else {
            let last = Duration::from_millis(self.leader_contact_ms.load(Ordering::Relaxed));
            let silent = self.epoch.elapsed().saturating_sub(last);
            if silent > self.leader_silence_limit {
                return Err(format!(
                    "nothing heard from leader {leader} for {silent:?} (limit {:?})",
                    self.leader_silence_limit
                ));
            }
        }
        Ok((leader, info))
    }

    async fn admin_client(
        &self,
        leader: NodeId,
        addr: &str,
    ) -> Result<AdminClient<Channel>, String> {
        self.peers.link_to(leader).await?;
        let channel = self
            .peers
            .channel(leader, addr, Lane::Rpc)
            .map_err(|e| e.to_string())?;
        Ok(AdminClient::new(channel))
    }

    // --- writes

    /// Proposes `envelope` on whichever node leads, retrying until `deadline`, and returns
    /// once this node has applied it.
    pub(crate) async fn propose(
        &self,
        envelope: Envelope,
        deadline: Instant,
        no_leader_wait: Duration,
    ) -> Result<CommandResult, MetaError> {
        let started = Instant::now();
        let mut maybe_proposed = false;
        let mut last;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let (attempt, forwarded) = match self.usable_leader() {
                Ok((leader, _)) if leader == self.node_id => {
                    (self.propose_here(envelope.clone(), remaining).await, false)
                }
                Ok((leader, info)) => {
                    // Bounded per attempt, so that a write waiting on a leader that went
                    // silent moves to the next one (the same request id: applied once).
                    let limit = remaining.min(self.leader_call_limit());
                    let attempt = self
                        .forward_propose(leader, &info.addr, &envelope, limit)
                        .await;
                    (attempt, true)
                }
                Err(why) => (Err(Attempt::NotProposed(why)), false),
            };
            // planted bug ack-before-commit: a write this node could not get committed (no
            // leader, no quorum, timeout) is answered as applied
            if matches!(
                attempt,
                Err(Attempt::NotProposed(_) | Attempt::MaybeProposed(_))
            ) && planted::active(PlantedBug::AckBeforeCommit)
            {
                return Ok(CommandResult::Ok(Outcome::Applied));
            }
            match attempt {
                // planted bug follower-answers-before-apply: the leader's answer is passed on
                // before this node applied the entry
                Ok((_, result))
                    if forwarded && planted::active(PlantedBug::FollowerAnswersBeforeApply) =>
                {
                    return Ok(result);
                }
                Ok((index, result)) => {
                    self.wait_applied(index, deadline).await.map_err(|e| {
                        MetaError::OutcomeUnknown(format!(
                            "committed at index {index}, but not applied here in time: {e}"
                        ))
                    })?;
                    return Ok(result);
                }
                Err(Attempt::Stopped) if !maybe_proposed => {
                    return Err(MetaError::NoQuorum(
                        "the raft node is shut down".to_string(),
                    ));
                }
                Err(Attempt::Stopped) => {
                    return Err(MetaError::OutcomeUnknown(
                        "the raft node shut down during the write".to_string(),
                    ));
                }
                Err(Attempt::Fatal(m)) if maybe_proposed => {
                    return Err(MetaError::OutcomeUnknown(format!(
                        "an earlier attempt may have been proposed; then: {m}"
                    )));
                }
                Err(Attempt::Fatal(m)) => return Err(MetaError::Fatal(m)),
                Err(Attempt::MaybeProposed(m)) => {
                    maybe_proposed = true;
                    last = m;
                }
                Err(Attempt::NotProposed(m)) => last = m,
            }
            let now = Instant::now();
            let give_up = if maybe_proposed {
                deadline
            } else {
                deadline.min(started + no_leader_wait)
            };
            if now + RETRY_PAUSE >= give_up {
                break;
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
        Err(if maybe_proposed {
            MetaError::OutcomeUnknown(last)
        } else {
            MetaError::NoQuorum(last)
        })
    }

    /// Proposes on this node (the leader): the log index and apply result.
    async fn propose_here(
        &self,
        envelope: Envelope,
        timeout: Duration,
    ) -> Result<(u64, CommandResult), Attempt> {
        if let Err(fatal) = &self.metrics().running_state {
            return Err(match fatal {
                Fatal::Stopped => Attempt::Stopped,
                other => Attempt::Fatal(other.to_string()),
            });
        }
        match tokio::time::timeout(timeout, self.raft.client_write(envelope)).await {
            Ok(Ok(response)) => Ok((response.log_id.index, response.data)),
            Err(_elapsed) => Err(Attempt::MaybeProposed(format!(
                "no result within {timeout:?}"
            ))),
            Ok(Err(RaftError::APIError(e))) => Err(match e {
                ClientWriteError::ForwardToLeader(f) => {
                    Attempt::NotProposed(format!("node {} is not the leader: {f}", self.node_id))
                }
                ClientWriteError::LogEntryDiscarded(f) => Attempt::MaybeProposed(f.to_string()),
                e @ (ClientWriteError::ChangeMembershipError(_)
                | ClientWriteError::PreconditionFailed(_)) => Attempt::NotProposed(e.to_string()),
            }),
            // The core stopped after taking the entry: it may be in the log (and committed by
            // a new leader), so only the precheck above can say "not proposed".
            Ok(Err(RaftError::Fatal(fatal))) => Err(Attempt::MaybeProposed(format!(
                "the raft node stopped during the write: {fatal}"
            ))),
        }
    }

    /// For the Admin.Propose handler: propose here and say what is known on failure.
    pub(crate) async fn propose_for_peer(
        &self,
        envelope: Envelope,
        timeout: Duration,
    ) -> Result<(u64, CommandResult), AdminError> {
        self.propose_here(envelope, timeout)
            .await
            .map_err(|attempt| match attempt {
                Attempt::NotProposed(m) => AdminError::NoQuorum(m),
                Attempt::Stopped => AdminError::NoQuorum("the leader is shutting down".into()),
                Attempt::MaybeProposed(m) => AdminError::OutcomeUnknown(m),
                Attempt::Fatal(m) => AdminError::Internal(m),
            })
    }

    async fn forward_propose(
        &self,
        leader: NodeId,
        addr: &str,
        envelope: &Envelope,
        timeout: Duration,
    ) -> Result<(u64, CommandResult), Attempt> {
        let mut client = self
            .admin_client(leader, addr)
            .await
            .map_err(Attempt::NotProposed)?;
        let body = encode(envelope).map_err(|e| Attempt::Fatal(e.to_string()))?;
        let mut request = self
            .peers
            .request(leader, pb::ProposeRequest { envelope: body });
        request.set_timeout(timeout);
        let call = tokio::time::timeout(timeout, client.propose(request)).await;
        let response = match call {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(status)) => {
                return Err(match AdminError::from_status(&status) {
                    AdminError::NoQuorum(m) => Attempt::NotProposed(m),
                    other => Attempt::MaybeProposed(other.to_string()),
                });
            }
            Err(_) => {
                return Err(Attempt::MaybeProposed(format!(
                    "leader {leader} gave no result within {timeout:?}"
                )));
            }
        };
        // The leader applied it; only its answer is unreadable.
        let result: CommandResult = decode(&response.result).map_err(|e| {
            Attempt::MaybeProposed(format!("undecodable result from leader {leader}: {e}"))
        })?;
        Ok((response.log_index, result))
    }

    /// Waits until this node has applied `index`.
    pub(crate) async fn wait_applied(&self, index: u64, deadline: Instant) -> Result<(), String> {
        let applied = self.metrics().last_applied.map(|id| id.index);
        if applied >= Some(index) {
            return Ok(());
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        self.raft
            .wait(Some(remaining))
            .applied_index_at_least(Some(index), "entry applied here")
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    // --- reads

    /// How long one call to the leader may take before this node looks again at who leads: a
    /// leader that went silent (cut off, killed, paused) is replaced within an election
    /// timeout, and a call still waiting on it would otherwise hold the request until its
    /// deadline while the new leader could already answer.
    fn leader_call_limit(&self) -> Duration {
        (self.leader_silence_limit * 2).max(Duration::from_secs(1))
    }

    /// One ReadIndex round for this node: through its own raft when it leads, else through
    /// the leader's; then waits until this node has applied up to the read index. A call to a
    /// leader that does not answer in time is tried again with whoever leads by then, while
    /// `timeout` allows.
    pub(crate) async fn barrier(&self, timeout: Duration) -> Result<(), BarrierFailure> {
        let deadline = Instant::now() + timeout;
        loop {
            let (leader, _) = self.usable_leader().map_err(BarrierFailure::NoQuorum)?;
            let remaining = deadline.saturating_duration_since(Instant::now());
            match self.barrier_once(remaining, deadline).await {
                Err(BarrierFailure::NoQuorum(why))
                    if Instant::now() + RETRY_PAUSE < deadline
                        && self.usable_leader().is_ok_and(|(now, _)| now != leader) =>
                {
                    tracing::debug!(leader, %why, "read barrier: the leader changed; trying again");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                other => return other,
            }
        }
    }

    async fn barrier_once(
        &self,
        timeout: Duration,
        deadline: Instant,
    ) -> Result<(), BarrierFailure> {
        let (leader, info) = self.usable_leader().map_err(BarrierFailure::NoQuorum)?;
        let index = if leader == self.node_id {
            self.read_index_here(timeout).await?
        } else {
            let timeout = timeout.min(self.leader_call_limit());
            let mut client = self
                .admin_client(leader, &info.addr)
                .await
                .map_err(BarrierFailure::NoQuorum)?;
            let mut request = self.peers.request(leader, pb::ReadIndexRequest {});
            request.set_timeout(timeout);
            match tokio::time::timeout(timeout, client.read_index(request)).await {
                Ok(Ok(r)) => r.into_inner().read_index,
                Ok(Err(status)) => {
                    return Err(BarrierFailure::NoQuorum(format!(
                        "leader {leader}: {}",
                        status.message()
                    )));
                }
                Err(_) => {
                    return Err(BarrierFailure::NoQuorum(format!(
                        "leader {leader} gave no read index within {timeout:?}"
                    )));
                }
            }
        };
        // planted bug follower-answers-before-apply: a follower reads its local state as soon as
        // the leader named the read index, before applying up to it
        if leader != self.node_id && planted::active(PlantedBug::FollowerAnswersBeforeApply) {
            return Ok(());
        }
        self.wait_applied(index, deadline)
            .await
            .map_err(BarrierFailure::NoQuorum)
    }

    /// Confirms leadership with a quorum and returns the index a linearizable read must wait
    /// for.
    pub(crate) async fn read_index_here(&self, timeout: Duration) -> Result<u64, BarrierFailure> {
        let read = tokio::time::timeout(timeout, self.raft.get_read_log_id(ReadPolicy::ReadIndex));
        match read.await {
            Ok(Ok((read_log_id, _applied))) => Ok(read_log_id.index()),
            Err(_elapsed) => Err(BarrierFailure::NoQuorum(format!(
                "leadership not confirmed within {timeout:?}"
            ))),
            Ok(Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f)))) => Err(
                BarrierFailure::NoQuorum(format!("node {} is not the leader: {f}", self.node_id)),
            ),
            Ok(Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(q)))) => {
                Err(BarrierFailure::NoQuorum(q.to_string()))
            }
            Ok(Err(RaftError::Fatal(Fatal::Stopped))) => Err(BarrierFailure::NoQuorum(
                "the raft node is shut down".to_string(),
            )),
            Ok(Err(RaftError::Fatal(fatal))) => Err(BarrierFailure::Fatal(fatal.to_string())),
        }
    }

    // --- administration on the leader

    pub(crate) fn require_leader(&self) -> Result<RaftMetrics<TypeConfig>, AdminError> {
        let m = self.metrics();
        if m.current_leader != Some(self.node_id) {
            return Err(AdminError::NoQuorum(format!(
                "node {} is not the leader (leader: {:?})",
                self.node_id, m.current_leader
            )));
        }
        Ok(m)
    }

    /// The cluster as this node, the leader, sees it.
    pub(crate) fn status_here(&self) -> Result<ClusterStatus, AdminError> {
        let m = self.require_leader()?;
        Ok(self.status_from(&m))
    }

    fn status_from(&self, m: &RaftMetrics<TypeConfig>) -> ClusterStatus {
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let last = m.last_log_index.unwrap_or(0);
        let members = membership
            .nodes()
            .map(|(id, info)| {
                let matched = if *id == self.node_id {
                    m.last_log_index
                } else {
                    m.replication
                        .as_ref()
                        .and_then(|r| r.get(id).cloned().flatten())
                        .map(|log_id| log_id.index)
                };
                MemberStatus {
                    // Filled in from the answering node's state.
                    supported_version: None,
                    backlog: None,
                    id: *id,
                    region: info.region.clone(),
                    addr: info.addr.clone(),
                    client_url: info.client_url.clone(),
                    role: if voters.contains(id) {
                        Role::Voter
                    } else {
                        Role::Learner
                    },
                    matched_index: matched,
                    lag: matched.map(|i| last.saturating_sub(i)),
                }
            })
            .collect();
        ClusterStatus {
            // Filled in from the answering node's state ([`crate::ClusterNode::status`]).
            cluster_version: 0,
            divergence: None,
            cluster_id: self.cluster_id.clone(),
            leader: m.current_leader,
            term: m.current_term,
            committed_index: m.cluster_committed.map(|id| id.index),
            membership_index: membership_index(m),
            voters: voters.into_iter().collect(),
            members,
        }
    }

    /// Admits a node that presented `token`: mints its id through raft and adds it as a
    /// learner. A retry by the same joiner (same token and nonce) gets the same id; the request
    /// id is derived from both.
    pub(crate) async fn join_here(
        &self,
        token: &str,
        nonce: &str,
        info: NodeInfo,
        supported_version: u32,
        propose_timeout: Duration,
    ) -> Result<Admission, AdminError> {
        self.require_leader()?;
        if nonce.len() < 16 {
            return Err(AdminError::Refused(
                "a join request carries the joiner's random nonce".to_string(),
            ));
        }
        let token_sha256 = token_digest(token);
        let envelope = Envelope {
            version: wharf_meta::ENVELOPE_VERSION,
            // Only the same joiner (same token and nonce) retrying gets the stored answer.
            // The supported version is part of it: a joiner refused for an old binary gets a
            // fresh answer when it retries with a newer one.
            request_id: wharf_meta::RequestId(format!(
                "join-{token_sha256}-{}-v{supported_version}",
                token_digest(nonce)
            )),
            proposer: self.node_id,
            actor: "join".to_string(),
            timestamp_ms: crate::node::now_ms(),
            command: Command::AdmitNode {
                token_sha256,
                addr: info.addr.clone(),
                region: info.region.clone(),
                supported_version,
            },
        };
        let (_, result) = self.propose_for_peer(envelope, propose_timeout).await?;
        let node_id = match result {
            CommandResult::Ok(Outcome::NodeAdmitted { node_id }) => node_id,
            CommandResult::Rejected(r) => return Err(AdminError::Unauthorized(r.message)),
            other => {
                return Err(AdminError::Internal(format!(
                    "unexpected result admitting a node: {other:?}"
                )));
            }
        };
        self.add_learner_once(node_id, &info, propose_timeout)
            .await?;
        tracing::info!(node_id, node = %info, "node joined as a learner");
        let members = self
            .metrics()
            .membership_config
            .membership()
            .nodes()
            .map(|(id, n)| format!("{id}={}", n.addr))
            .collect();
        let tls = match &self.tls {
            Some(tls) => {
                let files = tls.files();
                let (node_pem, node_key_pem) = crate::tls::issue_node_cert(
                    &files.ca_pem,
                    &files.ca_key_pem,
                    &self.cluster_id,
                    node_id,
                )
                .map_err(|e| AdminError::Internal(e.to_string()))?;
                Some(crate::tls::TlsFiles {
                    ca_pem: files.ca_pem,
                    ca_key_pem: files.ca_key_pem,
                    node_pem,
                    node_key_pem,
                })
            }
            None => None,
        };
        Ok(Admission {
            node_id,
            members,
            tls,
        })
    }

    /// Adds an admitted node as a learner unless it already is a member. Waits its turn behind
    /// other membership changes, and retries while one started elsewhere (e.g. by a previous
    /// leader) is still uncommitted, until `timeout`.
    pub(crate) async fn add_learner_once(
        &self,
        node_id: NodeId,
        info: &NodeInfo,
        timeout: Duration,
    ) -> Result<(), AdminError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let _turn = tokio::time::timeout_at(deadline, self.membership_lock.lock())
            .await
            .map_err(|_| {
                AdminError::NoQuorum(format!(
                    "node {node_id} was admitted but other membership changes kept it waiting \
                     longer than {timeout:?}; retry the join with the same token"
                ))
            })?;
        loop {
            let in_membership = self
                .metrics()
                .membership_config
                .membership()
                .get_node(&node_id)
                .is_some();
            if in_membership {
                return Ok(());
            }
            let added = tokio::time::timeout_at(
                deadline,
                self.raft.add_learner(node_id, info.clone(), false),
            )
            .await;
            match added {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                    ChangeMembershipError::InProgress(_),
                )))) if tokio::time::Instant::now() + MEMBERSHIP_RETRY_PAUSE < deadline => {
                    tokio::time::sleep(MEMBERSHIP_RETRY_PAUSE).await;
                }
                Ok(Err(e)) => {
                    return Err(AdminError::NoQuorum(format!(
                        "node {node_id} was admitted but could not be added as a learner ({e}); \
                         retry the join with the same token"
                    )));
                }
                Err(_) => {
                    return Err(AdminError::OutcomeUnknown(format!(
                        "adding node {node_id} as a learner took longer than {timeout:?}"
                    )));
                }
            }
        }
    }

    /// Plans (and unless `dry_run`, applies) a membership change on this node, the leader.
    pub(crate) async fn change_membership_here(
        &self,
        action: MembershipAction,
        node_id: NodeId,
        expected_membership_index: Option<u64>,
        dry_run: bool,
        timeout: Duration,
    ) -> Result<MembershipPlan, AdminError> {
        // Waits for a join's learner change to finish, so the view below is not already stale.
        let _turn = tokio::time::timeout(timeout, self.membership_lock.lock())
            .await
            .map_err(|_| {
                AdminError::NoQuorum(format!(
                    "another membership change kept this one waiting longer than {timeout:?}"
                ))
            })?;
        // The plan, the operator's expectation and the guard all use this one view.
        let m = self.require_leader()?;
        let status = self.status_from(&m);
        let plan = membership::plan(&status, action, node_id, self.promote_max_lag)
            .map_err(AdminError::Refused)?;
        if dry_run {
            return Ok(plan);
        }
        if let Some(expected) = expected_membership_index
            && expected != plan.membership_index
        {
            return Err(AdminError::Refused(format!(
                "the configuration changed since it was shown (index {expected}, now {}); \
                 look at `wharf cluster status` again",
                plan.membership_index
            )));
        }
        let guard = Precondition::LastMembershipLogId {
            last_membership_log_id: *m.membership_config.log_id(),
        };
        let ids = BTreeSet::from([node_id]);
        let was_voter = plan.voters_before.contains(&node_id);
        let (changes, retain): (ChangeMembers<NodeId, NodeInfo>, bool) = match action {
            MembershipAction::Promote => (ChangeMembers::AddVoterIds(ids), true),
            MembershipAction::Demote => (ChangeMembers::RemoveVoters(ids), true),
            MembershipAction::Remove if was_voter => (ChangeMembers::RemoveVoters(ids), false),
            MembershipAction::Remove => (ChangeMembers::RemoveNodes(ids), false),
        };
        let changed = tokio::time::timeout(
            timeout,
            self.raft.change_membership_if(changes, retain, [guard]),
        )
        .await;
        match changed {
            Ok(Ok(_)) => {}
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                return Err(AdminError::NoQuorum(f.to_string()));
            }
            Ok(Err(RaftError::APIError(e))) => return Err(AdminError::Refused(e.to_string())),
            Ok(Err(RaftError::Fatal(f))) => return Err(AdminError::Internal(f.to_string())),
            Err(_) => {
                return Err(AdminError::OutcomeUnknown(format!(
                    "the membership change did not complete within {timeout:?}"
                )));
            }
        }
        tracing::info!(%action, node_id, before = ?plan.voters_before, after = ?plan.voters_after, "membership changed");
        let membership_index = membership_index(&self.metrics());
        Ok(MembershipPlan {
            membership_index,
            ..plan
        })
    }

    /// Hands leadership to `to` and waits (bounded) until it leads.
    pub(crate) async fn transfer_leader_here(
        &self,
        to: NodeId,
        timeout: Duration,
    ) -> Result<NodeId, AdminError> {
        let m = self.require_leader()?;
        if to == self.node_id {
            return Ok(to);
        }
        if !m
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == to)
        {
            return Err(AdminError::Refused(format!("node {to} is not a voter")));
        }
        self.raft
            .trigger()
            .transfer_leader(to)
            .await
            .map_err(|e| AdminError::Internal(e.to_string()))?;
        self.raft
            .wait(Some(timeout))
            .metrics(|m| m.current_leader == Some(to), "new leader")
            .await
            .map_err(|e| AdminError::OutcomeUnknown(format!("node {to} did not take over: {e}")))?;
        Ok(to)
    }

    /// Runs `op` against the leader's admin service, from any node. Retries while no leader is
    /// known or the leader changes, until `timeout`.
    pub(crate) async fn on_leader<T, F, Fut>(
        &self,
        timeout: Duration,
        op: F,
    ) -> Result<T, AdminError>
    where
        F: Fn(AdminClient<Channel>, NodeId) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            let error = match self.usable_leader() {
                Ok((leader, info)) => match self.admin_client(leader, &info.addr).await {
                    Ok(client) => match op(client, leader).await {
                        Ok(v) => return Ok(v),
                        Err(status) => AdminError::from_status(&status),
                    },
                    Err(e) => AdminError::NoQuorum(e),
                },
                Err(why) => AdminError::NoQuorum(why),
            };
            if !matches!(error, AdminError::NoQuorum(_)) || Instant::now() + RETRY_PAUSE >= deadline
            {
                return Err(error);
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }
}

/// The log index of the membership configuration in effect.
fn membership_index(m: &RaftMetrics<TypeConfig>) -> u64 {
    m.membership_config
        .log_id()
        .as_ref()
        .map(|id| id.index)
        .unwrap_or(0)
}

/// What the state machine stores of a join token.
pub(crate) fn token_digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.trim().as_bytes()))
}
