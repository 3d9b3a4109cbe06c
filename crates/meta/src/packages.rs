//! Packages (npm, PyPI, Cargo): the versions of a named package in a repository, each with its
//! files (blobs) and the metadata its format keeps, plus the package's few mutable facts:
//! dist-tags, deprecations, yanks, owners and unpublish tombstones. Index documents (packuments,
//! simple pages, sparse-index lines) are generated from these records by the format crates,
//! never stored as uploaded (DESIGN.md §4 "Publish").
//!
//! Names and versions arrive already in their format's canonical *key* form (PEP 503
//! normalisation, Cargo's case- and `-`/`_`-insensitive name, a version without build metadata);
//! the records keep the spelling the publisher used for display.
//!
//! ```text
//! packages          <repo> 0x00 <package key>                      -> json PackageRecord
//! package_versions  <repo> 0x00 <package key> 0x00 <version key>   -> json VersionRecord
//! ```
//!
//! Versions are immutable in every package repository (DESIGN.md §1.3): a version (npm, Cargo)
//! or a filename (PyPI) binds once; the same bytes again are an idempotent success, other bytes
//! a conflict; an unpublished version stays reserved forever.

use std::collections::{BTreeMap, BTreeSet};

use redb::ReadTransaction;
use serde::{Deserialize, Serialize};
use wharf_types::{Digest, ErrorCode, Format, NodeId, RepoName};

use crate::apply::{ApplyError, Ctx, get_json, put_json, residency};
use crate::command::{Outcome, Rejection};
use crate::handle::MetaError;
use crate::tables::{self, key, prefix};

/// One file of a version, stored as a blob before the publish is proposed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedFile {
    pub filename: String,
    /// sha256 of the file (its blob).
    pub digest: Digest,
    pub size: u64,
    pub chunk_root: Digest,
    /// What the format keeps about this file for its index (PyPI: requires-python, the core
    /// metadata's digest; npm: integrity and shasum).
    #[serde(default)]
    pub facts: serde_json::Value,
}

/// How a publish binds a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VersionBinding {
    /// The version is published once, with all its files (npm, Cargo).
    Whole,
    /// Files are added one at a time; each filename binds once (PyPI).
    AddFiles,
}

/// A publish: bind a version (or more files of it) of a package to stored blobs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackagePublish {
    pub repo: RepoName,
    pub format: Format,
    /// The package's canonical key.
    pub package: String,
    /// The name as published.
    pub name: String,
    /// The version's canonical key.
    pub version_key: String,
    /// The version as published.
    pub version: String,
    pub files: Vec<PublishedFile>,
    /// The node that stored the files.
    pub holder: NodeId,
    /// The version's metadata as its format keeps it (kept from the first publish of a
    /// version that gets files one by one).
    pub metadata: serde_json::Value,
    pub binding: VersionBinding,
    /// Dist-tags (tag → version key) set along with a new version (npm `latest`).
    #[serde(default)]
    pub dist_tags: BTreeMap<String, String>,
    /// Whoever publishes a new package becomes its first owner (Cargo).
    #[serde(default)]
    pub owner: Option<String>,
    /// Refuse when the package exists under another spelling of its name (Cargo).
    #[serde(default)]
    pub exact_name: bool,
}

/// Largest encoded metadata (the version's and its files' facts) one publish may carry: it is
/// in the Raft log, every snapshot and every index document.
pub const MAX_METADATA_BYTES: usize = 1024 * 1024;
/// Deepest JSON nesting allowed in metadata. An entry is decoded with serde_json's recursion
/// limit (128) and the metadata sits a few levels down in it: a deeper document would be
/// accepted, appended to the log, and then be undecodable on every node.
pub const MAX_METADATA_DEPTH: usize = 32;
/// Most files one version may hold (PyPI adds them one by one; every upload rewrites the
/// version record and every page render reads it).
pub const MAX_FILES_PER_VERSION: usize = 1024;
/// Longest text (deprecation message, yank reason, tag, login) an update may carry.
pub const MAX_CHANGE_TEXT: usize = 64 * 1024;

fn depth(value: &serde_json::Value) -> usize {
    match value {
        serde_json::Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        serde_json::Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

impl PackagePublish {
    /// Why this publish may not be proposed: metadata too deep or too large (checked before
    /// proposing; a log entry must always decode).
    pub fn check_bounds(&self) -> Result<(), String> {
        let documents = std::iter::once(&self.metadata).chain(self.files.iter().map(|f| &f.facts));
        let mut size = 0;
        for doc in documents {
            if depth(doc) > MAX_METADATA_DEPTH {
                return Err(format!(
                    "the package metadata nests deeper than {MAX_METADATA_DEPTH} levels"
                ));
            }
            size += serde_json::to_vec(doc).map_or(usize::MAX, |b| b.len());
        }
        if size > MAX_METADATA_BYTES {
            return Err(format!(
                "the package metadata is {size} bytes; at most {MAX_METADATA_BYTES} are kept"
            ));
        }
        Ok(())
    }
}

impl PackageUpdate {
    /// Why this update may not be proposed: a text longer than [`MAX_CHANGE_TEXT`].
    pub fn check_bounds(&self) -> Result<(), String> {
        let too_long = self.changes.iter().any(|c| {
            let texts: [Option<&String>; 2] = match c {
                PackageChange::DistTag { tag, version } => [Some(tag), version.as_ref()],
                PackageChange::Deprecate { version, message } => [Some(version), message.as_ref()],
                PackageChange::Yank {
                    version, reason, ..
                } => [Some(version), reason.as_ref()],
                PackageChange::AddOwner { login } | PackageChange::RemoveOwner { login } => {
                    [Some(login), None]
                }
                PackageChange::Unpublish { version } => [Some(version), None],
            };
            texts
                .into_iter()
                .flatten()
                .any(|t| t.len() > MAX_CHANGE_TEXT)
        });
        if too_long {
            return Err(format!(
                "a tag, version, message or login is longer than {MAX_CHANGE_TEXT} bytes"
            ));
        }
        Ok(())
    }
}

/// One change of a package's mutable facts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PackageChange {
    /// Point a dist-tag at a version, or remove it (`version: None`).
    DistTag {
        tag: String,
        version: Option<String>,
    },
    /// Deprecate a version with a message, or undeprecate it (`message: None`).
    Deprecate {
        version: String,
        message: Option<String>,
    },
    /// Yank a version (it stays downloadable), with an optional reason; or unyank it.
    Yank {
        version: String,
        yanked: bool,
        reason: Option<String>,
    },
    AddOwner {
        login: String,
    },
    RemoveOwner {
        login: String,
    },
    /// Unpublish a version: it is no longer listed or served and can never be published
    /// again. Only in repositories that allow it.
    Unpublish {
        version: String,
    },
}

/// Changes to one package, applied all or nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageUpdate {
    pub repo: RepoName,
    pub format: Format,
    pub package: String,
    /// Apply only while the package is at this revision (npm `_rev`).
    #[serde(default)]
    pub expected_revision: Option<u64>,
    pub changes: Vec<PackageChange>,
}

/// A package in a repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageRecord {
    /// The name as first published.
    pub name: String,
    pub created_ms: u64,
    pub modified_ms: u64,
    /// Grows by one with every change of the package (npm `_rev`, cache keys).
    pub revision: u64,
    /// Tag → version key.
    #[serde(default)]
    pub dist_tags: BTreeMap<String, String>,
    #[serde(default)]
    pub owners: BTreeSet<String>,
}

/// A file of a version as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionFile {
    pub digest: Digest,
    pub size: u64,
    pub uploaded_ms: u64,
    #[serde(default)]
    pub facts: serde_json::Value,
}

/// A version of a package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRecord {
    /// The version as published.
    pub version: String,
    /// Filename → file.
    pub files: BTreeMap<String, VersionFile>,
    pub metadata: serde_json::Value,
    pub published_ms: u64,
    /// Yanked (PyPI, Cargo): `Some(reason)`, the reason possibly empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub yanked: Option<String>,
    /// Deprecated (npm): the message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deprecated: Option<String>,
    /// Unpublished at (command time): a tombstone that keeps the version reserved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unpublished_ms: Option<u64>,
}

impl VersionRecord {
    /// Whether the version is still published.
    pub fn is_live(&self) -> bool {
        self.unpublished_ms.is_none()
    }
}

type Verdict = std::result::Result<Outcome, Rejection>;
type ApplyResult<T> = std::result::Result<T, ApplyError>;

fn package_key(repo: &RepoName, package: &str) -> Vec<u8> {
    key(&[repo.as_str(), package])
}

fn version_key(repo: &RepoName, package: &str, version: &str) -> Vec<u8> {
    key(&[repo.as_str(), package, version])
}

fn reject(code: ErrorCode, message: impl Into<String>) -> ApplyResult<Verdict> {
    Ok(Err(Rejection::new(code, message)))
}

/// Why a name or version key cannot be stored (NUL separates key parts).
fn bad_key(what: &str, value: &str) -> Option<String> {
    (value.is_empty() || value.len() > 256 || value.contains('\0'))
        .then(|| format!("{what} {value:?} must be 1 to 256 bytes without NUL"))
}

impl Ctx<'_> {
    pub(crate) fn publish_package(&self, p: &PackagePublish) -> ApplyResult<Verdict> {
        let repo = match self.require_repo(&p.repo, Some(p.format))? {
            Ok(repo) => repo,
            Err(r) => return Ok(Err(r)),
        };
        if let Some(bad) = bad_key("package", &p.package).or(bad_key("version", &p.version_key)) {
            return reject(ErrorCode::BadRequest, bad);
        }
        if p.files.is_empty() {
            return reject(ErrorCode::BadRequest, "a publish needs at least one file");
        }
        let names: BTreeSet<&str> = p.files.iter().map(|f| f.filename.as_str()).collect();
        if names.len() != p.files.len() {
            return reject(ErrorCode::BadRequest, "a publish names a file twice");
        }
        if let Some(target) = p.dist_tags.values().find(|t| **t != p.version_key) {
            return reject(
                ErrorCode::BadRequest,
                format!("a publish may tag only the version it publishes, not {target}"),
            );
        }
        let pkey = package_key(&p.repo, &p.package);
        let vkey = version_key(&p.repo, &p.package, &p.version_key);
        let package = get_json::<PackageRecord>(self.txn, tables::PACKAGES, &pkey)?;
        if let Some(package) = &package
            && p.exact_name
            && package.name != p.name
        {
            return reject(
                ErrorCode::Conflict,
                format!(
                    "{} already exists in {} as {}; names that differ only in case or in - and _ \
                     are the same package",
                    p.name, p.repo, package.name
                ),
            );
        }
        let existing = get_json::<VersionRecord>(self.txn, tables::PACKAGE_VERSIONS, &vkey)?;
        if let Some(v) = &existing
            && v.unpublished_ms.is_some()
        {
            return reject(
                ErrorCode::Conflict,
                format!(
                    "{}@{} was unpublished; a version can never be published again",
                    p.name, v.version
                ),
            );
        }
        let mut version = match existing {
            Some(v) => v,
            None => VersionRecord {
                version: p.version.clone(),
                files: BTreeMap::new(),
                metadata: p.metadata.clone(),
                published_ms: self.now_ms,
                yanked: None,
                deprecated: None,
                unpublished_ms: None,
            },
        };
        let is_new_version = version.files.is_empty();
        let mut added = Vec::new();
        match p.binding {
            VersionBinding::Whole if !is_new_version => {
                let same = version.files.len() == p.files.len()
                    && p.files.iter().all(|f| {
                        version
                            .files
                            .get(&f.filename)
                            .is_some_and(|have| have.digest == f.digest)
                    });
                if same {
                    return Ok(Ok(Outcome::Unchanged));
                }
                return reject(
                    ErrorCode::Conflict,
                    format!(
                        "You cannot publish over the previously published versions: {}.",
                        version.version
                    ),
                );
            }
            _ => {
                for file in &p.files {
                    match version.files.get(&file.filename) {
                        Some(have) if have.digest == file.digest => {}
                        Some(_) => {
                            return reject(
                                ErrorCode::Conflict,
                                format!("File already exists ('{}')", file.filename),
                            );
                        }
                        None => added.push(file),
                    }
                }
            }
        }
        if added.is_empty() {
            return Ok(Ok(Outcome::Unchanged));
        }
        if version.files.len() + added.len() > MAX_FILES_PER_VERSION {
            return reject(
                ErrorCode::BadRequest,
                format!(
                    "{}@{} already has {} files; a version holds at most {MAX_FILES_PER_VERSION}",
                    p.name,
                    version.version,
                    version.files.len()
                ),
            );
        }
        let mut package = package.unwrap_or_else(|| PackageRecord {
            name: p.name.clone(),
            created_ms: self.now_ms,
            modified_ms: self.now_ms,
            revision: 0,
            dist_tags: BTreeMap::new(),
            owners: p.owner.iter().cloned().collect(),
        });
        for file in added {
            self.record_blob(
                &file.digest,
                file.size,
                &file.chunk_root,
                p.holder,
                residency(&repo.settings),
            )?;
            self.note_placement(&p.repo, &file.digest)?;
            version.files.insert(
                file.filename.clone(),
                VersionFile {
                    digest: file.digest.clone(),
                    size: file.size,
                    uploaded_ms: self.now_ms,
                    facts: file.facts.clone(),
                },
            );
        }
        for (tag, target) in &p.dist_tags {
            package.dist_tags.insert(tag.clone(), target.clone());
        }
        package.revision += 1;
        package.modified_ms = self.now_ms;
        put_json(self.txn, tables::PACKAGE_VERSIONS, &vkey, &version)?;
        put_json(self.txn, tables::PACKAGES, &pkey, &package)?;
        Ok(Ok(Outcome::Applied))
    }

    pub(crate) fn update_package(&self, u: &PackageUpdate) -> ApplyResult<Verdict> {
        let repo = match self.require_repo(&u.repo, Some(u.format))? {
            Ok(repo) => repo,
            Err(r) => return Ok(Err(r)),
        };
        let pkey = package_key(&u.repo, &u.package);
        let Some(mut package) = get_json::<PackageRecord>(self.txn, tables::PACKAGES, &pkey)?
        else {
            return reject(
                ErrorCode::NotFound,
                format!("package {} is not in {}", u.package, u.repo),
            );
        };
        if let Some(expected) = u.expected_revision
            && expected != package.revision
        {
            return reject(
                ErrorCode::Conflict,
                format!(
                    "{} changed since it was read (revision {} is now {}); read it again",
                    package.name, expected, package.revision
                ),
            );
        }
        // Every version a change touches, read once and written back at the end.
        let mut versions: BTreeMap<String, VersionRecord> = BTreeMap::new();
        let before = package.clone();
        for change in &u.changes {
            let touched = match change {
                PackageChange::DistTag {
                    version: Some(v), ..
                }
                | PackageChange::Deprecate { version: v, .. }
                | PackageChange::Yank { version: v, .. }
                | PackageChange::Unpublish { version: v } => Some(v),
                _ => None,
            };
            if let Some(v) = touched {
                if !versions.contains_key(v) {
                    let record = get_json::<VersionRecord>(
                        self.txn,
                        tables::PACKAGE_VERSIONS,
                        &version_key(&u.repo, &u.package, v),
                    )?;
                    if let Some(record) = record {
                        versions.insert(v.clone(), record);
                    }
                }
                // Checked at every change: an earlier change of this update may have
                // unpublished it.
                if !versions.get(v).is_some_and(VersionRecord::is_live) {
                    return reject(
                        ErrorCode::NotFound,
                        format!("{}@{v} does not exist", package.name),
                    );
                }
            }
            match change {
                PackageChange::DistTag {
                    tag,
                    version: Some(v),
                } => {
                    if let Some(bad) = bad_key("tag", tag) {
                        return reject(ErrorCode::BadRequest, bad);
                    }
                    package.dist_tags.insert(tag.clone(), v.clone());
                }
                PackageChange::DistTag { tag, version: None } => {
                    if package.dist_tags.remove(tag).is_none() {
                        return reject(
                            ErrorCode::NotFound,
                            format!("{} has no dist-tag {tag}", package.name),
                        );
                    }
                }
                PackageChange::Deprecate { version, message } => {
                    if let Some(v) = versions.get_mut(version) {
                        v.deprecated = message.clone().filter(|m| !m.is_empty());
                    }
                }
                PackageChange::Yank {
                    version,
                    yanked,
                    reason,
                } => {
                    if let Some(v) = versions.get_mut(version) {
                        v.yanked = yanked.then(|| reason.clone().unwrap_or_default());
                    }
                }
                PackageChange::AddOwner { login } => {
                    if let Some(bad) = bad_key("login", login) {
                        return reject(ErrorCode::BadRequest, bad);
                    }
                    package.owners.insert(login.clone());
                }
                PackageChange::RemoveOwner { login } => {
                    if !package.owners.remove(login) {
                        return reject(
                            ErrorCode::NotFound,
                            format!("{login} is not an owner of {}", package.name),
                        );
                    }
                    if package.owners.is_empty() {
                        return reject(
                            ErrorCode::BadRequest,
                            format!("{login} is the last owner of {}", package.name),
                        );
                    }
                }
                PackageChange::Unpublish { version } => {
                    if !repo.settings.allow_unpublish {
                        return reject(
                            ErrorCode::Denied,
                            format!(
                                "repository {} does not allow unpublishing (repository setting \
                                 allow_unpublish)",
                                u.repo
                            ),
                        );
                    }
                    if let Some(v) = versions.get_mut(version) {
                        v.unpublished_ms = Some(self.now_ms);
                    }
                    package.dist_tags.retain(|_, target| target != version);
                }
            }
        }
        let mut changed = package != before;
        for (v, record) in &versions {
            let k = version_key(&u.repo, &u.package, v);
            if get_json::<VersionRecord>(self.txn, tables::PACKAGE_VERSIONS, &k)?.as_ref()
                != Some(record)
            {
                put_json(self.txn, tables::PACKAGE_VERSIONS, &k, record)?;
                changed = true;
            }
        }
        if !changed {
            return Ok(Ok(Outcome::Unchanged));
        }
        package.revision += 1;
        package.modified_ms = self.now_ms;
        put_json(self.txn, tables::PACKAGES, &pkey, &package)?;
        Ok(Ok(Outcome::Applied))
    }
}

// ---- queries ----

type QueryResult<T> = std::result::Result<T, MetaError>;

fn corrupt(what: &str, e: serde_json::Error) -> MetaError {
    MetaError::Fatal(format!("corrupt {what} record: {e}"))
}

/// A package's record.
pub fn package(
    txn: &ReadTransaction,
    repo: &RepoName,
    package: &str,
) -> QueryResult<Option<PackageRecord>> {
    crate::query::get_json(txn, tables::PACKAGES, &package_key(repo, package))
}

/// One version of a package (live or unpublished).
pub fn version(
    txn: &ReadTransaction,
    repo: &RepoName,
    package: &str,
    version: &str,
) -> QueryResult<Option<VersionRecord>> {
    crate::query::get_json(
        txn,
        tables::PACKAGE_VERSIONS,
        &version_key(repo, package, version),
    )
}

/// Every version of a package (live and unpublished), by version key in byte order.
pub fn versions(
    txn: &ReadTransaction,
    repo: &RepoName,
    package: &str,
) -> QueryResult<Vec<(String, VersionRecord)>> {
    let (items, _) = crate::query::list_under(
        txn,
        tables::PACKAGE_VERSIONS,
        &prefix(&[repo.as_str(), package]),
        None,
        usize::MAX,
    )?;
    items
        .into_iter()
        .map(|(k, bytes)| {
            serde_json::from_slice(&bytes)
                .map(|r| (k, r))
                .map_err(|e| corrupt("package version", e))
        })
        .collect()
}

/// A package with every version (live and unpublished), by version key in byte order.
pub type PackageDocument = (PackageRecord, Vec<(String, VersionRecord)>);

/// A package with its versions, read in one transaction.
pub fn package_with_versions(
    txn: &ReadTransaction,
    repo: &RepoName,
    key: &str,
) -> QueryResult<Option<PackageDocument>> {
    let Some(record) = package(txn, repo, key)? else {
        return Ok(None);
    };
    Ok(Some((record, versions(txn, repo, key)?)))
}

/// Packages of a repository (key, record) in key order, strictly after `after`, at most
/// `limit`; true if more follow.
pub fn packages(
    txn: &ReadTransaction,
    repo: &RepoName,
    after: Option<&str>,
    limit: usize,
) -> QueryResult<(Vec<(String, PackageRecord)>, bool)> {
    let (items, more) = crate::query::list_under(
        txn,
        tables::PACKAGES,
        &prefix(&[repo.as_str()]),
        after,
        limit,
    )?;
    let records = items
        .into_iter()
        .map(|(k, bytes)| {
            serde_json::from_slice(&bytes)
                .map(|r| (k, r))
                .map_err(|e| corrupt("package", e))
        })
        .collect::<QueryResult<Vec<_>>>()?;
    Ok((records, more))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use redb::ReadableDatabase;

    use super::*;
    use crate::apply::tests::{Sm, digest, set_members};
    use crate::command::{Command, CommandResult, Consistency, RepoSettings};
    use crate::versions::SUPPORTED_CLUSTER_VERSION;

    fn sm_with_repo(format: Format, allow_unpublish: bool) -> Sm {
        let mut sm = Sm::new();
        set_members(&sm, &[1]);
        sm.apply(Command::ReportNodeVersion {
            node_id: 1,
            supported: SUPPORTED_CLUSTER_VERSION,
        });
        sm.apply(Command::SetClusterVersion {
            version: SUPPORTED_CLUSTER_VERSION,
        });
        let r = sm.apply(Command::CreateRepo {
            name: RepoName::new("pkgs").unwrap(),
            settings: RepoSettings {
                format,
                immutable: true,
                allow_sparse_index: false,
                consistency: Consistency::Strong,
                replication: Default::default(),
                regions: Default::default(),
                allow_unpublish,
            },
            if_absent: false,
        });
        assert_eq!(r, CommandResult::Ok(Outcome::Applied));
        sm
    }

    fn file(name: &str, n: u8) -> PublishedFile {
        PublishedFile {
            filename: name.into(),
            digest: digest(n),
            size: 10,
            chunk_root: digest(n),
            facts: serde_json::Value::Null,
        }
    }

    fn publish(
        format: Format,
        version: &str,
        files: Vec<PublishedFile>,
        binding: VersionBinding,
    ) -> Command {
        Command::PublishPackage(PackagePublish {
            repo: RepoName::new("pkgs").unwrap(),
            format,
            package: "tiny".into(),
            name: "tiny".into(),
            version_key: version.into(),
            version: version.into(),
            files,
            holder: 1,
            metadata: serde_json::json!({ "version": version }),
            binding,
            dist_tags: [("latest".to_string(), version.to_string())].into(),
            owner: Some("alice".into()),
            exact_name: false,
        })
    }

    fn update(changes: Vec<PackageChange>, expected_revision: Option<u64>) -> Command {
        Command::UpdatePackage(PackageUpdate {
            repo: RepoName::new("pkgs").unwrap(),
            format: Format::Npm,
            package: "tiny".into(),
            expected_revision,
            changes,
        })
    }

    fn rejected_with(result: CommandResult, code: ErrorCode) -> String {
        match result {
            CommandResult::Rejected(r) if r.code == code.as_str() => r.message,
            other => panic!("expected {code:?}, got {other:?}"),
        }
    }

    fn stored(sm: &Sm) -> (PackageRecord, Vec<(String, VersionRecord)>) {
        let txn = sm.db.begin_read().unwrap();
        package_with_versions(&txn, &RepoName::new("pkgs").unwrap(), "tiny")
            .unwrap()
            .unwrap()
    }

    #[test]
    fn a_version_binds_once_and_the_same_bytes_again_change_nothing() {
        let mut sm = sm_with_repo(Format::Npm, false);
        let first = publish(
            Format::Npm,
            "1.0.0",
            vec![file("tiny-1.0.0.tgz", 1)],
            VersionBinding::Whole,
        );
        assert_eq!(sm.apply(first.clone()), CommandResult::Ok(Outcome::Applied));
        assert_eq!(sm.apply(first), CommandResult::Ok(Outcome::Unchanged));
        let other = publish(
            Format::Npm,
            "1.0.0",
            vec![file("tiny-1.0.0.tgz", 2)],
            VersionBinding::Whole,
        );
        let message = rejected_with(sm.apply(other), ErrorCode::Conflict);
        assert_eq!(
            message,
            "You cannot publish over the previously published versions: 1.0.0."
        );
        let (package, versions) = stored(&sm);
        assert_eq!(package.revision, 1);
        assert_eq!(package.dist_tags["latest"], "1.0.0");
        assert_eq!(package.owners, ["alice".to_string()].into());
        assert_eq!(versions.len(), 1);
        assert_eq!(versions[0].1.files["tiny-1.0.0.tgz"].digest, digest(1));
        // The file's blob is recorded with its holder.
        let txn = sm.db.begin_read().unwrap();
        let blob = crate::query::blob(&txn, &digest(1)).unwrap().unwrap();
        assert!(blob.holders.contains(&1));
        // Another format's command cannot touch the repository.
        drop(txn);
        let wrong = publish(
            Format::Cargo,
            "2.0.0",
            vec![file("tiny-2.0.0.crate", 3)],
            VersionBinding::Whole,
        );
        rejected_with(sm.apply(wrong), ErrorCode::Denied);
    }

    #[test]
    fn files_of_a_release_are_added_one_by_one_and_each_filename_binds_once() {
        let mut sm = sm_with_repo(Format::Pypi, false);
        let wheel = publish(
            Format::Pypi,
            "0.1.0",
            vec![file("tiny-0.1.0-py3-none-any.whl", 1)],
            VersionBinding::AddFiles,
        );
        let sdist = publish(
            Format::Pypi,
            "0.1.0",
            vec![file("tiny-0.1.0.tar.gz", 2)],
            VersionBinding::AddFiles,
        );
        assert_eq!(sm.apply(wheel.clone()), CommandResult::Ok(Outcome::Applied));
        assert_eq!(sm.apply(sdist), CommandResult::Ok(Outcome::Applied));
        assert_eq!(sm.apply(wheel), CommandResult::Ok(Outcome::Unchanged));
        let changed = publish(
            Format::Pypi,
            "0.1.0",
            vec![file("tiny-0.1.0.tar.gz", 3)],
            VersionBinding::AddFiles,
        );
        let message = rejected_with(sm.apply(changed), ErrorCode::Conflict);
        assert_eq!(message, "File already exists ('tiny-0.1.0.tar.gz')");
        let (_, versions) = stored(&sm);
        assert_eq!(versions[0].1.files.len(), 2);
    }

    #[test]
    fn mutable_facts_change_all_or_nothing_and_bump_the_revision() {
        let mut sm = sm_with_repo(Format::Npm, false);
        for (v, n) in [("1.0.0", 1), ("1.1.0", 2)] {
            let file = file(&format!("tiny-{v}.tgz"), n);
            sm.apply(publish(Format::Npm, v, vec![file], VersionBinding::Whole));
        }
        let r = sm.apply(update(
            vec![
                PackageChange::DistTag {
                    tag: "next".into(),
                    version: Some("1.1.0".into()),
                },
                PackageChange::Deprecate {
                    version: "1.0.0".into(),
                    message: Some("use 1.1".into()),
                },
            ],
            Some(2),
        ));
        assert_eq!(r, CommandResult::Ok(Outcome::Applied));
        let (package, versions) = stored(&sm);
        assert_eq!(package.revision, 3);
        assert_eq!(package.dist_tags["next"], "1.1.0");
        assert_eq!(versions[0].1.deprecated.as_deref(), Some("use 1.1"));
        // A stale revision is refused; so is a batch with one bad change, which changes nothing.
        let stale = update(
            vec![PackageChange::Deprecate {
                version: "1.1.0".into(),
                message: Some("x".into()),
            }],
            Some(2),
        );
        rejected_with(sm.apply(stale), ErrorCode::Conflict);
        let partly_bad = update(
            vec![
                PackageChange::Deprecate {
                    version: "1.1.0".into(),
                    message: Some("x".into()),
                },
                PackageChange::DistTag {
                    tag: "beta".into(),
                    version: Some("9.9.9".into()),
                },
            ],
            None,
        );
        rejected_with(sm.apply(partly_bad), ErrorCode::NotFound);
        let (package, versions) = stored(&sm);
        assert_eq!(package.revision, 3);
        assert_eq!(versions[1].1.deprecated, None);
        // Nothing to change: unchanged, same revision.
        let same = update(
            vec![PackageChange::DistTag {
                tag: "next".into(),
                version: Some("1.1.0".into()),
            }],
            None,
        );
        assert_eq!(sm.apply(same), CommandResult::Ok(Outcome::Unchanged));
        // Owners: the last one cannot be removed.
        let last = update(
            vec![PackageChange::RemoveOwner {
                login: "alice".into(),
            }],
            None,
        );
        rejected_with(sm.apply(last), ErrorCode::BadRequest);
    }

    #[test]
    fn an_unpublished_version_is_gone_but_reserved_forever() {
        let unpublish = update(
            vec![PackageChange::Unpublish {
                version: "1.0.0".into(),
            }],
            None,
        );
        let tiny = |n| {
            publish(
                Format::Npm,
                "1.0.0",
                vec![file("tiny-1.0.0.tgz", n)],
                VersionBinding::Whole,
            )
        };
        let mut closed = sm_with_repo(Format::Npm, false);
        closed.apply(tiny(1));
        rejected_with(closed.apply(unpublish.clone()), ErrorCode::Denied);

        let mut sm = sm_with_repo(Format::Npm, true);
        sm.apply(tiny(1));
        assert_eq!(sm.apply(unpublish), CommandResult::Ok(Outcome::Applied));
        let (package, versions) = stored(&sm);
        assert!(!versions[0].1.is_live());
        assert!(
            package.dist_tags.is_empty(),
            "tags of the version go with it"
        );
        // Neither the same bytes nor others bind it again.
        rejected_with(sm.apply(tiny(1)), ErrorCode::Conflict);
        rejected_with(sm.apply(tiny(2)), ErrorCode::Conflict);
    }

    #[test]
    fn a_change_after_an_unpublish_in_the_same_update_cannot_touch_that_version() {
        let mut sm = sm_with_repo(Format::Npm, true);
        for (v, n) in [("1.0.0", 1), ("2.0.0", 2)] {
            let file = file(&format!("tiny-{v}.tgz"), n);
            sm.apply(publish(Format::Npm, v, vec![file], VersionBinding::Whole));
        }
        let dangling = update(
            vec![
                PackageChange::Unpublish {
                    version: "2.0.0".into(),
                },
                PackageChange::DistTag {
                    tag: "beta".into(),
                    version: Some("2.0.0".into()),
                },
            ],
            None,
        );
        rejected_with(sm.apply(dangling), ErrorCode::NotFound);
        let (package, versions) = stored(&sm);
        assert!(versions.iter().all(|(_, v)| v.is_live()), "nothing applied");
        assert!(!package.dist_tags.contains_key("beta"));
    }

    #[test]
    fn a_refused_publish_records_no_blob() {
        let mut sm = sm_with_repo(Format::Npm, false);
        let Command::PublishPackage(mut p) = publish(
            Format::Npm,
            "1.0.0",
            vec![file("tiny-1.0.0.tgz", 7)],
            VersionBinding::Whole,
        ) else {
            unreachable!()
        };
        p.dist_tags.insert("next".into(), "9.9.9".into());
        rejected_with(sm.apply(Command::PublishPackage(p)), ErrorCode::BadRequest);
        let txn = sm.db.begin_read().unwrap();
        assert!(crate::query::blob(&txn, &digest(7)).unwrap().is_none());
    }

    #[test]
    fn metadata_that_could_not_be_decoded_from_the_log_is_refused_before_proposing() {
        let Command::PublishPackage(mut p) = publish(
            Format::Npm,
            "1.0.0",
            vec![file("tiny-1.0.0.tgz", 1)],
            VersionBinding::Whole,
        ) else {
            unreachable!()
        };
        assert!(p.check_bounds().is_ok());
        let mut deep = serde_json::json!(1);
        for _ in 0..100 {
            deep = serde_json::json!([deep]);
        }
        p.metadata = serde_json::json!({ "deep": deep });
        assert!(p.check_bounds().unwrap_err().contains("deeper"));
        p.metadata = serde_json::json!({ "description": "x".repeat(MAX_METADATA_BYTES) });
        assert!(p.check_bounds().unwrap_err().contains("bytes"));
        let long = update(
            vec![PackageChange::Deprecate {
                version: "1.0.0".into(),
                message: Some("x".repeat(MAX_CHANGE_TEXT + 1)),
            }],
            None,
        );
        let Command::UpdatePackage(long) = long else {
            unreachable!()
        };
        assert!(long.check_bounds().is_err());
    }

    #[test]
    fn a_package_keeps_the_spelling_of_its_name_when_asked() {
        let mut sm = sm_with_repo(Format::Cargo, false);
        let spelled = |name: &str, version: &str, n| {
            Command::PublishPackage(PackagePublish {
                repo: RepoName::new("pkgs").unwrap(),
                format: Format::Cargo,
                package: "tiny-crate".into(),
                name: name.into(),
                version_key: version.into(),
                version: version.into(),
                files: vec![file(&format!("{name}-{version}.crate"), n)],
                holder: 1,
                metadata: serde_json::Value::Null,
                binding: VersionBinding::Whole,
                dist_tags: BTreeMap::new(),
                owner: Some("alice".into()),
                exact_name: true,
            })
        };
        assert_eq!(
            sm.apply(spelled("tiny_crate", "0.1.0", 1)),
            CommandResult::Ok(Outcome::Applied)
        );
        rejected_with(
            sm.apply(spelled("Tiny-Crate", "0.2.0", 2)),
            ErrorCode::Conflict,
        );
        assert_eq!(
            sm.apply(spelled("tiny_crate", "0.2.0", 3)),
            CommandResult::Ok(Outcome::Applied)
        );
    }

    #[test]
    fn package_commands_wait_for_cluster_version_5_and_empty_package_tables_hash_like_before() {
        let mut sm = Sm::new();
        let txn = sm.db.begin_read().unwrap();
        let (_, before) = crate::query::state_hash(&txn).unwrap();
        drop(txn);
        // Creating the (empty) package tables changes no hash: an older node has none.
        let txn = sm.db.begin_write().unwrap();
        txn.open_table(tables::PACKAGES).unwrap();
        txn.open_table(tables::PACKAGE_VERSIONS).unwrap();
        txn.commit().unwrap();
        let txn = sm.db.begin_read().unwrap();
        assert_eq!(crate::query::state_hash(&txn).unwrap().1, before);
        drop(txn);
        let r = sm.apply(publish(
            Format::Npm,
            "1.0.0",
            vec![file("tiny-1.0.0.tgz", 1)],
            VersionBinding::Whole,
        ));
        rejected_with(r, ErrorCode::Unsupported);
    }
}
