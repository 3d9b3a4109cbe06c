//! Parses `/cargo/<repo>/…` into an [`Endpoint`] before any handler runs.

use wharf_types::RepoName;

use crate::names;

/// A parsed Cargo route (the method is checked by the dispatcher).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `index/config.json`
    Config { repo: RepoName },
    /// `index/<path by name length>`
    IndexFile { repo: RepoName, name: String },
    /// `api/v1/crates/new` (PUT)
    Publish { repo: RepoName },
    /// `api/v1/crates/<name>/<version>/download`
    Download {
        repo: RepoName,
        name: String,
        version: String,
    },
    /// `api/v1/crates/<name>/<version>/yank` (DELETE) and `…/unyank` (PUT)
    Yank {
        repo: RepoName,
        name: String,
        version: String,
        yank: bool,
    },
    /// `api/v1/crates/<name>/owners` (GET, PUT, DELETE)
    Owners { repo: RepoName, name: String },
}

impl Endpoint {
    /// The endpoint's name, for the request span.
    pub fn name(&self) -> &'static str {
        match self {
            Endpoint::Config { .. } => "config",
            Endpoint::IndexFile { .. } => "index-file",
            Endpoint::Publish { .. } => "publish",
            Endpoint::Download { .. } => "download",
            Endpoint::Yank { yank: true, .. } => "yank",
            Endpoint::Yank { yank: false, .. } => "unyank",
            Endpoint::Owners { .. } => "owners",
        }
    }

    /// The repository the request is for.
    pub fn repo(&self) -> &RepoName {
        match self {
            Endpoint::Config { repo }
            | Endpoint::IndexFile { repo, .. }
            | Endpoint::Publish { repo }
            | Endpoint::Download { repo, .. }
            | Endpoint::Yank { repo, .. }
            | Endpoint::Owners { repo, .. } => repo,
        }
    }
}

/// Why a path was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum RouteError {
    /// No Cargo endpoint has this path.
    Unknown,
    BadRepo(String),
    BadName(String),
}

/// Parses a decoded request path.
pub fn parse(path: &str) -> Result<Endpoint, RouteError> {
    let rest = path.strip_prefix("/cargo/").ok_or(RouteError::Unknown)?;
    let (repo, rest) = rest.split_once('/').ok_or(RouteError::Unknown)?;
    let repo = RepoName::new(repo).map_err(|e| RouteError::BadRepo(e.to_string()))?;
    if let Some(index) = rest.strip_prefix("index/") {
        if index == "config.json" {
            return Ok(Endpoint::Config { repo });
        }
        let name = names::name_of_index_path(index).ok_or(RouteError::Unknown)?;
        return Ok(Endpoint::IndexFile {
            repo,
            name: name.to_string(),
        });
    }
    let api = rest
        .strip_prefix("api/v1/crates/")
        .ok_or(RouteError::Unknown)?;
    let parts: Vec<&str> = api.split('/').collect();
    let name = |n: &str| {
        names::invalid_name(n).map_or_else(|| Ok(n.to_string()), |m| Err(RouteError::BadName(m)))
    };
    match parts.as_slice() {
        ["new"] => Ok(Endpoint::Publish { repo }),
        [n, "owners"] => Ok(Endpoint::Owners {
            repo,
            name: name(n)?,
        }),
        [n, v, action @ ("download" | "yank" | "unyank")] if !v.is_empty() => {
            let (name, version) = (name(n)?, v.to_string());
            Ok(match *action {
                "download" => Endpoint::Download {
                    repo,
                    name,
                    version,
                },
                a => Endpoint::Yank {
                    repo,
                    name,
                    version,
                    yank: a == "yank",
                },
            })
        }
        _ => Err(RouteError::Unknown),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn repo() -> RepoName {
        RepoName::new("crates").unwrap()
    }

    #[test]
    fn routes() {
        assert_eq!(
            parse("/cargo/crates/index/config.json"),
            Ok(Endpoint::Config { repo: repo() })
        );
        assert_eq!(
            parse("/cargo/crates/index/3/t/tin"),
            Ok(Endpoint::IndexFile {
                repo: repo(),
                name: "tin".into()
            })
        );
        assert_eq!(
            parse("/cargo/crates/index/ti/ny/tiny_x"),
            Ok(Endpoint::IndexFile {
                repo: repo(),
                name: "tiny_x".into()
            })
        );
        assert_eq!(
            parse("/cargo/crates/index/ti/nx/tiny_x"),
            Err(RouteError::Unknown)
        );
        assert_eq!(
            parse("/cargo/crates/api/v1/crates/new"),
            Ok(Endpoint::Publish { repo: repo() })
        );
        assert_eq!(
            parse("/cargo/crates/api/v1/crates/tiny/1.0.0+b/download"),
            Ok(Endpoint::Download {
                repo: repo(),
                name: "tiny".into(),
                version: "1.0.0+b".into()
            })
        );
        assert_eq!(
            parse("/cargo/crates/api/v1/crates/tiny/1.0.0/unyank"),
            Ok(Endpoint::Yank {
                repo: repo(),
                name: "tiny".into(),
                version: "1.0.0".into(),
                yank: false
            })
        );
        assert_eq!(
            parse("/cargo/crates/api/v1/crates/tiny/owners"),
            Ok(Endpoint::Owners {
                repo: repo(),
                name: "tiny".into()
            })
        );
        assert!(matches!(
            parse("/cargo/crates/api/v1/crates/../owners"),
            Err(RouteError::BadName(_))
        ));
        assert!(matches!(
            parse("/cargo/Crates/index/config.json"),
            Err(RouteError::BadRepo(_))
        ));
        assert_eq!(
            parse("/cargo/crates/api/v1/crates/tiny"),
            Err(RouteError::Unknown)
        );
        assert_eq!(parse("/cargo/crates"), Err(RouteError::Unknown));
    }
}
