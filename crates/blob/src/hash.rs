//! Whole-blob hashing with the algorithm a digest names. Uploads always hash sha256 while they
//! stream (the common case costs no extra pass); a sha512 name is checked with one more pass over
//! the finished upload file, and [`FsBlobStore::verify`](crate::FsBlobStore::verify) re-hashes
//! with whatever algorithm names the blob.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use sha2::{Digest as _, Sha256, Sha512};
use wharf_types::{Digest, DigestAlgorithm};

/// Bytes read per step when hashing a file.
const READ_BUF: usize = 1024 * 1024;

/// An incremental hasher for one [`DigestAlgorithm`].
pub(crate) enum DigestHasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl DigestHasher {
    pub(crate) fn new(algorithm: DigestAlgorithm) -> Self {
        match algorithm {
            DigestAlgorithm::Sha256 => DigestHasher::Sha256(Sha256::new()),
            DigestAlgorithm::Sha512 => DigestHasher::Sha512(Sha512::new()),
        }
    }

    pub(crate) fn update(&mut self, bytes: &[u8]) {
        match self {
            DigestHasher::Sha256(h) => h.update(bytes),
            DigestHasher::Sha512(h) => h.update(bytes),
        }
    }

    pub(crate) fn finish(self) -> Digest {
        match self {
            DigestHasher::Sha256(h) => Digest::from_sha256_bytes(&h.finalize().into()),
            DigestHasher::Sha512(h) => Digest::from_sha512_bytes(&h.finalize().into()),
        }
    }
}

/// Hashes the whole file at `path` with `algorithm`. Blocking: reads the file once.
pub(crate) fn hash_file(path: &Path, algorithm: DigestAlgorithm) -> io::Result<Digest> {
    let mut file = File::open(path)?;
    let mut hasher = DigestHasher::new(algorithm);
    let mut buf = vec![0u8; READ_BUF];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(buf.get(..n).unwrap_or_default());
    }
    Ok(hasher.finish())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn hashes_files_with_the_named_algorithm() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let bytes: Vec<u8> = (0..(READ_BUF + 17)).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();

        let d256 = hash_file(&path, DigestAlgorithm::Sha256).unwrap();
        assert_eq!(
            d256,
            Digest::from_sha256_bytes(&Sha256::digest(&bytes).into())
        );
        let d512 = hash_file(&path, DigestAlgorithm::Sha512).unwrap();
        assert_eq!(d512.algorithm(), DigestAlgorithm::Sha512);
        assert_eq!(
            d512,
            Digest::from_sha512_bytes(&Sha512::digest(&bytes).into())
        );

        std::fs::write(&path, b"").unwrap();
        assert_eq!(
            hash_file(&path, DigestAlgorithm::Sha512)
                .unwrap()
                .to_string(),
            "sha512:cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e"
        );
    }
}
