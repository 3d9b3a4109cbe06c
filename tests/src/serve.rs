//! `wharf serve --config` as a child process, for tests that need a configuration `wharf dev`
//! does not offer (TLS, storage limits). Killed by its PID on drop.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::server::{signal, wharf_bin};

/// A running `wharf serve` with its own temp directory (config, data, log).
pub struct Served {
    dir: tempfile::TempDir,
    child: Child,
    port: u16,
}

impl Served {
    /// Writes the config `make_config(port)` to `<dir>/wharf.toml` (relative paths in it are
    /// relative to that directory; `files` are written there first) and starts the server.
    /// It is not waited for: use [`Served::wait_until`].
    pub fn start(files: &[(&str, &[u8])], make_config: impl FnOnce(u16) -> String) -> Served {
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in files {
            std::fs::write(dir.path().join(name), bytes).unwrap();
        }
        let port = wharf_testkit::ports::free_loopback_addr().port();
        let mut config = make_config(port);
        if !config.contains("[cluster]") {
            // Tests run side by side: the cluster listener takes any free loopback port.
            config.push_str("\n[cluster]\nlisten = \"127.0.0.1:0\"\n");
        }
        std::fs::write(dir.path().join("wharf.toml"), config).unwrap();
        // Only `wharf cluster init` creates a cluster (DESIGN.md §1.8).
        let init = Command::new(wharf_bin())
            .args(["cluster", "init", "--config"])
            .arg(dir.path().join("wharf.toml"))
            .output()
            .unwrap();
        assert!(
            init.status.success(),
            "wharf cluster init failed: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        let child = Command::new(wharf_bin())
            .arg("serve")
            .arg("--config")
            .arg(dir.path().join("wharf.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Served { dir, child, port }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its directory (config, `data/`, `server.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Polls `ready` until it is true; panics with the log after 30 s or if the server exits.
    pub fn wait_until(&mut self, mut ready: impl FnMut() -> bool) {
        let started = Instant::now();
        while !ready() {
            assert!(
                self.child.try_wait().unwrap().is_none(),
                "wharf serve exited:\n{}",
                self.log()
            );
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "wharf serve never became ready:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends SIGTERM and waits (30 s at most) for the exit status.
    pub fn stop_sigterm(&mut self) -> ExitStatus {
        signal(self.child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "wharf serve did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
