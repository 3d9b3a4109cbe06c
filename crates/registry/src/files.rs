//! Generic files: a path in a repository bound to a blob.

use bytes::Bytes;
use futures::Stream;
use wharf_meta::records::FileRecord;
use wharf_meta::{Command, Outcome, query};
use wharf_types::{Digest, Format, RepoName};

use crate::{BlobSource, Registry, RequestCtx, Result};

impl Registry {
    /// Stores `body` at `path`; with `expected` the bytes must hash to it (else nothing is
    /// stored). Returns the stored digest and whether the binding changed.
    pub async fn put_file<S, E>(
        &self,
        ctx: &RequestCtx,
        repo: &RepoName,
        path: &str,
        body: S,
        expected: Option<&Digest>,
    ) -> Result<(FileRecord, Outcome)>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin + Send,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let record = self.repo_for_write(ctx, repo, Format::Generic).await?;
        let stored = self
            .store_blob(&record.settings, BlobSource::Stream(body), expected, None)
            .await?;
        let command = Command::PutFile {
            repo: repo.clone(),
            path: path.to_string(),
            digest: stored.info.digest.clone(),
            size: stored.info.size,
            chunk_root: stored.info.chunk_root.clone(),
            holder: stored.holder,
        };
        let outcome = self.propose(ctx, "put-file", command).await?;
        let record = self.file(repo, path).await?.ok_or_else(|| {
            crate::RegistryError::new(
                wharf_types::ErrorCode::Internal,
                "file vanished after it was stored",
            )
        })?;
        Ok((record, outcome))
    }

    /// The file at `path`, if bound. Immutable repositories answer locally; otherwise the read
    /// follows a read barrier.
    pub async fn file(&self, repo: &RepoName, path: &str) -> Result<Option<FileRecord>> {
        let (local, immutable) = self.read(|t| {
            let immutable = query::repo(t, repo)?.is_some_and(|r| r.settings.immutable);
            Ok((query::file(t, repo, path)?, immutable))
        })?;
        if local.is_some() && immutable {
            return Ok(local);
        }
        self.read_mutable(repo, |t| query::file(t, repo, path), Option::is_some)
            .await
    }

    /// Files under directory `dir` (`""` or ending in `/`).
    pub async fn files_under(
        &self,
        repo: &RepoName,
        dir: &str,
        limit: usize,
    ) -> Result<Vec<(String, FileRecord)>> {
        self.read_mutable(
            repo,
            |t| query::files_under(t, repo, dir, limit),
            |files| !files.is_empty(),
        )
        .await
    }

    /// Deletes the file at `path`.
    pub async fn delete_file(&self, ctx: &RequestCtx, repo: &RepoName, path: &str) -> Result<()> {
        self.propose(
            ctx,
            "delete-file",
            Command::DeleteFile {
                repo: repo.clone(),
                path: path.to_string(),
            },
        )
        .await
        .map(|_| ())
    }
}
