//! PyPI repositories at `/pypi/<repo>/`: the simple index (PEP 503 HTML and PEP 691 JSON by
//! content negotiation, PEP 592 yanking, PEP 658/714 core metadata, `requires-python`), the
//! upload API twine and `uv publish` use, and file downloads with HEAD and `Range`.
//!
//! A project is keyed by its PEP 503 normalized name and a release by its PEP 440 normal form
//! (the spellings as published are kept for display); each filename binds once
//! (`VersionBinding::AddFiles`). Simple pages are generated from the state machine on each
//! read, through a bounded cache keyed by the project's revision.
//!
//! Start at [`router`] (the routes, [`router::parse`]), then [`upload`], [`simple`] and
//! [`files`]; the pure parts are [`names`], [`metadata`], [`archive`] and [`index`].

pub mod admin;
pub mod archive;
pub mod documents;
pub mod error;
pub mod facts;
pub mod files;
pub mod index;
pub mod metadata;
pub mod names;
pub mod router;
pub mod simple;
pub mod upload;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::response::Response;
use http::{Method, StatusCode, header};
use tracing::Instrument;
use wharf_registry::{Registry, RequestCtx};
use wharf_types::{ErrorCode, Format, RepoName};

pub use error::{PypiError, Shape};
use router::{Endpoint, RouteError};

/// State the PyPI handlers share.
#[derive(Clone)]
pub struct PypiState {
    pub registry: Registry,
    /// Builds absolute URLs (the simple pages need none: their links are relative).
    pub external: wharf_http::ExternalUrl,
    /// `http.max_pypi_upload_bytes`: the largest file one upload may carry.
    pub max_upload_bytes: u64,
    /// Rendered project pages.
    pub documents: Arc<documents::DocumentCache>,
}

impl PypiState {
    /// A state with an empty document cache.
    pub fn new(
        registry: Registry,
        external: wharf_http::ExternalUrl,
        max_upload_bytes: u64,
    ) -> Self {
        PypiState {
            registry,
            external,
            max_upload_bytes,
            documents: Arc::new(documents::DocumentCache::new(documents::CACHE_ENTRIES)),
        }
    }

    /// Refuses a repository of another format (or one that does not exist).
    pub(crate) async fn check_repo(&self, repo: &RepoName) -> Result<(), PypiError> {
        self.registry.repo_for_read(repo, Format::Pypi).await?;
        Ok(())
    }
}

/// The `/pypi/` routes and the yank endpoints of the admin API.
pub fn router(state: PypiState) -> Router {
    Router::new()
        .route("/pypi/{*rest}", axum::routing::any(dispatch))
        .route(
            "/api/v1/repos/{repo}/pypi/{project}/{version}/{action}",
            axum::routing::post(yank),
        )
        .with_state(state)
}

async fn dispatch(State(state): State<PypiState>, request: Request) -> Response {
    let head = request.method() == Method::HEAD;
    let decoded = percent_encoding::percent_decode_str(request.uri().path())
        .decode_utf8_lossy()
        .into_owned();
    let endpoint = match router::parse(&decoded) {
        Ok(e) => e,
        Err(RouteError::NotPypi | RouteError::Unknown) => {
            return PypiError::not_found(format!("{decoded} is not a PyPI path"))
                .into_response(Shape::Text, head);
        }
        Err(RouteError::BadRepo(m)) => {
            return PypiError::bad_request(ErrorCode::NameInvalid, m)
                .into_response(Shape::Text, head);
        }
    };
    let ctx = RequestCtx::new("anonymous");
    let method = request.method().clone();
    let (name, repo) = match &endpoint {
        Endpoint::Upload { repo } => ("pypi-upload", repo.clone()),
        Endpoint::Projects { repo } | Endpoint::ProjectsWithoutSlash { repo } => {
            ("pypi-projects", repo.clone())
        }
        Endpoint::Project { repo, .. } => ("pypi-project", repo.clone()),
        Endpoint::File { repo, .. } => ("pypi-file", repo.clone()),
        Endpoint::Metadata { repo, .. } => ("pypi-metadata", repo.clone()),
    };
    let span = tracing::info_span!("pypi", endpoint = name, repo = %repo, method = %method);
    let result = async {
        let headers = request.headers().clone();
        match (endpoint, method) {
            (Endpoint::Upload { repo }, Method::POST) => {
                upload::upload(&state, &ctx, &repo, request).await
            }
            (Endpoint::Projects { repo }, Method::GET | Method::HEAD) => {
                simple::projects(&state, &repo, &headers, head).await
            }
            (
                Endpoint::Project {
                    repo,
                    project,
                    slash: true,
                },
                Method::GET | Method::HEAD,
            ) => simple::project(&state, &repo, &project, &headers, head).await,
            // Relative file links need the trailing slash (PEP 503: redirect to it). Index
            // reads only: the upload URL is never redirected.
            (
                Endpoint::Project { slash: false, .. } | Endpoint::ProjectsWithoutSlash { .. },
                Method::GET | Method::HEAD,
            ) => {
                let location = format!("{}/", request.uri().path());
                Ok(Response::builder()
                    .status(StatusCode::MOVED_PERMANENTLY)
                    .header(header::LOCATION, location)
                    .body(axum::body::Body::empty())
                    .unwrap_or_default())
            }
            (
                Endpoint::File {
                    repo,
                    project,
                    version,
                    filename,
                },
                Method::GET | Method::HEAD,
            ) => {
                files::file(
                    &state, &repo, &project, &version, &filename, false, &headers, head,
                )
                .await
            }
            (
                Endpoint::Metadata {
                    repo,
                    project,
                    version,
                    filename,
                },
                Method::GET | Method::HEAD,
            ) => {
                files::file(
                    &state, &repo, &project, &version, &filename, true, &headers, head,
                )
                .await
            }
            (_, method) => Err(PypiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorCode::Unsupported,
                format!("{method} is not supported here"),
            )),
        }
    }
    .instrument(span)
    .await;
    result.unwrap_or_else(|e| e.into_response(Shape::Text, head))
}

async fn yank(
    State(state): State<PypiState>,
    Path((repo, project, version, action)): Path<(String, String, String, String)>,
    request: Request,
) -> Response {
    let ctx = RequestCtx::new("anonymous");
    let span = tracing::info_span!("pypi-yank", repo = %repo, project = %project, version = %version, action = %action);
    let result = async {
        let repo = RepoName::new(&repo)
            .map_err(|e| PypiError::bad_request(ErrorCode::NameInvalid, e.to_string()))?;
        let yanked = match action.as_str() {
            "yank" => true,
            "unyank" => false,
            other => {
                return Err(PypiError::not_found(format!(
                    "no action {other:?}: yank or unyank"
                )));
            }
        };
        state.check_repo(&repo).await?;
        admin::yank(
            &state,
            &ctx,
            &repo,
            &project,
            &version,
            yanked,
            request.into_body(),
        )
        .await
    }
    .instrument(span)
    .await;
    result.unwrap_or_else(|e| e.into_response(Shape::Json, false))
}
