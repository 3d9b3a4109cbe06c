//! Reads of the state machine, each inside the caller's redb read transaction so a request sees
//! one consistent state. Whether a read may be served locally or needs a read barrier first is
//! the registry's decision (DESIGN.md §1.5); these functions only read.

use redb::{ReadOnlyTable, ReadTransaction};
use serde::de::DeserializeOwned;
use wharf_types::{Digest, ImageName, RepoName};

use crate::command::ReferrerDescriptor;
use crate::handle::MetaError;
use crate::records::{BlobRecord, FileRecord, LinkRecord, ManifestRecord, RepoRecord};
use crate::tables::{self, StateTable, key, prefix};

type Result<T> = std::result::Result<T, MetaError>;

/// Opens a table; a table that was never written reads as empty (`None`).
fn open(
    txn: &ReadTransaction,
    table: StateTable,
) -> Result<Option<ReadOnlyTable<&'static [u8], &'static [u8]>>> {
    match txn.open_table(table) {
        Ok(t) => Ok(Some(t)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn get_raw(txn: &ReadTransaction, table: StateTable, k: &[u8]) -> Result<Option<Vec<u8>>> {
    let Some(t) = open(txn, table)? else {
        return Ok(None);
    };
    Ok(t.get(k)?.map(|v| v.value().to_vec()))
}

pub(crate) fn get_json<T: DeserializeOwned>(
    txn: &ReadTransaction,
    table: StateTable,
    k: &[u8],
) -> Result<Option<T>> {
    match get_raw(txn, table, k)? {
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| MetaError::Fatal(format!("corrupt state record: {e}"))),
        None => Ok(None),
    }
}

fn parse_digest(bytes: &[u8]) -> Result<Digest> {
    String::from_utf8_lossy(bytes)
        .parse()
        .map_err(|e| MetaError::Fatal(format!("corrupt digest in state: {e}")))
}

/// Entries of a listing (key with the prefix stripped, raw value) and whether more follow.
pub(crate) type Listing = (Vec<(String, Vec<u8>)>, bool);

/// Lists keys (with the prefix stripped) and values under `prefix`, strictly after `after`,
/// at most `limit`; the flag says whether more entries follow.
pub(crate) fn list_under(
    txn: &ReadTransaction,
    table: StateTable,
    key_prefix: &[u8],
    after: Option<&str>,
    limit: usize,
) -> Result<Listing> {
    let Some(t) = open(txn, table)? else {
        return Ok((Vec::new(), false));
    };
    let mut start = key_prefix.to_vec();
    if let Some(after) = after {
        start.extend_from_slice(after.as_bytes());
    }
    let mut out = Vec::new();
    for item in t.range(start.as_slice()..)? {
        let (k, v) = item?;
        let Some(rest) = k.value().strip_prefix(key_prefix) else {
            break;
        };
        let name = String::from_utf8_lossy(rest).into_owned();
        if after.is_some_and(|a| name.as_str() <= a) {
            continue;
        }
        if out.len() == limit {
            return Ok((out, true));
        }
        out.push((name, v.value().to_vec()));
    }
    Ok((out, false))
}

/// A repository's record.
pub fn repo(txn: &ReadTransaction, name: &RepoName) -> Result<Option<RepoRecord>> {
    get_json(txn, tables::REPOS, name.as_str().as_bytes())
}

/// Every repository, in name order.
pub fn repos(txn: &ReadTransaction) -> Result<Vec<(String, RepoRecord)>> {
    let (items, _) = list_under(txn, tables::REPOS, b"", None, usize::MAX)?;
    items
        .into_iter()
        .map(|(name, bytes)| {
            serde_json::from_slice(&bytes)
                .map(|r| (name, r))
                .map_err(|e| MetaError::Fatal(format!("corrupt repository record: {e}")))
        })
        .collect()
}

/// The blob's link into `repo`, if it is visible there (DESIGN.md §1.9).
pub fn blob_link(
    txn: &ReadTransaction,
    repo: &RepoName,
    digest: &Digest,
) -> Result<Option<LinkRecord>> {
    get_json(
        txn,
        tables::BLOB_LINKS,
        &key(&[repo.as_str(), &digest.to_string()]),
    )
}

/// The blob's global record (size, chunk root, holders).
pub fn blob(txn: &ReadTransaction, digest: &Digest) -> Result<Option<BlobRecord>> {
    get_json(txn, tables::BLOBS, digest.to_string().as_bytes())
}

/// Up to `limit` blob records after `after` (a digest string), in digest order, and whether
/// more follow: for walking every blob in pages (replication, anti-entropy).
pub fn blobs_after(
    txn: &ReadTransaction,
    after: Option<&str>,
    limit: usize,
) -> Result<(Vec<(Digest, BlobRecord)>, bool)> {
    let (items, more) = list_under(txn, tables::BLOBS, b"", after, limit)?;
    let records = items
        .into_iter()
        .map(|(text, bytes)| {
            let digest = parse_digest(text.as_bytes())?;
            let record = serde_json::from_slice(&bytes)
                .map_err(|e| MetaError::Fatal(format!("corrupt blob record: {e}")))?;
            Ok((digest, record))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((records, more))
}

/// A manifest stored under `name`.
pub fn manifest(
    txn: &ReadTransaction,
    name: &ImageName,
    digest: &Digest,
) -> Result<Option<ManifestRecord>> {
    get_json(
        txn,
        tables::MANIFESTS,
        &key(&[name.as_str(), &digest.to_string()]),
    )
}

/// The digest a tag points to.
pub fn tag(txn: &ReadTransaction, name: &ImageName, tag: &str) -> Result<Option<Digest>> {
    get_raw(txn, tables::TAGS, &key(&[name.as_str(), tag]))?
        .map(|text| parse_digest(&text))
        .transpose()
}

/// Tags of `name` in byte order, strictly after `last`, at most `limit`; true if more follow.
pub fn tags(
    txn: &ReadTransaction,
    name: &ImageName,
    last: Option<&str>,
    limit: usize,
) -> Result<(Vec<String>, bool)> {
    let (items, more) = list_under(txn, tables::TAGS, &prefix(&[name.as_str()]), last, limit)?;
    Ok((items.into_iter().map(|(t, _)| t).collect(), more))
}

/// Whether any manifest was ever stored under `name` (and not all deleted).
pub fn image_exists(txn: &ReadTransaction, name: &ImageName) -> Result<bool> {
    Ok(get_raw(txn, tables::IMAGES, name.as_str().as_bytes())?.is_some())
}

/// Image names in byte order, strictly after `last`, at most `limit`; true if more follow.
pub fn catalog(
    txn: &ReadTransaction,
    last: Option<&str>,
    limit: usize,
) -> Result<(Vec<String>, bool)> {
    let (items, more) = list_under(txn, tables::IMAGES, b"", last, limit)?;
    Ok((items.into_iter().map(|(n, _)| n).collect(), more))
}

/// Manifests under `name` whose `subject` is `subject`, in referrer-digest order.
pub fn referrers(
    txn: &ReadTransaction,
    name: &ImageName,
    subject: &Digest,
) -> Result<Vec<ReferrerDescriptor>> {
    let (items, _) = list_under(
        txn,
        tables::REFERRERS,
        &prefix(&[name.as_str(), &subject.to_string()]),
        None,
        usize::MAX,
    )?;
    items
        .into_iter()
        .map(|(_, bytes)| {
            serde_json::from_slice(&bytes)
                .map_err(|e| MetaError::Fatal(format!("corrupt referrer record: {e}")))
        })
        .collect()
}

/// The file bound at `path` in a generic repository.
pub fn file(txn: &ReadTransaction, repo: &RepoName, path: &str) -> Result<Option<FileRecord>> {
    get_json(txn, tables::FILES, &key(&[repo.as_str(), path]))
}

/// Files whose path starts with `dir` (`""` for all), in path order, at most `limit`.
pub fn files_under(
    txn: &ReadTransaction,
    repo: &RepoName,
    dir: &str,
    limit: usize,
) -> Result<Vec<(String, FileRecord)>> {
    let mut p = prefix(&[repo.as_str()]);
    p.extend_from_slice(dir.as_bytes());
    let (items, _) = list_under(txn, tables::FILES, &p, None, limit)?;
    items
        .into_iter()
        .map(|(rest, bytes)| {
            serde_json::from_slice(&bytes)
                .map(|r| (format!("{dir}{rest}"), r))
                .map_err(|e| MetaError::Fatal(format!("corrupt file record: {e}")))
        })
        .collect()
}

/// A hash of the whole state (every table, every key and value, in order) and the log index it
/// was applied up to, from one read transaction. Nodes at the same applied index must report
/// the same hash (DESIGN.md §1.1).
pub fn state_hash(txn: &ReadTransaction) -> Result<(Option<u64>, String)> {
    use redb::{ReadableTable, ReadableTableMetadata, TableHandle};
    use sha2::{Digest as _, Sha256};

    let mut hasher = Sha256::new();
    for table in tables::STATE_TABLES {
        let Some(t) = open(txn, *table)? else {
            continue;
        };
        if tables::left_out_when_empty(*table) && t.is_empty()? {
            continue;
        }
        let name = table.name().as_bytes();
        hasher.update((name.len() as u64).to_be_bytes());
        hasher.update(name);
        for item in t.iter()? {
            let (k, v) = item?;
            hasher.update((k.value().len() as u64).to_be_bytes());
            hasher.update(k.value());
            hasher.update((v.value().len() as u64).to_be_bytes());
            hasher.update(v.value());
        }
    }
    let applied = match get_raw(txn, tables::SM_META, b"last_applied")? {
        Some(bytes) => crate::log_store::decode::<Option<crate::raft_types::LogId>>(&bytes)
            .map_err(|e| MetaError::Fatal(format!("sm_meta/last_applied: {e}")))?
            .map(|id| id.index),
        None => None,
    };
    Ok((applied, hex::encode(hasher.finalize())))
}
