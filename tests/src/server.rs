//! [`Wharf`]: one `wharf dev` process per test, on a fresh data dir and a free loopback port.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long the server gets to answer `GET /readyz` with 200 after being spawned.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the server gets to exit after SIGTERM.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// Env var naming an already running registry (`127.0.0.1:PORT`) to test instead of spawning Wharf.
pub const EXTERNAL_REGISTRY_ENV: &str = "WHARF_TEST_EXTERNAL_REGISTRY";

/// The `<target>` directory the running test executable was built into: the executable is
/// `<target>/<profile>/deps/<name>-<hash>`.
pub fn target_dir() -> PathBuf {
    profile_dir()
        .parent()
        .expect("profile dir has a parent")
        .to_path_buf()
}

/// `<target>/<profile>`: where the binaries the tests run were built.
pub(crate) fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("test executable has a parent dir");
    // `<target>/<profile>/deps/` normally; tolerate an executable placed in the profile dir itself
    if deps.file_name().is_some_and(|n| n == "deps") {
        deps.parent().expect("deps has a parent").to_path_buf()
    } else {
        deps.to_path_buf()
    }
}

/// A binary built beside the tests: `$<env_var>` if set, else `<target>/<profile>/<name>`.
/// Panics with `build` (the command that builds it) if it is missing.
pub fn built_binary(env_var: &str, name: &str, build: &str) -> PathBuf {
    let path = std::env::var_os(env_var)
        .map(PathBuf::from)
        .unwrap_or_else(|| profile_dir().join(name));
    assert!(
        path.is_file(),
        "{name} not found at {}.\nBuild it with: {build} (the tests look in the profile dir they \
         were built for, so run them with `cargo test --release`), or set {env_var}",
        path.display()
    );
    path
}

/// Path of the `wharf` binary: `$WHARF_BIN`, else `<target>/<profile>/wharf`.
pub fn wharf_bin() -> PathBuf {
    built_binary("WHARF_BIN", "wharf", "cargo build --release -p wharf-cli")
}

/// A running registry under test. Normally a `wharf dev` child process with its own data dir and port,
/// killed (by its PID) when dropped. With `WHARF_TEST_EXTERNAL_REGISTRY` set, a handle to that external
/// registry; the lifecycle methods then panic.
pub struct Wharf {
    addr: String,
    inner: Option<Spawned>,
}

struct Spawned {
    bin: PathBuf,
    /// holds `data/` (the data dir) and `wharf.log` (stdout + stderr of every start)
    dir: tempfile::TempDir,
    child: Option<Child>,
    starts: u32,
}

impl Wharf {
    /// Spawns `wharf dev` on a fresh data dir and a free `127.0.0.1` port and waits until `/readyz`
    /// answers 200 (or returns the external registry, see [`EXTERNAL_REGISTRY_ENV`]).
    pub fn start() -> Wharf {
        if let Some(addr) = external_registry() {
            tracing::info!("--- using external registry {addr} (${EXTERNAL_REGISTRY_ENV})");
            let w = Wharf { addr, inner: None };
            w.wait_external();
            return w;
        }
        let bin = wharf_bin();
        let dir = tempfile::Builder::new()
            .prefix("wharf-test-")
            .tempdir()
            .unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        let mut w = Wharf {
            addr: String::new(),
            inner: Some(Spawned {
                bin,
                dir,
                child: None,
                starts: 0,
            }),
        };
        // The free port is found by binding port 0 and letting go of it; another process may grab it
        // in between, so a start that fails because the address is taken is retried on a new port.
        for attempt in 1..=5 {
            w.addr = free_addr();
            match w.spawn_and_wait() {
                Ok(()) => return w,
                Err(log)
                    if attempt < 5 && log.to_lowercase().contains("address already in use") =>
                {
                    tracing::warn!("port {} was taken, retrying", w.addr);
                }
                Err(log) => panic!("{log}"),
            }
        }
        unreachable!("the last attempt panics")
    }

    /// `127.0.0.1:PORT`, the registry host as clients name it (`127.0.0.1:PORT/repo/image:tag`).
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Whether this is an external registry (see [`EXTERNAL_REGISTRY_ENV`]) rather than Wharf.
    pub fn is_external(&self) -> bool {
        self.inner.is_none()
    }

    /// The server's data dir (kept across [`Wharf::restart`]).
    pub fn data_dir(&self) -> PathBuf {
        self.spawned("data_dir").dir.path().join("data")
    }

    /// Everything the server printed so far, across restarts.
    pub fn log(&self) -> String {
        let path = self.spawned("log").dir.path().join("wharf.log");
        String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
    }

    /// The `wharf` binary as a client of this server (`WHARF_ENDPOINT` set), e.g. `repo create`.
    pub fn cli(&self) -> Command {
        let mut cmd = Command::new(&self.spawned("cli").bin);
        cmd.env("WHARF_ENDPOINT", self.url());
        cmd
    }

    /// PID of the running server process.
    pub fn pid(&self) -> u32 {
        self.spawned("pid")
            .child
            .as_ref()
            .expect("server is not running")
            .id()
    }

    /// Sends SIGTERM to the server (by its PID) and waits for it to exit; panics if it is still running
    /// after [`SHUTDOWN_TIMEOUT`] (it is then SIGKILLed). Returns its exit status.
    pub fn stop_sigterm(&mut self) -> ExitStatus {
        let addr = self.addr.clone();
        let s = self.spawned_mut("stop_sigterm");
        let mut child = s.child.take().expect("server is not running");
        tracing::info!("--- SIGTERM to wharf pid {} ({addr})", child.id());
        signal(child.id(), "TERM");
        let deadline = Instant::now() + SHUTDOWN_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                tracing::info!("wharf exited: {status}");
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "wharf did not exit within {SHUTDOWN_TIMEOUT:?} of SIGTERM (killed it)\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILLs the server (by its PID) and reaps it: a crash.
    pub fn kill9(&mut self) {
        let s = self.spawned_mut("kill9");
        let mut child = s.child.take().expect("server is not running");
        tracing::info!("--- SIGKILL to wharf pid {}", child.id());
        child.kill().unwrap();
        let status = child.wait().unwrap();
        tracing::info!("wharf exited: {status}");
    }

    /// Starts the server again on the same data dir and port, after stopping it with SIGTERM if it is
    /// still running (so `kill9()` then `restart()` is crash recovery). Waits for `/readyz`.
    pub fn restart(&mut self) {
        if self.spawned("restart").child.is_some() {
            let status = self.stop_sigterm();
            assert!(
                status.success(),
                "wharf exited with {status} after SIGTERM (want 0: graceful shutdown)\n{}",
                self.log_tail()
            );
        }
        tracing::info!("--- restarting wharf on {}", self.addr);
        if let Err(log) = self.spawn_and_wait() {
            panic!("{log}");
        }
    }

    fn spawned(&self, what: &str) -> &Spawned {
        self.inner.as_ref().unwrap_or_else(|| {
            panic!("Wharf::{what}() is not possible with the external registry ${EXTERNAL_REGISTRY_ENV}")
        })
    }

    fn spawned_mut(&mut self, what: &str) -> &mut Spawned {
        self.inner.as_mut().unwrap_or_else(|| {
            panic!("Wharf::{what}() is not possible with the external registry ${EXTERNAL_REGISTRY_ENV}")
        })
    }

    /// Spawns the process on `self.addr` and waits for readiness. Err carries a message with the log.
    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let addr = self.addr.clone();
        let s = self.spawned_mut("start");
        s.starts += 1;
        let log_path = s.dir.path().join("wharf.log");
        let mut log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        {
            use std::io::Write;
            writeln!(log, "===== start #{} on {addr} =====", s.starts).unwrap();
        }
        let data_dir = s.dir.path().join("data");
        let mut cmd = Command::new(&s.bin);
        cmd.arg("dev")
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--listen")
            .arg(&addr)
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        tracing::info!("$ {}", crate::cmd::command_line(&cmd));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", s.bin.display()));
        tracing::info!("wharf pid {} on {addr}", child.id());
        s.child = Some(child);

        let client = crate::http_client();
        let started = Instant::now();
        let url = format!("http://{addr}/readyz");
        loop {
            let s = self.spawned_mut("start");
            if let Some(status) = s.child.as_mut().unwrap().try_wait().unwrap() {
                s.child = None;
                return Err(format!(
                    "wharf exited with {status} before it was ready on {addr}\n{}",
                    self.log_tail()
                ));
            }
            match client.get(&url).timeout(Duration::from_secs(2)).send() {
                Ok(r) if r.status() == 200 => {
                    tracing::info!(
                        "wharf ready on {addr} after {:.1}s",
                        started.elapsed().as_secs_f64()
                    );
                    return Ok(());
                }
                _ if started.elapsed() > READY_TIMEOUT => {
                    let s = self.spawned_mut("start");
                    let mut child = s.child.take().unwrap();
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "wharf did not answer GET /readyz with 200 within {READY_TIMEOUT:?} on {addr} (killed it)\n{}",
                        self.log_tail()
                    ));
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    fn wait_external(&self) {
        let client = crate::http_client();
        let url = format!("{}/v2/", self.url());
        let started = Instant::now();
        loop {
            match client.get(&url).send() {
                Ok(r) if r.status() == 200 || r.status() == 401 => return,
                other if started.elapsed() > READY_TIMEOUT => panic!(
                    "external registry ${EXTERNAL_REGISTRY_ENV}={} does not answer GET /v2/: {other:?}",
                    self.addr
                ),
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// The last part of the server log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let from = lines.len().saturating_sub(200);
        format!(
            "--- wharf log ({}) ---\n{}\n--- end of wharf log ---",
            if from > 0 { "last 200 lines" } else { "all" },
            lines[from..].join("\n")
        )
    }
}

impl Drop for Wharf {
    fn drop(&mut self) {
        let Some(s) = self.inner.as_mut() else {
            return;
        };
        if let Some(mut child) = s.child.take() {
            // our own child, killed by its PID
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail());
        }
    }
}

fn external_registry() -> Option<String> {
    let addr = std::env::var(EXTERNAL_REGISTRY_ENV).ok()?;
    let addr = addr.trim().to_string();
    if addr.is_empty() {
        return None;
    }
    let host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h);
    assert!(
        host.starts_with("127.") || host == "localhost",
        "${EXTERNAL_REGISTRY_ENV}={addr}: tests only talk to 127.0.0.0/8"
    );
    Some(addr)
}

/// A `127.0.0.1:PORT` that was free a moment ago, outside the kernel's ephemeral range (see
/// [`wharf_testkit::ports`]).
pub fn free_addr() -> String {
    wharf_testkit::ports::free_loopback_addr().to_string()
}

/// Sends `signal` (a name for `kill -s`, e.g. `TERM`) to the process `pid`, which we started.
/// Uses kill(1): this workspace forbids `unsafe`, which `libc::kill` would need.
pub fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg("-s")
        .arg(signal)
        .arg(pid.to_string())
        .status()
        .unwrap_or_else(|e| panic!("cannot run kill(1): {e}"));
    assert!(status.success(), "kill -s {signal} {pid} failed: {status}");
}

/// Waits for `path` to exist (a socket or pid file) for at most `timeout`.
pub fn wait_for_path(path: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if path.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    path.exists()
}
