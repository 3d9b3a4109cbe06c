//! The checkers on small hand-written histories: each must flag the anomaly it exists for and
//! accept the same history without it.

use serde_json::{Value, json};

use super::{Observations, StateHash, check_all};
use crate::history::{Event, Kind, NEMESIS};

/// Builds a history: `(process, kind, workload, f, key, value, node)` in order, 10 ms apart.
fn history(steps: &[(u64, Kind, &str, &str, &str, Value, usize)]) -> Vec<Event> {
    steps
        .iter()
        .enumerate()
        .map(
            |(i, (process, kind, workload, f, key, value, node))| Event {
                index: i as u64,
                time_ms: i as f64 * 10.0,
                process: *process,
                kind: *kind,
                workload: workload.to_string(),
                f: f.to_string(),
                key: key.to_string(),
                value: value.clone(),
                node: *node,
                served_by: None,
                error: None,
                body_sha256: None,
                r#final: false,
            },
        )
        .collect()
}

fn verdict(events: &[Event], workload: &str, checker: &str) -> super::Verdict {
    let observations = Observations {
        nodes: 1,
        state_hashes: vec![StateHash {
            node: 1,
            applied_index: 1,
            sha256: "x".into(),
            divergence: Value::Null,
        }],
        ..Observations::default()
    };
    check_all(events, &observations, &[workload.to_string()], 1000.0)
        .into_iter()
        .find(|v| v.checker == checker)
        .expect("the checker ran")
}

use Kind::{Info, Invoke, Ok as Done};

#[test]
fn a_stale_strong_read_is_not_linearizable() {
    let stale = history(&[
        (1, Invoke, "register", "write", "k", json!(1), 1),
        (1, Done, "register", "write", "k", json!(1), 1),
        (1, Invoke, "register", "write", "k", json!(2), 1),
        (1, Done, "register", "write", "k", json!(2), 1),
        (2, Invoke, "register", "read", "k", Value::Null, 2),
        (2, Done, "register", "read", "k", json!(1), 2),
    ]);
    assert!(!verdict(&stale, "register", "linearizable-register").valid);
    let fresh = history(&[
        (1, Invoke, "register", "write", "k", json!(1), 1),
        (1, Done, "register", "write", "k", json!(1), 1),
        (1, Invoke, "register", "write", "k", json!(2), 1),
        (1, Done, "register", "write", "k", json!(2), 1),
        (2, Invoke, "register", "read", "k", Value::Null, 2),
        (2, Done, "register", "read", "k", json!(2), 2),
    ]);
    assert!(verdict(&fresh, "register", "linearizable-register").valid);
}

#[test]
fn an_indeterminate_write_may_take_effect_later_but_not_undo_itself() {
    // Write 1 never answered: a read may see it, and a later read may still see it...
    let seen = history(&[
        (1, Invoke, "register", "write", "k", json!(1), 1),
        (1, Info, "register", "write", "k", Value::Null, 1),
        (2, Invoke, "register", "read", "k", Value::Null, 2),
        (2, Done, "register", "read", "k", Value::Null, 2),
        (2, Invoke, "register", "read", "k", Value::Null, 2),
        (2, Done, "register", "read", "k", json!(1), 2),
    ]);
    assert!(verdict(&seen, "register", "linearizable-register").valid);
    // ...but once seen it cannot vanish again.
    let flicker = history(&[
        (1, Invoke, "register", "write", "k", json!(1), 1),
        (1, Info, "register", "write", "k", Value::Null, 1),
        (2, Invoke, "register", "read", "k", Value::Null, 2),
        (2, Done, "register", "read", "k", json!(1), 2),
        (2, Invoke, "register", "read", "k", Value::Null, 2),
        (2, Done, "register", "read", "k", Value::Null, 2),
    ]);
    assert!(!verdict(&flicker, "register", "linearizable-register").valid);
}

#[test]
fn two_manifests_for_one_immutable_tag_are_flagged() {
    let two = history(&[
        (1, Invoke, "immutable", "push", "t", json!(1), 1),
        (1, Done, "immutable", "push", "t", json!(1), 1),
        (2, Invoke, "immutable", "push", "t", json!(2), 2),
        (2, Done, "immutable", "push", "t", json!(2), 2),
    ]);
    assert!(!verdict(&two, "immutable", "immutable-tags").valid);
    let unknown_after_ack = history(&[
        (1, Invoke, "immutable", "push", "t", json!(1), 1),
        (1, Done, "immutable", "push", "t", json!(1), 1),
        (2, Invoke, "immutable", "read", "t", Value::Null, 2),
        (2, Done, "immutable", "read", "t", Value::Null, 2),
    ]);
    assert!(!verdict(&unknown_after_ack, "immutable", "immutable-tags").valid);
    let one = history(&[
        (1, Invoke, "immutable", "push", "t", json!(1), 1),
        (1, Done, "immutable", "push", "t", json!(1), 1),
        (2, Invoke, "immutable", "read", "t", Value::Null, 2),
        (2, Done, "immutable", "read", "t", json!(1), 2),
    ]);
    assert!(verdict(&one, "immutable", "immutable-tags").valid);
}

#[test]
fn a_read_older_than_the_bound_is_stale() {
    let mut events = history(&[
        (1, Invoke, "bounded", "write", "k", json!(1), 1),
        (1, Done, "bounded", "write", "k", json!(1), 1),
        (1, Invoke, "bounded", "write", "k", json!(2), 1),
        (1, Done, "bounded", "write", "k", json!(2), 1),
        (2, Invoke, "bounded", "read", "k", Value::Null, 2),
        (2, Done, "bounded", "read", "k", json!(1), 2),
    ]);
    // Within the bound (the overwrite was acknowledged 20 ms before): fine.
    assert!(verdict(&events, "bounded", "bounded-staleness").valid);
    // Two seconds later: stale beyond a 1 s bound.
    events[4].time_ms += 2000.0;
    events[5].time_ms += 2000.0;
    assert!(!verdict(&events, "bounded", "bounded-staleness").valid);
}

#[test]
fn an_indeterminate_write_that_lands_late_is_not_stale() {
    // Write 1 times out; write 2 is acknowledged; seconds later write 1 lands and is read.
    let mut events = history(&[
        (1, Invoke, "bounded", "write", "k", json!(1), 1),
        (1, Info, "bounded", "write", "k", Value::Null, 1),
        (2, Invoke, "bounded", "write", "k", json!(2), 2),
        (2, Done, "bounded", "write", "k", json!(2), 2),
        (3, Invoke, "bounded", "read", "k", Value::Null, 3),
        (3, Done, "bounded", "read", "k", json!(1), 3),
    ]);
    events[4].time_ms += 8000.0;
    events[5].time_ms += 8000.0;
    assert!(verdict(&events, "bounded", "bounded-staleness").valid);
    // The same with write 1 acknowledged: stale by 8 s.
    events[1].kind = Done;
    assert!(!verdict(&events, "bounded", "bounded-staleness").valid);
}

#[test]
fn a_lost_blob_and_a_404_after_its_ack_are_flagged() {
    let blob = |kind: &str| json!({ "size": 1, "seed": 1, "kind": kind });
    let mut events = history(&[
        (1, Invoke, "blobs", "push", "sha256:aa", blob("good"), 1),
        (1, Done, "blobs", "push", "sha256:aa", Value::Null, 1),
        (2, Invoke, "blobs", "read", "sha256:aa", Value::Null, 1),
        (2, Done, "blobs", "read", "sha256:aa", Value::Null, 1),
    ]);
    events[2].r#final = true;
    let v = verdict(&events, "blobs", "blobs-set-full");
    assert!(!v.valid);
    assert!(v.counts.contains(&("lost".to_string(), 1)));
    assert!(!verdict(&events, "blobs", "no-404-for-acknowledged").valid);
    events[3].value = json!(true);
    assert!(verdict(&events, "blobs", "blobs-set-full").valid);
    assert!(verdict(&events, "blobs", "no-404-for-acknowledged").valid);
}

#[test]
fn an_acknowledged_wrong_digest_upload_is_flagged() {
    let events = history(&[
        (
            1,
            Invoke,
            "blobs",
            "push",
            "sha256:bb",
            json!({ "kind": "wrong-digest" }),
            1,
        ),
        (1, Done, "blobs", "push", "sha256:bb", Value::Null, 1),
    ]);
    let v = verdict(&events, "blobs", "blobs-set-full");
    assert!(!v.valid);
    assert!(
        v.counts
            .contains(&("refused-but-acknowledged".to_string(), 1))
    );
}

#[test]
fn an_index_missing_an_acknowledged_version_is_stale() {
    let events = history(&[
        (1, Invoke, "packages", "publish", "p@1.0.0", Value::Null, 1),
        (1, Done, "packages", "publish", "p@1.0.0", Value::Null, 1),
        (2, Invoke, "packages", "index", "p", Value::Null, 2),
        (2, Done, "packages", "index", "p", json!([]), 2),
    ]);
    let v = verdict(&events, "packages", "packages-set-full");
    assert!(v.counts.contains(&("stale-index-reads".to_string(), 1)));
    assert!(!v.valid);
}

#[test]
fn availability_counts_only_fault_free_phases() {
    let mut steps = Vec::new();
    // A fault phase full of failures, then a quiet phase that is fine.
    steps.push((NEMESIS, Invoke, "nemesis", "kill", "", Value::Null, 0));
    for p in 0..10 {
        steps.push((p, Invoke, "register", "read", "k", Value::Null, 1));
        steps.push((p, Kind::Fail, "register", "read", "k", Value::Null, 1));
    }
    steps.push((NEMESIS, Invoke, "nemesis", "heal", "kill", Value::Null, 0));
    steps.push((NEMESIS, Done, "nemesis", "heal", "kill", Value::Null, 0));
    let mut events = history(&steps);
    let healed = events.last().map(|e| e.time_ms).unwrap_or_default();
    for p in 0..10u64 {
        for (i, kind) in [Invoke, Done].into_iter().enumerate() {
            events.push(Event {
                index: events.len() as u64,
                time_ms: healed + 2000.0 + p as f64 * 10.0 + i as f64,
                process: 100 + p,
                kind,
                workload: "register".into(),
                f: "read".into(),
                key: "k".into(),
                value: Value::Null,
                node: 1,
                served_by: None,
                error: None,
                body_sha256: None,
                r#final: false,
            });
        }
    }
    assert!(verdict(&events, "register", "fault-free-availability").valid);
    // The same failures in a fault-free phase fail the run.
    let quiet_failures: Vec<Event> = events
        .iter()
        .filter(|e| e.process != NEMESIS)
        .cloned()
        .collect();
    assert!(!verdict(&quiet_failures, "register", "fault-free-availability").valid);
}
