//! The `wharf` binary: `dev` and `serve` run a node (`dev --nodes 3` a loopback cluster);
//! `cluster init` creates a cluster; `repo`, `pypi`, `cluster …` and `config` are client-side commands
//! (`--endpoint URL` / `WHARF_ENDPOINT`, `--json`).

mod cluster;
mod dev_cluster;
mod pypi;
mod repo;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use wharf_config::Config;

#[derive(Parser)]
#[command(
    name = "wharf",
    version,
    about = "Wharf: a geo-distributed artifact registry"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A working registry with no setup: data in ./wharf-data, 127.0.0.1:7070, no auth,
    /// repositories created on first push. `--nodes 3` runs a three-node cluster on loopback.
    Dev {
        #[arg(long, default_value = "wharf-data")]
        data_dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:7070")]
        listen: SocketAddr,
        /// Number of nodes (each a `wharf serve` process, in <data-dir>/nodeN).
        #[arg(long, default_value_t = 1)]
        nodes: usize,
    },
    /// Run a node from a configuration file.
    Serve {
        #[arg(long)]
        config: PathBuf,
        /// Overrides server.data_dir.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// First start only: join the cluster through this member's cluster address
        /// (overrides cluster.join).
        #[arg(long)]
        join: Option<String>,
        /// The one-time token from `wharf cluster join-token`.
        #[arg(long, env = "WHARF_JOIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// The cluster: init, status, join tokens, membership changes.
    Cluster(cluster::ClusterArgs),
    /// Configuration files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Repositories on a running node.
    Repo(repo::RepoArgs),
    /// PyPI projects on a running node: yank and unyank releases.
    Pypi(pypi::PypiArgs),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Parse and validate FILE; print the effective configuration.
    Check { file: PathBuf },
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WHARF_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    let json = std::env::var("WHARF_LOG_FORMAT").is_ok_and(|f| f == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts");
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Dev { data_dir, listen, nodes } => {
                init_logging();
                if !listen.ip().is_loopback() {
                    anyhow::bail!("wharf dev has no authentication and listens on loopback only; use `wharf serve` for {listen}");
                }
                if nodes > 1 {
                    return dev_cluster::run(data_dir, nodes, listen).await;
                }
                let mut config = Config::dev();
                config.server.data_dir = data_dir;
                config.server.listen = listen;
                // One node talks to no peer: its cluster listener takes any free loopback port.
                config.cluster.listen = SocketAddr::new(listen.ip(), 0);
                eprintln!("wharf dev: registry on http://{listen} (data in {})", config.server.data_dir.display());
                let options = wharf_server::RunOptions { bootstrap: true, join_token: None };
                Ok(wharf_server::run(config, options, shutdown_signal()).await?)
            }
            Command::Serve { config, data_dir, join, token } => {
                init_logging();
                let mut config = Config::load(&config)?;
                if let Some(dir) = data_dir {
                    config.server.data_dir = dir;
                }
                if join.is_some() {
                    config.cluster.join = join;
                    config.validate()?;
                }
                let options = wharf_server::RunOptions { bootstrap: false, join_token: token };
                Ok(wharf_server::run(config, options, shutdown_signal()).await?)
            }
            Command::Cluster(args) => {
                if std::env::var_os("WHARF_LOG").is_some() {
                    init_logging();
                }
                cluster::run(args).await
            }
            Command::Config { command: ConfigCommand::Check { file } } => {
                let config = Config::load(&file)?;
                println!("{}: ok", file.display());
                println!("listen = {}\ndata_dir = {}", config.server.listen, config.server.data_dir.display());
                Ok(())
            }
            Command::Repo(args) => repo::run(args).await,
            Command::Pypi(args) => pypi::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown requested");
}
