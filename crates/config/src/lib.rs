//! Wharf's configuration: TOML structs with `deny_unknown_fields`, defaults in code, and
//! [`Config::validate`] before use. `wharf config check FILE` runs [`Config::load`].
//!
//! ```toml
//! [server]
//! listen = "127.0.0.1:7070"
//! data_dir = "/var/lib/wharf"
//! region = "eu-west"
//! public_url = "https://registry.example.com"   # optional; absolute URLs are built from it
//! trusted_proxies = ["10.0.0.1"]                 # peers whose X-Forwarded-* headers are believed
//! auto_create_repos = false                      # `wharf dev` turns this on
//!
//! [http]
//! max_manifest_bytes = 4194304
//!
//! [http.tls]
//! cert = "cert.pem"
//! key = "key.pem"
//!
//! [uploads]
//! session_idle_timeout_secs = 86400
//!
//! [storage]
//! min_free_bytes = 134217728                     # uploads get 507 below this
//!
//! [cluster]
//! listen = "127.0.0.1:7071"                      # raft + admin gRPC between nodes
//! advertise = "10.0.0.5:7071"                    # what other nodes dial (default: listen)
//! join = "10.0.0.1:7071"                         # first start only: join through this member
//! tls = true                                     # default: on unless every address is loopback
//! heartbeat_ms = 300                             # ≥ 2 × the largest RTT between nodes
//! election_timeout_min_ms = 1500                 # ≥ 5 × heartbeat_ms
//! election_timeout_max_ms = 3000                 # ≈ 2 × election_timeout_min_ms
//! snapshot_chunk_timeout_ms = 10000
//! snapshot_every_entries = 100000
//! log_entries_kept = 20000
//! promote_max_lag = 1000
//!
//! [durability]
//! min_copies = 2                                 # default: 2 once the cluster has 2+ members
//!
//! [replication]
//! listen = "127.0.0.1:7072"                      # QUIC (UDP) blob transfer; default: cluster port + 1
//! advertise = "10.0.0.5:7072"                    # what other nodes dial (default: listen)
//! stream_window_bytes = 16777216                 # ≥ bandwidth × RTT of the longest link
//! connection_window_bytes = 67108864
//! max_bytes_in_flight = 268435456                # bytes being received at once, all transfers
//! scrub_interval_secs = 86400                    # re-hash every stored blob this often (0: never)
//!
//! [read]
//! max_staleness_ms = 1000                        # `bounded` repositories read locally within it
//! ```
//!
//! **Raft timing rule of thumb.** An append RPC times out after one heartbeat period, so
//! `heartbeat_ms` must exceed the largest round trip between nodes with room to spare (2 × RTT);
//! a follower campaigns after a random silence in [min, max], which must cover several missed
//! heartbeats (min ≥ 5 × heartbeat) so a slow link never looks like a dead leader. The defaults
//! suit links up to 150 ms RTT; `wharf dev` uses 100 / 500–1000 ms on loopback.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The whole configuration of a node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub http: HttpConfig,
    pub uploads: UploadConfig,
    pub storage: StorageConfig,
    pub cluster: ClusterConfig,
    pub durability: DurabilityConfig,
    pub read: ReadConfig,
    pub replication: ReplicationConfig,
}

/// The QUIC blob-transfer endpoint between nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicationConfig {
    /// Where the QUIC (UDP) endpoint binds; default: `cluster.listen` with the next port.
    pub listen: Option<SocketAddr>,
    /// The address other nodes dial; default: `listen`.
    pub advertise: Option<SocketAddr>,
    /// Flow-control window of one stream: at least bandwidth × RTT of the longest link
    /// (16 MiB covers 1 Gbit/s at 130 ms).
    pub stream_window_bytes: u64,
    /// Flow-control window of one connection (all its streams).
    pub connection_window_bytes: u64,
    /// Bytes this node receives from peers at once, over every transfer.
    pub max_bytes_in_flight: u64,
    /// How often the scrubber re-hashes every blob this node holds and replaces a corrupt copy
    /// from a peer (0: never).
    pub scrub_interval_secs: u64,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            listen: None,
            advertise: None,
            stream_window_bytes: 16 * 1024 * 1024,
            connection_window_bytes: 64 * 1024 * 1024,
            max_bytes_in_flight: 256 * 1024 * 1024,
            scrub_interval_secs: 24 * 60 * 60,
        }
    }
}

impl Config {
    /// Where the QUIC blob endpoint binds: by default the cluster port + 1, or any free port
    /// when the cluster listener takes any free port (port 0, as plain `wharf dev` does).
    pub fn replication_listen(&self) -> SocketAddr {
        self.replication.listen.unwrap_or_else(|| {
            let c = self.cluster.listen;
            let port = if c.port() == 0 {
                0
            } else {
                c.port().wrapping_add(1)
            };
            SocketAddr::new(c.ip(), port)
        })
    }

    /// The QUIC address other nodes dial.
    pub fn replication_advertised(&self) -> SocketAddr {
        self.replication.advertise.unwrap_or_else(|| {
            let listen = self.replication_listen();
            match self.replication.listen {
                Some(_) => listen,
                None => {
                    let c = self.cluster.advertised();
                    SocketAddr::new(c.ip(), listen.port())
                }
            }
        })
    }
}

/// Reads of mutable state in `bounded` repositories.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReadConfig {
    /// A `bounded` repository is read locally while the node heard from a leader within this
    /// many milliseconds (DESIGN.md §1.5c); past it, reads go through the leader.
    pub max_staleness_ms: u64,
}

impl Default for ReadConfig {
    fn default() -> Self {
        ReadConfig {
            max_staleness_ms: 1000,
        }
    }
}

/// The cluster listener and raft timing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Where the raft + admin gRPC listener binds.
    pub listen: SocketAddr,
    /// The address other nodes dial; defaults to `listen`.
    pub advertise: Option<SocketAddr>,
    /// On first start, join the cluster through this member (with a token from
    /// `wharf cluster join-token`, given as `--token` or `WHARF_JOIN_TOKEN`).
    pub join: Option<String>,
    /// Mutual TLS between nodes under the cluster CA that `wharf cluster init` creates. Unset:
    /// on unless every cluster address is loopback. `false` is allowed only on loopback. A
    /// joining node follows the cluster it joins (its token says).
    pub tls: Option<bool>,
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    pub snapshot_chunk_timeout_ms: u64,
    pub snapshot_every_entries: u64,
    pub log_entries_kept: u64,
    /// A learner within this many entries of the leader may be promoted.
    pub promote_max_lag: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7071)),
            advertise: None,
            join: None,
            tls: None,
            heartbeat_ms: 300,
            election_timeout_min_ms: 1500,
            election_timeout_max_ms: 3000,
            snapshot_chunk_timeout_ms: 10_000,
            snapshot_every_entries: 100_000,
            log_entries_kept: 20_000,
            promote_max_lag: 1000,
        }
    }
}

impl ClusterConfig {
    /// The address other nodes dial.
    pub fn advertised(&self) -> SocketAddr {
        self.advertise.unwrap_or(self.listen)
    }

    /// Whether every cluster address (listen, advertise, join) is loopback.
    pub fn all_loopback(&self) -> bool {
        self.listen.ip().is_loopback()
            && self.advertised().ip().is_loopback()
            && self.join.as_deref().is_none_or(is_loopback_addr)
    }

    /// Whether `wharf cluster init` creates a CA for this cluster.
    pub fn wants_tls(&self) -> bool {
        self.tls.unwrap_or(!self.all_loopback())
    }
}

/// How many copies of a blob must be durable before an upload is acknowledged.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DurabilityConfig {
    /// Members of the committed configuration that must hold fsync'd, verified bytes of a blob
    /// before its upload is acknowledged (DESIGN.md §1.2). Unset: 2, or 1 while the cluster
    /// has a single member. Uploads get 503 while fewer members can take a copy.
    pub min_copies: Option<u32>,
}

/// Disk-space limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Uploads get 507 while fewer bytes than this are free on the data dir's file system, so
    /// the space left stays for the raft log and the commits already under way.
    pub min_free_bytes: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            min_free_bytes: 128 * 1024 * 1024,
        }
    }
}

/// Where the node listens, stores data, and how it names itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub region: String,
    /// Base of absolute URLs handed to clients (a path prefix is allowed).
    pub public_url: Option<String>,
    /// Peers whose `Forwarded` / `X-Forwarded-*` headers are trusted.
    pub trusted_proxies: Vec<IpAddr>,
    /// Create a hosted repository on first push/publish (`wharf dev`).
    pub auto_create_repos: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            data_dir: PathBuf::from("wharf-data"),
            region: "local".to_string(),
            public_url: None,
            trusted_proxies: Vec::new(),
            auto_create_repos: false,
        }
    }
}

/// Client-facing HTTP settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Largest manifest body accepted (413 above it).
    pub max_manifest_bytes: u64,
    /// Largest JSON body of admin requests.
    pub max_admin_body_bytes: u64,
    /// Largest `npm publish` body (JSON with the base64 tarball; 413 above it).
    pub max_npm_publish_bytes: u64,
    /// Largest PyPI upload request (multipart; 413 above it).
    pub max_pypi_upload_bytes: u64,
    /// Largest `cargo publish` body (413 above it).
    pub max_cargo_publish_bytes: u64,
    /// Largest total a `.crate` may inflate to when it is checked (never unpacked to disk).
    pub max_crate_unpacked_bytes: u64,
    pub tls: Option<TlsConfig>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_manifest_bytes: 4 * 1024 * 1024,
            max_admin_body_bytes: 64 * 1024,
            max_npm_publish_bytes: 256 * 1024 * 1024,
            max_pypi_upload_bytes: 1024 * 1024 * 1024,
            max_cargo_publish_bytes: 64 * 1024 * 1024,
            max_crate_unpacked_bytes: 512 * 1024 * 1024,
            tls: None,
        }
    }
}

/// TLS for the client listener (HTTP/2 by ALPN).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Upload session settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UploadConfig {
    /// Sessions expire this long after their last activity.
    pub session_idle_timeout_secs: u64,
}

impl Default for UploadConfig {
    fn default() -> Self {
        UploadConfig {
            session_idle_timeout_secs: 24 * 3600,
        }
    }
}

impl Config {
    /// Reads, parses and validates a TOML file; relative paths in it are taken relative to
    /// the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Config::parse(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        if let Some(dir) = path.parent() {
            config.resolve_relative_to(dir);
        }
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML text (no validation).
    pub fn parse(text: &str) -> Result<Config, toml::de::Error> {
        toml::from_str(text)
    }

    /// The embedded default of `wharf dev`: loopback, `./wharf-data`, repositories created on
    /// first push.
    pub fn dev() -> Config {
        let mut config = Config::default();
        config.server.auto_create_repos = true;
        config
    }

    fn resolve_relative_to(&mut self, dir: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        };
        fix(&mut self.server.data_dir);
        if let Some(tls) = &mut self.http.tls {
            fix(&mut tls.cert);
            fix(&mut tls.key);
        }
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.http.max_manifest_bytes < 1024 {
            return Err(ConfigError::Invalid(
                "http.max_manifest_bytes must be at least 1024".into(),
            ));
        }
        if self.uploads.session_idle_timeout_secs == 0 {
            return Err(ConfigError::Invalid(
                "uploads.session_idle_timeout_secs must be positive".into(),
            ));
        }
        if self.server.region.is_empty() {
            return Err(ConfigError::Invalid(
                "server.region must not be empty".into(),
            ));
        }
        let c = &self.cluster;
        if c.heartbeat_ms == 0 || c.election_timeout_min_ms < 2 * c.heartbeat_ms {
            return Err(ConfigError::Invalid(format!(
                "cluster.election_timeout_min_ms ({}) must be at least twice cluster.heartbeat_ms ({})",
                c.election_timeout_min_ms, c.heartbeat_ms
            )));
        }
        if c.election_timeout_max_ms <= c.election_timeout_min_ms {
            return Err(ConfigError::Invalid(
                "cluster.election_timeout_max_ms must exceed cluster.election_timeout_min_ms"
                    .into(),
            ));
        }
        if c.snapshot_every_entries == 0 || c.snapshot_chunk_timeout_ms == 0 {
            return Err(ConfigError::Invalid(
                "cluster.snapshot_every_entries and snapshot_chunk_timeout_ms must be positive"
                    .into(),
            ));
        }
        if c.advertised().ip().is_unspecified() {
            return Err(ConfigError::Invalid(format!(
                "cluster.advertise must be an address other nodes can dial, not {}",
                c.advertised()
            )));
        }
        // Plaintext between nodes only when every address is loopback (DESIGN.md §2).
        if c.tls == Some(false) && !c.all_loopback() {
            return Err(ConfigError::Invalid(
                "cluster.tls = false is allowed only when cluster.listen, cluster.advertise and \
                 cluster.join are all loopback addresses"
                    .into(),
            ));
        }
        if self.durability.min_copies == Some(0) {
            return Err(ConfigError::Invalid(
                "durability.min_copies must be at least 1".into(),
            ));
        }
        let r = &self.replication;
        if r.stream_window_bytes < 64 * 1024
            || r.connection_window_bytes < r.stream_window_bytes
            || r.max_bytes_in_flight < 8 * 1024 * 1024
        {
            return Err(ConfigError::Invalid(
                "replication: stream_window_bytes must be at least 64 KiB, \
                 connection_window_bytes at least stream_window_bytes, and max_bytes_in_flight \
                 at least 8 MiB (two chunks)"
                    .into(),
            ));
        }
        if self.replication_advertised().ip().is_unspecified() {
            return Err(ConfigError::Invalid(format!(
                "replication.advertise must be an address other nodes can dial, not {}",
                self.replication_advertised()
            )));
        }
        if let Some(url) = &self.server.public_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(ConfigError::Invalid(format!(
                "server.public_url {url:?} must start with http:// or https://"
            )));
        }
        Ok(())
    }
}

/// Whether `host:port` names a loopback address (`localhost` counts).
fn is_loopback_addr(addr: &str) -> bool {
    match addr.parse::<SocketAddr>() {
        Ok(a) => a.ip().is_loopback(),
        Err(_) => addr
            .rsplit_once(':')
            .is_some_and(|(host, _)| host == "localhost"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::parse("").unwrap();
        assert_eq!(c, Config::default());
        c.validate().unwrap();
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(Config::parse("[server]\nlisten_addr = \"1.2.3.4:5\"\n").is_err());
    }

    #[test]
    fn cluster_settings_are_checked() {
        let bad = |text: &str| {
            Config::parse(text)
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string()
        };
        assert!(bad("[cluster]\nheartbeat_ms = 1000\n").contains("twice"));
        assert!(bad("[cluster]\nlisten = \"0.0.0.0:7071\"\n").contains("advertise"));
        assert!(bad("[cluster]\nlisten = \"10.0.0.1:7071\"\ntls = false\n").contains("loopback"));
        let wan = Config::parse("[cluster]\nlisten = \"10.0.0.1:7071\"\n").unwrap();
        wan.validate().unwrap();
        assert!(wan.cluster.wants_tls());
        assert!(!Config::default().cluster.wants_tls());
        assert!(bad("[durability]\nmin_copies = 0\n").contains("at least 1"));
        assert!(bad("[replication]\nstream_window_bytes = 1000\n").contains("64 KiB"));
        let ok = "[cluster]\njoin = \"localhost:7071\"\n[durability]\nmin_copies = 2\n";
        Config::parse(ok).unwrap().validate().unwrap();
        let c = Config::parse("[cluster]\nlisten = \"10.0.0.1:7171\"\n").unwrap();
        assert_eq!(c.replication_listen().to_string(), "10.0.0.1:7172");
        let c =
            Config::parse("[cluster]\nlisten = \"0.0.0.0:7071\"\nadvertise = \"10.0.0.5:7071\"\n")
                .unwrap();
        assert_eq!(c.replication_advertised().to_string(), "10.0.0.5:7072");
    }

    #[test]
    fn bad_public_url_is_refused() {
        let c = Config::parse("[server]\npublic_url = \"registry.example\"\n").unwrap();
        assert!(c.validate().is_err());
    }

    #[test]
    fn every_cluster_config_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../cluster-configs");
        let mut seen = 0;
        let mut dirs = vec![dir.clone()];
        while let Some(d) = dirs.pop() {
            for entry in std::fs::read_dir(&d).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "toml") {
                    Config::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                    seen += 1;
                }
            }
        }
        assert!(seen > 0, "no configs in {}", dir.display());
    }
}
