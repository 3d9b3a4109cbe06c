//! The workloads: what the client workers do, and the final reads after heal.
//!
//! | workload    | repository                 | operations (key)                                      |
//! |-------------|----------------------------|-------------------------------------------------------|
//! | `register`  | `jr-strong` (oci, strong)  | write / read / delete a mutable tag (`r0`..)          |
//! | `bounded`   | `jr-bounded` (oci, bounded)| the same, checked against the staleness bound          |
//! | `immutable` | `jr-immutable` (immutable) | push one of 2–4 competing manifests to a tag, read it  |
//! | `blobs`     | `jr-blobs` (oci)           | push random blobs (some with a wrong digest or cut short, which must fail), read acknowledged ones |
//! | `packages`  | `jr-npm` (npm)             | publish versions, read the packument (index)           |
//! | `repos`     | `jr-new-<n>` (generic)     | create repositories under names never used before      |
//!
//! A register value is a number carried in the manifest's annotations, so a read maps the
//! served manifest back to the write that made it. Every body read is hashed.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use reqwest::blocking::Client;
use serde_json::{Value, json};
use sha2::{Digest, Sha512};

use crate::client::{Answer, Effect, digest_of, http_client, send};
use crate::history::{Event, Kind, Recorder};

pub const STRONG_REPO: &str = "jr-strong";
pub const BOUNDED_REPO: &str = "jr-bounded";
pub const IMMUTABLE_REPO: &str = "jr-immutable";
pub const BLOB_REPO: &str = "jr-blobs";
pub const NPM_REPO: &str = "jr-npm";

/// What an acknowledged delete of a tag returns: it removed the tag, or found none.
pub const DELETED: &str = "deleted";
pub const ABSENT: &str = "absent";

/// OCI names are `<repository>/<image>`: every OCI workload uses the image `app`.
const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// Mutable tags per register workload (small, so that operations on one key overlap and the
/// linearizability search stays small per key).
const REGISTER_KEYS: u64 = 4;
/// npm packages the package workload publishes versions of.
const PACKAGES: u64 = 2;
/// Operations on one immutable tag before the workers move on to the next.
const OPS_PER_IMMUTABLE_TAG: u64 = 12;
/// How long the final reads may take in all (retries of failed reads stop after it).
const FINAL_READS_BUDGET: Duration = Duration::from_secs(180);
/// Register operations before the workers move on to fresh keys: the linearizability search
/// is exponential in the worst case, so each key's history is kept to a few hundred operations
/// (as Jepsen's `independent` keys do).
const OPS_PER_REGISTER_EPOCH: u64 = 240;

/// One planned operation.
#[derive(Debug, Clone)]
pub struct Planned {
    pub workload: &'static str,
    pub f: &'static str,
    pub key: String,
    pub value: Value,
}

/// The config and layer every manifest references (pushed into each OCI repository).
#[derive(Debug, Clone)]
struct ImageParts {
    config: Vec<u8>,
    layer: Vec<u8>,
}

/// Shared state of the workers.
pub struct Workloads {
    /// Base URLs of the members, member 1 first.
    pub nodes: Vec<String>,
    parts: ImageParts,
    next_value: AtomicU64,
    immutable_ops: AtomicU64,
    register_ops: AtomicU64,
    /// Blobs acknowledged so far (workers read them back).
    acked_blobs: Mutex<Vec<String>>,
    /// Blob pushes that ended `ok` or `info` (the final phase reads all of them).
    pushed_blobs: Mutex<Vec<String>>,
    /// npm versions published, `ok` or `info`, per package.
    published: Mutex<HashMap<String, Vec<String>>>,
    /// npm versions whose publish was acknowledged, as `name@version`.
    acked_versions: Mutex<Vec<String>>,
    next_version: AtomicU64,
    next_process: AtomicU64,
    next_repo: AtomicU64,
}

impl Workloads {
    pub fn new(nodes: Vec<String>, seed: u64) -> Workloads {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut layer = vec![0u8; 1024];
        rng.fill_bytes(&mut layer);
        let config = json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": { "type": "layers", "diff_ids": [digest_of(&layer)] },
        })
        .to_string()
        .into_bytes();
        Workloads {
            nodes,
            parts: ImageParts { config, layer },
            next_value: AtomicU64::new(1),
            immutable_ops: AtomicU64::new(0),
            register_ops: AtomicU64::new(0),
            acked_blobs: Mutex::default(),
            pushed_blobs: Mutex::default(),
            published: Mutex::default(),
            acked_versions: Mutex::default(),
            next_version: AtomicU64::new(0),
            next_process: AtomicU64::new(1),
            next_repo: AtomicU64::new(0),
        }
    }

    fn url(&self, node: usize, path: &str) -> String {
        format!("{}{path}", self.nodes[node - 1])
    }

    /// Creates the repositories and pushes the shared image parts, retrying until the cluster
    /// answers (it was just formed).
    pub fn setup(&self) -> anyhow::Result<()> {
        let client = http_client();
        let repo = repo_body;
        let repos = [
            repo(STRONG_REPO, "oci", false, "strong"),
            repo(BOUNDED_REPO, "oci", false, "bounded"),
            repo(IMMUTABLE_REPO, "oci", true, "strong"),
            repo(BLOB_REPO, "oci", false, "strong"),
            repo(NPM_REPO, "npm", false, "strong"),
        ];
        for body in repos {
            retry(&format!("create {}", body["name"]), || {
                let r = client
                    .post(self.url(1, "/api/v1/repos"))
                    .json(&body)
                    .send()?;
                let status = r.status().as_u16();
                if status == 201 || status == 200 || status == 409 {
                    Ok(())
                } else {
                    anyhow::bail!("{status}: {}", r.text().unwrap_or_default())
                }
            })?;
        }
        for repo in [STRONG_REPO, BOUNDED_REPO, IMMUTABLE_REPO] {
            for blob in [&self.parts.config, &self.parts.layer] {
                retry(&format!("push a blob into {repo}"), || {
                    let r = client
                        .post(self.url(
                            1,
                            &format!("/v2/{repo}/app/blobs/uploads/?digest={}", digest_of(blob)),
                        ))
                        .body(blob.clone())
                        .send()?;
                    let status = r.status().as_u16();
                    anyhow::ensure!(status == 201, "{status}: {}", r.text().unwrap_or_default());
                    Ok(())
                })?;
            }
        }
        Ok(())
    }

    /// A fresh process id (for the final reads).
    fn process(&self) -> u64 {
        1_000_000_000 + self.next_process.fetch_add(1, Ordering::Relaxed)
    }

    /// One client worker: random operations on random nodes until `stop`.
    pub fn worker(
        &self,
        recorder: &Recorder,
        worker: u64,
        seed: u64,
        enabled: &[&'static str],
        stop: &AtomicBool,
    ) {
        let mut rng = StdRng::seed_from_u64(seed ^ worker.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let client = http_client();
        let mut process = worker * 1_000_000;
        // A read of what this worker just wrote, on the node it wrote through (a client that
        // pushes and then pulls).
        let mut read_back: Option<(Planned, usize)> = None;
        while !stop.load(Ordering::Relaxed) {
            let (op, node) = read_back.take().unwrap_or_else(|| {
                let workload = enabled[rng.random_range(0..enabled.len())];
                let op = self.plan(workload, &mut rng);
                (op, rng.random_range(1..=self.nodes.len()))
            });
            let answer = self.run(recorder, &client, process, node, &op, false, &mut rng);
            if answer.kind == Kind::Info {
                process += 1;
            }
            let register = matches!(op.workload, "register" | "bounded");
            if register && op.f != "read" && answer.kind == Kind::Ok && rng.random_bool(0.5) {
                let read = Planned {
                    workload: op.workload,
                    f: "read",
                    key: op.key.clone(),
                    value: Value::Null,
                };
                read_back = Some((read, node));
            }
            // Back off after an error, so that a node that is down is not hammered with
            // requests it refuses at once (they would swamp the history).
            let pause = if answer.kind == Kind::Ok {
                2..15
            } else {
                100..200
            };
            std::thread::sleep(Duration::from_millis(rng.random_range(pause)));
        }
    }

    /// Records the invoke, runs the operation, records its completion.
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        recorder: &Recorder,
        client: &Client,
        process: u64,
        node: usize,
        op: &Planned,
        is_final: bool,
        rng: &mut StdRng,
    ) -> Answer {
        let event = |kind, value, answer: Option<&Answer>| Event {
            index: 0,
            time_ms: 0.0,
            process,
            kind,
            workload: op.workload.into(),
            f: op.f.into(),
            key: op.key.clone(),
            value,
            node,
            served_by: answer.and_then(|a| a.served_by.clone()),
            error: answer.and_then(|a| a.error.clone()),
            body_sha256: answer.and_then(|a| a.body_sha256.clone()),
            r#final: is_final,
        };
        recorder.record(event(Kind::Invoke, op.value.clone(), None));
        let answer = self.execute(client, node, op, rng);
        recorder.record(event(answer.kind, answer.value.clone(), Some(&answer)));
        if answer.kind != Kind::Fail {
            match (op.workload, op.f) {
                ("blobs", "push") if op.value["kind"] == "good" => {
                    lock(&self.pushed_blobs).push(op.key.clone());
                    if answer.kind == Kind::Ok {
                        lock(&self.acked_blobs).push(op.key.clone());
                    }
                }
                ("packages", "publish") => {
                    let (name, version) = op.key.split_once('@').unwrap_or_default();
                    lock(&self.published)
                        .entry(name.to_string())
                        .or_default()
                        .push(version.to_string());
                    if answer.kind == Kind::Ok {
                        lock(&self.acked_versions).push(op.key.clone());
                    }
                }
                _ => {}
            }
        }
        answer
    }

    fn plan(&self, workload: &'static str, rng: &mut StdRng) -> Planned {
        let planned = |f, key: String, value| Planned {
            workload,
            f,
            key,
            value,
        };
        match workload {
            "register" | "bounded" => {
                let epoch =
                    self.register_ops.fetch_add(1, Ordering::Relaxed) / OPS_PER_REGISTER_EPOCH;
                let key = format!("r{epoch}.{}", rng.random_range(0..REGISTER_KEYS));
                match rng.random_range(0..10) {
                    0..4 => planned("read", key, Value::Null),
                    4..9 => {
                        let v = self.next_value.fetch_add(1, Ordering::Relaxed);
                        planned("write", key, json!(v))
                    }
                    _ => planned("delete", key, Value::Null),
                }
            }
            "immutable" => {
                let tag =
                    self.immutable_ops.fetch_add(1, Ordering::Relaxed) / OPS_PER_IMMUTABLE_TAG;
                let key = format!("i{tag}");
                if rng.random_bool(0.5) {
                    planned("read", key, Value::Null)
                } else {
                    let candidates = 2 + tag % 3;
                    let value = tag * 4 + rng.random_range(0..candidates);
                    planned("push", key, json!(value))
                }
            }
            "blobs" => {
                let acked = lock(&self.acked_blobs).clone();
                if !acked.is_empty() && rng.random_bool(0.4) {
                    let digest = acked[rng.random_range(0..acked.len())].clone();
                    return planned("read", digest, Value::Null);
                }
                let size = if rng.random_bool(0.03) {
                    rng.random_range(4 << 20..6 << 20)
                } else {
                    rng.random_range(1..256 << 10)
                };
                let kind = match rng.random_range(0..10) {
                    0 => "wrong-digest",
                    1 => "truncated",
                    _ => "good",
                };
                let seed: u64 = rng.random();
                let digest = digest_of(&blob_bytes(seed, size));
                planned(
                    "push",
                    digest,
                    json!({ "size": size, "seed": seed, "kind": kind }),
                )
            }
            "repos" => {
                let n = self.next_repo.fetch_add(1, Ordering::Relaxed);
                planned("create", format!("jr-new-{n}"), Value::Null)
            }
            "packages" => {
                let name = format!("jp-{}", rng.random_range(0..PACKAGES));
                if rng.random_bool(0.5) {
                    planned("index", name, Value::Null)
                } else {
                    let version =
                        format!("1.0.{}", self.next_version.fetch_add(1, Ordering::Relaxed));
                    planned("publish", format!("{name}@{version}"), Value::Null)
                }
            }
            other => unreachable!("no workload {other}"),
        }
    }

    fn execute(&self, client: &Client, node: usize, op: &Planned, rng: &mut StdRng) -> Answer {
        let result = match (op.workload, op.f) {
            ("register", f) => self.register_op(client, node, STRONG_REPO, f, op),
            ("bounded", f) => self.register_op(client, node, BOUNDED_REPO, f, op),
            ("immutable", "push") => self.put_manifest(client, node, IMMUTABLE_REPO, op),
            ("immutable", _) => self.read_manifest(client, node, IMMUTABLE_REPO, &op.key),
            ("blobs", "push") => self.push_blob(client, node, op, rng),
            ("blobs", _) => self.read_blob(client, node, &op.key),
            ("packages", "publish") => self.publish(client, node, &op.key),
            ("packages", "tarball") => self.read_tarball(client, node, &op.key),
            ("packages", _) => self.read_index(client, node, &op.key),
            ("repos", _) => self.create_repo(client, node, &op.key),
            (w, f) => unreachable!("no operation {w}/{f}"),
        };
        result.unwrap_or_else(|answer| answer)
    }

    // --- OCI registers

    fn register_op(
        &self,
        client: &Client,
        node: usize,
        repo: &str,
        f: &str,
        op: &Planned,
    ) -> Result<Answer, Answer> {
        match f {
            "write" => self.put_manifest(client, node, repo, op),
            "read" => self.read_manifest(client, node, repo, &op.key),
            _ => {
                let url = self.url(node, &format!("/v2/{repo}/app/manifests/{}", op.key));
                let reply = send(client.delete(url), Effect::Write)?;
                // 404: the tag was absent — the delete observed that and changed nothing (the
                // checkers take it as a read of "absent", not as a write).
                Ok(match reply.status {
                    202 => with_node(Answer::ok(json!(DELETED)), &reply.served_by),
                    404 if is_unknown_tag(&reply.body) => {
                        with_node(Answer::ok(json!(ABSENT)), &reply.served_by)
                    }
                    _ => reply.unexpected(Effect::Write),
                })
            }
        }
    }

    fn manifest(&self, value: u64) -> Vec<u8> {
        let desc = |media: &str, bytes: &[u8]| json!({ "mediaType": media, "digest": digest_of(bytes), "size": bytes.len() });
        json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": desc("application/vnd.oci.image.config.v1+json", &self.parts.config),
            "layers": [desc("application/vnd.oci.image.layer.v1.tar", &self.parts.layer)],
            "annotations": { "jepsen.value": value.to_string() },
        })
        .to_string()
        .into_bytes()
    }

    fn put_manifest(
        &self,
        client: &Client,
        node: usize,
        repo: &str,
        op: &Planned,
    ) -> Result<Answer, Answer> {
        let value = op.value.as_u64().unwrap_or_default();
        let url = self.url(node, &format!("/v2/{repo}/app/manifests/{}", op.key));
        let reply = send(
            client
                .put(url)
                .header("Content-Type", MANIFEST_TYPE)
                .body(self.manifest(value)),
            Effect::Write,
        )?;
        Ok(if reply.status == 201 {
            with_node(Answer::ok(json!(value)), &reply.served_by)
        } else {
            reply.unexpected(Effect::Write)
        })
    }

    /// Reads a tag: `ok` with the value of the manifest served, `ok` with null on a 404.
    fn read_manifest(
        &self,
        client: &Client,
        node: usize,
        repo: &str,
        tag: &str,
    ) -> Result<Answer, Answer> {
        let url = self.url(node, &format!("/v2/{repo}/app/manifests/{tag}"));
        let reply = send(
            client.get(url).header("Accept", MANIFEST_TYPE),
            Effect::Read,
        )?;
        let mut answer = match reply.status {
            200 => {
                let value = serde_json::from_slice::<Value>(&reply.body)
                    .ok()
                    .and_then(|m| {
                        m["annotations"]["jepsen.value"]
                            .as_str()
                            .and_then(|v| v.parse::<u64>().ok())
                    });
                let served = reply.header("docker-content-digest").unwrap_or_default();
                match value {
                    Some(v) if served == digest_of(&reply.body) => Answer::ok(json!(v)),
                    _ => Answer::ok(json!("corrupt")),
                }
            }
            404 if is_unknown_tag(&reply.body) => Answer::ok(Value::Null),
            _ => return Ok(reply.unexpected(Effect::Read)),
        };
        answer.served_by = reply.served_by.clone();
        answer.body_sha256 = Some(reply.body_sha256());
        Ok(answer)
    }

    // --- blobs

    fn push_blob(
        &self,
        client: &Client,
        node: usize,
        op: &Planned,
        _rng: &mut StdRng,
    ) -> Result<Answer, Answer> {
        let size = op.value["size"].as_u64().unwrap_or(1) as usize;
        let bytes = blob_bytes(op.value["seed"].as_u64().unwrap_or(0), size);
        let kind = op.value["kind"].as_str().unwrap_or("good");
        let uploads = self.url(node, &format!("/v2/{BLOB_REPO}/app/blobs/uploads/"));
        let reply = match kind {
            "wrong-digest" => {
                // The digest of other bytes: the upload must be refused.
                let mut other = bytes.clone();
                other[0] ^= 0xff;
                send(
                    client
                        .post(format!("{uploads}?digest={}", digest_of(&other)))
                        .body(bytes),
                    Effect::Write,
                )?
            }
            "truncated" => {
                // Half the bytes under the digest of all of them: must be refused.
                let started = send(client.post(&uploads), Effect::Write)?;
                if started.status != 202 {
                    return Ok(started.unexpected(Effect::Write));
                }
                let location = started.header("location").unwrap_or_default().to_string();
                let location = if location.starts_with('/') {
                    self.url(node, &location)
                } else {
                    location
                };
                let sep = if location.contains('?') { '&' } else { '?' };
                send(
                    client
                        .put(format!("{location}{sep}digest={}", op.key))
                        .body(bytes[..size / 2].to_vec()),
                    Effect::Write,
                )?
            }
            _ => send(
                client
                    .post(format!("{uploads}?digest={}", op.key))
                    .body(bytes),
                Effect::Write,
            )?,
        };
        Ok(if reply.status == 201 {
            with_node(Answer::ok(Value::Null), &reply.served_by)
        } else {
            reply.unexpected(Effect::Write)
        })
    }

    fn read_blob(&self, client: &Client, node: usize, digest: &str) -> Result<Answer, Answer> {
        let url = self.url(node, &format!("/v2/{BLOB_REPO}/app/blobs/{digest}"));
        let reply = send(client.get(url), Effect::Read)?;
        let mut answer = match reply.status {
            200 => Answer::ok(json!(digest_of(&reply.body) == digest)),
            404 => Answer::ok(Value::Null),
            _ => return Ok(reply.unexpected(Effect::Read)),
        };
        answer.served_by = reply.served_by.clone();
        answer.body_sha256 = Some(reply.body_sha256());
        Ok(answer)
    }

    // --- repositories

    /// Creates a repository under a name no one used before: 201, or an error. "Already exists"
    /// can only mean this very create was applied twice.
    fn create_repo(&self, client: &Client, node: usize, name: &str) -> Result<Answer, Answer> {
        let body = repo_body(name, "generic", false, "strong");
        let reply = send(
            client.post(self.url(node, "/api/v1/repos")).json(&body),
            Effect::Write,
        )?;
        Ok(if reply.status == 201 {
            with_node(Answer::ok(Value::Null), &reply.served_by)
        } else {
            reply.unexpected(Effect::Write)
        })
    }

    // --- npm

    fn publish(&self, client: &Client, node: usize, key: &str) -> Result<Answer, Answer> {
        let (name, version) = key.split_once('@').unwrap_or_default();
        let tarball = npm_tarball(name, version);
        let integrity = format!(
            "sha512-{}",
            base64::engine::general_purpose::STANDARD.encode(Sha512::digest(&tarball))
        );
        let body = json!({
            "_id": name, "name": name, "dist-tags": { "latest": version },
            "versions": { version: { "name": name, "version": version,
                "dist": { "integrity": integrity } } },
            "_attachments": { format!("{name}-{version}.tgz"): {
                "content_type": "application/octet-stream",
                "data": base64::engine::general_purpose::STANDARD.encode(&tarball),
                "length": tarball.len() } },
        });
        let url = self.url(node, &format!("/npm/{NPM_REPO}/{name}"));
        let reply = send(client.put(url).json(&body), Effect::Write)?;
        Ok(if reply.status == 200 || reply.status == 201 {
            with_node(Answer::ok(Value::Null), &reply.served_by)
        } else {
            reply.unexpected(Effect::Write)
        })
    }

    /// Reads a packument: `ok` with the sorted list of its versions (empty on a 404).
    fn read_index(&self, client: &Client, node: usize, name: &str) -> Result<Answer, Answer> {
        let url = self.url(node, &format!("/npm/{NPM_REPO}/{name}"));
        let reply = send(client.get(url), Effect::Read)?;
        let mut answer = match reply.status {
            200 => {
                let doc: Value = serde_json::from_slice(&reply.body).unwrap_or_default();
                let mut versions: Vec<String> = doc["versions"]
                    .as_object()
                    .map(|m| m.keys().cloned().collect())
                    .unwrap_or_default();
                versions.sort();
                Answer::ok(json!(versions))
            }
            404 => Answer::ok(json!([])),
            _ => return Ok(reply.unexpected(Effect::Read)),
        };
        answer.served_by = reply.served_by.clone();
        answer.body_sha256 = Some(reply.body_sha256());
        Ok(answer)
    }

    /// Downloads a version's tarball: `ok` with whether its bytes are the ones published.
    fn read_tarball(&self, client: &Client, node: usize, key: &str) -> Result<Answer, Answer> {
        let (name, version) = key.split_once('@').unwrap_or_default();
        let url = self.url(
            node,
            &format!("/npm/{NPM_REPO}/{name}/-/{name}-{version}.tgz"),
        );
        let reply = send(client.get(url), Effect::Read)?;
        let mut answer = match reply.status {
            200 => Answer::ok(json!(reply.body == npm_tarball(name, version))),
            404 => Answer::ok(Value::Null),
            _ => return Ok(reply.unexpected(Effect::Read)),
        };
        answer.served_by = reply.served_by.clone();
        answer.body_sha256 = Some(reply.body_sha256());
        Ok(answer)
    }

    // --- the final phase

    /// After heal: reads every key of every workload on every node (these reads are in the
    /// history, marked `final`). A read that fails is tried again for a while: the cluster
    /// was just healed.
    pub fn final_reads(&self, recorder: &Recorder, enabled: &[&'static str], nodes: &[usize]) {
        let client = http_client();
        let mut rng = StdRng::seed_from_u64(0);
        let mut planned: Vec<Planned> = Vec::new();
        let read = |workload, f, key: String| Planned {
            workload,
            f,
            key,
            value: Value::Null,
        };
        for &w in enabled {
            match w {
                "register" | "bounded" => {
                    let epochs = self.register_ops.load(Ordering::Relaxed) / OPS_PER_REGISTER_EPOCH;
                    for e in 0..=epochs {
                        for k in 0..REGISTER_KEYS {
                            planned.push(read(w, "read", format!("r{e}.{k}")));
                        }
                    }
                }
                "immutable" => {
                    let tags = self.immutable_ops.load(Ordering::Relaxed) / OPS_PER_IMMUTABLE_TAG;
                    for t in 0..=tags {
                        planned.push(read(w, "read", format!("i{t}")));
                    }
                }
                "blobs" => {
                    for d in lock(&self.pushed_blobs).iter() {
                        planned.push(read(w, "read", d.clone()));
                    }
                }
                "packages" => {
                    for (name, versions) in lock(&self.published).iter() {
                        planned.push(read(w, "index", name.clone()));
                        for v in versions {
                            planned.push(read(w, "tarball", format!("{name}@{v}")));
                        }
                    }
                }
                _ => {}
            }
        }
        // One budget for the whole phase: a node that stopped answering costs it once.
        let budget = Instant::now() + FINAL_READS_BUDGET;
        for &node in nodes {
            for op in &planned {
                let deadline = (Instant::now() + Duration::from_secs(30)).min(budget);
                loop {
                    let process = self.process();
                    let answer = self.run(recorder, &client, process, node, op, true, &mut rng);
                    if answer.kind == Kind::Ok || Instant::now() > deadline {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
    }

    /// Digests of every blob whose push was acknowledged, and of every npm tarball whose
    /// publish was: what the convergence check looks for on each node's disk.
    pub fn blobs_to_converge(&self) -> Vec<String> {
        let mut digests = lock(&self.acked_blobs).clone();
        for key in lock(&self.acked_versions).iter() {
            let (name, version) = key.split_once('@').unwrap_or_default();
            digests.push(digest_of(&npm_tarball(name, version)));
        }
        digests
    }
}

/// The body of `POST /api/v1/repos`.
fn repo_body(name: &str, format: &str, immutable: bool, consistency: &str) -> Value {
    json!({
        "name": name, "format": format, "immutable": immutable,
        "consistency": consistency, "replication": "all-regions", "regions": [],
        "allow_sparse_index": false, "allow_unpublish": false,
    })
}

/// The bytes of a random blob, reproducible from its seed.
pub fn blob_bytes(seed: u64, size: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; size];
    StdRng::seed_from_u64(seed).fill_bytes(&mut bytes);
    bytes
}

/// A gzipped npm tarball whose `package/package.json` says `name@version` (deterministic:
/// the same bytes every time, so a read can be compared with what was published).
pub fn npm_tarball(name: &str, version: &str) -> Vec<u8> {
    let manifest = json!({ "name": name, "version": version }).to_string();
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(manifest.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_cksum();
    let _ = builder.append_data(&mut header, "package/package.json", manifest.as_bytes());
    let tar = builder.into_inner().unwrap_or_default();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let _ = std::io::Write::write_all(&mut gz, &tar);
    gz.finish().unwrap_or_default()
}

/// A 404 that says the tag (or manifest) is unknown, as opposed to any other 404.
fn is_unknown_tag(body: &[u8]) -> bool {
    let text = String::from_utf8_lossy(body);
    text.contains("MANIFEST_UNKNOWN") || text.contains("NAME_UNKNOWN")
}

fn with_node(mut answer: Answer, served_by: &Option<String>) -> Answer {
    answer.served_by = served_by.clone();
    answer
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn retry(what: &str, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match f() {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => anyhow::bail!("{what}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(300)),
        }
    }
}
