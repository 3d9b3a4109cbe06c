//! `wharf cluster …`: create a cluster, mint join tokens, show status, change membership.
//!
//! Every membership change is planned first (current and resulting voter sets are printed)
//! and applied only with `--yes`, against the configuration it showed: if the membership
//! changed in between, the node refuses and nothing happens.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::{Value, json};
use wharf_config::Config;

use crate::repo::{ClientOpts, send};

#[derive(Args)]
pub struct ClusterArgs {
    #[command(flatten)]
    client: ClientOpts,
    #[command(subcommand)]
    command: ClusterCommand,
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Create a new cluster in the data directory of FILE, with this node as its first voter.
    Init {
        #[arg(long)]
        config: PathBuf,
    },
    /// Leader, term and every member with role, region, address, applied index and lag.
    Status,
    /// Print a one-time token for `wharf serve --join ADDR --token TOKEN`.
    JoinToken {
        /// How long the token stays valid.
        #[arg(long, default_value_t = 3600)]
        ttl_secs: u64,
    },
    /// Make a caught-up learner a voter.
    Promote(ChangeArgs),
    /// Make a voter a learner.
    Demote(ChangeArgs),
    /// Remove a member from the cluster (its id is never reused).
    Remove(ChangeArgs),
    /// Hand leadership to another voter.
    TransferLeader { node_id: u64 },
    /// Replace the cluster CA: every member trusts a new CA next to the old one, then
    /// presents a certificate from it. `--finish` later stops trusting the old CA.
    /// Every member must be up.
    RotateCerts {
        /// Stop trusting every CA but the new one (after every member has taken the new one).
        #[arg(long)]
        finish: bool,
        /// Rotate; without it, only say what would happen.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Args)]
struct ChangeArgs {
    node_id: u64,
    /// Apply the change; without it, only show it.
    #[arg(long)]
    yes: bool,
}

pub async fn run(args: ClusterArgs) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let base = args.client.endpoint.trim_end_matches('/').to_string();
    let as_json = args.client.json;
    match args.command {
        ClusterCommand::Init { config } => {
            let config = Config::load(&config)?;
            let identity = wharf_server::init_cluster(&config).await?;
            if as_json {
                println!(
                    "{}",
                    json!({ "cluster_id": identity.cluster_id, "node_id": identity.node_id })
                );
            } else {
                println!(
                    "created cluster {} with node {} as its first voter (data in {})",
                    identity.cluster_id,
                    identity.node_id,
                    config.server.data_dir.display()
                );
                println!("start it with: wharf serve --config <FILE>");
            }
        }
        ClusterCommand::Status => {
            let status = send(client.get(format!("{base}/api/v1/cluster"))).await?;
            if as_json {
                println!("{status}");
            } else {
                print_status(&status);
            }
        }
        ClusterCommand::JoinToken { ttl_secs } => {
            let body = json!({ "ttl_secs": ttl_secs });
            let value = send(
                client
                    .post(format!("{base}/api/v1/cluster/join-tokens"))
                    .json(&body),
            )
            .await?;
            if as_json {
                println!("{value}");
            } else {
                println!("{}", value["token"].as_str().unwrap_or_default());
            }
        }
        ClusterCommand::Promote(a) => change(&client, &base, "promote", a, as_json).await?,
        ClusterCommand::Demote(a) => change(&client, &base, "demote", a, as_json).await?,
        ClusterCommand::Remove(a) => change(&client, &base, "remove", a, as_json).await?,
        ClusterCommand::TransferLeader { node_id } => {
            let body = json!({ "node_id": node_id });
            let value = send(
                client
                    .post(format!("{base}/api/v1/cluster/leader"))
                    .json(&body),
            )
            .await?;
            if as_json {
                println!("{value}");
            } else {
                println!("node {} leads", value["leader"]);
            }
        }
        ClusterCommand::RotateCerts { finish, yes } => {
            rotate_certs(&client, &base, finish, yes, as_json).await?
        }
    }
    Ok(())
}

async fn rotate_certs(
    client: &reqwest::Client,
    base: &str,
    finish: bool,
    yes: bool,
    as_json: bool,
) -> anyhow::Result<()> {
    if !yes {
        if finish {
            println!("every member will stop trusting all CAs but the one that signs now;");
            println!("a member still presenting an older certificate gets a new one first");
        } else {
            println!("a new cluster CA will be created; every member will trust it next to the");
            println!("current one, then present a certificate it signed");
            println!(
                "afterwards: mint new join tokens (old ones carry the old CA), and once every"
            );
            println!("member is on the new CA run `wharf cluster rotate-certs --finish --yes`");
        }
        println!("every member must be up; re-run with --yes to rotate");
        return Ok(());
    }
    let done = send(
        client
            .post(format!("{base}/api/v1/cluster/rotate-certs"))
            .json(&json!({ "finish": finish })),
    )
    .await?;
    if as_json {
        println!("{done}");
        return Ok(());
    }
    for node in done["nodes"].as_array().into_iter().flatten() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let days = node["not_after"].as_i64().map_or(0, |t| (t - now) / 86_400);
        println!(
            "node {}: certificate valid for {days} more days, trusts {} CA(s)",
            node["node_id"], node["trusted_cas"]
        );
    }
    if finish {
        println!("done: only the new CA is trusted");
    } else {
        println!("done: every member presents a certificate from the new CA");
        println!("next: `wharf cluster rotate-certs --finish --yes` to stop trusting the old one");
    }
    Ok(())
}

async fn change(
    client: &reqwest::Client,
    base: &str,
    action: &str,
    args: ChangeArgs,
    as_json: bool,
) -> anyhow::Result<()> {
    let url = format!("{base}/api/v1/cluster/membership");
    let plan = send(client.post(&url).json(&json!({
        "action": action, "node_id": args.node_id, "dry_run": true
    })))
    .await?;
    let show = |label: &str, v: &Value| {
        let ids: Vec<String> = v
            .as_array()
            .into_iter()
            .flatten()
            .map(|id| id.to_string())
            .collect();
        format!("{label}: {{{}}}", ids.join(", "))
    };
    if !args.yes {
        if as_json {
            println!("{plan}");
        } else {
            println!("{action} node {}", args.node_id);
            println!("  {}", show("voters now  ", &plan["voters_before"]));
            println!("  {}", show("voters after", &plan["voters_after"]));
            println!("re-run with --yes to apply");
        }
        return Ok(());
    }
    let done = send(client.post(&url).json(&json!({
        "action": action,
        "node_id": args.node_id,
        "expected_membership_index": plan["membership_index"],
    })))
    .await?;
    if as_json {
        println!("{done}");
    } else {
        println!("{action} node {}: done", args.node_id);
        println!("  {}", show("voters before", &done["voters_before"]));
        println!("  {}", show("voters now   ", &done["voters_after"]));
    }
    Ok(())
}

fn print_status(status: &Value) {
    println!(
        "cluster {}",
        status["cluster_id"].as_str().unwrap_or_default()
    );
    println!(
        "leader {}  term {}  committed {}  cluster version {}",
        status["leader"], status["term"], status["committed_index"], status["cluster_version"]
    );
    if !status["divergence"].is_null() {
        println!(
            "WARNING: nodes reported different state hashes at index {}: {}",
            status["divergence"]["index"], status["divergence"]["hashes"]
        );
    }
    println!(
        "{:<4} {:<8} {:<12} {:<22} {:<28} {:>8} {:>6} {:>8} {:>8}",
        "ID",
        "ROLE",
        "REGION",
        "CLUSTER ADDR",
        "CLIENT URL",
        "MATCHED",
        "LAG",
        "VERSION",
        "BACKLOG"
    );
    for m in status["members"].as_array().into_iter().flatten() {
        let opt = |v: &Value| match v.as_u64() {
            Some(n) => n.to_string(),
            None => "-".to_string(),
        };
        let leader = if status["leader"] == m["id"] { "*" } else { "" };
        println!(
            "{:<4} {:<8} {:<12} {:<22} {:<28} {:>8} {:>6} {:>8} {:>8}",
            format!("{}{leader}", m["id"]),
            m["role"].as_str().unwrap_or_default(),
            m["region"].as_str().unwrap_or_default(),
            m["addr"].as_str().unwrap_or_default(),
            m["client_url"].as_str().unwrap_or_default(),
            opt(&m["matched_index"]),
            opt(&m["lag"]),
            opt(&m["supported_version"]),
            opt(&m["backlog"]),
        );
    }
}
