//! The raft state machine of the metadata group: redb tables ([`crate::tables`]) plus
//! snapshots of them.
//!
//! ```text
//! <dir>/state.redb              every table in STATE_TABLES; sm_meta holds
//!                               "last_applied" and "membership" (0x01 ++ json)
//! <dir>/snapshot/current.snap   the current snapshot (format below)
//! <dir>/snapshot/*.tmp          a snapshot being written (removed at open)
//! ```
//!
//! **Apply.** Every batch openraft hands to [`RaftStateMachine::apply`] is applied in one redb
//! write transaction (fsync'd on commit): each normal entry through [`apply_entry`], then
//! last-applied and the last membership in `sm_meta`. Responses are sent only after the commit,
//! so an acknowledged write is durable. An [`ApplyError`](crate::apply::ApplyError) aborts the
//! transaction and is returned as a storage error, which stops the node: an entry is never
//! skipped.
//!
//! **Snapshot format, version 1.** A snapshot is streamed from one redb read transaction, so it
//! is one consistent cut of every table:
//!
//! ```text
//! header   "WHARFSNP" | version u16 BE (=1) | meta_len u32 BE | json SnapshotMeta
//! chunk*   len u32 BE (> 0) | crc32 u32 BE of payload | payload
//!          payload = records, never split across chunks:
//!            0x01 | name_len u8 | table name          (following pairs belong to it)
//!            0x02 | key_len u32 BE | key | value_len u32 BE | value
//! end      len u32 BE = 0
//! trailer  sha256 of every byte before it (32 bytes)
//! ```
//!
//! Installing one checks the chunk CRCs as it streams, clears every table and inserts the
//! records in one write transaction, and commits only after the sha256 matched and the
//! snapshot file was written tmp → fsync → rename → fsync dir (redb never shows a half
//! install). The [`Database`] itself is never swapped, so [`StateMachineStore::db`] stays valid.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::{Stream, StreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableHandle,
};
use sha2::{Digest as _, Sha256};

use crate::apply::apply_entry;
use crate::command::CommandResult;
use crate::log_store::{decode, encode, storage, sync_dir_and_parent};
use crate::raft_types::{Entry, LogId, SnapshotMeta, StoredMembership, TypeConfig};
use crate::tables::{SM_META, STATE_TABLES, StateTable};

const KEY_LAST_APPLIED: &[u8] = b"last_applied";
const KEY_MEMBERSHIP: &[u8] = b"membership";

const SNAPSHOT_MAGIC: &[u8; 8] = b"WHARFSNP";
/// The snapshot format this code writes.
pub const SNAPSHOT_VERSION: u16 = 1;
const RECORD_TABLE: u8 = 0x01;
const RECORD_PAIR: u8 = 0x02;
/// A chunk is closed once its payload reaches this size.
const CHUNK_TARGET: usize = 1 << 20;
/// Largest chunk a reader accepts (one oversized record may exceed [`CHUNK_TARGET`]).
const CHUNK_MAX: usize = 256 << 20;
/// Largest header a reader accepts.
const META_MAX: usize = 64 << 20;
const CURRENT_SNAPSHOT: &str = "current.snap";

/// Why the state machine could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StateMachineError {
    /// A directory or the current snapshot could not be read or created.
    #[error("state machine directory {path}: {source}")]
    Io { path: String, source: io::Error },
    /// redb refused to open or initialise the file.
    #[error("cannot open state machine {path}: {source}")]
    Open { path: String, source: redb::Error },
}

/// A snapshot's bytes: a file opened for reading, positioned at its start.
///
/// This is the `SnapshotData` openraft moves between the state machine and the network.
#[derive(Debug)]
pub struct SnapshotFile {
    file: File,
}

impl SnapshotFile {
    /// Wraps a file holding a snapshot (read from its start on install).
    pub fn from_file(file: File) -> Self {
        SnapshotFile { file }
    }

    /// The underlying file.
    pub fn into_file(self) -> File {
        self.file
    }
}

/// The snapshot directory and the metadata of its current snapshot.
struct Snapshots {
    dir: PathBuf,
    /// Metadata of `current.snap`; the lock also serialises replacing that file.
    current: Mutex<Option<SnapshotMeta>>,
    /// Makes temporary file names unique within this process.
    next_tmp: AtomicU64,
}

impl Snapshots {
    fn lock(&self) -> MutexGuard<'_, Option<SnapshotMeta>> {
        // The guarded value is replaced only after the file it describes is in place, so a
        // panic elsewhere cannot leave it inconsistent: recover from poisoning.
        self.current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn tmp_path(&self, what: &str) -> PathBuf {
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        self.dir.join(format!("{what}-{n}.tmp"))
    }

    fn current_path(&self) -> PathBuf {
        self.dir.join(CURRENT_SNAPSHOT)
    }

    /// Makes the fsync'd file at `tmp` the current snapshot unless a newer one is already
    /// current, and returns a read handle to the snapshot it wrote.
    fn publish(&self, tmp: &Path, meta: &SnapshotMeta) -> Result<SnapshotFile, io::Error> {
        let mut current = self.lock();
        let handle = File::open(tmp)?;
        let newer_exists = current
            .as_ref()
            .is_some_and(|cur| cur.last_log_id > meta.last_log_id);
        if newer_exists {
            // Keep the newer one; the caller still gets the bytes it built (the open handle
            // outlives the unlink).
            std::fs::remove_file(tmp)?;
        } else {
            std::fs::rename(tmp, self.current_path())?;
            sync_dir(&self.dir)?;
            *current = Some(meta.clone());
        }
        Ok(SnapshotFile::from_file(handle))
    }
}

/// The redb-backed raft state machine.
pub struct StateMachineStore {
    db: Arc<Database>,
    snapshots: Arc<Snapshots>,
    checkpoints: Option<Checkpoints>,
}

impl StateMachineStore {
    /// Opens (creating if needed) `<dir>/state.redb` and `<dir>/snapshot/`.
    pub fn open(dir: &Path) -> Result<Self, StateMachineError> {
        let io_err = |path: &Path| {
            let path = path.display().to_string();
            move |source| StateMachineError::Io { path, source }
        };
        let snapshot_dir = dir.join("snapshot");
        std::fs::create_dir_all(&snapshot_dir).map_err(io_err(&snapshot_dir))?;
        remove_tmp_files(&snapshot_dir).map_err(io_err(&snapshot_dir))?;

        let path = dir.join("state.redb");
        let open_err = |source: redb::Error| StateMachineError::Open {
            path: path.display().to_string(),
            source,
        };
        let db = Database::create(&path).map_err(|e| open_err(e.into()))?;
        let init = || -> Result<(), redb::Error> {
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            for table in STATE_TABLES {
                txn.open_table(*table)?;
            }
            txn.commit()?;
            Ok(())
        };
        init().map_err(open_err)?;
        // `state.redb` and `snapshot/` become durable names only with an fsync of `dir` (and
        // `dir` itself with one of its parent): redb fsyncs the file's bytes, not its name.
        sync_dir_and_parent(dir).map_err(io_err(dir))?;

        let current_path = snapshot_dir.join(CURRENT_SNAPSHOT);
        let current = match File::open(&current_path) {
            Ok(file) => {
                Some(read_header(&mut BufReader::new(file)).map_err(io_err(&current_path))?)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err(&current_path)(e)),
        };

        Ok(StateMachineStore {
            db: Arc::new(db),
            snapshots: Arc::new(Snapshots {
                dir: snapshot_dir,
                current: Mutex::new(current),
                next_tmp: AtomicU64::new(0),
            }),
            checkpoints: None,
        })
    }

    /// Hands the state at every checkpoint index to `checkpoints.sink`.
    pub fn with_checkpoints(mut self, checkpoints: Checkpoints) -> Self {
        self.checkpoints = Some(checkpoints);
        self
    }

    /// The state database. Read it with read transactions only; it is never replaced, not even
    /// when a snapshot is installed.
    pub fn db(&self) -> Arc<Database> {
        self.db.clone()
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T, io::Error>
    where
        T: Send + 'static,
        F: FnOnce(&Database, &Snapshots) -> Result<T, io::Error> + Send + 'static,
    {
        let db = self.db.clone();
        let snapshots = self.snapshots.clone();
        tokio::task::spawn_blocking(move || f(&db, &snapshots))
            .await
            .map_err(|e| io::Error::other(format!("state machine task failed: {e}")))?
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotData = SnapshotFile;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        self.blocking(|db, _| {
            let txn = db.begin_read().map_err(storage)?;
            let meta = txn.open_table(SM_META).map_err(storage)?;
            read_applied(&meta)
        })
        .await
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let mut batch = Vec::new();
        let mut responders = Vec::new();
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            batch.push(entry);
            responders.push(responder);
        }
        if batch.is_empty() {
            return Ok(());
        }
        let checkpoints = self.checkpoints.clone();
        let results = self
            .blocking(move |db, _| apply_batch(db, &batch, checkpoints.as_ref()))
            .await?;
        // Only now is the batch durable: answer the clients.
        for (responder, result) in responders.into_iter().zip(results) {
            if let Some(responder) = responder {
                responder.send(result);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            db: self.db.clone(),
            snapshots: self.snapshots.clone(),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotFile,
    ) -> Result<(), io::Error> {
        let meta = meta.clone();
        self.blocking(move |db, snapshots| install(db, snapshots, &meta, snapshot))
            .await
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<openraft::type_config::alias::SnapshotOf<TypeConfig, SnapshotFile>>, io::Error>
    {
        self.blocking(|_, snapshots| {
            let current = snapshots.lock();
            let Some(meta) = current.as_ref() else {
                return Ok(None);
            };
            let file = File::open(snapshots.current_path())?;
            Ok(Some(openraft::Snapshot {
                meta: meta.clone(),
                snapshot: SnapshotFile::from_file(file),
            }))
        })
        .await
    }
}

/// Builds a snapshot from one read transaction of the state database.
pub struct SnapshotBuilder {
    db: Arc<Database>,
    snapshots: Arc<Snapshots>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(
        &mut self,
    ) -> Result<openraft::type_config::alias::SnapshotOf<TypeConfig, SnapshotFile>, io::Error> {
        let db = self.db.clone();
        let snapshots = self.snapshots.clone();
        tokio::task::spawn_blocking(move || build(&db, &snapshots))
            .await
            .map_err(|e| io::Error::other(format!("snapshot task failed: {e}")))?
    }
}

/// Where [`StateMachineStore`] hands the state at each checkpoint index: a read transaction
/// that sees exactly the state after that index (see [`crate::versions`]).
#[derive(Clone)]
pub struct Checkpoints {
    /// Every index divisible by this is a checkpoint (0: none).
    pub every: u64,
    /// Bounded: a checkpoint the taker has no room for is skipped rather than holding an old
    /// read transaction (and redb's pages) while it catches up.
    pub sink: tokio::sync::mpsc::Sender<(u64, redb::ReadTransaction)>,
}

/// Applies `entries` in durable write transactions — one per batch, split after each
/// checkpoint index so its state can be read exactly — and returns one result per entry.
fn apply_batch(
    db: &Database,
    entries: &[Entry],
    checkpoints: Option<&Checkpoints>,
) -> Result<Vec<CommandResult>, io::Error> {
    let mut results = Vec::with_capacity(entries.len());
    let every = checkpoints.map_or(0, |c| c.every);
    let mut rest = entries;
    while !rest.is_empty() {
        let split = rest
            .iter()
            .position(|e| every > 0 && e.log_id.index % every == 0)
            .map_or(rest.len(), |i| i + 1);
        let (part, after) = rest.split_at(split);
        results.extend(apply_part(db, part)?);
        let last = part.last().map(|e| e.log_id.index).unwrap_or_default();
        if let Some(c) = checkpoints
            && every > 0
            && last % every == 0
        {
            // No other writer exists: this read sees exactly the state after `last`.
            let txn = db.begin_read().map_err(storage)?;
            if c.sink.try_send((last, txn)).is_err() {
                tracing::debug!(index = last, "state checkpoint skipped: its taker is busy");
            }
        }
        rest = after;
    }
    Ok(results)
}

/// Applies `entries` (non-empty) in one durable write transaction.
fn apply_part(db: &Database, entries: &[Entry]) -> Result<Vec<CommandResult>, io::Error> {
    let Some(last) = entries.last() else {
        return Ok(Vec::new());
    };
    let mut txn = db.begin_write().map_err(storage)?;
    txn.set_durability(Durability::Immediate).map_err(storage)?;
    let mut results = Vec::with_capacity(entries.len());
    for entry in entries {
        let result = match entry.payload {
            EntryPayload::Blank => CommandResult::None,
            EntryPayload::Normal(ref envelope) => apply_entry(&txn, entry.log_id.index, envelope)
                .map_err(|e| {
                // Returning aborts the transaction: none of the batch is applied, and the
                // storage error stops the node rather than skipping the entry.
                io::Error::other(format!(
                    "cannot apply log entry {} ({envelope}): {e}",
                    entry.log_id
                ))
            })?,
            EntryPayload::Membership(ref m) => {
                // Stored at once: a command later in the same batch (SetClusterVersion checks
                // every member) must see it, whatever the batch boundaries on this node.
                let membership = StoredMembership::new(Some(entry.log_id), m.clone());
                let mut meta = txn.open_table(SM_META).map_err(storage)?;
                meta.insert(KEY_MEMBERSHIP, encode(&membership)?.as_slice())
                    .map_err(storage)?;
                CommandResult::None
            }
        };
        results.push(result);
    }
    {
        let mut meta = txn.open_table(SM_META).map_err(storage)?;
        meta.insert(KEY_LAST_APPLIED, encode(&Some(last.log_id))?.as_slice())
            .map_err(storage)?;
    }
    txn.commit().map_err(storage)?;
    Ok(results)
}

/// Reads last-applied and the last membership from `sm_meta`.
fn read_applied(
    meta: &impl ReadableTable<&'static [u8], &'static [u8]>,
) -> Result<(Option<LogId>, StoredMembership), io::Error> {
    let last_applied = match meta.get(KEY_LAST_APPLIED).map_err(storage)? {
        Some(v) => decode::<Option<LogId>>(v.value())?,
        None => None,
    };
    let membership = match meta.get(KEY_MEMBERSHIP).map_err(storage)? {
        Some(v) => decode::<StoredMembership>(v.value())?,
        None => StoredMembership::default(),
    };
    Ok((last_applied, membership))
}

/// Streams every state table into a new snapshot file and makes it current.
fn build(
    db: &Database,
    snapshots: &Snapshots,
) -> Result<openraft::type_config::alias::SnapshotOf<TypeConfig, SnapshotFile>, io::Error> {
    let txn = db.begin_read().map_err(storage)?;
    let (last_log_id, last_membership) = read_applied(&txn.open_table(SM_META).map_err(storage)?)?;
    let meta = SnapshotMeta {
        last_log_id,
        last_membership,
    };

    let tmp = snapshots.tmp_path("build");
    let written = (|| -> Result<[u8; 32], io::Error> {
        let file = File::create(&tmp)?;
        let mut w = SnapshotWriter::new(BufWriter::new(file), &meta)?;
        for def in STATE_TABLES {
            let table = txn.open_table(*def).map_err(storage)?;
            if crate::tables::left_out_when_empty(*def) && table.is_empty().map_err(storage)? {
                continue;
            }
            w.table(def.name())?;
            for item in table.iter().map_err(storage)? {
                let (k, v) = item.map_err(storage)?;
                w.pair(k.value(), v.value())?;
            }
        }
        let (out, digest) = w.finish()?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(digest)
    })();
    let digest = match written {
        Ok(d) => d,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    drop(txn);
    let data = snapshots.publish(&tmp, &meta)?;
    tracing::info!(snapshot = %meta, sha256 = %hex::encode(digest), "built state snapshot");
    Ok(openraft::Snapshot {
        meta,
        snapshot: data,
    })
}

/// Verifies and installs `data` as the whole state, and makes it the current snapshot.
fn install(
    db: &Database,
    snapshots: &Snapshots,
    meta: &SnapshotMeta,
    data: SnapshotFile,
) -> Result<(), io::Error> {
    let mut src = data.into_file();
    src.rewind()?;
    let tmp = snapshots.tmp_path("install");
    let result = (|| -> Result<(), io::Error> {
        let out = BufWriter::new(File::create(&tmp)?);
        let mut r = SnapshotReader::new(BufReader::new(src), out);
        let embedded = read_header(&mut r)?;
        if embedded.last_log_id != meta.last_log_id
            || embedded.last_membership != meta.last_membership
        {
            return Err(invalid(format!(
                "snapshot file describes {embedded}, but {meta} was to be installed"
            )));
        }

        let mut txn = db.begin_write().map_err(storage)?;
        txn.set_durability(Durability::Immediate).map_err(storage)?;
        for def in STATE_TABLES {
            // Empty every table, and recreate it even if the snapshot has no records for it.
            txn.delete_table(*def).map_err(storage)?;
            txn.open_table(*def).map_err(storage)?;
        }
        {
            let mut table: Option<redb::Table<'_, &'static [u8], &'static [u8]>> = None;
            while let Some(payload) = r.chunk()? {
                let mut rest = payload.as_slice();
                while let Some((&kind, tail)) = rest.split_first() {
                    rest = tail;
                    match kind {
                        RECORD_TABLE => {
                            let [len] = take_array::<1>(&mut rest)?;
                            let name = std::str::from_utf8(take(&mut rest, usize::from(len))?)
                                .map_err(|_| invalid("table name is not UTF-8".to_string()))?;
                            let def = state_table(name)?;
                            // Close the previous table before opening the next one.
                            drop(table.take());
                            table = Some(txn.open_table(def).map_err(storage)?);
                        }
                        RECORD_PAIR => {
                            let key = take_sized(&mut rest)?;
                            let value = take_sized(&mut rest)?;
                            let t = table.as_mut().ok_or_else(|| {
                                invalid("key/value record before any table".to_string())
                            })?;
                            t.insert(key, value).map_err(storage)?;
                        }
                        other => return Err(invalid(format!("unknown record kind {other:#04x}"))),
                    }
                }
            }
        }
        let mut out = r.finish()?;
        // The records were fine: make the recorded position exactly the snapshot's.
        {
            let mut sm_meta = txn.open_table(SM_META).map_err(storage)?;
            sm_meta
                .insert(KEY_LAST_APPLIED, encode(&meta.last_log_id)?.as_slice())
                .map_err(storage)?;
            sm_meta
                .insert(KEY_MEMBERSHIP, encode(&meta.last_membership)?.as_slice())
                .map_err(storage)?;
        }
        out.flush()?;
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        // Snapshot file first, state second: if we crash in between, the current snapshot is
        // newer than the state and openraft installs it again at startup.
        drop(snapshots.publish(&tmp, meta)?);
        txn.commit().map_err(storage)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    if result.is_ok() {
        tracing::info!(snapshot = %meta, "installed state snapshot");
    }
    result
}

/// The state table called `name`.
fn state_table(name: &str) -> Result<StateTable, io::Error> {
    STATE_TABLES
        .iter()
        .find(|t| t.name() == name)
        .copied()
        .ok_or_else(|| invalid(format!("snapshot names unknown table {name:?}")))
}

/// Writes the snapshot format (see the module docs).
struct SnapshotWriter<W: Write> {
    out: W,
    hash: Sha256,
    chunk: Vec<u8>,
}

impl<W: Write> SnapshotWriter<W> {
    fn new(out: W, meta: &SnapshotMeta) -> Result<Self, io::Error> {
        let meta_json = serde_json::to_vec(meta).map_err(|e| invalid(e.to_string()))?;
        let mut w = SnapshotWriter {
            out,
            hash: Sha256::new(),
            chunk: Vec::with_capacity(CHUNK_TARGET),
        };
        w.emit(SNAPSHOT_MAGIC)?;
        w.emit(&SNAPSHOT_VERSION.to_be_bytes())?;
        w.emit(&len_u32(meta_json.len())?.to_be_bytes())?;
        w.emit(&meta_json)?;
        Ok(w)
    }

    fn emit(&mut self, bytes: &[u8]) -> Result<(), io::Error> {
        self.hash.update(bytes);
        self.out.write_all(bytes)
    }

    fn table(&mut self, name: &str) -> Result<(), io::Error> {
        let len = u8::try_from(name.len())
            .map_err(|_| invalid(format!("table name too long: {name}")))?;
        self.chunk.push(RECORD_TABLE);
        self.chunk.push(len);
        self.chunk.extend_from_slice(name.as_bytes());
        self.maybe_flush()
    }

    fn pair(&mut self, key: &[u8], value: &[u8]) -> Result<(), io::Error> {
        self.chunk.push(RECORD_PAIR);
        self.chunk
            .extend_from_slice(&len_u32(key.len())?.to_be_bytes());
        self.chunk.extend_from_slice(key);
        self.chunk
            .extend_from_slice(&len_u32(value.len())?.to_be_bytes());
        self.chunk.extend_from_slice(value);
        self.maybe_flush()
    }

    fn maybe_flush(&mut self) -> Result<(), io::Error> {
        if self.chunk.len() >= CHUNK_TARGET {
            self.flush_chunk()
        } else {
            Ok(())
        }
    }

    fn flush_chunk(&mut self) -> Result<(), io::Error> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        if self.chunk.len() > CHUNK_MAX {
            return Err(invalid(format!(
                "snapshot record too large ({} bytes)",
                self.chunk.len()
            )));
        }
        let chunk = std::mem::take(&mut self.chunk);
        self.emit(&len_u32(chunk.len())?.to_be_bytes())?;
        self.emit(&crc32fast::hash(&chunk).to_be_bytes())?;
        self.emit(&chunk)?;
        self.chunk = chunk;
        self.chunk.clear();
        Ok(())
    }

    /// Writes the last chunk, the end marker and the sha256 trailer.
    fn finish(mut self) -> Result<(W, [u8; 32]), io::Error> {
        self.flush_chunk()?;
        self.emit(&0u32.to_be_bytes())?;
        let digest: [u8; 32] = self.hash.finalize().into();
        self.out.write_all(&digest)?;
        self.out.flush()?;
        Ok((self.out, digest))
    }
}

/// Reads the snapshot format, hashing what it reads and copying every byte to `copy`.
struct SnapshotReader<R: Read, W: Write> {
    src: R,
    copy: W,
    hash: Sha256,
}

impl<R: Read, W: Write> SnapshotReader<R, W> {
    fn new(src: R, copy: W) -> Self {
        SnapshotReader {
            src,
            copy,
            hash: Sha256::new(),
        }
    }

    /// The next chunk's payload (CRC checked), or `None` at the end marker.
    fn chunk(&mut self) -> Result<Option<Vec<u8>>, io::Error> {
        let len = read_u32(self)? as usize;
        if len == 0 {
            return Ok(None);
        }
        if len > CHUNK_MAX {
            return Err(invalid(format!(
                "snapshot chunk of {len} bytes exceeds the limit"
            )));
        }
        let crc = read_u32(self)?;
        let mut payload = vec![0; len];
        self.read_exact(&mut payload)?;
        if crc32fast::hash(&payload) != crc {
            return Err(invalid("snapshot chunk CRC mismatch".to_string()));
        }
        Ok(Some(payload))
    }

    /// Checks the sha256 trailer and that nothing follows it; returns the copy.
    fn finish(mut self) -> Result<W, io::Error> {
        let expected: [u8; 32] = self.hash.clone().finalize().into();
        let mut trailer = [0u8; 32];
        self.src.read_exact(&mut trailer)?;
        self.copy.write_all(&trailer)?;
        if trailer != expected {
            return Err(invalid("snapshot sha256 mismatch".to_string()));
        }
        let mut extra = [0u8; 1];
        if self.src.read(&mut extra)? != 0 {
            return Err(invalid("trailing bytes after snapshot trailer".to_string()));
        }
        Ok(self.copy)
    }
}

impl<R: Read, W: Write> Read for SnapshotReader<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.src.read(buf)?;
        let read = buf.get(..n).unwrap_or_default();
        self.hash.update(read);
        self.copy.write_all(read)?;
        Ok(n)
    }
}

/// Reads the header (magic, version, metadata) of a snapshot.
fn read_header(r: &mut impl Read) -> Result<SnapshotMeta, io::Error> {
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)?;
    if &magic != SNAPSHOT_MAGIC {
        return Err(invalid("not a Wharf snapshot (bad magic)".to_string()));
    }
    let mut version = [0u8; 2];
    r.read_exact(&mut version)?;
    let version = u16::from_be_bytes(version);
    if version != SNAPSHOT_VERSION {
        return Err(invalid(format!("unsupported snapshot version {version}")));
    }
    let len = read_u32(r)? as usize;
    if len > META_MAX {
        return Err(invalid(format!(
            "snapshot header of {len} bytes exceeds the limit"
        )));
    }
    let mut json = vec![0; len];
    r.read_exact(&mut json)?;
    serde_json::from_slice(&json).map_err(|e| invalid(format!("snapshot header: {e}")))
}

fn read_u32(r: &mut impl Read) -> Result<u32, io::Error> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

/// Splits `n` bytes off the front of `rest`.
fn take<'a>(rest: &mut &'a [u8], n: usize) -> Result<&'a [u8], io::Error> {
    if rest.len() < n {
        return Err(invalid("truncated snapshot record".to_string()));
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Ok(head)
}

/// Splits `N` bytes off the front of `rest` as an array.
fn take_array<const N: usize>(rest: &mut &[u8]) -> Result<[u8; N], io::Error> {
    let (head, tail) = rest
        .split_first_chunk::<N>()
        .ok_or_else(|| invalid("truncated snapshot record".to_string()))?;
    *rest = tail;
    Ok(*head)
}

/// Splits a `len u32 BE | bytes` field off the front of `rest`.
fn take_sized<'a>(rest: &mut &'a [u8]) -> Result<&'a [u8], io::Error> {
    let len = u32::from_be_bytes(take_array::<4>(rest)?) as usize;
    take(rest, len)
}

fn len_u32(len: usize) -> Result<u32, io::Error> {
    u32::try_from(len).map_err(|_| invalid(format!("snapshot field of {len} bytes is too large")))
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// fsyncs a directory so a rename in it is durable.
fn sync_dir(dir: &Path) -> Result<(), io::Error> {
    File::open(dir)?.sync_all()
}

/// Removes snapshot files left half-written by a crash.
fn remove_tmp_files(dir: &Path) -> Result<(), io::Error> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "tmp") {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use openraft::entry::RaftEntry;
    use openraft::testing::log::{StoreBuilder, Suite};
    use openraft::type_config::TypeConfigExt;
    use openraft::vote::RaftLeaderIdExt;
    use openraft::{Membership, StorageError};
    use tempfile::TempDir;

    use super::*;
    use crate::log_store::LogStore;
    use crate::raft_types::NodeInfo;
    use crate::tables::{REPOS, TAGS};

    /// Builds a log store and a state machine in one fresh temporary directory.
    struct TempStores;

    impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for TempStores {
        async fn build(
            &self,
        ) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<TypeConfig>> {
            let dir = tempfile::tempdir().unwrap();
            let log = LogStore::open(dir.path()).unwrap();
            let sm = StateMachineStore::open(dir.path()).unwrap();
            Ok((dir, log, sm))
        }
    }

    #[test]
    fn openraft_storage_suite() {
        TypeConfig::run(async {
            Suite::test_all(TempStores).await.unwrap();
        });
    }

    fn log_id(term: u64, index: u64) -> LogId {
        LogId::new(
            openraft::type_config::alias::CommittedLeaderIdOf::<TypeConfig>::new_committed(term, 1),
            index,
        )
    }

    fn membership_entry(index: u64) -> Entry {
        let nodes = BTreeMap::from([(
            1u64,
            NodeInfo {
                addr: "127.0.0.1:7071".into(),
                region: "r1".into(),
                client_url: "http://127.0.0.1:7070".into(),
                blob_addr: String::new(),
            },
        )]);
        Entry::new_membership(
            log_id(1, index),
            Membership::new(vec![BTreeSet::from([1u64])], nodes).unwrap(),
        )
    }

    /// Writes `rows` into `table` directly, as `apply` would.
    fn put_rows(db: &Database, table: StateTable, rows: &[(&str, &str)]) {
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(table).unwrap();
            for (k, v) in rows {
                t.insert(k.as_bytes(), v.as_bytes()).unwrap();
            }
        }
        txn.commit().unwrap();
    }

    /// Every (table, key, value) of the state, for comparing two state machines.
    fn dump(db: &Database) -> Vec<(String, Vec<u8>, Vec<u8>)> {
        let txn = db.begin_read().unwrap();
        let mut out = Vec::new();
        for def in STATE_TABLES {
            let t = txn.open_table(*def).unwrap();
            for item in t.iter().unwrap() {
                let (k, v) = item.unwrap();
                out.push((
                    def.name().to_string(),
                    k.value().to_vec(),
                    v.value().to_vec(),
                ));
            }
        }
        out
    }

    async fn apply_entries(sm: &mut StateMachineStore, entries: Vec<Entry>) {
        let items = entries.into_iter().map(|e| Ok((e, None)));
        sm.apply(futures::stream::iter(items)).await.unwrap();
    }

    /// A command sees a membership change applied earlier in the same batch: every node
    /// decides the same, however its entries were batched. Here node 2 leaves and the version
    /// is raised right after, in one batch; node 2 never reported, so the raise applies only
    /// if the removal is visible.
    #[tokio::test]
    async fn a_command_sees_a_membership_change_earlier_in_its_batch() {
        use crate::command::{Command, Envelope, RequestId};
        let dir = tempfile::tempdir().unwrap();
        let mut sm = StateMachineStore::open(dir.path()).unwrap();
        let members = |index: u64, ids: &[u64]| {
            let nodes: BTreeMap<u64, NodeInfo> =
                ids.iter().map(|id| (*id, NodeInfo::default())).collect();
            let voters: BTreeSet<u64> = ids.iter().copied().collect();
            Entry::new_membership(
                log_id(1, index),
                Membership::new(vec![voters], nodes).unwrap(),
            )
        };
        let command = |index: u64, command: Command| {
            Entry::new_normal(
                log_id(1, index),
                Envelope {
                    version: crate::ENVELOPE_VERSION,
                    request_id: RequestId(format!("r{index}")),
                    proposer: 1,
                    actor: "test".into(),
                    timestamp_ms: 1,
                    command,
                },
            )
        };
        let version = crate::versions::SUPPORTED_CLUSTER_VERSION;
        apply_entries(
            &mut sm,
            vec![
                members(1, &[1, 2]),
                command(
                    2,
                    Command::ReportNodeVersion {
                        node_id: 1,
                        supported: version,
                    },
                ),
            ],
        )
        .await;
        apply_entries(
            &mut sm,
            vec![
                members(3, &[1]),
                command(4, Command::SetClusterVersion { version }),
            ],
        )
        .await;
        let txn = sm.db().begin_read().unwrap();
        assert_eq!(crate::versions::cluster_version(&txn).unwrap(), version);
    }

    /// A checkpoint sees exactly the state after its index, even inside one applied batch.
    #[tokio::test]
    async fn checkpoints_see_the_state_at_their_index() {
        let dir = tempfile::tempdir().unwrap();
        let (sink, mut taken) = tokio::sync::mpsc::channel(4);
        let mut sm = StateMachineStore::open(dir.path())
            .unwrap()
            .with_checkpoints(Checkpoints { every: 10, sink });
        let mut entries = vec![membership_entry(1)];
        entries.extend((2..=25).map(|i| Entry::new_blank(log_id(1, i))));
        apply_entries(&mut sm, entries).await;
        let mut seen = Vec::new();
        while let Ok((index, txn)) = taken.try_recv() {
            let (applied, _) = crate::query::state_hash(&txn).unwrap();
            assert_eq!(
                applied,
                Some(index),
                "the checkpoint's state is at its index"
            );
            seen.push(index);
        }
        assert_eq!(seen, vec![10, 20]);
    }

    #[tokio::test]
    async fn snapshot_round_trips_every_table_and_survives_restart() {
        let leader_dir = tempfile::tempdir().unwrap();
        let mut leader = StateMachineStore::open(leader_dir.path()).unwrap();
        apply_entries(
            &mut leader,
            vec![membership_entry(1), Entry::new_blank(log_id(1, 2))],
        )
        .await;
        put_rows(&leader.db(), REPOS, &[("alpha", "{}"), ("beta", "{}")]);
        // A value bigger than a chunk forces several chunks.
        let big = "x".repeat(CHUNK_TARGET + 10);
        put_rows(
            &leader.db(),
            TAGS,
            &[("alpha\0latest", "sha"), ("big", &big)],
        );

        let snap = leader
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        assert_eq!(snap.meta.last_log_id, Some(log_id(1, 2)));

        // The follower starts with state of its own that the snapshot must replace.
        let follower_dir = tempfile::tempdir().unwrap();
        let mut follower = StateMachineStore::open(follower_dir.path()).unwrap();
        put_rows(&follower.db(), REPOS, &[("stale", "{}")]);
        let db_before = follower.db();
        follower
            .install_snapshot(&snap.meta, snap.snapshot)
            .await
            .unwrap();
        assert_eq!(dump(&follower.db()), dump(&leader.db()));
        assert!(
            Arc::ptr_eq(&db_before, &follower.db()),
            "the database handle must never be swapped"
        );
        let (applied, membership) = follower.applied_state().await.unwrap();
        assert_eq!(applied, Some(log_id(1, 2)));
        assert_eq!(membership.log_id(), &Some(log_id(1, 1)));

        // Both snapshots are on disk and come back after a restart.
        drop((leader, follower, db_before));
        for dir in [&leader_dir, &follower_dir] {
            let mut sm = StateMachineStore::open(dir.path()).unwrap();
            let current = sm.get_current_snapshot().await.unwrap().unwrap();
            assert_eq!(current.meta, snap.meta);
        }
    }

    #[tokio::test]
    async fn corrupt_snapshot_is_refused_and_state_is_untouched() {
        let leader_dir = tempfile::tempdir().unwrap();
        let mut leader = StateMachineStore::open(leader_dir.path()).unwrap();
        apply_entries(&mut leader, vec![membership_entry(1)]).await;
        put_rows(&leader.db(), REPOS, &[("alpha", "{}")]);
        let snap = leader
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let mut bytes = Vec::new();
        snap.snapshot.into_file().read_to_end(&mut bytes).unwrap();

        let follower_dir = tempfile::tempdir().unwrap();
        let mut follower = StateMachineStore::open(follower_dir.path()).unwrap();
        put_rows(&follower.db(), REPOS, &[("mine", "{}")]);
        let before = dump(&follower.db());

        // Flip one byte in turn: in the records (CRC), and in the trailer (sha256).
        let positions = [bytes.len() - 40, bytes.len() - 1];
        for pos in positions {
            let mut bad = bytes.clone();
            bad[pos] ^= 0xff;
            let path = follower_dir.path().join("incoming");
            std::fs::write(&path, &bad).unwrap();
            let data = SnapshotFile::from_file(File::open(&path).unwrap());
            let err = follower
                .install_snapshot(&snap.meta, data)
                .await
                .unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
            assert_eq!(
                dump(&follower.db()),
                before,
                "a refused snapshot must leave the state alone"
            );
            assert!(follower.get_current_snapshot().await.unwrap().is_none());
        }
    }

    #[tokio::test]
    async fn apply_records_last_applied_and_membership_durably() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut sm = StateMachineStore::open(dir.path()).unwrap();
            apply_entries(
                &mut sm,
                vec![Entry::new_blank(log_id(1, 1)), membership_entry(2)],
            )
            .await;
        }
        let mut sm = StateMachineStore::open(dir.path()).unwrap();
        let (applied, membership) = sm.applied_state().await.unwrap();
        assert_eq!(applied, Some(log_id(1, 2)));
        assert_eq!(membership.log_id(), &Some(log_id(1, 2)));
        assert_eq!(
            membership.membership().voter_ids().collect::<Vec<_>>(),
            vec![1]
        );
    }
}
