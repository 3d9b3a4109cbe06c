//! `wharf-lazyfs [--shadow DIR] <backing-dir> <mountpoint>`: serves `backing-dir` at `mountpoint`
//! through FUSE (see the crate doc of wharf-testkit for the durability model) until a signal:
//!
//! - `SIGUSR1`: **power cut**. Every further request fails with EIO, the file system is unmounted
//!   (lazily if something still has files open there: kill the programs using it first), and
//!   `backing-dir` is rewritten to hold only what had been fsync'd. Exits 0 when done, after
//!   printing a one-line report to stderr.
//! - `SIGTERM` / `SIGINT`: clean unmount; `backing-dir` keeps everything. Exits 0.
//!
//! Prints `mounted` on stdout once the mount is in place. Runs as root (mount(2)) or with the
//! `fusermount3` helper (Debian package `fuse3`). `--shadow DIR` keeps the durable copies of file
//! data in DIR (must be empty, outside both directories) instead of a temporary directory.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use nix::sys::signal::{SigSet, Signal};
use wharf_testkit::lazyfs;

const USAGE: &str = "usage: wharf-lazyfs [--shadow DIR] <backing-dir> <mountpoint>\n\
    kill -USR1 <pid>: power cut (drop every un-fsync'd write, unmount, exit)\n\
    kill -TERM <pid>: clean unmount";

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let mut positional = Vec::new();
    let mut options = lazyfs::Options::default();
    while let Some(arg) = args.next() {
        if arg == "--shadow" {
            let Some(dir) = args.next() else {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            };
            options.shadow_dir = Some(PathBuf::from(dir));
        } else if arg == "-h" || arg == "--help" {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        } else {
            positional.push(PathBuf::from(arg));
        }
    }
    let [backing, mountpoint] = positional.as_slice() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };

    // Blocked before any thread starts, so every thread inherits the mask and the signals wait
    // for sigwait below instead of killing the process.
    let mut signals = SigSet::empty();
    for s in [Signal::SIGUSR1, Signal::SIGTERM, Signal::SIGINT] {
        signals.add(s);
    }
    signals
        .thread_block()
        .expect("blocking SIGUSR1/SIGTERM/SIGINT (startup)");

    let mounted = match lazyfs::mount(backing, mountpoint, options) {
        Ok(m) => m,
        Err(e) => {
            eprintln!(
                "wharf-lazyfs: cannot mount {} at {}: {e}",
                backing.display(),
                mountpoint.display()
            );
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "wharf-lazyfs: serving {} at {} (pid {}); kill -USR1 = power cut, kill -TERM = unmount",
        mounted.backing().display(),
        mounted.mountpoint().display(),
        std::process::id()
    );
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "mounted");
    let _ = stdout.flush();

    loop {
        match signals.wait() {
            Ok(Signal::SIGUSR1) => {
                return match mounted.power_cut() {
                    Ok(report) => {
                        eprintln!("wharf-lazyfs: {report}");
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("wharf-lazyfs: power cut failed: {e}");
                        ExitCode::FAILURE
                    }
                };
            }
            Ok(Signal::SIGTERM | Signal::SIGINT) => {
                mounted.unmount();
                eprintln!("wharf-lazyfs: unmounted");
                return ExitCode::SUCCESS;
            }
            Ok(_) => {}
            Err(e) => {
                eprintln!("wharf-lazyfs: sigwait failed: {e}");
                mounted.unmount();
                return ExitCode::FAILURE;
            }
        }
    }
}
