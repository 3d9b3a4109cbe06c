//! The OCI Distribution Spec v1.1 at `/v2/`: routing ([`router::Endpoint`]), one handler file
//! per endpoint family ([`blobs`], [`uploads`], [`manifests`], [`listings`]), pure manifest
//! parsing ([`manifest`]) and the OCI error shape ([`error`]).
//!
//! The first path segment of an OCI name is the Wharf repository (`/v2/<repo>/<image...>`).

pub mod blobs;
pub mod error;
pub mod listings;
pub mod manifest;
pub mod manifests;
pub mod router;
pub mod uploads;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use http::{HeaderValue, Method, StatusCode, header};
use tracing::Instrument;
use wharf_registry::{Registry, RequestCtx};
use wharf_types::{ErrorCode, ImageName};

pub use error::OciError;
use router::Endpoint;

/// Result of an OCI handler.
pub type OciResult = Result<Response, OciError>;

/// Limits and state the OCI handlers share.
#[derive(Clone)]
pub struct OciState {
    pub registry: Registry,
    /// Largest manifest body (413 above it).
    pub max_manifest_bytes: u64,
    /// Largest page of tags, catalog entries or referrers.
    pub max_page: usize,
}

/// The `/v2/` router.
pub fn router(state: OciState) -> Router {
    Router::new()
        .route("/v2", axum::routing::any(dispatch))
        .route("/v2/", axum::routing::any(dispatch))
        .route("/v2/{*rest}", axum::routing::any(dispatch))
        .with_state(state)
}

async fn dispatch(State(state): State<OciState>, request: Request) -> Response {
    let head = request.method() == Method::HEAD;
    let mut response = match Endpoint::parse(request.uri().path()) {
        Some(endpoint) => {
            let span = tracing::info_span!("oci", endpoint = endpoint.family());
            handle(&state, endpoint, request)
                .instrument(span)
                .await
                .unwrap_or_else(|e| e.into_response(head))
        }
        None => OciError::new(ErrorCode::NotFound, "no such OCI endpoint")
            .with_status(StatusCode::NOT_FOUND)
            .into_response(head),
    };
    response.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    response
}

async fn handle(state: &OciState, endpoint: Endpoint, request: Request) -> OciResult {
    let method = request.method().clone();
    let ctx = RequestCtx::new("anonymous");
    match (endpoint, method) {
        (Endpoint::Base, Method::GET | Method::HEAD) => {
            Ok(json_response(StatusCode::OK, "{}".into(), None))
        }
        (Endpoint::Catalog, Method::GET) => listings::catalog(state, request).await,
        (Endpoint::Tags { name }, Method::GET) => {
            listings::tags(state, &image_name(&name)?, request).await
        }
        (Endpoint::Referrers { name, digest }, Method::GET) => {
            listings::referrers(state, &image_name(&name)?, &digest, request).await
        }
        (Endpoint::Manifest { name, reference }, m @ (Method::GET | Method::HEAD)) => {
            manifests::get(
                state,
                &image_name(&name)?,
                &reference,
                request,
                m == Method::HEAD,
            )
            .await
        }
        (Endpoint::Manifest { name, reference }, Method::PUT) => {
            manifests::put(state, &ctx, &image_name(&name)?, &reference, request).await
        }
        (Endpoint::Manifest { name, reference }, Method::DELETE) => {
            manifests::delete(state, &ctx, &image_name(&name)?, &reference).await
        }
        (Endpoint::Blob { name, digest }, m @ (Method::GET | Method::HEAD)) => {
            blobs::get(
                state,
                &image_name(&name)?,
                &digest,
                request,
                m == Method::HEAD,
            )
            .await
        }
        (Endpoint::Blob { name, digest }, Method::DELETE) => {
            blobs::delete(state, &ctx, &image_name(&name)?, &digest).await
        }
        (Endpoint::UploadStart { name }, Method::POST) => {
            uploads::start(state, &ctx, &image_name(&name)?, request).await
        }
        (Endpoint::Upload { name, session }, Method::GET) => {
            uploads::status(state, &image_name(&name)?, &session).await
        }
        (Endpoint::Upload { name, session }, Method::PATCH) => {
            uploads::patch(state, &image_name(&name)?, &session, request).await
        }
        (Endpoint::Upload { name, session }, Method::PUT) => {
            uploads::finish(state, &ctx, &image_name(&name)?, &session, request).await
        }
        (Endpoint::Upload { name, session }, Method::DELETE) => {
            uploads::cancel(state, &image_name(&name)?, &session).await
        }
        (endpoint, method) => Err(OciError::new(
            ErrorCode::Unsupported,
            format!("{method} is not supported on {}", endpoint.family()),
        )),
    }
}

fn image_name(name: &str) -> Result<ImageName, OciError> {
    Ok(ImageName::new(name)?)
}

/// A JSON response with `Content-Length`, optionally with a `Link` header.
pub(crate) fn json_response(status: StatusCode, body: String, link: Option<String>) -> Response {
    let mut builder = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, body.len());
    if let Some(link) = link {
        builder = builder.header(header::LINK, link);
    }
    builder
        .body(Body::from(body))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

/// Parses `n` and `last` of a paginated listing, capping `n`.
pub(crate) fn page_params(
    query: Option<&str>,
    cap: usize,
) -> Result<(usize, Option<String>), OciError> {
    let mut n = cap;
    let mut last = None;
    for (k, v) in form_pairs(query) {
        match k.as_str() {
            "n" => {
                n = v
                    .parse::<usize>()
                    .map_err(|_| {
                        OciError::new(ErrorCode::Unsupported, format!("n={v} is not a number"))
                            .with_status(StatusCode::BAD_REQUEST)
                    })?
                    .min(cap)
            }
            "last" => last = Some(v),
            _ => {}
        }
    }
    Ok((n, last))
}

/// Decodes `application/x-www-form-urlencoded` query pairs.
pub(crate) fn form_pairs(query: Option<&str>) -> Vec<(String, String)> {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

/// The first value of a query parameter.
pub(crate) fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    form_pairs(query)
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}
