//! Downloads: distribution files and their core metadata (PEP 658), with HEAD, `ETag`,
//! `Accept-Ranges: bytes` and single-range 206 (uv range-reads wheels). Yanked files stay
//! downloadable (PEP 592). Never gzip-encoded.

use axum::body::Body;
use axum::response::Response;
use http::{HeaderMap, header};
use wharf_http::range::{FileAnswer, file_answer};
use wharf_types::RepoName;

use crate::names::{Version, normalize_name};
use crate::router::metadata_filename;
use crate::{PypiError, PypiState};

/// `GET`/`HEAD /pypi/<repo>/files/<project>/<version>/<file>[.metadata]`
#[allow(clippy::too_many_arguments)] // one per route part and request fact
pub async fn file(
    state: &PypiState,
    repo: &RepoName,
    project: &str,
    version: &str,
    filename: &str,
    metadata: bool,
    headers: &HeaderMap,
    head: bool,
) -> Result<Response, PypiError> {
    state.check_repo(repo).await?;
    let key = normalize_name(project);
    let vkey = Version::parse(version)
        .map(|v| v.release_key())
        .unwrap_or_else(|_| version.to_string());
    let bound = if metadata {
        metadata_filename(filename)
    } else {
        filename.to_string()
    };
    let not_found = || PypiError::not_found(format!("{bound} is not in {repo}"));
    let file = state
        .registry
        .package_file(repo, &key, &vkey, &bound)
        .await?
        .ok_or_else(not_found)?;
    let content_type = if metadata {
        "text/plain; charset=utf-8"
    } else {
        "application/octet-stream"
    };
    let etag = format!("\"{}\"", file.digest.hex());
    let immutable = [(
        header::CACHE_CONTROL,
        "public, max-age=31536000, immutable".to_string(),
    )];
    let (builder, range) = match file_answer(headers, file.size, &etag, content_type, &immutable) {
        FileAnswer::Done(response) => return Ok(response),
        FileAnswer::Read { head, range } => (head, range),
    };
    if head {
        return Ok(builder.body(Body::empty()).unwrap_or_default());
    }
    if metadata {
        // PEP 658 in use: installers that read this skip downloading the file to resolve.
        tracing::info!(file = %bound, "core metadata served");
    }
    let reader = state.registry.read_blob(&file.digest, range).await?;
    Ok(builder
        .body(Body::from_stream(reader.stream))
        .unwrap_or_default())
}
