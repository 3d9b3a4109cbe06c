//! Domain operations every format calls: store a blob, link it, bind manifests, tags and files,
//! resolve references, list, delete. This crate is the only door to metadata ([`MetaHandle`])
//! and bytes ([`FsBlobStore`]); formats parse their wire protocol and call in here.
//!
//! Start with [`Registry::store_blob`] (the single door through which every format stores
//! bytes) and [`Registry::resolve_tag`] (how reads decide between local state and a read
//! barrier, DESIGN.md §1.5).

mod error;
mod files;
mod oci;
mod packages;
mod small_blobs;

pub use oci::{Mounted, NewManifest};

use std::sync::Arc;

use bytes::Bytes;
use futures::Stream;
use wharf_blob::BlobInfo;
use wharf_meta::records::RepoRecord;
use wharf_meta::{Command, CommandResult, MetaHandle, ProposeContext, RequestId, query};
use wharf_replication::Replicator;
use wharf_types::planted::{self, PlantedBug};
use wharf_types::{Digest, ErrorCode, Format, NodeId, RepoName};

pub use error::RegistryError;
pub use wharf_blob::{BlobError, BlobReader, BlobStream, FsBlobStore};
pub use wharf_meta::packages as package_records;
pub use wharf_meta::records;
pub use wharf_meta::{Outcome, RepoSettings};

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, RegistryError>;

/// Who is asking, under which request id. Minted once per client request by the HTTP layer.
#[derive(Debug, Clone)]
pub struct RequestCtx {
    pub request_id: String,
    pub actor: String,
}

impl RequestCtx {
    /// A fresh context with an unguessable request id.
    pub fn new(actor: impl Into<String>) -> Self {
        RequestCtx {
            request_id: hex::encode(rand::random::<[u8; 16]>()),
            actor: actor.into(),
        }
    }

    /// The propose context of the `step`-th command of this request (a request that proposes
    /// several commands gives each its own stable id, so a retry dedups each one).
    fn propose(&self, step: &str) -> ProposeContext {
        ProposeContext {
            request_id: RequestId(format!("{}/{step}", self.request_id)),
            actor: self.actor.clone(),
        }
    }
}

/// Where the bytes of a blob being stored come from.
pub enum BlobSource<S> {
    /// A finished upload session on this node.
    Upload(String),
    /// A request body.
    Stream(S),
    /// Bytes already in memory (a manifest).
    Bytes(Bytes),
}

/// A blob stored through [`Registry::store_blob`]: verified, fsync'd, ready to be referenced.
#[derive(Debug, Clone)]
pub struct StoredBlob {
    pub info: BlobInfo,
    pub holder: NodeId,
}

/// The registry of one node.
#[derive(Clone)]
pub struct Registry {
    meta: Arc<dyn MetaHandle>,
    blobs: FsBlobStore,
    node_id: NodeId,
    auto_create_repos: bool,
    on_fatal: FatalHandler,
    proposals: Arc<tokio::sync::Semaphore>,
    reads: Arc<tokio::sync::Semaphore>,
    documents: Arc<small_blobs::SmallBlobCache>,
    /// How stale a `bounded` repository's local state may be (DESIGN.md §1.5c).
    max_staleness: std::time::Duration,
    /// Blob transfer between nodes (absent in a registry built without a cluster, in tests).
    replication: Option<Arc<Replicator>>,
}

/// Default of `read.max_staleness` for `bounded` repositories.
pub const DEFAULT_MAX_STALENESS: std::time::Duration = std::time::Duration::from_secs(1);

/// How many blob reads one node keeps open at once (each buffers up to ~12 MiB).
pub const MAX_READS_IN_FLIGHT: usize = 256;

/// How many metadata writes one node lets wait for Raft at once (DESIGN.md §1.10).
pub const MAX_PROPOSALS_IN_FLIGHT: usize = 1024;

/// Called when the node must stop (an fsync failed: it can no longer tell what is on disk,
/// DESIGN.md §1.2). The server stops the process; nothing is acknowledged after it.
pub type FatalHandler = Arc<dyn Fn(&str) + Send + Sync>;

impl Registry {
    /// Builds a registry over a metadata handle and this node's blob store.
    pub fn new(
        meta: Arc<dyn MetaHandle>,
        blobs: FsBlobStore,
        node_id: NodeId,
        auto_create_repos: bool,
        on_fatal: FatalHandler,
    ) -> Self {
        Registry {
            meta,
            blobs,
            node_id,
            auto_create_repos,
            on_fatal,
            proposals: Arc::new(tokio::sync::Semaphore::new(MAX_PROPOSALS_IN_FLIGHT)),
            reads: Arc::new(tokio::sync::Semaphore::new(MAX_READS_IN_FLIGHT)),
            documents: Arc::default(),
            max_staleness: DEFAULT_MAX_STALENESS,
            replication: None,
        }
    }

    /// Copies uploads to peers until `min_copies` hold them, and reads blobs this node lacks
    /// through from their holders.
    pub fn with_replication(mut self, replication: Arc<Replicator>) -> Self {
        self.replication = Some(replication);
        self
    }

    /// Sets `read.max_staleness` for `bounded` repositories.
    pub fn with_max_staleness(mut self, max_staleness: std::time::Duration) -> Self {
        self.max_staleness = max_staleness;
        self
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The node's blob store, for upload sessions (node-local by design, DESIGN.md §4).
    pub fn blobs(&self) -> &FsBlobStore {
        &self.blobs
    }

    /// The single door through which every format stores bytes: the blob is streamed, hashed,
    /// verified against `expected` (when given), fsync'd and renamed into place before this
    /// returns, and copies are pushed to peers until `durability.min_copies` members of the
    /// configuration hold verified, fsync'd bytes (else NOT_ENOUGH_COPIES, 503: nothing may be
    /// acknowledged, DESIGN.md §1.2). The caller then commits the command that references it.
    ///
    /// A repository with data residency (`settings.regions`) stores only on nodes of its
    /// regions: elsewhere this refuses before storing anything (the server forwards such
    /// writes to a node of those regions first).
    pub async fn store_blob<S, E>(
        &self,
        settings: &RepoSettings,
        source: BlobSource<S>,
        expected: Option<&Digest>,
        expected_size: Option<u64>,
    ) -> Result<StoredBlob>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin + Send,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let stored = self
            .store_blob_here(settings, source, expected, expected_size)
            .await?;
        self.copy_to_peers(settings, &stored).await?;
        Ok(stored)
    }

    /// The first half of [`Registry::store_blob`]: the blob verified and fsync'd on this node
    /// only, for a format that checks the file's contents before anything leaves the node (a
    /// refused upload is then never copied). [`Registry::copy_to_peers`] must follow before
    /// the blob is referenced by a command.
    pub async fn store_blob_here<S, E>(
        &self,
        settings: &RepoSettings,
        source: BlobSource<S>,
        expected: Option<&Digest>,
        expected_size: Option<u64>,
    ) -> Result<StoredBlob>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin + Send,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.ensure_stored_here(settings)?;
        let stored = match source {
            BlobSource::Upload(session) => {
                let Some(expected) = expected else {
                    return Err(RegistryError::new(
                        ErrorCode::DigestInvalid,
                        "a digest is required to finish an upload",
                    ));
                };
                self.blobs.commit(&session, expected, expected_size).await
            }
            BlobSource::Stream(body) => self.blobs.ingest(body, expected).await,
            BlobSource::Bytes(bytes) => self.blobs.ingest_bytes(bytes, expected).await,
        };
        let info = match stored {
            Ok(info) => info,
            Err(e) if e.is_fatal() => {
                (self.on_fatal)(&e.to_string());
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(size) = expected_size
            && size != info.size
        {
            return Err(RegistryError::new(
                ErrorCode::SizeInvalid,
                format!("received {} bytes, but {size} were declared", info.size),
            ));
        }
        Ok(StoredBlob {
            info,
            holder: self.node_id,
        })
    }

    /// The second half of [`Registry::store_blob`]: copies pushed to peers until
    /// `durability.min_copies` members hold the blob (else NOT_ENOUGH_COPIES, 503).
    pub async fn copy_to_peers(&self, settings: &RepoSettings, stored: &StoredBlob) -> Result<()> {
        let Some(replication) = &self.replication else {
            return Ok(());
        };
        let info = &stored.info;
        let holders = self
            .read(|t| query::blob(t, &info.digest))?
            .map(|r| r.holders)
            .unwrap_or_default();
        replication
            .ensure_copies(info, &holders, &settings.regions)
            .await
            .map(|_| ())
            .map_err(replication_error)
    }

    /// Proposes one command and turns a rejection into an error.
    ///
    /// At most [`MAX_PROPOSALS_IN_FLIGHT`] proposals wait at once; beyond that the write is
    /// refused with TOOMANYREQUESTS (429 + Retry-After) instead of queueing without bound.
    ///
    /// A command kind newer than the cluster version this node applied is refused here
    /// (UNSUPPORTED), never proposed: a member with an older binary could not decode it
    /// (DESIGN.md §1.1).
    async fn propose(&self, ctx: &RequestCtx, step: &str, command: Command) -> Result<Outcome> {
        let needed = command.since_version();
        if needed > wharf_meta::versions::BASE_CLUSTER_VERSION {
            let running = self.read(wharf_meta::versions::cluster_version)?;
            if needed > running {
                return Err(RegistryError::new(
                    ErrorCode::Unsupported,
                    format!(
                        "{} needs cluster version {needed}; the cluster runs version {running} \
                         until every member runs a wharf that supports it",
                        command.kind()
                    ),
                ));
            }
        }
        let Ok(_slot) = self.proposals.clone().try_acquire_owned() else {
            return Err(RegistryError::new(
                ErrorCode::TooManyRequests,
                format!(
                    "more than {MAX_PROPOSALS_IN_FLIGHT} writes are in flight on this node; retry shortly"
                ),
            ));
        };
        match self.meta.propose(ctx.propose(step), command).await? {
            CommandResult::Ok(outcome) => Ok(outcome),
            CommandResult::Rejected(rejection) => Err(RegistryError::Rejected(rejection)),
            CommandResult::None => Err(RegistryError::new(
                ErrorCode::Internal,
                "command produced no result",
            )),
        }
    }

    async fn propose_create_repo(
        &self,
        ctx: &RequestCtx,
        name: &RepoName,
        settings: RepoSettings,
        if_absent: bool,
    ) -> Result<Outcome> {
        let command = Command::CreateRepo {
            name: name.clone(),
            settings,
            if_absent,
        };
        self.propose(ctx, "create-repo", command).await
    }

    /// Runs `f` in one read transaction of the local state.
    fn read<T>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> std::result::Result<T, wharf_meta::MetaError>,
    ) -> Result<T> {
        use redb::ReadableDatabase;
        let db = self.meta.state();
        let txn = db.begin_read().map_err(wharf_meta::MetaError::from)?;
        Ok(f(&txn)?)
    }

    /// Reads locally; when the answer is "absent", runs a read barrier first and reads again,
    /// so something acknowledged anywhere is never reported missing (DESIGN.md §1.5b).
    async fn read_or_barrier<T>(
        &self,
        f: impl Fn(&redb::ReadTransaction) -> std::result::Result<Option<T>, wharf_meta::MetaError>,
    ) -> Result<Option<T>> {
        if let Some(found) = self.read(&f)? {
            return Ok(Some(found));
        }
        // planted bug skip-barrier-on-miss: "not found" on local state alone
        if planted::active(PlantedBug::SkipBarrierOnMiss) {
            return Ok(None);
        }
        self.meta.read_barrier().await?;
        self.read(&f)
    }

    /// A linearizable read: read barrier, then the local state (DESIGN.md §1.5c, `strong`).
    async fn read_strong<T>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> std::result::Result<T, wharf_meta::MetaError>,
    ) -> Result<T> {
        self.meta.read_barrier().await?;
        self.read(f)
    }

    /// A read of `repo`'s mutable state (tags, listings) as the repository's `consistency`
    /// asks: `bounded` reads locally while this node is fresh, everything else is a linearizable
    /// read (DESIGN.md §1.5c). A `bounded` node past its staleness bound falls back to the
    /// barrier, which on a minority fails with NO_QUORUM (§1.6). A local answer that
    /// `is_hit` calls a miss is never given: misses always run the barrier (§1.5b).
    async fn read_mutable<T>(
        &self,
        repo: &RepoName,
        f: impl Fn(&redb::ReadTransaction) -> std::result::Result<T, wharf_meta::MetaError>,
        is_hit: impl FnOnce(&T) -> bool,
    ) -> Result<T> {
        let bounded = self.read(|t| {
            Ok(query::repo(t, repo)?
                .is_some_and(|r| r.settings.consistency == wharf_meta::Consistency::Bounded))
        })?;
        // planted bug strong-reads-local: a hit is served from local state whatever the
        // repository's consistency and this node's staleness
        let serve_hit = (bounded && self.meta.fresh_within(self.max_staleness))
            || planted::active(PlantedBug::StrongReadsLocal);
        // planted bug skip-barrier-on-miss: a miss is answered from local state alone
        let serve_miss = planted::active(PlantedBug::SkipBarrierOnMiss);
        if serve_hit || serve_miss {
            let local = self.read(&f)?;
            let hit = is_hit(&local);
            if (hit && serve_hit) || (!hit && serve_miss) {
                return Ok(local);
            }
        }
        self.read_strong(f).await
    }

    /// The repository record, or NAME_UNKNOWN.
    pub async fn repo(&self, name: &RepoName) -> Result<RepoRecord> {
        self.read_or_barrier(|t| query::repo(t, name))
            .await?
            .ok_or_else(|| {
                RegistryError::new(
                    ErrorCode::NameUnknown,
                    format!("repository {name} does not exist"),
                )
            })
    }

    /// The repository for a read through `format`'s API: NAME_UNKNOWN when it does not exist,
    /// NOT_FOUND when it holds another format's content (its records mean nothing here).
    pub async fn repo_for_read(&self, name: &RepoName, format: Format) -> Result<RepoRecord> {
        let record = self.repo(name).await?;
        if record.settings.format != format {
            return Err(RegistryError::new(
                ErrorCode::NotFound,
                format!(
                    "repository {name} holds {} content, not {}",
                    record.settings.format.as_str(),
                    format.as_str()
                ),
            ));
        }
        Ok(record)
    }

    /// The repository for a write of `format`: created on first use when the node runs with
    /// `auto_create_repos` (`wharf dev`), else it must exist with that format.
    pub async fn repo_for_write(
        &self,
        ctx: &RequestCtx,
        name: &RepoName,
        format: Format,
    ) -> Result<RepoRecord> {
        let existing = self.read_or_barrier(|t| query::repo(t, name)).await?;
        let record = match existing {
            Some(record) => record,
            None if self.auto_create_repos => {
                let settings = RepoSettings {
                    format,
                    // Package versions are immutable whatever this says (DESIGN.md §1.3).
                    immutable: format == Format::Generic || format.is_package(),
                    allow_sparse_index: false,
                    consistency: wharf_meta::Consistency::Strong,
                    replication: Default::default(),
                    regions: Default::default(),
                    allow_unpublish: false,
                };
                self.propose_create_repo(ctx, name, settings, true).await?;
                self.repo(name).await?
            }
            None => {
                return Err(RegistryError::new(
                    ErrorCode::NameUnknown,
                    format!(
                        "repository {name} does not exist; create it with `wharf repo create {name} --format {}`",
                        format.as_str()
                    ),
                ));
            }
        };
        if record.settings.format != format {
            return Err(RegistryError::new(
                ErrorCode::Denied,
                format!(
                    "repository {name} holds {} content, not {}",
                    record.settings.format.as_str(),
                    format.as_str()
                ),
            ));
        }
        Ok(record)
    }

    /// Creates a repository (admin API).
    pub async fn create_repo(
        &self,
        ctx: &RequestCtx,
        name: &RepoName,
        mut settings: RepoSettings,
    ) -> Result<()> {
        // Package versions are immutable in every repository (DESIGN.md §1.3).
        settings.immutable |= settings.format.is_package();
        if settings.allow_unpublish && settings.format != Format::Npm {
            return Err(RegistryError::new(
                ErrorCode::BadRequest,
                "allow_unpublish applies to npm repositories only",
            ));
        }
        // A pinned repository (cluster version 4) and a package repository (5) are refused by
        // `propose` until this node applied that version: every member supports it then (an
        // older binary can no longer join), so no member applies them without their fields.
        if let Some(replication) = &self.replication {
            let known = replication.member_regions();
            if let Some(unknown) = settings.regions.iter().find(|r| !known.contains(*r)) {
                return Err(RegistryError::new(
                    ErrorCode::BadRequest,
                    format!(
                        "no member of the cluster is in region {unknown:?} (members are in: {})",
                        known.into_iter().collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
        }
        self.propose_create_repo(ctx, name, settings, false)
            .await
            .map(|_| ())
    }

    /// Refuses to store bytes of a repository with data residency on a node outside its
    /// regions (NOT_HELD_HERE): the server forwards such writes to a node of those regions.
    pub fn ensure_stored_here(&self, settings: &RepoSettings) -> Result<()> {
        let Some(replication) = &self.replication else {
            return Ok(());
        };
        if settings.stores_in(replication.region()) {
            return Ok(());
        }
        Err(RegistryError::new(
            ErrorCode::NotHeldHere,
            format!(
                "the repository keeps its bytes in region(s) {}; this node is in {} and no node \
                 of those regions took the write",
                settings
                    .regions
                    .iter()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
                replication.region()
            ),
        ))
    }

    /// Every repository (a linearizable listing).
    pub async fn list_repos(&self) -> Result<Vec<(String, RepoRecord)>> {
        self.read_strong(query::repos).await
    }

    /// A blob's cluster-wide record (size, chunk root, holders); a miss runs a read barrier.
    pub async fn blob_record(&self, digest: &Digest) -> Result<Option<records::BlobRecord>> {
        self.read_or_barrier(|t| query::blob(t, digest)).await
    }

    /// The whole bytes of a small stored document (a manifest), verified chunk by chunk when
    /// read from disk and then kept in a bounded in-memory cache. The caller has already
    /// checked that the requester may see `digest`.
    pub async fn read_document(&self, digest: &Digest) -> Result<Bytes> {
        if let Some(bytes) = self.documents.get(digest) {
            return Ok(bytes);
        }
        let mut reader = self.open_local(digest, None).await?;
        let mut buf = bytes::BytesMut::with_capacity(usize::try_from(reader.len).unwrap_or(0));
        while let Some(chunk) = futures::StreamExt::next(&mut reader.stream).await {
            let chunk = chunk.map_err(|e| {
                RegistryError::new(ErrorCode::Internal, format!("reading {digest}: {e}"))
            })?;
            buf.extend_from_slice(&chunk);
        }
        let bytes = buf.freeze();
        self.documents.insert(digest.clone(), bytes.clone());
        Ok(bytes)
    }

    /// Opens a blob: the local copy, verified chunk by chunk; a blob the cluster knows but this
    /// node lacks is read through from the nearest holder (or NOT_HELD_HERE, 503, when no
    /// holder can send it: never a false "unknown"). A local copy whose first chunk fails its
    /// check is dropped and the read moves to a holder; one that fails later aborts the
    /// response and is repaired in the background (DESIGN.md §1.4).
    async fn open_local(&self, digest: &Digest, range: Option<(u64, u64)>) -> Result<BlobReader> {
        let mut reader = match self.blobs.read(digest, range).await {
            Err(wharf_blob::BlobError::NotFound) => return self.open_remote(digest, range).await,
            Err(wharf_blob::BlobError::Corrupt(corrupt)) => {
                tracing::error!(%digest, reason = %corrupt.reason, "stored copy is corrupt");
                if let Some(replication) = &self.replication
                    && replication.drop_corrupt(digest).await
                {
                    return self.open_remote(digest, range).await;
                }
                return Err(wharf_blob::BlobError::Corrupt(corrupt).into());
            }
            other => other?,
        };
        let Some(replication) = self.replication.clone() else {
            return Ok(reader);
        };
        let first = futures::StreamExt::next(&mut reader.stream).await;
        if let Some(Err(e)) = &first
            && is_corrupt(e)
            && replication.drop_corrupt(digest).await
        {
            return self.open_remote(digest, range).await;
        }
        let digest = digest.clone();
        let rest = futures::StreamExt::then(reader.stream, move |item| {
            let (replication, digest) = (replication.clone(), digest.clone());
            async move {
                if let Err(e) = &item
                    && is_corrupt(e)
                {
                    replication.drop_corrupt(&digest).await;
                }
                item
            }
        });
        reader.stream = Box::pin(futures::StreamExt::chain(
            futures::stream::iter(first),
            rest,
        ));
        Ok(reader)
    }

    /// A blob this node does not hold: read through from a holder.
    async fn open_remote(&self, digest: &Digest, range: Option<(u64, u64)>) -> Result<BlobReader> {
        let Some(record) = self.read(|t| query::blob(t, digest))? else {
            return Err(wharf_blob::BlobError::NotFound.into());
        };
        let Some(replication) = &self.replication else {
            return Err(RegistryError::new(
                ErrorCode::NotHeldHere,
                format!(
                    "{digest} is stored on node(s) {:?}, not on node {}",
                    record.holders, self.node_id
                ),
            ));
        };
        if let Some((start, _)) = range
            && start >= record.size
        {
            return Err(wharf_blob::BlobError::RangeNotSatisfiable { size: record.size }.into());
        }
        let reader = if record.stores_in(replication.region()) {
            replication.read_through(digest, &record, range).await
        } else {
            // Data residency: this node streams the bytes without keeping them.
            replication.stream_through(digest, &record, range).await
        };
        reader.map_err(replication_error)
    }

    /// Opens a stored blob for reading (whole or an inclusive range), chunk-verified.
    ///
    /// Each open read buffers up to a few 4 MiB chunks, so at most [`MAX_READS_IN_FLIGHT`] are
    /// open at once; beyond that the read is refused with TOOMANYREQUESTS (429 + Retry-After)
    /// instead of letting memory grow with the number of slow clients (DESIGN.md §1.10).
    pub async fn read_blob(
        &self,
        digest: &Digest,
        range: Option<(u64, u64)>,
    ) -> Result<BlobReader> {
        let Ok(permit) = self.reads.clone().try_acquire_owned() else {
            return Err(RegistryError::new(
                ErrorCode::TooManyRequests,
                format!(
                    "more than {MAX_READS_IN_FLIGHT} blob reads are open on this node; retry shortly"
                ),
            ));
        };
        let mut reader = self.open_local(digest, range).await?;
        // The permit lives as long as the stream: released when the response is done or dropped.
        reader.stream = Box::pin(futures::StreamExt::map(reader.stream, move |item| {
            let _held = &permit;
            item
        }));
        Ok(reader)
    }
}

/// A replication failure as the client sees it.
fn replication_error(e: wharf_replication::ReplicationError) -> RegistryError {
    RegistryError::new(e.code(), e.to_string())
}

/// Whether a read error is a chunk that failed its check.
fn is_corrupt(e: &std::io::Error) -> bool {
    e.get_ref()
        .is_some_and(|inner| inner.downcast_ref::<wharf_blob::CorruptBlob>().is_some())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use wharf_meta::{MetaError, RepoSettings};

    use super::*;

    /// A metadata handle whose proposals never finish: lets the test fill the in-flight bound.
    struct StuckMeta {
        db: Arc<redb::Database>,
        waiting: AtomicUsize,
        _dir: tempfile::TempDir,
    }

    #[async_trait::async_trait]
    impl MetaHandle for StuckMeta {
        async fn propose(
            &self,
            _: ProposeContext,
            _: Command,
        ) -> std::result::Result<CommandResult, MetaError> {
            self.waiting.fetch_add(1, Ordering::SeqCst);
            std::future::pending().await
        }
        async fn read_barrier(&self) -> std::result::Result<(), MetaError> {
            Ok(())
        }
        fn state(&self) -> Arc<redb::Database> {
            self.db.clone()
        }
    }

    /// A registry over a fresh state whose proposals never finish, and its metadata handle.
    fn stuck_registry() -> (Registry, Arc<StuckMeta>) {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(redb::Database::create(dir.path().join("state.redb")).unwrap());
        let blobs = FsBlobStore::open(&dir.path().join("blobs"), 1).unwrap();
        let meta = Arc::new(StuckMeta {
            db,
            waiting: AtomicUsize::new(0),
            _dir: dir,
        });
        let registry = Registry::new(meta.clone(), blobs, 1, false, Arc::new(|_| {}));
        (registry, meta)
    }

    #[tokio::test]
    async fn reads_beyond_the_open_bound_get_too_many_requests_until_one_closes() {
        let (registry, _) = stuck_registry();
        let body = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"hello"))]);
        let info = registry.blobs().ingest(body, None).await.unwrap();
        let mut open = Vec::new();
        for _ in 0..MAX_READS_IN_FLIGHT {
            open.push(registry.read_blob(&info.digest, None).await.unwrap());
        }
        let err = registry.read_blob(&info.digest, None).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::TooManyRequests);
        drop(open.pop());
        let mut reader = registry.read_blob(&info.digest, None).await.unwrap();
        let first = futures::StreamExt::next(&mut reader.stream)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&first[..], b"hello");
    }

    #[tokio::test]
    async fn a_command_newer_than_the_cluster_version_is_never_proposed() {
        let (registry, meta) = stuck_registry();
        // A fresh state runs the base cluster version; package commands need version 5.
        let update = wharf_meta::packages::PackageUpdate {
            repo: RepoName::new("js").unwrap(),
            format: wharf_types::Format::Npm,
            package: "tiny".into(),
            expected_revision: None,
            changes: vec![wharf_meta::packages::PackageChange::DistTag {
                tag: "next".into(),
                version: Some("1.0.0".into()),
            }],
        };
        let err = registry
            .update_package(&RequestCtx::new("t"), update)
            .await
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::Unsupported);
        assert_eq!(
            meta.waiting.load(Ordering::SeqCst),
            0,
            "nothing was proposed"
        );
    }

    #[tokio::test]
    async fn writes_beyond_the_in_flight_bound_get_too_many_requests() {
        let (registry, meta) = stuck_registry();
        let settings = RepoSettings {
            format: wharf_types::Format::Oci,
            immutable: false,
            allow_sparse_index: false,
            consistency: wharf_meta::Consistency::Strong,
            replication: Default::default(),
            regions: Default::default(),
            allow_unpublish: false,
        };
        let mut stuck = Vec::new();
        for i in 0..MAX_PROPOSALS_IN_FLIGHT {
            let (r, s) = (registry.clone(), settings.clone());
            let name = RepoName::new(&format!("r{i}")).unwrap();
            stuck.push(tokio::spawn(async move {
                r.create_repo(&RequestCtx::new("t"), &name, s).await
            }));
        }
        while meta.waiting.load(Ordering::SeqCst) < MAX_PROPOSALS_IN_FLIGHT {
            tokio::task::yield_now().await;
        }
        let name = RepoName::new("one-more").unwrap();
        let err = registry
            .create_repo(&RequestCtx::new("t"), &name, settings)
            .await
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::TooManyRequests);
        for task in stuck {
            task.abort();
        }
    }
}
