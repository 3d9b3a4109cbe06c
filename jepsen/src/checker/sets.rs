//! Set-full checks for blobs and package versions (DESIGN.md §1.2, §1.4, §1.7): every
//! acknowledged item is readable and byte-identical on every node after heal (else *lost*);
//! a refused upload is never acknowledged; no body served completes with other bytes; every
//! acknowledged version appears in every index read that started after its acknowledgment
//! (else *stale*); and nothing acknowledged is ever answered "not found" (DESIGN.md §1.5b).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::{Verdict, of};
use crate::history::{Op, Outcome};

/// The blob set.
pub fn blobs(ops: &[Op], nodes: usize) -> Verdict {
    let mut verdict = Verdict::new("blobs-set-full");
    let mut acked: BTreeMap<&str, f64> = BTreeMap::new();
    let mut refused_acked = 0;
    for op in of(ops, "blobs").filter(|op| op.f == "push" && op.outcome == Outcome::Ok) {
        if op.arg["kind"] == "good" {
            acked.insert(&op.key, op.end_ms);
        } else {
            refused_acked += 1;
            verdict.violation(format!(
                "a {} upload of {} was acknowledged by node {}",
                op.arg["kind"].as_str().unwrap_or("bad"),
                op.key,
                op.node
            ));
        }
    }
    let mut corrupt = 0;
    for op in of(ops, "blobs").filter(|op| op.f == "read" && op.outcome == Outcome::Ok) {
        if op.ret == Value::Bool(false) {
            corrupt += 1;
            verdict.violation(format!(
                "node {} served {} with other bytes (sha256 {})",
                op.node,
                op.key,
                op.body_sha256.as_deref().unwrap_or("?")
            ));
        }
    }
    let lost = lost_items(&mut verdict, ops, "blobs", "read", &acked, nodes);
    verdict.count("acknowledged", acked.len() as u64);
    verdict.count("lost", lost);
    verdict.count("corrupt-reads", corrupt);
    verdict.count("refused-but-acknowledged", refused_acked);
    verdict.require_some("acknowledged blob pushes", acked.len() as u64);
    verdict
}

/// Package versions and their index (npm packuments).
pub fn packages(ops: &[Op], nodes: usize) -> Verdict {
    let mut verdict = Verdict::new("packages-set-full");
    let mut acked: BTreeMap<&str, f64> = BTreeMap::new();
    for op in of(ops, "packages").filter(|op| op.f == "publish" && op.outcome == Outcome::Ok) {
        acked.insert(&op.key, op.end_ms);
    }
    let mut stale = 0;
    for read in of(ops, "packages").filter(|op| op.f == "index" && op.outcome == Outcome::Ok) {
        let listed: BTreeSet<&str> = read
            .ret
            .as_array()
            .map(|vs| vs.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        for (key, &at) in &acked {
            let (name, version) = key.split_once('@').unwrap_or_default();
            if name == read.key && at < read.start_ms && !listed.contains(version) {
                stale += 1;
                verdict.violation(format!(
                    "the index of {name} read on node {} at {:.0} ms lacks {version}, \
                     acknowledged at {at:.0} ms",
                    read.node, read.start_ms
                ));
            }
        }
    }
    let mut corrupt = 0;
    for op in of(ops, "packages").filter(|op| op.f == "tarball" && op.outcome == Outcome::Ok) {
        if op.ret == Value::Bool(false) {
            corrupt += 1;
            verdict.violation(format!(
                "node {} served the tarball of {} with other bytes",
                op.node, op.key
            ));
        }
    }
    let lost = lost_items(&mut verdict, ops, "packages", "tarball", &acked, nodes);
    verdict.count("acknowledged", acked.len() as u64);
    verdict.count("lost", lost);
    verdict.count("stale-index-reads", stale);
    verdict.count("corrupt-reads", corrupt);
    verdict.require_some("acknowledged publishes", acked.len() as u64);
    verdict
}

/// Every acknowledged item must have been read back intact on every node in the final phase
/// (the last final read of it on each node decides). Returns how many items were lost.
fn lost_items(
    verdict: &mut Verdict,
    ops: &[Op],
    workload: &str,
    read_f: &str,
    acked: &BTreeMap<&str, f64>,
    nodes: usize,
) -> u64 {
    let mut last: BTreeMap<(&str, usize), &Op> = BTreeMap::new();
    for op in of(ops, workload).filter(|op| op.r#final && op.f == read_f) {
        last.insert((op.key.as_str(), op.node), op);
    }
    let mut lost = 0;
    for key in acked.keys() {
        let missing: Vec<String> = (1..=nodes)
            .filter(|&n| {
                !last
                    .get(&(*key, n))
                    .is_some_and(|op| op.outcome == Outcome::Ok && op.ret == Value::Bool(true))
            })
            .map(|n| {
                let how = match last.get(&(*key, n)) {
                    None => "never read".to_string(),
                    Some(op) if op.outcome != Outcome::Ok => {
                        op.error.clone().unwrap_or_else(|| "failed".into())
                    }
                    Some(op) if op.ret.is_null() => "not found".into(),
                    Some(_) => "other bytes".into(),
                };
                format!("node {n}: {how}")
            })
            .collect();
        if !missing.is_empty() {
            lost += 1;
            verdict.violation(format!(
                "acknowledged {key} is not readable intact after heal: {}",
                missing.join("; ")
            ));
        }
    }
    lost
}

/// DESIGN.md §1.1 (a retried write applies once): a repository created under a name never used
/// before can only be "already there" if this very create was applied twice (a forward retried
/// after its first entry committed, applied again instead of answered from the request id).
pub fn creates_apply_once(ops: &[Op]) -> Verdict {
    let mut verdict = Verdict::new("creates-apply-once");
    let mut creates = 0;
    for op in of(ops, "repos").filter(|op| op.f == "create") {
        creates += 1;
        let exists = op.error.as_deref().is_some_and(|e| e.starts_with("409"));
        if op.outcome == Outcome::Fail && exists {
            verdict.violation(format!(
                "creating the new repository {} through node {} at {:.0} ms was answered \
                 \"already exists\"",
                op.key, op.node, op.start_ms
            ));
        }
    }
    verdict.count("creates", creates);
    verdict.require_some("repository creates", creates);
    verdict
}

/// No "not found" for a blob or package version after its write was acknowledged.
pub fn never_not_found(ops: &[Op]) -> Verdict {
    let mut verdict = Verdict::new("no-404-for-acknowledged");
    let mut acked: BTreeMap<(&str, &str), f64> = BTreeMap::new();
    for op in ops.iter().filter(|op| op.outcome == Outcome::Ok) {
        let good_push = op.workload == "blobs" && op.f == "push" && op.arg["kind"] == "good";
        if good_push || (op.workload == "packages" && op.f == "publish") {
            acked.insert((op.workload.as_str(), op.key.as_str()), op.end_ms);
        }
    }
    let mut reads = 0;
    for op in ops.iter().filter(|op| {
        op.outcome == Outcome::Ok
            && ((op.workload == "blobs" && op.f == "read")
                || (op.workload == "packages" && op.f == "tarball"))
    }) {
        reads += 1;
        if op.ret.is_null()
            && let Some(&at) = acked.get(&(op.workload.as_str(), op.key.as_str()))
            && at < op.start_ms
        {
            verdict.violation(format!(
                "node {} answered 404 for {} at {:.0} ms, acknowledged at {at:.0} ms",
                op.node, op.key, op.start_ms
            ));
        }
    }
    verdict.count("reads", reads);
    verdict
}
