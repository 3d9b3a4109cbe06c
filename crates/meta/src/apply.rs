//! The deterministic state transition: one envelope, applied inside the caller's redb write
//! transaction (the state machine applies a whole batch of entries in one transaction).
//!
//! Everything that decides whether a write is allowed — reference checks ("is this blob
//! linked in this repository?") and immutability — is decided here, against committed state,
//! never before proposing. Nothing here reads a clock, a random source, node-local config or
//! the disk outside the state machine; time comes from the envelope.

use std::collections::BTreeSet;

use redb::{ReadableTable, TableHandle, WriteTransaction};
use serde::{Serialize, de::DeserializeOwned};
use wharf_types::planted::{self, PlantedBug};
use wharf_types::{Digest, ErrorCode, Format, ImageName, NodeId, RepoName, Tag};

use crate::command::{
    Command, CommandResult, ENVELOPE_VERSION, Envelope, HeldBlob, ManifestPut, Outcome, Rejection,
    ReplicationPolicy, RepoSettings,
};
use crate::records::{
    BlobRecord, FileRecord, JoinTokenRecord, LinkRecord, ManifestRecord, RepoRecord, RequestRecord,
};
use crate::tables::{self, StateTable, key, prefix};

/// How many log indexes a request id is remembered for duplicate detection. Expiry is by log
/// index, never by a clock, so every node forgets the same ids at the same entry.
pub const REQUEST_RETENTION: u64 = 1_000_000;

/// The id `wharf cluster init` gives the first node; joining nodes get ids after it.
pub const FIRST_NODE_ID: NodeId = 1;
const FIRST_MINTED_NODE_ID: NodeId = FIRST_NODE_ID + 1;
const JOIN_TOKEN_KEY: &str = "join_token";
const NEXT_NODE_ID_KEY: &[u8] = b"next_node_id";

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
    #[error(
        "entry at index {index} raises the cluster version to {version}; this binary supports up \
         to {}: install a newer wharf",
        crate::versions::SUPPORTED_CLUSTER_VERSION
    )]
    UnsupportedClusterVersion { index: u64, version: u32 },
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
    // planted bug drop-request-dedup: a retried entry is applied again (deterministic as long
    // as every node plants the same bug)
    if !planted::active(PlantedBug::DropRequestDedup)
        && let Some(seen) = get_json::<RequestRecord>(txn, tables::REQUESTS, request_key)?
    {
        return Ok(seen.result);
    }
    let ctx = Ctx {
        txn,
        now_ms: envelope.timestamp_ms,
        log_index,
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

pub(crate) struct Ctx<'a> {
    pub(crate) txn: &'a WriteTransaction,
    pub(crate) now_ms: u64,
    log_index: u64,
}

impl Ctx<'_> {
    fn apply(&self, command: &Command) -> Result<Verdict> {
        if let Some(rejection) = crate::versions::gate(self.txn, command)? {
            return Ok(Err(rejection));
        }
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
            Command::CreateJoinToken {
                token_sha256,
                expires_at_ms,
            } => self.create_join_token(token_sha256, *expires_at_ms),
            Command::AdmitNode {
                token_sha256,
                addr,
                region,
                supported_version,
            } => self.admit_node(token_sha256, addr, region, *supported_version),
            Command::ReportNodeVersion { node_id, supported } => {
                crate::versions::report_node_version(self.txn, *node_id, *supported)
            }
            Command::SetClusterVersion { version } => {
                crate::versions::set_cluster_version(self.txn, self.log_index, *version)
            }
            Command::ReportStateHash {
                node_id,
                index,
                sha256,
            } => crate::versions::report_state_hash(self.txn, *node_id, *index, sha256),
            Command::HoldingsChanged {
                node_id,
                added,
                removed,
            } => self.holdings_changed(*node_id, added, removed),
            Command::PublishPackage(publish) => self.publish_package(publish),
            Command::UpdatePackage(update) => self.update_package(update),
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
        if let Some(bad) = settings
            .regions
            .iter()
            .find_map(|r| crate::command::check_region_name(r).err())
        {
            return Ok(Err(Rejection::new(ErrorCode::BadRequest, bad)));
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
        let settings = match self.require_repo(repo, None)? {
            Ok(record) => record.settings,
            Err(r) => return Ok(Err(r)),
        };
        self.record_blob(digest, size, chunk_root, holder, residency(&settings))?;
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
        let record = match self.require_repo(repo, Some(Format::Oci))? {
            Ok(record) => record,
            Err(r) => return Ok(Err(r)),
        };
        if record.settings.immutable {
            // Its tagged manifests may need this blob forever.
            return Ok(Err(Rejection::new(
                ErrorCode::Denied,
                format!("blobs cannot be deleted from immutable repository {repo}"),
            )));
        }
        let link_key = key(&[repo.as_str(), &digest.to_string()]);
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
                    // The spec: a manifest rejected for missing references gets
                    // MANIFEST_BLOB_UNKNOWN, child manifests included.
                    return Ok(Err(Rejection::new(
                        ErrorCode::ManifestBlobUnknown,
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
        self.record_blob(
            &put.digest,
            put.size,
            &put.chunk_root,
            put.holder,
            residency(&repo.settings),
        )?;
        self.note_placement(&repo_name, &put.digest)?;
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
                &key(&[put.name.as_str(), &put.digest.to_string()]),
                &record,
            )?;
            let mut images = self.txn.open_table(tables::IMAGES)?;
            images.insert(put.name.as_str().as_bytes(), [].as_slice())?;
            if let (Some(subject), Some(referrer)) = (&put.subject, &put.referrer) {
                let k = key(&[
                    put.name.as_str(),
                    &subject.to_string(),
                    &put.digest.to_string(),
                ]);
                put_json(self.txn, tables::REFERRERS, &k, referrer)?;
            }
            changed = true;
        }
        if let Some(k) = &tag_key
            && current_tag.as_ref() != Some(&put.digest)
        {
            let mut tags = self.txn.open_table(tables::TAGS)?;
            tags.insert(k.as_slice(), put.digest.to_string().as_bytes())?;
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
        let digest_text = digest.to_string();
        let pointing: Vec<String> = {
            let tags = self.txn.open_table(tables::TAGS)?;
            let mut out = Vec::new();
            for item in tags.range(tags_prefix.as_slice()..)? {
                let (k, v) = item?;
                let Some(tag) = k.value().strip_prefix(tags_prefix.as_slice()) else {
                    break;
                };
                if v.value() == digest_text.as_bytes() {
                    out.push(String::from_utf8_lossy(tag).into_owned());
                }
            }
            out
        };
        if repo.settings.immutable
            && let Some(parent) = self.manifest_referencing(name, digest)?
        {
            return Ok(Err(Rejection::new(
                ErrorCode::Denied,
                format!(
                    "manifest {digest} is part of {parent} in immutable repository {}; it cannot be deleted",
                    name.repo()
                ),
            )));
        }
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
            manifests.remove(key(&[name.as_str(), &digest_text]).as_slice())?;
            if let Some(subject) = &record.subject {
                let mut referrers = self.txn.open_table(tables::REFERRERS)?;
                referrers
                    .remove(key(&[name.as_str(), &subject.to_string(), &digest_text]).as_slice())?;
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
        self.record_blob(digest, size, chunk_root, holder, residency(&repo.settings))?;
        self.note_placement(repo_name, digest)?;
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

    fn create_join_token(&self, token_sha256: &str, expires_at_ms: u64) -> Result<Verdict> {
        let token_key = key(&[JOIN_TOKEN_KEY, token_sha256]);
        if get_json::<JoinTokenRecord>(self.txn, tables::CLUSTER, &token_key)?.is_some() {
            return Ok(Ok(Outcome::Unchanged));
        }
        let record = JoinTokenRecord {
            expires_at_ms,
            used_by: None,
        };
        put_json(self.txn, tables::CLUSTER, &token_key, &record)?;
        Ok(Ok(Outcome::Applied))
    }

    /// Consumes a join token and mints the next node id. Ids only ever grow, so a removed or
    /// wiped node can never come back under its old id (DESIGN.md §1.8).
    fn admit_node(
        &self,
        token_sha256: &str,
        addr: &str,
        region: &str,
        supported_version: u32,
    ) -> Result<Verdict> {
        let token_key = key(&[JOIN_TOKEN_KEY, token_sha256]);
        let refused = |why: &str| {
            Ok(Err(Rejection::new(
                ErrorCode::Unauthorized,
                format!(
                    "join token refused: {why}; create a new one with `wharf cluster join-token`"
                ),
            )))
        };
        let Some(mut token) = get_json::<JoinTokenRecord>(self.txn, tables::CLUSTER, &token_key)?
        else {
            return refused("unknown token");
        };
        if token.used_by.is_some() {
            return refused("already used");
        }
        if self.now_ms > token.expires_at_ms {
            return refused("expired");
        }
        let running = crate::versions::cluster_version_in(self.txn)?;
        let supported = supported_version.max(crate::versions::BASE_CLUSTER_VERSION);
        if supported < running {
            // The token stays unused: the same node may retry with a newer binary.
            return Ok(Err(Rejection::new(
                ErrorCode::Unsupported,
                format!(
                    "the joining node's wharf supports cluster version {supported}, the cluster \
                     runs {running}: install a newer wharf on it"
                ),
            )));
        }
        let next = get_json::<NodeId>(self.txn, tables::CLUSTER, NEXT_NODE_ID_KEY)?
            .unwrap_or(FIRST_MINTED_NODE_ID);
        put_json(self.txn, tables::CLUSTER, NEXT_NODE_ID_KEY, &(next + 1))?;
        token.used_by = Some(next);
        put_json(self.txn, tables::CLUSTER, &token_key, &token)?;
        tracing::info!(node_id = next, addr, region, "join token consumed");
        Ok(Ok(Outcome::NodeAdmitted { node_id: next }))
    }

    // --- helpers over the tables

    fn repo(&self, name: &RepoName) -> Result<Option<RepoRecord>> {
        get_json(self.txn, tables::REPOS, name.as_str().as_bytes())
    }

    /// The repository, or the rejection to give when it is missing or of another format.
    pub(crate) fn require_repo(
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
            &key(&[repo.as_str(), &digest.to_string()]),
        )
    }

    fn manifest(&self, name: &ImageName, digest: &Digest) -> Result<Option<ManifestRecord>> {
        get_json(
            self.txn,
            tables::MANIFESTS,
            &key(&[name.as_str(), &digest.to_string()]),
        )
    }

    /// Another manifest under `name` that lists `digest` as a child (an index), if any.
    fn manifest_referencing(&self, name: &ImageName, digest: &Digest) -> Result<Option<Digest>> {
        let manifests_prefix = prefix(&[name.as_str()]);
        let manifests = self.txn.open_table(tables::MANIFESTS)?;
        for item in manifests.range(manifests_prefix.as_slice()..)? {
            let (k, v) = item?;
            let Some(parent) = k.value().strip_prefix(manifests_prefix.as_slice()) else {
                break;
            };
            let record: ManifestRecord =
                serde_json::from_slice(v.value()).map_err(|source| ApplyError::Corrupt {
                    table: "manifests".into(),
                    source,
                })?;
            if record.manifests.contains(digest) {
                let parent = String::from_utf8_lossy(parent).parse().map_err(
                    |e: wharf_types::DigestError| ApplyError::Corrupt {
                        table: "manifests".into(),
                        source: serde::de::Error::custom(e),
                    },
                )?;
                return Ok(Some(parent));
            }
        }
        Ok(None)
    }

    fn link(&self, repo: &RepoName, digest: &Digest, size: u64) -> Result<Verdict> {
        self.note_placement(repo, digest)?;
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
            &key(&[repo.as_str(), &digest.to_string()]),
            &record,
        )?;
        Ok(Ok(Outcome::Applied))
    }

    /// Records a node's own holdings. A node outside the configuration holds nothing that
    /// counts: its report changes nothing. A blob first heard of here (a copy pushed before its
    /// upload was committed) gets its record, without any repository link.
    fn holdings_changed(
        &self,
        node_id: NodeId,
        added: &[HeldBlob],
        removed: &[Digest],
    ) -> Result<Verdict> {
        let members = crate::versions::membership_from_meta(self.txn)?;
        if members.is_some_and(|m| !m.contains(&node_id)) {
            return Ok(Ok(Outcome::Unchanged));
        }
        // A copy pushed before its upload is committed creates the record; from cluster version
        // 4 it starts placed nowhere (the first repository to link it places it), so that a
        // residency-pinned upload's record never opens it to every region. Older versions
        // placed it anywhere; the version keeps every member's state identical.
        let unplaced = (crate::versions::cluster_version_in(self.txn)? >= 4).then(BTreeSet::new);
        let mut changed = false;
        for blob in added {
            let existing = get_json::<BlobRecord>(
                self.txn,
                tables::BLOBS,
                blob.digest.to_string().as_bytes(),
            )?;
            if existing.is_some_and(|r| r.size != blob.size || r.chunk_root != blob.chunk_root) {
                // Not the committed bytes: such a copy could never serve a fetch.
                continue;
            }
            changed |= self.record_blob(
                &blob.digest,
                blob.size,
                &blob.chunk_root,
                node_id,
                unplaced.clone(),
            )?;
        }
        for digest in removed {
            let text = digest.to_string();
            let k = text.as_bytes();
            if let Some(mut record) = get_json::<BlobRecord>(self.txn, tables::BLOBS, k)?
                && record.holders.remove(&node_id)
            {
                put_json(self.txn, tables::BLOBS, k, &record)?;
                changed = true;
            }
        }
        Ok(Ok(if changed {
            Outcome::Applied
        } else {
            Outcome::Unchanged
        }))
    }

    /// A blob linked into `repo`: if the repository wants copies everywhere, so does the blob;
    /// its residency widens to the repository's regions (or to anywhere, for a repository
    /// without residency).
    pub(crate) fn note_placement(&self, repo: &RepoName, digest: &Digest) -> Result<()> {
        let Some(settings) = self.repo(repo)?.map(|r| r.settings) else {
            return Ok(());
        };
        let text = digest.to_string();
        let k = text.as_bytes();
        let Some(mut record) = get_json::<BlobRecord>(self.txn, tables::BLOBS, k)? else {
            return Ok(());
        };
        let mut changed = false;
        if settings.replication == ReplicationPolicy::AllRegions && record.on_demand {
            record.on_demand = false;
            changed = true;
        }
        if let Some(regions) = &mut record.regions {
            if settings.regions.is_empty() {
                record.regions = None;
                changed = true;
            } else if !settings.regions.is_subset(regions) {
                regions.extend(settings.regions.iter().cloned());
                changed = true;
            }
        }
        if changed {
            put_json(self.txn, tables::BLOBS, k, &record)?;
        }
        Ok(())
    }

    /// Adds `holder` to a blob's holders (creating its record, with `regions` as its residency);
    /// whether anything changed.
    pub(crate) fn record_blob(
        &self,
        digest: &Digest,
        size: u64,
        chunk_root: &Digest,
        holder: NodeId,
        regions: Option<BTreeSet<String>>,
    ) -> Result<bool> {
        let text = digest.to_string();
        let k = text.as_bytes();
        let mut record =
            get_json::<BlobRecord>(self.txn, tables::BLOBS, k)?.unwrap_or_else(|| BlobRecord {
                size,
                chunk_root: chunk_root.clone(),
                holders: Default::default(),
                // Until a repository that wants copies everywhere links it.
                on_demand: true,
                regions,
            });
        if record.holders.insert(holder) {
            put_json(self.txn, tables::BLOBS, k, &record)?;
            return Ok(true);
        }
        Ok(false)
    }
}

/// The residency a repository gives a blob it is the first to record: its regions, or anywhere.
pub(crate) fn residency(settings: &RepoSettings) -> Option<BTreeSet<String>> {
    (!settings.regions.is_empty()).then(|| settings.regions.clone())
}

fn table_name(table: StateTable) -> String {
    table.name().to_string()
}

pub(crate) fn get_json<T: DeserializeOwned>(
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

pub(crate) fn put_json<T: Serialize>(
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
    String::from_utf8_lossy(v.value())
        .parse()
        .map(Some)
        .map_err(|e: wharf_types::DigestError| ApplyError::Corrupt {
            table: table_name(table),
            source: serde::de::Error::custom(e),
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    //! Each test pins one guarantee of DESIGN.md §1 that `apply` is responsible for.

    use redb::{Database, ReadableDatabase};

    use super::*;
    use crate::command::{ManifestPut, RequestId};

    pub(crate) struct Sm {
        pub(crate) db: Database,
        index: u64,
        _dir: tempfile::TempDir,
    }

    pub(crate) fn digest(n: u8) -> Digest {
        Digest::from_sha256_bytes(&[n; 32])
    }

    impl Sm {
        pub(crate) fn new() -> Sm {
            let dir = tempfile::tempdir().unwrap();
            let db = Database::create(dir.path().join("state.redb")).unwrap();
            Sm {
                db,
                index: 0,
                _dir: dir,
            }
        }

        fn apply_as(&mut self, request_id: &str, command: Command) -> CommandResult {
            self.index += 1;
            let envelope = Envelope {
                version: ENVELOPE_VERSION,
                request_id: RequestId(request_id.to_string()),
                proposer: 1,
                actor: "test".into(),
                timestamp_ms: 1_000 + self.index,
                command,
            };
            let txn = self.db.begin_write().unwrap();
            let result = apply_entry(&txn, self.index, &envelope).unwrap();
            txn.commit().unwrap();
            result
        }

        pub(crate) fn apply(&mut self, command: Command) -> CommandResult {
            let id = format!("req-{}", self.index + 1);
            self.apply_as(&id, command)
        }

        fn repo(&mut self, name: &str, format: Format, immutable: bool, sparse: bool) {
            let settings = RepoSettings {
                format,
                immutable,
                allow_sparse_index: sparse,
                consistency: crate::command::Consistency::Strong,
                replication: Default::default(),
                regions: Default::default(),
                allow_unpublish: false,
            };
            let r = self.apply(Command::CreateRepo {
                name: RepoName::new(name).unwrap(),
                settings,
                if_absent: false,
            });
            assert_eq!(r, CommandResult::Ok(Outcome::Applied));
        }

        fn link(&mut self, repo: &str, d: &Digest) -> CommandResult {
            self.apply(Command::LinkBlob {
                repo: RepoName::new(repo).unwrap(),
                digest: d.clone(),
                size: 10,
                chunk_root: d.clone(),
                holder: 1,
            })
        }

        fn put(
            &mut self,
            name: &str,
            tag: Option<&str>,
            d: &Digest,
            blobs: &[Digest],
            children: &[Digest],
        ) -> CommandResult {
            self.apply(Command::PutManifest(ManifestPut {
                name: ImageName::new(name).unwrap(),
                tag: tag.map(|t| Tag::new(t).unwrap()),
                digest: d.clone(),
                media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                size: 100,
                blobs: blobs.to_vec(),
                manifests: children.to_vec(),
                subject: None,
                referrer: None,
                chunk_root: d.clone(),
                holder: 1,
            }))
        }

        fn dump(&self) -> Vec<(String, Vec<u8>, Vec<u8>)> {
            let txn = self.db.begin_read().unwrap();
            let mut out = Vec::new();
            for table in tables::STATE_TABLES {
                let Ok(t) = txn.open_table(*table) else {
                    continue;
                };
                for item in t.iter().unwrap() {
                    let (k, v) = item.unwrap();
                    out.push((
                        table.name().to_string(),
                        k.value().to_vec(),
                        v.value().to_vec(),
                    ));
                }
            }
            out
        }
    }

    fn rejected(r: &CommandResult, code: ErrorCode) -> bool {
        matches!(r, CommandResult::Rejected(rej) if rej.code == code.as_str())
    }

    #[test]
    fn immutable_tags_bind_once_and_cannot_be_deleted() {
        let mut sm = Sm::new();
        sm.repo("prod", Format::Oci, true, false);
        let (a, b, layer) = (digest(1), digest(2), digest(9));
        sm.link("prod", &layer);
        assert_eq!(
            sm.put(
                "prod/app",
                Some("v1"),
                &a,
                std::slice::from_ref(&layer),
                &[]
            ),
            CommandResult::Ok(Outcome::Applied)
        );
        // same content again: idempotent success
        assert_eq!(
            sm.put(
                "prod/app",
                Some("v1"),
                &a,
                std::slice::from_ref(&layer),
                &[]
            ),
            CommandResult::Ok(Outcome::Unchanged)
        );
        // other content: refused, and the binding is untouched
        let moved = sm.put(
            "prod/app",
            Some("v1"),
            &b,
            std::slice::from_ref(&layer),
            &[],
        );
        assert!(rejected(&moved, ErrorCode::Denied), "{moved:?}");
        let name = ImageName::new("prod/app").unwrap();
        let r = sm.apply(Command::DeleteTag {
            name: name.clone(),
            tag: Tag::new("v1").unwrap(),
        });
        assert!(rejected(&r, ErrorCode::Denied));
        let r = sm.apply(Command::DeleteManifest {
            name: name.clone(),
            digest: a.clone(),
        });
        assert!(rejected(&r, ErrorCode::Denied));
        let r = sm.apply(Command::UnlinkBlob {
            repo: RepoName::new("prod").unwrap(),
            digest: layer.clone(),
        });
        assert!(
            rejected(&r, ErrorCode::Denied),
            "a tagged image's layer cannot be unlinked"
        );
        let txn = sm.db.begin_read().unwrap();
        assert_eq!(crate::query::tag(&txn, &name, "v1").unwrap(), Some(a));
    }

    #[test]
    fn children_of_an_index_in_an_immutable_repository_cannot_be_deleted() {
        let mut sm = Sm::new();
        sm.repo("prod", Format::Oci, true, false);
        let (child, index, layer) = (digest(1), digest(2), digest(9));
        sm.link("prod", &layer);
        sm.put("prod/app", None, &child, std::slice::from_ref(&layer), &[]);
        sm.put(
            "prod/app",
            Some("v1"),
            &index,
            &[],
            std::slice::from_ref(&child),
        );
        let name = ImageName::new("prod/app").unwrap();
        let r = sm.apply(Command::DeleteManifest {
            name,
            digest: child,
        });
        assert!(rejected(&r, ErrorCode::Denied), "{r:?}");
    }

    #[test]
    fn mutable_tags_move_and_delete() {
        let mut sm = Sm::new();
        sm.repo("dev", Format::Oci, false, false);
        let (a, b, layer) = (digest(1), digest(2), digest(9));
        sm.link("dev", &layer);
        sm.put(
            "dev/app",
            Some("latest"),
            &a,
            std::slice::from_ref(&layer),
            &[],
        );
        assert_eq!(
            sm.put(
                "dev/app",
                Some("latest"),
                &b,
                std::slice::from_ref(&layer),
                &[]
            ),
            CommandResult::Ok(Outcome::Applied)
        );
        let name = ImageName::new("dev/app").unwrap();
        assert_eq!(
            crate::query::tag(&sm.db.begin_read().unwrap(), &name, "latest").unwrap(),
            Some(b.clone())
        );
        let r = sm.apply(Command::DeleteManifest {
            name: name.clone(),
            digest: b,
        });
        assert_eq!(r, CommandResult::Ok(Outcome::Applied));
        assert_eq!(
            crate::query::tag(&sm.db.begin_read().unwrap(), &name, "latest").unwrap(),
            None
        );
    }

    #[test]
    fn manifests_may_reference_only_blobs_linked_in_their_repository() {
        let mut sm = Sm::new();
        sm.repo("a", Format::Oci, false, false);
        sm.repo("b", Format::Oci, false, false);
        let layer = digest(7);
        sm.link("b", &layer);
        // linked in b, not in a: knowing the digest grants nothing (§1.9)
        let r = sm.put(
            "a/app",
            Some("v1"),
            &digest(1),
            std::slice::from_ref(&layer),
            &[],
        );
        assert!(rejected(&r, ErrorCode::ManifestBlobUnknown), "{r:?}");
        let r = sm.apply(Command::MountBlob {
            repo: RepoName::new("a").unwrap(),
            from: RepoName::new("a").unwrap(),
            digest: layer.clone(),
        });
        assert!(rejected(&r, ErrorCode::BlobUnknown));
        let r = sm.apply(Command::MountBlob {
            repo: RepoName::new("a").unwrap(),
            from: RepoName::new("b").unwrap(),
            digest: layer.clone(),
        });
        assert_eq!(r, CommandResult::Ok(Outcome::Applied));
        assert_eq!(
            sm.put("a/app", Some("v1"), &digest(1), &[layer], &[]),
            CommandResult::Ok(Outcome::Applied)
        );
    }

    #[test]
    fn index_children_must_exist_unless_sparse() {
        let mut sm = Sm::new();
        sm.repo("strict", Format::Oci, false, false);
        sm.repo("sparse", Format::Oci, false, true);
        let child = digest(5);
        let r = sm.put(
            "strict/app",
            Some("multi"),
            &digest(6),
            &[],
            std::slice::from_ref(&child),
        );
        assert!(rejected(&r, ErrorCode::ManifestBlobUnknown));
        let r = sm.put("sparse/app", Some("multi"), &digest(6), &[], &[child]);
        assert_eq!(r, CommandResult::Ok(Outcome::Applied));
    }

    #[test]
    fn a_retried_request_applies_once_and_returns_the_first_result() {
        let mut sm = Sm::new();
        let settings = RepoSettings {
            format: Format::Oci,
            immutable: false,
            allow_sparse_index: false,
            consistency: crate::command::Consistency::Strong,
            replication: Default::default(),
            regions: Default::default(),
            allow_unpublish: false,
        };
        let create = Command::CreateRepo {
            name: RepoName::new("r").unwrap(),
            settings,
            if_absent: false,
        };
        assert_eq!(
            sm.apply_as("same", create.clone()),
            CommandResult::Ok(Outcome::Applied)
        );
        // the retry of the same request sees the stored result, not "already exists"
        assert_eq!(
            sm.apply_as("same", create.clone()),
            CommandResult::Ok(Outcome::Applied)
        );
        // a different request does see the conflict
        assert!(rejected(
            &sm.apply_as("other", create),
            ErrorCode::RepositoryExists
        ));
    }

    #[test]
    fn generic_paths_in_immutable_repositories_never_change() {
        let mut sm = Sm::new();
        sm.repo("files", Format::Generic, true, false);
        let put = |d: Digest| Command::PutFile {
            repo: RepoName::new("files").unwrap(),
            path: "a/b.txt".into(),
            digest: d.clone(),
            size: 3,
            chunk_root: d,
            holder: 1,
        };
        assert_eq!(
            sm.apply(put(digest(1))),
            CommandResult::Ok(Outcome::Applied)
        );
        assert_eq!(
            sm.apply(put(digest(1))),
            CommandResult::Ok(Outcome::Unchanged)
        );
        assert!(rejected(&sm.apply(put(digest(2))), ErrorCode::Conflict));
        let del = Command::DeleteFile {
            repo: RepoName::new("files").unwrap(),
            path: "a/b.txt".into(),
        };
        assert!(rejected(&sm.apply(del), ErrorCode::Denied));
    }

    #[test]
    fn apply_is_deterministic() {
        let run = || {
            let mut sm = Sm::new();
            sm.repo("r", Format::Oci, false, false);
            sm.link("r", &digest(3));
            sm.put("r/x", Some("t1"), &digest(1), &[digest(3)], &[]);
            sm.put("r/x", Some("t2"), &digest(1), &[digest(3)], &[]);
            sm.apply(Command::DeleteTag {
                name: ImageName::new("r/x").unwrap(),
                tag: Tag::new("t1").unwrap(),
            });
            sm.dump()
        };
        let (a, b) = (run(), run());
        assert!(!a.is_empty());
        assert_eq!(a, b);
    }

    #[test]
    fn unknown_envelope_versions_stop_the_node() {
        let sm = Sm::new();
        let envelope = Envelope {
            version: ENVELOPE_VERSION + 1,
            request_id: RequestId("x".into()),
            proposer: 1,
            actor: "t".into(),
            timestamp_ms: 0,
            command: Command::DeleteTag {
                name: ImageName::new("a/b").unwrap(),
                tag: Tag::new("t").unwrap(),
            },
        };
        let txn = sm.db.begin_write().unwrap();
        assert!(matches!(
            apply_entry(&txn, 1, &envelope),
            Err(ApplyError::UnknownVersion { .. })
        ));
    }

    #[test]
    fn sha512_digests_are_keys_of_their_own() {
        let mut sm = Sm::new();
        sm.repo("r", Format::Oci, false, false);
        // The same hex under sha256 and sha512: two different blobs and manifests.
        let d512 = |n: u8| Digest::from_sha512_bytes(&[n; 64]);
        let (layer, m256, m512) = (d512(9), digest(1), d512(1));
        assert_eq!(m256.hex(), &m512.hex()[..64]);
        sm.link("r", &layer);
        let name = ImageName::new("r/x").unwrap();
        let txn = sm.db.begin_read().unwrap();
        let repo = RepoName::new("r").unwrap();
        assert!(
            crate::query::blob_link(&txn, &repo, &layer)
                .unwrap()
                .is_some()
        );
        assert!(crate::query::blob(&txn, &layer).unwrap().is_some());
        let same_hex_256 = Digest::from_sha256_bytes(&[9; 32]);
        assert!(
            crate::query::blob_link(&txn, &repo, &same_hex_256)
                .unwrap()
                .is_none()
        );
        drop(txn);

        let r = sm.put("r/x", Some("a"), &m512, std::slice::from_ref(&layer), &[]);
        assert_eq!(r, CommandResult::Ok(Outcome::Applied));
        let r = sm.put("r/x", Some("b"), &m256, std::slice::from_ref(&layer), &[]);
        assert_eq!(r, CommandResult::Ok(Outcome::Applied));
        let txn = sm.db.begin_read().unwrap();
        assert_eq!(
            crate::query::tag(&txn, &name, "a").unwrap(),
            Some(m512.clone())
        );
        assert_eq!(
            crate::query::tag(&txn, &name, "b").unwrap(),
            Some(m256.clone())
        );
        assert!(
            crate::query::manifest(&txn, &name, &m512)
                .unwrap()
                .is_some()
        );
        drop(txn);

        // Deleting the sha512 manifest drops its tag only.
        let r = sm.apply(Command::DeleteManifest {
            name: name.clone(),
            digest: m512.clone(),
        });
        assert_eq!(r, CommandResult::Ok(Outcome::Applied));
        let txn = sm.db.begin_read().unwrap();
        assert_eq!(crate::query::tag(&txn, &name, "a").unwrap(), None);
        assert_eq!(
            crate::query::tag(&txn, &name, "b").unwrap(),
            Some(m256.clone())
        );
        assert!(
            crate::query::manifest(&txn, &name, &m512)
                .unwrap()
                .is_none()
        );
        assert!(
            crate::query::manifest(&txn, &name, &m256)
                .unwrap()
                .is_some()
        );
    }

    /// §1.8: node ids are minted once and never reused; a join token admits one node, and not
    /// after it expired (by command time).
    #[test]
    fn join_tokens_mint_fresh_node_ids_once() {
        let mut sm = Sm::new();
        let admit = |token: &str| Command::AdmitNode {
            token_sha256: token.into(),
            addr: "127.0.0.1:7171".into(),
            region: "eu-west".into(),
            supported_version: crate::versions::SUPPORTED_CLUSTER_VERSION,
        };
        let create = |token: &str, expires_at_ms| Command::CreateJoinToken {
            token_sha256: token.into(),
            expires_at_ms,
        };
        let refused = |r: CommandResult| match r {
            CommandResult::Rejected(r) => assert_eq!(r.code, ErrorCode::Unauthorized.as_str()),
            other => panic!("expected a refusal, got {other:?}"),
        };

        refused(sm.apply(admit("never-created")));
        assert_eq!(
            sm.apply(create("t1", u64::MAX)),
            CommandResult::Ok(Outcome::Applied)
        );
        assert_eq!(
            sm.apply(create("t2", u64::MAX)),
            CommandResult::Ok(Outcome::Applied)
        );
        assert_eq!(
            sm.apply(admit("t1")),
            CommandResult::Ok(Outcome::NodeAdmitted { node_id: 2 })
        );
        refused(sm.apply(admit("t1")));
        assert_eq!(
            sm.apply(admit("t2")),
            CommandResult::Ok(Outcome::NodeAdmitted { node_id: 3 })
        );
        // Expired: the envelope's timestamp (command time) is past the token's expiry.
        sm.apply(create("t3", 0));
        refused(sm.apply(admit("t3")));
        // A retry of an admission with the same request id gets the same id, not a new one.
        sm.apply(create("t4", u64::MAX));
        let first = sm.apply_as("join-retry", admit("t4"));
        assert_eq!(
            first,
            CommandResult::Ok(Outcome::NodeAdmitted { node_id: 4 })
        );
        assert_eq!(sm.apply_as("join-retry", admit("t4")), first);
    }

    pub(crate) fn set_members(sm: &Sm, ids: &[u64]) {
        use std::collections::{BTreeMap, BTreeSet};
        let nodes: BTreeMap<u64, crate::raft_types::NodeInfo> = ids
            .iter()
            .map(|id| (*id, crate::raft_types::NodeInfo::default()))
            .collect();
        let membership =
            openraft::Membership::new(vec![ids.iter().copied().collect::<BTreeSet<_>>()], nodes)
                .unwrap();
        let stored = crate::raft_types::StoredMembership::new(None, membership);
        let txn = sm.db.begin_write().unwrap();
        {
            let mut meta = txn.open_table(tables::SM_META).unwrap();
            meta.insert(
                b"membership".as_slice(),
                crate::log_store::encode(&stored).unwrap().as_slice(),
            )
            .unwrap();
        }
        txn.commit().unwrap();
    }

    fn rejected_with(result: CommandResult, code: ErrorCode) -> String {
        match result {
            CommandResult::Rejected(r) => {
                assert_eq!(r.code, code.as_str(), "{}", r.message);
                r.message
            }
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    /// A blob is fetched by every node once a repository that wants copies everywhere links it;
    /// linked only into `on-demand` repositories (or not yet linked), it is not.
    #[test]
    fn placement_follows_the_repositories_that_link_a_blob() {
        let mut sm = Sm::new();
        sm.repo("eager", Format::Oci, false, false);
        let settings = RepoSettings {
            format: Format::Oci,
            immutable: false,
            allow_sparse_index: false,
            consistency: crate::command::Consistency::Strong,
            replication: ReplicationPolicy::OnDemand,
            regions: Default::default(),
            allow_unpublish: false,
        };
        sm.apply(Command::CreateRepo {
            name: RepoName::new("lazy").unwrap(),
            settings,
            if_absent: false,
        });
        let on_demand = |sm: &Sm, d: &Digest| {
            let txn = sm.db.begin_read().unwrap();
            crate::query::blob(&txn, d).unwrap().unwrap().on_demand
        };
        sm.link("lazy", &digest(1));
        assert!(
            on_demand(&sm, &digest(1)),
            "only an on-demand repository links it"
        );
        sm.link("eager", &digest(1));
        assert!(
            !on_demand(&sm, &digest(1)),
            "an all-regions repository links it too"
        );
        sm.link("eager", &digest(2));
        assert!(!on_demand(&sm, &digest(2)));
    }

    /// Raises the cluster version to the newest this binary supports, as `members` report it.
    fn raise_cluster_version(sm: &mut Sm, members: &[NodeId]) {
        for &node_id in members {
            sm.apply(Command::ReportNodeVersion {
                node_id,
                supported: crate::versions::SUPPORTED_CLUSTER_VERSION,
            });
        }
        sm.apply(Command::SetClusterVersion {
            version: crate::versions::SUPPORTED_CLUSTER_VERSION,
        });
    }

    /// Data residency: a blob first recorded by a pinned repository may be stored only in its
    /// regions — also when a copy pushed before the commit created its record; linking it into
    /// another pinned repository widens it to both, into one without residency to anywhere.
    /// A pinned repository needs cluster version 4 and region names.
    #[test]
    fn residency_follows_the_repositories_that_link_a_blob() {
        let mut sm = Sm::new();
        set_members(&sm, &[1, 2]);
        let create = |name: &str, regions: &[&str]| Command::CreateRepo {
            name: RepoName::new(name).unwrap(),
            settings: RepoSettings {
                format: Format::Oci,
                immutable: false,
                allow_sparse_index: false,
                consistency: crate::command::Consistency::Strong,
                replication: ReplicationPolicy::AllRegions,
                regions: regions.iter().map(|r| r.to_string()).collect(),
                allow_unpublish: false,
            },
            if_absent: false,
        };
        rejected_with(sm.apply(create("eu", &["eu-west"])), ErrorCode::Unsupported);
        raise_cluster_version(&mut sm, &[1, 2]);
        rejected_with(sm.apply(create("bad", &["eu west"])), ErrorCode::BadRequest);
        for (name, regions) in [
            ("eu", &["eu-west"][..]),
            ("us", &["us-east"]),
            ("open", &[]),
        ] {
            assert_eq!(
                sm.apply(create(name, regions)),
                CommandResult::Ok(Outcome::Applied)
            );
        }
        let regions = |sm: &Sm, d: &Digest| {
            let txn = sm.db.begin_read().unwrap();
            let record = crate::query::blob(&txn, d).unwrap().unwrap();
            (
                record
                    .regions
                    .clone()
                    .map(|r| r.into_iter().collect::<Vec<_>>()),
                record.stores_in("eu-west"),
                record.stores_in("ap-south"),
            )
        };
        // A copy pushed to node 2 before the upload is committed: placed nowhere yet.
        sm.apply(Command::HoldingsChanged {
            node_id: 2,
            added: vec![HeldBlob {
                digest: digest(1),
                size: 10,
                chunk_root: digest(1),
            }],
            removed: Vec::new(),
        });
        assert_eq!(regions(&sm, &digest(1)), (Some(vec![]), false, false));
        sm.link("eu", &digest(1));
        let eu = Some(vec!["eu-west".to_string()]);
        assert_eq!(regions(&sm, &digest(1)), (eu.clone(), true, false));
        sm.link("us", &digest(1));
        let both = Some(vec!["eu-west".to_string(), "us-east".to_string()]);
        assert_eq!(regions(&sm, &digest(1)), (both, true, false));
        sm.link("open", &digest(1));
        assert_eq!(regions(&sm, &digest(1)), (None, true, true));

        sm.link("eu", &digest(2));
        assert_eq!(regions(&sm, &digest(2)), (eu, true, false));
        sm.link("open", &digest(3));
        sm.link("eu", &digest(3));
        assert_eq!(
            regions(&sm, &digest(3)),
            (None, true, true),
            "already anywhere"
        );
    }

    /// Holdings (DESIGN.md §1.2): a node adds and removes only its own; a blob first heard of
    /// through a holding gets a record without any link; a non-member's report changes nothing.
    #[test]
    fn holdings_change_only_for_members() {
        let mut sm = Sm::new();
        set_members(&sm, &[1, 2]);
        let early = Command::HoldingsChanged {
            node_id: 1,
            added: Vec::new(),
            removed: vec![digest(7)],
        };
        rejected_with(sm.apply(early), ErrorCode::Unsupported);
        raise_cluster_version(&mut sm, &[1, 2]);
        let held = HeldBlob {
            digest: digest(7),
            size: 5,
            chunk_root: digest(8),
        };
        let change =
            |node_id, added: Vec<HeldBlob>, removed: Vec<Digest>| Command::HoldingsChanged {
                node_id,
                added,
                removed,
            };
        let holders = |sm: &Sm| {
            let txn = sm.db.begin_read().unwrap();
            crate::query::blob(&txn, &digest(7))
                .unwrap()
                .map(|r| r.holders.into_iter().collect::<Vec<_>>())
        };
        assert_eq!(
            sm.apply(change(2, vec![held.clone()], vec![])),
            CommandResult::Ok(Outcome::Applied)
        );
        assert_eq!(holders(&sm), Some(vec![2]));
        assert_eq!(
            sm.apply(change(2, vec![held.clone()], vec![])),
            CommandResult::Ok(Outcome::Unchanged)
        );
        assert_eq!(
            sm.apply(change(9, vec![held.clone()], vec![])),
            CommandResult::Ok(Outcome::Unchanged),
            "node 9 is not a member"
        );
        sm.apply(change(1, vec![held], vec![]));
        assert_eq!(holders(&sm), Some(vec![1, 2]));
        sm.apply(change(2, vec![], vec![digest(7)]));
        assert_eq!(holders(&sm), Some(vec![1]));
        let txn = sm.db.begin_read().unwrap();
        let (all, more) = crate::query::blobs_after(&txn, None, 10).unwrap();
        assert_eq!((all.len(), more), (1, false));
        let after = digest(7).to_string();
        assert!(
            crate::query::blobs_after(&txn, Some(&after), 10)
                .unwrap()
                .0
                .is_empty()
        );
    }

    /// §1.1: a new command kind is used only after a committed cluster version allows it, and
    /// the version rises only once every member reported supporting it.
    #[test]
    fn new_command_kinds_wait_for_the_cluster_version() {
        use crate::versions::{self, SUPPORTED_CLUSTER_VERSION};
        let mut sm = Sm::new();
        set_members(&sm, &[1, 2]);
        let report = |node_id, sha: &str| Command::ReportStateHash {
            node_id,
            index: 100,
            sha256: sha.into(),
        };
        let message = rejected_with(sm.apply(report(1, "aa")), ErrorCode::Unsupported);
        assert!(message.contains("cluster version 2"), "{message}");

        let raise = Command::SetClusterVersion {
            version: SUPPORTED_CLUSTER_VERSION,
        };
        sm.apply(Command::ReportNodeVersion {
            node_id: 1,
            supported: SUPPORTED_CLUSTER_VERSION,
        });
        let message = rejected_with(sm.apply(raise.clone()), ErrorCode::Conflict);
        assert!(message.contains("node 2"), "{message}");
        sm.apply(Command::ReportNodeVersion {
            node_id: 2,
            supported: SUPPORTED_CLUSTER_VERSION,
        });
        assert_eq!(sm.apply(raise.clone()), CommandResult::Ok(Outcome::Applied));
        assert_eq!(sm.apply(raise), CommandResult::Ok(Outcome::Unchanged));
        let txn = sm.db.begin_read().unwrap();
        assert_eq!(
            versions::cluster_version(&txn).unwrap(),
            SUPPORTED_CLUSTER_VERSION
        );
        drop(txn);

        // A node whose binary is older than the running version cannot be admitted.
        sm.apply(Command::CreateJoinToken {
            token_sha256: "t".into(),
            expires_at_ms: u64::MAX,
        });
        let old_joiner = Command::AdmitNode {
            token_sha256: "t".into(),
            addr: "127.0.0.1:1".into(),
            region: "r".into(),
            supported_version: 1,
        };
        rejected_with(sm.apply(old_joiner), ErrorCode::Unsupported);

        // A version beyond what this binary supports, which every member reported supporting
        // (this binary was swapped for an older one), stops the node instead of being applied;
        // while a member has not reported it, it is rejected like on every other node.
        let too_new = SUPPORTED_CLUSTER_VERSION + 1;
        let early = sm.apply(Command::SetClusterVersion { version: too_new });
        rejected_with(early, ErrorCode::Conflict);
        for node_id in [1, 2] {
            sm.apply(Command::ReportNodeVersion {
                node_id,
                supported: too_new,
            });
        }
        let envelope = Envelope {
            version: ENVELOPE_VERSION,
            request_id: RequestId("too-new".into()),
            proposer: 1,
            actor: "test".into(),
            timestamp_ms: 1,
            command: Command::SetClusterVersion { version: too_new },
        };
        let txn = sm.db.begin_write().unwrap();
        assert!(matches!(
            apply_entry(&txn, 99, &envelope),
            Err(ApplyError::UnsupportedClusterVersion { .. })
        ));
    }

    /// §1.1: state hashes reported for the same index are compared; the first disagreement is
    /// recorded for every node to see.
    #[test]
    fn state_hash_reports_are_compared() {
        use crate::versions::{self, SUPPORTED_CLUSTER_VERSION};
        let mut sm = Sm::new();
        set_members(&sm, &[1]);
        sm.apply(Command::ReportNodeVersion {
            node_id: 1,
            supported: SUPPORTED_CLUSTER_VERSION,
        });
        sm.apply(Command::SetClusterVersion {
            version: SUPPORTED_CLUSTER_VERSION,
        });
        let report = |node_id, index, sha: &str| Command::ReportStateHash {
            node_id,
            index,
            sha256: sha.into(),
        };
        for index in 1..=20 {
            sm.apply(report(1, index * 10, "same"));
            sm.apply(report(2, index * 10, "same"));
        }
        let txn = sm.db.begin_read().unwrap();
        let kept = versions::checkpoints(&txn).unwrap();
        assert_eq!(kept.len(), 16, "only the newest checkpoints are kept");
        assert_eq!(kept.last().unwrap().index, 200);
        assert_eq!(kept[0].hashes.len(), 2);
        assert_eq!(versions::divergence(&txn).unwrap(), None);
        drop(txn);

        sm.apply(report(1, 210, "mine"));
        sm.apply(report(3, 210, "theirs"));
        let txn = sm.db.begin_read().unwrap();
        let divergence = versions::divergence(&txn)
            .unwrap()
            .expect("divergence recorded");
        assert_eq!(divergence.index, 210);
        assert_eq!(
            divergence.hashes.get(&3).map(String::as_str),
            Some("theirs")
        );
    }
}
