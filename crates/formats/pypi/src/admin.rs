//! PEP 592 yanking through the admin API (what `wharf pypi yank|unyank` calls):
//!
//! ```text
//! POST /api/v1/repos/{repo}/pypi/{project}/{version}/yank     body: {"reason": "..."} (optional)
//! POST /api/v1/repos/{repo}/pypi/{project}/{version}/unyank
//! ```
//!
//! A yanked release stays downloadable; its files carry `data-yanked` / `"yanked"` on the
//! simple pages. Errors are the admin API's `{"errors":[{code,message}]}`.

use axum::body::Body;
use axum::response::Response;
use http::{StatusCode, header};
use wharf_meta::packages::{PackageChange, PackageUpdate};
use wharf_registry::RequestCtx;
use wharf_types::{ErrorCode, Format, RepoName};

use crate::names::{Version, normalize_name};
use crate::{PypiError, PypiState};

/// Largest request body (a reason).
const MAX_BODY: u64 = 64 * 1024;

/// Yanks (`yanked`) or unyanks a release.
pub async fn yank(
    state: &PypiState,
    ctx: &RequestCtx,
    repo: &RepoName,
    project: &str,
    version: &str,
    yanked: bool,
    body: Body,
) -> Result<Response, PypiError> {
    let bytes = wharf_http::read_limited(body, MAX_BODY)
        .await
        .map_err(|_| {
            PypiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::SizeInvalid,
                format!("the body is larger than {MAX_BODY} bytes"),
            )
        })?;
    let reason = if bytes.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
            PypiError::bad_request(ErrorCode::BadRequest, format!("the body is not JSON: {e}"))
        })?;
        v.get("reason").and_then(|r| r.as_str()).map(str::to_string)
    };
    let version_key = Version::parse(version)
        .map_err(|e| PypiError::bad_request(ErrorCode::BadRequest, e.to_string()))?
        .release_key();
    let key = normalize_name(project);
    let outcome = state
        .registry
        .update_package(
            ctx,
            PackageUpdate {
                repo: repo.clone(),
                format: Format::Pypi,
                package: key.clone(),
                expected_revision: None,
                changes: vec![PackageChange::Yank {
                    version: version_key.clone(),
                    yanked,
                    reason: if yanked {
                        Some(reason.unwrap_or_default())
                    } else {
                        None
                    },
                }],
            },
        )
        .await?;
    let body = serde_json::json!({
        "repo": repo.as_str(),
        "project": key,
        "version": version_key,
        "yanked": yanked,
        "changed": matches!(outcome, wharf_meta::Outcome::Applied),
    })
    .to_string();
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, body.len())
        .body(Body::from(body))
        .unwrap_or_default())
}
