//! Blob uploads: `POST` (session, monolithic `?digest=`, mount `?mount=&from=`), `PATCH`
//! (streamed, or chunked with `Content-Range`), `PUT ?digest=` (with or without a last chunk),
//! `GET` status and `DELETE`.
//!
//! Sessions are node-local; their id is unguessable and names the node that owns them.

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use wharf_registry::BlobError;
use wharf_registry::{BlobSource, FsBlobStore, Mounted, RegistryError, RequestCtx};
use wharf_types::{ErrorCode, Format, ImageName};

use crate::blobs::parse_digest;
use crate::{OciError, OciResult, OciState, query_param};

fn upload_location(name: &ImageName, session: &str) -> String {
    format!("/v2/{name}/blobs/uploads/{session}")
}

/// `Range: 0-<last byte>` as the spec writes it (`0-0` for an empty upload).
fn range_header(size: u64) -> String {
    format!("0-{}", size.saturating_sub(1))
}

fn session_response(status: StatusCode, name: &ImageName, session: &str, size: u64) -> Response {
    Response::builder()
        .status(status)
        .header(header::LOCATION, upload_location(name, session))
        .header(header::RANGE, range_header(size))
        .header("docker-upload-uuid", session)
        .header(header::CONTENT_LENGTH, 0)
        .body(Body::empty())
        .unwrap_or_default()
}

fn blob_created(name: &ImageName, digest: &wharf_types::Digest) -> Response {
    Response::builder()
        .status(StatusCode::CREATED)
        .header(header::LOCATION, format!("/v2/{name}/blobs/{digest}"))
        .header("docker-content-digest", digest.to_string())
        .header(header::CONTENT_LENGTH, 0)
        .body(Body::empty())
        .unwrap_or_default()
}

/// Maps blob-store errors of an upload to OCI errors: out-of-order or concurrent chunks are 416
/// with the current `Range`.
fn upload_error(e: RegistryError, name: &ImageName, session: &str, size: Option<u64>) -> OciError {
    match &e {
        RegistryError::Blob(BlobError::RangeMismatch { expected }) => {
            range_not_satisfiable(e.to_string(), name, session, Some(*expected))
        }
        RegistryError::Blob(BlobError::SessionBusy) => {
            range_not_satisfiable(e.to_string(), name, session, size)
        }
        _ => OciError::from(e),
    }
}

fn range_not_satisfiable(
    message: String,
    name: &ImageName,
    session: &str,
    size: Option<u64>,
) -> OciError {
    let mut err = OciError::new(ErrorCode::BlobUploadInvalid, message)
        .with_status(StatusCode::RANGE_NOT_SATISFIABLE)
        .with_header(
            header::LOCATION,
            header_value(&upload_location(name, session)),
        );
    if let Some(size) = size {
        err = err.with_header(header::RANGE, header_value(&range_header(size)));
    }
    err
}

fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Checks that the session exists on this node and was started for `name` (forwarding to
/// the owning node arrives with the cluster issue; until then another node's id is simply
/// unknown here).
fn check_session(state: &OciState, name: &ImageName, session: &str) -> Result<(), OciError> {
    let here = FsBlobStore::session_node(session) == Some(state.registry.node_id());
    let owner = state.registry.blobs().upload_owner(session).ok();
    if here && owner.as_deref() == Some(name.as_str()) {
        Ok(())
    } else {
        Err(OciError::new(
            ErrorCode::BlobUploadUnknown,
            format!("upload {session} is unknown"),
        ))
    }
}

/// Parses `Content-Range: <start>-<end>` (also accepting `bytes <start>-<end>/<total>`).
pub fn parse_content_range(value: &str) -> Option<(u64, u64)> {
    let v = value.trim();
    let v = v
        .strip_prefix("bytes")
        .map(|s| s.trim_start_matches([' ', '=']))
        .unwrap_or(v);
    let v = v.split('/').next().unwrap_or(v);
    let (a, b) = v.split_once('-')?;
    let (a, b) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (b >= a).then_some((a, b))
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// The start offset a chunk claims, checked against its length. `Err` = a 416.
fn chunk_range(headers: &HeaderMap) -> Result<Option<(u64, u64)>, String> {
    let Some(value) = headers.get(header::CONTENT_RANGE) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| "Content-Range is not text".to_string())?;
    let (start, end) = parse_content_range(text)
        .ok_or_else(|| format!("Content-Range {text:?} is not <start>-<end>"))?;
    let covered = (end - start)
        .checked_add(1)
        .ok_or_else(|| format!("Content-Range {text} is too large"))?;
    if let Some(len) = content_length(headers)
        && len != covered
    {
        return Err(format!(
            "Content-Range {text} covers {covered} bytes but Content-Length is {len}"
        ));
    }
    Ok(Some((start, end)))
}

/// `POST /v2/<name>/blobs/uploads/`.
pub async fn start(
    state: &OciState,
    ctx: &RequestCtx,
    name: &ImageName,
    request: Request,
) -> OciResult {
    let query = request.uri().query().map(str::to_string);
    let query = query.as_deref();
    let repo = name.repo();
    if let Some(mount) = query_param(query, "mount") {
        let digest = parse_digest(&mount)?;
        let from = query_param(query, "from").and_then(|f| ImageName::new(&f).ok());
        if let Some(from) = from
            && let Mounted::Linked = state
                .registry
                .mount_blob(ctx, &repo, &from.repo(), &digest)
                .await?
        {
            return Ok(blob_created(name, &digest));
        }
        // Not mountable: fall through to a normal upload session (202), as the spec says.
    } else if let Some(digest) = query_param(query, "digest") {
        let digest = parse_digest(&digest)?;
        // The repository is checked (or created in dev mode) before any bytes are stored, so a
        // push to a name that cannot take it stores nothing.
        let record = state
            .registry
            .repo_for_write(ctx, &repo, Format::Oci)
            .await?;
        let expected_size = content_length(request.headers());
        let body = wharf_http::stream_body(request.into_body());
        let stored = state
            .registry
            .store_blob(
                &record.settings,
                BlobSource::Stream(body),
                Some(&digest),
                expected_size,
            )
            .await?;
        state.registry.link_blob(ctx, &repo, &stored).await?;
        return Ok(blob_created(name, &digest));
    }
    let record = state
        .registry
        .repo_for_write(ctx, &repo, Format::Oci)
        .await?;
    // An upload session of a repository with data residency never lives outside its regions.
    state.registry.ensure_stored_here(&record.settings)?;
    let session = state
        .registry
        .blobs()
        .create_upload_for(name.as_str())
        .await
        .map_err(RegistryError::from)?;
    Ok(session_response(StatusCode::ACCEPTED, name, &session, 0))
}

/// `GET <location>`: 204 with the current `Range`.
pub async fn status(state: &OciState, name: &ImageName, session: &str) -> OciResult {
    check_session(state, name, session)?;
    let size = state
        .registry
        .blobs()
        .upload_size(session)
        .await
        .map_err(RegistryError::from)?;
    Ok(session_response(
        StatusCode::NO_CONTENT,
        name,
        session,
        size,
    ))
}

/// Appends a request body to a session at the offset its `Content-Range` claims (if any);
/// out-of-order, mis-sized or concurrent chunks become 416 with the session's current `Range`.
async fn append_chunk(
    state: &OciState,
    name: &ImageName,
    session: &str,
    request: Request,
) -> Result<u64, OciError> {
    let blobs = state.registry.blobs();
    let claimed = match chunk_range(request.headers()) {
        Ok(range) => range,
        Err(message) => {
            let size = blobs.upload_size(session).await.ok();
            return Err(range_not_satisfiable(message, name, session, size));
        }
    };
    let body = wharf_http::stream_body(request.into_body());
    match blobs
        .append(session, claimed.map(|(start, _)| start), body)
        .await
    {
        // A chunked body can only be measured once it has arrived: one that disagrees with its
        // Content-Range is refused with the size the session really has now.
        Ok(size) if claimed.is_some_and(|(_, end)| Some(size) != end.checked_add(1)) => {
            Err(range_not_satisfiable(
                format!(
                    "the chunk's body does not cover its Content-Range; the upload now holds {size} bytes"
                ),
                name,
                session,
                Some(size),
            ))
        }
        Ok(size) => Ok(size),
        Err(e) => {
            let size = blobs.upload_size(session).await.ok();
            Err(upload_error(e.into(), name, session, size))
        }
    }
}

/// `PATCH <location>`: appends the body (streamed; `Content-Range` must start at the current
/// size, else 416).
pub async fn patch(
    state: &OciState,
    name: &ImageName,
    session: &str,
    request: Request,
) -> OciResult {
    check_session(state, name, session)?;
    let size = append_chunk(state, name, session, request).await?;
    Ok(session_response(StatusCode::ACCEPTED, name, session, size))
}

/// `PUT <location>?digest=`: appends a last chunk if any, verifies, commits and links.
pub async fn finish(
    state: &OciState,
    ctx: &RequestCtx,
    name: &ImageName,
    session: &str,
    request: Request,
) -> OciResult {
    check_session(state, name, session)?;
    let Some(digest) = query_param(request.uri().query(), "digest") else {
        return Err(OciError::new(
            ErrorCode::DigestInvalid,
            "PUT must carry ?digest=<digest> to finish an upload",
        ));
    };
    let digest = parse_digest(&digest)?;
    let has_body = content_length(request.headers()).is_none_or(|len| len > 0);
    if has_body {
        append_chunk(state, name, session, request).await?;
    }
    let no_body: BlobSource<futures::stream::Empty<Result<bytes::Bytes, std::io::Error>>> =
        BlobSource::Upload(session.to_string());
    let record = state.registry.repo(&name.repo()).await?;
    let stored = state
        .registry
        .store_blob(&record.settings, no_body, Some(&digest), None)
        .await?;
    state.registry.link_blob(ctx, &name.repo(), &stored).await?;
    Ok(blob_created(name, &digest))
}

/// `DELETE <location>`: cancels the session.
pub async fn cancel(state: &OciState, name: &ImageName, session: &str) -> OciResult {
    check_session(state, name, session)?;
    state
        .registry
        .blobs()
        .cancel(session)
        .await
        .map_err(RegistryError::from)?;
    Ok(Response::builder()
        .status(StatusCode::NO_CONTENT)
        .header(header::CONTENT_LENGTH, 0)
        .body(Body::empty())
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::parse_content_range;

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("0-99"), Some((0, 99)));
        assert_eq!(parse_content_range("bytes 100-199/*"), Some((100, 199)));
        assert_eq!(parse_content_range("bytes=5-9"), Some((5, 9)));
        assert_eq!(parse_content_range("9-5"), None);
        assert_eq!(parse_content_range("x"), None);
    }
}
