//! Blobs across the cluster (issue 5): copies to `min_copies` members before the ack, read-through
//! from another node, convergence of a node that was away, corrupt copies never served and
//! repaired, 503 when too few members can take a copy.

use std::time::{Duration, Instant};

use serde_json::Value;
use wharf_tests::cluster::{ClusterOpts, Member, TestCluster};
use wharf_tests::oci::Layout;
use wharf_tests::{ClientEnv, init_logging, run, sha256_digest};

/// A layer this size spans two 4 MiB chunks.
pub(crate) const TWO_CHUNKS: usize = 6 * 1024 * 1024;

/// `GET /api/v1/blobs/{digest}` on member `i`: the node ids holding verified copies.
pub(crate) fn holders(cluster: &TestCluster, i: usize, digest: &str) -> Vec<u64> {
    let url = format!("{}/api/v1/blobs/{digest}", cluster.members[i].url());
    let resp = reqwest::blocking::get(url).unwrap();
    if resp.status() == 404 {
        return Vec::new();
    }
    let v: Value = resp.json().unwrap();
    v["holders"]
        .as_array()
        .unwrap_or_else(|| panic!("no holders in {v}"))
        .iter()
        .map(|h| h.as_u64().unwrap())
        .collect()
}

/// Waits until `check` holds, or fails with `what`.
pub(crate) fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The path of blob `digest` in member `m`'s data directory.
pub(crate) fn blob_file(m: &Member, digest: &str) -> std::path::PathBuf {
    let hex = digest.trim_start_matches("sha256:");
    m.dir.join("data/blobs/sha256").join(&hex[..2]).join(hex)
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut data = vec![0u8; n];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut data);
    data
}

/// Flips one byte of a stored blob file in place (as a failing disk would).
fn flip_byte(path: &std::path::Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    file.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= 0x5a;
    file.write_all_at(&b, offset).unwrap();
    file.sync_all().unwrap();
}

/// Writes an image with a two-chunk layer and pushes it with skopeo to `docker://<client>/<reference>`
/// (`name:tag`, tag `v1`); returns it and every digest involved (manifest, config, layers).
pub(crate) fn skopeo_push_two_chunk_image(
    env: &ClientEnv,
    client: &str,
    reference: &str,
) -> (wharf_tests::oci::TestImage, Vec<String>) {
    let layout = env.join("layout");
    let image = wharf_tests::oci::write_layout(&layout, "v1", TWO_CHUNKS);
    run(env
        .skopeo()
        .args(["copy", "--preserve-digests", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:v1", layout.display()))
        .arg(format!("docker://{client}/{reference}")));
    let mut digests = vec![image.manifest.digest.clone(), image.config.digest.clone()];
    digests.extend(image.layers.iter().map(|l| l.digest.clone()));
    (image, digests)
}

/// Waits until member 0 records node `id` as holding every digest, and checks the files exist
/// on member `i` (which has that id).
fn wait_until_held_by(cluster: &TestCluster, i: usize, digests: &[String], what: &str) {
    let id = cluster.members[i].node_id;
    for digest in digests {
        wait_until(
            &format!("node {id} holds {digest} {what}"),
            Duration::from_secs(30),
            || holders(cluster, 0, digest).contains(&id),
        );
        assert!(blob_file(&cluster.members[i], digest).is_file());
    }
}

/// GETs `path` from member `m`; `Ok(bytes)` only if the whole body arrived.
fn get_body(m: &Member, path: &str, range: Option<&str>) -> (u16, Result<Vec<u8>, String>) {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let mut rb = client.get(format!("{}{path}", m.url()));
    if let Some(range) = range {
        rb = rb.header("Range", range);
    }
    let resp = rb.send().unwrap();
    let status = resp.status().as_u16();
    (
        status,
        resp.bytes()
            .map(|b| b.to_vec())
            .map_err(|e| format!("{e:?}")),
    )
}

/// skopeo pushes to node 1 of a mutual-TLS cluster; right after the ack node 3 serves the
/// image byte for byte; at least `min_copies` (2) members hold every blob at the ack; after
/// node 1 is killed with -9, nodes 2 and 3 both hold every blob without anyone pulling from
/// node 2, and node 2 serves the image.
#[test]
fn skopeo_push_on_one_node_pulls_from_another_and_survives_its_loss() {
    init_logging();
    let mut cluster = TestCluster::start(
        3,
        ClusterOpts {
            tls: true,
            ..ClusterOpts::default()
        },
    );
    let env = ClientEnv::new(&cluster.members[0].client);
    let (image, digests) =
        skopeo_push_two_chunk_image(&env, &cluster.members[0].client, "team/app:v1");

    tracing::info!("--- pulled from node 3 right after the ack: identical");
    let pull = |from: &Member, dir: &str| {
        let out = env.join(dir);
        run(env
            .skopeo()
            .args(["copy", "--preserve-digests", "--src-tls-verify=false"])
            .arg(format!("docker://{}/team/app:v1", from.client))
            .arg(format!("oci:{}:v1", out.display())));
        let pulled = Layout::open(&out);
        let back = pulled.image("v1");
        assert_eq!(back.manifest.digest, image.manifest.digest);
        assert_eq!(back.manifest_bytes, image.manifest_bytes);
        for layer in &image.layers {
            let bytes = pulled.blob(&layer.digest);
            assert_eq!(sha256_digest(&bytes), layer.digest, "layer bytes");
        }
    };
    pull(&cluster.members[2], "from-node3");

    tracing::info!("--- every blob was on two members when the push was acknowledged");
    for digest in &digests {
        wait_until(
            &format!("{digest} is recorded on 2 members"),
            Duration::from_secs(10),
            || holders(&cluster, 0, digest).len() >= 2,
        );
    }

    tracing::info!("--- kill -9 node 1: nodes 2 and 3 end up holding everything, unasked");
    let (id2, id3) = (cluster.members[1].node_id, cluster.members[2].node_id);
    cluster.kill9(0);
    for digest in &digests {
        wait_until(
            &format!("{digest} is held by nodes {id2} and {id3}"),
            Duration::from_secs(30),
            || {
                let h = holders(&cluster, 1, digest);
                h.contains(&id2) && h.contains(&id3)
            },
        );
        assert!(blob_file(&cluster.members[1], digest).is_file());
        assert!(blob_file(&cluster.members[2], digest).is_file());
    }
    // A tag read is linearizable: it waits for a leader, which node 1 may have been.
    let id1 = cluster.members[0].node_id;
    wait_until(
        "a leader other than node 1",
        Duration::from_secs(30),
        || {
            let url = format!("{}/api/v1/cluster", cluster.members[1].url());
            reqwest::blocking::get(url)
                .ok()
                .and_then(|r| r.json::<Value>().ok())
                .and_then(|v| v["leader"].as_u64())
                .is_some_and(|leader| leader != id1)
        },
    );
    pull(&cluster.members[1], "from-node2");
}

/// Pushes three small images to `name` through member 0; returns every digest involved.
pub(crate) fn push_three_images(cluster: &TestCluster, name: &str) -> Vec<String> {
    let http = cluster.members[0].http();
    let mut digests = Vec::new();
    for i in 0..3 {
        let layer = random_bytes(300 * 1024 + i);
        let config = format!("{{\"n\":{i},\"name\":\"{name}\"}}").into_bytes();
        let l = http.push_blob(name, &layer);
        let c = http.push_blob(name, &config);
        let manifest = wharf_tests::ocihttp::image_manifest(
            ("application/vnd.oci.image.config.v1+json", &c, config.len()),
            &[("application/vnd.oci.image.layer.v1.tar", &l, layer.len())],
        );
        http.put_manifest(
            name,
            &format!("v{i}"),
            Some("application/vnd.oci.image.manifest.v1+json"),
            &manifest,
        )
        .expect(201);
        digests.extend([l, c, sha256_digest(&manifest)]);
    }
    digests
}

/// A node that was down, or cut off (stopped with SIGSTOP, so it neither answers nor learns
/// anything, then resumed), while images were pushed fetches every blob afterwards — checked by
/// its holdings and its disk, without a single read on it.
#[test]
fn a_node_that_was_away_converges_without_reads() {
    init_logging();
    let mut cluster = TestCluster::start(3, ClusterOpts::default());
    cluster.kill9(2);
    let digests = push_three_images(&cluster, "away/app");
    let id3 = cluster.members[2].node_id;
    for digest in &digests {
        assert!(!holders(&cluster, 0, digest).contains(&id3));
    }
    cluster.restart(2);
    wait_until_held_by(&cluster, 2, &digests, "after its restart");
    // The gauge is set at the end of each resync pass: it reaches 0 with the next one.
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster.metric(2, "wharf_replication_backlog") != 0 {
        assert!(
            Instant::now() < deadline,
            "node 3's backlog stayed at {} after it held every blob",
            cluster.metric(2, "wharf_replication_backlog")
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    tracing::info!("--- cut off without a restart: SIGSTOP, push, SIGCONT");
    cluster.signal(2, "STOP");
    let digests = push_three_images(&cluster, "cut/app");
    for digest in &digests {
        assert!(!holders(&cluster, 0, digest).contains(&id3));
    }
    cluster.signal(2, "CONT");
    wait_until_held_by(&cluster, 2, &digests, "after the cut");
}

/// A flipped byte in a stored copy is never served: a read that meets it first is served from
/// a good copy, one that meets it later is aborted; the copy is repaired, and the scrubber
/// repairs one that nobody reads.
#[test]
fn a_corrupt_copy_is_never_served_and_is_repaired() {
    init_logging();
    let cluster = TestCluster::start(
        3,
        ClusterOpts {
            extra_config: "[replication]\nscrub_interval_secs = 2\n".into(),
            ..ClusterOpts::default()
        },
    );
    let data = random_bytes(TWO_CHUNKS);
    let digest = cluster.members[0].http().push_blob("corrupt/app", &data);
    let ids: Vec<u64> = cluster.members.iter().map(|m| m.node_id).collect();
    wait_until("every node holds the blob", Duration::from_secs(30), || {
        let h = holders(&cluster, 0, &digest);
        ids.iter().all(|id| h.contains(id))
    });
    let path = format!("/v2/corrupt/app/blobs/{digest}");
    let repaired = |m: &Member| std::fs::read(blob_file(m, &digest)).is_ok_and(|b| b == data);

    tracing::info!("--- node 2: first chunk damaged; whole read and range read");
    let n2 = &cluster.members[1];
    flip_byte(&blob_file(n2, &digest), 100);
    let (status, body) = get_body(n2, &path, None);
    if let Ok(body) = &body {
        assert_eq!(status, 200);
        assert!(
            body == &data,
            "node 2 completed a response with the wrong bytes"
        );
    }
    wait_until("node 2's copy is repaired", Duration::from_secs(30), || {
        repaired(n2)
    });
    flip_byte(&blob_file(n2, &digest), 50);
    let (status, body) = get_body(n2, &path, Some("bytes=0-999"));
    if let Ok(body) = &body {
        assert_eq!(status, 206);
        assert!(
            body == &data[..1000],
            "node 2 completed a range with the wrong bytes"
        );
    }
    wait_until(
        "node 2's copy is repaired again",
        Duration::from_secs(30),
        || repaired(n2),
    );

    tracing::info!("--- node 3: second chunk damaged; the response is aborted, never completed");
    let n3 = &cluster.members[2];
    flip_byte(&blob_file(n3, &digest), 5 * 1024 * 1024);
    let (_, body) = get_body(n3, &path, None);
    if let Ok(body) = &body {
        assert!(
            body == &data,
            "node 3 completed a response with the wrong bytes"
        );
    }
    wait_until("node 3's copy is repaired", Duration::from_secs(30), || {
        repaired(n3)
    });

    tracing::info!("--- node 1: damaged and never read; the scrubber repairs it");
    let n1 = &cluster.members[0];
    flip_byte(&blob_file(n1, &digest), 4 * 1024 * 1024 + 7);
    wait_until(
        "the scrubber repairs node 1's copy",
        Duration::from_secs(30),
        || repaired(n1),
    );
    assert!(cluster.metric(0, "wharf_replication_corrupt_dropped_total") >= 1);
}

/// With `min_copies = 3` and one of three members stopped, an upload gets 503
/// NOT_ENOUGH_COPIES (nothing acknowledged); once the member is back, the same upload succeeds.
#[test]
fn an_upload_that_cannot_reach_min_copies_gets_503() {
    init_logging();
    let mut cluster = TestCluster::start(
        3,
        ClusterOpts {
            extra_config: "[durability]\nmin_copies = 3\n".into(),
            ..ClusterOpts::default()
        },
    );
    let http = cluster.members[0].http();
    http.push_blob("copies/app", b"three copies");
    cluster.kill9(2);
    let data = random_bytes(64 * 1024);
    let digest = sha256_digest(&data);
    let resp = http.send(
        http.req(
            "POST",
            &format!("/v2/copies/app/blobs/uploads/?digest={digest}"),
        )
        .body(data.clone()),
    );
    assert_eq!(resp.status, 503, "{}", resp.text_excerpt());
    assert!(
        resp.text_excerpt().contains("NOT_ENOUGH_COPIES"),
        "{}",
        resp.text_excerpt()
    );
    http.call("HEAD", &format!("/v2/copies/app/blobs/{digest}"))
        .expect(404);
    cluster.restart(2);
    let digest_again = http.push_blob("copies/app", &data);
    assert_eq!(digest_again, digest);
    wait_until(
        "three members hold the upload",
        Duration::from_secs(10),
        || holders(&cluster, 0, &digest).len() == 3,
    );
}

/// An upload session opened on node 1 is continued through node 2 and finished through node 3
/// (a non-sticky load balancer): each request is run by the session's owner.
#[test]
fn an_upload_continued_through_other_nodes_completes() {
    init_logging();
    let cluster = TestCluster::start(3, ClusterOpts::default());
    let (n1, n2, n3) = (
        cluster.members[0].http(),
        cluster.members[1].http(),
        cluster.members[2].http(),
    );
    let data = random_bytes(3 * 1024 * 1024 + 17);
    let digest = sha256_digest(&data);
    let started = n1.call("POST", "/v2/lb/app/blobs/uploads/").expect(202);
    let location = started.must_header("location").to_string();
    let (first, second) = data.split_at(1024 * 1024);
    let patched = n2.send(
        n2.req("PATCH", &location)
            .header("Content-Type", "application/octet-stream")
            .body(first.to_vec()),
    );
    let patched = patched.expect(202);
    assert_eq!(
        patched.must_header("range"),
        format!("0-{}", first.len() - 1)
    );
    let status = n3.call("GET", &location).expect(204);
    assert_eq!(
        status.must_header("range"),
        format!("0-{}", first.len() - 1)
    );
    let location = patched.must_header("location").to_string();
    let sep = if location.contains('?') { '&' } else { '?' };
    n3.send(
        n3.req("PUT", &format!("{location}{sep}digest={digest}"))
            .header("Content-Type", "application/octet-stream")
            .body(second.to_vec()),
    )
    .expect(201);
    for http in [&n1, &n2, &n3] {
        let got = http
            .call("GET", &format!("/v2/lb/app/blobs/{digest}"))
            .expect(200);
        assert!(got.body == data, "blob bytes differ");
    }
    // A session id naming a node that is not a member is unknown, not a hang.
    let foreign = "/v2/lb/app/blobs/uploads/99-0123456789abcdef0123456789abcdef";
    n2.call("GET", foreign)
        .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
}

/// Removing a node never leaves a blob with fewer than `min_copies` copies among the members
/// that stay — also in an `on-demand` repository, where nobody copies a blob unasked: the
/// removal copies the leaving node's blobs first.
#[test]
fn removing_a_node_keeps_min_copies() {
    init_logging();
    let cluster = TestCluster::start(3, ClusterOpts::default());
    let (status, body) = cluster.post(
        0,
        "/api/v1/repos",
        serde_json::json!({"name": "od", "format": "oci", "immutable": false, "replication": "on-demand"}),
    );
    assert_eq!(status, 201, "{body}");
    let http = cluster.members[0].http();
    let mut digests: Vec<String> = (0..4)
        .map(|i| http.push_blob("remove/app", &random_bytes(200 * 1024 + i)))
        .collect();
    // Uploaded through node 3: it and one other member hold each of these.
    let http3 = cluster.members[2].http();
    digests.extend((0..4).map(|i| http3.push_blob("od/app", &random_bytes(100 * 1024 + i))));
    // Asked of the leaving node itself: it pushes its blobs to the others.
    let removed = cluster.cli(&cluster.members[2], &["cluster", "remove", "3", "--yes"]);
    assert!(
        removed.status.success(),
        "{}",
        String::from_utf8_lossy(&removed.stderr)
    );
    for digest in &digests {
        let h = holders(&cluster, 0, digest);
        let staying = h.iter().filter(|id| **id == 1 || **id == 2).count();
        assert!(
            staying >= 2,
            "{digest} has {staying} copies on the staying members: {h:?}"
        );
    }
}

/// In an `on-demand` repository only the upload's `min_copies` members hold a blob (no eager
/// copies); when the uploader is killed with -9 right after the ack, the blob is still served by
/// the other nodes, and the leader's repair worker restores two live copies without any read.
#[test]
fn repair_restores_min_copies_after_the_uploader_dies() {
    init_logging();
    let mut cluster = TestCluster::start(3, ClusterOpts::default());
    let (status, body) = cluster.post(
        0,
        "/api/v1/repos",
        serde_json::json!({"name": "od", "format": "oci", "immutable": false, "replication": "on-demand"}),
    );
    assert_eq!(status, 201, "{body}");
    let data = random_bytes(TWO_CHUNKS);
    let digest = cluster.members[0].http().push_blob("od/app", &data);
    // At the ack, before any background work could add one: two nodes have the file on disk.
    let on_disk = cluster
        .members
        .iter()
        .filter(|m| blob_file(m, &digest).is_file())
        .count();
    assert_eq!(
        on_disk, 2,
        "copies on disk when the upload was acknowledged"
    );
    let ids: Vec<u64> = cluster.members.iter().map(|m| m.node_id).collect();
    wait_until(
        "two members record the upload",
        Duration::from_secs(10),
        || holders(&cluster, 0, &digest).len() == 2,
    );
    std::thread::sleep(Duration::from_secs(3));
    let before = holders(&cluster, 0, &digest);
    assert_eq!(
        before.len(),
        2,
        "an on-demand blob was copied everywhere: {before:?}"
    );

    cluster.kill9(0);
    let survivors = [ids[1], ids[2]];
    wait_until(
        "the repair worker puts the blob on both surviving nodes",
        Duration::from_secs(60),
        || {
            let h = holders(&cluster, 1, &digest);
            survivors.iter().all(|id| h.contains(id))
        },
    );
    assert!(blob_file(&cluster.members[1], &digest).is_file());
    assert!(blob_file(&cluster.members[2], &digest).is_file());
    for m in &cluster.members[1..] {
        let (status, body) = get_body(m, &format!("/v2/od/app/blobs/{digest}"), None);
        assert_eq!(status, 200);
        assert!(
            body.unwrap() == data,
            "node {} served other bytes",
            m.node_id
        );
    }
}

/// Every regular file under `dir`, recursively.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file() {
                files.push(entry.path());
            }
        }
    }
    files
}

/// The node ids of members 1 and 2 (regions us-east and eu-west).
fn pinned_ids(cluster: &TestCluster) -> [u64; 2] {
    [cluster.members[0].node_id, cluster.members[1].node_id]
}

/// Data residency: a repository pinned to the regions of nodes 1 and 2 (us-east, eu-west),
/// pushed with skopeo through node 3 (ap-south): node 3 forwards the writes, serves the image
/// (whole and by `Range`) by streaming it, and never has any of its bytes on disk — not even an
/// upload file; both pinned regions get a copy of every blob.
#[test]
fn a_residency_pinned_repository_never_stores_outside_its_regions() {
    init_logging();
    let cluster = TestCluster::start(3, ClusterOpts::default());
    // A pinned repository needs cluster version 4, which a fresh cluster reaches by itself.
    let create = serde_json::json!({"name": "eu", "format": "oci", "immutable": false,
        "regions": ["us-east", "eu-west"]});
    wait_until(
        "the pinned repository is created",
        Duration::from_secs(30),
        || {
            let (status, body) = cluster.post(0, "/api/v1/repos", create.clone());
            // 409 until the cluster runs version 4, or if an earlier try was applied after all.
            status == 201 || body.to_string().contains("already exists")
        },
    );
    for bad in ["eu west", "eu-central"] {
        let (status, body) = cluster.post(
            0,
            "/api/v1/repos",
            serde_json::json!({"name": "bad", "format": "oci", "regions": [bad]}),
        );
        assert_eq!(status, 400, "{bad}: {body}");
    }

    let outside = &cluster.members[2];
    let env = ClientEnv::new(&outside.client);
    let (image, digests) = skopeo_push_two_chunk_image(&env, &outside.client, "eu/app:v1");

    tracing::info!("--- pulled through node 3: identical");
    let out = env.join("pulled");
    run(env
        .skopeo()
        .args(["copy", "--preserve-digests", "--src-tls-verify=false"])
        .arg(format!("docker://{}/eu/app:v1", outside.client))
        .arg(format!("oci:{}:v1", out.display())));
    let pulled = Layout::open(&out);
    assert_eq!(pulled.image("v1").manifest_bytes, image.manifest_bytes);
    let layer = &image.layers[0];
    let bytes = pulled.blob(&layer.digest);
    assert_eq!(sha256_digest(&bytes), layer.digest);
    let (status, part) = get_body(
        outside,
        &format!("/v2/eu/app/blobs/{}", layer.digest),
        Some("bytes=4194000-4194999"),
    );
    assert_eq!(status, 206);
    assert!(part.unwrap() == bytes[4_194_000..4_195_000], "range bytes");

    tracing::info!("--- upload sessions started through node 3 live in the pinned regions");
    let client = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let outside_id = outside.node_id;
    for (path, spoofed) in [
        ("/v2/eu/app/blobs/uploads/", false),
        ("/v2/eu/app/blobs/uploads", false),
        ("/v2/eu/app/blobs/uploads/", true),
    ] {
        let mut request = client.post(format!("{}{path}", outside.url()));
        if spoofed {
            // A client claiming the request was already forwarded is not believed.
            request = request.header("x-wharf-forwarded-from", "1");
        }
        let resp = request.send().unwrap();
        assert_eq!(
            resp.status().as_u16(),
            202,
            "POST {path} (spoofed: {spoofed})"
        );
        let location = resp.headers()["location"].to_str().unwrap().to_string();
        let session = location.rsplit('/').next().unwrap();
        let owner: u64 = session.split('-').next().unwrap().parse().unwrap();
        assert_ne!(owner, outside_id, "{location}: a session on node 3");
        assert!(pinned_ids(&cluster).contains(&owner), "{location}");
    }

    tracing::info!("--- both pinned regions hold every blob, node 3 none");
    let pinned = pinned_ids(&cluster);
    for digest in &digests {
        wait_until(
            &format!("{digest} is held by nodes {pinned:?}"),
            Duration::from_secs(30),
            || holders(&cluster, 0, digest) == pinned,
        );
    }
    // Resync rounds run every second: give node 3 time to (wrongly) fetch.
    std::thread::sleep(Duration::from_secs(3));
    for digest in &digests {
        assert_eq!(holders(&cluster, 0, digest), pinned);
    }
    let digests_on_disk: Vec<(std::path::PathBuf, String)> = files_under(&outside.dir)
        .into_iter()
        .map(|path| {
            let digest = sha256_digest(&std::fs::read(&path).unwrap());
            (path, digest)
        })
        .collect();
    for (path, digest) in &digests_on_disk {
        assert!(
            !digests.contains(digest),
            "{} on node 3 holds {digest}",
            path.display()
        );
    }
    let uploads = outside.dir.join("data/uploads");
    let leftovers: Vec<_> = files_under(&uploads);
    assert!(
        leftovers.is_empty(),
        "upload files on node 3: {leftovers:?}"
    );
    let largest = digests_on_disk
        .iter()
        .map(|(p, _)| std::fs::metadata(p).unwrap().len())
        .max();
    tracing::info!(?largest, files = digests_on_disk.len(), "node 3's files");
}

/// A pinned `on-demand` blob whose copy dies while the leader is outside its regions: the
/// leader may not store it, so it asks a live node of those regions to fetch it, and
/// `min_copies` live copies are back without any read — none of them on the leader.
#[test]
fn repair_of_a_pinned_blob_happens_inside_its_regions() {
    init_logging();
    let mut cluster = TestCluster::start(4, ClusterOpts::default());
    let leader = cluster.leader();
    let pinned: Vec<usize> = (0..4).filter(|i| *i != leader).collect();
    let regions: Vec<&str> = pinned
        .iter()
        .map(|i| cluster.members[*i].region())
        .collect();
    let create = serde_json::json!({"name": "pin", "format": "oci", "immutable": false,
        "replication": "on-demand", "regions": regions});
    wait_until(
        "the pinned repository is created",
        Duration::from_secs(30),
        || {
            let (status, body) = cluster.post(leader, "/api/v1/repos", create.clone());
            status == 201 || body.to_string().contains("already exists")
        },
    );
    let uploader = pinned[0];
    let data = random_bytes(TWO_CHUNKS);
    let digest = cluster.members[uploader].http().push_blob("pin/app", &data);
    wait_until(
        "two members record the upload",
        Duration::from_secs(10),
        || holders(&cluster, leader, &digest).len() == 2,
    );
    let first = holders(&cluster, leader, &digest);
    let other = first
        .iter()
        .copied()
        .find(|id| *id != cluster.members[uploader].node_id)
        .unwrap();
    let other_pos = cluster
        .members
        .iter()
        .position(|m| m.node_id == other)
        .unwrap();
    assert!(
        pinned.contains(&other_pos),
        "a copy outside the regions: {first:?}"
    );
    cluster.kill9(other_pos);
    let leader_id = cluster.members[leader].node_id;
    let live: Vec<u64> = pinned
        .iter()
        .filter(|i| **i != other_pos)
        .map(|i| cluster.members[*i].node_id)
        .collect();
    wait_until(
        "the repair puts a second live copy inside the regions",
        Duration::from_secs(60),
        || {
            let h = holders(&cluster, leader, &digest);
            h.iter().filter(|id| live.contains(id)).count() >= 2
        },
    );
    assert!(!holders(&cluster, leader, &digest).contains(&leader_id));
    assert!(!blob_file(&cluster.members[leader], &digest).is_file());
}
