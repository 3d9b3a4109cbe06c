//! `PUT`/`GET`/`HEAD`/`DELETE /v2/<name>/manifests/<reference>`.
//!
//! Manifests are served as exactly the bytes that were pushed: never re-serialized.

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use http::{HeaderMap, StatusCode, header};
use sha2::{Digest as _, Sha256, Sha512};
use wharf_registry::{RegistryError, RequestCtx};
use wharf_types::{Digest, DigestAlgorithm, ErrorCode, ImageName, Tag};

use crate::blobs::parse_digest;
use crate::manifest::{self, bare_media_type};
use crate::{OciError, OciResult, OciState};

/// A manifest reference: a tag or a digest.
enum Reference {
    Tag(Tag),
    Digest(Digest),
}

fn parse_reference(reference: &str) -> Result<Reference, OciError> {
    if reference.contains(':') {
        Ok(Reference::Digest(parse_digest(reference)?))
    } else {
        Tag::new(reference).map(Reference::Tag).map_err(|e| {
            OciError::new(ErrorCode::ManifestInvalid, e.to_string())
                .with_status(StatusCode::BAD_REQUEST)
        })
    }
}

/// `PUT`: stores the bytes, binds the tag if pushed by tag.
pub async fn put(
    state: &OciState,
    ctx: &RequestCtx,
    name: &ImageName,
    reference: &str,
    request: Request,
) -> OciResult {
    let reference = parse_reference(reference)?;
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let bytes = match wharf_http::read_limited(request.into_body(), state.max_manifest_bytes).await
    {
        Ok(bytes) => bytes,
        Err(wharf_http::BodyError::TooLarge { limit }) => {
            return Err(OciError::new(
                ErrorCode::SizeInvalid,
                format!("manifest is larger than the limit of {limit} bytes"),
            )
            .with_status(StatusCode::PAYLOAD_TOO_LARGE));
        }
        Err(wharf_http::BodyError::Transport(e)) => {
            return Err(OciError::new(
                ErrorCode::ManifestInvalid,
                format!("manifest body failed: {e}"),
            ));
        }
    };
    // Named by sha256 unless the URL names it by another algorithm: then that one is the
    // manifest's digest (stored, served and answered in Docker-Content-Digest).
    let algorithm = match &reference {
        Reference::Digest(d) => d.algorithm(),
        Reference::Tag(_) => DigestAlgorithm::Sha256,
    };
    let digest = match algorithm {
        DigestAlgorithm::Sha256 => Digest::from_sha256_bytes(&Sha256::digest(&bytes).into()),
        DigestAlgorithm::Sha512 => Digest::from_sha512_bytes(&Sha512::digest(&bytes).into()),
    };
    let tag = match &reference {
        Reference::Digest(d) if d != &digest => {
            return Err(OciError::new(
                ErrorCode::DigestInvalid,
                format!("manifest bytes hash to {digest}, not to the {d} in the URL"),
            ));
        }
        Reference::Digest(_) => None,
        Reference::Tag(t) => Some(t),
    };
    let parsed = manifest::parse(&bytes, content_type.as_deref())?;
    let subject = parsed.subject.clone();
    state
        .registry
        .put_manifest(ctx, name, tag, bytes, &digest, parsed)
        .await
        .map_err(|e| immutable_status(e, StatusCode::CONFLICT))?;
    let mut builder = Response::builder()
        .status(StatusCode::CREATED)
        .header(header::LOCATION, format!("/v2/{name}/manifests/{digest}"))
        .header("docker-content-digest", digest.to_string())
        .header(header::CONTENT_LENGTH, 0);
    if let Some(subject) = subject {
        builder = builder.header("oci-subject", subject.to_string());
    }
    Ok(builder.body(Body::empty()).unwrap_or_default())
}

/// An immutability refusal (`DENIED` from apply) gets `status` (409 for a moved tag, 405 for a
/// delete), everything else its default.
fn immutable_status(e: RegistryError, status: StatusCode) -> OciError {
    let denied = matches!(&e, RegistryError::Rejected(r) if r.code == ErrorCode::Denied.as_str());
    let err = OciError::from(e);
    if denied { err.with_status(status) } else { err }
}

/// Whether a manifest of `media_type` may be served to a client sending `headers`' `Accept`
/// lines (all of them merged): yes when absent, `*/*` or naming the type.
pub fn accepts(headers: &HeaderMap, media_type: &str) -> bool {
    let mut any = false;
    for value in headers.get_all(header::ACCEPT) {
        let Ok(text) = value.to_str() else { continue };
        for item in text.split(',') {
            let t = bare_media_type(item);
            if t.is_empty() {
                continue;
            }
            any = true;
            if t == "*/*" || t == media_type {
                return true;
            }
        }
    }
    !any
}

/// `GET`/`HEAD`: resolves the reference and serves the stored bytes.
pub async fn get(
    state: &OciState,
    name: &ImageName,
    reference: &str,
    request: Request,
    head: bool,
) -> OciResult {
    // A reference that cannot name anything is simply not found on a read.
    let reference = parse_reference(reference).map_err(|e| match e.code {
        ErrorCode::ManifestInvalid => OciError::new(ErrorCode::ManifestUnknown, e.message),
        _ => e,
    })?;
    let digest = match reference {
        Reference::Digest(d) => d,
        Reference::Tag(t) => state
            .registry
            .resolve_tag(name, t.as_str())
            .await?
            .ok_or_else(|| {
                OciError::new(
                    ErrorCode::ManifestUnknown,
                    format!("tag {t} is not in {name}"),
                )
            })?,
    };
    let record = state
        .registry
        .manifest(name, &digest)
        .await?
        .ok_or_else(|| {
            OciError::new(
                ErrorCode::ManifestUnknown,
                format!("manifest {digest} is not in {name}"),
            )
        })?;
    if !accepts(request.headers(), &record.media_type) {
        return Err(OciError::new(
            ErrorCode::ManifestUnknown,
            format!(
                "manifest {digest} is {}, which the Accept header does not allow",
                record.media_type
            ),
        ));
    }
    let builder = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, &record.media_type)
        .header(header::CONTENT_LENGTH, record.size)
        .header("docker-content-digest", digest.to_string())
        .header(header::ETAG, format!("\"{digest}\""));
    if head {
        return Ok(builder.body(Body::empty()).unwrap_or_default());
    }
    // Manifests are small (bounded by max_manifest_bytes), so they are read whole: the response
    // then either carries all the verified bytes or is an error, never a truncated document.
    let bytes = state.registry.read_document(&digest).await?;
    Ok(builder.body(Body::from(bytes)).unwrap_or_default())
}

/// `DELETE`: by digest removes the manifest and its tags; by tag removes the tag.
pub async fn delete(
    state: &OciState,
    ctx: &RequestCtx,
    name: &ImageName,
    reference: &str,
) -> OciResult {
    let result = match parse_reference(reference)? {
        Reference::Digest(d) => state.registry.delete_manifest(ctx, name, &d).await,
        Reference::Tag(t) => state.registry.delete_tag(ctx, name, &t).await,
    };
    result.map_err(|e| immutable_status(e, StatusCode::METHOD_NOT_ALLOWED))?;
    Ok(Response::builder()
        .status(StatusCode::ACCEPTED)
        .header(header::CONTENT_LENGTH, 0)
        .body(Body::empty())
        .unwrap_or_default())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn accept_lines_are_merged() {
        let mut h = HeaderMap::new();
        assert!(accepts(&h, manifest::OCI_MANIFEST));
        h.append(
            header::ACCEPT,
            HeaderValue::from_static("application/vnd.docker.distribution.manifest.v2+json"),
        );
        h.append(
            header::ACCEPT,
            HeaderValue::from_static("application/vnd.oci.image.manifest.v1+json; q=0.5"),
        );
        assert!(accepts(&h, manifest::OCI_MANIFEST));
        assert!(!accepts(&h, manifest::OCI_INDEX));
        h.append(header::ACCEPT, HeaderValue::from_static("*/*"));
        assert!(accepts(&h, manifest::OCI_INDEX));
    }
}
