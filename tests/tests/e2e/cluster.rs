//! Multi-process clusters (issue 4): `wharf dev --nodes 3`, joins and membership changes through
//! the CLI, writes on any node, failover after kill -9, snapshot catch-up, identity rules.
//! Blob bytes across nodes are tested in `replication.rs`.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use wharf_tests::cluster::{ClusterOpts, TestCluster};
use wharf_tests::ocihttp::{OciHttp, image_manifest};
use wharf_tests::server::{free_addr, signal, wharf_bin};
use wharf_tests::sha256_digest;
use wharf_tests::{init_logging, run};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// The cluster version this build supports (and a fresh cluster reaches).
const CLUSTER_VERSION: u64 = 5;

/// Pushes a config and one layer into `name` on `http`; returns a manifest referencing them.
fn manifest_with_blobs(http: &OciHttp, name: &str, seed: &str) -> Vec<u8> {
    let config = format!("{{\"seed\":\"{seed}\"}}").into_bytes();
    let layer = format!("layer {seed}").into_bytes();
    let c = http.push_blob(name, &config);
    let l = http.push_blob(name, &layer);
    image_manifest(
        ("application/vnd.oci.image.config.v1+json", &c, config.len()),
        &[("application/vnd.oci.image.layer.v1.tar", &l, layer.len())],
    )
}

/// A directory `<root>/<name>` with the config of a node that would join `cluster` through
/// its first member (the token comes with the command).
fn stranger(cluster: &TestCluster, name: &str) -> std::path::PathBuf {
    let dir = cluster.root().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let config = format!(
        "[server]\nlisten = \"{}\"\ndata_dir = \"data\"\n[cluster]\nlisten = \"{}\"\n\
         join = \"{}\"\n",
        free_addr(),
        free_addr(),
        cluster.members[0].cluster
    );
    std::fs::write(dir.join("wharf.toml"), config).unwrap();
    dir
}

/// Ctrl-C for a `wharf dev` process when its test fails half-way, so that no node outlives the
/// test (`wharf dev` stops its nodes on SIGINT).
struct StopDevOnPanic(u32);

impl Drop for StopDevOnPanic {
    fn drop(&mut self) {
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", self.0)).unwrap_or_default();
        if std::thread::panicking() && String::from_utf8_lossy(&cmdline).contains("wharf") {
            signal(self.0, "INT");
        }
    }
}

/// Every tag of `name`, page by page.
fn tags(http: &OciHttp, name: &str) -> BTreeSet<String> {
    let mut all = BTreeSet::new();
    let mut last = String::new();
    loop {
        let r = http.call("GET", &format!("/v2/{name}/tags/list?n=500&last={last}"));
        assert_eq!(r.status, 200, "{}: {}", r.what, r.text_excerpt());
        let page: Vec<String> = r.json()["tags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t.as_str().map(str::to_string))
            .collect();
        let done = page.len() < 500;
        if let Some(l) = page.last() {
            last = l.clone();
        }
        all.extend(page);
        if done {
            return all;
        }
    }
}

/// `wharf dev --nodes 3` forms a three-node cluster with the documented regions and pid files,
/// and Ctrl-C (SIGINT) stops all three.
#[test]
fn dev_nodes_3_starts_a_cluster_in_one_command() {
    init_logging();
    let dir = tempfile::tempdir().unwrap();
    // Node k uses the base ports + 100·(k−1); find a base whose six ports are free.
    let base: u16 = loop {
        let p: u16 = free_addr().rsplit(':').next().unwrap().parse().unwrap();
        if p < 60_000
            && [0u16, 1, 100, 101, 200, 201]
                .iter()
                .all(|o| std::net::TcpListener::bind(("127.0.0.1", p + o)).is_ok())
        {
            break p;
        }
    };
    let log = std::fs::File::create(dir.path().join("dev.log")).unwrap();
    let mut dev = Command::new(wharf_bin())
        .args([
            "dev",
            "--nodes",
            "3",
            "--listen",
            &format!("127.0.0.1:{base}"),
            "--data-dir",
        ])
        .arg(dir.path().join("d"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let _stop = StopDevOnPanic(dev.id());
    let out = || std::fs::read_to_string(dir.path().join("dev.log")).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(90);
    while !out().contains("3 nodes on loopback") {
        assert!(
            dev.try_wait().unwrap().is_none(),
            "wharf dev exited:\n{}",
            out()
        );
        assert!(Instant::now() < deadline, "cluster not formed:\n{}", out());
        std::thread::sleep(Duration::from_millis(200));
    }
    for k in 0..3u16 {
        assert!(
            out().contains(&format!("http://127.0.0.1:{}", base + 100 * k)),
            "{}",
            out()
        );
    }
    let pids: Vec<u32> = (1..=3)
        .map(|k| {
            let p = dir.path().join(format!("d/node{k}/wharf.pid"));
            std::fs::read_to_string(&p).unwrap().trim().parse().unwrap()
        })
        .collect();

    let status = Command::new(wharf_bin())
        .args([
            "cluster",
            "status",
            "--json",
            "--endpoint",
            &format!("http://127.0.0.1:{}", base + 200),
        ])
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let v: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(v["voters"].as_array().unwrap().len(), 3, "{v}");
    let regions: BTreeSet<&str> = v["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["region"].as_str().unwrap())
        .collect();
    assert_eq!(regions, BTreeSet::from(["us-east", "eu-west", "ap-south"]));

    // A write on node 3 is visible on node 1 right after the ack.
    let n3 = OciHttp::at(&format!("http://127.0.0.1:{}", base + 200));
    let n1 = OciHttp::at(&format!("http://127.0.0.1:{base}"));
    let m = manifest_with_blobs(&n3, "dev/app", "dev");
    n3.put_manifest("dev/app", "v1", Some(OCI_MANIFEST), &m)
        .expect(201);
    assert!(tags(&n1, "dev/app").contains("v1"));

    // Every member reports the version its binary supports, and the cluster runs the newest
    // one by itself (DESIGN.md §1.1).
    let cluster_status = || -> Value {
        let out = Command::new(wharf_bin())
            .args(["cluster", "status", "--json", "--endpoint"])
            .arg(format!("http://127.0.0.1:{base}"))
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = cluster_status();
        let reported = v["members"]
            .as_array()
            .is_some_and(|ms| ms.iter().all(|m| m["supported_version"] == CLUSTER_VERSION));
        if v["cluster_version"] == CLUSTER_VERSION && reported {
            assert!(v["divergence"].is_null(), "{v}");
            break;
        }
        assert!(Instant::now() < deadline, "cluster version not raised: {v}");
        std::thread::sleep(Duration::from_millis(200));
    }

    signal(dev.id(), "INT");
    let deadline = Instant::now() + Duration::from_secs(60);
    while dev.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "wharf dev did not stop:\n{}",
            out()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .unwrap_or_default()
                    .contains(") Z "),
            "node process {pid} still running after Ctrl-C"
        );
    }
}

/// Writes go to every node while the leader is killed with -9: a new leader takes over, writes
/// continue, and every acknowledged tag is on every surviving node.
#[test]
fn killing_the_leader_loses_no_acknowledged_write() {
    init_logging();
    let mut cluster = TestCluster::start(3, ClusterOpts::default());
    let name = "ha/app";
    let manifest = manifest_with_blobs(&cluster.members[0].http(), name, "ha");
    // The manifest's blobs must be linked in the repository on whichever node takes the write:
    // they are metadata, so one upload (on node 1) links them cluster-wide.
    let urls: Vec<String> = cluster.members.iter().map(|m| m.url()).collect();
    let acked = Arc::new(Mutex::new(Vec::<(String, Instant)>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, stop, manifest) = (acked.clone(), stop.clone(), manifest.clone());
        std::thread::spawn(move || {
            let client = reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap();
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let tag = format!("t{n}");
                let url = &urls[n % urls.len()];
                let r = client
                    .put(format!("{url}/v2/{name}/manifests/{tag}"))
                    .header("Content-Type", OCI_MANIFEST)
                    .body(manifest.clone())
                    .send();
                match r {
                    Ok(r) if r.status().as_u16() == 201 => {
                        acked.lock().unwrap().push((tag, Instant::now()));
                    }
                    Ok(r) => assert!(
                        r.status().as_u16() == 503,
                        "a write got {} (only 201 or 503 are acceptable)",
                        r.status()
                    ),
                    Err(_) => {} // the killed node's connection
                }
            }
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    let leader = cluster.leader();
    let before = acked.lock().unwrap().len();
    assert!(before > 0, "no write was acknowledged before the kill");
    let killed_at = Instant::now();
    cluster.kill9(leader);
    let new_leader = cluster.leader();
    assert_ne!(new_leader, leader);
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    let after_kill = acked.iter().filter(|(_, at)| *at > killed_at).count();
    assert!(
        after_kill > 5,
        "only {after_kill} writes were acknowledged after the kill"
    );
    let want: BTreeSet<String> = acked.into_iter().map(|(t, _)| t).collect();
    for m in cluster.running() {
        let have = tags(&m.http(), name);
        let missing: Vec<_> = want.difference(&have).collect();
        assert!(
            missing.is_empty(),
            "node{} lost acknowledged tags {missing:?}",
            m.index
        );
    }
    // The killed leader comes back and catches up.
    cluster.restart(leader);
    let back = tags(&cluster.members[leader].http(), name);
    assert!(want.is_subset(&back));
}

/// A learner joins while writes run, is promoted by `wharf cluster promote --yes`, and an old
/// voter is removed with `wharf cluster remove --yes`; writes keep succeeding throughout.
#[test]
fn learner_joins_under_load_is_promoted_and_an_old_voter_removed() {
    init_logging();
    let mut cluster = TestCluster::start(3, ClusterOpts::default());
    let name = "grow/app";
    let manifest = manifest_with_blobs(&cluster.members[0].http(), name, "grow");
    let written = std::cell::RefCell::new(BTreeSet::new());
    let writes = |cluster: &TestCluster, from: usize, count: usize, prefix: &str| {
        for n in 0..count {
            let member = &cluster.members[(from + n) % cluster.members.len()];
            if !member.is_running() {
                continue;
            }
            let tag = format!("{prefix}{n}");
            member
                .http()
                .put_manifest(name, &tag, Some(OCI_MANIFEST), &manifest)
                .expect(201);
            written.borrow_mut().insert(tag);
        }
    };
    writes(&cluster, 0, 30, "a");
    let learner = cluster.add_learner();
    let id = cluster.members[learner].node_id;
    assert_eq!(id, 4, "ids are minted in order");
    let status = cluster.status(1);
    let role = status["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == id)
        .map(|m| m["role"].clone());
    assert_eq!(role, Some(Value::from("learner")), "{status}");
    writes(&cluster, 1, 30, "b");

    // Without --yes nothing changes; with it the learner becomes a voter.
    let shown = cluster.cli(
        &cluster.members[2],
        &["cluster", "promote", &id.to_string()],
    );
    let shown = String::from_utf8(shown.stdout).unwrap();
    assert!(shown.contains("voters after: {1, 2, 3, 4}"), "{shown}");
    assert_eq!(cluster.status(0)["voters"].as_array().unwrap().len(), 3);
    cluster.promote(2, id);
    assert_eq!(cluster.status(0)["voters"], serde_json::json!([1, 2, 3, 4]));
    writes(&cluster, 2, 30, "c");

    let removed = cluster.cli(
        &cluster.members[learner],
        &["cluster", "remove", "1", "--yes"],
    );
    assert!(String::from_utf8_lossy(&removed.stdout).contains("done"));
    cluster.stop(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = cluster.status(1);
        if s["voters"] == serde_json::json!([2, 3, 4])
            && s["leader"].as_u64().is_some_and(|l| l != 1)
        {
            break;
        }
        assert!(Instant::now() < deadline, "{s}");
        std::thread::sleep(Duration::from_millis(200));
    }
    writes(&cluster, 1, 30, "d");
    let have = tags(&cluster.members[learner].http(), name);
    assert_eq!(have, *written.borrow());
    assert!(have.len() > 100);

    // The removed node may not come back under its id: the others refuse it, and its own
    // state says it is no longer a member once it learned of the removal, or it finds no
    // leader that accepts it. Either way it never becomes ready again.
    let status = cluster.status(1);
    assert!(
        !status["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == 1),
        "{status}"
    );
}

/// A node that missed more entries than the others keep in their logs catches up from a
/// snapshot, and then reports the same state hash as the others at the same applied index.
#[test]
fn lagging_node_catches_up_from_a_snapshot() {
    init_logging();
    let mut cluster = TestCluster::start(
        3,
        ClusterOpts {
            snapshot_every_entries: 40,
            log_entries_kept: 5,
            ..ClusterOpts::default()
        },
    );
    let name = "snap/app";
    let http = cluster.members[0].http();
    let manifest = manifest_with_blobs(&http, name, "snap");
    // Every member has reported its version and the cluster runs the newest one, which lets
    // nodes report state hashes at checkpoints.
    let deadline = Instant::now() + Duration::from_secs(30);
    while (0..3).any(|i| cluster.metric(i, "wharf_cluster_version") < 2) {
        assert!(
            Instant::now() < deadline,
            "the cluster version was not raised"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let applied_before = cluster.state_hash(2).0;
    cluster.stop(2);
    for n in 0..150 {
        http.put_manifest(name, &format!("s{n}"), Some(OCI_MANIFEST), &manifest)
            .expect(201);
    }
    let leader = cluster.leader();
    let purged = cluster.metric(leader, "wharf_raft_purged_index");
    assert!(
        purged > applied_before,
        "the log was not compacted ({purged} ≤ {applied_before})"
    );
    cluster.restart(2);
    assert_eq!(tags(&cluster.members[2].http(), name).len(), 150);
    assert!(cluster.metric(2, "wharf_raft_snapshot_index") > applied_before);

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let hashes: Vec<(u64, String)> = (0..3).map(|i| cluster.state_hash(i)).collect();
        if hashes.iter().all(|h| h.0 == hashes[0].0) {
            assert!(
                hashes.iter().all(|h| h.1 == hashes[0].1),
                "state hashes differ at index {}: {hashes:?}",
                hashes[0].0
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "applied indexes never met: {hashes:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The nodes also compared their states by themselves at checkpoint indexes (every 40
    // entries here): reports from more than one node, all equal, and no divergence anywhere.
    let report = cluster.state_hash_report(2);
    let compared = report["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|cp| cp["hashes"].as_object().unwrap().len() >= 2)
        .count();
    assert!(compared > 0, "no checkpoint was compared: {report}");
    for i in 0..3 {
        assert!(cluster.state_hash_report(i)["divergence"].is_null());
        assert_eq!(cluster.metric(i, "wharf_cluster_state_divergence"), 0);
        assert_eq!(cluster.metric(i, "wharf_cluster_version"), CLUSTER_VERSION);
    }
}

/// A tag moved on node 1 in a (default, `strong`) repository: node 3 never serves the old
/// digest after the move was acknowledged.
#[test]
fn a_moved_tag_is_never_stale_on_another_node() {
    init_logging();
    let cluster = TestCluster::start(3, ClusterOpts::default());
    let (n1, n3) = (cluster.members[0].http(), cluster.members[2].http());
    let name = "strong/app";
    for round in 0..20 {
        let m = manifest_with_blobs(&n1, name, &format!("r{round}"));
        let digest = sha256_digest(&m);
        n1.put_manifest(name, "latest", Some(OCI_MANIFEST), &m)
            .expect(201);
        let head = n3.call("HEAD", &format!("/v2/{name}/manifests/latest"));
        assert_eq!(head.status, 200);
        assert_eq!(
            head.must_header("docker-content-digest"),
            digest,
            "round {round}"
        );
    }
}

/// A node whose raft state was restored from an older copy refuses to start, and so does a
/// wiped one: neither comes back under its old id. A bad join token is refused.
#[test]
fn a_wiped_node_cannot_rejoin_under_its_old_id() {
    init_logging();
    let mut cluster = TestCluster::start(3, ClusterOpts::default());
    let raft = cluster.members[2].dir.join("data/raft");
    let backup = cluster.members[2].dir.join("raft-backup");
    cluster.stop(2);
    let copied = Command::new("cp")
        .arg("-a")
        .arg(&raft)
        .arg(&backup)
        .status()
        .unwrap();
    assert!(copied.success());
    cluster.restart(2);
    let http = cluster.members[0].http();
    let m = manifest_with_blobs(&http, "restore/app", "restore");
    for n in 0..5 {
        http.put_manifest("restore/app", &format!("v{n}"), Some(OCI_MANIFEST), &m)
            .expect(201);
    }
    let n3 = cluster.members[2].http();
    let deadline = Instant::now() + Duration::from_secs(20);
    while tags(&n3, "restore/app").len() < 5 {
        assert!(Instant::now() < deadline, "node 3 did not catch up");
        std::thread::sleep(Duration::from_millis(100));
    }
    cluster.stop(2);
    std::fs::remove_dir_all(&raft).unwrap();
    std::fs::rename(&backup, &raft).unwrap();
    let out = cluster.start_expecting_exit(2);
    assert!(
        !out.status.success(),
        "a node restored from an old copy started"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("behind"), "{err}");

    std::fs::remove_dir_all(&raft).unwrap();
    let out = cluster.start_expecting_exit(2);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("raft state") && err.contains("missing"),
        "{err}"
    );

    // A token that was never issued admits nobody.
    let (status, body) = cluster.post(
        0,
        "/api/v1/cluster/membership",
        serde_json::json!({"action": "promote", "node_id": 99, "dry_run": true}),
    );
    assert_eq!(status, 409, "{body}");
    let dir = stranger(&cluster, "stranger");
    let cluster_id = cluster.status(0)["cluster_id"]
        .as_str()
        .unwrap()
        .to_string();
    let out = Command::new(wharf_bin())
        .args(["serve", "--config"])
        .arg(dir.join("wharf.toml"))
        .env(
            "WHARF_JOIN_TOKEN",
            format!("wharf-join.{cluster_id}.neverissued"),
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("join token refused"), "{err}");
}

/// Every file under cluster-configs/ passes `wharf config check`.
#[test]
fn every_cluster_config_passes_wharf_config_check() {
    init_logging();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../cluster-configs");
    let mut dirs = vec![root];
    let mut checked = 0;
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "toml") {
                let out = run(Command::new(wharf_bin())
                    .args(["config", "check"])
                    .arg(&path));
                assert!(out.contains(": ok"), "{}: {out}", path.display());
                checked += 1;
            }
        }
    }
    assert!(checked >= 5, "only {checked} configs found");
}

/// A cluster with mutual TLS: `wharf cluster init` creates the CA, joining nodes get
/// certificates through their token, keys are private to the node, the certificate expiry is
/// exported, writes go through any node, and a token naming another CA is refused at the
/// handshake. `wharf cluster rotate-certs` then moves every member to a new CA, and a member
/// restarted after `--finish` comes back on what it stored.
#[test]
fn a_tls_cluster_forms_takes_writes_and_refuses_a_foreign_ca() {
    init_logging();
    let mut cluster = TestCluster::start(
        3,
        ClusterOpts {
            tls: true,
            ..ClusterOpts::default()
        },
    );
    for m in &cluster.members {
        let key = m.dir.join("data/tls/node.key");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&key).unwrap().permissions(),
        );
        assert_eq!(mode & 0o077, 0, "{} is readable by others", key.display());
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expiry = cluster.metric(2, "wharf_cluster_cert_expiry_timestamp_seconds");
    assert!(expiry > now + 300 * 24 * 3600, "expiry {expiry}");
    let token = cluster.join_token();
    assert_eq!(
        token.split('.').count(),
        4,
        "a TLS join token carries the CA: {token}"
    );

    let (n1, n3) = (cluster.members[0].http(), cluster.members[2].http());
    let m = manifest_with_blobs(&n3, "tls/app", "tls");
    n3.put_manifest("tls/app", "v1", Some(OCI_MANIFEST), &m)
        .expect(201);
    assert!(tags(&n1, "tls/app").contains("v1"));

    // Another cluster's CA in an otherwise well-formed token: the TLS handshake fails.
    let other = stranger(&cluster, "other");
    let foreign_ca = {
        let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
        // Flip one character of the CA: base64 that decodes to a certificate no one issued.
        let ca = parts[3].clone();
        let flipped: String = ca
            .char_indices()
            .map(|(i, c)| {
                if i == ca.len() / 2 {
                    if c == 'A' { 'B' } else { 'A' }
                } else {
                    c
                }
            })
            .collect();
        parts[3] = flipped;
        parts.join(".")
    };
    let out = Command::new(wharf_bin())
        .args(["serve", "--config"])
        .arg(other.join("wharf.toml"))
        .env("WHARF_JOIN_TOKEN", &foreign_ca)
        .output()
        .unwrap();
    assert!(!out.status.success(), "a node joined with a forged CA");
    assert!(!other.join("data/node.toml").exists());

    let ca_bundle =
        |i: usize| std::fs::read_to_string(cluster.members[i].dir.join("data/tls/ca.pem")).unwrap();
    let old_ca = ca_bundle(0);
    let cas = |pem: &str| pem.matches("BEGIN CERTIFICATE").count();
    let out = cluster.cli(&cluster.members[1], &["cluster", "rotate-certs", "--yes"]);
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("from the new CA"), "{printed}");
    for i in 0..3 {
        let bundle = ca_bundle(i);
        assert_eq!(cas(&bundle), 2, "node {} trusts old and new", i + 1);
        assert!(
            !bundle.starts_with(&old_ca),
            "node {} still signs with the old CA",
            i + 1
        );
    }
    n3.put_manifest("tls/app", "v2", Some(OCI_MANIFEST), &m)
        .expect(201);
    cluster.cli(
        &cluster.members[2],
        &["cluster", "rotate-certs", "--finish", "--yes"],
    );
    let new_ca = ca_bundle(0);
    for i in 0..3 {
        assert_eq!(
            ca_bundle(i),
            new_ca,
            "node {} trusts exactly the new CA",
            i + 1
        );
        assert_eq!(cas(&new_ca), 1);
    }
    cluster.stop(1);
    n3.put_manifest("tls/app", "v3", Some(OCI_MANIFEST), &m)
        .expect(201);
    cluster.restart(1);
    let n2 = cluster.members[1].http();
    assert!(tags(&n2, "tls/app").contains("v3"));
}

/// DESIGN.md §1.5c and §1.6 on a node cut off from the others (they are paused with SIGSTOP):
/// a `bounded` repository's tags are served from local state until `read.max_staleness`
/// (1 s) has passed, then refused with 503; a `strong` repository's are refused.
#[test]
fn bounded_reads_stay_local_only_within_the_staleness_bound() {
    init_logging();
    let cluster = TestCluster::start(3, ClusterOpts::default());
    let m1 = &cluster.members[0];
    cluster.cli(
        m1,
        &[
            "repo",
            "create",
            "fast",
            "--format",
            "oci",
            "--consistency",
            "bounded",
        ],
    );
    cluster.cli(m1, &["repo", "create", "safe", "--format", "oci"]);
    let repos = cluster.cli(m1, &["repo", "list", "--json"]);
    let repos: Value = serde_json::from_slice(&repos.stdout).unwrap();
    assert!(
        repos.to_string().contains("\"consistency\":\"bounded\""),
        "{repos}"
    );
    for repo in ["fast", "safe"] {
        let name = format!("{repo}/app");
        let m = manifest_with_blobs(&m1.http(), &name, repo);
        m1.http()
            .put_manifest(&name, "v1", Some(OCI_MANIFEST), &m)
            .expect(201);
    }
    let n3 = cluster.members[2].http();
    assert!(tags(&n3, "fast/app").contains("v1"));
    assert!(tags(&n3, "safe/app").contains("v1"));

    cluster.signal(0, "STOP");
    cluster.signal(1, "STOP");
    let paused = Instant::now();
    let fresh = n3.call("GET", "/v2/fast/app/tags/list");
    assert!(
        paused.elapsed() < Duration::from_millis(800),
        "the check came too late"
    );
    assert_eq!(
        fresh.status,
        200,
        "a bounded read within the bound: {}",
        fresh.text_excerpt()
    );
    std::thread::sleep(Duration::from_millis(1500));
    let stale = n3.call("GET", "/v2/fast/app/tags/list");
    assert_eq!(
        stale.status,
        503,
        "a bounded read past the bound: {}",
        stale.text_excerpt()
    );
    let strong = n3.call("GET", "/v2/safe/app/tags/list");
    assert_eq!(
        strong.status,
        503,
        "a strong read without a leader: {}",
        strong.text_excerpt()
    );

    cluster.signal(0, "CONT");
    cluster.signal(1, "CONT");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = n3.call("GET", "/v2/fast/app/tags/list");
        if r.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "never recovered: {}", r.status);
        std::thread::sleep(Duration::from_millis(200));
    }
}
