//! The history of a run: every operation a client invoked and how it completed, plus the
//! nemesis' own start/stop events, one JSON object per line (`history.jsonl`).
//!
//! An operation is two events of the same `process`: `invoke`, then `ok`, `fail` or `info`.
//! `fail` means the operation certainly did not happen (`NO_QUORUM`, a refused write, a read that
//! got no answer); `info` means it may or may not have happened (`OUTCOME_UNKNOWN`, a timeout, a
//! dropped connection during a write). A process has at most one operation in flight; after an
//! `info` the worker continues as a new process, as in Jepsen, because the old one may still be
//! "running" as far as the checkers know.
//!
//! The checkers read the history back from the file ([`load`]), so a run can be re-checked
//! offline (`wharf-jepsen check <results dir>`).

use std::io::{BufRead, BufWriter, Write};
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What an event says about its operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Invoke,
    Ok,
    Fail,
    Info,
}

/// One line of `history.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    /// Position in the history.
    pub index: u64,
    /// Milliseconds since the run started (monotonic).
    pub time_ms: f64,
    /// The client process (see the module docs); [`NEMESIS`] for fault events.
    pub process: u64,
    #[serde(rename = "type")]
    pub kind: Kind,
    /// The workload (`register`, `bounded`, `immutable`, `blobs`, `packages`) or `nemesis`.
    pub workload: String,
    /// The operation: `write`, `read`, `delete`, `push`, `publish`, `index`, or a fault name.
    pub f: String,
    /// The key operated on (a tag, a digest, a package version).
    pub key: String,
    /// The value written (on invoke) or read (on ok).
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub value: Value,
    /// The member asked (1-based), 0 for nemesis events.
    pub node: usize,
    /// The `X-Wharf-Node` header of the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_by: Option<String>,
    /// Why it failed (status and error code or transport error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// sha256 of every body read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_sha256: Option<String>,
    /// Part of the final read phase (after heal).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub r#final: bool,
}

/// The process id of nemesis events.
pub const NEMESIS: u64 = u64::MAX;

/// The recorder shared by every worker: appends events to the file as they happen (so a run
/// that dies still leaves its history) and numbers them.
pub struct Recorder {
    started: Instant,
    inner: Mutex<(u64, BufWriter<std::fs::File>)>,
}

impl Recorder {
    pub fn create(path: &Path) -> anyhow::Result<Recorder> {
        let file = std::fs::File::create(path)?;
        Ok(Recorder {
            started: Instant::now(),
            inner: Mutex::new((0, BufWriter::new(file))),
        })
    }

    /// Milliseconds since the run started.
    pub fn now_ms(&self) -> f64 {
        self.started.elapsed().as_secs_f64() * 1000.0
    }

    /// Records `event`, stamping its index and time.
    pub fn record(&self, mut event: Event) {
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        event.index = guard.0;
        event.time_ms = self.now_ms();
        guard.0 += 1;
        if let Ok(line) = serde_json::to_string(&event) {
            let _ = writeln!(guard.1, "{line}");
        }
    }

    /// Records a nemesis event (`kind` Invoke when the fault starts, Ok when it is in place
    /// or healed).
    pub fn nemesis(&self, kind: Kind, f: &str, detail: &str) {
        self.record(Event {
            index: 0,
            time_ms: 0.0,
            process: NEMESIS,
            kind,
            workload: "nemesis".into(),
            f: f.into(),
            key: detail.into(),
            value: Value::Null,
            node: 0,
            served_by: None,
            error: None,
            body_sha256: None,
            r#final: false,
        });
    }

    pub fn flush(&self) {
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let _ = guard.1.flush();
    }
}

/// Reads a history file back.
pub fn load(path: &Path) -> anyhow::Result<Vec<Event>> {
    let file = std::io::BufReader::new(std::fs::File::open(path)?);
    let mut events = Vec::new();
    for (n, line) in file.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let event: Event = serde_json::from_str(&line)
            .map_err(|e| anyhow::anyhow!("{}:{}: {e}", path.display(), n + 1))?;
        events.push(event);
    }
    Ok(events)
}

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Fail,
    /// Indeterminate, or never completed (the run ended first).
    Info,
}

/// An operation: an invoke joined with its completion.
#[derive(Debug, Clone)]
pub struct Op {
    pub process: u64,
    pub workload: String,
    pub f: String,
    pub key: String,
    /// The invoke's value (what was written).
    pub arg: Value,
    /// The completion's value (what was read).
    pub ret: Value,
    pub outcome: Outcome,
    pub start_ms: f64,
    /// When it completed; `f64::INFINITY` for an op that never did.
    pub end_ms: f64,
    /// Positions of its two events in the history (`u64::MAX`: never completed).
    pub invoke_index: u64,
    pub complete_index: u64,
    pub node: usize,
    pub served_by: Option<String>,
    pub error: Option<String>,
    pub body_sha256: Option<String>,
    pub r#final: bool,
}

/// Pairs every invoke with its completion, in invoke order. Nemesis events are left out. A
/// delete that found nothing to delete (answered 404) changed nothing: it becomes a read that
/// returned "absent".
pub fn operations(events: &[Event]) -> Vec<Op> {
    let mut open: std::collections::HashMap<u64, usize> = Default::default();
    let mut ops: Vec<Op> = Vec::new();
    for e in events.iter().filter(|e| e.process != NEMESIS) {
        if e.kind == Kind::Invoke {
            open.insert(e.process, ops.len());
            ops.push(Op {
                process: e.process,
                workload: e.workload.clone(),
                f: e.f.clone(),
                key: e.key.clone(),
                arg: e.value.clone(),
                ret: Value::Null,
                outcome: Outcome::Info,
                start_ms: e.time_ms,
                end_ms: f64::INFINITY,
                invoke_index: e.index,
                complete_index: u64::MAX,
                node: e.node,
                served_by: None,
                error: None,
                body_sha256: None,
                r#final: e.r#final,
            });
        } else if let Some(i) = open.remove(&e.process) {
            let op = &mut ops[i];
            op.outcome = match e.kind {
                Kind::Ok => Outcome::Ok,
                Kind::Fail => Outcome::Fail,
                _ => Outcome::Info,
            };
            op.ret = e.value.clone();
            op.end_ms = e.time_ms;
            op.complete_index = e.index;
            op.served_by = e.served_by.clone();
            op.error = e.error.clone();
            op.body_sha256 = e.body_sha256.clone();
            if op.f == "delete" && op.ret == crate::workload::ABSENT {
                op.f = "read".into();
                op.ret = Value::Null;
            }
        }
    }
    ops
}
