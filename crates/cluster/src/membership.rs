//! What the operator sees and changes: the cluster's status, and pure planning of membership
//! changes (promote, demote, remove) with the checks that keep a quorum reachable.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use wharf_types::NodeId;

/// The leader's view of the cluster (`GET /api/v1/cluster`, `wharf cluster status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub cluster_id: String,
    pub leader: Option<NodeId>,
    pub term: u64,
    /// Highest log index committed by a quorum.
    pub committed_index: Option<u64>,
    /// Log index of the membership configuration in effect; membership changes name it.
    pub membership_index: u64,
    pub voters: Vec<NodeId>,
    pub members: Vec<MemberStatus>,
    /// The committed cluster version, as the answering node has applied it.
    #[serde(default)]
    pub cluster_version: u32,
    /// The first time two nodes reported different state hashes at the same index, if ever.
    #[serde(default)]
    pub divergence: Option<wharf_meta::versions::Divergence>,
}

/// One member, as the leader sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub id: NodeId,
    pub region: String,
    /// Cluster (gRPC) address.
    pub addr: String,
    pub client_url: String,
    pub role: Role,
    /// Last log index known to be replicated to it (for the leader: its own last index).
    pub matched_index: Option<u64>,
    /// How many entries it trails the leader's last log index; unknown while it has not
    /// answered since this leader took over.
    pub lag: Option<u64>,
    /// The cluster version its binary reported supporting (none yet: the cluster version
    /// cannot be raised until it reports).
    #[serde(default)]
    pub supported_version: Option<u32>,
    /// Blobs it does not hold yet that the answering node's state says it should (filled in by
    /// the node that answers, from its holdings).
    #[serde(default)]
    pub backlog: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Voter,
    Learner,
}

/// A membership change an operator asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MembershipAction {
    /// Learner → voter.
    Promote,
    /// Voter → learner.
    Demote,
    /// Leave the cluster (a voter is demoted and removed in one change).
    Remove,
}

impl std::fmt::Display for MembershipAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MembershipAction::Promote => "promote",
            MembershipAction::Demote => "demote",
            MembershipAction::Remove => "remove",
        })
    }
}

/// The voter sets before and after a change, and the configuration it applies to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipPlan {
    pub action: MembershipAction,
    pub node_id: NodeId,
    pub voters_before: Vec<NodeId>,
    pub voters_after: Vec<NodeId>,
    /// The configuration the plan was made against; the change applies only if it is still
    /// current.
    pub membership_index: u64,
}

/// Plans `action` on `node_id` against `status`, or says why it is refused.
///
/// A learner is promoted only once it has caught up to within `max_lag` entries. A change that
/// leaves voters is refused unless a majority of the new voter set is reachable now (the leader,
/// or a voter within `max_lag` entries of it); otherwise the cluster would stop taking writes.
pub fn plan(
    status: &ClusterStatus,
    action: MembershipAction,
    node_id: NodeId,
    max_lag: u64,
) -> Result<MembershipPlan, String> {
    let member = status
        .members
        .iter()
        .find(|m| m.id == node_id)
        .ok_or_else(|| format!("node {node_id} is not a member of this cluster"))?;
    let before: BTreeSet<NodeId> = status.voters.iter().copied().collect();
    let mut after = before.clone();
    match (action, member.role) {
        (MembershipAction::Promote, Role::Voter) => {
            return Err(format!("node {node_id} already is a voter"));
        }
        (MembershipAction::Promote, Role::Learner) => {
            match member.lag {
                None => {
                    return Err(format!(
                        "node {node_id} has not caught up with the leader yet (no entries or \
                         snapshot acknowledged); wait and retry"
                    ));
                }
                Some(lag) if lag > max_lag => {
                    return Err(format!(
                        "node {node_id} lags {lag} entries behind the leader (limit {max_lag}); \
                         wait until it has caught up"
                    ));
                }
                Some(_) => {}
            }
            after.insert(node_id);
        }
        (MembershipAction::Demote, Role::Learner) => {
            return Err(format!("node {node_id} is a learner already"));
        }
        (MembershipAction::Demote | MembershipAction::Remove, Role::Voter) => {
            after.remove(&node_id);
        }
        (MembershipAction::Remove, Role::Learner) => {}
    }
    if after.is_empty() {
        return Err("a cluster needs at least one voter".to_string());
    }
    if after != before {
        let reachable = after
            .iter()
            .filter(|id| {
                status.leader == Some(**id)
                    || status
                        .members
                        .iter()
                        .any(|m| m.id == **id && m.lag.is_some_and(|lag| lag <= max_lag))
            })
            .count();
        let quorum = after.len() / 2 + 1;
        if reachable < quorum {
            return Err(format!(
                "the new voter set {after:?} would have {reachable} reachable voters, fewer than \
                 its quorum of {quorum}"
            ));
        }
    }
    Ok(MembershipPlan {
        action,
        node_id,
        voters_before: before.into_iter().collect(),
        voters_after: after.into_iter().collect(),
        membership_index: status.membership_index,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn member(id: NodeId, role: Role, lag: Option<u64>) -> MemberStatus {
        MemberStatus {
            supported_version: None,
            backlog: None,
            id,
            region: "r".into(),
            addr: format!("127.0.0.1:{}", 7000 + id),
            client_url: String::new(),
            role,
            matched_index: lag.map(|l| 100u64.saturating_sub(l)),
            lag,
        }
    }

    fn status(members: Vec<MemberStatus>) -> ClusterStatus {
        ClusterStatus {
            cluster_version: 1,
            divergence: None,
            cluster_id: "c".into(),
            leader: Some(1),
            term: 3,
            committed_index: Some(100),
            membership_index: 7,
            voters: members
                .iter()
                .filter(|m| m.role == Role::Voter)
                .map(|m| m.id)
                .collect(),
            members,
        }
    }

    #[test]
    fn promote_needs_a_caught_up_learner() {
        let s = status(vec![
            member(1, Role::Voter, Some(0)),
            member(2, Role::Learner, None),
            member(3, Role::Learner, Some(5000)),
            member(4, Role::Learner, Some(3)),
        ]);
        assert!(plan(&s, MembershipAction::Promote, 2, 1000).is_err());
        assert!(
            plan(&s, MembershipAction::Promote, 3, 1000)
                .unwrap_err()
                .contains("lags")
        );
        assert!(plan(&s, MembershipAction::Promote, 1, 1000).is_err());
        let p = plan(&s, MembershipAction::Promote, 4, 1000).unwrap();
        assert_eq!(p.voters_before, vec![1]);
        assert_eq!(p.voters_after, vec![1, 4]);
        assert_eq!(p.membership_index, 7);
    }

    #[test]
    fn removal_keeps_a_reachable_quorum() {
        // 1 leads, 2 is reachable, 3 is down (never answered this leader).
        let s = status(vec![
            member(1, Role::Voter, Some(0)),
            member(2, Role::Voter, Some(2)),
            member(3, Role::Voter, None),
        ]);
        // Removing 3 leaves {1, 2}: both reachable.
        let p = plan(&s, MembershipAction::Remove, 3, 1000).unwrap();
        assert_eq!(p.voters_after, vec![1, 2]);
        // Removing 2 leaves {1, 3} with only 1 reachable: refused.
        let err = plan(&s, MembershipAction::Remove, 2, 1000).unwrap_err();
        assert!(err.contains("reachable"), "{err}");
        assert!(plan(&s, MembershipAction::Demote, 2, 1000).is_err());
        // The last voter cannot go.
        let single = status(vec![member(1, Role::Voter, Some(0))]);
        assert!(plan(&single, MembershipAction::Remove, 1, 1000).is_err());
        assert!(plan(&s, MembershipAction::Remove, 9, 1000).is_err());
    }

    #[test]
    fn learners_leave_without_touching_voters() {
        let s = status(vec![
            member(1, Role::Voter, Some(0)),
            member(5, Role::Learner, None),
        ]);
        let p = plan(&s, MembershipAction::Remove, 5, 1000).unwrap();
        assert_eq!(p.voters_before, p.voters_after);
        assert!(plan(&s, MembershipAction::Demote, 5, 1000).is_err());
    }
}
