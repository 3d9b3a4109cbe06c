//! `wharf repo create|list` against a running node's admin API.

use clap::{Args, Subcommand};
use serde_json::{Value, json};

/// Where and how client-side commands talk to a node.
#[derive(Args)]
pub struct ClientOpts {
    /// The node's client URL.
    #[arg(
        long,
        env = "WHARF_ENDPOINT",
        default_value = "http://127.0.0.1:7070",
        global = true
    )]
    pub(crate) endpoint: String,
    /// Print machine-readable JSON.
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

#[derive(Args)]
pub struct RepoArgs {
    #[command(flatten)]
    client: ClientOpts,
    #[command(subcommand)]
    command: RepoCommand,
}

#[derive(Subcommand)]
enum RepoCommand {
    /// Create a hosted repository.
    Create {
        name: String,
        /// oci, generic, npm, pypi or cargo.
        #[arg(long)]
        format: wharf_types::Format,
        /// Tags / paths bind once, forever.
        #[arg(long)]
        immutable: bool,
        /// Admit OCI indexes whose child manifests are missing.
        #[arg(long)]
        allow_sparse_index: bool,
        /// How mutable tags and listings are read on each node: strong (linearizable) or
        /// bounded (local while the node heard from a leader within read.max_staleness_ms).
        #[arg(long, default_value = "strong", value_parser = ["strong", "bounded"])]
        consistency: String,
        /// Which nodes keep copies of its blobs: all-regions (every node, soon after the
        /// commit) or on-demand (the uploads' min_copies, plus nodes that read them).
        #[arg(long, default_value = "all-regions", value_parser = ["all-regions", "on-demand"])]
        replication: String,
        /// Data residency: store its bytes only on nodes of these regions (comma-separated;
        /// the replication policy then applies within them). Other nodes forward its writes
        /// and stream its reads without keeping a copy. Default: every region.
        #[arg(long, value_delimiter = ',')]
        regions: Vec<String>,
        /// npm: let versions be unpublished (`npm unpublish`); an unpublished version stays
        /// reserved forever.
        #[arg(long)]
        allow_unpublish: bool,
    },
    /// List repositories.
    List,
}

pub async fn run(args: RepoArgs) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let base = args.client.endpoint.trim_end_matches('/');
    match args.command {
        RepoCommand::Create {
            name,
            format,
            immutable,
            allow_sparse_index,
            consistency,
            replication,
            regions,
            allow_unpublish,
        } => {
            let body = json!({ "name": name, "format": format, "immutable": immutable, "allow_sparse_index": allow_sparse_index, "consistency": consistency, "replication": replication, "regions": regions, "allow_unpublish": allow_unpublish });
            let response = client
                .post(format!("{base}/api/v1/repos"))
                .json(&body)
                .send()
                .await?;
            let status = response.status();
            let value: Value = response.json().await.unwrap_or(Value::Null);
            if !status.is_success() {
                anyhow::bail!("{}", error_message(status, &value));
            }
            if args.client.json {
                println!("{value}");
            } else {
                println!(
                    "created {} repository {name}{}{}",
                    format.as_str(),
                    if immutable { " (immutable)" } else { "" },
                    if regions.is_empty() {
                        String::new()
                    } else {
                        format!(", stored in {}", regions.join(", "))
                    }
                );
            }
        }
        RepoCommand::List => {
            let value = send(client.get(format!("{base}/api/v1/repos"))).await?;
            if args.client.json {
                println!("{value}");
            } else {
                println!(
                    "{:<32} {:<8} {:<9} {:<12} REGIONS",
                    "NAME", "FORMAT", "IMMUTABLE", "REPLICATION"
                );
                for repo in value["repositories"].as_array().into_iter().flatten() {
                    let regions: Vec<&str> = repo["regions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect();
                    println!(
                        "{:<32} {:<8} {:<9} {:<12} {}",
                        repo["name"].as_str().unwrap_or_default(),
                        repo["format"].as_str().unwrap_or_default(),
                        repo["immutable"].as_bool().unwrap_or_default(),
                        repo["replication"].as_str().unwrap_or_default(),
                        if regions.is_empty() {
                            "all".to_string()
                        } else {
                            regions.join(",")
                        }
                    );
                }
            }
        }
    }
    Ok(())
}

/// Sends a request and returns its JSON body, or the server's error as an error.
pub(crate) async fn send(request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
    let response = request.send().await?;
    let status = response.status();
    let value: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        anyhow::bail!("{}", error_message(status, &value));
    }
    Ok(value)
}

fn error_message(status: reqwest::StatusCode, body: &Value) -> String {
    let first = &body["errors"][0];
    match (first["code"].as_str(), first["message"].as_str()) {
        (Some(code), Some(message)) => format!("{status}: {code}: {message}"),
        _ => format!("{status}"),
    }
}
