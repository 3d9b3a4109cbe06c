//! The npm endpoints, one method each on [`Handler`] (the request's state, context, repository
//! and base URL).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, StatusCode, header};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use wharf_http::range::{FileAnswer, file_answer};
use wharf_registry::package_records::{
    PackageChange, PackagePublish, PackageUpdate, PublishedFile, VersionBinding, VersionRecord,
};
use wharf_registry::{BlobSource, Outcome, RegistryError, RequestCtx};
use wharf_types::{ErrorCode, Format, RepoName};

use crate::packument::{self, Representation};
use crate::publish::{self, check_publish, has_attachments, metadata_changes, revision_of};
use crate::route::{tarball_name, version_of_tarball};
use wharf_http::document::Rendered;

use crate::{DocumentKey, NpmError, NpmState};

type HandlerResult = Result<Response, NpmError>;

/// A JSON response.
pub fn json(status: StatusCode, value: &Value) -> Response {
    let body = value.to_string();
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, body.len())
        .body(Body::from(body))
        .unwrap_or_default()
}

fn ok(status: StatusCode) -> HandlerResult {
    Ok(json(status, &json!({ "ok": true })))
}

/// A registry error of a metadata change: a stale `_rev` is npm's 409, not a publish's 403.
fn change_error(e: RegistryError) -> NpmError {
    let conflict = e.code() == ErrorCode::Conflict;
    let mut error = NpmError::from(e);
    if conflict {
        error.status = StatusCode::CONFLICT;
    }
    error
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// One request's view: shared state, who asks, which repository, and the base URL.
pub struct Handler<'a> {
    pub state: &'a NpmState,
    pub ctx: &'a RequestCtx,
    pub repo: &'a RepoName,
    pub base: &'a str,
}

impl Handler<'_> {
    fn tarball_url(&self, name: &str, file: &str) -> String {
        format!("{}/npm/{}/{name}/-/{file}", self.base, self.repo)
    }

    fn not_found(&self, name: &str) -> NpmError {
        NpmError::not_found(format!("{name} is not in {}", self.repo))
    }

    /// Reads go only to npm repositories: another format's records mean nothing here.
    async fn ensure_npm_repo(&self) -> Result<(), NpmError> {
        self.state
            .registry
            .repo_for_read(self.repo, Format::Npm)
            .await?;
        Ok(())
    }

    /// `GET /<name>`: the packument the `Accept` header asks for.
    pub async fn packument(&self, name: &str, headers: &HeaderMap, head: bool) -> HandlerResult {
        let representation = Representation::from_accept(header_str(headers, header::ACCEPT));
        self.ensure_npm_repo().await?;
        // The record alone tells the revision; the versions are read only to render.
        let Some(record) = self.state.registry.package_record(self.repo, name).await? else {
            return Err(self.not_found(name));
        };
        let key = |revision| -> DocumentKey {
            (
                self.repo.to_string(),
                name.to_string(),
                revision,
                representation,
                self.base.to_string(),
            )
        };
        let rendered = match self.state.documents.get(&key(record.revision)) {
            Some(rendered) => rendered,
            None => {
                let (package, versions) = self
                    .state
                    .registry
                    .package_now(self.repo, name)?
                    .ok_or_else(|| self.not_found(name))?;
                let doc = packument::render(
                    self.repo.as_str(),
                    &package,
                    &versions,
                    representation,
                    |file| self.tarball_url(name, file),
                )
                .ok_or_else(|| self.not_found(name))?;
                let rendered = Arc::new(Rendered::new(doc.to_string()));
                self.state
                    .documents
                    .insert(key(package.revision), rendered.clone());
                rendered
            }
        };
        Ok(rendered.respond(headers, representation.content_type(), head))
    }

    /// `GET /<name>/<version or dist-tag>`: one version's full document.
    pub async fn version(&self, name: &str, spec: &str) -> HandlerResult {
        self.ensure_npm_repo().await?;
        let Some(package) = self.state.registry.package_record(self.repo, name).await? else {
            return Err(self.not_found(name));
        };
        let wanted = package.dist_tags.get(spec).map_or(spec, String::as_str);
        // A version this node has not seen yet runs the read barrier: never a false 404.
        let record = self
            .state
            .registry
            .package_version(self.repo, name, wanted)
            .await?
            .ok_or_else(|| NpmError::not_found(format!("{name}@{spec} is not in {}", self.repo)))?;
        let file = record.files.keys().next().cloned().unwrap_or_default();
        let doc = packument::version_doc(
            &record,
            &self.tarball_url(name, &file),
            Representation::Full,
        );
        Ok(json(StatusCode::OK, &doc))
    }

    /// `PUT /<name>` (and `/<name>/-rev/<rev>`): a publish when the body carries a tarball,
    /// else a metadata change.
    pub async fn put(&self, name: &str, rev: Option<String>, request: Request) -> HandlerResult {
        let body = wharf_http::read_limited(request.into_body(), self.state.max_publish_bytes)
            .await
            .map_err(|e| match e {
                wharf_http::BodyError::TooLarge { limit } => NpmError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the publish is larger than this registry's limit of {limit} bytes (http.max_npm_publish_bytes)"),
                ),
                wharf_http::BodyError::Transport(m) => NpmError::bad_request(m),
            })?;
        let doc: Value = serde_json::from_slice(&body)
            .map_err(|e| NpmError::bad_request(format!("the body is not JSON: {e}")))?;
        drop(body);
        if has_attachments(&doc) {
            self.publish(name, doc).await
        } else {
            self.change_metadata(name, doc, rev).await
        }
    }

    async fn publish(&self, name: &str, doc: Value) -> HandlerResult {
        // Each publish holds its body, the decoded tarball and the metadata in memory.
        let Ok(_slot) = self.state.publishes.clone().try_acquire_owned() else {
            return Err(NpmError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "more than {} publishes are being checked on this node; retry shortly",
                    crate::PUBLISHES_IN_FLIGHT
                ),
            ));
        };
        let record = self
            .state
            .registry
            .repo_for_write(self.ctx, self.repo, Format::Npm)
            .await?;
        let owned_name = name.to_string();
        // Base64, gunzip and hashing of up to the body limit: off the async threads.
        let checked = tokio_blocking(move || check_publish(&owned_name, &doc))
            .await?
            .map_err(NpmError::bad_request)?;
        // A version already bound to other bytes is refused before anything is stored (apply
        // decides again, for a publish racing this one).
        let digest =
            wharf_types::Digest::from_sha256_bytes(&Sha256::digest(&checked.tarball).into());
        if let Some(existing) = self
            .state
            .registry
            .package_version(self.repo, name, &checked.version)
            .await?
            && existing.files.get(&checked.filename).map(|f| &f.digest) != Some(&digest)
        {
            return Err(NpmError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "You cannot publish over the previously published versions: {}.",
                    checked.version
                ),
            ));
        }
        let stored = self
            .state
            .registry
            .store_blob(
                &record.settings,
                BlobSource::<futures::stream::Empty<std::io::Result<Bytes>>>::Bytes(Bytes::from(
                    checked.tarball,
                )),
                None,
                None,
            )
            .await?;
        let publish = PackagePublish {
            repo: self.repo.clone(),
            format: Format::Npm,
            package: name.to_string(),
            name: name.to_string(),
            version_key: checked.version.clone(),
            version: checked.version.clone(),
            files: vec![PublishedFile {
                filename: checked.filename,
                digest: stored.info.digest.clone(),
                size: stored.info.size,
                chunk_root: stored.info.chunk_root.clone(),
                facts: checked.facts,
            }],
            holder: stored.holder,
            metadata: checked.metadata,
            binding: VersionBinding::Whole,
            dist_tags: checked.dist_tags,
            owner: None,
            exact_name: false,
        };
        let outcome = self
            .state
            .registry
            .publish_package(self.ctx, publish)
            .await?;
        tracing::info!(
            package = name,
            version = checked.version,
            ?outcome,
            "published"
        );
        let status = match outcome {
            Outcome::Applied => StatusCode::CREATED,
            _ => StatusCode::OK,
        };
        Ok(json(
            status,
            &json!({ "ok": true, "id": name, "version": checked.version }),
        ))
    }

    /// The live versions of a package (by version) and its record.
    async fn live(
        &self,
        name: &str,
    ) -> Result<
        (
            wharf_registry::package_records::PackageRecord,
            BTreeMap<String, VersionRecord>,
        ),
        NpmError,
    > {
        self.ensure_npm_repo().await?;
        let Some((package, versions)) = self.state.registry.package(self.repo, name).await? else {
            return Err(self.not_found(name));
        };
        let live = versions.into_iter().filter(|(_, v)| v.is_live()).collect();
        Ok((package, live))
    }

    async fn change_metadata(&self, name: &str, doc: Value, rev: Option<String>) -> HandlerResult {
        let (package, live) = self.live(name).await?;
        let rev = rev.or_else(|| doc.get("_rev").and_then(Value::as_str).map(str::to_string));
        let expected = rev.as_deref().and_then(revision_of);
        let mut changes = metadata_changes(&doc, &live, &package.dist_tags, expected.is_some())
            .map_err(NpmError::bad_request)?;
        keep_a_latest(&mut changes, &live, &package.dist_tags);
        self.update(name, expected, changes).await
    }

    async fn update(
        &self,
        name: &str,
        expected_revision: Option<u64>,
        changes: Vec<PackageChange>,
    ) -> HandlerResult {
        if changes.is_empty() {
            return ok(StatusCode::OK);
        }
        let update = PackageUpdate {
            repo: self.repo.clone(),
            format: Format::Npm,
            package: name.to_string(),
            expected_revision,
            changes,
        };
        self.state
            .registry
            .update_package(self.ctx, update)
            .await
            .map_err(change_error)?;
        ok(StatusCode::CREATED)
    }

    /// `DELETE /<name>/-rev/<rev>`: unpublish every version.
    pub async fn unpublish_all(&self, name: &str, rev: &str) -> HandlerResult {
        let (_, live) = self.live(name).await?;
        let changes = live
            .keys()
            .map(|v| PackageChange::Unpublish { version: v.clone() })
            .collect();
        self.update(name, revision_of(rev), changes).await
    }

    /// `DELETE /<name>/-/<file>/-rev/<rev>`: what npm sends after the document lost the version;
    /// a tarball of a live version is unpublished with it.
    pub async fn delete_tarball(&self, name: &str, file: &str) -> HandlerResult {
        let Some(version) = version_of_tarball(name, file) else {
            return Err(NpmError::not_found(format!(
                "{file} is not a tarball of {name}"
            )));
        };
        let (package, live) = self.live(name).await?;
        if !live.contains_key(version) {
            return ok(StatusCode::OK);
        }
        let mut changes = vec![PackageChange::Unpublish {
            version: version.to_string(),
        }];
        keep_a_latest(&mut changes, &live, &package.dist_tags);
        self.update(name, None, changes).await
    }

    /// `GET /<name>/-/<file>.tgz`: the tarball, whole or one range.
    pub async fn tarball(
        &self,
        name: &str,
        file: &str,
        headers: &HeaderMap,
        head: bool,
    ) -> HandlerResult {
        self.ensure_npm_repo().await?;
        let missing = || NpmError::not_found(format!("{file} of {name} is not in {}", self.repo));
        let version = version_of_tarball(name, file).ok_or_else(missing)?;
        let stored = self
            .state
            .registry
            .package_file(self.repo, name, version, &tarball_name(name, version))
            .await?
            .ok_or_else(missing)?;
        let etag = format!("\"{}\"", stored.digest.hex());
        let (builder, range) =
            match file_answer(headers, stored.size, &etag, "application/octet-stream", &[]) {
                FileAnswer::Done(response) => return Ok(response),
                FileAnswer::Read { head, range } => (head, range),
            };
        if head {
            return Ok(builder.body(Body::empty()).unwrap_or_default());
        }
        let reader = self.state.registry.read_blob(&stored.digest, range).await?;
        Ok(builder
            .body(Body::from_stream(reader.stream))
            .unwrap_or_default())
    }

    /// `GET /-/package/<name>/dist-tags`
    pub async fn dist_tags(&self, name: &str) -> HandlerResult {
        let (package, _) = self.live(name).await?;
        let tags: serde_json::Map<String, Value> = package
            .dist_tags
            .into_iter()
            .map(|(t, v)| (t, Value::String(v)))
            .collect();
        Ok(json(StatusCode::OK, &Value::Object(tags)))
    }

    /// `PUT|DELETE /-/package/<name>/dist-tags/<tag>` (PUT body: the version as a JSON string).
    pub async fn set_dist_tag(
        &self,
        name: &str,
        tag: &str,
        delete: bool,
        request: Request,
    ) -> HandlerResult {
        publish::check_tag(tag).map_err(NpmError::bad_request)?;
        let version = if delete {
            if tag == "latest" {
                return Err(NpmError::bad_request(
                    "the latest dist-tag cannot be removed",
                ));
            }
            None
        } else {
            let body = wharf_http::read_limited(request.into_body(), 64 * 1024)
                .await
                .map_err(|_| NpmError::bad_request("the body must be a short JSON string"))?;
            let version: String = serde_json::from_slice(&body).map_err(|_| {
                NpmError::bad_request(
                    "the body must be the version as a JSON string, e.g. \"1.0.0\"",
                )
            })?;
            Some(version)
        };
        let change = PackageChange::DistTag {
            tag: tag.to_string(),
            version,
        };
        self.update(name, None, vec![change]).await
    }
}

/// After unpublishing, `latest` must still name a live version: when the changes leave it
/// pointing nowhere, it moves to the highest remaining version.
fn keep_a_latest(
    changes: &mut Vec<PackageChange>,
    live: &BTreeMap<String, VersionRecord>,
    tags: &BTreeMap<String, String>,
) {
    let leaving: Vec<&str> = changes
        .iter()
        .filter_map(|c| match c {
            PackageChange::Unpublish { version } => Some(version.as_str()),
            _ => None,
        })
        .collect();
    if leaving.is_empty() {
        return;
    }
    let latest_set = changes
        .iter()
        .any(|c| matches!(c, PackageChange::DistTag { tag, version: Some(_) } if tag == "latest"));
    let latest_stays = tags
        .get("latest")
        .is_some_and(|v| !leaving.contains(&v.as_str()));
    if latest_set || latest_stays {
        return;
    }
    let remaining = live
        .keys()
        .map(String::as_str)
        .filter(|v| !leaving.contains(v));
    if let Some(highest) = packument::highest(remaining) {
        changes.push(PackageChange::DistTag {
            tag: "latest".into(),
            version: Some(highest),
        });
    }
}

/// Runs CPU-heavy work on the blocking pool.
async fn tokio_blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, NpmError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        NpmError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("checking the publish failed: {e}"),
        )
    })
}
