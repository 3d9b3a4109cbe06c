//! `wharf pypi yank|unyank` against a running node's admin API (PEP 592: a yanked release
//! stays downloadable, but installers skip it unless pinned to it exactly).

use clap::{Args, Subcommand};

use crate::repo::{ClientOpts, send};

#[derive(Args)]
pub struct PypiArgs {
    #[command(flatten)]
    client: ClientOpts,
    #[command(subcommand)]
    command: PypiCommand,
}

#[derive(Subcommand)]
enum PypiCommand {
    /// Yank a release of a project.
    Yank {
        repo: String,
        project: String,
        version: String,
        /// Shown to installers that still pick it.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Undo a yank.
    Unyank {
        repo: String,
        project: String,
        version: String,
    },
}

pub async fn run(args: PypiArgs) -> anyhow::Result<()> {
    let base = args.client.endpoint.trim_end_matches('/');
    let (repo, project, version, action, body) = match args.command {
        PypiCommand::Yank {
            repo,
            project,
            version,
            reason,
        } => (
            repo,
            project,
            version,
            "yank",
            serde_json::json!({ "reason": reason }),
        ),
        PypiCommand::Unyank {
            repo,
            project,
            version,
        } => (repo, project, version, "unyank", serde_json::json!({})),
    };
    let enc = |s: &str| {
        percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    let url = format!(
        "{base}/api/v1/repos/{}/pypi/{}/{}/{action}",
        enc(&repo),
        enc(&project),
        enc(&version)
    );
    let value = send(reqwest::Client::new().post(url).json(&body)).await?;
    if args.client.json {
        println!("{value}");
    } else {
        let verb = if action == "yank" {
            "yanked"
        } else {
            "unyanked"
        };
        let note = if value["changed"].as_bool() == Some(false) {
            " (no change)"
        } else {
            ""
        };
        println!(
            "{verb} {} {} in {repo}{note}",
            value["project"].as_str().unwrap_or(&project),
            value["version"].as_str().unwrap_or(&version)
        );
    }
    Ok(())
}
