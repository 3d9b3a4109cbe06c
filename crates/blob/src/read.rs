//! Verified reads: every chunk that overlaps the requested range is read whole, hashed and
//! compared with its sidecar hash before any of its bytes are yielded (DESIGN.md §1.4).

use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use sha2::{Digest as _, Sha256};
use wharf_types::Digest;

use crate::CorruptBlob;
use crate::chunks::ChunkList;

/// Size of one `read` call while filling a chunk buffer.
const READ_SIZE: usize = 1024 * 1024;

/// The bytes of a read: verified chunk by chunk, in order.
///
/// A chunk whose hash does not match yields an [`io::Error`] of kind
/// [`io::ErrorKind::InvalidData`] carrying a [`CorruptBlob`], after which the stream ends. An HTTP
/// layer that forwards the stream as a body therefore aborts the response instead of completing
/// it. At most two chunks (8 MiB) are buffered per stream (one read ahead), plus what the consumer
/// still holds.
pub type BlobStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send + 'static>>;

/// An open read of one blob, or of one range of it.
pub struct BlobReader {
    /// Size of the whole blob (for `Content-Range: bytes a-b/size`).
    pub size: u64,
    /// Offset of the first byte the stream yields.
    pub start: u64,
    /// Number of bytes the stream yields when nothing is corrupt.
    pub len: u64,
    /// The bytes.
    pub stream: BlobStream,
}

impl fmt::Debug for BlobReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobReader")
            .field("size", &self.size)
            .field("start", &self.start)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// How many chunks a stream reads and verifies ahead of the one being sent: one, so that
/// hashing the next chunk overlaps with sending this one, and memory stays at two chunks.
const READ_AHEAD: usize = 2;

/// A stream over `[start, end)` of `file`, verified against `chunks` (unless `check` is false:
/// only under a planted bug, see [`crate::FsBlobStore::read_for_peer`]). `end > start` and
/// `end <= chunks.blob_size` are the caller's to ensure.
pub(crate) fn verified_stream(
    file: File,
    digest: Digest,
    chunks: ChunkList,
    start: u64,
    end: u64,
    check: bool,
) -> BlobStream {
    let file = Arc::new(file);
    let chunks = Arc::new(chunks);
    let first = start / chunks.chunk_size;
    let spans: Vec<(u64, u64, u64)> = (first..)
        .map_while(|index| {
            chunks
                .chunk_span(index)
                .filter(|(chunk_start, _)| *chunk_start < end)
                .map(|(chunk_start, len)| (index, chunk_start, len))
        })
        .collect();
    let reads = futures::stream::iter(spans).map(move |(index, chunk_start, chunk_len)| {
        let (file, chunks, digest) = (Arc::clone(&file), Arc::clone(&chunks), digest.clone());
        async move {
            let bytes =
                read_verified(file, &chunks, &digest, index, chunk_start, chunk_len, check).await?;
            // Both bounds lie inside this chunk: start < chunk end and end > chunk start.
            let from = start.saturating_sub(chunk_start).min(chunk_len);
            let to = (end - chunk_start).min(chunk_len);
            match (usize::try_from(from), usize::try_from(to)) {
                (Ok(from), Ok(to)) if from <= to && to <= bytes.len() => Ok(bytes.slice(from..to)),
                _ => Err(io::Error::other("chunk bounds out of range")),
            }
        }
    });
    // The first error ends the stream: a response is aborted, never completed.
    let mut failed = false;
    let stream = reads.buffered(READ_AHEAD).take_while(move |item| {
        let go_on = !failed;
        failed |= item.is_err();
        futures::future::ready(go_on)
    });
    Box::pin(stream)
}

/// Reads chunk `index` on a blocking thread and checks it against its recorded hash.
async fn read_verified(
    file: Arc<File>,
    chunks: &ChunkList,
    digest: &Digest,
    index: u64,
    chunk_start: u64,
    chunk_len: u64,
    check: bool,
) -> io::Result<Bytes> {
    let Some(expected) = usize::try_from(index)
        .ok()
        .and_then(|i| chunks.hashes.get(i))
        .copied()
    else {
        // decode_sidecar guarantees one hash per chunk; treat a gap as corruption all the same.
        let err = CorruptBlob {
            digest: digest.clone(),
            chunk: Some(index),
            reason: "no recorded hash for this chunk".to_string(),
        };
        return Err(err.into());
    };
    let read = tokio::task::spawn_blocking(move || {
        read_chunk(&file, chunk_start, chunk_len, check.then_some(&expected))
    })
    .await;
    match read {
        Ok(Ok(buf)) => Ok(Bytes::from(buf)),
        Ok(Err(ChunkError::Io(e))) => {
            tracing::error!(%digest, chunk = index, error = %e, "blob read failed");
            Err(e)
        }
        Ok(Err(ChunkError::Mismatch)) => {
            tracing::error!(
                %digest,
                chunk = index,
                "stored blob chunk does not match its recorded sha256; aborting the read"
            );
            let err = CorruptBlob {
                digest: digest.clone(),
                chunk: Some(index),
                reason: "chunk sha256 does not match the hash recorded at commit".to_string(),
            };
            Err(err.into())
        }
        Err(join) => Err(io::Error::other(join)),
    }
}

enum ChunkError {
    Io(io::Error),
    Mismatch,
}

/// Reads `len` bytes at `offset` in pieces of at most [`READ_SIZE`], hashing as it goes.
fn read_chunk(
    file: &File,
    offset: u64,
    len: u64,
    expected: Option<&[u8; 32]>,
) -> Result<Vec<u8>, ChunkError> {
    let len = usize::try_from(len).map_err(|e| ChunkError::Io(io::Error::other(e)))?;
    let mut buf = vec![0u8; len];
    let mut hasher = Sha256::new();
    let mut at = offset;
    for piece in buf.chunks_mut(READ_SIZE) {
        file.read_exact_at(piece, at).map_err(ChunkError::Io)?;
        at += piece.len() as u64;
        hasher.update(&*piece);
    }
    let actual: [u8; 32] = hasher.finalize().into();
    if expected.is_none_or(|expected| &actual == expected) {
        Ok(buf)
    } else {
        Err(ChunkError::Mismatch)
    }
}
