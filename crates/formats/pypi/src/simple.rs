//! The simple index: the project list and project pages, generated from the state machine on
//! each read (through the document cache), never stored as uploaded.

use std::sync::Arc;

use axum::response::Response;
use http::{HeaderMap, StatusCode, header};
use wharf_meta::packages::VersionRecord;
use wharf_types::{ErrorCode, RepoName};

use crate::facts::FileFacts;
use crate::index::{self, FileEntry, ProjectPage, Representation};
use crate::names::{Version, normalize_name};
use crate::router::metadata_filename;
use crate::{PypiError, PypiState};
use wharf_http::document::Rendered;

/// Most projects a project list shows.
const MAX_PROJECTS: usize = 100_000;
const PAGE: usize = 1000;

fn representation(headers: &HeaderMap) -> Result<Representation, PypiError> {
    let accept: Vec<&str> = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let accept = (!accept.is_empty()).then(|| accept.join(", "));
    index::negotiate(accept.as_deref()).ok_or_else(|| {
        PypiError::new(
            StatusCode::NOT_ACCEPTABLE,
            ErrorCode::Unsupported,
            "this index serves application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html and text/html",
        )
    })
}

/// `GET /pypi/<repo>/simple/`
pub async fn projects(
    state: &PypiState,
    repo: &RepoName,
    headers: &HeaderMap,
    head: bool,
) -> Result<Response, PypiError> {
    let rep = representation(headers)?;
    state.check_repo(repo).await?;
    let mut list = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let (page, more) = state
            .registry
            .packages(repo, after.as_deref(), PAGE)
            .await?;
        after = page.last().map(|(k, _)| k.clone());
        list.extend(page.into_iter().map(|(key, record)| (record.name, key)));
        if !more || after.is_none() || list.len() >= MAX_PROJECTS {
            break;
        }
    }
    let doc = Rendered::new(index::render_projects(&list, rep));
    Ok(doc.respond(headers, rep.content_type(), head))
}

/// `GET /pypi/<repo>/simple/<project>/`
pub async fn project(
    state: &PypiState,
    repo: &RepoName,
    project: &str,
    headers: &HeaderMap,
    head: bool,
) -> Result<Response, PypiError> {
    let rep = representation(headers)?;
    state.check_repo(repo).await?;
    let key = normalize_name(project);
    let missing = || PypiError::not_found(format!("project {project} is not in {repo}"));
    // The record alone tells the revision; the versions are read only to render.
    let Some(record) = state.registry.package_record(repo, &key).await? else {
        return Err(missing());
    };
    let cache_key = (repo.to_string(), key.clone(), record.revision, rep);
    if let Some(doc) = state.documents.get(&cache_key) {
        return Ok(doc.respond(headers, rep.content_type(), head));
    }
    let (record, versions) = state
        .registry
        .package_now(repo, &key)?
        .ok_or_else(missing)?;
    let page = project_page(&key, versions);
    let doc = Arc::new(Rendered::new(index::render_project(&page, rep)));
    state
        .documents
        .insert((repo.to_string(), key, record.revision, rep), doc.clone());
    Ok(doc.respond(headers, rep.content_type(), head))
}

/// The page of a project from its records: live versions in PEP 440 order, each version's
/// files (their core metadata files are links of their own, not entries).
pub fn project_page(key: &str, versions: Vec<(String, VersionRecord)>) -> ProjectPage {
    let mut live: Vec<(Option<Version>, String, VersionRecord)> = versions
        .into_iter()
        .filter(|(_, v)| v.is_live())
        .map(|(vkey, v)| (Version::parse(&vkey).ok(), vkey, v))
        .collect();
    live.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
    let mut files = Vec::new();
    for (_, vkey, v) in &live {
        for (filename, file) in &v.files {
            if v.files
                .contains_key(filename.strip_suffix(".metadata").unwrap_or(""))
            {
                continue;
            }
            let facts = FileFacts::from_value(&file.facts);
            let metadata_sha256 = v
                .files
                .get(&metadata_filename(filename))
                .map(|m| m.digest.hex().to_string());
            files.push(FileEntry {
                filename: filename.clone(),
                url: format!("../../files/{key}/{vkey}/{filename}"),
                sha256: file.digest.hex().to_string(),
                size: file.size,
                requires_python: facts.requires_python,
                core_metadata_sha256: metadata_sha256,
                yanked: v.yanked.clone(),
                uploaded_ms: file.uploaded_ms,
            });
        }
    }
    ProjectPage {
        name: key.to_string(),
        versions: live.into_iter().map(|(_, _, v)| v.version).collect(),
        files,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use wharf_meta::packages::VersionFile;

    use super::*;

    fn file(n: u8, facts: serde_json::Value) -> VersionFile {
        VersionFile {
            digest: format!("sha256:{}", hex::encode([n; 32])).parse().unwrap(),
            size: u64::from(n),
            uploaded_ms: 0,
            facts,
        }
    }

    fn version(v: &str, files: &[(&str, VersionFile)], unpublished: bool) -> VersionRecord {
        VersionRecord {
            version: v.into(),
            files: files
                .iter()
                .map(|(n, f)| (n.to_string(), f.clone()))
                .collect::<BTreeMap<_, _>>(),
            metadata: serde_json::Value::Null,
            published_ms: 0,
            yanked: None,
            deprecated: None,
            unpublished_ms: unpublished.then_some(1),
        }
    }

    #[test]
    fn pages_list_live_versions_in_pep_440_order_with_metadata_as_links() {
        let facts = FileFacts {
            requires_python: Some(">=3.9".into()),
            ..FileFacts::default()
        }
        .to_value();
        let mut yanked = version("1.10", &[("t-1.10.tar.gz", file(3, facts.clone()))], false);
        yanked.yanked = Some(String::new());
        let versions = vec![
            ("1.10".to_string(), yanked),
            (
                "1.9".to_string(),
                version(
                    "1.9",
                    &[
                        ("t-1.9-py3-none-any.whl", file(1, facts)),
                        (
                            "t-1.9-py3-none-any.whl.metadata",
                            file(2, serde_json::Value::Null),
                        ),
                    ],
                    false,
                ),
            ),
            (
                "2.0".to_string(),
                version(
                    "2.0",
                    &[("t-2.0.tar.gz", file(4, serde_json::Value::Null))],
                    true,
                ),
            ),
        ];
        let page = project_page("t", versions);
        assert_eq!(page.versions, ["1.9", "1.10"]);
        let names: Vec<&str> = page.files.iter().map(|f| f.filename.as_str()).collect();
        assert_eq!(names, ["t-1.9-py3-none-any.whl", "t-1.10.tar.gz"]);
        let wheel = &page.files[0];
        assert_eq!(wheel.url, "../../files/t/1.9/t-1.9-py3-none-any.whl");
        assert_eq!(
            wheel.core_metadata_sha256.as_deref(),
            Some(hex::encode([2u8; 32]).as_str())
        );
        assert_eq!(wheel.requires_python.as_deref(), Some(">=3.9"));
        assert_eq!(page.files[1].yanked.as_deref(), Some(""));
        assert_eq!(page.files[1].core_metadata_sha256, None);
    }
}
