//! Runs a range of op indices on `clients` concurrent tasks that pull indices from one atomic
//! counter. The first error stops every task and is the run's result.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use tokio::task::JoinSet;

use crate::client::Conn;
use crate::scenarios::Scenario;

/// What a phase measured.
pub struct Phase {
    /// Per-op latency in microseconds, all clients merged.
    pub latency: Histogram<u64>,
    /// Blob bytes moved.
    pub bytes: u64,
    /// Wall time from the first task's start to the last task's end.
    pub elapsed: Duration,
}

/// An empty histogram for 1 µs .. 1 h at 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static histogram bounds are valid")
}

/// Runs ops `start..end` on the given connections (one task each) and hands them back so the
/// next phase reuses the warm connections. `op_timeout` bounds each op.
pub async fn run(
    scenario: &Arc<Scenario>,
    conns: Vec<Conn>,
    start: u64,
    end: u64,
    op_timeout: Duration,
    progress: &ProgressBar,
) -> anyhow::Result<(Vec<Conn>, Phase)> {
    let next = Arc::new(AtomicU64::new(start));
    let abort = Arc::new(AtomicBool::new(false));
    let mut tasks = JoinSet::new();
    let began = Instant::now();
    for mut conn in conns {
        let (scenario, next, abort, progress) = (
            scenario.clone(),
            next.clone(),
            abort.clone(),
            progress.clone(),
        );
        tasks.spawn(async move {
            let mut hist = histogram();
            let mut bytes = 0u64;
            while !abort.load(Ordering::Relaxed) {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= end {
                    break;
                }
                let t0 = Instant::now();
                let result = match tokio::time::timeout(op_timeout, scenario.op(&mut conn, i)).await
                {
                    Ok(r) => r,
                    Err(_) => Err(anyhow::anyhow!("no answer within {op_timeout:?}")),
                };
                match result {
                    Ok(n) => {
                        let us = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
                        hist.saturating_record(us.max(1));
                        bytes += n;
                        progress.inc(1);
                    }
                    Err(e) => {
                        abort.store(true, Ordering::Relaxed);
                        return Err(e.context(format!("op {i}")));
                    }
                }
            }
            Ok::<_, anyhow::Error>((conn, hist, bytes))
        });
    }
    let mut latency = histogram();
    let mut bytes = 0;
    let mut back = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined.context("client task panicked")? {
            Ok((conn, hist, n)) => {
                latency.add(&hist).context("merging histograms")?;
                bytes += n;
                back.push(conn);
            }
            Err(e) => {
                tasks.abort_all();
                return Err(e);
            }
        }
    }
    Ok((
        back,
        Phase {
            latency,
            bytes,
            elapsed: began.elapsed(),
        },
    ))
}
