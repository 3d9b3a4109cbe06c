//! The results folder's `verdicts.json` and the one-screen `summary.txt`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::checker::Verdict;
use crate::checker::availability_phases;
use crate::history::{Event, NEMESIS, Outcome, operations};

/// Renders the summary: operations, latencies, phases, faults and verdicts.
pub fn summary(title: &str, events: &[Event], verdicts: &[Verdict]) -> String {
    let ops = operations(events);
    let mut out = String::new();
    let _ = writeln!(out, "{title}\n");
    let _ = writeln!(
        out,
        "{:<22} {:>7} {:>7} {:>7} {:>7}   latency of ok ops, ms: p50 / p99 / max",
        "operation", "total", "ok", "fail", "info"
    );
    let mut by_kind: BTreeMap<(String, String), Vec<&crate::history::Op>> = BTreeMap::new();
    for op in &ops {
        let name = if op.r#final {
            format!("{} (final)", op.workload)
        } else {
            op.workload.clone()
        };
        by_kind.entry((name, op.f.clone())).or_default().push(op);
    }
    for ((workload, f), ops) in &by_kind {
        let count = |o: Outcome| ops.iter().filter(|op| op.outcome == o).count();
        let mut latencies: Vec<f64> = ops
            .iter()
            .filter(|op| op.outcome == Outcome::Ok)
            .map(|op| op.end_ms - op.start_ms)
            .collect();
        latencies.sort_by(f64::total_cmp);
        let pct = |p: f64| {
            latencies
                .get(((latencies.len() as f64 - 1.0) * p).round() as usize)
                .copied()
                .unwrap_or(0.0)
        };
        let _ = writeln!(
            out,
            "{:<22} {:>7} {:>7} {:>7} {:>7}   {:.1} / {:.1} / {:.1}",
            format!("{workload} {f}"),
            ops.len(),
            count(Outcome::Ok),
            count(Outcome::Fail),
            count(Outcome::Info),
            pct(0.5),
            pct(0.99),
            latencies.last().copied().unwrap_or(0.0)
        );
    }
    let phases = availability_phases(events, &ops);
    let faults = events
        .iter()
        .filter(|e| e.process == NEMESIS && e.f != "heal" && e.kind == crate::history::Kind::Ok)
        .count();
    let _ = writeln!(
        out,
        "\nphases ({faults} faults injected; availability = ok / operations started in the phase)"
    );
    for p in &phases {
        let _ = writeln!(
            out,
            "  {:>7.1}–{:<7.1} s  {:<18} {:>5} ops {:>6.1} % ok  {}",
            p.start_ms / 1000.0,
            p.end_ms / 1000.0,
            p.fault,
            p.ops,
            if p.ops == 0 {
                100.0
            } else {
                p.ok as f64 * 100.0 / p.ops as f64
            },
            p.detail
        );
    }
    let _ = writeln!(
        out,
        "\n{:<26} {:<7} {:>10}  counts",
        "checker", "verdict", "violations"
    );
    for v in verdicts {
        let counts: Vec<String> = v.counts.iter().map(|(k, n)| format!("{k}={n}")).collect();
        let _ = writeln!(
            out,
            "{:<26} {:<7} {:>10}  {}",
            v.checker,
            if v.valid { "PASS" } else { "FAIL" },
            v.violations,
            counts.join(" ")
        );
        for e in &v.examples {
            let _ = writeln!(out, "    - {e}");
        }
    }
    let valid = verdicts.iter().all(|v| v.valid);
    let _ = writeln!(
        out,
        "\nVERDICT: {}",
        if valid {
            "PASS (every checker passed)"
        } else {
            "FAIL"
        }
    );
    out
}
