//! Bounded staleness (DESIGN.md §1.5c): a read in a `bounded` repository may lag, but never by
//! more than `read.max_staleness`. A read is stale beyond the bound when the value it returned
//! had already been overwritten — by a write acknowledged before the read started minus the
//! bound — and that overwrite started after the returned value's write had completed (so no
//! ordering of concurrent writes could make the returned value current). A read may never
//! return a value that no write had started by the time the read completed.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{Verdict, of};
use crate::history::{Op, Outcome};

pub fn check(ops: &[Op], bound_ms: f64) -> Verdict {
    let mut verdict = Verdict::new("bounded-staleness");
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in of(ops, "bounded").filter(|op| op.outcome != Outcome::Fail) {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    let mut reads = 0;
    let mut worst_ms: f64 = 0.0;
    for (key, ops) in &by_key {
        let writes: Vec<&&Op> = ops.iter().filter(|o| o.f != "read").collect();
        for read in ops
            .iter()
            .filter(|o| o.f == "read" && o.outcome == Outcome::Ok)
        {
            reads += 1;
            let got = &read.ret;
            // When each write that could have produced the value read completed (absent is
            // also the initial state, "written" at 0). An indeterminate write may take effect at
            // any time after it started, however long after the client gave up on it.
            let mut sources: Vec<f64> = writes
                .iter()
                .filter(|w| written(w) == *got && w.start_ms <= read.end_ms)
                .map(|w| {
                    if w.outcome == Outcome::Info {
                        f64::INFINITY
                    } else {
                        w.end_ms
                    }
                })
                .collect();
            if got.is_null() {
                sources.push(0.0);
            }
            if sources.is_empty() {
                verdict.violation(format!(
                    "key {key}: node {} returned {got} at {:.0} ms, which no write had started",
                    read.node, read.start_ms
                ));
                continue;
            }
            // Stale by how much: for the freshest possible source, how long before the read
            // an acknowledged overwrite of it completed.
            let staleness = sources
                .iter()
                .map(|&source_end| {
                    writes
                        .iter()
                        .filter(|w| {
                            w.outcome == Outcome::Ok
                                && written(w) != *got
                                && w.start_ms > source_end
                                && w.end_ms < read.start_ms
                        })
                        .map(|w| read.start_ms - w.end_ms)
                        .fold(0.0, f64::max)
                })
                .fold(f64::INFINITY, f64::min);
            worst_ms = worst_ms.max(staleness);
            if staleness > bound_ms {
                verdict.violation(format!(
                    "key {key}: node {} returned {got} at {:.0} ms, {staleness:.0} ms after it \
                     had been overwritten (bound {bound_ms:.0} ms)",
                    read.node, read.start_ms
                ));
            }
        }
    }
    verdict.count("keys", by_key.len() as u64);
    verdict.count("reads", reads);
    verdict.count("worst-staleness-ms", worst_ms as u64);
    verdict.require_some("bounded reads", reads);
    verdict
}

/// What a write leaves in the register.
fn written(op: &Op) -> Value {
    if op.f == "delete" {
        Value::Null
    } else {
        op.arg.clone()
    }
}
