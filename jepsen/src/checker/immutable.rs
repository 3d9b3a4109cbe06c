//! Immutability (DESIGN.md §1.3): in an immutable repository the first committed binding of a
//! tag wins forever — every acknowledged push and every read, on any node, at any time, sees
//! one manifest per tag; and once a push was acknowledged no read says the tag is unknown.

use std::collections::{BTreeMap, BTreeSet};

use super::{Verdict, of};
use crate::history::{Op, Outcome};

pub fn check(ops: &[Op]) -> Verdict {
    let mut verdict = Verdict::new("immutable-tags");
    let mut seen: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let mut first_ack: BTreeMap<&str, f64> = BTreeMap::new();
    let ok: Vec<&Op> = of(ops, "immutable")
        .filter(|op| op.outcome == Outcome::Ok)
        .collect();
    for op in &ok {
        if op.f == "push" {
            seen.entry(&op.key).or_default().insert(op.arg.to_string());
            let t = first_ack.entry(&op.key).or_insert(op.end_ms);
            *t = t.min(op.end_ms);
        } else if !op.ret.is_null() {
            seen.entry(&op.key).or_default().insert(op.ret.to_string());
        }
    }
    for (tag, values) in &seen {
        if values.len() > 1 {
            verdict.violation(format!(
                "tag {tag} was seen bound to {} different manifests: {values:?}",
                values.len()
            ));
        }
    }
    for op in ok.iter().filter(|op| op.f == "read" && op.ret.is_null()) {
        if let Some(&acked) = first_ack.get(op.key.as_str())
            && acked < op.start_ms
        {
            verdict.violation(format!(
                "tag {} read as unknown on node {} at {:.0} ms, after a push was acknowledged at \
                 {acked:.0} ms",
                op.key, op.node, op.start_ms
            ));
        }
    }
    verdict.count("tags", seen.len() as u64);
    verdict.count(
        "acknowledged-pushes",
        ok.iter().filter(|op| op.f == "push").count() as u64,
    );
    verdict.require_some("acknowledged immutable pushes", first_ack.len() as u64);
    verdict
}
