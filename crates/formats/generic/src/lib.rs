//! Generic files at `/generic/<repo>/<path>`: `PUT`, `GET` (with `Range`), `HEAD`, `DELETE`,
//! JSON directory listings, `ETag` and `X-Checksum-Sha256` (the sha256), and `<path>.sha256`
//! sidecars. Paths are immutable by default (the repository setting).
//!
//! Routing is in [`router`], handlers in [`files`], the error shape in [`error`].

pub mod error;
pub mod files;
pub mod router;

use axum::Router;
use axum::extract::{Request, State};
use axum::response::Response;
use http::{Method, StatusCode};
use tracing::Instrument;
use wharf_registry::{Registry, RequestCtx};
use wharf_types::ErrorCode;

pub use error::GenericError;
use router::{Endpoint, RouteError};

/// State the generic handlers share.
#[derive(Clone)]
pub struct GenericState {
    pub registry: Registry,
    /// Builds the absolute URLs handed back to clients.
    pub external: wharf_http::ExternalUrl,
}

/// The `/generic/` router.
pub fn router(state: GenericState) -> Router {
    Router::new()
        .route("/generic/{*rest}", axum::routing::any(dispatch))
        .with_state(state)
}

async fn dispatch(State(state): State<GenericState>, request: Request) -> Response {
    let head = request.method() == Method::HEAD;
    let decoded = percent_decode(request.uri().path());
    let endpoint = match router::parse(&decoded) {
        Ok(e) => e,
        Err(RouteError::NotGeneric) => {
            return GenericError::new(
                StatusCode::NOT_FOUND,
                ErrorCode::NotFound,
                "not a generic path",
            )
            .into_response(head);
        }
        Err(RouteError::BadRepo(m) | RouteError::BadPath(m)) => {
            return GenericError::new(StatusCode::BAD_REQUEST, ErrorCode::NameInvalid, m)
                .into_response(head);
        }
    };
    let ctx = RequestCtx::new("anonymous");
    let method = request.method().clone();
    let span = tracing::info_span!("generic", method = %method);
    let result = async {
        match (endpoint, method) {
            (Endpoint::File { repo, path }, Method::PUT) => {
                let base = state.external.base_of(&request);
                files::put(&state, &ctx, &repo, &path, &base, request).await
            }
            (Endpoint::File { repo, path }, m @ (Method::GET | Method::HEAD)) => {
                files::get(&state, &repo, &path, request.headers(), m == Method::HEAD).await
            }
            (Endpoint::File { repo, path }, Method::DELETE) => {
                files::delete(&state, &ctx, &repo, &path).await
            }
            (Endpoint::Dir { repo, dir }, Method::GET | Method::HEAD) => {
                files::list(&state, &repo, &dir).await
            }
            (_, method) => Err(GenericError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorCode::Unsupported,
                format!("{method} is not supported here"),
            )),
        }
    }
    .instrument(span)
    .await;
    result.unwrap_or_else(|e| e.into_response(head))
}

fn percent_decode(path: &str) -> String {
    percent_encoding::percent_decode_str(path)
        .decode_utf8_lossy()
        .into_owned()
}
