//! [`Dockerd`]: a private docker daemon for one test (docs/clients.md §2.1): own data-root, exec-root,
//! pidfile and unix socket inside the test's temp dir, no iptables, no bridge, vfs storage. Needs root.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::ClientEnv;

/// How long dockerd gets to come up (it starts its own containerd first).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long dockerd gets to exit after SIGTERM before it is SIGKILLed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `dockerd`, stopped with SIGTERM (by its PID) on drop, which also stops its containerd.
pub struct Dockerd {
    child: Option<Child>,
    dir: PathBuf,
    socket: PathBuf,
}

impl Dockerd {
    /// Starts dockerd with all its state under `env`'s temp dir and waits until `docker version`
    /// answers. Panics with dockerd's log on failure.
    pub fn start(env: &ClientEnv) -> Dockerd {
        let dockerd = crate::require_tool(
            "dockerd",
            "apt-get install -y --no-install-recommends docker.io",
        );
        crate::require_tool(
            "docker",
            "apt-get install -y --no-install-recommends docker.io",
        );
        assert!(
            effective_uid() == Some(0),
            "the docker tests start their own dockerd, which needs root (run the tests as root)"
        );
        // short names: unix socket paths (also containerd's, under exec-root) are limited to 108 bytes
        let dir = env.join("d");
        for sub in ["data", "exec"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let socket = dir.join("docker.sock");
        std::fs::write(dir.join("daemon.json"), "{}\n").unwrap();
        let log = std::fs::File::create(dir.join("dockerd.log")).unwrap();
        let mut cmd = env.command(dockerd);
        cmd.arg("--config-file")
            .arg(dir.join("daemon.json"))
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .arg("--iptables=false")
            .arg("--ip6tables=false")
            .arg("--bridge=none")
            .arg("--storage-driver=vfs")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        tracing::info!("$ {}", crate::cmd::command_line(&cmd));
        let child = cmd.spawn().unwrap();
        tracing::info!("dockerd pid {}", child.id());
        let mut d = Dockerd {
            child: Some(child),
            dir,
            socket,
        };
        d.wait_ready(env);
        d
    }

    fn wait_ready(&mut self, env: &ClientEnv) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                panic!(
                    "dockerd exited with {status} while starting\n{}",
                    self.log()
                );
            }
            if self.socket.exists() {
                let out = self
                    .docker(env)
                    .args(["version", "--format", "{{.Server.Version}}"])
                    .output()
                    .unwrap();
                if out.status.success() {
                    tracing::info!(
                        "dockerd {} ready after {:.1}s",
                        String::from_utf8_lossy(&out.stdout).trim(),
                        started.elapsed().as_secs_f64()
                    );
                    return;
                }
            }
            if started.elapsed() > START_TIMEOUT {
                panic!(
                    "dockerd did not answer on {} within {START_TIMEOUT:?}\n{}",
                    self.socket.display(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The docker CLI talking to this daemon (`DOCKER_HOST`), with `env`'s `DOCKER_CONFIG`.
    pub fn docker(&self, env: &ClientEnv) -> Command {
        let mut cmd = env.command("docker");
        cmd.env("DOCKER_HOST", format!("unix://{}", self.socket.display()));
        cmd
    }

    /// dockerd's own log.
    pub fn log(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(100);
        format!(
            "--- dockerd log ---\n{}\n--- end of dockerd log ---",
            lines[from..].join("\n")
        )
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if std::thread::panicking() {
            eprintln!("{}", self.log());
        }
        // our own dockerd, by its PID; SIGTERM makes it stop the containerd it started, too
        crate::server::signal(child.id(), "TERM");
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("dockerd did not stop within {STOP_TIMEOUT:?} of SIGTERM; killing it");
        let _ = child.kill();
        let _ = child.wait();
        // the containerd it started (pid file under our exec-root) would outlive it
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("exec/containerd/containerd.pid"))
            && let Ok(pid) = pid.trim().parse::<u32>()
        {
            let _ = Command::new("kill")
                .args(["-s", "KILL", &pid.to_string()])
                .status();
        }
        // dockerd bind-mounts its data-root onto itself and undoes that only on a clean shutdown
        let _ = Command::new("umount")
            .arg("--lazy")
            .arg(self.dir.join("data"))
            .status();
    }
}

/// The effective uid of this process, from /proc (no `unsafe` geteuid in this workspace).
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}
