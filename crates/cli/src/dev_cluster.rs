//! `wharf dev --nodes N`: an N-node cluster on loopback, one `wharf serve` process per node.
//!
//! ```text
//! <D>/nodeK/wharf.toml   the node's configuration (written on first start)
//! <D>/nodeK/wharf.pid    its process id
//! <D>/nodeK/wharf.log    its log
//! <D>/nodeK/...          its data (node.toml, raft/, blobs/)
//! ```
//!
//! Node 1 serves clients on `--listen` (127.0.0.1:7070) and the cluster on the next port;
//! node K uses the same ports plus 100 × (K − 1). On first start node 1 creates the cluster,
//! the others join with one-time tokens and are promoted to voters once caught up. Ctrl-C
//! (or SIGTERM) stops all of them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::repo::send;

const REGIONS: [&str; 5] = ["us-east", "eu-west", "ap-south", "sa-east", "af-south"];
/// How long the cluster may take to form.
const FORM_TIMEOUT: Duration = Duration::from_secs(60);

struct DevNode {
    index: usize,
    dir: PathBuf,
    client: SocketAddr,
    cluster: SocketAddr,
    child: Option<Child>,
}

impl DevNode {
    fn url(&self) -> String {
        format!("http://{}", self.client)
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("wharf.toml")
    }

    fn write_config(&self, join: Option<SocketAddr>) -> anyhow::Result<()> {
        let region = REGIONS[(self.index - 1) % REGIONS.len()];
        let join = join
            .map(|a| format!("join = \"{a}\"\n"))
            .unwrap_or_default();
        let text = format!(
            "# Written by `wharf dev --nodes`: node {index} of a loopback cluster.\n\
             [server]\nlisten = \"{client}\"\ndata_dir = \".\"\nregion = \"{region}\"\n\
             auto_create_repos = true\n\n\
             [cluster]\nlisten = \"{cluster}\"\n{join}heartbeat_ms = 100\n\
             election_timeout_min_ms = 500\nelection_timeout_max_ms = 1000\n",
            index = self.index,
            client = self.client,
            cluster = self.cluster,
        );
        std::fs::write(self.config_path(), text)
            .with_context(|| format!("writing {}", self.config_path().display()))
    }

    fn spawn(&mut self, token: Option<&str>) -> anyhow::Result<()> {
        let log = std::fs::File::create(self.dir.join("wharf.log"))?;
        let mut command = Command::new(std::env::current_exe()?);
        command
            .arg("serve")
            .arg("--config")
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(token) = token {
            command.env("WHARF_JOIN_TOKEN", token);
        }
        let child = command.spawn().context("starting wharf serve")?;
        std::fs::write(self.dir.join("wharf.pid"), format!("{}\n", child.id()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Fails if the process has exited.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(child) = &mut self.child
            && let Some(status) = child.try_wait()?
        {
            self.child = None;
            let log = std::fs::read_to_string(self.dir.join("wharf.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "node {} exited ({status}); the end of {}:\n{}",
                self.index,
                self.dir.join("wharf.log").display(),
                tail.join("\n")
            );
        }
        Ok(())
    }
}

pub async fn run(data_dir: PathBuf, nodes: usize, listen: SocketAddr) -> anyhow::Result<()> {
    if !(2..=REGIONS.len()).contains(&nodes) {
        bail!(
            "--nodes must be between 2 and {} (1 is plain `wharf dev`)",
            REGIONS.len()
        );
    }
    let mut members = Vec::new();
    for index in 1..=nodes {
        let offset = u16::try_from(100 * (index - 1))?;
        let port = listen
            .port()
            .checked_add(offset)
            .context("port out of range")?;
        let dir = data_dir.join(format!("node{index}"));
        std::fs::create_dir_all(&dir)?;
        let dir = dir.canonicalize()?;
        members.push(DevNode {
            index,
            client: SocketAddr::new(listen.ip(), port),
            cluster: SocketAddr::new(listen.ip(), port + 1),
            dir,
            child: None,
        });
    }
    let result = form_and_wait(&mut members).await;
    stop_all(&mut members);
    result
}

fn is_fresh(dir: &Path) -> bool {
    !dir.join("node.toml").exists()
}

async fn form_and_wait(members: &mut [DevNode]) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let leader_cluster = members[0].cluster;
    let fresh: Vec<bool> = members.iter().map(|m| is_fresh(&m.dir)).collect();

    if fresh[0] {
        members[0].write_config(None)?;
        let config = wharf_config::Config::load(&members[0].config_path())?;
        let identity = wharf_server::init_cluster(&config).await?;
        eprintln!("wharf dev: created cluster {}", identity.cluster_id);
    }
    members[0].spawn(None)?;
    wait_ready(&http, &mut members[0]).await?;

    for i in 1..members.len() {
        let token = if fresh[i] {
            members[i].write_config(Some(leader_cluster))?;
            let value = send(
                http.post(format!("{}/api/v1/cluster/join-tokens", members[0].url()))
                    .json(&json!({ "ttl_secs": 600 })),
            )
            .await?;
            Some(value["token"].as_str().unwrap_or_default().to_string())
        } else {
            None
        };
        members[i].spawn(token.as_deref())?;
    }
    for m in members.iter_mut().skip(1) {
        wait_ready(&http, m).await?;
    }
    // Promote every learner, also one left over by an earlier run stopped half-way.
    for m in members.iter().skip(1) {
        let id = node_id(&m.dir)?;
        let status = send(http.get(format!("{}/api/v1/cluster", members[0].url()))).await?;
        let is_learner = status["members"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|member| member["id"] == id && member["role"] == "learner");
        if is_learner {
            promote(&http, &members[0].url(), id).await?;
        }
    }

    println!("wharf dev: {} nodes on loopback", members.len());
    for m in members.iter() {
        println!(
            "  node{}  {}  (cluster {}, data {})",
            m.index,
            m.url(),
            m.cluster,
            m.dir.display()
        );
    }
    println!("try: wharf cluster status --endpoint {}", members[0].url());
    println!("Ctrl-C stops all of them.");

    let stop = crate::shutdown_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return Ok(()),
            () = tokio::time::sleep(Duration::from_millis(500)) => {
                for m in members.iter_mut() {
                    m.check_alive()?;
                }
            }
        }
    }
}

/// The node id a member was given (from its node.toml).
fn node_id(dir: &Path) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(dir.join("node.toml"))?;
    let value: toml::Value = toml::from_str(&text)?;
    value
        .get("node_id")
        .and_then(toml::Value::as_integer)
        .and_then(|n| u64::try_from(n).ok())
        .context("node.toml has no node_id")
}

async fn wait_ready(http: &reqwest::Client, node: &mut DevNode) -> anyhow::Result<()> {
    let deadline = Instant::now() + FORM_TIMEOUT;
    loop {
        node.check_alive()?;
        let ready = http
            .get(format!("{}/readyz", node.url()))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "node {} was not ready within {FORM_TIMEOUT:?}; see {}",
                node.index,
                node.dir.join("wharf.log").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Promotes a learner once it has caught up (the leader refuses before that).
async fn promote(http: &reqwest::Client, leader_url: &str, id: u64) -> anyhow::Result<()> {
    let url = format!("{leader_url}/api/v1/cluster/membership");
    let deadline = Instant::now() + FORM_TIMEOUT;
    loop {
        let attempt = async {
            let plan: Value = send(http.post(&url).json(&json!({
                "action": "promote", "node_id": id, "dry_run": true
            })))
            .await?;
            send(http.post(&url).json(&json!({
                "action": "promote", "node_id": id,
                "expected_membership_index": plan["membership_index"]
            })))
            .await
        };
        match attempt.await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() < deadline => {
                tracing::debug!("promote {id}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.context(format!("promoting node {id}"))),
        }
    }
}

/// SIGTERM to every node still running, then wait for each.
fn stop_all(members: &mut [DevNode]) {
    for m in members.iter_mut() {
        if let Some(child) = &m.child
            && let Ok(pid) = i32::try_from(child.id())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
    for m in members.iter_mut() {
        if let Some(mut child) = m.child.take() {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
            let _ = std::fs::remove_file(m.dir.join("wharf.pid"));
        }
    }
}
