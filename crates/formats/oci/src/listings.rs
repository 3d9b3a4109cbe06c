//! Listings: `tags/list`, `_catalog` (both with `n`/`last` and `Link`) and the referrers API.

use axum::extract::Request;
use http::StatusCode;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::json;
use wharf_types::{ErrorCode, ImageName};

use crate::blobs::parse_digest;
use crate::manifest::OCI_INDEX;
use crate::{OciError, OciResult, OciState, json_response, page_params, query_param};

fn next_link(path: &str, n: usize, last: &str) -> String {
    format!(
        "<{path}?n={n}&last={}>; rel=\"next\"",
        utf8_percent_encode(last, NON_ALPHANUMERIC)
    )
}

/// `GET /v2/<name>/tags/list`: tags in byte order; `last` is exclusive and works without `n`;
/// `n=0` is an empty list without `Link`; a capped page always has `Link`.
pub async fn tags(state: &OciState, name: &ImageName, request: Request) -> OciResult {
    let (n, last) = page_params(request.uri().query(), state.max_page)?;
    let Some((tags, more)) = state.registry.tags(name, last.as_deref(), n).await? else {
        return Err(OciError::new(
            ErrorCode::NameUnknown,
            format!("{name} has no manifests"),
        ));
    };
    let link = match tags.last() {
        Some(last) if more && n > 0 => Some(next_link(&format!("/v2/{name}/tags/list"), n, last)),
        _ => None,
    };
    let body = json!({ "name": name.as_str(), "tags": tags }).to_string();
    Ok(json_response(StatusCode::OK, body, link))
}

/// `GET /v2/_catalog`: image names in byte order, paginated like tags.
pub async fn catalog(state: &OciState, request: Request) -> OciResult {
    let (n, last) = page_params(request.uri().query(), state.max_page)?;
    let (names, more) = state.registry.catalog(last.as_deref(), n).await?;
    let link = match names.last() {
        Some(last) if more && n > 0 => Some(next_link("/v2/_catalog", n, last)),
        _ => None,
    };
    let body = json!({ "repositories": names }).to_string();
    Ok(json_response(StatusCode::OK, body, link))
}

/// `GET /v2/<name>/referrers/<digest>[?artifactType=]`: an OCI index of the manifests whose
/// `subject` is the digest; 200 with an empty index for an unknown subject.
pub async fn referrers(
    state: &OciState,
    name: &ImageName,
    digest: &str,
    request: Request,
) -> OciResult {
    let subject = parse_digest(digest)?;
    let query = request.uri().query();
    let filter = query_param(query, "artifactType").filter(|t| !t.is_empty());
    let (n, last) = page_params(query, state.max_page)?;
    let all = state.registry.referrers(name, &subject).await?;
    let mut matching = all
        .into_iter()
        .filter(|r| filter.is_none() || r.artifact_type == filter)
        .filter(|r| {
            last.as_deref()
                .is_none_or(|l| r.digest.to_string().as_str() > l)
        });
    let page: Vec<_> = matching.by_ref().take(n).collect();
    let more = matching.next().is_some();
    let manifests: Vec<_> = page
        .iter()
        .map(|r| {
            let mut d = json!({ "mediaType": r.media_type, "digest": r.digest.to_string(), "size": r.size });
            if let Some(t) = &r.artifact_type {
                d["artifactType"] = json!(t);
            }
            if !r.annotations.is_empty() {
                d["annotations"] = json!(r.annotations);
            }
            d
        })
        .collect();
    let body =
        json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests }).to_string();
    let link = match page.last() {
        Some(last) if more && n > 0 => Some(next_link(
            &format!("/v2/{name}/referrers/{subject}"),
            n,
            &last.digest.to_string(),
        )),
        _ => None,
    };
    let mut response = json_response(StatusCode::OK, body, link);
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(OCI_INDEX),
    );
    if filter.is_some() {
        response.headers_mut().insert(
            "oci-filters-applied",
            http::HeaderValue::from_static("artifactType"),
        );
    }
    Ok(response)
}
