//! Command line: the flags are a contract with `bench/compare`, keep them stable.

use clap::{Parser, ValueEnum};

/// What each operation does; see the crate documentation for the exact request sequences.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ScenarioName {
    /// HEAD (404) → POST → one PATCH with the whole blob → PUT ?digest= of a new blob per op.
    BlobPush,
    /// docker's push of a new blob per op: HEAD (404) → POST → one PATCH with
    /// `Transfer-Encoding: chunked` (no length) → PUT ?digest= → HEAD again to verify.
    DockerPush,
    /// GET of one pushed blob, body compared byte for byte.
    BlobPull,
    /// HEAD of one pushed blob.
    BlobHead,
    /// GET of a tagged OCI manifest with containers/image's six Accept lines.
    ManifestGet,
    /// HEAD of a tagged OCI manifest with containers/image's six Accept lines.
    ManifestHead,
    /// PUT of a new, unique manifest under a new tag per op.
    TagCommit,
    /// PUT of one same manifest under a new tag per op: after the first, a pure metadata
    /// commit (the manifest's bytes are stored already).
    TagOnly,
    /// No server: one in-process TCP stream of `--size` bytes, the machine's ceiling.
    Loopback,
    /// Cluster read-through: a new blob per op is pushed (untimed) to `--target`, then the op
    /// GETs it from `--pull-from`, a node that does not hold it and streams it from a peer.
    /// Use an `on-demand` repository, so that no node copies it ahead of the read.
    CrossNodePull,
    /// GET of one package's packument (`--versions` versions, published in setup) as npm
    /// sends it when installing: the abbreviated form, gzip accepted. The npm registry is at
    /// `--npm-prefix` under `--target`.
    NpmPackument,
    /// GET of one project's simple page (`--versions` wheels, uploaded in setup) in its PEP 503
    /// HTML form. The PyPI repository (its upload URL) is at `--pypi-prefix` under `--target`.
    PypiSimple,
}

impl ScenarioName {
    /// The name as typed on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BlobPush => "blob-push",
            Self::DockerPush => "docker-push",
            Self::BlobPull => "blob-pull",
            Self::BlobHead => "blob-head",
            Self::ManifestGet => "manifest-get",
            Self::ManifestHead => "manifest-head",
            Self::TagCommit => "tag-commit",
            Self::TagOnly => "tag-only",
            Self::Loopback => "loopback",
            Self::CrossNodePull => "cross-node-pull",
            Self::NpmPackument => "npm-packument",
            Self::PypiSimple => "pypi-simple",
        }
    }

    /// Whether the scenario moves blob bytes (reported as bytes/s and CPU s/GB).
    pub fn moves_blobs(self) -> bool {
        matches!(
            self,
            Self::BlobPush
                | Self::DockerPush
                | Self::BlobPull
                | Self::Loopback
                | Self::CrossNodePull
        )
    }
}

/// wharf-bench: load generator for OCI registries (Wharf, docker-registry, ...).
///
/// Every response is validated; any unexpected status, header or body aborts the run with exit
/// code 2.
#[derive(Debug, Parser)]
#[command(name = "wharf-bench", version)]
pub struct Args {
    /// Registry base URL, e.g. http://127.0.0.1:5000 (ignored by `loopback`).
    #[arg(long, default_value = "http://127.0.0.1:5000")]
    pub target: String,
    /// Scenario to run.
    #[arg(long, value_enum)]
    pub scenario: ScenarioName,
    /// Blob size in bytes, or with a KiB/MiB/GiB suffix (default: 1MiB for blob-push/pull,
    /// 1GiB for loopback, 1KiB otherwise).
    #[arg(long, value_parser = parse_size)]
    pub size: Option<u64>,
    /// Concurrent clients, each a task with its own keep-alive connection.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub clients: u64,
    /// Measured operations across all clients (default depends on scenario and size).
    #[arg(long)]
    pub ops: Option<u64>,
    /// Unmeasured operations run first (default: a tenth of --ops, at most 100).
    #[arg(long)]
    pub warmup: Option<u64>,
    /// Repository name; its first path segment is the Wharf repository.
    #[arg(long, default_value = "bench/img")]
    pub name: String,
    /// Server process to sample from /proc (peak RSS, CPU seconds).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Seed for blob contents and tag names (default: from the clock, so runs don't collide).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Print exactly one JSON object on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    /// `cross-node-pull`: base URL of the node the blobs are read from (not `--target`).
    #[arg(long)]
    pub pull_from: Option<String>,
    /// `npm-packument`: the npm registry's path under `--target` (`/npm/<repo>` on Wharf, default `/npm/bench-npm`; empty
    /// for a registry at the root such as verdaccio).
    #[arg(long, default_value = "/npm/bench-npm")]
    pub npm_prefix: String,
    /// `pypi-simple`: the PyPI repository's upload URL path under `--target` (`/pypi/<repo>`
    /// on Wharf, empty for a server at the root such as pypiserver).
    #[arg(long, default_value = "/pypi/bench-pypi")]
    pub pypi_prefix: String,
    /// `npm-packument` / `pypi-simple`: how many versions the package has.
    #[arg(long, default_value_t = 1000)]
    pub versions: u64,
}

/// The run's parameters with every default filled in.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Scenario to run.
    pub scenario: ScenarioName,
    /// Registry base URL as given.
    pub target: String,
    /// Blob size (for blob scenarios) or the setup layer's size.
    pub size: u64,
    /// Concurrent clients.
    pub clients: u64,
    /// Measured operations.
    pub ops: u64,
    /// Unmeasured operations before them.
    pub warmup: u64,
    /// Repository name.
    pub name: String,
    /// Server process to sample.
    pub server_pid: Option<u32>,
    /// Seed for contents and tags.
    pub seed: u64,
    /// JSON output.
    pub json: bool,
    /// Where `cross-node-pull` reads.
    pub pull_from: Option<String>,
    /// The npm registry's path under the target.
    pub npm_prefix: String,
    /// The PyPI repository's path under the target.
    pub pypi_prefix: String,
    /// Versions of the `npm-packument` package / `pypi-simple` project.
    pub versions: u64,
}

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

impl Args {
    /// Fills in scenario-specific defaults and checks the combination.
    pub fn settings(&self) -> anyhow::Result<Settings> {
        let size = self.size.unwrap_or(match self.scenario {
            ScenarioName::BlobPush
            | ScenarioName::DockerPush
            | ScenarioName::BlobPull
            | ScenarioName::CrossNodePull => MIB,
            ScenarioName::Loopback => GIB,
            _ => KIB,
        });
        anyhow::ensure!(size > 0, "--size must be at least 1 byte");
        let ops = self.ops.unwrap_or(match self.scenario {
            ScenarioName::BlobPush
            | ScenarioName::DockerPush
            | ScenarioName::BlobPull
            | ScenarioName::CrossNodePull
            | ScenarioName::Loopback => default_blob_ops(size),
            ScenarioName::TagCommit | ScenarioName::TagOnly => 1000,
            _ => 2000,
        });
        anyhow::ensure!(ops > 0, "--ops must be at least 1");
        let warmup = self.warmup.unwrap_or((ops / 10).min(100));
        anyhow::ensure!(
            self.name.split('/').all(|s| !s.is_empty()),
            "--name {:?}: expected path segments like bench/img",
            self.name
        );
        let seed = self.seed.unwrap_or_else(|| {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
            now.map_or(0, |d| d.as_nanos() as u64) % 1_000_000_000_000
        });
        let cross = self.scenario == ScenarioName::CrossNodePull;
        anyhow::ensure!(
            cross == self.pull_from.is_some(),
            "--pull-from goes with --scenario cross-node-pull, and only with it"
        );
        anyhow::ensure!(
            self.pull_from.as_deref() != Some(self.target.as_str()),
            "--pull-from must be another node than --target"
        );
        Ok(Settings {
            scenario: self.scenario,
            target: self.target.clone(),
            size,
            clients: self.clients,
            ops,
            warmup,
            name: self.name.clone(),
            server_pid: self.server_pid,
            seed,
            json: self.json,
            pull_from: self.pull_from.clone(),
            npm_prefix: self.npm_prefix.clone(),
            pypi_prefix: self.pypi_prefix.clone(),
            versions: self.versions,
        })
    }
}

/// Default measured ops for blob scenarios: enough to be stable, few enough to finish quickly.
fn default_blob_ops(size: u64) -> u64 {
    match size {
        s if s >= GIB => 3,
        s if s >= 64 * MIB => 10,
        s if s >= MIB => 100,
        _ => 2000,
    }
}

/// Parses `1048576`, `512KiB`, `1MiB`, `64MiB`, `1GiB` (binary units; `B` alone allowed).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    if digits.is_empty() {
        return Err(format!(
            "{s:?}: expected a number of bytes, e.g. 1048576 or 64MiB"
        ));
    }
    let n: u64 = digits.parse().map_err(|e| format!("{s:?}: {e}"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => KIB,
        "mib" => MIB,
        "gib" => GIB,
        "tib" => 1024 * GIB,
        other => {
            return Err(format!(
                "{s:?}: unknown unit {other:?}; use KiB, MiB or GiB"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?}: too large"))
}

/// `1048576` → `1MiB`, `1500` → `1500B`: the shortest exact binary form, for the table.
pub fn format_size(n: u64) -> String {
    for (unit, m) in [("GiB", GIB), ("MiB", MIB), ("KiB", KIB)] {
        if n >= m && n.is_multiple_of(m) {
            return format!("{}{unit}", n / m);
        }
    }
    format!("{n}B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("1048576"), Ok(MIB));
        assert_eq!(parse_size("1MiB"), Ok(MIB));
        assert_eq!(parse_size("64MiB"), Ok(64 * MIB));
        assert_eq!(parse_size("1GiB"), Ok(GIB));
        assert_eq!(parse_size("4KiB"), Ok(4096));
        assert_eq!(parse_size("10 mib"), Ok(10 * MIB));
        assert_eq!(parse_size("7B"), Ok(7));
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("1MB").is_err());
        assert!(parse_size("1.5MiB").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999999GiB").is_err());
    }

    #[test]
    fn sizes_format() {
        assert_eq!(format_size(GIB), "1GiB");
        assert_eq!(format_size(64 * MIB), "64MiB");
        assert_eq!(format_size(1500), "1500B");
    }

    #[test]
    fn defaults_follow_the_scenario() {
        let a = Args::try_parse_from(["wharf-bench", "--scenario", "blob-push", "--size", "1GiB"]);
        let s = a
            .map_err(|e| e.to_string())
            .and_then(|a| a.settings().map_err(|e| e.to_string()));
        let Ok(s) = s else { panic!("{s:?}") };
        assert_eq!((s.ops, s.warmup), (3, 0));
    }
}
