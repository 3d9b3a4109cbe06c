//! The raft log of the metadata group, in one redb file.
//!
//! ```text
//! <dir>/log.redb
//!   log_entries  <log index u64>                    -> 0x01 ++ json Entry
//!   log_meta     "vote" | "committed" | "last_purged" -> 0x01 ++ json value
//! ```
//!
//! Every value starts with a one-byte encoding version ([`ENCODING_V1`]); a reader that meets a
//! version it does not know fails instead of guessing.
//!
//! Every write is one redb transaction committed with [`Durability::Immediate`] (fsync'd before
//! `commit` returns). An `append` writes all the entries openraft hands it in one transaction, so
//! the entries of many concurrent proposals share one fsync, and its [`IOFlushed`] callback is
//! called only after that commit is on disk. redb work is blocking, so it runs on tokio's
//! blocking pool; the store itself is a cheap handle (`Arc<Database>`) that doubles as the
//! [`RaftLogReader`] handed to replication tasks, which read through MVCC read transactions
//! concurrently with the single writer.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::raft_types::{Entry, LogId, TypeConfig, Vote};

/// The version byte in front of every value this module writes.
pub const ENCODING_V1: u8 = 1;

const LOG_ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("log_entries");
const LOG_META: TableDefinition<&str, &[u8]> = TableDefinition::new("log_meta");

const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_LAST_PURGED: &str = "last_purged";

/// Why the log store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum LogStoreError {
    /// The directory could not be created.
    #[error("cannot create raft log directory {path}: {source}")]
    CreateDir { path: String, source: io::Error },
    /// redb refused to open or initialise the file.
    #[error("cannot open raft log {path}: {source}")]
    Open { path: String, source: redb::Error },
}

/// The redb-backed raft log store; also its own [`RaftLogReader`].
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    /// Opens (creating if needed) `<dir>/log.redb`.
    pub fn open(dir: &Path) -> Result<Self, LogStoreError> {
        std::fs::create_dir_all(dir).map_err(|source| LogStoreError::CreateDir {
            path: dir.display().to_string(),
            source,
        })?;
        let path = dir.join("log.redb");
        let open_err = |source: redb::Error| LogStoreError::Open {
            path: path.display().to_string(),
            source,
        };
        let db = Database::create(&path).map_err(|e| open_err(e.into()))?;
        // Create the tables up front so read transactions never meet a missing table.
        let init = || -> Result<(), redb::Error> {
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            txn.open_table(LOG_ENTRIES)?;
            txn.open_table(LOG_META)?;
            txn.commit()?;
            Ok(())
        };
        init().map_err(open_err)?;
        // redb fsyncs the file's bytes, not its name: the entries `log.redb` in `dir` and `dir`
        // in its parent are durable only once both directories are fsync'd (power-loss test).
        sync_dir_and_parent(dir).map_err(|source| LogStoreError::CreateDir {
            path: dir.display().to_string(),
            source,
        })?;
        Ok(LogStore { db: Arc::new(db) })
    }

    /// How many handles (clones) of this store are alive, this one included. The file closes
    /// when the last one is dropped, so an in-process restart stops raft, waits until its own
    /// handle is the only one left, and drops it before opening the directory again.
    pub fn handle_count(&self) -> usize {
        Arc::strong_count(&self.db)
    }

    /// Runs blocking redb work on tokio's blocking pool.
    async fn blocking<T, F>(&self, f: F) -> Result<T, io::Error>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, io::Error> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|e| io::Error::other(format!("raft log task failed: {e}")))?
    }

    /// Writes one meta value in its own durable transaction.
    async fn put_meta<T: Serialize>(&self, key: &'static str, value: &T) -> Result<(), io::Error> {
        let bytes = encode(value)?;
        self.blocking(move |db| {
            let txn = begin_durable_write(db)?;
            {
                let mut meta = txn.open_table(LOG_META).map_err(storage)?;
                meta.insert(key, bytes.as_slice()).map_err(storage)?;
            }
            txn.commit().map_err(storage)
        })
        .await
    }

    /// Reads one meta value.
    async fn get_meta<T: DeserializeOwned + Send + 'static>(
        &self,
        key: &'static str,
    ) -> Result<Option<T>, io::Error> {
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(storage)?;
            let meta = txn.open_table(LOG_META).map_err(storage)?;
            read_meta(&meta, key)
        })
        .await
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let bounds: (Bound<u64>, Bound<u64>) =
            (range.start_bound().cloned(), range.end_bound().cloned());
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(storage)?;
            let table = txn.open_table(LOG_ENTRIES).map_err(storage)?;
            let mut out = Vec::new();
            for item in table.range::<u64>(bounds).map_err(storage)? {
                let (index, value) = item.map_err(storage)?;
                let entry: Entry = decode(value.value()).map_err(|e| {
                    io::Error::new(e.kind(), format!("raft log entry {}: {e}", index.value()))
                })?;
                out.push(entry);
            }
            Ok(out)
        })
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.get_meta(KEY_VOTE).await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        self.blocking(|db| {
            let txn = db.begin_read().map_err(storage)?;
            let meta = txn.open_table(LOG_META).map_err(storage)?;
            let last_purged_log_id: Option<LogId> = read_meta(&meta, KEY_LAST_PURGED)?;
            let entries = txn.open_table(LOG_ENTRIES).map_err(storage)?;
            let last_log_id = match entries.last().map_err(storage)? {
                Some((_, value)) => {
                    let entry: Entry = decode(value.value())?;
                    Some(entry.log_id)
                }
                None => last_purged_log_id,
            };
            Ok(LogState {
                last_purged_log_id,
                last_log_id,
            })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.put_meta(KEY_VOTE, vote).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        self.put_meta(KEY_COMMITTED, &committed).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self
            .get_meta::<Option<LogId>>(KEY_COMMITTED)
            .await?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let encoded = entries
            .into_iter()
            .map(|entry| Ok((entry.log_id.index, encode(&entry)?)))
            .collect::<Result<Vec<_>, io::Error>>()?;
        // The commit fsyncs before returning, so the entries are both readable (required when
        // `append` returns) and durable (required before the callback) at the same moment.
        let result = self
            .blocking(move |db| {
                let txn = begin_durable_write(db)?;
                {
                    let mut table = txn.open_table(LOG_ENTRIES).map_err(storage)?;
                    for (index, bytes) in &encoded {
                        table.insert(*index, bytes.as_slice()).map_err(storage)?;
                    }
                }
                txn.commit().map_err(storage)
            })
            .await;
        match result {
            Ok(()) => {
                callback.io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.io_completed(Err(io::Error::new(e.kind(), e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let first_removed = last_log_id.map(|id| id.index + 1).unwrap_or(0);
        self.blocking(move |db| {
            let txn = begin_durable_write(db)?;
            {
                let mut table = txn.open_table(LOG_ENTRIES).map_err(storage)?;
                table
                    .retain_in::<u64, _>(first_removed.., |_, _| false)
                    .map_err(storage)?;
            }
            txn.commit().map_err(storage)
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let bytes = encode(&Some(log_id))?;
        let upto = log_id.index;
        self.blocking(move |db| {
            let txn = begin_durable_write(db)?;
            {
                // Record the purge point first (same transaction): the log never appears to
                // start later than it does.
                let mut meta = txn.open_table(LOG_META).map_err(storage)?;
                meta.insert(KEY_LAST_PURGED, bytes.as_slice())
                    .map_err(storage)?;
                let mut table = txn.open_table(LOG_ENTRIES).map_err(storage)?;
                table
                    .retain_in::<u64, _>(..=upto, |_, _| false)
                    .map_err(storage)?;
            }
            txn.commit().map_err(storage)
        })
        .await
    }
}

/// Starts a write transaction that is fsync'd on commit.
fn begin_durable_write(db: &Database) -> Result<redb::WriteTransaction, io::Error> {
    let mut txn = db.begin_write().map_err(storage)?;
    txn.set_durability(Durability::Immediate).map_err(storage)?;
    Ok(txn)
}

/// Reads and decodes one meta value from an open table.
fn read_meta<T: DeserializeOwned>(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<T>, io::Error> {
    match meta.get(key).map_err(storage)? {
        Some(value) => decode(value.value()).map(Some),
        None => Ok(None),
    }
}

/// Encodes `value` as [`ENCODING_V1`] followed by its JSON.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, io::Error> {
    let mut out = vec![ENCODING_V1];
    serde_json::to_writer(&mut out, value)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok(out)
}

/// Decodes a value written by [`encode`]; an unknown version is an error, never a guess.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, io::Error> {
    match bytes.split_first() {
        Some((&ENCODING_V1, json)) => {
            serde_json::from_slice(json).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
        }
        Some((version, _)) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unknown encoding version {version}"),
        )),
        None => Err(io::Error::new(io::ErrorKind::InvalidData, "empty record")),
    }
}

/// fsyncs `dir` and its parent, so that the entries in `dir` and `dir` itself survive a power
/// cut.
pub(crate) fn sync_dir_and_parent(dir: &Path) -> Result<(), io::Error> {
    std::fs::File::open(dir)?.sync_all()?;
    match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => std::fs::File::open(parent)?.sync_all(),
        _ => Ok(()),
    }
}

/// Turns any redb error into an `io::Error` (openraft's storage error currency).
pub(crate) fn storage(e: impl Into<redb::Error>) -> io::Error {
    io::Error::other(e.into())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn decode_rejects_unknown_version() {
        let mut bytes = encode(&42u64).unwrap();
        assert_eq!(decode::<u64>(&bytes).unwrap(), 42);
        bytes[0] = 2;
        let err = decode::<u64>(&bytes).unwrap_err();
        assert!(
            err.to_string().contains("unknown encoding version 2"),
            "{err}"
        );
        assert!(decode::<u64>(&[]).is_err());
    }

    #[tokio::test]
    async fn log_survives_reopen() {
        use openraft::entry::RaftEntry;
        use openraft::vote::RaftLeaderIdExt;

        let dir = tempfile::tempdir().unwrap();
        let leader =
            openraft::type_config::alias::CommittedLeaderIdOf::<TypeConfig>::new_committed(1, 7);
        {
            let mut store = LogStore::open(dir.path()).unwrap();
            let entries = (1..=3).map(|i| Entry::new_blank(LogId::new(leader, i)));
            store.append(entries, IOFlushed::noop()).await.unwrap();
            store
                .save_committed(Some(LogId::new(leader, 2)))
                .await
                .unwrap();
        }
        let mut store = LogStore::open(dir.path()).unwrap();
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, Some(LogId::new(leader, 3)));
        assert_eq!(state.last_purged_log_id, None);
        assert_eq!(
            store.read_committed().await.unwrap(),
            Some(LogId::new(leader, 2))
        );
        assert_eq!(store.try_get_log_entries(2..).await.unwrap().len(), 2);
    }
}
