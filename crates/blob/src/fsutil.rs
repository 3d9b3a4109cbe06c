//! The fsync calls of the store, in one place. All are blocking: call them from
//! `spawn_blocking` or at startup.

use std::fs::File;
use std::io;
use std::path::Path;

use wharf_types::planted::{self, PlantedBug};

use crate::BlobError;

/// Makes a blob file's bytes durable. The planted bug `skip-blob-fsync` turns exactly this call
/// (and nothing else) into a no-op, so a power-loss test can prove that it is needed.
pub(crate) fn sync_blob_file(file: &File) -> Result<(), BlobError> {
    // planted bug skip-blob-fsync: the blob's bytes are acknowledged from the page cache
    if planted::active(PlantedBug::SkipBlobFsync) {
        return Ok(());
    }
    file.sync_all().map_err(BlobError::Fsync)
}

/// Makes a file's bytes durable (sidecars and other small files).
pub(crate) fn sync_file(file: &File) -> Result<(), BlobError> {
    file.sync_all().map_err(BlobError::Fsync)
}

/// Makes a directory's entries (creations, renames, unlinks) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), BlobError> {
    let handle = File::open(dir)?;
    handle.sync_all().map_err(BlobError::Fsync)
}

/// Creates `dir` if it is missing; when it was created, fsyncs its parent so the new entry is
/// durable. Returns whether it was created.
pub(crate) fn ensure_dir(dir: &Path) -> Result<bool, BlobError> {
    match std::fs::create_dir(dir) {
        Ok(()) => {
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Removes a file, treating "already gone" as success. Returns whether it existed.
pub(crate) fn remove_if_present(path: &Path) -> io::Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}
