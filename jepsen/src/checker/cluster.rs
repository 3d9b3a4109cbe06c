//! What the harness observed of the cluster itself after heal: whether every node came to
//! hold every acknowledged blob without being asked for it (DESIGN.md §1.2, the replication
//! policy `all-regions`), and whether the state machines agree (DESIGN.md §1.1).

use serde::{Deserialize, Serialize};

use super::Verdict;

/// How long after heal every node must hold every acknowledged blob.
pub const CONVERGENCE_LIMIT_S: f64 = 60.0;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Observations {
    pub nodes: usize,
    pub convergence: Vec<Convergence>,
    pub state_hashes: Vec<StateHash>,
    /// One per power cut of every node.
    #[serde(default)]
    pub durability: Vec<DurabilityCheck>,
    /// Nodes whose process exited without the nemesis killing it.
    #[serde(default)]
    pub crashes: Vec<Crash>,
}

/// A node that exited by itself (a fatal error: an fsync that failed, an entry it could not
/// apply), found after a step; it was restarted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Crash {
    pub node: usize,
    pub at_ms: f64,
    pub log_tail: String,
}

/// The disks right after every node lost power, before any restarted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DurabilityCheck {
    pub at_ms: f64,
    /// `durability.min_copies` of the run.
    pub min_copies: usize,
    /// Blobs acknowledged before the cut.
    pub checked: usize,
    /// Those left on fewer than `min_copies` disks, with how many they were left on.
    pub under_replicated: Vec<(String, usize)>,
}

/// One node's holdings after heal, checked on its disk (no read goes through it first).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Convergence {
    pub node: usize,
    /// Blobs it had to hold.
    pub expected: usize,
    /// Seconds after heal until it held all of them; None if it never did.
    pub seconds: Option<f64>,
    /// What it still lacked when the harness stopped waiting.
    pub missing: Vec<String>,
}

/// `GET /api/v1/cluster/state-hash` of one node once the applied indexes were equal.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StateHash {
    pub node: usize,
    pub applied_index: u64,
    pub sha256: String,
    /// What the node recorded of a divergence found when nodes compared hashes at their
    /// snapshots (null or empty: none).
    #[serde(default)]
    pub divergence: serde_json::Value,
}

pub fn convergence(obs: &Observations) -> Verdict {
    let mut verdict = Verdict::new("holdings-converge");
    for c in &obs.convergence {
        match c.seconds {
            Some(s) if s <= CONVERGENCE_LIMIT_S => {}
            _ => verdict.violation(format!(
                "node {} lacked {} of {} acknowledged blobs {CONVERGENCE_LIMIT_S} s after heal \
                 (e.g. {})",
                c.node,
                c.missing.len(),
                c.expected,
                c.missing.first().map(String::as_str).unwrap_or("?")
            )),
        }
    }
    let slowest = obs
        .convergence
        .iter()
        .filter_map(|c| c.seconds)
        .fold(0.0, f64::max);
    verdict.count("nodes", obs.convergence.len() as u64);
    verdict.count("slowest-ms", (slowest * 1000.0) as u64);
    verdict.require_some("nodes observed", obs.convergence.len() as u64);
    verdict
}

/// DESIGN.md §1.2: an acknowledged blob is fsync'd on `min_copies` nodes, so a power cut of
/// every node leaves it on at least that many disks.
pub fn durable_copies(obs: &Observations) -> Verdict {
    let mut verdict = Verdict::new("durable-copies");
    for check in &obs.durability {
        for (digest, copies) in &check.under_replicated {
            verdict.violation(format!(
                "after every node lost power at {:.0} ms, acknowledged {digest} was left on                  {copies} disk(s), fewer than min_copies = {}",
                check.at_ms, check.min_copies
            ));
        }
    }
    verdict.count("power-cuts", obs.durability.len() as u64);
    verdict.count(
        "blobs-checked",
        obs.durability.iter().map(|c| c.checked as u64).sum(),
    );
    verdict
}

/// No node stopped by itself.
pub fn no_crashes(obs: &Observations) -> Verdict {
    let mut verdict = Verdict::new("no-crashes");
    for c in &obs.crashes {
        verdict.violation(format!(
            "node {} exited by itself (found at {:.0} ms); its log ends: {}",
            c.node, c.at_ms, c.log_tail
        ));
    }
    verdict
}

pub fn state_hashes(obs: &Observations) -> Verdict {
    let mut verdict = Verdict::new("state-hashes-equal");
    for h in &obs.state_hashes {
        let diverged = match &h.divergence {
            serde_json::Value::Null => false,
            serde_json::Value::Array(a) => !a.is_empty(),
            serde_json::Value::Object(o) => !o.is_empty(),
            _ => true,
        };
        if diverged {
            verdict.violation(format!(
                "node {} recorded a divergence of state hashes: {}",
                h.node, h.divergence
            ));
        }
    }
    if let Some(first) = obs.state_hashes.first() {
        for h in &obs.state_hashes[1..] {
            if h.applied_index != first.applied_index {
                verdict.violation(format!(
                    "node {} stayed at applied index {} while node {} is at {}",
                    h.node, h.applied_index, first.node, first.applied_index
                ));
            } else if h.sha256 != first.sha256 {
                verdict.violation(format!(
                    "at applied index {}, node {} hashes to {} and node {} to {}",
                    h.applied_index, h.node, h.sha256, first.node, first.sha256
                ));
            }
        }
        verdict.count("applied-index", first.applied_index);
    }
    if obs.state_hashes.len() < obs.nodes {
        verdict.violation(format!(
            "only {} of {} nodes reported a state hash",
            obs.state_hashes.len(),
            obs.nodes
        ));
    }
    verdict.count("nodes", obs.state_hashes.len() as u64);
    verdict
}
