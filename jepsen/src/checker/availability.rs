//! Availability per phase. A harness that only sees errors proves nothing: the run fails when
//! fewer than 90 % of the operations started in fault-free phases succeed. Fault-free phases
//! begin one second after a heal completed (an election may still be settling) and end when
//! the next fault starts.

use serde::Serialize;

use super::Verdict;
use crate::history::{Event, Kind, NEMESIS, Op, Outcome};

/// The least share of operations that must succeed in fault-free phases.
pub const MIN_QUIET_SUCCESS: f64 = 0.90;
/// How long after a heal the cluster may still settle.
const SETTLE_MS: f64 = 1000.0;
/// An operation that took longer than this was stalled, however it ended (a cluster where
/// every client hangs would otherwise start no operation at all and look fine).
const STALLED_MS: f64 = 3000.0;

/// One phase of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    /// The fault family, or `none` for a fault-free phase.
    pub fault: String,
    pub detail: String,
    pub start_ms: f64,
    pub end_ms: f64,
    pub ops: u64,
    pub ok: u64,
    pub fail: u64,
    pub info: u64,
}

/// Splits the run into phases by the nemesis events, and counts the client operations (not
/// the final reads, not uploads meant to be refused) started in each. `ok` counts the
/// operations that got the answer they should (a competing immutable push refused is one)
/// within [`STALLED_MS`]; one still running when the run ended counts as not ok.
pub fn phases(events: &[Event], ops: &[Op]) -> Vec<Phase> {
    let mut phases = Vec::new();
    let mut quiet_from = 0.0;
    let mut current: Option<Phase> = None;
    let phase = |fault: &str, detail: &str, start_ms, end_ms| Phase {
        fault: fault.into(),
        detail: detail.into(),
        start_ms,
        end_ms,
        ops: 0,
        ok: 0,
        fail: 0,
        info: 0,
    };
    for e in events.iter().filter(|e| e.process == NEMESIS) {
        match (e.kind, e.f.as_str()) {
            (Kind::Invoke, "heal") => {}
            (Kind::Ok, "heal") => {
                if let Some(mut p) = current.take() {
                    p.end_ms = e.time_ms;
                    phases.push(p);
                }
                quiet_from = e.time_ms + SETTLE_MS;
            }
            (Kind::Invoke, family) => {
                if e.time_ms > quiet_from {
                    phases.push(phase("none", "", quiet_from, e.time_ms));
                }
                current = Some(phase(family, "", e.time_ms, f64::INFINITY));
            }
            (Kind::Ok, _) => {
                if let Some(p) = current.as_mut() {
                    p.detail = e.key.clone();
                }
            }
            _ => {}
        }
    }
    let last = ops
        .iter()
        .filter(|o| !o.r#final)
        .map(|o| o.start_ms)
        .fold(0.0, f64::max);
    if let Some(p) = current.take() {
        phases.push(p);
    } else if last > quiet_from {
        phases.push(phase("none", "", quiet_from, last + 1.0));
    }
    for op in ops.iter().filter(|o| counted(o)) {
        if let Some(p) = phases
            .iter_mut()
            .find(|p| p.start_ms <= op.start_ms && op.start_ms < p.end_ms)
        {
            p.ops += 1;
            match op.outcome {
                Outcome::Ok if op.end_ms - op.start_ms > STALLED_MS => p.info += 1,
                Outcome::Ok => p.ok += 1,
                // A competing push to an immutable tag refused: the answer it should get.
                Outcome::Fail if refused_as_it_should(op) => p.ok += 1,
                Outcome::Fail => p.fail += 1,
                Outcome::Info => p.info += 1,
            }
        }
    }
    phases
}

/// A push to an immutable tag bound to another manifest, answered 409.
fn refused_as_it_should(op: &Op) -> bool {
    op.workload == "immutable"
        && op.f == "push"
        && op.error.as_deref().is_some_and(|e| e.starts_with("409"))
}

/// Client operations that should succeed when nothing is wrong.
fn counted(op: &Op) -> bool {
    let meant_to_fail = op.workload == "blobs" && op.f == "push" && op.arg["kind"] != "good";
    !op.r#final && !meant_to_fail
}

pub fn check(events: &[Event], ops: &[Op]) -> Verdict {
    let mut verdict = Verdict::new("fault-free-availability");
    let phases = phases(events, ops);
    let (total, ok) = phases
        .iter()
        .filter(|p| p.fault == "none")
        .fold((0, 0), |(t, o), p| (t + p.ops, o + p.ok));
    verdict.count("quiet-ops", total);
    verdict.count("quiet-ok", ok);
    let share = if total == 0 {
        0.0
    } else {
        ok as f64 / total as f64
    };
    verdict.count("quiet-ok-permille", (share * 1000.0) as u64);
    if share < MIN_QUIET_SUCCESS {
        verdict.violation(format!(
            "{ok} of {total} operations in fault-free phases succeeded ({:.1} % < {:.0} %)",
            share * 100.0,
            MIN_QUIET_SUCCESS * 100.0
        ));
    }
    verdict
}
