//! Content-addressed blob store on the local file system: upload sessions, streaming sha256 with
//! 4 MiB chunk hashes, verify-on-commit (sha256, or sha512 with one extra pass), verified reads.
//!
//! Start reading at [`FsBlobStore`]: an upload is a session ([`FsBlobStore::create_upload`],
//! [`FsBlobStore::append`], [`FsBlobStore::commit`]) or one call ([`FsBlobStore::ingest`]); bytes
//! leave through [`FsBlobStore::read`], which checks every 4 MiB chunk against the hashes recorded
//! at commit before yielding it (DESIGN.md §1.4). [`chunks`] holds the pure part: the chunk hasher
//! and the sidecar encoding.
//!
//! # On-disk layout
//!
//! ```text
//! <root>/
//!   blobs/<alg>/<2 hex>/<hex>           the blob: immutable, named by its digest <alg>:<hex>
//!   blobs/<alg>/<2 hex>/<hex>.chunks    sidecar: sha256 of every 4 MiB chunk (see chunks::encode_sidecar)
//!   uploads/<session id>                bytes of an upload in progress
//!   uploads/<session id>.chunks         a sidecar being written, before its rename into blobs/
//! ```
//!
//! `<alg>` is `sha256` or `sha512` ([`wharf_types::DigestAlgorithm`]); `<2 hex>` is the first two
//! characters of `<hex>`. Whatever the blob's name, its chunk hashes and chunk root are sha256:
//! they are integrity checks, not names. A session id is `<node id>-<32 random hex>`.
//!
//! Commit order, so that a crash or power cut at any point never leaves a blob without its
//! sidecar and never acknowledges bytes that are not on disk: fsync the upload file → write and
//! fsync the sidecar under `uploads/`, rename it into place, fsync the blob directory → rename the
//! upload file into place → fsync the blob directory → answer. Deleting unlinks the blob before
//! its sidecar, so "blob exists ⇒ sidecar exists" always holds. Everything under `uploads/` is
//! removed by [`FsBlobStore::open`]: after a restart no session survives.

pub mod chunks;
mod error;
mod fsutil;
mod hash;
mod read;
mod store;

pub use error::{BlobError, CorruptBlob};
pub use read::{BlobReader, BlobStream};
pub use store::FsBlobStore;

use wharf_types::Digest;

/// Size of the chunks whose sha256s are recorded at commit and checked on every read.
pub const CHUNK_SIZE: u64 = 4 * 1024 * 1024;

/// What a committed blob is known by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BlobInfo {
    /// The digest the blob is stored under: the sha256 of the whole blob, or its sha512 if the
    /// upload was committed under a sha512 digest.
    pub digest: Digest,
    /// Length in bytes.
    pub size: u64,
    /// sha256 over the concatenated 32-byte sha256s of the blob's [`CHUNK_SIZE`] chunks, in order
    /// (the last chunk may be short; an empty blob has no chunks, so its root is sha256 of nothing).
    pub chunk_root: Digest,
}
