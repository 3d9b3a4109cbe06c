//! The sparse index: `config.json` and one file per crate, rendered from the package records on
//! every read (never stored as uploaded), served as documents with a strong `ETag`, `304` on
//! `If-None-Match`, `Cache-Control: no-cache` and gzip when the client accepts it.
//!
//! A crate's file is one JSON line per live version, in publish order. Each line is the
//! [`IndexLine`] stored with the version at publish time plus `yanked` from the version
//! record: only `yanked` ever changes in an existing line.

use axum::response::Response;
use http::{HeaderMap, StatusCode};
use wharf_http::document::Rendered;
use wharf_registry::package_records::{PackageDocument, VersionRecord};
use wharf_types::{ErrorCode, RepoName};

use crate::publish::IndexLine;
use crate::{CargoError, CargoState, names};

/// Renders a crate's index file: one line per live version, oldest first.
pub fn render_index_file(versions: &[(String, VersionRecord)]) -> Result<String, String> {
    let mut live: Vec<&(String, VersionRecord)> =
        versions.iter().filter(|(_, v)| v.is_live()).collect();
    live.sort_by(|(ka, a), (kb, b)| a.published_ms.cmp(&b.published_ms).then(ka.cmp(kb)));
    let mut out = String::new();
    for (key, version) in live {
        let mut line: IndexLine = serde_json::from_value(version.metadata.clone())
            .map_err(|e| format!("the index line of version {key} is unreadable: {e}"))?;
        line.yanked = version.yanked.is_some();
        let text = serde_json::to_string(&line)
            .map_err(|e| format!("the index line of version {key} cannot be written: {e}"))?;
        out.push_str(&text);
        out.push('\n');
    }
    Ok(out)
}

/// `config.json` for a repository whose API lives at `api` (absolute, no trailing slash).
pub fn render_config(api: &str) -> String {
    serde_json::json!({ "dl": format!("{api}/api/v1/crates"), "api": api }).to_string()
}

/// Rendered index files, keyed by (repository, crate key, package revision).
pub type IndexCache = wharf_http::document::DocumentCache<(String, String, u64)>;

/// How many rendered index files are kept.
pub const CACHE_ENTRIES: usize = 4096;

/// Refuses a repository of another format (404): its packages are not crates.
pub async fn ensure_cargo_repo(state: &CargoState, repo: &RepoName) -> Result<(), CargoError> {
    state
        .registry
        .repo_for_read(repo, wharf_types::Format::Cargo)
        .await?;
    Ok(())
}

/// `GET /cargo/<repo>/index/config.json`. Served for a repository that does not exist yet too:
/// `cargo publish` reads it before the first publish creates the repository (`wharf dev`).
pub async fn config(
    state: &CargoState,
    repo: &RepoName,
    base: &str,
    headers: &HeaderMap,
    head: bool,
) -> Result<Response, CargoError> {
    match ensure_cargo_repo(state, repo).await {
        Ok(()) => {}
        Err(e) if e.code == ErrorCode::NameUnknown => {}
        Err(e) => return Err(e),
    }
    let api = format!("{base}/cargo/{repo}");
    Ok(Rendered::new(render_config(&api)).respond(headers, "application/json", head))
}

/// `GET /cargo/<repo>/index/<path>`: the crate's index file, or 404 for an unknown crate.
pub async fn file(
    state: &CargoState,
    repo: &RepoName,
    name: &str,
    headers: &HeaderMap,
    head: bool,
) -> Result<Response, CargoError> {
    let key = names::crate_key(name);
    let not_found = || {
        CargoError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            format!("crate {name} is not in {repo}"),
        )
    };
    // The record alone tells the revision; the versions are read only to render a revision
    // not cached yet.
    let Some(record) = state.registry.package_record(repo, &key).await? else {
        return Err(not_found());
    };
    // The file lives at the path of the name as published; other spellings are other paths.
    if !record.name.eq_ignore_ascii_case(name) {
        return Err(not_found());
    }
    ensure_cargo_repo(state, repo).await?;
    let rendered = state
        .index_cache
        .get_or_render((repo.to_string(), key.clone(), record.revision), || {
            // At least as new as `record` (local state only moves forward); rendered under the
            // revision read, so a newer state is only ever cached under a smaller key briefly
            // and the next request renders again.
            let (_, versions): PackageDocument = state
                .registry
                .package_now(repo, &key)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "the crate vanished while its index was rendered".to_string())?;
            render_index_file(&versions).map(Rendered::new)
        })
        .map_err(|m| CargoError::new(StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal, m))?;
    Ok(rendered.respond(headers, "text/plain; charset=utf-8", head))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::publish::PublishMeta;

    fn version(vers: &str, at: u64, yanked: bool, live: bool) -> VersionRecord {
        let meta = PublishMeta::parse(format!(r#"{{"name":"Tiny_x","vers":"{vers}"}}"#).as_bytes())
            .unwrap();
        VersionRecord {
            version: vers.into(),
            files: BTreeMap::new(),
            metadata: serde_json::to_value(meta.index_line("c0ffee")).unwrap(),
            published_ms: at,
            yanked: yanked.then(String::new),
            deprecated: None,
            unpublished_ms: (!live).then_some(9),
        }
    }

    #[test]
    fn lines_in_publish_order_with_yanked_from_the_record() {
        let versions = vec![
            ("0.10.0".to_string(), version("0.10.0", 3, false, true)),
            ("0.2.0".to_string(), version("0.2.0", 2, true, true)),
            ("0.3.0".to_string(), version("0.3.0", 4, false, false)),
            ("0.9.0".to_string(), version("0.9.0+b", 1, false, true)),
        ];
        let text = render_index_file(&versions).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let vers: Vec<_> = lines.iter().map(|l| l["vers"].as_str().unwrap()).collect();
        assert_eq!(vers, ["0.9.0+b", "0.2.0", "0.10.0"]);
        assert_eq!(lines[1]["yanked"], true);
        assert_eq!(lines[0]["yanked"], false);
        assert_eq!(lines[0]["name"], "Tiny_x");
        assert_eq!(lines[0]["cksum"], "c0ffee");
        assert!(text.ends_with('\n'));
        // Unreadable stored metadata is an error, not a silently missing line.
        let mut bad = version("1.0.0", 5, false, true);
        bad.metadata = serde_json::json!({"x": 1});
        assert!(render_index_file(&[("1.0.0".into(), bad)]).is_err());
    }

    #[test]
    fn config_points_at_the_api() {
        let c: serde_json::Value =
            serde_json::from_str(&render_config("http://h:1/cargo/r")).unwrap();
        assert_eq!(c["dl"], "http://h:1/cargo/r/api/v1/crates");
        assert_eq!(c["api"], "http://h:1/cargo/r");
        assert!(c.get("auth-required").is_none());
    }
}
