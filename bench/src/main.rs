//! `wharf-bench`: a load generator for OCI registries, used to compare Wharf with other
//! registries (`bench/compare` drives it and reads `--json`).
//!
//! Start reading at [`scenarios`]: each scenario has an untimed setup (fixture blobs, precomputed
//! digests) and an `op(i)` that sends the requests a real client sends (see the project's client
//! notes) and validates every status, header and body. [`runner`] spreads op indices over
//! `--clients` tasks, each with its own HTTP/1.1 keep-alive connection ([`client`]); [`prng`]
//! generates blob bytes as they are sent and compares them as they come back, so no blob is
//! ever held in memory; [`procstat`] samples the server's RSS and CPU time; [`report`] prints.
//!
//! Exit codes: 0 done, 2 any error (bad flags, unreachable server, unexpected response).

mod cli;
mod client;
mod prng;
mod procstat;
mod report;
mod runner;
mod scenarios;

use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser as _;
use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::{Args, Settings, format_size};
use crate::client::{Conn, Target};
use crate::report::{Latency, Report};
use crate::scenarios::Scenario;

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("starting the tokio runtime");
    match runtime.block_on(run(&args)) {
        Ok(report) => {
            if args.json {
                match serde_json::to_string(&report) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprintln!("wharf-bench: cannot encode the report: {e}");
                        return ExitCode::from(2);
                    }
                }
            } else {
                println!("{}", report.table());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("wharf-bench: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Per-op time limit: generous, plus time for the blob at a slow 20 MB/s.
fn op_timeout(s: &Settings) -> Duration {
    Duration::from_secs(120) + Duration::from_secs(s.size / 20_000_000)
}

async fn run(args: &Args) -> anyhow::Result<Report> {
    let s = args.settings()?;
    let quiet = s.json;
    let loopback = s.scenario == cli::ScenarioName::Loopback;
    let target = if loopback {
        None
    } else {
        Some(Arc::new(Target::resolve(&s.target).await?))
    };
    if !quiet {
        eprintln!(
            "wharf-bench: {} size {} clients {} ops {} warmup {} seed {} → {}",
            s.scenario.as_str(),
            format_size(s.size),
            s.clients,
            s.ops,
            s.warmup,
            s.seed,
            if loopback { "loopback" } else { &s.target }
        );
    }

    let scenario = Arc::new(Scenario::setup(&s, target.clone()).await?);
    // Ops of `cross-node-pull` read from another node than the one setup pushed to.
    let target = match &s.pull_from {
        Some(url) => Some(Arc::new(Target::resolve(url).await?)),
        None => target,
    };
    let mut conns: Vec<Conn> = (0..s.clients)
        .map(|_| {
            // Loopback ops open their own sockets; their Conn is never used.
            let t = target.clone().unwrap_or_else(|| {
                Arc::new(Target {
                    addr: ([127, 0, 0, 1], 0).into(),
                    authority: String::new(),
                })
            });
            Conn::new(t)
        })
        .collect();
    let timeout = op_timeout(&s);

    if s.warmup > 0 {
        (conns, _) = runner::run(
            &scenario,
            conns,
            0,
            s.warmup,
            timeout,
            &ProgressBar::hidden(),
        )
        .await
        .map_err(|e| e.context("warmup"))?;
    }

    let progress = if quiet || !std::io::stderr().is_terminal() {
        ProgressBar::hidden()
    } else {
        let bar = ProgressBar::new(s.ops);
        if let Ok(style) = ProgressStyle::with_template(
            "{spinner} {pos}/{len} ops {per_sec} [{elapsed_precise}, eta {eta}] {wide_bar}",
        ) {
            bar.set_style(style);
        }
        bar
    };
    let sampler = s.server_pid.map(procstat::RssSampler::start).transpose()?;
    let cpu_before = s.server_pid.map(procstat::cpu_ticks).transpose()?;
    let (conns, phase) = runner::run(
        &scenario,
        conns,
        s.warmup,
        s.warmup + s.ops,
        timeout,
        &progress,
    )
    .await?;
    let cpu_after = s.server_pid.map(procstat::cpu_ticks).transpose()?;
    let peak_rss_bytes = match (sampler, s.server_pid) {
        (Some(sampler), Some(pid)) => Some(sampler.stop(pid).await),
        _ => None,
    };
    progress.finish_and_clear();
    let reconnects = conns
        .iter()
        .map(|c| c.connects)
        .sum::<u64>()
        .saturating_sub(s.clients);
    if reconnects > 0 && !quiet {
        eprintln!(
            "wharf-bench: note: {reconnects} reconnects (the server closed keep-alive connections)"
        );
    }

    let seconds = phase.elapsed.as_secs_f64().max(1e-9);
    let bytes = if s.scenario.moves_blobs() {
        phase.bytes
    } else {
        0
    };
    let server_cpu_seconds = match (cpu_before, cpu_after) {
        (Some(b), Some(a)) => {
            Some(a.saturating_sub(b) as f64 / procstat::clock_ticks_per_sec() as f64)
        }
        _ => None,
    };
    let cpu_seconds_per_gb = server_cpu_seconds
        .filter(|_| bytes > 0)
        .map(|c| c / (bytes as f64 / 1e9));
    let h = &phase.latency;
    Ok(Report {
        scenario: s.scenario.as_str().to_owned(),
        target: if loopback {
            "loopback".to_owned()
        } else {
            s.target.clone()
        },
        size: scenario.reported_size(&s),
        clients: s.clients,
        ops: h.len(),
        errors: 0,
        seconds,
        ops_per_sec: h.len() as f64 / seconds,
        bytes_per_sec: bytes as f64 / seconds,
        latency_us: Latency {
            p50: h.value_at_quantile(0.5),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
        },
        peak_rss_bytes,
        server_cpu_seconds,
        cpu_seconds_per_gb,
    })
}
