//! The deterministic state transition: one envelope, applied inside the caller's redb write
//! transaction (the state machine applies a whole batch of entries in one transaction).
//!
//! Everything that decides whether a write is allowed — reference checks ("is this blob
//! linked in this repository?") and immutability — is decided here, against committed state,
//! never before proposing. Nothing here reads a clock, a random source, node-local config or
//! the disk outside the state machine; time comes from the envelope.

use redb::{ReadableTable, TableHandle, WriteTransaction};
use serde::{Serialize, de::DeserializeOwned};
use wharf_types::{Digest, ErrorCode, Format, ImageName, NodeId, RepoName, Tag};

use crate::command::{
    Command, CommandResult, ENVELOPE_VERSION, Envelope, ManifestPut, Outcome, Rejection,
    RepoSettings,
};
use crate::records::{
    BlobRecord, FileRecord, LinkRecord, ManifestRecord, RepoRecord, RequestRecord,
};
use crate::tables::{self, StateTable, key, prefix};

/// How many log indexes a request id is remembered for duplicate detection. Expiry is by log
/// index, never by a clock, so every node forgets the same ids at the same entry.
pub const REQUEST_RETENTION: u64 = 1_000_000;

/// A fault that must stop the node: storage failure, a corrupt record, or an entry this
/// binary cannot decode. Never skipped.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("state storage: {0}")]
    Storage(#[from] redb::Error),
    #[error("corrupt state record in {table}: {source}")]
    Corrupt {
        table: String,
        source: serde_json::Error,
    },
    #[error(
        "entry at index {index} has envelope version {version}; this binary knows up to {ENVELOPE_VERSION}"
    )]
    UnknownVersion { index: u64, version: u16 },
}

macro_rules! apply_error_from {
    ($($t:ty),*) => {$(
        impl From<$t> for ApplyError {
            fn from(e: $t) -> Self {
                ApplyError::Storage(e.into())
            }
        }
    )*};
}
apply_error_from!(redb::TableError, redb::StorageError);

type Result<T> = std::result::Result<T, ApplyError>;

/// Applies one committed entry at `log_index` inside `txn` and returns its result.
///
/// A request id seen before returns the stored result without applying again.
pub fn apply_entry(
    txn: &WriteTransaction,
    log_index: u64,
    envelope: &Envelope,
) -> Result<CommandResult> {
    if envelope.version > ENVELOPE_VERSION {
        return Err(ApplyError::UnknownVersion {
            index: log_index,
            version: envelope.version,
        });
    }
    let request_key = envelope.request_id.0.as_bytes();
    if let Some(seen) = get_json::<RequestRecord>(txn, tables::REQUESTS, request_key)? {
        return Ok(seen.result);
    }
    let ctx = Ctx {
        txn,
        now_ms: envelope.timestamp_ms,
    };
    let result = match ctx.apply(&envelope.command)? {
        Ok(outcome) => CommandResult::Ok(outcome),
        Err(rejection) => CommandResult::Rejected(rejection),
    };
    put_json(
        txn,
        tables::REQUESTS,
        request_key,
        &RequestRecord {
            log_index,
            result: result.clone(),
        },
    )?;
    let mut log = txn.open_table(tables::REQUEST_LOG)?;
    log.insert(log_index.to_be_bytes().as_slice(), request_key)?;
    expire_requests(txn, log_index)?;
    Ok(result)
}

fn expire_requests(txn: &WriteTransaction, log_index: u64) -> Result<()> {
    let Some(cutoff) = log_index.checked_sub(REQUEST_RETENTION) else {
        return Ok(());
    };
    let mut log = txn.open_table(tables::REQUEST_LOG)?;
    let mut requests = txn.open_table(tables::REQUESTS)?;
    let expired = log.extract_from_if(..cutoff.to_be_bytes().as_slice(), |_, _| true)?;
    for item in expired {
        let (_, id) = item?;
        requests.remove(id.value())?;
    }
    Ok(())
}

type Verdict = std::result::Result<Outcome, Rejection>;

struct Ctx<'a> {
    txn: &'a WriteTransaction,
    now_ms: u64,
}

impl Ctx<'_> {
    fn apply(&self, command: &Command) -> Result<Verdict> {
        match command {
            Command::CreateRepo {
                name,
                settings,
                if_absent,
            } => self.create_repo(name, settings, *if_absent),
            Command::LinkBlob {
                repo,
                digest,
                size,
                chunk_root,
                holder,
            } => self.link_blob(repo, digest, *size, chunk_root, *holder),
            Command::MountBlob { repo, from, digest } => self.mount_blob(repo, from, digest),
            Command::UnlinkBlob { repo, digest } => self.unlink_blob(repo, digest),
            Command::PutManifest(put) => self.put_manifest(put),
            Command::DeleteManifest { name, digest } => self.delete_manifest(name, digest),
            Command::DeleteTag { name, tag } => self.delete_tag(name, tag),
            Command::PutFile {
                repo,
                path,
                digest,
                size,
                chunk_root,
                holder,
            } => self.put_file(repo, path, digest, *size, chunk_root, *holder),
            Command::DeleteFile { repo, path } => self.delete_file(repo, path),
        }
    }

    fn create_repo(
        &self,
        name: &RepoName,
        settings: &RepoSettings,
        if_absent: bool,
    ) -> Result<Verdict> {
        if let Some(existing) = self.repo(name)? {
            if !if_absent {
                return Ok(Err(Rejection::new(
                    ErrorCode::RepositoryExists,
                    format!("repository {name} already exists"),
                )));
            }
            if existing.settings.format != settings.format {
                return Ok(Err(Rejection::new(
                    ErrorCode::Denied,
                    format!(
                        "repository {name} holds {} content, not {}",
                        existing.settings.format.as_str(),
                        settings.format.as_str()
                    ),
                )));
            }
            return Ok(Ok(Outcome::Unchanged));
        }
        let record = RepoRecord {
            settings: settings.clone(),
            created_ms: self.now_ms,
        };
        put_json(self.txn, tables::REPOS, name.as_str().as_bytes(), &record)?;
        Ok(Ok(Outcome::Applied))
    }

    fn link_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        size: u64,
        chunk_root: &Digest,
        holder: NodeId,
    ) -> Result<Verdict> {
        if let Err(r) = self.require_repo(repo, None)? {
            return Ok(Err(r));
        }
        self.record_blob(digest, size, chunk_root, holder)?;
        self.link(repo, digest, size)
    }

    fn mount_blob(&self, repo: &RepoName, from: &RepoName, digest: &Digest) -> Result<Verdict> {
        if let Err(r) = self.require_repo(repo, None)? {
            return Ok(Err(r));
        }
        let Some(source) = self.link_record(from, digest)? else {
            return Ok(Err(Rejection::new(
                ErrorCode::BlobUnknown,
                format!("blob {digest} is not in repository {from}"),
            )));
        };
        self.link(repo, digest, source.size)
    }

    fn unlink_blob(&self, repo: &RepoName, digest: &Digest) -> Result<Verdict> {
        let link_key = key(&[repo.as_str(), digest.hex()]);
        let mut links = self.txn.open_table(tables::BLOB_LINKS)?;
        if links.remove(link_key.as_slice())?.is_none() {
            return Ok(Err(Rejection::new(
                ErrorCode::BlobUnknown,
                format!("blob {digest} is not in repository {repo}"),
            )));
        }
        Ok(Ok(Outcome::Applied))
    }

    fn put_manifest(&self, put: &ManifestPut) -> Result<Verdict> {
        let repo_name = put.name.repo();
        let repo = match self.require_repo(&repo_name, Some(Format::Oci))? {
            Ok(repo) => repo,
            Err(r) => return Ok(Err(r)),
        };
        for blob in &put.blobs {
            if self.link_record(&repo_name, blob)?.is_none() {
                return Ok(Err(Rejection::new(
                    ErrorCode::ManifestBlobUnknown,
                    format!(
                        "manifest references blob {blob}, which is not in repository {repo_name}; push the blob first"
                    ),
                )));
            }
        }
        if !repo.settings.allow_sparse_index {
            for child in &put.manifests {
                if self.manifest(&put.name, child)?.is_none() {
                    return Ok(Err(Rejection::new(
                        ErrorCode::ManifestUnknown,
                        format!(
                            "index references manifest {child}, which is not in {}; push it first",
                            put.name
                        ),
                    )));
                }
            }
        }
        let tag_key = put
            .tag
            .as_ref()
            .map(|t| key(&[put.name.as_str(), t.as_str()]));
        let current_tag = match &tag_key {
            Some(k) => get_digest(self.txn, tables::TAGS, k)?,
            None => None,
        };
        if let (Some(tag), Some(current)) = (&put.tag, &current_tag)
            && current != &put.digest
            && repo.settings.immutable
        {
            return Ok(Err(Rejection::new(
                ErrorCode::Denied,
                format!(
                    "tag {tag} in immutable repository {repo_name} already points to {current}; it cannot be moved to {}",
                    put.digest
                ),
            )));
        }

        let mut changed = false;
        self.record_blob(&put.digest, put.size, &put.chunk_root, put.holder)?;
        if self.manifest(&put.name, &put.digest)?.is_none() {
            let record = ManifestRecord {
                media_type: put.media_type.clone(),
                size: put.size,
                blobs: put.blobs.clone(),
                manifests: put.manifests.clone(),
                subject: put.subject.clone(),
                created_ms: self.now_ms,
            };
            put_json(
                self.txn,
                tables::MANIFESTS,
                &key(&[put.name.as_str(), put.digest.hex()]),
                &record,
            )?;
            let mut images = self.txn.open_table(tables::IMAGES)?;
            images.insert(put.name.as_str().as_bytes(), [].as_slice())?;
            if let (Some(subject), Some(referrer)) = (&put.subject, &put.referrer) {
                let k = key(&[put.name.as_str(), subject.hex(), put.digest.hex()]);
                put_json(self.txn, tables::REFERRERS, &k, referrer)?;
            }
            changed = true;
        }
        if let Some(k) = &tag_key
            && current_tag.as_ref() != Some(&put.digest)
        {
            let mut tags = self.txn.open_table(tables::TAGS)?;
            tags.insert(k.as_slice(), put.digest.hex().as_bytes())?;
            changed = true;
        }
        Ok(Ok(if changed {
            Outcome::Applied
        } else {
            Outcome::Unchanged
        }))
    }

    fn delete_manifest(&self, name: &ImageName, digest: &Digest) -> Result<Verdict> {
        let repo = match self.require_repo(&name.repo(), Some(Format::Oci))? {
            Ok(repo) => repo,
            Err(r) => return Ok(Err(r)),
        };
        let Some(record) = self.manifest(name, digest)? else {
            return Ok(Err(Rejection::new(
                ErrorCode::ManifestUnknown,
                format!("manifest {digest} is not in {name}"),
            )));
        };
        let tags_prefix = prefix(&[name.as_str()]);
        let pointing: Vec<String> = {
            let tags = self.txn.open_table(tables::TAGS)?;
            let mut out = Vec::new();
            for item in tags.range(tags_prefix.as_slice()..)? {
                let (k, v) = item?;
                let Some(tag) = k.value().strip_prefix(tags_prefix.as_slice()) else {
                    break;
                };
                if v.value() == digest.hex().as_bytes() {
                    out.push(String::from_utf8_lossy(tag).into_owned());
                }
            }
            out
        };
        if repo.settings.immutable && !pointing.is_empty() {
            return Ok(Err(Rejection::new(
                ErrorCode::Denied,
                format!(
                    "manifest {digest} is tagged {} in immutable repository {}; it cannot be deleted",
                    pointing.join(", "),
                    name.repo()
                ),
            )));
        }
        {
            let mut tags = self.txn.open_table(tables::TAGS)?;
            for tag in &pointing {
                tags.remove(key(&[name.as_str(), tag]).as_slice())?;
            }
            let mut manifests = self.txn.open_table(tables::MANIFESTS)?;
            manifests.remove(key(&[name.as_str(), digest.hex()]).as_slice())?;
            if let Some(subject) = &record.subject {
                let mut referrers = self.txn.open_table(tables::REFERRERS)?;
                referrers.remove(key(&[name.as_str(), subject.hex(), digest.hex()]).as_slice())?;
            }
            let still_has_manifests = manifests
                .range(tags_prefix.as_slice()..)?
                .next()
                .transpose()?
                .is_some_and(|(k, _)| k.value().starts_with(&tags_prefix));
            if !still_has_manifests {
                let mut images = self.txn.open_table(tables::IMAGES)?;
                images.remove(name.as_str().as_bytes())?;
            }
        }
        Ok(Ok(Outcome::Applied))
    }

    fn delete_tag(&self, name: &ImageName, tag: &Tag) -> Result<Verdict> {
        let repo = match self.require_repo(&name.repo(), Some(Format::Oci))? {
            Ok(repo) => repo,
            Err(r) => return Ok(Err(r)),
        };
        let tag_key = key(&[name.as_str(), tag.as_str()]);
        if get_digest(self.txn, tables::TAGS, &tag_key)?.is_none() {
            return Ok(Err(Rejection::new(
                ErrorCode::ManifestUnknown,
                format!("tag {tag} is not in {name}"),
            )));
        }
        if repo.settings.immutable {
            return Ok(Err(Rejection::new(
                ErrorCode::Denied,
                format!(
                    "tag {tag} is in immutable repository {}; it cannot be deleted",
                    name.repo()
                ),
            )));
        }
        let mut tags = self.txn.open_table(tables::TAGS)?;
        tags.remove(tag_key.as_slice())?;
        Ok(Ok(Outcome::Applied))
    }

    fn put_file(
        &self,
        repo_name: &RepoName,
        path: &str,
        digest: &Digest,
        size: u64,
        chunk_root: &Digest,
        holder: NodeId,
    ) -> Result<Verdict> {
        let repo = match self.require_repo(repo_name, Some(Format::Generic))? {
            Ok(repo) => repo,
            Err(r) => return Ok(Err(r)),
        };
        let file_key = key(&[repo_name.as_str(), path]);
        let existing = get_json::<FileRecord>(self.txn, tables::FILES, &file_key)?;
        if let Some(existing) = &existing {
            if &existing.digest == digest {
                return Ok(Ok(Outcome::Unchanged));
            }
            if repo.settings.immutable {
                return Ok(Err(Rejection::new(
                    ErrorCode::Conflict,
                    format!(
                        "{path} in immutable repository {repo_name} already holds {}; it cannot be overwritten",
                        existing.digest
                    ),
                )));
            }
        }
        self.record_blob(digest, size, chunk_root, holder)?;
        let record = FileRecord {
            digest: digest.clone(),
            size,
            created_ms: self.now_ms,
        };
        put_json(self.txn, tables::FILES, &file_key, &record)?;
        Ok(Ok(Outcome::Applied))
    }

    fn delete_file(&self, repo_name: &RepoName, path: &str) -> Result<Verdict> {
        let repo = match self.require_repo(repo_name, Some(Format::Generic))? {
            Ok(repo) => repo,
            Err(r) => return Ok(Err(r)),
        };
        let file_key = key(&[repo_name.as_str(), path]);
        if get_json::<FileRecord>(self.txn, tables::FILES, &file_key)?.is_none() {
            return Ok(Err(Rejection::new(
                ErrorCode::NotFound,
                format!("{path} is not in repository {repo_name}"),
            )));
        }
        if repo.settings.immutable {
            return Ok(Err(Rejection::new(
                ErrorCode::Denied,
                format!("{path} is in immutable repository {repo_name}; it cannot be deleted"),
            )));
        }
        let mut files = self.txn.open_table(tables::FILES)?;
        files.remove(file_key.as_slice())?;
        Ok(Ok(Outcome::Applied))
    }

    // --- helpers over the tables

    fn repo(&self, name: &RepoName) -> Result<Option<RepoRecord>> {
        get_json(self.txn, tables::REPOS, name.as_str().as_bytes())
    }

    /// The repository, or the rejection to give when it is missing or of another format.
    fn require_repo(
        &self,
        name: &RepoName,
        format: Option<Format>,
    ) -> Result<std::result::Result<RepoRecord, Rejection>> {
        let Some(repo) = self.repo(name)? else {
            return Ok(Err(Rejection::new(
                ErrorCode::NameUnknown,
                format!("repository {name} does not exist"),
            )));
        };
        if let Some(format) = format
            && repo.settings.format != format
        {
            return Ok(Err(Rejection::new(
                ErrorCode::Denied,
                format!(
                    "repository {name} holds {} content, not {}",
                    repo.settings.format.as_str(),
                    format.as_str()
                ),
            )));
        }
        Ok(Ok(repo))
    }

    fn link_record(&self, repo: &RepoName, digest: &Digest) -> Result<Option<LinkRecord>> {
        get_json(
            self.txn,
            tables::BLOB_LINKS,
            &key(&[repo.as_str(), digest.hex()]),
        )
    }

    fn manifest(&self, name: &ImageName, digest: &Digest) -> Result<Option<ManifestRecord>> {
        get_json(
            self.txn,
            tables::MANIFESTS,
            &key(&[name.as_str(), digest.hex()]),
        )
    }

    fn link(&self, repo: &RepoName, digest: &Digest, size: u64) -> Result<Verdict> {
        if self.link_record(repo, digest)?.is_some() {
            return Ok(Ok(Outcome::Unchanged));
        }
        let record = LinkRecord {
            size,
            linked_ms: self.now_ms,
        };
        put_json(
            self.txn,
            tables::BLOB_LINKS,
            &key(&[repo.as_str(), digest.hex()]),
            &record,
        )?;
        Ok(Ok(Outcome::Applied))
    }

    fn record_blob(
        &self,
        digest: &Digest,
        size: u64,
        chunk_root: &Digest,
        holder: NodeId,
    ) -> Result<()> {
        let k = digest.hex().as_bytes();
        let mut record =
            get_json::<BlobRecord>(self.txn, tables::BLOBS, k)?.unwrap_or_else(|| BlobRecord {
                size,
                chunk_root: chunk_root.clone(),
                holders: Default::default(),
            });
        if record.holders.insert(holder) {
            put_json(self.txn, tables::BLOBS, k, &record)?;
        }
        Ok(())
    }
}

fn table_name(table: StateTable) -> String {
    table.name().to_string()
}

fn get_json<T: DeserializeOwned>(
    txn: &WriteTransaction,
    table: StateTable,
    k: &[u8],
) -> Result<Option<T>> {
    let t = txn.open_table(table)?;
    let Some(v) = t.get(k)? else { return Ok(None) };
    serde_json::from_slice(v.value())
        .map(Some)
        .map_err(|source| ApplyError::Corrupt {
            table: table_name(table),
            source,
        })
}

fn put_json<T: Serialize>(
    txn: &WriteTransaction,
    table: StateTable,
    k: &[u8],
    value: &T,
) -> Result<()> {
    let bytes = serde_json::to_vec(value).map_err(|source| ApplyError::Corrupt {
        table: table_name(table),
        source,
    })?;
    let mut t = txn.open_table(table)?;
    t.insert(k, bytes.as_slice())?;
    Ok(())
}

fn get_digest(txn: &WriteTransaction, table: StateTable, k: &[u8]) -> Result<Option<Digest>> {
    let t = txn.open_table(table)?;
    let Some(v) = t.get(k)? else { return Ok(None) };
    let text = format!("sha256:{}", String::from_utf8_lossy(v.value()));
    text.parse()
        .map(Some)
        .map_err(|e: wharf_types::DigestError| ApplyError::Corrupt {
            table: table_name(table),
            source: serde::de::Error::custom(e),
        })
}
