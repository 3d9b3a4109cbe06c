//! Packages (npm, PyPI, Cargo): publish a version whose files were stored through
//! [`Registry::store_blob`], change a package's mutable facts, and read packages for index
//! documents and downloads (DESIGN.md §4 "Publish", §1.5).

use wharf_meta::packages::{
    self, PackageDocument, PackagePublish, PackageRecord, PackageUpdate, VersionFile, VersionRecord,
};
use wharf_meta::{Command, Outcome};
use wharf_types::RepoName;

use crate::{Registry, RequestCtx, Result};

impl Registry {
    /// Binds a version (or more files of it) to blobs already stored. `apply` decides
    /// immutability: the same files again are [`Outcome::Unchanged`], other bytes a CONFLICT.
    pub async fn publish_package(
        &self,
        ctx: &RequestCtx,
        publish: PackagePublish,
    ) -> Result<Outcome> {
        publish
            .check_bounds()
            .map_err(|m| crate::RegistryError::new(wharf_types::ErrorCode::BadRequest, m))?;
        self.propose(ctx, "publish-package", Command::PublishPackage(publish))
            .await
    }

    /// Changes a package's dist-tags, deprecations, yanks or owners, or unpublishes versions,
    /// all or nothing.
    pub async fn update_package(&self, ctx: &RequestCtx, update: PackageUpdate) -> Result<Outcome> {
        update
            .check_bounds()
            .map_err(|m| crate::RegistryError::new(wharf_types::ErrorCode::BadRequest, m))?;
        self.propose(ctx, "update-package", Command::UpdatePackage(update))
            .await
    }

    /// A package and all its versions, for an index document: read as the repository's
    /// `consistency` asks (DESIGN.md §1.5c); a miss always runs the read barrier.
    pub async fn package(&self, repo: &RepoName, key: &str) -> Result<Option<PackageDocument>> {
        self.read_mutable(
            repo,
            |t| packages::package_with_versions(t, repo, key),
            Option::is_some,
        )
        .await
    }

    /// A package's record alone, read as [`Registry::package`] reads: enough to find a
    /// document rendered at its revision (a cache hit) without reading every version.
    pub async fn package_record(
        &self,
        repo: &RepoName,
        key: &str,
    ) -> Result<Option<PackageRecord>> {
        self.read_mutable(repo, |t| packages::package(t, repo, key), Option::is_some)
            .await
    }

    /// A package and all its versions from this node's state as it is now, without a read
    /// barrier: for rendering after [`Registry::package_record`] passed the repository's read
    /// rule (the state only moves forward, so this is at least as new).
    pub fn package_now(&self, repo: &RepoName, key: &str) -> Result<Option<PackageDocument>> {
        self.read(|t| packages::package_with_versions(t, repo, key))
    }

    /// One live version, for a download. A live version is an immutable binding, answered from
    /// local state (§1.5a) — unless the repository lets versions be unpublished: then it is
    /// mutable state, read as the repository's `consistency` asks. A miss always runs the
    /// read barrier first.
    pub async fn package_version(
        &self,
        repo: &RepoName,
        key: &str,
        version: &str,
    ) -> Result<Option<VersionRecord>> {
        let read = |t: &redb::ReadTransaction| {
            Ok(packages::version(t, repo, key, version)?.filter(VersionRecord::is_live))
        };
        if self.unpublishable(repo)? {
            return self.read_mutable(repo, read, Option::is_some).await;
        }
        self.read_or_barrier(read).await
    }

    /// One file of a live version, for a download: as [`Registry::package_version`] reads it,
    /// except that a missing *file* (a version this node knows, with a file uploaded elsewhere
    /// moments ago) runs the read barrier too — never a false 404.
    pub async fn package_file(
        &self,
        repo: &RepoName,
        key: &str,
        version: &str,
        filename: &str,
    ) -> Result<Option<VersionFile>> {
        let read = |t: &redb::ReadTransaction| {
            Ok(packages::version(t, repo, key, version)?
                .filter(VersionRecord::is_live)
                .and_then(|v| v.files.get(filename).cloned()))
        };
        if self.unpublishable(repo)? {
            return self.read_mutable(repo, read, Option::is_some).await;
        }
        self.read_or_barrier(read).await
    }

    /// Whether the repository lets versions be unpublished: its bindings are mutable then.
    fn unpublishable(&self, repo: &RepoName) -> Result<bool> {
        self.read(|t| {
            Ok(wharf_meta::query::repo(t, repo)?.is_some_and(|r| r.settings.allow_unpublish))
        })
    }

    /// Packages of a repository in key order after `after`, at most `limit`; true if more follow.
    pub async fn packages(
        &self,
        repo: &RepoName,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<(String, PackageRecord)>, bool)> {
        self.read_mutable(
            repo,
            |t| packages::packages(t, repo, after, limit),
            |(found, _)| !found.is_empty(),
        )
        .await
    }
}
