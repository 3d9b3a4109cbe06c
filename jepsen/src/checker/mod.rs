//! Offline checkers: each reads the operations of the history (and what the harness observed of
//! the cluster after heal) and gives a verdict. A run passes only when every verdict does.

mod availability;
mod cluster;
mod immutable;
mod linearizable;
mod sets;
mod staleness;
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

use serde::{Deserialize, Serialize};

use crate::history::{Event, Op, operations};

pub use availability::phases as availability_phases;
pub use cluster::{
    CONVERGENCE_LIMIT_S, Convergence, Crash, DurabilityCheck, Observations, StateHash,
};

/// At most this many violations are listed per checker (the count is always complete).
const LISTED: usize = 20;

/// One checker's verdict.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verdict {
    pub checker: String,
    pub valid: bool,
    /// What it counted (keys checked, items lost, ...), as `name=value` pairs.
    pub counts: Vec<(String, u64)>,
    /// How many violations it found.
    pub violations: u64,
    /// The first violations, in words.
    pub examples: Vec<String>,
}

impl Verdict {
    fn new(checker: &str) -> Verdict {
        Verdict {
            checker: checker.into(),
            valid: true,
            counts: Vec::new(),
            violations: 0,
            examples: Vec::new(),
        }
    }

    /// Records a violation.
    fn violation(&mut self, what: String) {
        self.valid = false;
        self.violations += 1;
        if self.examples.len() < LISTED {
            self.examples.push(what);
        }
    }

    fn count(&mut self, name: &str, value: u64) {
        self.counts.push((name.into(), value));
    }

    /// A checker that found nothing to check proves nothing: invalid.
    fn require_some(&mut self, what: &str, n: u64) {
        if n == 0 {
            self.valid = false;
            self.examples
                .push(format!("no {what} in the history to check"));
        }
    }
}

/// The operations of one workload.
fn of<'a>(ops: &'a [Op], workload: &'a str) -> impl Iterator<Item = &'a Op> + 'a {
    ops.iter().filter(move |op| op.workload == workload)
}

/// Runs every checker whose workload ran.
pub fn check_all(
    events: &[Event],
    observations: &Observations,
    workloads: &[String],
    bounded_staleness_ms: f64,
) -> Vec<Verdict> {
    let ops = operations(events);
    let ran = |w: &str| workloads.iter().any(|x| x == w);
    let mut verdicts = Vec::new();
    if ran("register") {
        verdicts.push(linearizable::check(&ops, "register"));
    }
    if ran("bounded") {
        verdicts.push(staleness::check(&ops, bounded_staleness_ms));
    }
    if ran("immutable") {
        verdicts.push(immutable::check(&ops));
    }
    if ran("blobs") {
        verdicts.push(sets::blobs(&ops, observations.nodes));
    }
    if ran("packages") {
        verdicts.push(sets::packages(&ops, observations.nodes));
    }
    if ran("repos") {
        verdicts.push(sets::creates_apply_once(&ops));
    }
    verdicts.push(sets::never_not_found(&ops));
    verdicts.push(cluster::convergence(observations));
    if !observations.durability.is_empty() {
        verdicts.push(cluster::durable_copies(observations));
    }
    verdicts.push(cluster::state_hashes(observations));
    verdicts.push(cluster::no_crashes(observations));
    verdicts.push(availability::check(events, &ops));
    verdicts
}
