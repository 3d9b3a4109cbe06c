//! One run: bring the cluster up in the network lab, run the workers while the nemesis works
//! through its schedule, heal, observe convergence, read everything back, compare state
//! hashes, and leave the history and the observations in the results folder.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::Value;
use wharf_tests::cluster::{ClusterOpts, TestCluster};

use crate::checker::{
    CONVERGENCE_LIMIT_S, Convergence, Crash, DurabilityCheck, Observations, StateHash,
};
use crate::history::{Kind, Recorder};
use crate::nemesis::{self, Fault, LIBFAKETIME, SKEW_FILE, Step};
use crate::workload::Workloads;

/// What a run is asked to do.
#[derive(Debug, Clone)]
pub struct Plan {
    pub seed: u64,
    pub nodes: usize,
    pub workers: u64,
    /// Time with faults (the setup and the final phase come on top).
    pub duration: Duration,
    /// How long a fault is held, on average.
    pub hold: Duration,
    pub families: Vec<String>,
    pub workloads: Vec<&'static str>,
    pub planted: Option<String>,
    /// Faults always aimed at the leader (a planted bug's schedule may ask for it).
    pub always_leader: bool,
    /// `durability.min_copies` the nodes run with (2, the default, unless a planted bug's
    /// schedule asks otherwise).
    pub min_copies: usize,
    pub out: PathBuf,
}

/// The raft and replication settings of the lab cluster: snapshots often (to exercise
/// install-snapshot after a node was away), the scrubber every few seconds (to repair flipped
/// bytes within the run).
/// Each node's tmpfs disk with the disk-full nemesis (RAM is used only as it fills).
const DISK_BYTES: u64 = 4 << 30;

const EXTRA_CONFIG: &str = "\n[replication]\nscrub_interval_secs = 5\n";

pub fn run(plan: &Plan) -> anyhow::Result<()> {
    std::fs::create_dir_all(&plan.out)?;
    let schedule = nemesis::schedule(
        plan.seed,
        &plan.families,
        plan.duration,
        plan.hold,
        plan.always_leader,
    );
    std::fs::write(
        plan.out.join("schedule.json"),
        serde_json::to_string_pretty(&schedule)?,
    )?;
    let uses = |f: &str| plan.families.iter().any(|x| x == f);
    let mut node_env = Vec::new();
    if uses("clock-skew") {
        anyhow::ensure!(
            Path::new(LIBFAKETIME).is_file(),
            "the clock-skew nemesis needs libfaketime at {LIBFAKETIME}: apt-get install -y \
             faketime (or run scripts/install-test-tools)"
        );
        for (k, v) in [
            ("LD_PRELOAD", LIBFAKETIME.to_string()),
            ("FAKETIME_TIMESTAMP_FILE", format!("{{dir}}/{SKEW_FILE}")),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1".into()),
            ("FAKETIME_CACHE_DURATION", "1".into()),
        ] {
            node_env.push((k.to_string(), v));
        }
    }
    if let Some(bug) = &plan.planted {
        node_env.push(("WHARF_PLANTED_BUG".into(), bug.clone()));
    }
    println!(
        "jepsen: {} nodes, seed {}, {} steps of faults, results in {}",
        plan.nodes,
        plan.seed,
        schedule.len(),
        plan.out.display()
    );
    let mut cluster = TestCluster::start(
        plan.nodes,
        ClusterOpts {
            netlab: true,
            tls: true,
            lazyfs: uses("power-loss") || uses("power-loss-all"),
            node_env,
            snapshot_every_entries: 2000,
            log_entries_kept: 1000,
            extra_config: format!(
                "{EXTRA_CONFIG}\n[durability]\nmin_copies = {}\n",
                plan.min_copies
            ),
            // A disk of its own per node, so that one can be filled.
            disk_bytes: if uses("disk-full") { DISK_BYTES } else { 0 },
            ..ClusterOpts::default()
        },
    );
    cluster.wait_for_cluster_version();
    let urls: Vec<String> = cluster.members.iter().map(|m| m.url()).collect();
    let workloads = Workloads::new(urls, plan.seed);
    workloads.setup()?;
    let recorder = Recorder::create(&plan.out.join("history.jsonl"))?;
    let stop = AtomicBool::new(false);
    let mut rng = StdRng::seed_from_u64(plan.seed.rotate_left(17));

    let mut nemesis = NemesisState::default();
    let workers_done = std::thread::scope(|scope| {
        for w in 0..plan.workers {
            let (workloads, recorder, stop) = (&workloads, &recorder, &stop);
            scope.spawn(move || workloads.worker(recorder, w, plan.seed, &plan.workloads, stop));
        }
        // The workers stop however the nemesis ends (a panic included: the scope would
        // otherwise wait for them forever).
        let _stop_workers = StopOnDrop(&stop);
        // A fault-free start, then the schedule.
        std::thread::sleep(plan.hold / 2);
        for step in &schedule {
            nemesis.run_step(&mut cluster, &workloads, &recorder, step, plan, &mut rng);
        }
        stop.store(true, Ordering::Relaxed);
        Ok::<_, anyhow::Error>(())
    });
    workers_done?;
    recorder.flush();
    println!("jepsen: faults done; healing and checking convergence");
    let mut observations = finale(&mut cluster, &workloads, &recorder, plan);
    nemesis.look_for_crashes(&mut cluster, recorder.now_ms());
    observations.durability = nemesis.durability;
    observations.crashes = nemesis.crashes;
    recorder.flush();
    std::fs::write(
        plan.out.join("observations.json"),
        serde_json::to_string_pretty(&observations)?,
    )?;
    save_logs(&cluster, &plan.out);
    drop(cluster);
    Ok(())
}

/// Sets the flag when dropped.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// What the nemesis keeps across steps.
#[derive(Default)]
struct NemesisState {
    /// Blobs it corrupted on purpose.
    damaged: nemesis::Damaged,
    /// One per power cut of every node.
    durability: Vec<DurabilityCheck>,
    /// Nodes that exited by themselves.
    crashes: Vec<Crash>,
}

impl NemesisState {
    /// Injects one fault, holds it, heals it, and waits out the quiet phase. After a power
    /// cut of every node, counts how many durable copies each acknowledged blob kept; after
    /// each step, restarts (and records) any node that exited by itself.
    fn run_step(
        &mut self,
        cluster: &mut TestCluster,
        workloads: &Workloads,
        recorder: &Recorder,
        step: &Step,
        plan: &Plan,
        rng: &mut StdRng,
    ) {
        let leader = leader_of(cluster);
        let fault = nemesis::concretize(step, cluster.members.len(), leader, rng);
        recorder.nemesis(Kind::Invoke, &step.family, "");
        // Everything acknowledged before the cut must survive it on min_copies nodes.
        let acked_before = workloads.blobs_to_converge();
        let detail = nemesis::inject(cluster, &fault, rng, &mut self.damaged);
        if let Fault::PowerLoss { nodes } = &fault
            && nodes.len() == cluster.members.len()
        {
            let acked: Vec<String> = acked_before
                .into_iter()
                .filter(|d| !self.damaged.contains(d))
                .collect();
            self.durability.push(count_durable_copies(
                cluster,
                &acked,
                recorder.now_ms(),
                plan.min_copies,
            ));
        }
        println!("jepsen: {} — {detail}", step.family);
        recorder.nemesis(Kind::Ok, &step.family, &detail);
        std::thread::sleep(Duration::from_millis(step.hold_ms));
        recorder.nemesis(Kind::Invoke, "heal", step.family.as_str());
        nemesis::heal(cluster, &fault, &mut self.damaged);
        recorder.nemesis(Kind::Ok, "heal", step.family.as_str());
        std::thread::sleep(Duration::from_millis(step.quiet_ms));
        self.look_for_crashes(cluster, recorder.now_ms());
    }

    /// Records and restarts the nodes that exited by themselves.
    fn look_for_crashes(&mut self, cluster: &mut TestCluster, at_ms: f64) {
        let gone = cluster.exited();
        for &i in &gone {
            let log = cluster.members[i].log();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            println!("jepsen: node {} exited by itself", i + 1);
            self.crashes.push(Crash {
                node: i + 1,
                at_ms,
                log_tail: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
            });
        }
        if !gone.is_empty() {
            cluster.restart_many(&gone);
        }
    }
}

/// After every node lost power (and before any restarted): how many nodes' disks still hold
/// each blob acknowledged before the cut, with the right bytes.
fn count_durable_copies(
    cluster: &TestCluster,
    acked: &[String],
    at_ms: f64,
    min_copies: usize,
) -> DurabilityCheck {
    let mut under = Vec::new();
    for digest in acked {
        let copies = cluster
            .members
            .iter()
            .filter(|m| holds_intact(&m.data_dir(), digest))
            .count();
        if copies < min_copies {
            under.push((digest.clone(), copies));
        }
    }
    DurabilityCheck {
        at_ms,
        min_copies,
        checked: acked.len(),
        under_replicated: under,
    }
}

/// The member every running node names as leader, if they name one.
fn leader_of(cluster: &TestCluster) -> Option<usize> {
    let client = reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(1))
        .build()
        .ok()?;
    cluster.running().find_map(|m| {
        let v: Value = client
            .get(format!("{}/api/v1/cluster", m.url()))
            .send()
            .ok()?
            .json()
            .ok()?;
        let id = v["leader"].as_u64()?;
        cluster.members.iter().position(|m| m.node_id == id)
    })
}

/// After the schedule: every node up and connected, then the observations and final reads.
fn finale(
    cluster: &mut TestCluster,
    workloads: &Workloads,
    recorder: &Recorder,
    plan: &Plan,
) -> Observations {
    cluster.heal();
    let healed = Instant::now();
    let mut observations = Observations {
        nodes: cluster.members.len(),
        ..Observations::default()
    };
    // Convergence is looked at on disk before anything is read: no read-through helps.
    let expected = workloads.blobs_to_converge();
    for i in 0..cluster.members.len() {
        observations.convergence.push(Convergence {
            node: i + 1,
            expected: expected.len(),
            seconds: None,
            missing: expected.clone(),
        });
    }
    let limit = Duration::from_secs_f64(CONVERGENCE_LIMIT_S);
    loop {
        // Each node's disk is read by a thread of its own, so that one node's hashing does not
        // count against another's time.
        std::thread::scope(|scope| {
            for (c, m) in observations.convergence.iter_mut().zip(&cluster.members) {
                if c.seconds.is_some() {
                    continue;
                }
                let data = m.data_dir();
                scope.spawn(move || {
                    c.missing.retain(|digest| !holds_intact(&data, digest));
                    if c.missing.is_empty() {
                        c.seconds = Some(healed.elapsed().as_secs_f64());
                    }
                });
            }
        });
        if observations.convergence.iter().all(|c| c.seconds.is_some()) || healed.elapsed() > limit
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    println!("jepsen: final reads on every node");
    let running: Vec<usize> = cluster.running().map(|m| m.index).collect();
    workloads.final_reads(recorder, &plan.workloads, &running);
    observations.state_hashes = settled_state_hashes(cluster);
    observations
}

/// Whether a node's data dir holds `digest` with the right bytes.
fn holds_intact(data_dir: &Path, digest: &str) -> bool {
    let hex = digest.trim_start_matches("sha256:");
    let path = data_dir.join("blobs/sha256").join(&hex[..2]).join(hex);
    match std::fs::read(&path) {
        Ok(bytes) => crate::client::digest_of(&bytes) == digest,
        Err(_) => false,
    }
}

/// Waits (≤ 60 s) until every node reports the same applied index, then returns their hashes.
fn settled_state_hashes(cluster: &TestCluster) -> Vec<StateHash> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let hashes: Vec<StateHash> = (0..cluster.members.len())
            .filter_map(|i| {
                let v = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    cluster.state_hash_report(i)
                }))
                .ok()?;
                Some(StateHash {
                    node: i + 1,
                    applied_index: v["applied_index"].as_u64()?,
                    sha256: v["sha256"].as_str()?.to_string(),
                    divergence: v["divergence"].clone(),
                })
            })
            .collect();
        let settled = hashes.len() == cluster.members.len()
            && hashes
                .iter()
                .all(|h| h.applied_index == hashes[0].applied_index);
        if settled || Instant::now() > deadline {
            return hashes;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Copies every node's log into `<out>/logs/`.
fn save_logs(cluster: &TestCluster, out: &Path) {
    let dir = out.join("logs");
    let _ = std::fs::create_dir_all(&dir);
    for m in &cluster.members {
        let _ = std::fs::write(dir.join(format!("node{}.log", m.index)), m.log());
    }
}
