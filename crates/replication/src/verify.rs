//! Chunk-by-chunk verification of bytes arriving from a peer. Pure: no I/O.
//!
//! Bytes are gathered into whole chunks; a chunk is released only once its sha256 matches the
//! hash the transfer announced, so nothing unverified is ever written to disk or sent on.

use bytes::{Bytes, BytesMut};
use sha2::{Digest as _, Sha256};
use wharf_types::planted::{self, PlantedBug};

/// Why received bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("chunk {index} does not match its recorded sha256")]
    Mismatch { index: u64 },
    #[error("received more bytes than the blob's {size}")]
    TooLong { size: u64 },
    #[error("transfer ended at byte {at} of {size}")]
    Truncated { at: u64, size: u64 },
    #[error("offset {offset} is not a chunk boundary")]
    Unaligned { offset: u64 },
    #[error("{count} chunk hashes do not cover {size} bytes in chunks of {chunk_size}")]
    BadChunkList {
        count: usize,
        size: u64,
        chunk_size: u64,
    },
}

/// Verifies a blob's bytes from a chunk-aligned offset to its end.
#[derive(Debug)]
pub struct ChunkVerifier {
    hashes: Vec<[u8; 32]>,
    chunk_size: u64,
    size: u64,
    /// Offset of the first byte in `pending`.
    at: u64,
    pending: BytesMut,
}

impl ChunkVerifier {
    /// A verifier for bytes `[offset, size)` of a blob with these chunk hashes.
    pub fn new(
        hashes: Vec<[u8; 32]>,
        chunk_size: u64,
        size: u64,
        offset: u64,
    ) -> Result<Self, VerifyError> {
        let expected = if chunk_size == 0 {
            None
        } else {
            usize::try_from(size.div_ceil(chunk_size)).ok()
        };
        if expected != Some(hashes.len()) {
            return Err(VerifyError::BadChunkList {
                count: hashes.len(),
                size,
                chunk_size,
            });
        }
        if !offset.is_multiple_of(chunk_size) && offset != size {
            return Err(VerifyError::Unaligned { offset });
        }
        if offset > size {
            return Err(VerifyError::TooLong { size });
        }
        Ok(ChunkVerifier {
            hashes,
            chunk_size,
            size,
            at: offset,
            pending: BytesMut::new(),
        })
    }

    /// Length of the chunk starting at `self.at`.
    fn current_len(&self) -> u64 {
        (self.size - self.at).min(self.chunk_size)
    }

    /// Offset up to which bytes were verified and released.
    pub fn verified_up_to(&self) -> u64 {
        self.at
    }

    /// Takes `data`; returns the chunks it completed, verified, in order.
    pub fn push(&mut self, mut data: Bytes) -> Result<Vec<Bytes>, VerifyError> {
        let mut done = Vec::new();
        while !data.is_empty() {
            if self.at >= self.size {
                return Err(VerifyError::TooLong { size: self.size });
            }
            let want =
                usize::try_from(self.current_len()).unwrap_or(usize::MAX) - self.pending.len();
            let take = want.min(data.len());
            self.pending.extend_from_slice(&data.split_to(take));
            if self.pending.len() as u64 == self.current_len() {
                done.push(self.release()?);
            }
        }
        Ok(done)
    }

    fn release(&mut self) -> Result<Bytes, VerifyError> {
        let index = self.at / self.chunk_size;
        let chunk = std::mem::take(&mut self.pending).freeze();
        let actual: [u8; 32] = Sha256::digest(&chunk).into();
        let expected = usize::try_from(index).ok().and_then(|i| self.hashes.get(i));
        // planted bug skip-peer-digest-verify: a peer's chunk is taken whatever it hashes to
        if expected != Some(&actual) && !planted::active(PlantedBug::SkipPeerDigestVerify) {
            return Err(VerifyError::Mismatch { index });
        }
        self.at += chunk.len() as u64;
        Ok(chunk)
    }

    /// The transfer ended: every byte must have arrived.
    pub fn finish(&self) -> Result<(), VerifyError> {
        if self.at == self.size && self.pending.is_empty() {
            Ok(())
        } else {
            Err(VerifyError::Truncated {
                at: self.at + self.pending.len() as u64,
                size: self.size,
            })
        }
    }
}

/// sha256 over the concatenated chunk hashes: the chunk root recorded with a blob.
pub fn chunk_root(hashes: &[[u8; 32]]) -> wharf_types::Digest {
    let mut h = Sha256::new();
    for chunk in hashes {
        h.update(chunk);
    }
    wharf_types::Digest::from_sha256_bytes(&h.finalize().into())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn hashes(data: &[u8], chunk: usize) -> Vec<[u8; 32]> {
        data.chunks(chunk)
            .map(|c| Sha256::digest(c).into())
            .collect()
    }

    #[test]
    fn chunks_are_released_only_when_verified() {
        let data: Vec<u8> = (0..10u8).collect();
        let mut v = ChunkVerifier::new(hashes(&data, 4), 4, 10, 0).unwrap();
        assert!(v.push(Bytes::from_static(&[0, 1, 2])).unwrap().is_empty());
        let out = v.push(Bytes::copy_from_slice(&data[3..9])).unwrap();
        assert_eq!(out.concat(), data[..8].to_vec());
        assert!(v.finish().is_err(), "two bytes are missing");
        let out = v.push(Bytes::copy_from_slice(&data[9..])).unwrap();
        assert_eq!(out.concat(), data[8..].to_vec());
        v.finish().unwrap();
        assert!(v.push(Bytes::from_static(&[1])).is_err(), "past the end");

        // From an offset, and a flipped byte is refused before anything of its chunk leaves.
        let mut v = ChunkVerifier::new(hashes(&data, 4), 4, 10, 4).unwrap();
        let mut bad = data[4..].to_vec();
        bad[5] ^= 1;
        let err = v.push(Bytes::from(bad)).unwrap_err();
        assert_eq!(err, VerifyError::Mismatch { index: 2 });
        assert_eq!(v.verified_up_to(), 8);
        assert!(ChunkVerifier::new(hashes(&data, 4), 4, 10, 3).is_err());
        assert!(ChunkVerifier::new(hashes(&data, 4), 4, 13, 0).is_err());
        assert_eq!(chunk_root(&hashes(&data, 4)), chunk_root(&hashes(&data, 4)));
    }
}
