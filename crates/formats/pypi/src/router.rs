//! Parses `/pypi/<repo>/…` into an [`Endpoint`] before any handler runs.
//!
//! ```text
//! /pypi/<repo>  /pypi/<repo>/                      upload (POST; never redirected: twine aborts)
//! /pypi/<repo>/simple/                             project list
//! /pypi/<repo>/simple/<project>/                   project page
//! /pypi/<repo>/files/<project>/<version>/<file>    a distribution file
//! /pypi/<repo>/files/<project>/<version>/<file>.metadata   its core metadata (PEP 658)
//! ```

use wharf_types::RepoName;

/// A parsed PyPI route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Upload {
        repo: RepoName,
    },
    Projects {
        repo: RepoName,
    },
    /// `/simple` without its slash: its relative links need it (redirected).
    ProjectsWithoutSlash {
        repo: RepoName,
    },
    /// `slash`: whether the path ended in `/` (relative links need it).
    Project {
        repo: RepoName,
        project: String,
        slash: bool,
    },
    File {
        repo: RepoName,
        project: String,
        version: String,
        filename: String,
    },
    Metadata {
        repo: RepoName,
        project: String,
        version: String,
        filename: String,
    },
}

/// Why a path was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum RouteError {
    NotPypi,
    BadRepo(String),
    Unknown,
}

const METADATA_SUFFIX: &str = ".metadata";

/// Parses a decoded request path.
pub fn parse(path: &str) -> Result<Endpoint, RouteError> {
    let rest = path.strip_prefix("/pypi/").ok_or(RouteError::NotPypi)?;
    let (repo, rest) = rest.split_once('/').unwrap_or((rest, ""));
    let repo = RepoName::new(repo).map_err(|e| RouteError::BadRepo(e.to_string()))?;
    let segments: Vec<&str> = rest.split('/').collect();
    let ok = |s: &str| !s.is_empty() && s != "." && s != "..";
    match segments.as_slice() {
        [""] => Ok(Endpoint::Upload { repo }),
        ["simple"] => Ok(Endpoint::ProjectsWithoutSlash { repo }),
        ["simple", ""] => Ok(Endpoint::Projects { repo }),
        ["simple", project] if ok(project) => Ok(Endpoint::Project {
            repo,
            project: project.to_string(),
            slash: false,
        }),
        ["simple", project, ""] if ok(project) => Ok(Endpoint::Project {
            repo,
            project: project.to_string(),
            slash: true,
        }),
        ["files", project, version, filename] if ok(project) && ok(version) && ok(filename) => {
            let (project, version) = (project.to_string(), version.to_string());
            match filename.strip_suffix(METADATA_SUFFIX) {
                Some(file) if ok(file) => Ok(Endpoint::Metadata {
                    repo,
                    project,
                    version,
                    filename: file.to_string(),
                }),
                _ => Ok(Endpoint::File {
                    repo,
                    project,
                    version,
                    filename: filename.to_string(),
                }),
            }
        }
        _ => Err(RouteError::Unknown),
    }
}

/// The filename a core metadata file is bound under, beside its distribution file.
pub fn metadata_filename(filename: &str) -> String {
    format!("{filename}{METADATA_SUFFIX}")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let repo = RepoName::new("py").unwrap();
        assert_eq!(
            parse("/pypi/py"),
            Ok(Endpoint::Upload { repo: repo.clone() })
        );
        assert_eq!(
            parse("/pypi/py/"),
            Ok(Endpoint::Upload { repo: repo.clone() })
        );
        assert_eq!(
            parse("/pypi/py/simple/"),
            Ok(Endpoint::Projects { repo: repo.clone() })
        );
        assert_eq!(
            parse("/pypi/py/simple/Tiny_Pkg/"),
            Ok(Endpoint::Project {
                repo: repo.clone(),
                project: "Tiny_Pkg".into(),
                slash: true
            })
        );
        assert_eq!(
            parse("/pypi/py/simple/tiny"),
            Ok(Endpoint::Project {
                repo: repo.clone(),
                project: "tiny".into(),
                slash: false
            })
        );
        assert_eq!(
            parse("/pypi/py/files/tiny/0.1/tiny-0.1-py3-none-any.whl.metadata"),
            Ok(Endpoint::Metadata {
                repo: repo.clone(),
                project: "tiny".into(),
                version: "0.1".into(),
                filename: "tiny-0.1-py3-none-any.whl".into()
            })
        );
        assert!(matches!(
            parse("/pypi/py/files/tiny/0.1/tiny-0.1.tar.gz"),
            Ok(Endpoint::File { .. })
        ));
        assert_eq!(parse("/pypi/py/files/tiny/../x"), Err(RouteError::Unknown));
        assert_eq!(parse("/pypi/py/simple/a/b/"), Err(RouteError::Unknown));
        assert_eq!(parse("/pypi/py/other"), Err(RouteError::Unknown));
        assert!(matches!(parse("/pypi/Py/"), Err(RouteError::BadRepo(_))));
        assert_eq!(parse("/v2/"), Err(RouteError::NotPypi));
    }
}
