//! Cargo registries at `/cargo/<repo>/`: the sparse index (`index/config.json`, one file per
//! crate) and the registry web API (`api/v1/crates/…`: publish, download, yank/unyank, owners),
//! driven by the real `cargo` (docs/clients.md §2.6).
//!
//! Routing is in [`router`]; names, keys and index paths in [`names`]; the publish body, the
//! index line it becomes and the `.crate` checks in [`publish`] (pure functions); the index
//! documents in [`index`]; the API handlers in [`api`]; the error shape in [`error`].
//!
//! A crate is a package keyed by its name lower-cased with `_` → `-` (keeping the published
//! spelling: another spelling of a published name is refused); a version is keyed by its semver
//! without build metadata and bound once, whole, to one `<name>-<version>.crate` blob. Its index
//! line is computed at publish time and stored with the version; reads add only `yanked`.

pub mod api;
pub mod error;
pub mod index;
pub mod names;
pub mod publish;
pub mod router;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::response::Response;
use http::{Method, StatusCode};
use tracing::Instrument;
use wharf_registry::{Registry, RequestCtx};
use wharf_types::ErrorCode;

pub use error::CargoError;
use router::{Endpoint, RouteError};

/// State the Cargo handlers share.
#[derive(Clone)]
pub struct CargoState {
    pub registry: Registry,
    /// Builds the absolute `dl` and `api` URLs of `config.json`.
    pub external: wharf_http::ExternalUrl,
    /// Largest publish body (`http.max_cargo_publish_bytes`; 413 above it).
    pub max_publish_bytes: u64,
    /// Largest total a `.crate` may inflate to (`http.max_crate_unpacked_bytes`).
    pub max_unpacked_bytes: u64,
    /// Rendered index files.
    pub index_cache: Arc<index::IndexCache>,
    /// Publish bodies are held in memory while the `.crate` is checked (so that a refused one
    /// never reaches the blob store): at most [`MAX_PUBLISHES_IN_FLIGHT`] at once.
    pub publishes: Arc<tokio::sync::Semaphore>,
}

/// How many publishes one node checks at once (each holds up to
/// `http.max_cargo_publish_bytes` in memory); more get 429 + `Retry-After`.
pub const MAX_PUBLISHES_IN_FLIGHT: usize = 8;

impl CargoState {
    /// State with an empty index cache.
    pub fn new(
        registry: Registry,
        external: wharf_http::ExternalUrl,
        max_publish_bytes: u64,
        max_unpacked_bytes: u64,
    ) -> Self {
        CargoState {
            registry,
            external,
            max_publish_bytes,
            max_unpacked_bytes,
            index_cache: Arc::new(index::IndexCache::new(index::CACHE_ENTRIES)),
            publishes: Arc::new(tokio::sync::Semaphore::new(MAX_PUBLISHES_IN_FLIGHT)),
        }
    }
}

/// The `/cargo/` router.
pub fn router(state: CargoState) -> Router {
    Router::new()
        .route("/cargo/{*rest}", axum::routing::any(dispatch))
        .with_state(state)
}

fn unsupported(method: &Method) -> CargoError {
    CargoError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::Unsupported,
        format!("{method} is not supported here"),
    )
}

async fn dispatch(State(state): State<CargoState>, request: Request) -> Response {
    let head = request.method() == Method::HEAD;
    let decoded = percent_encoding::percent_decode_str(request.uri().path())
        .decode_utf8_lossy()
        .into_owned();
    let endpoint = match router::parse(&decoded) {
        Ok(e) => e,
        Err(RouteError::Unknown) => {
            return CargoError::new(
                StatusCode::NOT_FOUND,
                ErrorCode::NotFound,
                format!("no Cargo endpoint at {decoded}"),
            )
            .into_response(head);
        }
        Err(RouteError::BadRepo(m) | RouteError::BadName(m)) => {
            return CargoError::new(StatusCode::BAD_REQUEST, ErrorCode::NameInvalid, m)
                .into_response(head);
        }
    };
    let ctx = RequestCtx::new(api::ANONYMOUS);
    let method = request.method().clone();
    let span = tracing::info_span!(
        "cargo",
        endpoint = endpoint.name(),
        repo = %endpoint.repo(),
        method = %method
    );
    let result = async {
        let get = method == Method::GET || method == Method::HEAD;
        match endpoint {
            Endpoint::Config { repo } if get => {
                let base = state.external.base_of(&request);
                index::config(&state, &repo, &base, request.headers(), head).await
            }
            Endpoint::IndexFile { repo, name } if get => {
                index::file(&state, &repo, &name, request.headers(), head).await
            }
            Endpoint::Publish { repo } if method == Method::PUT => {
                api::publish(&state, &ctx, &repo, request).await
            }
            Endpoint::Download {
                repo,
                name,
                version,
            } if get => api::download(&state, &repo, &name, &version, head).await,
            Endpoint::Yank {
                repo,
                name,
                version,
                yank,
            } if (yank && method == Method::DELETE) || (!yank && method == Method::PUT) => {
                api::yank(&state, &ctx, &repo, &name, &version, yank).await
            }
            Endpoint::Owners { repo, name } if get => api::list_owners(&state, &repo, &name).await,
            Endpoint::Owners { repo, name }
                if method == Method::PUT || method == Method::DELETE =>
            {
                let add = method == Method::PUT;
                api::change_owners(&state, &ctx, &repo, &name, add, request).await
            }
            _ => Err(unsupported(&method)),
        }
    }
    .instrument(span)
    .await;
    result.unwrap_or_else(|e| e.into_response(head))
}
