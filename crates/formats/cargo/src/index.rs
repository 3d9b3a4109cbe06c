//! The sparse index: `config.json` and one file per crate, rendered from the package records on
//! every read (never stored as uploaded), served as documents with a strong `ETag`, `304` on
//! `If-None-Match`, `Cache-Control: no-cache` and gzip when the client accepts it.
//!
//! A crate's file is one JSON line per live version, in publish order. Each line is the
//! [`IndexLine`] stored with the version at publish time plus `yanked` from the version
//! record: only `yanked` ever changes in an existing line.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, StatusCode, header};
use sha2::{Digest as _, Sha256};
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

/// A rendered document, with its gzip form made on first need.
pub struct Rendered {
    body: Bytes,
    etag: String,
    gzip: OnceLock<Option<Bytes>>,
}

impl Rendered {
    /// A document and its strong `ETag` (the sha256 of the body).
    pub fn new(body: impl Into<Bytes>) -> Rendered {
        let body = body.into();
        let etag = format!("\"{}\"", hex::encode(Sha256::digest(&body)));
        Rendered {
            body,
            etag,
            gzip: OnceLock::new(),
        }
    }

    fn gzip(&self) -> Option<&Bytes> {
        self.gzip
            .get_or_init(|| {
                use std::io::Write;
                let mut encoder =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                encoder.write_all(&self.body).ok()?;
                encoder.finish().ok().map(Bytes::from)
            })
            .as_ref()
    }

    /// The response for a request with `headers`: 304 when `If-None-Match` names this
    /// document, else the body (gzip'd if the client accepts it and it helps).
    pub fn respond(&self, headers: &HeaderMap, content_type: &'static str, head: bool) -> Response {
        // Each representation has its own strong tag; either one means "you have this document".
        let gz_etag = format!("{}-gzip\"", self.etag.trim_end_matches('"'));
        let builder = |status: StatusCode, etag: &str| {
            Response::builder()
                .status(status)
                .header(header::CACHE_CONTROL, "no-cache")
                .header(header::VARY, "Accept, Accept-Encoding")
                .header(header::ETAG, etag)
        };
        // Weak comparison (RFC 9110 §13.1.2): `W/` prefixes are ignored.
        let matches = headers
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|t| t.trim().trim_start_matches("W/"))
            .any(|t| t == "*" || t == self.etag || t == gz_etag);
        if matches {
            return builder(StatusCode::NOT_MODIFIED, &self.etag)
                .body(Body::empty())
                .unwrap_or_default();
        }
        let gzip = accepts_gzip(headers).then(|| self.gzip()).flatten();
        let (body, etag) = match gzip {
            Some(gz) if gz.len() < self.body.len() => (gz.clone(), gz_etag.as_str()),
            _ => (self.body.clone(), self.etag.as_str()),
        };
        let mut response = builder(StatusCode::OK, etag)
            .header(header::CONTENT_TYPE, content_type)
            .header(header::CONTENT_LENGTH, body.len());
        if etag != self.etag {
            response = response.header(header::CONTENT_ENCODING, "gzip");
        }
        response
            .body(if head {
                Body::empty()
            } else {
                Body::from(body)
            })
            .unwrap_or_default()
    }
}

/// Whether `Accept-Encoding` allows gzip (present with a non-zero q).
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let coding = parts.next().unwrap_or_default();
            let q_zero = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !q_zero
        })
}

/// Rendered index files, keyed by (repository, crate key, package revision): a change of the
/// package bumps its revision, so an entry is never stale, only unused. Bounded: when full it
/// is emptied (a miss only costs one rendering).
#[derive(Default)]
pub struct IndexCache {
    entries: Mutex<HashMap<(String, String, u64), Arc<Rendered>>>,
}

/// How many rendered index files are kept.
const CACHE_ENTRIES: usize = 4096;

impl IndexCache {
    fn get_or_render(
        &self,
        key: (String, String, u64),
        render: impl FnOnce() -> Result<String, String>,
    ) -> Result<Arc<Rendered>, String> {
        if let Ok(entries) = self.entries.lock()
            && let Some(found) = entries.get(&key)
        {
            return Ok(found.clone());
        }
        let rendered = Arc::new(Rendered::new(render()?));
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= CACHE_ENTRIES {
                entries.clear();
            }
            entries.insert(key, rendered.clone());
        }
        Ok(rendered)
    }
}

/// Refuses a repository of another format (404): its packages are not crates.
pub async fn ensure_cargo_repo(state: &CargoState, repo: &RepoName) -> Result<(), CargoError> {
    let record = state.registry.repo(repo).await?;
    if record.settings.format != wharf_types::Format::Cargo {
        return Err(CargoError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            format!(
                "repository {repo} holds {} content, not crates",
                record.settings.format.as_str()
            ),
        ));
    }
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
    let Some((record, versions)): Option<PackageDocument> =
        state.registry.package(repo, &key).await?
    else {
        return Err(not_found());
    };
    // The file lives at the path of the name as published; other spellings are other paths.
    if !record.name.eq_ignore_ascii_case(name) {
        return Err(not_found());
    }
    ensure_cargo_repo(state, repo).await?;
    let rendered = state
        .index_cache
        .get_or_render((repo.to_string(), key, record.revision), || {
            render_index_file(&versions)
        })
        .map_err(|m| CargoError::new(StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal, m))?;
    Ok(rendered.respond(headers, "text/plain; charset=utf-8", head))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use http::HeaderValue;

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

    #[test]
    fn documents_revalidate_and_compress() {
        let doc = Rendered::new("x".repeat(1000));
        let mut headers = HeaderMap::new();
        let r = doc.respond(&headers, "text/plain", false);
        assert_eq!(r.status(), StatusCode::OK);
        let etag = r.headers()[header::ETAG].to_str().unwrap().to_string();
        assert_eq!(r.headers()[header::CACHE_CONTROL], "no-cache");
        assert_eq!(r.headers()[header::VARY], "Accept, Accept-Encoding");
        assert!(r.headers().get(header::CONTENT_ENCODING).is_none());
        headers.insert(header::IF_NONE_MATCH, etag.parse().unwrap());
        assert_eq!(
            doc.respond(&headers, "text/plain", false).status(),
            StatusCode::NOT_MODIFIED
        );
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("deflate, gzip"),
        );
        let r = doc.respond(&headers, "text/plain", false);
        assert_eq!(r.headers()[header::CONTENT_ENCODING], "gzip");
        let gz_etag = r.headers()[header::ETAG].to_str().unwrap().to_string();
        assert_ne!(gz_etag, etag, "each representation has its own strong tag");
        headers.insert(header::IF_NONE_MATCH, gz_etag.parse().unwrap());
        assert_eq!(
            doc.respond(&headers, "text/plain", false).status(),
            StatusCode::NOT_MODIFIED
        );
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("gzip;q=0"),
        );
        let r = doc.respond(&headers, "text/plain", false);
        assert!(r.headers().get(header::CONTENT_ENCODING).is_none());
        // a different document has another tag
        assert_ne!(Rendered::new("y").etag, doc.etag);
    }
}
