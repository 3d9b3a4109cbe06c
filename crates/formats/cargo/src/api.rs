//! The registry web API: publish, download, yank/unyank and owners.

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use bytes::Bytes;
use http::{StatusCode, header};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use wharf_registry::package_records::{
    PackageChange, PackagePublish, PackageUpdate, PublishedFile, VersionBinding,
};
use wharf_registry::{BlobSource, RequestCtx};
use wharf_types::{Digest, ErrorCode, Format, RepoName};

use crate::publish::{self, PublishError, PublishMeta};
use crate::{CargoError, CargoState, names};

type HandlerResult = Result<Response, CargoError>;

/// The login recorded as a crate's first owner until Wharf has users (the auth issue).
pub const ANONYMOUS: &str = "anonymous";

/// Largest owners request body.
const MAX_OWNERS_BODY: u64 = 64 * 1024;

fn json_response(status: StatusCode, value: serde_json::Value) -> Response {
    let body = value.to_string();
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, body.len())
        .body(Body::from(body))
        .unwrap_or_default()
}

fn too_large(message: String) -> CargoError {
    CargoError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::SizeInvalid,
        message,
    )
}

fn version_key(version: &str) -> Result<String, CargoError> {
    names::version_key(version)
        .map(|(_, key)| key)
        .map_err(CargoError::bad_request)
}

/// `PUT /cargo/<repo>/api/v1/crates/new`: checks the body and the `.crate` (nothing is stored
/// when a check fails), stores the `.crate` as a blob, then binds the version with its index
/// line. The same bytes again are a success; other bytes for a published version a 409.
///
/// The body is read whole, under `http.max_cargo_publish_bytes` (a declared length above it is
/// refused before any byte is read, so a client that sent `Expect: 100-continue` — cargo's
/// curl does for large bodies — never sends it), and the `.crate` is checked in memory before
/// it is stored: a refused archive never reaches the blob store or a peer.
pub async fn publish(
    state: &CargoState,
    ctx: &RequestCtx,
    repo: &RepoName,
    request: Request,
) -> HandlerResult {
    let limit = state.max_publish_bytes;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let over = || {
        too_large(format!(
            "the publish request is larger than {limit} bytes (limit \
             http.max_cargo_publish_bytes)"
        ))
    };
    if declared.is_some_and(|len| len > limit) {
        return Err(over());
    }
    let Ok(_slot) = state.publishes.clone().try_acquire_owned() else {
        return Err(CargoError::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::TooManyRequests,
            format!(
                "more than {} publishes are being checked on this node; retry shortly",
                crate::MAX_PUBLISHES_IN_FLIGHT
            ),
        ));
    };
    let body = wharf_http::read_limited(request.into_body(), limit)
        .await
        .map_err(|e| match e {
            wharf_http::BodyError::TooLarge { .. } => over(),
            wharf_http::BodyError::Transport(m) => {
                CargoError::bad_request(format!("the publish body could not be read: {m}"))
            }
        })?;
    let (json, krate) = publish::split_body(&body).map_err(publish_error)?;
    let meta = PublishMeta::parse(json).map_err(publish_error)?;
    let version_key = version_key(&meta.vers)?;
    let krate = body.slice_ref(krate);
    let max_unpacked = state.max_unpacked_bytes;
    let (checked, cksum) = {
        let (krate, name, vers) = (krate.clone(), meta.name.clone(), meta.vers.clone());
        tokio::task::spawn_blocking(move || {
            let checked = publish::check_crate(&krate, &name, &vers, max_unpacked);
            (checked, Sha256::digest(&krate))
        })
        .await
        .map_err(|e| {
            CargoError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal,
                format!("the .crate check stopped: {e}"),
            )
        })?
    };
    checked.map_err(publish_error)?;
    let digest = Digest::from_sha256_bytes(&cksum.into());
    let line = meta.index_line(digest.hex());
    let metadata = serde_json::to_value(&line).map_err(|e| {
        CargoError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            e.to_string(),
        )
    })?;
    let record = state
        .registry
        .repo_for_write(ctx, repo, Format::Cargo)
        .await?;
    let size = krate.len() as u64;
    let stored = state
        .registry
        .store_blob(
            &record.settings,
            BlobSource::<futures::stream::Empty<std::io::Result<Bytes>>>::Bytes(krate),
            Some(&digest),
            Some(size),
        )
        .await?;
    let publish = PackagePublish {
        repo: repo.clone(),
        format: Format::Cargo,
        package: names::crate_key(&meta.name),
        name: meta.name.clone(),
        version_key,
        version: meta.vers.clone(),
        files: vec![PublishedFile {
            filename: names::crate_filename(&meta.name, &meta.vers),
            digest: stored.info.digest,
            size: stored.info.size,
            chunk_root: stored.info.chunk_root,
            facts: serde_json::Value::Null,
        }],
        holder: stored.holder,
        metadata,
        binding: VersionBinding::Whole,
        dist_tags: Default::default(),
        owner: Some(ANONYMOUS.to_string()),
        exact_name: true,
    };
    state.registry.publish_package(ctx, publish).await?;
    tracing::info!(name = %meta.name, version = %meta.vers, "published");
    Ok(json_response(
        StatusCode::OK,
        serde_json::json!({ "warnings": { "invalid_categories": [], "invalid_badges": [], "other": [] } }),
    ))
}

fn publish_error(e: PublishError) -> CargoError {
    match e {
        PublishError::TooLarge(m) => too_large(m),
        PublishError::Malformed(m) | PublishError::BadCrate(m) => CargoError::bad_request(m),
    }
}

/// `GET /cargo/<repo>/api/v1/crates/<name>/<version>/download`: the `.crate` (yanked
/// versions too), never compressed again.
pub async fn download(
    state: &CargoState,
    repo: &RepoName,
    name: &str,
    version: &str,
    head: bool,
) -> HandlerResult {
    let key = version_key(version)?;
    let not_found = || {
        CargoError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            format!("{name} {version} is not in {repo}"),
        )
    };
    let record = state
        .registry
        .package_version(repo, &names::crate_key(name), &key)
        .await?
        .ok_or_else(not_found)?;
    crate::index::ensure_cargo_repo(state, repo).await?;
    let (_, file) = record.files.iter().next().ok_or_else(not_found)?;
    let builder = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/gzip")
        .header(header::CONTENT_LENGTH, file.size)
        .header(header::ETAG, format!("\"{}\"", file.digest.hex()));
    if head {
        return Ok(builder.body(Body::empty()).unwrap_or_default());
    }
    let reader = state.registry.read_blob(&file.digest, None).await?;
    Ok(builder
        .body(Body::from_stream(reader.stream))
        .unwrap_or_default())
}

/// `DELETE …/yank` and `PUT …/unyank`: only the version's `yanked` flag changes.
pub async fn yank(
    state: &CargoState,
    ctx: &RequestCtx,
    repo: &RepoName,
    name: &str,
    version: &str,
    yanked: bool,
) -> HandlerResult {
    let key = version_key(version)?;
    let update = PackageUpdate {
        repo: repo.clone(),
        format: Format::Cargo,
        package: names::crate_key(name),
        expected_revision: None,
        changes: vec![PackageChange::Yank {
            version: key,
            yanked,
            reason: None,
        }],
    };
    state.registry.update_package(ctx, update).await?;
    Ok(json_response(
        StatusCode::OK,
        serde_json::json!({ "ok": true }),
    ))
}

#[derive(Deserialize)]
struct OwnersBody {
    users: Vec<String>,
}

/// `GET …/owners`: `{"users":[{"id","login","name"}]}`.
pub async fn list_owners(state: &CargoState, repo: &RepoName, name: &str) -> HandlerResult {
    let (record, _) = state
        .registry
        .package(repo, &names::crate_key(name))
        .await?
        .ok_or_else(|| {
            CargoError::new(
                StatusCode::NOT_FOUND,
                ErrorCode::NotFound,
                format!("crate {name} is not in {repo}"),
            )
        })?;
    crate::index::ensure_cargo_repo(state, repo).await?;
    let users: Vec<_> = record
        .owners
        .iter()
        .enumerate()
        .map(|(i, login)| serde_json::json!({ "id": i + 1, "login": login, "name": login }))
        .collect();
    Ok(json_response(
        StatusCode::OK,
        serde_json::json!({ "users": users }),
    ))
}

/// `PUT …/owners` (add) and `DELETE …/owners` (remove), body `{"users":["login",…]}`, all or
/// nothing. The last owner cannot be removed.
pub async fn change_owners(
    state: &CargoState,
    ctx: &RequestCtx,
    repo: &RepoName,
    name: &str,
    add: bool,
    request: Request,
) -> HandlerResult {
    let body = wharf_http::read_limited(request.into_body(), MAX_OWNERS_BODY)
        .await
        .map_err(|e| match e {
            wharf_http::BodyError::TooLarge { limit } => {
                too_large(format!("an owners request is at most {limit} bytes"))
            }
            wharf_http::BodyError::Transport(m) => CargoError::bad_request(m),
        })?;
    let OwnersBody { users } = serde_json::from_slice(&body).map_err(|e| {
        CargoError::bad_request(format!("expected {{\"users\":[\"login\",...]}}: {e}"))
    })?;
    if users.is_empty() {
        return Err(CargoError::bad_request("no users named"));
    }
    if let Some(bad) = users
        .iter()
        .find(|u| u.is_empty() || u.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        return Err(CargoError::bad_request(format!(
            "{bad:?} is not a valid login"
        )));
    }
    let changes = users
        .iter()
        .map(|login| {
            let login = login.clone();
            if add {
                PackageChange::AddOwner { login }
            } else {
                PackageChange::RemoveOwner { login }
            }
        })
        .collect();
    let update = PackageUpdate {
        repo: repo.clone(),
        format: Format::Cargo,
        package: names::crate_key(name),
        expected_revision: None,
        changes,
    };
    state.registry.update_package(ctx, update).await?;
    let msg = format!(
        "user(s) {} {} owner(s) of crate {name}",
        users.join(", "),
        if add {
            "have been added as"
        } else {
            "have been removed as"
        }
    );
    Ok(json_response(
        StatusCode::OK,
        serde_json::json!({ "ok": true, "msg": msg }),
    ))
}
