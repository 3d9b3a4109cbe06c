//! Verified reads: every chunk that overlaps the requested range is read whole, hashed and
//! compared with its sidecar hash before any of its bytes are yielded (DESIGN.md §1.4).

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::pin::Pin;

use bytes::Bytes;
use futures::Stream;
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
/// it. At most one chunk (4 MiB) is buffered per stream, plus what the consumer still holds.
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

struct ReadState {
    file: Option<File>,
    digest: Digest,
    chunks: ChunkList,
    next_chunk: u64,
    /// First byte to yield, and one past the last.
    start: u64,
    end: u64,
    finished: bool,
}

/// A stream over `[start, end)` of `file`, verified against `chunks`. `end > start` and
/// `end <= chunks.blob_size` are the caller's to ensure.
pub(crate) fn verified_stream(
    file: File,
    digest: Digest,
    chunks: ChunkList,
    start: u64,
    end: u64,
) -> BlobStream {
    let state = ReadState {
        file: Some(file),
        next_chunk: start / chunks.chunk_size,
        digest,
        chunks,
        start,
        end,
        finished: false,
    };
    Box::pin(futures::stream::unfold(state, next_piece))
}

async fn next_piece(mut st: ReadState) -> Option<(io::Result<Bytes>, ReadState)> {
    if st.finished {
        return None;
    }
    let index = st.next_chunk;
    let (chunk_start, chunk_len) = match st.chunks.chunk_span(index) {
        Some(span) if span.0 < st.end => span,
        _ => return None,
    };
    let Some(expected) = usize::try_from(index)
        .ok()
        .and_then(|i| st.chunks.hashes.get(i))
        .copied()
    else {
        // decode_sidecar guarantees one hash per chunk; treat a gap as corruption all the same.
        st.finished = true;
        let err = CorruptBlob {
            digest: st.digest.clone(),
            chunk: Some(index),
            reason: "no recorded hash for this chunk".to_string(),
        };
        return Some((Err(err.into()), st));
    };
    let Some(file) = st.file.take() else {
        st.finished = true;
        return Some((
            Err(io::Error::other("blob read resumed after an aborted read")),
            st,
        ));
    };
    let read = tokio::task::spawn_blocking(move || {
        let result = read_chunk(&file, chunk_start, chunk_len, &expected);
        (file, result)
    })
    .await;
    let buf = match read {
        Ok((file, Ok(buf))) => {
            st.file = Some(file);
            buf
        }
        Ok((_, Err(ChunkError::Io(e)))) => {
            st.finished = true;
            tracing::error!(digest = %st.digest, chunk = index, error = %e, "blob read failed");
            return Some((Err(e), st));
        }
        Ok((_, Err(ChunkError::Mismatch))) => {
            st.finished = true;
            tracing::error!(
                digest = %st.digest,
                chunk = index,
                "stored blob chunk does not match its recorded sha256; aborting the read"
            );
            let err = CorruptBlob {
                digest: st.digest.clone(),
                chunk: Some(index),
                reason: "chunk sha256 does not match the hash recorded at commit".to_string(),
            };
            return Some((Err(err.into()), st));
        }
        Err(join) => {
            st.finished = true;
            return Some((Err(io::Error::other(join)), st));
        }
    };
    st.next_chunk = index + 1;
    // Both bounds lie inside this chunk: start < chunk end and end > chunk start.
    let from = st.start.saturating_sub(chunk_start).min(chunk_len);
    let to = (st.end - chunk_start).min(chunk_len);
    let bytes = Bytes::from(buf);
    match (usize::try_from(from), usize::try_from(to)) {
        (Ok(from), Ok(to)) if from <= to && to <= bytes.len() => {
            Some((Ok(bytes.slice(from..to)), st))
        }
        _ => {
            st.finished = true;
            Some((Err(io::Error::other("chunk bounds out of range")), st))
        }
    }
}

enum ChunkError {
    Io(io::Error),
    Mismatch,
}

/// Reads `len` bytes at `offset` in pieces of at most [`READ_SIZE`], hashing as it goes.
fn read_chunk(
    mut file: &File,
    offset: u64,
    len: u64,
    expected: &[u8; 32],
) -> Result<Vec<u8>, ChunkError> {
    let len = usize::try_from(len).map_err(|e| ChunkError::Io(io::Error::other(e)))?;
    let mut buf = vec![0u8; len];
    file.seek(SeekFrom::Start(offset)).map_err(ChunkError::Io)?;
    let mut hasher = Sha256::new();
    for piece in buf.chunks_mut(READ_SIZE) {
        file.read_exact(piece).map_err(ChunkError::Io)?;
        hasher.update(&*piece);
    }
    let actual: [u8; 32] = hasher.finalize().into();
    if &actual == expected {
        Ok(buf)
    } else {
        Err(ChunkError::Mismatch)
    }
}
