//! npm registry at `/npm/<repo>/` (a client's `registry=` URL): packuments (full and
//! abbreviated, generated from the state machine, cached by revision, `ETag`/304, gzip),
//! publish (base64 tarball checked against its integrity, shasum and `package.json`), version
//! immutability, dist-tags, deprecate, unpublish (when the repository allows it; versions stay
//! reserved), tarball downloads with `Range`, and `whoami`.
//!
//! Routing is in [`route`], the publish checks in [`publish`], rendering in [`packument`], the
//! handlers in [`handlers`], the error shape in [`error`].

pub mod error;
pub mod handlers;
pub mod packument;
pub mod publish;
pub mod route;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::response::Response;
use http::{Method, StatusCode};
use tracing::Instrument;
use wharf_registry::{Registry, RequestCtx};

pub use error::NpmError;
use route::{Endpoint, RouteError};

/// How many rendered packuments a node keeps.
const CACHED_DOCUMENTS: usize = 512;
/// How many publishes one node checks at once (each holds its body in memory); 429 beyond.
pub const PUBLISHES_IN_FLIGHT: usize = 8;

/// State the npm handlers share.
#[derive(Clone)]
pub struct NpmState {
    pub registry: Registry,
    /// Builds the absolute tarball URLs handed to clients.
    pub external: wharf_http::ExternalUrl,
    /// Largest publish body (`http.max_npm_publish_bytes`).
    pub max_publish_bytes: u64,
    pub documents: Arc<DocumentCache>,
    pub publishes: Arc<tokio::sync::Semaphore>,
}

impl NpmState {
    pub fn new(
        registry: Registry,
        external: wharf_http::ExternalUrl,
        max_publish_bytes: u64,
    ) -> Self {
        NpmState {
            registry,
            external,
            max_publish_bytes,
            documents: Arc::new(DocumentCache::new(CACHED_DOCUMENTS)),
            publishes: Arc::new(tokio::sync::Semaphore::new(PUBLISHES_IN_FLIGHT)),
        }
    }
}

/// What a rendered packument depends on: a package's revision grows with every change, so a
/// key never names a stale document.
pub type DocumentKey = (String, String, u64, packument::Representation, String);

/// Rendered packuments by [`DocumentKey`], bounded.
pub type DocumentCache = wharf_http::document::DocumentCache<DocumentKey>;

/// The `/npm/` router.
pub fn router(state: NpmState) -> Router {
    Router::new()
        .route("/npm/{*rest}", axum::routing::any(dispatch))
        .with_state(state)
}

async fn dispatch(State(state): State<NpmState>, request: Request) -> Response {
    let head = request.method() == Method::HEAD;
    let (repo, endpoint) = match route::parse(request.uri().path()) {
        Ok(parsed) => parsed,
        Err(RouteError::NotNpm) => {
            return NpmError::not_found("not an npm path").into_response(head);
        }
        Err(RouteError::NoSuchEndpoint(what)) => {
            return NpmError::not_found(format!("no such endpoint: {what}")).into_response(head);
        }
        Err(RouteError::BadRepo(m) | RouteError::BadName(m)) => {
            return NpmError::bad_request(m).into_response(head);
        }
    };
    let ctx = RequestCtx::new("anonymous");
    let method = request.method().clone();
    let span = tracing::info_span!("npm", method = %method, repo = %repo);
    async move {
        let base = state.external.base_of(&request);
        let h = handlers::Handler {
            state: &state,
            ctx: &ctx,
            repo: &repo,
            base: &base,
        };
        let result = match (endpoint, method) {
            (Endpoint::Package { name }, Method::GET | Method::HEAD) => {
                h.packument(&name, request.headers(), head).await
            }
            (Endpoint::Package { name }, Method::PUT) => h.put(&name, None, request).await,
            (Endpoint::PackageRev { name, rev }, Method::PUT) => {
                h.put(&name, Some(rev), request).await
            }
            (Endpoint::PackageRev { name, rev }, Method::DELETE) => {
                h.unpublish_all(&name, &rev).await
            }
            (Endpoint::Version { name, spec }, Method::GET | Method::HEAD) => {
                h.version(&name, &spec).await
            }
            (Endpoint::Tarball { name, file }, Method::GET | Method::HEAD) => {
                h.tarball(&name, &file, request.headers(), head).await
            }
            (Endpoint::TarballRev { name, file }, Method::DELETE) => {
                h.delete_tarball(&name, &file).await
            }
            (Endpoint::DistTags { name }, Method::GET) => h.dist_tags(&name).await,
            (Endpoint::DistTag { name, tag }, m @ (Method::PUT | Method::DELETE)) => {
                h.set_dist_tag(&name, &tag, m == Method::DELETE, request)
                    .await
            }
            (Endpoint::Whoami, Method::GET) => Ok(handlers::json(
                StatusCode::OK,
                &serde_json::json!({ "username": ctx.actor }),
            )),
            (Endpoint::Unsupported { what }, _) => Err(NpmError::not_found(format!(
                "{what} is not served by this registry"
            ))),
            (_, method) => Err(NpmError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} is not supported here"),
            )),
        };
        result.unwrap_or_else(|e| e.into_response(head))
    }
    .instrument(span)
    .await
}
