//! [`FsBlobStore`]: upload sessions and committed blobs under one root directory (layout in the
//! crate docs).

use std::collections::HashMap;
use std::error::Error as StdError;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use sha2::{Digest as _, Sha256};
use wharf_types::planted::{self, PlantedBug};
use wharf_types::{Digest, DigestAlgorithm, NodeId};

use crate::chunks::{self, ChunkHasher, ChunkList};
use crate::fsutil::{ensure_dir, remove_if_present, sync_blob_file, sync_dir, sync_file};
use crate::hash::{DigestHasher, hash_file};
use crate::read::verified_stream;
use crate::{BlobError, BlobInfo, BlobReader, CHUNK_SIZE, CorruptBlob};

/// Blobs up to this size are compared with a copy already in place before being placed again.
const INTACT_CHECK_MAX: u64 = 256 * 1024;

/// Bytes of request body gathered before one write + hash on a blocking thread.
const WRITE_BATCH: usize = 1024 * 1024;

/// A content-addressed blob store in one directory. Cheap to clone: clones share the sessions.
///
/// Upload sessions live in memory and in `uploads/`; a restart forgets them (and
/// [`open`](Self::open) deletes their files). Committed blobs are immutable files named by their
/// digest (sha256, or sha512 when the client named the blob so), each with a sidecar of sha256
/// chunk hashes that every read is checked against.
#[derive(Clone)]
pub struct FsBlobStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// `<root>/blobs`, holding one directory per [`DigestAlgorithm`]
    blobs: PathBuf,
    /// `<root>/uploads`
    uploads: PathBuf,
    node_id: NodeId,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    /// Uploads are refused while fewer bytes than this are free (0: no check).
    min_free: AtomicU64,
    /// Small blobs this process stored (or found stored) durably, so that the same bytes
    /// stored again cost a lookup instead of a write and three fsyncs. Forgotten on delete.
    durable_small: Mutex<HashMap<Digest, BlobInfo>>,
}

/// How many small blobs [`Inner::durable_small`] remembers before it starts over.
const DURABLE_SMALL_REMEMBERED: usize = 16_384;

struct Session {
    id: String,
    /// Who the session belongs to (an OCI name, say); a caller may refuse other owners.
    owner: String,
    path: PathBuf,
    /// Bytes written and hashed: always consistent with the writer's hash state.
    size: AtomicU64,
    last_activity: Mutex<Instant>,
    /// Held for the whole of an append or commit; `try_lock` failing means "busy".
    writer: tokio::sync::Mutex<Writer>,
}

enum Writer {
    Open(Box<OpenWriter>),
    /// A write failed or was abandoned half-way: file and hashes may disagree.
    Broken,
    /// Committed, cancelled or expired; already removed from the session map.
    Closed,
}

struct OpenWriter {
    file: File,
    sha: Sha256,
    chunks: ChunkHasher,
}

impl OpenWriter {
    /// Writes then hashes each buffer; returns the number of bytes added.
    fn write(&mut self, batch: &[Bytes]) -> io::Result<u64> {
        let mut n = 0u64;
        for bytes in batch {
            self.file.write_all(bytes)?;
            self.sha.update(bytes);
            self.chunks.update(bytes);
            n += bytes.len() as u64;
        }
        Ok(n)
    }
}

/// What a commit leaves out: nothing, except for bytes from a peer under a planted bug (see
/// [`FsBlobStore::commit_from_peer`]).
#[derive(Debug, Clone, Copy, Default)]
struct Shortcuts {
    /// Place the bytes under the expected digest whatever they hash to.
    trust_digest: bool,
    /// Leave out every fsync.
    no_fsync: bool,
}

enum Step {
    Data(Bytes),
    Failed(String),
    End,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The maps and timestamps behind these mutexes stay valid even if a holder panicked.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn blocking<T, F>(f: F) -> Result<T, BlobError>
where
    F: FnOnce() -> Result<T, BlobError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BlobError::Io(io::Error::other(e)))?
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

impl Session {
    fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    fn touch(&self) {
        *lock(&self.last_activity) = Instant::now();
    }

    fn idle_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(*lock(&self.last_activity))
    }

    /// Where a sidecar is written before it is renamed into `blobs/`.
    fn sidecar_tmp(&self) -> PathBuf {
        with_suffix(&self.path, ".chunks")
    }

    /// Deletes the session's files; errors are logged, since the session is gone either way
    /// and [`FsBlobStore::open`] removes leftovers at the next start.
    fn remove_files(&self) {
        for path in [self.path.clone(), self.sidecar_tmp()] {
            if let Err(e) = remove_if_present(&path) {
                tracing::warn!(session = %self.id, path = %path.display(), error = %e, "could not remove upload file");
            }
        }
    }
}

impl FsBlobStore {
    /// Opens (creating if needed) the store under `root` for node `node_id`, and removes every
    /// file left in `uploads/`: sessions do not survive a restart. Blocking; call at startup.
    pub fn open(root: &Path, node_id: NodeId) -> Result<Self, BlobError> {
        let blobs = root.join("blobs");
        let uploads = root.join("uploads");
        for algorithm in DigestAlgorithm::ALL {
            std::fs::create_dir_all(blobs.join(algorithm.as_str()))?;
        }
        std::fs::create_dir_all(&uploads)?;
        // Every fan-out directory exists, durably, before any blob is committed: a commit never
        // creates one, so it can never rely on a directory entry another commit has created but
        // not yet fsync'd.
        for algorithm in DigestAlgorithm::ALL {
            let alg_dir = blobs.join(algorithm.as_str());
            for byte in 0..=255u8 {
                let fan_out = alg_dir.join(format!("{byte:02x}"));
                if !fan_out.is_dir() {
                    std::fs::create_dir(&fan_out)?;
                }
            }
            sync_dir(&alg_dir)?;
        }
        sync_dir(&blobs)?;
        sync_dir(root)?;
        let mut removed = 0usize;
        for entry in std::fs::read_dir(&uploads)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                std::fs::remove_dir_all(entry.path())?;
            } else {
                std::fs::remove_file(entry.path())?;
            }
            removed += 1;
        }
        if removed > 0 {
            tracing::info!(
                removed,
                "removed partial uploads left from before the restart"
            );
        }
        Ok(FsBlobStore {
            inner: Arc::new(Inner {
                blobs,
                uploads,
                node_id,
                sessions: Mutex::new(HashMap::new()),
                min_free: AtomicU64::new(0),
                durable_small: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Refuses new uploads and appends while fewer than `bytes` are free on the store's file
    /// system (DESIGN.md §1.10: the space left stays for the raft log and commits).
    pub fn set_min_free(&self, bytes: u64) {
        self.inner.min_free.store(bytes, Ordering::Relaxed);
    }

    /// Bytes available to this process on the store's file system.
    pub fn free_bytes(&self) -> Result<u64, BlobError> {
        let stat = nix::sys::statvfs::statvfs(&self.inner.uploads).map_err(io::Error::from)?;
        Ok(stat.blocks_available().saturating_mul(stat.fragment_size()))
    }

    fn check_space(&self) -> Result<(), BlobError> {
        let required = self.inner.min_free.load(Ordering::Relaxed);
        if required == 0 {
            return Ok(());
        }
        let available = self.free_bytes()?;
        if available < required {
            return Err(BlobError::InsufficientStorage {
                available,
                required,
            });
        }
        Ok(())
    }

    /// The node this store belongs to (the prefix of its session ids).
    pub fn node_id(&self) -> NodeId {
        self.inner.node_id
    }

    /// Starts an upload session and returns its id, `<node id>-<32 random hex>`: unguessable, and
    /// naming this node so that another node can forward requests for it here.
    pub async fn create_upload(&self) -> Result<String, BlobError> {
        self.create_upload_for("").await
    }

    /// Like [`Self::create_upload`], recording `owner` (see [`Self::upload_owner`]).
    pub async fn create_upload_for(&self, owner: &str) -> Result<String, BlobError> {
        self.check_space()?;
        let id = format!("{}-{:032x}", self.inner.node_id, rand::random::<u128>());
        let path = self.inner.uploads.join(&id);
        let file = {
            let path = path.clone();
            blocking(move || Ok(OpenOptions::new().write(true).create_new(true).open(path)?))
                .await?
        };
        let session = Arc::new(Session {
            id: id.clone(),
            owner: owner.to_string(),
            path,
            size: AtomicU64::new(0),
            last_activity: Mutex::new(Instant::now()),
            writer: tokio::sync::Mutex::new(Writer::Open(Box::new(OpenWriter {
                file,
                sha: Sha256::new(),
                chunks: ChunkHasher::new(CHUNK_SIZE),
            }))),
        });
        lock(&self.inner.sessions).insert(id.clone(), session);
        tracing::debug!(session = %id, "upload session created");
        Ok(id)
    }

    /// The owner recorded when session `id` was created ([`BlobError::UnknownSession`] if none).
    pub fn upload_owner(&self, id: &str) -> Result<String, BlobError> {
        Ok(self.session(id)?.owner.clone())
    }

    /// The node that owns session `id`, or `None` if `id` is not a well-formed session id.
    pub fn session_node(id: &str) -> Option<NodeId> {
        let (node, token) = id.split_once('-')?;
        let token_ok = token.len() == 32
            && token
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        let node_ok = !node.is_empty() && node.bytes().all(|b| b.is_ascii_digit());
        if !token_ok || !node_ok {
            return None;
        }
        node.parse().ok()
    }

    fn session(&self, id: &str) -> Result<Arc<Session>, BlobError> {
        lock(&self.inner.sessions)
            .get(id)
            .cloned()
            .ok_or(BlobError::UnknownSession)
    }

    /// Removes `session` from the map if it is still the one registered under its id.
    fn forget(&self, session: &Arc<Session>) {
        let mut sessions = lock(&self.inner.sessions);
        if sessions
            .get(&session.id)
            .is_some_and(|s| Arc::ptr_eq(s, session))
        {
            sessions.remove(&session.id);
        }
    }

    /// Streams `body` onto the end of session `id` while hashing it (whole blob and 4 MiB
    /// chunks, chunk boundaries continuing across appends); returns the new size.
    ///
    /// `start`, when given, must equal the current size ([`BlobError::RangeMismatch`] otherwise).
    /// A concurrent append or commit on the same session gets [`BlobError::SessionBusy`] at once.
    /// At most about 1 MiB of the body is buffered.
    ///
    /// If the body fails, the bytes received before the failure are kept and
    /// [`BlobError::Body`] is returned: [`upload_size`](Self::upload_size) says where to resume.
    /// If writing to disk fails, the session is broken and later appends get
    /// [`BlobError::SessionBroken`].
    ///
    /// # Cancel safety
    ///
    /// Dropping the future while it waits for the body keeps every byte counted in the session's
    /// size. Dropping it while a batch is being written leaves the session broken.
    pub async fn append<S, E>(
        &self,
        id: &str,
        start: Option<u64>,
        mut body: S,
    ) -> Result<u64, BlobError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin + Send,
        E: Into<Box<dyn StdError + Send + Sync>>,
    {
        let session = self.session(id)?;
        self.check_space()?;
        let mut writer = session
            .writer
            .try_lock()
            .map_err(|_| BlobError::SessionBusy)?;
        match &*writer {
            Writer::Open(_) => {}
            Writer::Broken => return Err(BlobError::SessionBroken),
            Writer::Closed => return Err(BlobError::UnknownSession),
        }
        let current = session.size();
        if let Some(start) = start
            && start != current
        {
            return Err(BlobError::RangeMismatch { expected: current });
        }
        session.touch();
        let mut batch: Vec<Bytes> = Vec::new();
        let mut batched = 0usize;
        loop {
            let step = match body.next().await {
                Some(Ok(bytes)) => Step::Data(bytes),
                Some(Err(e)) => Step::Failed(e.into().to_string()),
                None => Step::End,
            };
            match step {
                Step::Data(bytes) => {
                    if bytes.is_empty() {
                        continue;
                    }
                    batched += bytes.len();
                    batch.push(bytes);
                    if batched >= WRITE_BATCH {
                        // Free space is checked per batch, not only when the request starts:
                        // one long body must not eat the space kept for the raft log.
                        self.check_space()?;
                        flush(&session, &mut writer, std::mem::take(&mut batch)).await?;
                        batched = 0;
                        session.touch();
                    }
                }
                Step::Failed(reason) => {
                    flush(&session, &mut writer, batch).await?;
                    session.touch();
                    tracing::debug!(session = %id, size = session.size(), %reason, "upload body failed");
                    return Err(BlobError::Body(reason));
                }
                Step::End => break,
            }
        }
        flush(&session, &mut writer, batch).await?;
        session.touch();
        Ok(session.size())
    }

    /// Bytes received so far by session `id`.
    pub async fn upload_size(&self, id: &str) -> Result<u64, BlobError> {
        Ok(self.session(id)?.size())
    }

    /// Finishes session `id`: checks the bytes against `expected` (and `expected_size` if
    /// given; a sha512 `expected` costs one more read of the upload file), then makes the blob durable and visible — fsync the file, write and fsync the
    /// chunk sidecar, rename the file into `blobs/`, fsync the directory — before returning.
    ///
    /// The session is consumed whatever the outcome (except [`BlobError::SessionBusy`] and
    /// [`BlobError::UnknownSession`]): on a mismatch or an I/O error its file is deleted and
    /// nothing appears under `blobs/`. If the blob is already stored, the verified upload
    /// replaces it (same bytes; this also repairs a damaged copy).
    ///
    /// # Cancel safety
    ///
    /// Once started, the commit runs to the end on a blocking thread even if the future is
    /// dropped; the session is gone either way.
    pub async fn commit(
        &self,
        id: &str,
        expected: &Digest,
        expected_size: Option<u64>,
    ) -> Result<BlobInfo, BlobError> {
        self.commit_inner(id, Some(expected), expected_size, Shortcuts::default())
            .await
    }

    /// [`Self::commit`] of bytes received from a peer (a pushed copy, a fetch). The same,
    /// except in a test build under two planted bugs: `skip-peer-digest-verify` places the
    /// bytes as `expected` whatever they hash to, `count-copy-before-peer-fsync` never fsyncs.
    pub async fn commit_from_peer(
        &self,
        id: &str,
        expected: &Digest,
        expected_size: Option<u64>,
    ) -> Result<BlobInfo, BlobError> {
        let shortcuts = Shortcuts {
            trust_digest: planted::active(PlantedBug::SkipPeerDigestVerify),
            no_fsync: planted::active(PlantedBug::CountCopyBeforePeerFsync),
        };
        self.commit_inner(id, Some(expected), expected_size, shortcuts)
            .await
    }

    async fn commit_inner(
        &self,
        id: &str,
        expected: Option<&Digest>,
        expected_size: Option<u64>,
        shortcuts: Shortcuts,
    ) -> Result<BlobInfo, BlobError> {
        let session = self.session(id)?;
        let mut writer = session
            .writer
            .try_lock()
            .map_err(|_| BlobError::SessionBusy)?;
        let state = std::mem::replace(&mut *writer, Writer::Closed);
        self.forget(&session);
        let open = match state {
            Writer::Open(open) => open,
            Writer::Broken => {
                let s = Arc::clone(&session);
                blocking(move || {
                    s.remove_files();
                    Ok(())
                })
                .await?;
                return Err(BlobError::SessionBroken);
            }
            Writer::Closed => return Err(BlobError::UnknownSession),
        };
        let inner = Arc::clone(&self.inner);
        let s = Arc::clone(&session);
        let expected = expected.cloned();
        let result = blocking(move || {
            let result = inner.place_upload(*open, &s, expected.as_ref(), expected_size, shortcuts);
            if result.is_err() {
                s.remove_files();
            }
            result
        })
        .await;
        match &result {
            Ok(info) => {
                tracing::debug!(session = %id, digest = %info.digest, size = info.size, "blob committed")
            }
            Err(e) => tracing::debug!(session = %id, error = %e, "blob commit refused"),
        }
        result
    }

    /// Drops session `id` and deletes its bytes.
    pub async fn cancel(&self, id: &str) -> Result<(), BlobError> {
        let session = self.session(id)?;
        let mut writer = session
            .writer
            .try_lock()
            .map_err(|_| BlobError::SessionBusy)?;
        if matches!(*writer, Writer::Closed) {
            return Err(BlobError::UnknownSession);
        }
        *writer = Writer::Closed;
        self.forget(&session);
        drop(writer);
        let s = Arc::clone(&session);
        blocking(move || {
            s.remove_files();
            Ok(())
        })
        .await
    }

    /// Stores a whole body in one call: a session, one append, one commit. With `expected` the
    /// bytes must hash to it (sha256 or sha512); without, their sha256 is computed and returned.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future before the commit starts drops the session and its file.
    pub async fn ingest<S, E>(
        &self,
        body: S,
        expected: Option<&Digest>,
    ) -> Result<BlobInfo, BlobError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin + Send,
        E: Into<Box<dyn StdError + Send + Sync>>,
    {
        let id = self.create_upload().await?;
        let guard = DiscardOnDrop {
            store: self,
            id: &id,
        };
        self.append(&id, Some(0), body).await?;
        let result = self
            .commit_inner(&id, expected, None, Shortcuts::default())
            .await;
        drop(guard);
        result
    }

    /// Stores `bytes` held in memory (a manifest, say), like [`Self::ingest`]. A small blob
    /// this store already holds durably is only hashed and looked up: no file is written.
    pub async fn ingest_bytes(
        &self,
        bytes: Bytes,
        expected: Option<&Digest>,
    ) -> Result<BlobInfo, BlobError> {
        let size = bytes.len() as u64;
        if size > INTACT_CHECK_MAX {
            return self
                .ingest(futures::stream::iter([Ok::<_, io::Error>(bytes)]), expected)
                .await;
        }
        let algorithm = expected.map_or(DigestAlgorithm::Sha256, Digest::algorithm);
        let mut hasher = DigestHasher::new(algorithm);
        hasher.update(&bytes);
        let digest = hasher.finish();
        if let Some(expected) = expected
            && *expected != digest
        {
            return Err(BlobError::DigestMismatch {
                expected: expected.clone(),
                actual: digest,
            });
        }
        let known = lock(&self.inner.durable_small).get(&digest).cloned();
        if let Some(info) = known
            && info.size == size
            // At most 256 KiB from the page cache, not worth a blocking-pool round trip: the
            // copy is still in place and intact. Otherwise `ingest` repairs it.
            && std::fs::read(self.inner.blob_path(&digest)).is_ok_and(|stored| stored == bytes)
        {
            return Ok(info);
        }
        let stream = futures::stream::iter([Ok::<_, io::Error>(bytes)]);
        let info = self.ingest(stream, Some(&digest)).await?;
        let mut durable = lock(&self.inner.durable_small);
        if durable.len() >= DURABLE_SMALL_REMEMBERED {
            durable.clear();
        }
        durable.insert(digest, info.clone());
        Ok(info)
    }

    /// Forgets session `id` and deletes its files, without waiting for anything. Used when an
    /// `ingest` future is dropped or fails; a no-op for an already-closed session.
    fn discard(&self, id: &str) {
        let Ok(session) = self.session(id) else {
            return;
        };
        // If an append holds the lock right now it belongs to this same (dropped) ingest;
        // either way the session leaves the map and its files go.
        if let Ok(mut writer) = session.writer.try_lock() {
            *writer = Writer::Closed;
        }
        self.forget(&session);
        session.remove_files();
    }

    /// Size of blob `digest` if it is stored here.
    pub async fn stat(&self, digest: &Digest) -> Result<Option<u64>, BlobError> {
        match tokio::fs::metadata(self.inner.blob_path(digest)).await {
            Ok(meta) if meta.is_file() => Ok(Some(meta.len())),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The [`BlobInfo`] of a stored blob (size and chunk root from its sidecar), if stored here.
    pub async fn info(&self, digest: &Digest) -> Result<Option<BlobInfo>, BlobError> {
        let inner = Arc::clone(&self.inner);
        let digest = digest.clone();
        let opened =
            blocking(move || inner.open_blob(&digest).map(|(_, chunks)| (digest, chunks))).await;
        match opened {
            Ok((digest, chunks)) => Ok(Some(BlobInfo {
                size: chunks.blob_size,
                chunk_root: chunks.root(),
                digest,
            })),
            Err(BlobError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The chunk hashes recorded for a stored blob (what a peer verifies a transfer against).
    pub async fn chunk_list(&self, digest: &Digest) -> Result<ChunkList, BlobError> {
        let inner = Arc::clone(&self.inner);
        let digest = digest.clone();
        blocking(move || inner.open_blob(&digest).map(|(_, chunks)| chunks)).await
    }

    /// Opens blob `digest` for reading, whole or the inclusive byte `range` `(start, end)`
    /// (`end` is clamped to the last byte). The stream checks each 4 MiB chunk against the
    /// sidecar before yielding any of it; see [`BlobReader`].
    pub async fn read(
        &self,
        digest: &Digest,
        range: Option<(u64, u64)>,
    ) -> Result<BlobReader, BlobError> {
        self.read_checked(digest, range, true).await
    }

    /// [`Self::read`] of bytes sent to a peer: the same, except in a test build under the
    /// planted bug `skip-peer-digest-verify`, where no chunk is checked.
    pub async fn read_for_peer(
        &self,
        digest: &Digest,
        range: Option<(u64, u64)>,
    ) -> Result<BlobReader, BlobError> {
        // planted bug skip-peer-digest-verify: a damaged copy goes to the peer as it is
        let check = !planted::active(PlantedBug::SkipPeerDigestVerify);
        self.read_checked(digest, range, check).await
    }

    async fn read_checked(
        &self,
        digest: &Digest,
        range: Option<(u64, u64)>,
        check: bool,
    ) -> Result<BlobReader, BlobError> {
        let inner = Arc::clone(&self.inner);
        let d = digest.clone();
        let (file, chunks) = blocking(move || inner.open_blob(&d)).await?;
        let size = chunks.blob_size;
        let (start, end) = match range {
            None => (0, size),
            Some((start, end)) => {
                if start >= size || start > end {
                    return Err(BlobError::RangeNotSatisfiable { size });
                }
                (start, end.min(size - 1) + 1)
            }
        };
        let stream = if start == end {
            Box::pin(futures::stream::empty()) as crate::BlobStream
        } else {
            verified_stream(file, digest.clone(), chunks, start, end, check)
        };
        Ok(BlobReader {
            size,
            start,
            len: end - start,
            stream,
        })
    }

    /// Re-reads the whole blob, checking every chunk and the whole-blob hash with the digest's
    /// algorithm (for the scrubber). Returns its info if intact, [`BlobError::Corrupt`] if not.
    pub async fn verify(&self, digest: &Digest) -> Result<BlobInfo, BlobError> {
        let mut reader = self.read(digest, None).await?;
        let mut sha = DigestHasher::new(digest.algorithm());
        while let Some(piece) = reader.stream.next().await {
            let piece = piece.map_err(|e| {
                match e.get_ref().and_then(|r| r.downcast_ref::<CorruptBlob>()) {
                    Some(corrupt) => BlobError::Corrupt(corrupt.clone()),
                    None => BlobError::Io(e),
                }
            })?;
            sha.update(&piece);
        }
        let actual = sha.finish();
        if &actual != digest {
            return Err(CorruptBlob {
                digest: digest.clone(),
                chunk: None,
                reason: format!("bytes hash to {actual} although every chunk matches its sidecar"),
            }
            .into());
        }
        self.info(digest).await?.ok_or(BlobError::NotFound)
    }

    /// Unlinks blob `digest` and its sidecar (blob first, so a blob never lacks its sidecar).
    /// Succeeds if the blob is already absent.
    pub async fn delete(&self, digest: &Digest) -> Result<(), BlobError> {
        lock(&self.inner.durable_small).remove(digest);
        let blob = self.inner.blob_path(digest);
        let sidecar = with_suffix(&blob, ".chunks");
        blocking(move || {
            let removed_blob = remove_if_present(&blob)?;
            let removed_sidecar = remove_if_present(&sidecar)?;
            if (removed_blob || removed_sidecar)
                && let Some(dir) = blob.parent()
            {
                sync_dir(dir)?;
            }
            Ok(())
        })
        .await
    }

    /// Drops every session idle for longer than `max_idle` (24 h in production) and deletes its
    /// files; a session with a request in progress is never idle. Returns how many were dropped.
    /// Does small blocking file removals.
    pub fn sweep_expired_uploads(&self, max_idle: Duration) -> usize {
        let now = Instant::now();
        let idle: Vec<Arc<Session>> = lock(&self.inner.sessions)
            .values()
            .filter(|s| s.idle_for(now) > max_idle)
            .cloned()
            .collect();
        let mut dropped = 0;
        for session in idle {
            let Ok(mut writer) = session.writer.try_lock() else {
                continue;
            };
            if matches!(*writer, Writer::Closed) {
                continue;
            }
            *writer = Writer::Closed;
            self.forget(&session);
            drop(writer);
            session.remove_files();
            tracing::info!(session = %session.id, "expired idle upload session");
            dropped += 1;
        }
        dropped
    }
}

/// Writes `batch` to the session on a blocking thread. On a write error, or if this future is
/// dropped mid-write, the writer stays [`Writer::Broken`].
async fn flush(session: &Session, writer: &mut Writer, batch: Vec<Bytes>) -> Result<(), BlobError> {
    if batch.is_empty() {
        return Ok(());
    }
    let Writer::Open(mut open) = std::mem::replace(writer, Writer::Broken) else {
        return Err(BlobError::SessionBroken);
    };
    let (open, result) = tokio::task::spawn_blocking(move || {
        let result = open.write(&batch);
        (open, result)
    })
    .await
    .map_err(|e| BlobError::Io(io::Error::other(e)))?;
    match result {
        Ok(n) => {
            *writer = Writer::Open(open);
            session.size.fetch_add(n, Ordering::AcqRel);
            Ok(())
        }
        Err(e) => {
            tracing::warn!(session = %session.id, error = %e, "upload write failed; session broken");
            Err(e.into())
        }
    }
}

/// Discards an `ingest` session unless it was committed (commit removes it from the map).
struct DiscardOnDrop<'a> {
    store: &'a FsBlobStore,
    id: &'a str,
}

impl Drop for DiscardOnDrop<'_> {
    fn drop(&mut self) {
        self.store.discard(self.id);
    }
}

impl Inner {
    fn blob_dir(&self, digest: &Digest) -> PathBuf {
        // A Digest always has 64 or 128 hex characters; the fallback only avoids a panicking
        // slice.
        self.blobs
            .join(digest.algorithm().as_str())
            .join(digest.hex().get(..2).unwrap_or("00"))
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blob_dir(digest).join(digest.hex())
    }

    /// Verifies a finished upload and moves it into place, durably. Blocking.
    fn place_upload(
        &self,
        open: OpenWriter,
        session: &Session,
        expected: Option<&Digest>,
        expected_size: Option<u64>,
        shortcuts: Shortcuts,
    ) -> Result<BlobInfo, BlobError> {
        let OpenWriter { file, sha, chunks } = open;
        // The streamed sha256 names the blob unless the client named it by another algorithm:
        // then one more pass over the (complete, unsynced but readable) upload file.
        let mut digest = match expected.map(Digest::algorithm) {
            None | Some(DigestAlgorithm::Sha256) => {
                Digest::from_sha256_bytes(&sha.finalize().into())
            }
            Some(algorithm) => hash_file(&session.path, algorithm)?,
        };
        let chunks = chunks.finish();
        let size = chunks.blob_size;
        if let Some(expected) = expected
            && *expected != digest
        {
            // planted bug skip-peer-digest-verify: a peer's bytes are stored under the name it gave
            if shortcuts.trust_digest {
                digest = expected.clone();
            } else {
                return Err(BlobError::DigestMismatch {
                    expected: expected.clone(),
                    actual: digest,
                });
            }
        }
        if let Some(expected) = expected_size
            && expected != size
        {
            return Err(BlobError::SizeMismatch {
                expected,
                actual: size,
            });
        }
        let info = BlobInfo {
            digest: digest.clone(),
            size,
            chunk_root: chunks.root(),
        };
        if size <= INTACT_CHECK_MAX && self.has_intact_copy(&digest, size, &chunks)? {
            // The same small blob again (a re-pushed manifest, say): the copy in place is whole
            // and now made durable, so the upload goes instead of four more fsyncs.
            drop(file);
            remove_if_present(&session.path)?;
            return Ok(info);
        }
        // planted bug count-copy-before-peer-fsync: a peer's copy is placed (and answered
        // "stored") without a single fsync, so a power cut loses it
        let sync = !shortcuts.no_fsync;
        if sync {
            sync_blob_file(&file)?;
        }
        drop(file);

        let dir = self.blob_dir(&digest);
        ensure_dir(&dir)?;
        let blob = self.blob_path(&digest);
        let sidecar = with_suffix(&blob, ".chunks");

        // The sidecar is durable in its final place before the blob appears.
        let tmp = session.sidecar_tmp();
        {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            f.write_all(&chunks::encode_sidecar(&chunks))?;
            if sync {
                sync_file(&f)?;
            }
        }
        std::fs::rename(&tmp, &sidecar)?;
        if sync {
            sync_dir(&dir)?;
        }

        // Replacing an existing copy is safe (same bytes, atomic rename; open readers keep the
        // old inode) and repairs it if it was damaged.
        std::fs::rename(&session.path, &blob)?;
        if sync {
            sync_dir(&dir)?;
        }

        Ok(info)
    }

    /// Whether a whole, correct copy of `digest` (bytes and sidecar) is already in place; if
    /// so it is fsync'd (file, sidecar, directory — cheap when already durable), so that an
    /// acknowledgement that relies on it is durable even if its own placement was still in
    /// flight. A damaged copy answers `false` and gets replaced. Blocking; reads the whole
    /// copy, so only for small blobs.
    fn has_intact_copy(
        &self,
        digest: &Digest,
        size: u64,
        chunks: &ChunkList,
    ) -> Result<bool, BlobError> {
        let blob = self.blob_path(digest);
        let sidecar = with_suffix(&blob, ".chunks");
        let (Ok(bytes), Ok(stored_sidecar)) = (std::fs::read(&blob), std::fs::read(&sidecar))
        else {
            return Ok(false);
        };
        if bytes.len() as u64 != size || stored_sidecar != chunks::encode_sidecar(chunks) {
            return Ok(false);
        }
        let mut hasher = DigestHasher::new(digest.algorithm());
        hasher.update(&bytes);
        if hasher.finish() != *digest {
            return Ok(false);
        }
        // A copy removed in between (GC) is simply placed again.
        let (Ok(blob_file), Ok(sidecar_file)) = (File::open(&blob), File::open(&sidecar)) else {
            return Ok(false);
        };
        sync_blob_file(&blob_file)?;
        sync_file(&sidecar_file)?;
        sync_dir(&self.blob_dir(digest))?;
        Ok(true)
    }

    /// Opens a stored blob and its sidecar and checks that they agree. Blocking.
    fn open_blob(&self, digest: &Digest) -> Result<(File, ChunkList), BlobError> {
        let path = self.blob_path(digest);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(BlobError::NotFound),
            Err(e) => return Err(e.into()),
        };
        let size = file.metadata()?.len();
        let corrupt = |reason: String| CorruptBlob {
            digest: digest.clone(),
            chunk: None,
            reason,
        };
        let bytes = match std::fs::read(with_suffix(&path, ".chunks")) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(corrupt("chunk sidecar is missing".to_string()).into());
            }
            Err(e) => return Err(e.into()),
        };
        let chunks = chunks::decode_sidecar(&bytes).map_err(|e| corrupt(e.to_string()))?;
        if chunks.blob_size != size {
            let reason = format!(
                "file is {size} bytes but its sidecar records {}",
                chunks.blob_size
            );
            tracing::error!(%digest, %reason, "stored blob is corrupt");
            return Err(corrupt(reason).into());
        }
        Ok((file, chunks))
    }
}

#[cfg(test)]
mod tests;
