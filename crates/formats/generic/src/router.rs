//! Parses `/generic/<repo>/<path>` into an [`Endpoint`] before any handler runs.

use wharf_types::RepoName;

/// A parsed generic-files route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A file path (no trailing slash).
    File { repo: RepoName, path: String },
    /// A directory listing (`""` = the repository root, else ending in `/`).
    Dir { repo: RepoName, dir: String },
}

/// Why a path was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum RouteError {
    NotGeneric,
    BadRepo(String),
    BadPath(String),
}

/// Parses a decoded request path.
pub fn parse(path: &str) -> Result<Endpoint, RouteError> {
    let rest = path
        .strip_prefix("/generic/")
        .ok_or(RouteError::NotGeneric)?;
    let (repo, file) = rest.split_once('/').unwrap_or((rest, ""));
    let repo = RepoName::new(repo).map_err(|e| RouteError::BadRepo(e.to_string()))?;
    let trimmed = file.trim_end_matches('/');
    for segment in trimmed.split('/').filter(|_| !trimmed.is_empty()) {
        let ok = !segment.is_empty()
            && segment != "."
            && segment != ".."
            && !segment.chars().any(|c| c.is_control() || c == '\\');
        if !ok {
            return Err(RouteError::BadPath(format!(
                "path {file:?} is invalid: segments must be non-empty, not . or .., without control characters or backslashes"
            )));
        }
    }
    if file.len() > 1024 {
        return Err(RouteError::BadPath("path is longer than 1024 bytes".into()));
    }
    if file.is_empty() || file.ends_with('/') {
        Ok(Endpoint::Dir {
            repo,
            dir: file.to_string(),
        })
    } else {
        Ok(Endpoint::File {
            repo,
            path: file.to_string(),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert!(
            matches!(parse("/generic/files/a/b.txt"), Ok(Endpoint::File { path, .. }) if path == "a/b.txt")
        );
        assert!(matches!(parse("/generic/files/a/"), Ok(Endpoint::Dir { dir, .. }) if dir == "a/"));
        assert!(matches!(parse("/generic/files"), Ok(Endpoint::Dir { dir, .. }) if dir.is_empty()));
        assert!(matches!(
            parse("/generic/files/a/../b"),
            Err(RouteError::BadPath(_))
        ));
        assert!(matches!(
            parse("/generic/files/a//b"),
            Err(RouteError::BadPath(_))
        ));
        assert!(matches!(
            parse("/generic/Files/a"),
            Err(RouteError::BadRepo(_))
        ));
    }
}
