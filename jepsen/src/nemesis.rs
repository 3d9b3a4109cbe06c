//! Faults, and the seeded schedule that mixes them.
//!
//! A schedule is a list of steps: inject a fault, hold it, heal it, then a quiet (fault-free)
//! phase. Every fault is healed at the end of its step, and the run heals everything once more
//! before the final reads.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use wharf_tests::cluster::TestCluster;

/// libfaketime, preloaded into every node so that its wall clock can be moved while it runs
/// (monotonic time stays untouched: timers and elections are unaffected).
pub const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
/// The file (in each member's directory) libfaketime reads its offset from.
pub const SKEW_FILE: &str = "faketime.rc";

/// The fault families, by the name `--faults` takes.
pub const FAMILIES: &[&str] = &[
    "partition-one",
    "partition-halves",
    "partition-bridge",
    "partition-ring",
    "partition-one-way",
    "kill",
    "pause",
    "power-loss",
    "power-loss-all",
    "clock-skew",
    "bitflip",
    "membership",
    "disk-full",
    "latency",
    "bitflip-catch-up",
];

/// What the disk-full nemesis leaves free: half of `storage.min_free_bytes` (uploads are
/// refused; the raft log and snapshots keep the room reserved for them).
const DISK_LEFT_FREE: u64 = 64 << 20;
/// The file that fills a disk.
const FILLER: &str = "jepsen-disk-filler";

/// One fault. Members are 0-based positions in the cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "fault", rename_all = "kebab-case")]
pub enum Fault {
    /// One member cut off from all others, both ways.
    PartitionOne { node: usize },
    /// The members in `minority` cut off from the rest, both ways.
    PartitionHalves { minority: Vec<usize> },
    /// Two halves that cannot talk, and one `bridge` member that sees both.
    PartitionBridge {
        bridge: usize,
        a: Vec<usize>,
        b: Vec<usize>,
    },
    /// Every member sees only its ring neighbours: each sees a majority, no two the same one
    /// (5 members), or each sees one neighbour (3 members).
    PartitionRing { order: Vec<usize> },
    /// Everything `node` sends to the others is dropped; it still hears them.
    PartitionOneWay { node: usize },
    /// kill -9, restarted at heal.
    Kill { node: usize },
    /// SIGSTOP, SIGCONT at heal.
    Pause { node: usize },
    /// kill -9 and every write not fsync'd dropped, on each of `nodes` at once (one member, or
    /// all of them: a site losing power); restarted at heal.
    PowerLoss { nodes: Vec<usize> },
    /// The member's wall clock moved by `seconds` (monotonic time untouched).
    ClockSkew { node: usize, seconds: i64 },
    /// One byte flipped in up to 3 stored blob files on each of `nodes` (a minority).
    Bitflip { nodes: Vec<usize> },
    /// `node` removed from the cluster (through `via`) and its data wiped; at heal it joins
    /// again under a new id and is promoted.
    Membership { node: usize, via: usize },
    /// `node`'s disk filled until 64 MiB are left.
    DiskFull { node: usize },
    /// Everything the others send to `node` arrives `ms` late (NFQUEUE delay daemons): a
    /// follower that lags, or a leader that hears late.
    Latency { node: usize, ms: u64 },
    /// `down` is killed; at heal, every blob `source` holds and `down` lacks gets a flipped
    /// byte on `source`, then `down` restarts and catches up — a copy taken from `source` must
    /// be refused and fetched from another holder.
    BitflipCatchUp { down: usize, source: usize },
}

/// Who a fault targets: a random member, or whoever leads when it starts.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    Random,
    Leader,
}

/// One step of a schedule.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    pub family: String,
    pub target: Target,
    /// How long the fault is held.
    pub hold_ms: u64,
    /// The fault-free phase after it is healed.
    pub quiet_ms: u64,
}

/// Builds a seeded schedule: every family in `families` once (shuffled), then random families
/// until `total` is used up.
pub fn schedule(
    seed: u64,
    families: &[String],
    total: Duration,
    hold: Duration,
    always_leader: bool,
) -> Vec<Step> {
    let mut rng = StdRng::seed_from_u64(seed);
    let hold_ms = hold.as_millis() as u64;
    let mut order: Vec<String> = families.to_vec();
    order.shuffle(&mut rng);
    let mut steps = Vec::new();
    let mut used = 0u64;
    let total_ms = total.as_millis() as u64;
    let mut i = 0;
    while i < order.len() || used + 2 * hold_ms <= total_ms {
        let family = if i < order.len() {
            order[i].clone()
        } else {
            families[rng.random_range(0..families.len())].clone()
        };
        i += 1;
        let step = Step {
            family,
            target: if always_leader || rng.random_bool(0.5) {
                Target::Leader
            } else {
                Target::Random
            },
            hold_ms: hold_ms / 2 + rng.random_range(0..=hold_ms),
            quiet_ms: hold_ms / 2 + rng.random_range(0..=hold_ms / 2),
        };
        used += step.hold_ms + step.quiet_ms;
        steps.push(step);
        if i >= order.len() && used >= total_ms {
            break;
        }
    }
    steps
}

/// Picks the concrete fault of `step` for a cluster of `n` members.
pub fn concretize(step: &Step, n: usize, leader: Option<usize>, rng: &mut StdRng) -> Fault {
    let target = match (step.target, leader) {
        (Target::Leader, Some(l)) => l,
        _ => rng.random_range(0..n),
    };
    let mut others: Vec<usize> = (0..n).filter(|&i| i != target).collect();
    others.shuffle(rng);
    let minority_size = (n - 1) / 2;
    match step.family.as_str() {
        "partition-one" => Fault::PartitionOne { node: target },
        "partition-halves" => {
            let mut minority = vec![target];
            minority.extend(others.iter().take(minority_size.saturating_sub(1)));
            Fault::PartitionHalves { minority }
        }
        "partition-bridge" => {
            let half = others.len() / 2;
            Fault::PartitionBridge {
                bridge: target,
                a: others[..half].to_vec(),
                b: others[half..].to_vec(),
            }
        }
        "partition-ring" => {
            let mut order: Vec<usize> = (0..n).collect();
            order.shuffle(rng);
            Fault::PartitionRing { order }
        }
        "partition-one-way" => Fault::PartitionOneWay { node: target },
        "kill" => Fault::Kill { node: target },
        "pause" => Fault::Pause { node: target },
        "power-loss" => Fault::PowerLoss {
            nodes: vec![target],
        },
        "power-loss-all" => Fault::PowerLoss {
            nodes: (0..n).collect(),
        },
        "clock-skew" => Fault::ClockSkew {
            node: target,
            seconds: if rng.random_bool(0.5) { -1 } else { 1 } * rng.random_range(30..600),
        },
        "membership" => Fault::Membership {
            node: target,
            via: others[0],
        },
        "disk-full" => Fault::DiskFull { node: target },
        "latency" => Fault::Latency {
            node: target,
            ms: rng.random_range(150..400),
        },
        "bitflip-catch-up" => Fault::BitflipCatchUp {
            down: target,
            source: others[0],
        },
        "bitflip" => {
            let mut nodes = vec![target];
            nodes.extend(others.iter().take(minority_size.saturating_sub(1)));
            Fault::Bitflip { nodes }
        }
        other => unreachable!("no fault family {other}"),
    }
}

/// Blobs the nemesis corrupted on purpose (`sha256:<hex>`): a copy of one may be gone for a
/// reason that is not Wharf's.
pub type Damaged = std::collections::BTreeSet<String>;

/// Puts `fault` in place. Returns a description of what was done.
pub fn inject(
    cluster: &mut TestCluster,
    fault: &Fault,
    rng: &mut StdRng,
    damaged: &mut Damaged,
) -> String {
    match fault {
        Fault::PartitionOne { node } => {
            cluster.isolate(*node);
            format!("node {} isolated", node + 1)
        }
        Fault::PartitionHalves { minority } => {
            let n = cluster.members.len();
            for &a in minority {
                for b in (0..n).filter(|b| !minority.contains(b)) {
                    cluster.cut(a, b);
                }
            }
            format!("{} cut off from the rest", names(minority))
        }
        Fault::PartitionBridge { bridge, a, b } => {
            for &x in a {
                for &y in b {
                    cluster.cut(x, y);
                }
            }
            format!(
                "{} | {} with node {} bridging",
                names(a),
                names(b),
                bridge + 1
            )
        }
        Fault::PartitionRing { order } => {
            let n = order.len();
            // 5+ members: each sees its two ring neighbours only (itself and two others, a
            // majority of 5, and no two the same majority). 3 members: one ring link is cut,
            // so the ends each see one neighbour.
            for p in 0..n {
                for q in p + 1..n {
                    let distance = (q - p).min(n - (q - p));
                    let cut = if n >= 5 {
                        distance >= 2
                    } else {
                        p == 0 && q == n - 1
                    };
                    if cut {
                        cluster.cut(order[p], order[q]);
                    }
                }
            }
            format!("ring {}", names(order))
        }
        Fault::PartitionOneWay { node } => {
            for other in (0..cluster.members.len()).filter(|o| o != node) {
                cluster.cut_one_way(*node, other);
            }
            format!("node {} cannot send to the others", node + 1)
        }
        Fault::Kill { node } => {
            cluster.kill9(*node);
            format!("node {} killed (-9)", node + 1)
        }
        Fault::Pause { node } => {
            cluster.signal(*node, "STOP");
            format!("node {} paused (SIGSTOP)", node + 1)
        }
        Fault::PowerLoss { nodes } => {
            for &node in nodes {
                cluster.kill9(node);
            }
            for &node in nodes {
                cluster.power_cut(node);
            }
            format!("{} lost power (unsynced writes dropped)", names(nodes))
        }
        Fault::ClockSkew { node, seconds } => {
            set_skew(&cluster.members[*node].dir, *seconds);
            format!("node {} clock {seconds:+} s", node + 1)
        }
        Fault::Membership { node, via } => {
            let old = cluster.members[*node].node_id;
            cluster.remove_member(*node, *via);
            format!("node {} (id {old}) removed and wiped", node + 1)
        }
        Fault::DiskFull { node } => match fill_disk(&cluster.members[*node].disk_dir()) {
            Ok(bytes) => format!("node {} disk filled ({} MiB taken)", node + 1, bytes >> 20),
            Err(e) => panic!("disk-full nemesis: {e}"),
        },
        Fault::Latency { node, ms } => {
            let delayd = wharf_tests::server::built_binary(
                "WHARF_DELAYD_BIN",
                "wharf-delayd",
                "cargo build --release -p wharf-testkit",
            );
            let to = cluster.members[*node].index;
            for other in (0..cluster.members.len()).filter(|o| o != node) {
                let from = cluster.members[other].index;
                cluster
                    .lab()
                    .delay(&delayd, from, to, Duration::from_millis(*ms));
            }
            format!("node {} hears everyone {ms} ms late", node + 1)
        }
        Fault::BitflipCatchUp { down, source } => {
            cluster.kill9(*down);
            format!(
                "node {} killed; node {} will hand it corrupt copies",
                down + 1,
                source + 1
            )
        }
        Fault::Bitflip { nodes } => {
            let mut flipped = Vec::new();
            for &node in nodes {
                let blobs = blob_files(&cluster.members[node].data_dir());
                for path in blobs.choose_multiple(rng, 3) {
                    if flip_byte(path, rng).is_ok() {
                        damaged.insert(digest_of_path(path));
                        flipped.push(format!(
                            "node {}: {}",
                            node + 1,
                            path.file_name().unwrap_or_default().to_string_lossy()
                        ));
                    }
                }
            }
            format!("flipped a byte in {}", flipped.join(", "))
        }
    }
}

/// Free bytes of the file system under `dir`.
fn free_bytes(dir: &Path) -> Result<u64, String> {
    let out = std::process::Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(dir)
        .output()
        .map_err(|e| format!("df: {e}"))?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| format!("df {}: no free space figure", dir.display()))
}

/// Fills the disk under `dir` until [`DISK_LEFT_FREE`] is left, in files of at most 256 MiB
/// (a refused allocation ends it: the disk is full then too); returns the bytes taken.
fn fill_disk(dir: &Path) -> Result<u64, String> {
    const CHUNK: u64 = 256 << 20;
    let mut taken = 0;
    for n in 0.. {
        let free = free_bytes(dir)?;
        let take = free.saturating_sub(DISK_LEFT_FREE).min(CHUNK);
        if take < (1 << 20) {
            break;
        }
        let status = std::process::Command::new("fallocate")
            .args(["-l", &take.to_string()])
            .arg(dir.join(format!("{FILLER}-{n}")))
            .stderr(std::process::Stdio::null())
            .status()
            .map_err(|e| format!("fallocate: {e}"))?;
        if !status.success() {
            break;
        }
        taken += take;
    }
    Ok(taken)
}

/// Removes what [`fill_disk`] wrote.
fn empty_disk(dir: &Path) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().starts_with(FILLER) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Undoes `fault`: heals the network, resumes, restarts, resets the clock. Bit flips stay
/// (the registry has to notice and repair them).
pub fn heal(cluster: &mut TestCluster, fault: &Fault, damaged: &mut Damaged) {
    match fault {
        Fault::PartitionOne { .. }
        | Fault::PartitionHalves { .. }
        | Fault::PartitionBridge { .. }
        | Fault::PartitionRing { .. }
        | Fault::PartitionOneWay { .. } => cluster.heal(),
        Fault::Kill { node } => cluster.restart(*node),
        Fault::PowerLoss { nodes } => cluster.restart_many(nodes),
        Fault::Pause { node } => cluster.signal(*node, "CONT"),
        Fault::ClockSkew { node, .. } => set_skew(&cluster.members[*node].dir, 0),
        Fault::Bitflip { .. } => {}
        Fault::Membership { node, .. } => cluster.rejoin(*node),
        Fault::Latency { .. } => cluster.heal(),
        Fault::BitflipCatchUp { down, source } => {
            let have: std::collections::BTreeSet<_> =
                blob_files(&cluster.members[*down].data_dir())
                    .into_iter()
                    .filter_map(|p| p.file_name().map(|n| n.to_owned()))
                    .collect();
            let mut rng = StdRng::seed_from_u64(*down as u64);
            for path in blob_files(&cluster.members[*source].data_dir()) {
                if path.file_name().is_some_and(|n| !have.contains(n))
                    && flip_byte(&path, &mut rng).is_ok()
                {
                    damaged.insert(digest_of_path(&path));
                }
            }
            cluster.restart(*down);
        }
        Fault::DiskFull { node } => {
            empty_disk(&cluster.members[*node].disk_dir());
        }
    }
}

/// Writes a member's clock offset for libfaketime (read again within a second).
pub fn set_skew(member_dir: &Path, seconds: i64) {
    let _ = std::fs::write(member_dir.join(SKEW_FILE), format!("{seconds:+}s\n"));
}

/// The blob files of a node's data dir.
pub fn blob_files(data_dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let root = data_dir.join("blobs/sha256");
    for prefix in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        for file in std::fs::read_dir(prefix.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let path = file.path();
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// `sha256:<file name>` of a blob file.
fn digest_of_path(path: &Path) -> String {
    format!(
        "sha256:{}",
        path.file_name().unwrap_or_default().to_string_lossy()
    )
}

fn flip_byte(path: &Path, rng: &mut StdRng) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    let at = rng.random_range(0..len);
    let mut byte = [0u8];
    file.seek(SeekFrom::Start(at))?;
    file.read_exact(&mut byte)?;
    byte[0] ^= 1 << rng.random_range(0..8);
    file.seek(SeekFrom::Start(at))?;
    file.write_all(&byte)
}

fn names(nodes: &[usize]) -> String {
    let list: Vec<String> = nodes.iter().map(|n| (n + 1).to_string()).collect();
    format!("[{}]", list.join(" "))
}
