//! A multi-process Wharf cluster for tests: one `wharf serve` per node, each with its own
//! directory, ports and region, formed the way an operator would (`wharf cluster init`, join
//! tokens, `wharf cluster promote --yes`). Every process is killed by its PID on drop.
//!
//! With [`ClusterOpts::netlab`] every node runs in its own network namespace of a
//! [`NetLab`] instead of on loopback, so that a test can partition real processes
//! ([`TestCluster::isolate`], [`TestCluster::cut`], [`TestCluster::heal`]); the test process
//! still reaches every node's listeners, so the rest of the API is the same.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wharf_testkit::netlab::NetLab;

use crate::ocihttp::OciHttp;
use crate::powercut::LazyFsMount;
use crate::server::{free_addr, signal, wharf_bin};

const REGIONS: [&str; 5] = ["us-east", "eu-west", "ap-south", "sa-east", "af-south"];
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Ports of a node in its own lab namespace, where nothing else listens (the blob transfer
/// takes the cluster port + 1, UDP).
const LAB_CLIENT_PORT: u16 = 7070;
const LAB_CLUSTER_PORT: u16 = 7071;

/// Extra raft settings for a test cluster.
#[derive(Debug, Clone)]
pub struct ClusterOpts {
    pub snapshot_every_entries: u64,
    pub log_entries_kept: u64,
    /// Mutual TLS between the nodes (`cluster.tls = true`, even on loopback).
    pub tls: bool,
    /// More TOML appended to every node's configuration (whole sections).
    pub extra_config: String,
    /// Raft heartbeat period; elections wait 5–10 of them. Must exceed 2 × the largest round
    /// trip between nodes (the config reference's rule of thumb).
    pub heartbeat_ms: u64,
    /// Each node in its own network namespace (see [`NetLab`]), listening on its lab address,
    /// so the network between nodes can be cut. Needs root, `ip` and `nft`, and `tls: true`:
    /// plaintext between nodes is allowed only on loopback.
    pub netlab: bool,
    /// Environment of every `wharf serve` process (`LD_PRELOAD` of libfaketime, a planted
    /// bug, ...). A value may contain `{dir}`, replaced by the member's directory.
    pub node_env: Vec<(String, String)>,
    /// Each member's data dir on a `wharf-lazyfs` mount (backing dir `<member>/backing`), so
    /// that [`TestCluster::power_cut`] can drop every write it did not fsync.
    pub lazyfs: bool,
    /// Each member's disk is a tmpfs of this many bytes (0: the test's temporary directory),
    /// so that a test can fill one member's disk (see [`Member::disk_dir`]).
    pub disk_bytes: u64,
}

impl Default for ClusterOpts {
    fn default() -> Self {
        ClusterOpts {
            snapshot_every_entries: 100_000,
            log_entries_kept: 20_000,
            tls: false,
            extra_config: String::new(),
            heartbeat_ms: 100,
            netlab: false,
            node_env: Vec::new(),
            lazyfs: false,
            disk_bytes: 0,
        }
    }
}

/// One node of a [`TestCluster`].
pub struct Member {
    /// 1-based position in the cluster (not the node id).
    pub index: usize,
    pub node_id: u64,
    pub dir: PathBuf,
    /// `HOST:PORT` of the client listener: `127.0.0.1`, or the node's lab address.
    pub client: String,
    pub cluster: String,
    child: Option<Child>,
    /// The FUSE layer under the data dir, with [`ClusterOpts::lazyfs`].
    lazyfs: Option<LazyFsMount>,
    /// The tmpfs mounted with [`ClusterOpts::disk_bytes`].
    tmpfs: Option<PathBuf>,
}

impl Member {
    /// The region in the member's configuration.
    pub fn region(&self) -> &'static str {
        REGIONS[(self.index - 1) % REGIONS.len()]
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.client)
    }

    pub fn http(&self) -> OciHttp {
        OciHttp::at(&self.url())
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("wharf.log")).unwrap_or_default()
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("wharf.toml")
    }

    /// The PID of its `wharf serve` process, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The node id it was given when it joined (from `data/node.toml`).
    fn minted_node_id(&self) -> u64 {
        let node_toml = std::fs::read_to_string(self.data_dir().join("node.toml")).unwrap();
        node_toml
            .lines()
            .find_map(|l| l.strip_prefix("node_id = "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no node_id in {node_toml}"))
    }

    /// Where its data lives (the lazyfs mount point with [`ClusterOpts::lazyfs`]).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The directory on the member's own disk: the lazyfs backing dir, else the data dir.
    pub fn disk_dir(&self) -> PathBuf {
        if self.lazyfs.is_some() {
            self.dir.join("backing")
        } else {
            self.data_dir()
        }
    }

    fn mount_tmpfs(&mut self, bytes: u64, lazyfs: bool) {
        let at = self.dir.join(if lazyfs { "backing" } else { "data" });
        std::fs::create_dir_all(&at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "wharf-disk"])
            .arg(&at)
            .output()
            .unwrap();
        assert!(out.status.success(), "mount tmpfs: {}", stderr(&out));
        self.tmpfs = Some(at);
    }

    fn mount_lazyfs(&mut self) {
        let backing = self.dir.join("backing");
        std::fs::create_dir_all(&backing).unwrap();
        std::fs::create_dir_all(self.data_dir()).unwrap();
        self.lazyfs = Some(LazyFsMount::mount(
            &backing,
            &self.data_dir(),
            &self.dir.join("lazyfs.log"),
        ));
    }
}

/// N `wharf serve` processes forming one cluster.
pub struct TestCluster {
    _root: tempfile::TempDir,
    root: PathBuf,
    opts: ClusterOpts,
    pub members: Vec<Member>,
    http: reqwest::blocking::Client,
    /// The namespaces the members run in (with [`ClusterOpts::netlab`]). Dropped after the
    /// members are killed: a namespace with a process in it outlives its deletion.
    lab: Option<NetLab>,
}

impl TestCluster {
    /// Starts `n` nodes: the first creates the cluster, the others join and are promoted.
    pub fn start(n: usize, opts: ClusterOpts) -> TestCluster {
        let root = tempfile::Builder::new()
            .prefix("wharf-cluster-")
            .tempdir()
            .unwrap();
        let lab = opts.netlab.then(|| {
            assert!(
                opts.tls,
                "a netlab cluster needs ClusterOpts.tls = true: plaintext between nodes is \
                 allowed only on loopback"
            );
            NetLab::up(n)
        });
        let mut cluster = TestCluster {
            root: root.path().to_path_buf(),
            _root: root,
            opts,
            members: Vec::new(),
            // No proxy from the environment: lab addresses are not loopback.
            http: reqwest::blocking::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            lab,
        };
        let first = cluster.new_member(None);
        cluster.members.push(first);
        // `cluster init` binds the cluster address, so it runs where the node will.
        let init = cluster
            .node_command(0)
            .args(["cluster", "init", "--json", "--config"])
            .arg(cluster.members[0].config_path())
            .output()
            .unwrap();
        assert!(init.status.success(), "cluster init: {}", stderr(&init));
        cluster.spawn(0, None);
        cluster.wait_ready(0);
        cluster.members[0].node_id = 1;
        for _ in 1..n {
            let i = cluster.add_learner();
            let id = cluster.members[i].node_id;
            cluster.promote(0, id);
        }
        cluster
    }

    fn new_member(&mut self, join: Option<&str>) -> Member {
        let index = self.members.len() + 1;
        let dir = self.root.join(format!("node{index}"));
        std::fs::create_dir_all(&dir).unwrap();
        let (client, cluster) = match &mut self.lab {
            Some(lab) => {
                if lab.nodes() < index {
                    lab.add_node();
                }
                let ip = lab.node_ip(index);
                (
                    format!("{ip}:{LAB_CLIENT_PORT}"),
                    format!("{ip}:{LAB_CLUSTER_PORT}"),
                )
            }
            None => (free_addr(), free_addr()),
        };
        let mut member = Member {
            index,
            node_id: 0,
            dir,
            client,
            cluster,
            child: None,
            lazyfs: None,
            tmpfs: None,
        };
        if self.opts.disk_bytes > 0 {
            member.mount_tmpfs(self.opts.disk_bytes, self.opts.lazyfs);
        }
        if self.opts.lazyfs {
            member.mount_lazyfs();
        }
        let join = join
            .map(|a| format!("join = \"{a}\"\n"))
            .unwrap_or_default();
        let config = format!(
            "[server]\nlisten = \"{client}\"\ndata_dir = \"data\"\nregion = \"{region}\"\n\
             auto_create_repos = true\n\n\
             [cluster]\nlisten = \"{cluster}\"\n{join}heartbeat_ms = {hb}\n\
             election_timeout_min_ms = {emin}\nelection_timeout_max_ms = {emax}\n\
             snapshot_every_entries = {snap}\nlog_entries_kept = {keep}\ntls = {tls}\n{extra}",
            client = member.client,
            cluster = member.cluster,
            region = member.region(),
            snap = self.opts.snapshot_every_entries,
            keep = self.opts.log_entries_kept,
            tls = self.opts.tls,
            extra = self.opts.extra_config,
            hb = self.opts.heartbeat_ms,
            emin = 5 * self.opts.heartbeat_ms,
            emax = 10 * self.opts.heartbeat_ms,
        );
        std::fs::write(member.config_path(), config).unwrap();
        member
    }

    /// `wharf` where member `i` runs: in its namespace with a lab (`ip` execs wharf, so the
    /// child's PID is wharf's own).
    fn node_command(&self, i: usize) -> Command {
        match &self.lab {
            Some(lab) => lab.command(self.members[i].index, wharf_bin()),
            None => Command::new(wharf_bin()),
        }
    }

    /// `wharf serve --config <member i's file>`, where member `i` runs.
    fn serve_command(&self, i: usize) -> Command {
        let mut command = self.node_command(i);
        command
            .arg("serve")
            .arg("--config")
            .arg(self.members[i].config_path());
        command
    }

    fn spawn(&mut self, i: usize, token: Option<&str>) {
        let mut command = self.serve_command(i);
        let m = &mut self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(m.dir.join("wharf.log"))
            .unwrap();
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some(token) = token {
            command.env("WHARF_JOIN_TOKEN", token);
        }
        let dir = m.dir.to_string_lossy().into_owned();
        for (key, value) in &self.opts.node_env {
            command.env(key, value.replace("{dir}", &dir));
        }
        m.child = Some(command.spawn().unwrap());
    }

    /// `wharf cluster remove <id of member i> --yes` through member `via` (retried while the
    /// cluster is busy), then stops member `i` and wipes its data: the node is gone for good.
    pub fn remove_member(&mut self, i: usize, via: usize) {
        let id = self.members[i].node_id.to_string();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let out = self.cli_status(&self.members[via], &["cluster", "remove", &id, "--yes"]);
            // A retry of a removal that committed while its answer was lost.
            if out.status.success() || stderr(&out).contains("not a member") {
                break;
            }
            assert!(Instant::now() < deadline, "remove {id}: {}", stderr(&out));
            std::thread::sleep(Duration::from_millis(500));
        }
        self.kill9(i);
        let data = self.members[i].data_dir();
        for entry in std::fs::read_dir(&data).into_iter().flatten().flatten() {
            let path = entry.path();
            let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
        }
        // Durable, so that a later power cut cannot bring the old node's files back.
        if let Ok(dir) = std::fs::File::open(&data) {
            let _ = dir.sync_all();
        }
    }

    /// Brings a member removed with [`TestCluster::remove_member`] back as a new node (a new
    /// id, same directory and addresses): joins through another member, is promoted.
    pub fn rejoin(&mut self, i: usize) {
        let via = (0..self.members.len())
            .find(|&j| j != i && self.members[j].is_running())
            .expect("a running member to join through");
        let token = self.join_token();
        let config_path = self.members[i].config_path();
        let config = std::fs::read_to_string(&config_path).unwrap();
        let config: String = config
            .lines()
            .filter(|l| !l.starts_with("join = "))
            .map(|l| format!("{l}\n"))
            .collect::<String>()
            .replace(
                "[cluster]\n",
                &format!("[cluster]\njoin = \"{}\"\n", self.members[via].cluster),
            );
        std::fs::write(&config_path, config).unwrap();
        self.spawn(i, Some(&token));
        self.wait_ready(i);
        let id = self.members[i].minted_node_id();
        self.members[i].node_id = id;
        self.promote(via, id);
    }

    /// Joins a new node as a learner (not promoted); returns its position.
    pub fn add_learner(&mut self) -> usize {
        let via = self.members[0].cluster.clone();
        let token = self.join_token();
        let member = self.new_member(Some(&via));
        self.members.push(member);
        let i = self.members.len() - 1;
        self.spawn(i, Some(&token));
        self.wait_ready(i);
        let id = self.members[i].minted_node_id();
        self.members[i].node_id = id;
        i
    }

    /// A one-time join token, asked of any running node.
    pub fn join_token(&self) -> String {
        let m = self.running().next().unwrap();
        let out = self.cli(m, &["cluster", "join-token", "--ttl-secs", "300"]);
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// `wharf cluster promote <id> --yes` through the node at position `via`, retried while
    /// the learner is still catching up.
    pub fn promote(&self, via: usize, id: u64) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let out = self.cli_status(
                &self.members[via],
                &["cluster", "promote", &id.to_string(), "--yes"],
            );
            // A retry of a promotion that committed while its answer was lost.
            if out.status.success() || stderr(&out).contains("already") {
                return;
            }
            assert!(Instant::now() < deadline, "promote {id}: {}", stderr(&out));
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Runs the `wharf` CLI against member `m` and insists it succeeds.
    pub fn cli(&self, m: &Member, args: &[&str]) -> Output {
        let out = self.cli_status(m, args);
        assert!(out.status.success(), "wharf {args:?}: {}", stderr(&out));
        out
    }

    /// Runs the `wharf` CLI against member `m`.
    pub fn cli_status(&self, m: &Member, args: &[&str]) -> Output {
        Command::new(wharf_bin())
            .args(args)
            .arg("--endpoint")
            .arg(m.url())
            .output()
            .unwrap()
    }

    /// `GET /api/v1/cluster` through member `i`.
    pub fn status(&self, i: usize) -> Value {
        let out = self.cli(&self.members[i], &["cluster", "status", "--json"]);
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn running(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(|m| m.is_running())
    }

    /// The position of the member that currently leads, as the running nodes agree.
    pub fn leader(&self) -> usize {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            for m in self.running() {
                if let Ok(r) = self.http.get(format!("{}/api/v1/cluster", m.url())).send()
                    && r.status().is_success()
                    && let Ok(v) = r.json::<Value>()
                    && let Some(id) = v["leader"].as_u64()
                    && let Some(pos) = self
                        .members
                        .iter()
                        .position(|m| m.node_id == id && m.is_running())
                {
                    return pos;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no leader within {READY_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until member `i` answers `/readyz` with 200.
    pub fn wait_ready(&mut self, i: usize) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = &mut self.members[i].child
                && let Some(status) = child.try_wait().unwrap()
            {
                self.members[i].child = None;
                panic!(
                    "node{} exited ({status}):\n{}",
                    i + 1,
                    self.members[i].log()
                );
            }
            let ready = self
                .http
                .get(format!("{}/readyz", self.members[i].url()))
                .timeout(Duration::from_secs(2))
                .send()
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node{} not ready:\n{}",
                i + 1,
                self.members[i].log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The members whose process exited by itself since the last look (not those killed or
    /// stopped through this cluster); they count as stopped from now on.
    pub fn exited(&mut self) -> Vec<usize> {
        let mut gone = Vec::new();
        for (i, m) in self.members.iter_mut().enumerate() {
            if let Some(child) = &mut m.child
                && let Ok(Some(_)) = child.try_wait()
            {
                m.child = None;
                gone.push(i);
            }
        }
        gone
    }

    /// `kill -9` member `i`.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `sig` (a `kill -s` name: STOP, CONT, ...) to member `i`'s process.
    pub fn signal(&self, i: usize, sig: &str) {
        let child = self.members[i].child.as_ref().expect("member is running");
        signal(child.id(), sig);
    }

    /// Power loss of member `i`: kill -9, then every write its data dir did not fsync is
    /// dropped (needs [`ClusterOpts::lazyfs`]); the member stays down until
    /// [`TestCluster::restart`].
    pub fn power_cut(&mut self, i: usize) {
        self.kill9(i);
        let m = &mut self.members[i];
        let mut mount = m
            .lazyfs
            .take()
            .expect("a power cut needs ClusterOpts { lazyfs: true, .. }");
        mount.power_cut();
        drop(mount);
        m.mount_lazyfs();
    }

    /// SIGTERM member `i` and wait for it to exit.
    pub fn stop(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            signal(child.id(), "TERM");
            let _ = child.wait();
        }
    }

    /// Starts member `i` again from its directory and waits until it is ready.
    pub fn restart(&mut self, i: usize) {
        self.spawn(i, None);
        self.wait_ready(i);
    }

    /// Starts the members `list` again at once and waits until each is ready (a member alone
    /// cannot become ready when the others it needs for a leader are down too).
    pub fn restart_many(&mut self, list: &[usize]) {
        for &i in list {
            self.spawn(i, None);
        }
        for &i in list {
            self.wait_ready(i);
        }
    }

    /// Starts member `i` and returns its exit output instead of waiting for readiness (for
    /// nodes that must refuse to start).
    pub fn start_expecting_exit(&self, i: usize) -> Output {
        let mut child = self
            .serve_command(i)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if child.try_wait().unwrap().is_some() {
                return child.wait_with_output().unwrap();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let out = child.wait_with_output().unwrap();
                panic!("node{} kept running: {}", i + 1, stderr(&out));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until every running member has reported the cluster version its binary supports
    /// and applied the raise to the lowest of them. Command kinds newer than the base version
    /// (the holdings a node records, among others) wait for that raise, and a member that is
    /// cut off before it has reported holds the raise back until it is reachable again.
    pub fn wait_for_cluster_version(&self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let v = self.status(0);
            let supported: Option<Vec<u64>> = v["members"].as_array().map(|ms| {
                ms.iter()
                    .map(|m| m["supported_version"].as_u64().unwrap_or(0))
                    .collect()
            });
            if let Some(target) = supported.and_then(|s| s.into_iter().min())
                && target > 0
                && self
                    .running()
                    .all(|m| self.metric(m.index - 1, "wharf_cluster_version") == target)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster version was not raised within {READY_TIMEOUT:?}: {v}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `(applied_index, sha256)` of member `i`'s state machine.
    pub fn state_hash(&self, i: usize) -> (u64, String) {
        let v = self.state_hash_report(i);
        (
            v["applied_index"].as_u64().unwrap_or(0),
            v["sha256"].as_str().unwrap_or_default().to_string(),
        )
    }

    /// `GET /api/v1/cluster/state-hash` of member `i`: its hash now, the checkpoints the
    /// nodes reported, and any divergence found.
    pub fn state_hash_report(&self, i: usize) -> Value {
        self.http
            .get(format!(
                "{}/api/v1/cluster/state-hash",
                self.members[i].url()
            ))
            .send()
            .unwrap()
            .json()
            .unwrap()
    }

    /// A `/metrics` gauge of member `i`.
    pub fn metric(&self, i: usize, name: &str) -> u64 {
        let text = self
            .http
            .get(format!("{}/metrics", self.members[i].url()))
            .send()
            .unwrap()
            .text()
            .unwrap();
        text.lines()
            .find(|l| l.starts_with(&format!("{name}{{")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
    }

    /// Posts JSON to member `i` and returns status and body.
    pub fn post(&self, i: usize, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.members[i].url()))
            .json(&body)
            .send()
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(json!(null)))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The network lab the members run in.
    ///
    /// # Panics
    /// Unless the cluster was started with [`ClusterOpts::netlab`].
    pub fn lab(&self) -> &NetLab {
        self.lab
            .as_ref()
            .expect("cutting the network needs ClusterOpts { netlab: true, .. }")
    }

    /// Cuts member `i` off from every other member, both ways; the test still reaches it.
    pub fn isolate(&self, i: usize) {
        self.lab().isolate(self.members[i].index);
    }

    /// Cuts the network between members `a` and `b`, both ways.
    pub fn cut(&self, a: usize, b: usize) {
        self.lab().cut(self.members[a].index, self.members[b].index);
    }

    /// Drops everything member `from` sends to member `to` (the other way still works).
    pub fn cut_one_way(&self, from: usize, to: usize) {
        self.lab()
            .cut_one_way(self.members[from].index, self.members[to].index);
    }

    /// Restores every link between members.
    pub fn heal(&self) {
        self.lab().heal();
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut child) = m.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            // Unmounted before the temporary directory under it is removed.
            drop(m.lazyfs.take());
            if let Some(at) = m.tmpfs.take() {
                let _ = Command::new("umount").arg("-l").arg(at).status();
            }
        }
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}
