//! Per-chunk hashes: the streaming [`ChunkHasher`] used while bytes arrive, and the versioned
//! sidecar file that records them next to each blob. Pure: no I/O.
//!
//! # Sidecar format, version 1 (all integers little-endian)
//!
//! ```text
//! offset  len   field
//! 0       8     magic  "WHFCHUNK"
//! 8       4     format version (u32) = 1
//! 12      8     chunk size in bytes (u64), 4 MiB today
//! 20      8     blob size in bytes (u64)
//! 28      8     chunk count n (u64) = ceil(blob size / chunk size)
//! 36      32*n  sha256 of each chunk, in order
//! 36+32n  32    sha256 of every byte before it (detects a damaged sidecar)
//! ```

use sha2::{Digest as _, Sha256};
use wharf_types::Digest;

use crate::CHUNK_SIZE;

const MAGIC: &[u8; 8] = b"WHFCHUNK";
const VERSION_1: u32 = 1;
const HEADER_LEN: usize = 36;
const HASH_LEN: usize = 32;
/// Chunk sizes a sidecar may declare; bounds the memory a verified read needs for one chunk.
const MIN_CHUNK_SIZE: u64 = 4 * 1024;
const MAX_CHUNK_SIZE: u64 = 64 * 1024 * 1024;

/// The chunk hashes of one blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkList {
    /// Size of every chunk but the last (which may be shorter).
    pub chunk_size: u64,
    /// Size of the whole blob.
    pub blob_size: u64,
    /// sha256 of each chunk, in order; `ceil(blob_size / chunk_size)` of them.
    pub hashes: Vec<[u8; 32]>,
}

impl ChunkList {
    /// sha256 over the concatenated chunk hashes: the `chunk_root` recorded with the blob.
    pub fn root(&self) -> Digest {
        let mut h = Sha256::new();
        for chunk in &self.hashes {
            h.update(chunk);
        }
        Digest::from_sha256_bytes(&h.finalize().into())
    }

    /// Offset and length of chunk `index`, or `None` past the end.
    pub fn chunk_span(&self, index: u64) -> Option<(u64, u64)> {
        let start = index.checked_mul(self.chunk_size)?;
        if start >= self.blob_size {
            return None;
        }
        Some((start, (self.blob_size - start).min(self.chunk_size)))
    }
}

/// Hashes a byte stream in fixed-size chunks; chunk boundaries carry over between `update` calls,
/// so bytes may arrive in pieces of any size.
#[derive(Clone)]
pub struct ChunkHasher {
    chunk_size: u64,
    current: Sha256,
    filled: u64,
    total: u64,
    done: Vec<[u8; 32]>,
}

impl Default for ChunkHasher {
    fn default() -> Self {
        ChunkHasher::new(CHUNK_SIZE)
    }
}

impl ChunkHasher {
    /// A hasher for chunks of `chunk_size` bytes (a zero size is treated as 1).
    pub fn new(chunk_size: u64) -> Self {
        ChunkHasher {
            chunk_size: chunk_size.max(1),
            current: Sha256::new(),
            filled: 0,
            total: 0,
            done: Vec::new(),
        }
    }

    /// Feeds the next bytes of the stream.
    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let room = self.chunk_size - self.filled;
            let take = usize::try_from(room).map_or(data.len(), |room| room.min(data.len()));
            let (head, rest) = data.split_at(take);
            self.current.update(head);
            self.filled += take as u64;
            self.total += take as u64;
            if self.filled == self.chunk_size {
                self.done.push(self.current.finalize_reset().into());
                self.filled = 0;
            }
            data = rest;
        }
    }

    /// Bytes seen so far.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Closes the last, possibly short, chunk and returns the list.
    pub fn finish(mut self) -> ChunkList {
        if self.filled > 0 {
            self.done.push(self.current.finalize().into());
        }
        ChunkList {
            chunk_size: self.chunk_size,
            blob_size: self.total,
            hashes: self.done,
        }
    }
}

/// Why a sidecar could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SidecarError {
    /// Too short, wrong magic, or a length that does not match its header.
    #[error("chunk sidecar is malformed: {0}")]
    Malformed(&'static str),
    /// A format version this code does not know (written by a newer Wharf).
    #[error("chunk sidecar has unknown format version {0}")]
    UnknownVersion(u32),
    /// The trailing checksum does not match: the sidecar itself is damaged.
    #[error("chunk sidecar checksum mismatch")]
    Checksum,
}

/// Encodes `list` as a version 1 sidecar.
pub fn encode_sidecar(list: &ChunkList) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + HASH_LEN * (list.hashes.len() + 1));
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION_1.to_le_bytes());
    out.extend_from_slice(&list.chunk_size.to_le_bytes());
    out.extend_from_slice(&list.blob_size.to_le_bytes());
    out.extend_from_slice(&(list.hashes.len() as u64).to_le_bytes());
    for hash in &list.hashes {
        out.extend_from_slice(hash);
    }
    let check: [u8; 32] = Sha256::digest(&out).into();
    out.extend_from_slice(&check);
    out
}

/// Decodes a sidecar of any known version.
pub fn decode_sidecar(bytes: &[u8]) -> Result<ChunkList, SidecarError> {
    let (magic, rest) = bytes
        .split_first_chunk::<8>()
        .ok_or(SidecarError::Malformed("shorter than its header"))?;
    if magic != MAGIC {
        return Err(SidecarError::Malformed("bad magic"));
    }
    let (version, _) = rest
        .split_first_chunk::<4>()
        .ok_or(SidecarError::Malformed("shorter than its header"))?;
    match u32::from_le_bytes(*version) {
        VERSION_1 => decode_v1(bytes),
        other => Err(SidecarError::UnknownVersion(other)),
    }
}

fn decode_v1(bytes: &[u8]) -> Result<ChunkList, SidecarError> {
    let short = SidecarError::Malformed("shorter than its header");
    let (body, check) = bytes.split_last_chunk::<HASH_LEN>().ok_or(short.clone())?;
    let header = body.get(12..HEADER_LEN).ok_or(short.clone())?;
    let hashes = body.get(HEADER_LEN..).ok_or(short)?;
    let actual: [u8; 32] = Sha256::digest(body).into();
    if &actual != check {
        return Err(SidecarError::Checksum);
    }
    let field = |i: usize| -> u64 {
        let mut b = [0u8; 8];
        if let Some(src) = header.get(i * 8..i * 8 + 8) {
            b.copy_from_slice(src);
        }
        u64::from_le_bytes(b)
    };
    let (chunk_size, blob_size, count) = (field(0), field(1), field(2));
    if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
        return Err(SidecarError::Malformed("chunk size out of range"));
    }
    if count != blob_size.div_ceil(chunk_size) {
        return Err(SidecarError::Malformed(
            "chunk count does not match blob size",
        ));
    }
    if hashes.len() as u64 != count.saturating_mul(HASH_LEN as u64) {
        return Err(SidecarError::Malformed("length does not match chunk count"));
    }
    let hashes = hashes
        .chunks_exact(HASH_LEN)
        .map(|c| {
            let mut h = [0u8; 32];
            h.copy_from_slice(c);
            h
        })
        .collect();
    Ok(ChunkList {
        chunk_size,
        blob_size,
        hashes,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sha(data: &[u8]) -> [u8; 32] {
        Sha256::digest(data).into()
    }

    #[test]
    fn chunk_boundaries_carry_over_between_updates() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        let mut whole = ChunkHasher::new(4096);
        whole.update(&data);
        let mut pieces = ChunkHasher::new(4096);
        for piece in data.chunks(999) {
            pieces.update(piece);
        }
        let (a, b) = (whole.finish(), pieces.finish());
        assert_eq!(a, b);
        assert_eq!(a.blob_size, 10_000);
        assert_eq!(
            a.hashes,
            vec![
                sha(&data[..4096]),
                sha(&data[4096..8192]),
                sha(&data[8192..])
            ]
        );
        assert_eq!(a.chunk_span(2), Some((8192, 10_000 - 8192)));
        assert_eq!(a.chunk_span(3), None);
    }

    #[test]
    fn exact_multiple_has_no_empty_tail_chunk_and_empty_has_none() {
        let mut h = ChunkHasher::new(4096);
        h.update(&[1u8; 8192]);
        assert_eq!(h.finish().hashes.len(), 2);
        let empty = ChunkHasher::new(4096).finish();
        assert!(empty.hashes.is_empty());
        assert_eq!(
            empty.root().to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn sidecar_round_trips_and_rejects_damage() {
        let mut h = ChunkHasher::new(4096);
        h.update(&[9u8; 10_000]);
        let list = h.finish();
        let bytes = encode_sidecar(&list);
        assert_eq!(bytes.len(), HEADER_LEN + 3 * 32 + 32);
        assert_eq!(decode_sidecar(&bytes).unwrap(), list);

        let mut flipped = bytes.clone();
        flipped[HEADER_LEN + 5] ^= 1;
        assert_eq!(decode_sidecar(&flipped), Err(SidecarError::Checksum));

        let mut version = bytes.clone();
        version[8] = 2;
        assert_eq!(
            decode_sidecar(&version),
            Err(SidecarError::UnknownVersion(2))
        );

        assert!(matches!(
            decode_sidecar(&bytes[..20]),
            Err(SidecarError::Malformed(_))
        ));
        assert!(matches!(
            decode_sidecar(b"NOTCHUNKxxxx"),
            Err(SidecarError::Malformed(_))
        ));
        assert!(matches!(
            decode_sidecar(&[]),
            Err(SidecarError::Malformed(_))
        ));
    }

    #[test]
    fn sidecar_rejects_inconsistent_header_even_with_valid_checksum() {
        let list = ChunkList {
            chunk_size: 4096,
            blob_size: 10_000,
            hashes: vec![[0u8; 32]; 2],
        };
        assert!(matches!(
            decode_sidecar(&encode_sidecar(&list)),
            Err(SidecarError::Malformed(_))
        ));
        let tiny = ChunkList {
            chunk_size: 1,
            blob_size: 1,
            hashes: vec![[0u8; 32]],
        };
        assert!(matches!(
            decode_sidecar(&encode_sidecar(&tiny)),
            Err(SidecarError::Malformed(_))
        ));
    }
}
