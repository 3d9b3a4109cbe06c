//! The simple index: the project list and project pages, generated from the state machine on
//! each read (through the document cache), never stored as uploaded.

use std::sync::Arc;

use axum::response::Response;
use http::{HeaderMap, StatusCode, header};
use wharf_meta::packages::{PackageRecord, VersionRecord};
use wharf_types::{ErrorCode, RepoName};

use crate::documents::{Rendered, respond};
use crate::facts::FileFacts;
use crate::index::{self, FileEntry, ProjectPage, Representation};
use crate::names::{Version, normalize_name};
use crate::router::metadata_filename;
use crate::{PypiError, PypiState};

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
    let doc = Rendered::new(rep, index::render_projects(&list, rep));
    Ok(respond(&doc, headers, head))
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
    let Some((record, versions)) = state.registry.package(repo, &key).await? else {
        return Err(PypiError::not_found(format!(
            "project {project} is not in {repo}"
        )));
    };
    let cache_key = (repo.to_string(), key.clone(), record.revision, rep);
    if let Some(doc) = state.documents.get(&cache_key) {
        return Ok(respond(&doc, headers, head));
    }
    let page = project_page(&key, &record, versions);
    let doc = Arc::new(Rendered::new(rep, index::render_project(&page, rep)));
    state.documents.insert(cache_key, doc.clone());
    Ok(respond(&doc, headers, head))
}

/// The page of a project from its records: live versions in PEP 440 order, each version's
/// files (their core metadata files are links of their own, not entries).
pub fn project_page(
    key: &str,
    _record: &PackageRecord,
    versions: Vec<(String, VersionRecord)>,
) -> ProjectPage {
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
