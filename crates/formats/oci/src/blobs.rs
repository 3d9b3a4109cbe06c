//! `GET`/`HEAD`/`DELETE /v2/<name>/blobs/<digest>`, with `Range` (206/416).

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use http::{HeaderMap, StatusCode, header};
use wharf_registry::RequestCtx;
use wharf_types::{Digest, ErrorCode, ImageName};

use wharf_http::range::{RangeAnswer, answer};

use crate::{OciError, OciResult, OciState};

pub(crate) fn parse_digest(text: &str) -> Result<Digest, OciError> {
    Ok(text.parse::<Digest>()?)
}

/// Serves a blob visible in `name`'s repository, whole or by range.
pub async fn get(
    state: &OciState,
    name: &ImageName,
    digest: &str,
    request: Request,
    head: bool,
) -> OciResult {
    let digest = parse_digest(digest)?;
    let repo = name.repo();
    let Some(link) = state.registry.blob_link(&repo, &digest).await? else {
        return Err(OciError::new(
            ErrorCode::BlobUnknown,
            format!("blob {digest} is not in repository {repo}"),
        ));
    };
    serve_blob(
        state,
        &digest,
        link.size,
        request.headers(),
        head,
        "application/octet-stream",
    )
    .await
}

/// Writes a blob response (shared with manifests fetched by digest through the blob route).
pub(crate) async fn serve_blob(
    state: &OciState,
    digest: &Digest,
    size: u64,
    headers: &HeaderMap,
    head: bool,
    content_type: &str,
) -> OciResult {
    let range_header = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let range = match answer(range_header, size) {
        RangeAnswer::Whole => None,
        RangeAnswer::Part(start, end) => Some((start, end)),
        RangeAnswer::Unsatisfiable => {
            return Ok(Response::builder()
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{size}"))
                .header(header::CONTENT_LENGTH, 0)
                .body(Body::empty())
                .unwrap_or_default());
        }
    };
    let mut builder = Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, format!("\"{digest}\""))
        .header("docker-content-digest", digest.to_string());
    builder = match range {
        Some((start, end)) => builder
            .status(StatusCode::PARTIAL_CONTENT)
            .header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{size}"))
            .header(header::CONTENT_LENGTH, end - start + 1),
        None => builder
            .status(StatusCode::OK)
            .header(header::CONTENT_LENGTH, size),
    };
    if head {
        return Ok(builder.body(Body::empty()).unwrap_or_default());
    }
    let reader = state.registry.read_blob(digest, range).await?;
    Ok(builder
        .body(Body::from_stream(reader.stream))
        .unwrap_or_default())
}

/// Drops the blob's link from the repository; the bytes stay for other repositories and GC.
pub async fn delete(
    state: &OciState,
    ctx: &RequestCtx,
    name: &ImageName,
    digest: &str,
) -> OciResult {
    let digest = parse_digest(digest)?;
    state
        .registry
        .unlink_blob(ctx, &name.repo(), &digest)
        .await?;
    Ok(Response::builder()
        .status(StatusCode::ACCEPTED)
        .header(header::CONTENT_LENGTH, 0)
        .body(Body::empty())
        .unwrap_or_default())
}
