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
//! ```

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
    pub tls: Option<TlsConfig>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_manifest_bytes: 4 * 1024 * 1024,
            max_admin_body_bytes: 64 * 1024,
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
    fn bad_public_url_is_refused() {
        let c = Config::parse("[server]\npublic_url = \"registry.example\"\n").unwrap();
        assert!(c.validate().is_err());
    }

    #[test]
    fn every_cluster_config_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../cluster-configs");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Config::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                seen += 1;
            }
        }
        assert!(seen > 0, "no configs in {}", dir.display());
    }
}
