//! Linearizability per key of the mutable-tag register in a `strong` repository (DESIGN.md
//! §1.1, §1.5c), with stateright's `LinearizabilityTester`: a write (push) sets the tag to its
//! value, a delete sets it to absent, a read returns the value or absent. An indeterminate
//! write (`info`) is an invocation that never returns: the tester may place it anywhere after
//! its start, or nowhere. Failed operations did not happen and are left out.

use std::collections::BTreeMap;

use serde_json::Value;
use stateright::semantics::register::{Register, RegisterOp, RegisterRet};
use stateright::semantics::{ConsistencyTester, LinearizabilityTester};

use super::{Verdict, of};
use crate::history::{Op, Outcome};

/// The value a read reports for bytes that are not any manifest the harness wrote.
const CORRUPT: u64 = u64::MAX;

pub fn check(ops: &[Op], workload: &str) -> Verdict {
    let mut verdict = Verdict::new("linearizable-register");
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in of(ops, workload).filter(|op| op.outcome != Outcome::Fail) {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    let mut checked = 0;
    for (key, ops) in &by_key {
        checked += ops.len() as u64;
        match linearizable(ops) {
            Ok(true) => {}
            Ok(false) => verdict.violation(format!(
                "key {key}: the {} operations on it have no linearization{}",
                ops.len(),
                first_surprise(ops)
            )),
            Err(e) => verdict.violation(format!("key {key}: history rejected: {e}")),
        }
    }
    verdict.count("keys", by_key.len() as u64);
    verdict.count("operations", checked);
    verdict.require_some("register operations", checked);
    verdict
}

fn value(v: &Value) -> Option<u64> {
    match v {
        Value::Null => None,
        Value::Number(n) => n.as_u64(),
        _ => Some(CORRUPT),
    }
}

/// Feeds the operations to the tester in history order.
fn linearizable(ops: &[&Op]) -> Result<bool, String> {
    let mut steps: Vec<(u64, bool, &Op)> = Vec::new();
    for op in ops {
        steps.push((op.invoke_index, true, op));
        if op.outcome == Outcome::Ok {
            steps.push((op.complete_index, false, op));
        }
    }
    steps.sort_by_key(|(index, _, _)| *index);
    let mut tester = LinearizabilityTester::new(Register(None::<u64>));
    for (_, is_invoke, op) in steps {
        if is_invoke {
            let call = match op.f.as_str() {
                "write" => RegisterOp::Write(value(&op.arg)),
                "delete" => RegisterOp::Write(None),
                _ => RegisterOp::Read,
            };
            tester.on_invoke(op.process, call)?;
        } else {
            let ret = match op.f.as_str() {
                "read" => RegisterRet::ReadOk(value(&op.ret)),
                _ => RegisterRet::WriteOk,
            };
            tester.on_return(op.process, ret)?;
        }
    }
    Ok(tester.is_consistent())
}

/// A hint for the report: the first read that returned a value no write (ok or info) had
/// started by the time it completed, or absent/stale right after an acknowledged write.
fn first_surprise(ops: &[&Op]) -> String {
    for read in ops
        .iter()
        .filter(|o| o.f == "read" && o.outcome == Outcome::Ok)
    {
        let got = value(&read.ret);
        // The last write acknowledged before the read began, if no other write overlaps.
        let before: Vec<&&Op> = ops
            .iter()
            .filter(|w| w.f != "read" && w.outcome == Outcome::Ok && w.end_ms < read.start_ms)
            .collect();
        let overlapping = ops
            .iter()
            .any(|w| w.f != "read" && w.end_ms >= read.start_ms && w.start_ms <= read.end_ms);
        if let Some(last) = before.iter().max_by(|a, b| a.end_ms.total_cmp(&b.end_ms))
            && !overlapping
        {
            let want = if last.f == "delete" {
                None
            } else {
                value(&last.arg)
            };
            if want != got {
                return format!(
                    " (e.g. a read on node {} at {:.0} ms returned {:?}, the last acknowledged \
                     write before it ({} on node {} at {:.0} ms) left {:?})",
                    read.node, read.start_ms, got, last.f, last.node, last.end_ms, want
                );
            }
        }
    }
    String::new()
}
