//! Deterministic blob contents that are generated as they are sent and checked as they arrive.
//!
//! A stream is the little-endian bytes of successive wyrand outputs. [`PrngStream::fill`] can be
//! called with any buffer sizes: a word split across two calls continues where it stopped, so the
//! byte at offset `p` never depends on how the stream was chunked. That lets a 1 GiB blob be sent,
//! hashed and compared without ever holding it in memory.

use sha2::{Digest, Sha256};

/// Bytes generated per request-body frame or hashing step.
pub const CHUNK: usize = 256 * 1024;

/// SplitMix64 finaliser: turns related inputs (seed, index) into unrelated 64-bit states.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The state for stream `id` under the run's `seed`: distinct ids give distinct blobs.
pub fn stream_seed(seed: u64, id: u64) -> u64 {
    splitmix64(seed ^ splitmix64(id ^ 0x5748_4152_4642_454E))
}

/// An endless deterministic byte stream (wyrand words, little endian).
#[derive(Clone, Debug)]
pub struct PrngStream {
    state: u64,
    /// The current word, of which the last `pending_len` bytes have not been handed out yet.
    pending: [u8; 8],
    pending_len: usize,
}

impl PrngStream {
    /// A stream starting from `state` (use [`stream_seed`] to derive it).
    pub fn new(state: u64) -> Self {
        Self {
            state,
            pending: [0; 8],
            pending_len: 0,
        }
    }

    fn next_word(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0xA076_1D64_78BD_642F);
        let t = u128::from(self.state) * u128::from(self.state ^ 0xE703_7ED1_A0B4_28DB);
        ((t >> 64) as u64) ^ (t as u64)
    }

    /// Writes the next `buf.len()` bytes of the stream into `buf`.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut start = 0;
        if self.pending_len > 0 {
            let n = self.pending_len.min(buf.len());
            let from = 8 - self.pending_len;
            buf[..n].copy_from_slice(&self.pending[from..from + n]);
            self.pending_len -= n;
            start = n;
        }
        let mut words = buf[start..].chunks_exact_mut(8);
        for w in &mut words {
            w.copy_from_slice(&self.next_word().to_le_bytes());
        }
        let rest = words.into_remainder();
        if !rest.is_empty() {
            let w = self.next_word().to_le_bytes();
            let n = rest.len();
            rest.copy_from_slice(&w[..n]);
            self.pending = w;
            self.pending_len = 8 - n;
        }
    }
}

/// `sha256:<hex>` of the first `len` bytes of the stream seeded with `state`.
pub fn digest_of(state: u64, len: u64) -> String {
    let mut stream = PrngStream::new(state);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut left = len;
    while left > 0 {
        let n = usize::try_from(left).map_or(CHUNK, |l| l.min(CHUNK));
        stream.fill(&mut buf[..n]);
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    format!("sha256:{}", hex::encode(hasher.finalize()))
}

/// The first byte where a received body left the expected stream.
#[derive(Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// Offset from the start of the body.
    pub offset: u64,
    /// What the stream has there.
    pub expected: u8,
    /// What arrived.
    pub got: u8,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "body differs at byte {}: expected {:#04x}, got {:#04x}",
            self.offset, self.expected, self.got
        )
    }
}

/// Checks a body chunk by chunk against the stream it should carry.
#[derive(Debug)]
pub struct Comparer {
    stream: PrngStream,
    scratch: Vec<u8>,
    offset: u64,
}

impl Comparer {
    /// A comparer expecting the stream seeded with `state` from its first byte.
    pub fn new(state: u64) -> Self {
        Self {
            stream: PrngStream::new(state),
            scratch: Vec::new(),
            offset: 0,
        }
    }

    /// Bytes checked so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Checks the next `data.len()` bytes of the body.
    pub fn check(&mut self, data: &[u8]) -> Result<(), Mismatch> {
        if self.scratch.len() < data.len() {
            self.scratch.resize(data.len(), 0);
        }
        let expected = &mut self.scratch[..data.len()];
        self.stream.fill(expected);
        if expected != data {
            let (i, (e, g)) = expected
                .iter()
                .zip(data)
                .enumerate()
                .find(|(_, (e, g))| e != g)
                .unwrap_or((0, (&0, &0)));
            return Err(Mismatch {
                offset: self.offset + i as u64,
                expected: *e,
                got: *g,
            });
        }
        self.offset += data.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(state: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        PrngStream::new(state).fill(&mut v);
        v
    }

    #[test]
    fn chunking_does_not_change_the_bytes() {
        let reference = whole(7, 10_000);
        for sizes in [
            &[1usize, 2, 3, 5, 7, 11][..],
            &[8, 8, 9],
            &[4093],
            &[13, 1, 0, 4000],
        ] {
            let mut s = PrngStream::new(7);
            let mut got = Vec::new();
            let mut i = 0;
            while got.len() < reference.len() {
                let n = sizes[i % sizes.len()].min(reference.len() - got.len());
                let mut buf = vec![0; n];
                s.fill(&mut buf);
                got.extend_from_slice(&buf);
                i += 1;
            }
            assert_eq!(got, reference, "chunk sizes {sizes:?}");
        }
    }

    #[test]
    fn seeds_and_ids_give_different_streams() {
        assert_ne!(whole(stream_seed(1, 0), 64), whole(stream_seed(1, 1), 64));
        assert_ne!(whole(stream_seed(1, 0), 64), whole(stream_seed(2, 0), 64));
        assert_eq!(whole(stream_seed(3, 9), 64), whole(stream_seed(3, 9), 64));
    }

    #[test]
    fn comparer_accepts_the_stream_in_odd_chunks() {
        let data = whole(42, 5000);
        let mut c = Comparer::new(42);
        for part in data.chunks(333) {
            assert_eq!(c.check(part), Ok(()));
        }
        assert_eq!(c.offset(), 5000);
    }

    #[test]
    fn comparer_finds_one_flipped_byte() {
        let mut data = whole(42, 5000);
        data[3001] ^= 0x10;
        let mut c = Comparer::new(42);
        let err = data.chunks(1000).map(|p| c.check(p)).find(Result::is_err);
        let Some(Err(m)) = err else {
            panic!("flip not detected")
        };
        assert_eq!(m.offset, 3001);
        assert_eq!(m.expected ^ m.got, 0x10);
    }

    #[test]
    fn digest_matches_hash_of_whole_stream() {
        let len = CHUNK * 2 + 17;
        let data = whole(5, len);
        let want = format!("sha256:{}", hex::encode(Sha256::digest(&data)));
        assert_eq!(digest_of(5, len as u64), want);
    }
}
