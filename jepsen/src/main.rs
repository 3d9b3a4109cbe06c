//! `wharf-jepsen`: a Jepsen-style fault-injection harness for Wharf (start with `jepsen/run`,
//! which builds what it needs and calls this binary).
//!
//! A run starts a cluster of real `wharf serve` processes, each in its own network namespace
//! ([`wharf_testkit::netlab`]), runs client workers against all of them ([`workload`]) while a
//! nemesis works through a seeded schedule of faults ([`nemesis`]), heals, watches the nodes
//! converge, reads everything back on every node, and then checks the recorded history offline
//! ([`checker`]). Everything lands in a results folder: `history.jsonl`, `schedule.json`,
//! `observations.json`, `verdicts.json`, `summary.txt` and the nodes' logs.
//!
//! Exit status: 0 when every checker passes, 1 when one found a violation, 2 when the harness
//! itself could not run.

mod checker;
mod client;
mod history;
mod nemesis;
mod planted;
mod report;
mod run;
mod workload;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use serde::{Deserialize, Serialize};

use crate::checker::Observations;

/// Workloads, by the name `--workloads` takes.
const WORKLOADS: &[&str] = &[
    "register",
    "bounded",
    "immutable",
    "blobs",
    "packages",
    "repos",
];

/// `read.max_staleness` of the lab's nodes (the default), and what the staleness checker
/// allows on top for the request's own travel.
const STALENESS_BOUND_MS: f64 = 1000.0;
/// The slack covers the request's travel, the heartbeat that carries the commit index, and
/// the largest delay the latency nemesis adds (400 ms).
const STALENESS_SLACK_MS: f64 = 800.0;

#[derive(Parser, Debug)]
#[command(
    name = "wharf-jepsen",
    about = "Fault-injection harness: checks Wharf's guarantees under partitions, crashes, \
             pauses, power loss, clock skew and corrupted bytes"
)]
struct Args {
    /// CI mode: every fault family once, short holds (a few minutes in all).
    #[arg(long)]
    short: bool,
    /// Seconds of faults (setup and the final phase come on top). Default 600, or what the
    /// schedule needs with --short.
    #[arg(long)]
    time: Option<u64>,
    /// Cluster size: 3 or 5.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Seed of the schedule and the workload (random if not given; printed either way).
    #[arg(long)]
    seed: Option<u64>,
    /// Run against a build with this planted bug (jepsen/run builds it; see --list-planted).
    #[arg(long)]
    planted: Option<String>,
    /// Fault families to mix (comma-separated; default: all, or the planted bug's own).
    #[arg(long, value_delimiter = ',')]
    faults: Vec<String>,
    /// Workloads to run (comma-separated; default: all).
    #[arg(long, value_delimiter = ',')]
    workloads: Vec<String>,
    /// Client worker threads (default: 3 per node).
    #[arg(long)]
    workers: Option<u64>,
    /// Where results folders go (default: <target>/jepsen).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Only check an existing results folder again, offline.
    #[arg(long, value_name = "DIR")]
    check: Option<PathBuf>,
    /// List the planted bugs and the faults each is run with.
    #[arg(long)]
    list_planted: bool,
}

/// What `run.json` records, so a results folder can be checked again.
#[derive(Debug, Serialize, Deserialize)]
struct RunInfo {
    seed: u64,
    nodes: usize,
    workloads: Vec<String>,
    faults: Vec<String>,
    planted: Option<String>,
    time_s: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // A panic in the harness (a node that would not start, a lab command refused) is the
    // harness failing, not a verdict.
    match std::panic::catch_unwind(|| main_result(args)) {
        Ok(Ok(true)) => ExitCode::SUCCESS,
        Ok(Ok(false)) => ExitCode::from(1),
        Ok(Err(e)) => {
            eprintln!("wharf-jepsen: {e:#}");
            ExitCode::from(2)
        }
        Err(_) => {
            eprintln!("wharf-jepsen: the harness panicked (see above)");
            ExitCode::from(2)
        }
    }
}

fn main_result(args: Args) -> anyhow::Result<bool> {
    if args.list_planted {
        for bug in planted::BUGS {
            println!("{:<32} {}", bug.name, bug.faults.join(","));
        }
        return Ok(true);
    }
    if let Some(dir) = &args.check {
        return check(dir);
    }
    anyhow::ensure!(args.nodes == 3 || args.nodes == 5, "--nodes must be 3 or 5");
    let seed = args.seed.unwrap_or_else(rand::random);
    let bug = match &args.planted {
        Some(name) => {
            anyhow::ensure!(
                std::env::var_os("WHARF_BIN").is_some(),
                "--planted needs a wharf built with the planted-bugs feature in WHARF_BIN \
                 (jepsen/run builds it and sets it)"
            );
            Some(planted::find(name)?)
        }
        None => None,
    };
    let faults: Vec<String> = if !args.faults.is_empty() {
        args.faults.clone()
    } else if let Some(bug) = bug {
        bug.faults.iter().map(|f| f.to_string()).collect()
    } else {
        nemesis::FAMILIES.iter().map(|f| f.to_string()).collect()
    };
    for f in &faults {
        anyhow::ensure!(
            nemesis::FAMILIES.contains(&f.as_str()),
            "no fault family {f}; known: {}",
            nemesis::FAMILIES.join(", ")
        );
    }
    let workloads: Vec<&'static str> = if args.workloads.is_empty() {
        WORKLOADS.to_vec()
    } else {
        let mut chosen = Vec::new();
        for w in &args.workloads {
            let known = WORKLOADS.iter().find(|k| **k == w.as_str());
            chosen.push(*known.ok_or_else(|| {
                anyhow::anyhow!("no workload {w}; known: {}", WORKLOADS.join(", "))
            })?);
        }
        chosen
    };
    let hold = if args.short {
        Duration::from_secs(6)
    } else {
        Duration::from_secs(12)
    };
    let time = match (args.time, args.short) {
        (Some(t), _) => t,
        // Every family once: about 1.5 holds per step.
        (None, true) => (faults.len() as u64 * hold.as_secs() * 3) / 2,
        (None, false) => 600,
    };
    let root = args.out.clone().unwrap_or_else(default_out);
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let name = match &args.planted {
        Some(bug) => format!("{stamp}-seed{seed}-planted-{bug}"),
        None => format!("{stamp}-seed{seed}"),
    };
    let out = root.join(name);
    std::fs::create_dir_all(&out)?;
    let info = RunInfo {
        seed,
        nodes: args.nodes,
        workloads: workloads.iter().map(|w| w.to_string()).collect(),
        faults: faults.clone(),
        planted: args.planted.clone(),
        time_s: time,
    };
    std::fs::write(out.join("run.json"), serde_json::to_string_pretty(&info)?)?;
    let plan = run::Plan {
        seed,
        nodes: args.nodes,
        workers: args.workers.unwrap_or(3 * args.nodes as u64),
        duration: Duration::from_secs(time),
        hold,
        families: faults,
        workloads,
        planted: args.planted.clone(),
        always_leader: bug.is_some_and(|b| b.at_leader),
        min_copies: bug.map_or(2, |b| b.min_copies),
        out: out.clone(),
    };
    run::run(&plan)?;
    check(&out)
}

/// Checks a results folder; prints and saves the summary. Ok(true) when every checker passed.
fn check(dir: &Path) -> anyhow::Result<bool> {
    let info: RunInfo = serde_json::from_slice(&std::fs::read(dir.join("run.json"))?)?;
    let events = history::load(&dir.join("history.jsonl"))?;
    let observations: Observations =
        serde_json::from_slice(&std::fs::read(dir.join("observations.json"))?)?;
    let verdicts = checker::check_all(
        &events,
        &observations,
        &info.workloads,
        STALENESS_BOUND_MS + STALENESS_SLACK_MS,
    );
    std::fs::write(
        dir.join("verdicts.json"),
        serde_json::to_string_pretty(&verdicts)?,
    )?;
    let title = format!(
        "wharf-jepsen: {} nodes, seed {}, {} s of faults ({}), planted bug: {}\nresults: {}",
        info.nodes,
        info.seed,
        info.time_s,
        info.faults.join(","),
        info.planted.as_deref().unwrap_or("none"),
        dir.display()
    );
    let summary = report::summary(&title, &events, &verdicts);
    std::fs::write(dir.join("summary.txt"), &summary)?;
    println!("{summary}");
    Ok(verdicts.iter().all(|v| v.valid))
}

/// `<target>/jepsen`, next to the profile dir this binary was built into.
fn default_out() -> PathBuf {
    wharf_tests::server::target_dir().join("jepsen")
}
