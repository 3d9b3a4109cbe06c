//! Crash and power-loss support: a `wharf` process on a data dir of the test's choosing
//! ([`WharfAt`]), the `wharf-lazyfs` FUSE layer that can cut the power ([`LazyFsMount`]), a
//! seeded push workload recording what was acknowledged ([`Pushers`]), and the checks run after
//! the restart ([`verify`], [`check_data_dir`]).
//!
//! Binaries: `wharf-lazyfs` is found next to `wharf` (`<target>/<profile>/wharf-lazyfs`, from
//! `cargo build --release -p wharf-testkit`) or at `$WHARF_LAZYFS_BIN`; the planted build
//! (`--features planted-bugs`) at `$WHARF_PLANTED_BIN` or `<target>/planted/release/wharf`.
//! Seeds: `$WHARF_TEST_SEED`, else a random one; every test logs it and names it on failure.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::server::{READY_TIMEOUT, signal, target_dir};

/// How to build `wharf-lazyfs`.
pub const LAZYFS_BUILD: &str = "cargo build --release -p wharf-testkit";

/// How to build the planted binary where the power-loss test looks for it.
pub const PLANTED_BUILD: &str =
    "CARGO_TARGET_DIR=target/planted cargo build --release -p wharf-cli --features planted-bugs";

/// The planted bug the power-loss test runs the planted build with (`WHARF_PLANTED_BUG`).
pub const PLANTED_SKIP_FSYNC: &str = "skip-blob-fsync";

/// The seed of this test: `$WHARF_TEST_SEED` or a random one. Logged, so a failure can be
/// replayed (the data and the cut point follow the seed; thread timing does not).
pub fn test_seed() -> u64 {
    let seed = match std::env::var("WHARF_TEST_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("WHARF_TEST_SEED={s}: not a u64: {e}")),
        Err(_) => rand::rng().random(),
    };
    tracing::info!("seed {seed} (replay with WHARF_TEST_SEED={seed})");
    seed
}

/// `$WHARF_LAZYFS_BIN`, else `wharf-lazyfs` in this test's profile dir. Panics with the build
/// command if it is missing.
pub fn lazyfs_bin() -> PathBuf {
    crate::server::built_binary("WHARF_LAZYFS_BIN", "wharf-lazyfs", LAZYFS_BUILD)
}

/// `$WHARF_PLANTED_BIN`, else `<target>/planted/release/wharf`: wharf built with the
/// `planted-bugs` feature (run it with `WHARF_PLANTED_BUG`, see [`WharfAt::start_with_bug`]).
/// Panics with the build command if it is missing.
pub fn planted_wharf_bin() -> PathBuf {
    let path = std::env::var_os("WHARF_PLANTED_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("planted/release/wharf"));
    assert!(
        path.is_file(),
        "the planted wharf build (--features planted-bugs) is missing at {}.\nBuild it with:\n  {PLANTED_BUILD}\n\
         (scripts/test does this), or set WHARF_PLANTED_BIN",
        path.display()
    );
    path
}

/// Panics unless FUSE can be used here: `/dev/fuse` and `fusermount3`.
pub fn require_fuse() {
    crate::require_tool(
        "fusermount3",
        "apt-get install -y --no-install-recommends fuse3",
    );
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: the power-loss tests need FUSE (modprobe fuse; in a container, \
         pass the device /dev/fuse)"
    );
}

/// Whether something is mounted at `path` (as this process sees it).
pub fn is_mounted(path: &Path) -> bool {
    let Ok(path) = path.canonicalize() else {
        return false;
    };
    let Some(want) = path.to_str() else {
        return false;
    };
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|line| line.split(' ').nth(4) == Some(want))
}

fn wait_exit(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn log_tail(path: &Path, what: &str) -> String {
    let text = String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(150);
    format!(
        "--- {what} log {} ---\n{}\n--- end of {what} log ---",
        path.display(),
        lines[from..].join("\n")
    )
}

/// A running `wharf-lazyfs <backing> <mountpoint>` child. Dropping it unmounts (SIGTERM, and a
/// lazy `fusermount3 -u -z` if the mount is still there), also when the test fails.
pub struct LazyFsMount {
    child: Option<Child>,
    mountpoint: PathBuf,
    log: PathBuf,
}

impl LazyFsMount {
    /// Mounts a pass-through of `backing` at `mountpoint`; its output goes to `log`.
    pub fn mount(backing: &Path, mountpoint: &Path, log: &Path) -> LazyFsMount {
        require_fuse();
        let bin = lazyfs_bin();
        let out = File::create(log).unwrap();
        let mut cmd = Command::new(&bin);
        cmd.arg(backing)
            .arg(mountpoint)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        tracing::info!("$ {}", crate::cmd::command_line(&cmd));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", bin.display()));
        let mut m = LazyFsMount {
            child: Some(child),
            mountpoint: mountpoint.to_path_buf(),
            log: log.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !is_mounted(mountpoint) {
            if let Some(status) = m.child.as_mut().unwrap().try_wait().unwrap() {
                m.child = None;
                panic!(
                    "wharf-lazyfs exited with {status} before mounting\n{}",
                    log_tail(log, "wharf-lazyfs")
                );
            }
            assert!(
                Instant::now() < deadline,
                "wharf-lazyfs did not mount {} within 20 s\n{}",
                mountpoint.display(),
                log_tail(log, "wharf-lazyfs")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        tracing::info!(
            "wharf-lazyfs pid {} serves {} at {}",
            m.pid(),
            backing.display(),
            mountpoint.display()
        );
        m
    }

    /// PID of the wharf-lazyfs process.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("wharf-lazyfs is running").id()
    }

    /// Cuts the power (SIGUSR1 to our child, by PID) and waits until it has rewritten the backing
    /// dir and exited. Kill the programs using the mount first. Returns its log.
    pub fn power_cut(&mut self) -> String {
        let mut child = self.child.take().expect("wharf-lazyfs is running");
        tracing::info!("--- power cut: SIGUSR1 to wharf-lazyfs pid {}", child.id());
        signal(child.id(), "USR1");
        let status = wait_exit(&mut child, Duration::from_secs(120));
        let log = log_tail(&self.log, "wharf-lazyfs");
        match status {
            Some(s) if s.success() => {}
            Some(s) => panic!("wharf-lazyfs exited with {s} on the power cut\n{log}"),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("wharf-lazyfs did not finish the power cut within 120 s (killed it)\n{log}");
            }
        }
        assert!(
            !is_mounted(&self.mountpoint),
            "{} is still mounted after the power cut\n{log}",
            self.mountpoint.display()
        );
        let report = log
            .lines()
            .find(|l| l.contains("power cut:"))
            .unwrap_or("")
            .to_string();
        tracing::info!("{report}");
        log
    }
}

impl Drop for LazyFsMount {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // our own child, by its PID: a clean unmount first
            let _ = Command::new("kill")
                .arg("-s")
                .arg("TERM")
                .arg(child.id().to_string())
                .status();
            if wait_exit(&mut child, Duration::from_secs(20)).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if is_mounted(&self.mountpoint) {
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg(&self.mountpoint)
                .status();
        }
        if std::thread::panicking() {
            eprintln!("{}", log_tail(&self.log, "wharf-lazyfs"));
        }
    }
}

/// A `wharf dev` child on a data dir and binary of the test's choosing (the data dir may be a
/// FUSE mount), on a free port. Killed by its PID when dropped.
pub struct WharfAt {
    child: Option<Child>,
    addr: String,
    log: PathBuf,
}

impl WharfAt {
    /// Starts `bin dev --data-dir <data_dir>` on a free port, output appended to `log`, and waits
    /// for `/readyz`.
    pub fn start(bin: &Path, data_dir: &Path, log: &Path) -> WharfAt {
        WharfAt::start_with_bug(bin, None, data_dir, log)
    }

    /// [`WharfAt::start`] with `WHARF_PLANTED_BUG=<planted_bug>` (for the planted build, see
    /// [`planted_wharf_bin`]); without one, the variable is removed from the child's environment.
    pub fn start_with_bug(
        bin: &Path,
        planted_bug: Option<&str>,
        data_dir: &Path,
        log: &Path,
    ) -> WharfAt {
        for attempt in 1..=5 {
            let addr = crate::server::free_addr();
            let out = File::options().create(true).append(true).open(log).unwrap();
            let mut cmd = Command::new(bin);
            cmd.arg("dev")
                .arg("--data-dir")
                .arg(data_dir)
                .arg("--listen")
                .arg(&addr)
                .env("RUST_BACKTRACE", "1")
                .stdin(Stdio::null())
                .stdout(out.try_clone().unwrap())
                .stderr(out);
            if std::env::var_os("RUST_LOG").is_none() {
                cmd.env("RUST_LOG", "info");
            }
            match planted_bug {
                Some(bug) => cmd.env("WHARF_PLANTED_BUG", bug),
                None => cmd.env_remove("WHARF_PLANTED_BUG"),
            };
            let planted = planted_bug.map(|b| format!("WHARF_PLANTED_BUG={b} "));
            tracing::info!(
                "$ {}{}",
                planted.unwrap_or_default(),
                crate::cmd::command_line(&cmd)
            );
            let child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", bin.display()));
            tracing::info!("wharf pid {} on {addr}", child.id());
            let mut w = WharfAt {
                child: Some(child),
                addr,
                log: log.to_path_buf(),
            };
            match w.wait_ready() {
                Ok(()) => return w,
                Err(msg)
                    if attempt < 5 && msg.to_lowercase().contains("address already in use") =>
                {
                    tracing::warn!("port {} was taken, retrying", w.addr);
                }
                Err(msg) => panic!("{msg}"),
            }
        }
        unreachable!("the last attempt panics")
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let client = crate::http_client();
        let url = format!("http://{}/readyz", self.addr);
        let started = Instant::now();
        loop {
            let child = self.child.as_mut().unwrap();
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return Err(format!(
                    "wharf exited with {status} before it was ready\n{}",
                    self.log_tail()
                ));
            }
            match client.get(&url).timeout(Duration::from_secs(2)).send() {
                Ok(r) if r.status() == 200 => return Ok(()),
                _ if started.elapsed() > READY_TIMEOUT => {
                    let mut child = self.child.take().unwrap();
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "wharf did not answer /readyz within {READY_TIMEOUT:?} (killed it)\n{}",
                        self.log_tail()
                    ));
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// SIGKILLs the server (our child, by PID) and reaps it.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("wharf is running");
        tracing::info!("--- SIGKILL to wharf pid {}", child.id());
        child.kill().unwrap();
        let status = child.wait().unwrap();
        tracing::info!("wharf exited: {status}");
    }

    /// The end of the server log.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log, "wharf")
    }
}

impl Drop for WharfAt {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail());
        }
    }
}

/// Where one push went.
#[derive(Debug, Clone)]
pub enum Target {
    /// An OCI blob, uploaded monolithically to `name` (`repo/image`).
    Blob {
        /// `repo/image`
        name: String,
        /// `sha256:<hex>`
        digest: String,
    },
    /// A generic file `/generic/files/<path>`.
    File {
        /// path inside the `files` repository
        path: String,
    },
}

/// One attempted write and whether the server acknowledged it (201).
#[derive(Debug, Clone)]
pub struct Push {
    /// What was written.
    pub target: Target,
    /// Lower-case hex sha256 of the bytes.
    pub sha256: String,
    /// Length of the bytes.
    pub len: usize,
    /// Whether a 201 came back.
    pub acked: bool,
}

impl Push {
    /// The URL reading it back, under `base` (`http://127.0.0.1:PORT`).
    pub fn url(&self, base: &str) -> String {
        match &self.target {
            Target::Blob { name, digest } => format!("{base}/v2/{name}/blobs/{digest}"),
            Target::File { path } => format!("{base}/generic/files/{path}"),
        }
    }

    fn describe(&self) -> String {
        match &self.target {
            Target::Blob { name, digest } => format!("blob {name}@{digest} ({} bytes)", self.len),
            Target::File { path } => format!("file files/{path} ({} bytes)", self.len),
        }
    }
}

/// Threads pushing random blobs and generic files in a loop, recording every attempt.
pub struct Pushers {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
    threads: Vec<JoinHandle<Vec<Push>>>,
}

/// A size for the next push: mostly small, some up to 1 MiB, a few across the 4 MiB chunk size.
fn pick_size(rng: &mut StdRng) -> usize {
    match rng.random_range(0..10) {
        0..=5 => rng.random_range(1..64 * 1024),
        6..=8 => rng.random_range(64 * 1024..1024 * 1024),
        _ => rng.random_range(4 * 1024 * 1024 - 100_000..4 * 1024 * 1024 + 300_000),
    }
}

impl Pushers {
    /// Starts `threads` pushers against `base` (`http://127.0.0.1:PORT`); thread `i` draws its
    /// sizes, kinds and bytes from a generator seeded with `seed` and `i`. `tag` keeps names of
    /// different rounds apart.
    pub fn start(base: &str, seed: u64, threads: usize, tag: &str) -> Pushers {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicUsize::new(0));
        let threads = (0..threads)
            .map(|i| {
                let (stop, acked) = (stop.clone(), acked.clone());
                let base = base.to_string();
                let tag = tag.to_string();
                let seed = seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                std::thread::spawn(move || push_loop(&base, seed, i, &tag, &stop, &acked))
            })
            .collect();
        Pushers {
            stop,
            acked,
            threads,
        }
    }

    /// Acknowledged pushes so far.
    pub fn acked(&self) -> usize {
        self.acked.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` pushes were acknowledged; false on timeout.
    pub fn wait_for_acks(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.acked() < n {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    }

    /// Stops the threads (their current request finishes or fails) and returns every attempt.
    pub fn finish(self) -> Vec<Push> {
        self.stop.store(true, Ordering::SeqCst);
        self.threads
            .into_iter()
            .flat_map(|t| t.join().expect("pusher thread panicked"))
            .collect()
    }
}

fn push_loop(
    base: &str,
    seed: u64,
    thread: usize,
    tag: &str,
    stop: &AtomicBool,
    acked: &AtomicUsize,
) -> Vec<Push> {
    let mut rng = StdRng::seed_from_u64(seed);
    let client = crate::http_client();
    let mut pushes = Vec::new();
    let mut k = 0usize;
    while !stop.load(Ordering::SeqCst) {
        k += 1;
        let mut data = vec![0u8; pick_size(&mut rng)];
        rng.fill(&mut data[..]);
        let sha256 = crate::sha256_hex(&data);
        let len = data.len();
        let (target, request) = if rng.random_bool(0.5) {
            let name = format!("crash/img{thread}");
            let digest = format!("sha256:{sha256}");
            let url = format!("{base}/v2/{name}/blobs/uploads/?digest={digest}");
            (Target::Blob { name, digest }, client.post(url))
        } else {
            let path = format!("{tag}/t{thread}/{k}.bin");
            let url = format!("{base}/generic/files/{path}");
            (Target::File { path }, client.put(url))
        };
        let mut push = Push {
            target,
            sha256,
            len,
            acked: false,
        };
        match request.body(data).send() {
            Ok(resp) if resp.status().as_u16() == 201 => {
                push.acked = true;
                acked.fetch_add(1, Ordering::SeqCst);
            }
            Ok(resp) => {
                let status = resp.status();
                let body = resp.text().unwrap_or_default();
                tracing::warn!("{}: HTTP {status}: {body}", push.describe());
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)), // server gone: the cut
        }
        pushes.push(push);
    }
    pushes
}

/// What reading every attempted push back found.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Acknowledged and read back byte for byte.
    pub acked_ok: usize,
    /// Acknowledged, now 404.
    pub acked_lost: Vec<String>,
    /// Acknowledged, now unreadable or different.
    pub acked_corrupt: Vec<String>,
    /// Not acknowledged (in flight at the crash), present and intact.
    pub unacked_present: usize,
    /// Not acknowledged, absent.
    pub unacked_absent: usize,
    /// Not acknowledged and served with wrong bytes or an error other than 404.
    pub unacked_bad: Vec<String>,
}

impl Verdict {
    /// Whether every acknowledged write survived and nothing wrong is served.
    pub fn is_clean(&self) -> bool {
        self.acked_lost.is_empty() && self.acked_corrupt.is_empty() && self.unacked_bad.is_empty()
    }

    /// Acknowledged writes lost or corrupt.
    pub fn acked_damaged(&self) -> usize {
        self.acked_lost.len() + self.acked_corrupt.len()
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "acknowledged: {} intact, {} lost, {} corrupt; not acknowledged: {} present, {} absent, {} bad",
            self.acked_ok,
            self.acked_lost.len(),
            self.acked_corrupt.len(),
            self.unacked_present,
            self.unacked_absent,
            self.unacked_bad.len()
        )?;
        for (what, list) in [
            ("LOST", &self.acked_lost),
            ("CORRUPT", &self.acked_corrupt),
            ("BAD (unacknowledged)", &self.unacked_bad),
        ] {
            for item in list.iter().take(20) {
                writeln!(f, "  {what}: {item}")?;
            }
        }
        Ok(())
    }
}

enum ReadBack {
    Intact,
    Absent,
    Bad(String),
}

fn read_back(client: &reqwest::blocking::Client, base: &str, push: &Push) -> ReadBack {
    let resp = match client.get(push.url(base)).send() {
        Ok(r) => r,
        Err(e) => return ReadBack::Bad(format!("GET failed: {e}")),
    };
    match resp.status().as_u16() {
        404 => ReadBack::Absent,
        200 => match resp.bytes() {
            Ok(body) if crate::sha256_hex(&body) == push.sha256 => ReadBack::Intact,
            Ok(body) => ReadBack::Bad(format!(
                "200 with other bytes ({} bytes, sha256 {})",
                body.len(),
                crate::sha256_hex(&body)
            )),
            Err(e) => ReadBack::Bad(format!("200 but the body broke off: {e}")),
        },
        status => ReadBack::Bad(format!(
            "HTTP {status}: {}",
            resp.text()
                .unwrap_or_default()
                .chars()
                .take(300)
                .collect::<String>()
        )),
    }
}

/// Reads every push back from the server at `base`.
pub fn verify(base: &str, pushes: &[Push]) -> Verdict {
    let client = crate::http_client();
    let mut v = Verdict::default();
    for push in pushes {
        let what = push.describe();
        match (push.acked, read_back(&client, base, push)) {
            (true, ReadBack::Intact) => v.acked_ok += 1,
            (true, ReadBack::Absent) => v.acked_lost.push(format!("{what}: 404")),
            (true, ReadBack::Bad(why)) => v.acked_corrupt.push(format!("{what}: {why}")),
            (false, ReadBack::Intact) => v.unacked_present += 1,
            (false, ReadBack::Absent) => v.unacked_absent += 1,
            (false, ReadBack::Bad(why)) => v.unacked_bad.push(format!("{what}: {why}")),
        }
    }
    v
}

/// Checks a data dir after a restart: `uploads/` is empty (no partial upload survives) and every
/// blob under `blobs/sha256/` hashes to its name (sidecars `*.chunks` aside). Returns problems.
pub fn check_data_dir(data_dir: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    let uploads = data_dir.join("uploads");
    match std::fs::read_dir(&uploads) {
        Ok(entries) => {
            for e in entries {
                problems.push(format!(
                    "left in uploads/: {}",
                    e.unwrap().file_name().to_string_lossy()
                ));
            }
        }
        Err(e) => problems.push(format!("{}: {e}", uploads.display())),
    }
    let blobs = data_dir.join("blobs/sha256");
    for prefix in std::fs::read_dir(&blobs).unwrap() {
        let prefix = prefix.unwrap();
        let prefix_name = prefix.file_name().to_string_lossy().into_owned();
        for blob in std::fs::read_dir(prefix.path()).unwrap() {
            let blob = blob.unwrap();
            let name = blob.file_name().to_string_lossy().into_owned();
            if name.ends_with(".chunks") {
                continue;
            }
            let bytes = std::fs::read(blob.path()).unwrap();
            let sha = crate::sha256_hex(&bytes);
            if sha != name || !name.starts_with(&prefix_name) {
                problems.push(format!(
                    "blobs/sha256/{prefix_name}/{name}: holds {} bytes hashing to {sha}",
                    bytes.len()
                ));
            }
        }
    }
    problems
}
