//! OCI operations: blob links, mounts, manifests, tags, referrers.

use bytes::Bytes;
use wharf_meta::records::{LinkRecord, ManifestRecord};
use wharf_meta::{Command, ManifestPut, ReferrerDescriptor, query};
use wharf_types::{Digest, ErrorCode, Format, ImageName, RepoName, Tag};

use crate::{BlobSource, Registry, RegistryError, RequestCtx, Result, StoredBlob};

/// A manifest as parsed by the OCI format, before it is stored.
#[derive(Debug, Clone)]
pub struct NewManifest {
    pub media_type: String,
    pub blobs: Vec<Digest>,
    pub manifests: Vec<Digest>,
    pub subject: Option<Digest>,
    pub artifact_type: Option<String>,
    pub annotations: std::collections::BTreeMap<String, String>,
}

/// How an upload was finished.
pub enum Mounted {
    /// The blob was linked from the other repository.
    Linked,
    /// It was not there; the client must upload it.
    NotAvailable,
}

impl Registry {
    /// Links a stored blob into `repo` (end of an upload).
    pub async fn link_blob(
        &self,
        ctx: &RequestCtx,
        repo: &RepoName,
        blob: &StoredBlob,
    ) -> Result<()> {
        self.repo_for_write(ctx, repo, Format::Oci).await?;
        self.propose(
            ctx,
            "link-blob",
            Command::LinkBlob {
                repo: repo.clone(),
                digest: blob.info.digest.clone(),
                size: blob.info.size,
                chunk_root: blob.info.chunk_root.clone(),
                holder: blob.holder,
            },
        )
        .await?;
        Ok(())
    }

    /// Mounts a blob from `from` into `repo` when it is linked there (cross-repository mount).
    pub async fn mount_blob(
        &self,
        ctx: &RequestCtx,
        repo: &RepoName,
        from: &RepoName,
        digest: &Digest,
    ) -> Result<Mounted> {
        if self.blob_link(from, digest).await?.is_none() {
            return Ok(Mounted::NotAvailable);
        }
        self.repo_for_write(ctx, repo, Format::Oci).await?;
        let command = Command::MountBlob {
            repo: repo.clone(),
            from: from.clone(),
            digest: digest.clone(),
        };
        match self.propose(ctx, "mount-blob", command).await {
            Ok(_) => Ok(Mounted::Linked),
            Err(RegistryError::Rejected(r)) if r.code == ErrorCode::BlobUnknown.as_str() => {
                Ok(Mounted::NotAvailable)
            }
            Err(e) => Err(e),
        }
    }

    /// The blob's link in `repo`, if it is visible there. Digest-addressed, so served from local
    /// state; a miss runs a read barrier first.
    pub async fn blob_link(&self, repo: &RepoName, digest: &Digest) -> Result<Option<LinkRecord>> {
        self.read_or_barrier(|t| query::blob_link(t, repo, digest))
            .await
    }

    /// Drops the blob's link from `repo` (the bytes stay for GC).
    pub async fn unlink_blob(
        &self,
        ctx: &RequestCtx,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<()> {
        self.propose(
            ctx,
            "unlink-blob",
            Command::UnlinkBlob {
                repo: repo.clone(),
                digest: digest.clone(),
            },
        )
        .await
        .map(|_| ())
    }

    /// Stores manifest bytes as a blob and binds them (and `tag`, when pushed by tag).
    pub async fn put_manifest(
        &self,
        ctx: &RequestCtx,
        name: &ImageName,
        tag: Option<&Tag>,
        bytes: Bytes,
        digest: &Digest,
        manifest: NewManifest,
    ) -> Result<()> {
        let record = self.repo_for_write(ctx, &name.repo(), Format::Oci).await?;
        let size = bytes.len() as u64;
        let stored = self
            .store_blob(
                &record.settings,
                BlobSource::<futures::stream::Empty<std::io::Result<Bytes>>>::Bytes(bytes),
                Some(digest),
                Some(size),
            )
            .await?;
        let referrer = manifest.subject.as_ref().map(|_| ReferrerDescriptor {
            media_type: manifest.media_type.clone(),
            digest: digest.clone(),
            size,
            artifact_type: manifest.artifact_type.clone(),
            annotations: manifest.annotations.clone(),
        });
        let put = ManifestPut {
            name: name.clone(),
            tag: tag.cloned(),
            digest: digest.clone(),
            media_type: manifest.media_type,
            size,
            blobs: manifest.blobs,
            manifests: manifest.manifests,
            subject: manifest.subject,
            referrer,
            chunk_root: stored.info.chunk_root,
            holder: stored.holder,
        };
        self.propose(ctx, "put-manifest", Command::PutManifest(put))
            .await?;
        Ok(())
    }

    /// Resolves a tag to a digest. A binding in an immutable repository cannot be stale and is
    /// answered locally; a mutable tag is read after a read barrier (`strong`); a miss runs a
    /// barrier before "unknown" (DESIGN.md §1.5).
    pub async fn resolve_tag(&self, name: &ImageName, tag: &str) -> Result<Option<Digest>> {
        let (local, immutable) = self.read(|t| {
            let immutable = query::repo(t, &name.repo())?.is_some_and(|r| r.settings.immutable);
            Ok((query::tag(t, name, tag)?, immutable))
        })?;
        if local.is_some() && immutable {
            return Ok(local);
        }
        self.read_mutable(&name.repo(), |t| query::tag(t, name, tag), Option::is_some)
            .await
    }

    /// A manifest under `name` by digest (local state; a miss runs a barrier).
    pub async fn manifest(
        &self,
        name: &ImageName,
        digest: &Digest,
    ) -> Result<Option<ManifestRecord>> {
        self.read_or_barrier(|t| query::manifest(t, name, digest))
            .await
    }

    /// Deletes a manifest and the tags pointing to it.
    pub async fn delete_manifest(
        &self,
        ctx: &RequestCtx,
        name: &ImageName,
        digest: &Digest,
    ) -> Result<()> {
        self.propose(
            ctx,
            "delete-manifest",
            Command::DeleteManifest {
                name: name.clone(),
                digest: digest.clone(),
            },
        )
        .await
        .map(|_| ())
    }

    /// Deletes one tag.
    pub async fn delete_tag(&self, ctx: &RequestCtx, name: &ImageName, tag: &Tag) -> Result<()> {
        self.propose(
            ctx,
            "delete-tag",
            Command::DeleteTag {
                name: name.clone(),
                tag: tag.clone(),
            },
        )
        .await
        .map(|_| ())
    }

    /// Tags of `name` after `last`, at most `limit`; `None` when the image is unknown.
    pub async fn tags(
        &self,
        name: &ImageName,
        last: Option<&str>,
        limit: usize,
    ) -> Result<Option<(Vec<String>, bool)>> {
        self.read_mutable(
            &name.repo(),
            |t| {
                if !query::image_exists(t, name)? {
                    return Ok(None);
                }
                query::tags(t, name, last, limit).map(Some)
            },
            Option::is_some,
        )
        .await
    }

    /// Image names after `last`, at most `limit`.
    pub async fn catalog(&self, last: Option<&str>, limit: usize) -> Result<(Vec<String>, bool)> {
        self.read_strong(|t| query::catalog(t, last, limit)).await
    }

    /// Referrers of `subject` under `name`.
    pub async fn referrers(
        &self,
        name: &ImageName,
        subject: &Digest,
    ) -> Result<Vec<ReferrerDescriptor>> {
        self.read_mutable(
            &name.repo(),
            |t| query::referrers(t, name, subject),
            |_| true,
        )
        .await
    }
}

impl From<wharf_types::NameError> for RegistryError {
    fn from(e: wharf_types::NameError) -> Self {
        RegistryError::new(ErrorCode::NameInvalid, e.to_string())
    }
}
