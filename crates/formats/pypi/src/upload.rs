//! The upload API twine and `uv publish` use: `POST /pypi/<repo>/` with `multipart/form-data`,
//! one file (`content`) per request plus form fields (`:action=file_upload`, `name`,
//! `version`, `filetype`, `sha256_digest`, `blake2_256_digest`, `md5_digest`, ...).
//!
//! The file streams into the blob store while its md5 and blake2b-256 are computed beside the
//! store's sha256; a digest declared before the file that does not match fails the stream, so
//! nothing is stored. Then: name and version must agree across the form, the filename and the
//! core metadata read from the archive (which is read all the way through, so a corrupt one is
//! refused), and only then one `PublishPackage` binds the file and its core metadata file.
//! Identical re-upload → 200; other bytes under an existing filename → 409
//! `File already exists ('<file>')` (decided by `apply`).

use std::collections::BTreeMap;
use std::io::{self, Read, Seek, SeekFrom};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use blake2::Digest as _;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use http::{StatusCode, header};
use wharf_meta::packages::{PackagePublish, PublishedFile, VersionBinding};
use wharf_registry::{BlobSource, Registry, RequestCtx, StoredBlob};
use wharf_types::{Digest, ErrorCode, Format, RepoName};

use crate::archive;
use crate::facts::FileFacts;
use crate::metadata::CoreMetadata;
use crate::names::{DistFilename, DistKind, Version, normalize_name, parse_filename, valid_name};
use crate::router::metadata_filename;
use crate::{PypiError, PypiState};

/// Largest form field other than the file (a description can be long).
const MAX_FIELD_BYTES: u64 = 4 * 1024 * 1024;
/// At most this many form fields besides the file (twine sends about 25, with classifiers).
const MAX_FIELDS: usize = 512;
/// At most this many bytes of them, in total (descriptions can be long).
const MAX_FIELDS_BYTES: usize = 4 * 1024 * 1024;
/// The longest `Requires-Python` kept (pip filters candidates on it).
const MAX_REQUIRES_PYTHON: usize = 1024;
/// The longest summary kept (Warehouse's limit).
const MAX_SUMMARY: usize = 512;
/// Room for the form fields around the file in the whole body.
const FORM_SLACK: u64 = 16 * 1024 * 1024;

type Blake2b256 = blake2::Blake2b<blake2::digest::consts::U32>;

fn bad(message: impl Into<String>) -> PypiError {
    PypiError::bad_request(ErrorCode::BadRequest, message)
}

fn too_large(limit: u64) -> PypiError {
    PypiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::SizeInvalid,
        format!("File too large: the limit for uploads to this index is {limit} bytes"),
    )
}

fn multipart_error(e: &multer::Error, limit: u64) -> PypiError {
    match e {
        multer::Error::FieldSizeExceeded { .. } | multer::Error::StreamSizeExceeded { .. } => {
            too_large(limit)
        }
        other => bad(format!("Invalid multipart/form-data body: {other}")),
    }
}

/// Digests the file is checked against; sent as lowercase hex.
#[derive(Debug, Default, Clone)]
struct Declared {
    sha256: Option<String>,
    blake2_256: Option<String>,
    md5: Option<String>,
}

impl Declared {
    fn from_fields(fields: &BTreeMap<String, Vec<String>>) -> Declared {
        let get = |k: &str| {
            first(fields, k)
                .map(|v| v.trim().to_ascii_lowercase())
                .filter(|v| !v.is_empty())
        };
        Declared {
            sha256: get("sha256_digest"),
            blake2_256: get("blake2_256_digest"),
            md5: get("md5_digest"),
        }
    }

    /// The first declared digest that `computed` contradicts.
    fn mismatch(&self, computed: &Computed) -> Option<&'static str> {
        let differs =
            |declared: &Option<String>, got: &str| declared.as_ref().is_some_and(|d| d != got);
        if differs(&self.blake2_256, &computed.blake2_256) {
            return Some("blake2_256_digest");
        }
        if differs(&self.md5, &computed.md5) {
            return Some("md5_digest");
        }
        if let Some(sha) = &computed.sha256
            && differs(&self.sha256, sha)
        {
            return Some("sha256_digest");
        }
        None
    }
}

/// Digests computed while the file streamed through.
#[derive(Debug, Default, Clone)]
struct Computed {
    blake2_256: String,
    md5: String,
    /// Known once the blob store has it.
    sha256: Option<String>,
}

fn digest_mismatch(field: &str) -> PypiError {
    PypiError::bad_request(
        ErrorCode::DigestInvalid,
        format!("The {field} does not match the uploaded file; nothing was stored"),
    )
}

/// What the hashing stream saw.
#[derive(Default)]
struct Watch {
    computed: Option<Computed>,
    fault: Option<PypiError>,
}

/// The file part, hashed on its way to the blob store. A declared digest that does not match
/// turns the end of the stream into an error, so the store commits nothing.
struct Hashing {
    inner: Pin<Box<multer::Field<'static>>>,
    blake2: Blake2b256,
    md5: md5::Md5,
    declared: Declared,
    watch: Arc<Mutex<Watch>>,
    limit: u64,
    done: bool,
}

impl Hashing {
    fn fault(&self, error: PypiError) -> io::Error {
        let message = error.message.clone();
        if let Ok(mut w) = self.watch.lock() {
            w.fault.get_or_insert(error);
        }
        io::Error::other(message)
    }
}

impl Stream for Hashing {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.inner.as_mut().poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) => {
                self.blake2.update(&chunk);
                self.md5.update(&chunk);
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.done = true;
                let error = multipart_error(&e, self.limit);
                Poll::Ready(Some(Err(self.fault(error))))
            }
            Poll::Ready(None) => {
                self.done = true;
                let computed = Computed {
                    blake2_256: hex::encode(self.blake2.clone().finalize()),
                    md5: hex::encode(self.md5.clone().finalize()),
                    sha256: None,
                };
                let mismatch = self.declared.mismatch(&computed);
                if let Ok(mut w) = self.watch.lock() {
                    w.computed = Some(computed);
                }
                match mismatch {
                    Some(field) => Poll::Ready(Some(Err(self.fault(digest_mismatch(field))))),
                    None => Poll::Ready(None),
                }
            }
        }
    }
}

fn first<'a>(fields: &'a BTreeMap<String, Vec<String>>, key: &str) -> Option<&'a str> {
    fields.get(key).and_then(|v| v.first()).map(String::as_str)
}

/// The stored file of an upload.
struct Received {
    filename: String,
    dist: DistFilename,
    blob: StoredBlob,
    computed: Computed,
}

/// `POST /pypi/<repo>/`
pub async fn upload(
    state: &PypiState,
    ctx: &RequestCtx,
    repo: &RepoName,
    request: Request,
) -> Result<Response, PypiError> {
    let limit = state.max_upload_bytes;
    let headers = request.headers();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let boundary = multer::parse_boundary(content_type).map_err(|_| {
        bad("Invalid request: uploads are multipart/form-data with the file in a part named content")
    })?;
    let declared_length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared_length.is_some_and(|n| n > limit.saturating_add(FORM_SLACK)) {
        return Err(too_large(limit));
    }
    let record = state
        .registry
        .repo_for_write(ctx, repo, Format::Pypi)
        .await?;
    let constraints = multer::Constraints::new().size_limit(
        multer::SizeLimit::new()
            .whole_stream(limit.saturating_add(FORM_SLACK))
            .per_field(MAX_FIELD_BYTES)
            .for_field("content", limit),
    );
    let body = wharf_http::stream_body(request.into_body());
    let mut form = multer::Multipart::with_constraints(body, boundary, constraints);
    let mut fields: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let (mut field_count, mut field_bytes) = (0usize, 0usize);
    let mut received: Option<Received> = None;
    loop {
        let field = match form.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(e) => return Err(multipart_error(&e, limit)),
        };
        let name = field.name().unwrap_or_default().to_string();
        if name != "content" {
            let text = field.text().await.map_err(|e| multipart_error(&e, limit))?;
            field_bytes += name.len() + text.len();
            field_count += 1;
            if field_count > MAX_FIELDS || field_bytes > MAX_FIELDS_BYTES {
                return Err(bad(format!(
                    "Invalid request: more than {MAX_FIELDS} form fields or {MAX_FIELDS_BYTES} bytes of them"
                )));
            }
            fields.entry(name).or_default().push(text);
            continue;
        }
        if received.is_some() {
            return Err(bad("Invalid request: one file per upload"));
        }
        let filename = field
            .file_name()
            .ok_or_else(|| bad("Invalid request: the content part has no filename"))?
            .to_string();
        let dist = parse_filename(&filename).map_err(|e| bad(e.to_string()))?;
        let declared = Declared::from_fields(&fields);
        let expected = match &declared.sha256 {
            Some(hex) => Some(format!("sha256:{hex}").parse::<Digest>().map_err(|_| {
                PypiError::bad_request(
                    ErrorCode::DigestInvalid,
                    format!("sha256_digest must be 64 hex characters, got {hex:?}"),
                )
            })?),
            None => None,
        };
        let watch = Arc::new(Mutex::new(Watch::default()));
        let stream = Hashing {
            inner: Box::pin(field),
            blake2: Blake2b256::new(),
            md5: md5::Md5::new(),
            declared,
            watch: watch.clone(),
            limit,
            done: false,
        };
        // Stored on this node only: the file is checked before any copy leaves it.
        let stored = state
            .registry
            .store_blob_here(
                &record.settings,
                BlobSource::Stream(Box::pin(stream)),
                expected.as_ref(),
                None,
            )
            .await;
        let mut watched = watch
            .lock()
            .map(|mut w| (w.fault.take(), w.computed.take()))
            .unwrap_or_default();
        let blob = match stored {
            Ok(blob) => blob,
            Err(e) => return Err(watched.0.take().unwrap_or_else(|| e.into())),
        };
        let mut computed = watched.1.take().unwrap_or_default();
        computed.sha256 = Some(blob.info.digest.hex().to_string());
        received = Some(Received {
            filename,
            dist,
            blob,
            computed,
        });
    }
    let received = received
        .ok_or_else(|| bad("Invalid request: upload has no file (a part named content)"))?;
    let (project, facts, metadata) = check(state, repo, &fields, &received).await?;
    state
        .registry
        .copy_to_peers(&record.settings, &received.blob)
        .await?;
    publish(
        state,
        ctx,
        repo,
        &record.settings,
        project,
        facts,
        metadata,
        received,
    )
    .await
}

/// The checks after the file is stored and before anything is bound.
async fn check(
    state: &PypiState,
    repo: &RepoName,
    fields: &BTreeMap<String, Vec<String>>,
    received: &Received,
) -> Result<(Project, FileFacts, (CoreMetadata, Vec<u8>)), PypiError> {
    if let Some(action) = first(fields, ":action")
        && action != "file_upload"
    {
        return Err(bad(format!(
            "Unsupported :action {action:?}; only file_upload is"
        )));
    }
    if let Some(field) = Declared::from_fields(fields).mismatch(&received.computed) {
        return Err(digest_mismatch(field));
    }
    let name =
        first(fields, "name").ok_or_else(|| bad("Invalid request: the name field is missing"))?;
    let version = first(fields, "version")
        .ok_or_else(|| bad("Invalid request: the version field is missing"))?;
    if !valid_name(name) {
        return Err(PypiError::bad_request(
            ErrorCode::NameInvalid,
            format!("Invalid value for name: {name:?} is not a valid project name"),
        ));
    }
    let parsed =
        Version::parse(version).map_err(|e| bad(format!("Invalid value for version: {e}")))?;
    let dist = &received.dist;
    let file = &received.filename;
    if normalize_name(&dist.name) != normalize_name(name) {
        return Err(bad(format!(
            "Start filename for project {name:?} with {:?}: {file} names another project",
            name.replace('-', "_")
        )));
    }
    let file_version = Version::parse(&dist.version.replace('_', "-"))
        .map_err(|e| bad(format!("Invalid filename {file:?}: {e}")))?;
    if file_version.to_string() != parsed.to_string() {
        return Err(bad(format!(
            "Version in filename {file} ({}) does not match the version field ({version})",
            dist.version
        )));
    }
    // One spelling per file: a filename binds once, so another spelling of the same name or
    // version (`Tiny-1.0.tar.gz` next to `tiny-1.0.tar.gz`) could otherwise add a second,
    // different file that installers treat as the same one (PEP 427 / 625 normal forms).
    let canonical_name = normalize_name(name).replace('-', "_");
    if dist.name != canonical_name || dist.version != parsed.to_string() {
        return Err(bad(format!(
            "Filename {file} is not normalized: start it with {canonical_name}-{parsed}"
        )));
    }
    if let Some(filetype) = first(fields, "filetype")
        && filetype != dist.kind.filetype()
    {
        return Err(bad(format!(
            "Invalid value for filetype: {file} is a {}, not a {filetype}",
            dist.kind.filetype()
        )));
    }
    let bytes = read_core_metadata(&state.registry, &received.blob, dist, name).await?;
    let metadata = CoreMetadata::parse(&bytes)
        .map_err(|e| bad(format!("Invalid distribution file {file}: {e}")))?;
    if normalize_name(&metadata.name) != normalize_name(name) {
        return Err(bad(format!(
            "The name in the core metadata of {file} ({}) does not match the name field ({name})",
            metadata.name
        )));
    }
    let meta_version = Version::parse(&metadata.version).map_err(|e| {
        bad(format!(
            "Invalid distribution file {file}: its core metadata has {e}"
        ))
    })?;
    if meta_version.to_string() != parsed.to_string() {
        return Err(bad(format!(
            "The version in the core metadata of {file} ({}) does not match the version field ({version})",
            metadata.version
        )));
    }
    // What the index says must be what the core metadata it serves says: pip filters on it.
    let requires_python = metadata.requires_python.clone();
    if requires_python
        .as_ref()
        .is_some_and(|r| r.len() > MAX_REQUIRES_PYTHON)
    {
        return Err(bad(format!(
            "Requires-Python of {file} is longer than {MAX_REQUIRES_PYTHON} bytes"
        )));
    }
    let facts = FileFacts {
        requires_python,
        filetype: dist.kind.filetype().to_string(),
        metadata_version: metadata.metadata_version.clone(),
        core_metadata_sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes)),
    };
    let key = normalize_name(name);
    let version_key = parsed.release_key();
    // A release is spelled one way (its files too), and has at most one sdist.
    if let Some(release) = state
        .registry
        .package_version(repo, &key, &version_key)
        .await?
    {
        let spelled = Version::parse(&release.version).map(|v| v.to_string());
        if spelled.as_deref().is_ok_and(|s| s != parsed.to_string()) {
            return Err(bad(format!(
                "Release {} of {name} exists; upload its files as version {}",
                release.version, release.version
            )));
        }
        let other_sdist = release
            .files
            .keys()
            .any(|f| f.ends_with(".tar.gz") && f != file);
        if dist.kind == DistKind::Sdist && other_sdist {
            return Err(bad("Only one sdist may be uploaded per release."));
        }
        // Other bytes for a bound filename: refused before any copy leaves this node (apply
        // decides again for an upload racing this one).
        if release
            .files
            .get(file.as_str())
            .is_some_and(|bound| bound.digest != received.blob.info.digest)
        {
            let message = format!("File already exists ('{file}')");
            return Err(PypiError::new(
                StatusCode::CONFLICT,
                ErrorCode::Conflict,
                message,
            ));
        }
    }
    let project = Project {
        key,
        name: metadata.name.clone(),
        version_key,
        version: version.trim().to_string(),
        summary: metadata
            .summary
            .clone()
            .or_else(|| first(fields, "summary").map(str::to_string))
            .map(|s| s.chars().take(MAX_SUMMARY).collect()),
    };
    Ok((project, facts, (metadata, bytes)))
}

/// The project and release an upload goes to.
struct Project {
    key: String,
    name: String,
    version_key: String,
    version: String,
    summary: Option<String>,
}

/// Reads the stored file through (on a blocking thread) and returns its core metadata.
async fn read_core_metadata(
    registry: &Registry,
    blob: &StoredBlob,
    dist: &DistFilename,
    project: &str,
) -> Result<Vec<u8>, PypiError> {
    let fault = Arc::new(Mutex::new(None));
    let reader = BlobFile {
        registry: registry.clone(),
        digest: blob.info.digest.clone(),
        size: blob.info.size,
        pos: 0,
        runtime: tokio::runtime::Handle::current(),
        fault: fault.clone(),
    };
    let kind = dist.kind;
    let project = project.to_string();
    let filename = dist.name.clone();
    tokio::task::spawn_blocking(move || {
        archive::core_metadata(
            io::BufReader::with_capacity(1 << 20, reader),
            kind,
            &project,
        )
    })
    .await
    .map_err(|e| {
        PypiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            format!("reading {filename}: {e}"),
        )
    })?
    .map_err(|e| {
        let ours = fault.lock().ok().and_then(|mut slot| slot.take());
        ours.unwrap_or_else(|| bad(format!("Invalid distribution file: {e}")))
    })
}

/// Binds the file (and its core metadata file, when PEP 658 lets it be served).
#[allow(clippy::too_many_arguments)]
async fn publish(
    state: &PypiState,
    ctx: &RequestCtx,
    repo: &RepoName,
    settings: &wharf_meta::RepoSettings,
    project: Project,
    facts: FileFacts,
    (metadata, bytes): (CoreMetadata, Vec<u8>),
    received: Received,
) -> Result<Response, PypiError> {
    let mut files = vec![PublishedFile {
        filename: received.filename.clone(),
        digest: received.blob.info.digest.clone(),
        size: received.blob.info.size,
        chunk_root: received.blob.info.chunk_root.clone(),
        facts: facts.to_value(),
    }];
    if metadata.servable(received.dist.kind) {
        let stored = state
            .registry
            .store_blob(
                settings,
                BlobSource::<futures::stream::Empty<io::Result<Bytes>>>::Bytes(Bytes::from(bytes)),
                None,
                None,
            )
            .await?;
        files.push(PublishedFile {
            filename: metadata_filename(&received.filename),
            digest: stored.info.digest,
            size: stored.info.size,
            chunk_root: stored.info.chunk_root,
            facts: serde_json::Value::Null,
        });
    }
    let outcome = state
        .registry
        .publish_package(
            ctx,
            PackagePublish {
                repo: repo.clone(),
                format: Format::Pypi,
                package: project.key,
                name: project.name,
                version_key: project.version_key,
                version: project.version,
                files,
                holder: received.blob.holder,
                metadata: serde_json::json!({ "summary": project.summary }),
                binding: VersionBinding::AddFiles,
                dist_tags: BTreeMap::new(),
                owner: None,
                exact_name: false,
            },
        )
        .await?;
    tracing::info!(file = %received.filename, ?outcome, "uploaded");
    let body = "OK\n";
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(header::CONTENT_LENGTH, body.len())
        .body(Body::from(body))
        .unwrap_or_default())
}

/// A stored blob as `Read + Seek`, for the archive readers on a blocking thread: each read
/// is a chunk-verified range read of the blob.
struct BlobFile {
    registry: Registry,
    digest: Digest,
    size: u64,
    pos: u64,
    runtime: tokio::runtime::Handle,
    /// A failure of this node's own read (busy, damaged copy, disk), kept apart from what is
    /// wrong with the archive: it is the server's fault, not the upload's.
    fault: Arc<Mutex<Option<PypiError>>>,
}

impl Read for BlobFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let end = self.size.min(self.pos + buf.len() as u64) - 1;
        let (registry, digest, start) = (&self.registry, &self.digest, self.pos);
        let fault = self.fault.clone();
        let n = self.runtime.block_on(async {
            let mut reader = match registry.read_blob(digest, Some((start, end))).await {
                Ok(reader) => reader,
                Err(e) => {
                    let message = e.to_string();
                    if let Ok(mut slot) = fault.lock() {
                        slot.get_or_insert(PypiError::from(e));
                    }
                    return Err(io::Error::other(message));
                }
            };
            let mut n = 0usize;
            while let Some(chunk) = reader.stream.next().await {
                let chunk = chunk.inspect_err(|e| {
                    if let Ok(mut slot) = fault.lock() {
                        slot.get_or_insert(PypiError::new(
                            StatusCode::SERVICE_UNAVAILABLE,
                            ErrorCode::Internal,
                            format!("reading the stored upload back failed: {e}; retry"),
                        ));
                    }
                })?;
                let to = buf
                    .get_mut(n..n + chunk.len())
                    .ok_or_else(|| io::Error::other("blob read returned more than asked"))?;
                to.copy_from_slice(&chunk);
                n += chunk.len();
            }
            io::Result::Ok(n)
        })?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "blob read returned nothing",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for BlobFile {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = target
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_digests_are_checked() {
        let computed = Computed {
            blake2_256: "aa".into(),
            md5: "bb".into(),
            sha256: Some("cc".into()),
        };
        let mut fields = BTreeMap::new();
        assert_eq!(Declared::from_fields(&fields).mismatch(&computed), None);
        fields.insert("md5_digest".to_string(), vec!["BB".to_string()]);
        fields.insert("sha256_digest".to_string(), vec!["cc".to_string()]);
        assert_eq!(Declared::from_fields(&fields).mismatch(&computed), None);
        fields.insert("blake2_256_digest".to_string(), vec!["ab".to_string()]);
        assert_eq!(
            Declared::from_fields(&fields).mismatch(&computed),
            Some("blake2_256_digest")
        );
        fields.insert("blake2_256_digest".to_string(), vec![String::new()]);
        fields.insert("sha256_digest".to_string(), vec!["cd".to_string()]);
        assert_eq!(
            Declared::from_fields(&fields).mismatch(&computed),
            Some("sha256_digest")
        );
    }
}
