//! Content digests in the OCI form `algorithm:hex`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The hash algorithms Wharf stores content under: sha256 and sha512. Other algorithms are
/// refused with [`DigestError::UnsupportedAlgorithm`] (`DIGEST_INVALID` / `UNSUPPORTED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DigestAlgorithm {
    /// SHA-256, 64 lowercase hex characters.
    Sha256,
    /// SHA-512, 128 lowercase hex characters.
    Sha512,
}

impl DigestAlgorithm {
    /// Every supported algorithm, in their sort order.
    pub const ALL: [DigestAlgorithm; 2] = [DigestAlgorithm::Sha256, DigestAlgorithm::Sha512];

    /// The name used before the `:` of a digest and in on-disk paths (`sha256`, `sha512`).
    pub fn as_str(self) -> &'static str {
        match self {
            DigestAlgorithm::Sha256 => "sha256",
            DigestAlgorithm::Sha512 => "sha512",
        }
    }

    /// The number of lowercase hex characters of a digest of this algorithm.
    pub fn hex_len(self) -> usize {
        match self {
            DigestAlgorithm::Sha256 => 64,
            DigestAlgorithm::Sha512 => 128,
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        match name {
            "sha256" => Some(DigestAlgorithm::Sha256),
            "sha512" => Some(DigestAlgorithm::Sha512),
            _ => None,
        }
    }
}

impl fmt::Display for DigestAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a digest string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// The string is not `algorithm:encoded`, or the encoded part does not fit the algorithm.
    #[error("digest {0:?} is not of the form algorithm:hex")]
    Malformed(String),
    /// A well-formed digest of an algorithm Wharf does not store.
    #[error("digest algorithm {0:?} is not supported; use sha256 or sha512")]
    UnsupportedAlgorithm(String),
}

/// A content digest, always stored and printed as `<algorithm>:<lowercase hex>`
/// (`sha256:<64 hex>` or `sha512:<128 hex>`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest {
    algorithm: DigestAlgorithm,
    // `Box<str>`, not `String`: keeps a digest at 24 bytes, as small as before it carried its
    // algorithm (commands and records hold several).
    hex: Box<str>,
}

impl Digest {
    /// Builds a digest from raw sha256 output.
    pub fn from_sha256_bytes(bytes: &[u8; 32]) -> Self {
        Digest {
            algorithm: DigestAlgorithm::Sha256,
            hex: hex::encode(bytes).into(),
        }
    }

    /// Builds a digest from raw sha512 output.
    pub fn from_sha512_bytes(bytes: &[u8; 64]) -> Self {
        Digest {
            algorithm: DigestAlgorithm::Sha512,
            hex: hex::encode(bytes).into(),
        }
    }

    /// The algorithm that produced this digest.
    pub fn algorithm(&self) -> DigestAlgorithm {
        self.algorithm
    }

    /// The lowercase hex characters after `<algorithm>:` (64 for sha256, 128 for sha512).
    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (algorithm, encoded) = s
            .split_once(':')
            .ok_or_else(|| DigestError::Malformed(s.to_string()))?;
        // The grammar of the OCI image spec, checked before the algorithm is looked at so that
        // garbage is "malformed", not "unsupported".
        let algorithm_ok = !algorithm.is_empty()
            && algorithm
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+._-".contains(c));
        let encoded_ok = !encoded.is_empty()
            && encoded
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "=_-".contains(c));
        if !algorithm_ok || !encoded_ok {
            return Err(DigestError::Malformed(s.to_string()));
        }
        let algorithm = DigestAlgorithm::from_name(algorithm)
            .ok_or_else(|| DigestError::UnsupportedAlgorithm(algorithm.to_string()))?;
        if encoded.len() != algorithm.hex_len()
            || !encoded
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        {
            return Err(DigestError::Malformed(s.to_string()));
        }
        Ok(Digest {
            algorithm,
            hex: encoded.into(),
        })
    }
}

impl TryFrom<String> for Digest {
    type Error = DigestError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.to_string()
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm, self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const EMPTY_512: &str = "sha512:cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e";

    fn from_hex<const N: usize>(hex: &str) -> [u8; N] {
        let mut out = [0u8; N];
        hex::decode_to_slice(hex, &mut out).expect("test hex");
        out
    }

    #[test]
    fn round_trips_sha256() {
        let d: Digest = EMPTY.parse().expect("valid digest");
        assert_eq!(d.algorithm(), DigestAlgorithm::Sha256);
        assert_eq!(d.to_string(), EMPTY);
        assert_eq!(format!("{d:?}"), EMPTY);
        assert_eq!(d.hex().len(), 64);
        assert_eq!(Digest::from_sha256_bytes(&from_hex(d.hex())), d);
    }

    #[test]
    fn round_trips_sha512() {
        let d: Digest = EMPTY_512.parse().expect("valid digest");
        assert_eq!(d.algorithm(), DigestAlgorithm::Sha512);
        assert_eq!(d.to_string(), EMPTY_512);
        assert_eq!(format!("{d:?}"), EMPTY_512);
        assert_eq!(d.hex().len(), 128);
        assert_eq!(Digest::from_sha512_bytes(&from_hex(d.hex())), d);
    }

    #[test]
    fn serde_uses_the_string_form() {
        for text in [EMPTY, EMPTY_512] {
            let d: Digest = text.parse().expect("valid digest");
            let json = serde_json::to_string(&d).expect("serializes");
            assert_eq!(json, format!("\"{text}\""));
            let back: Digest = serde_json::from_str(&json).expect("parses back");
            assert_eq!(back, d);
        }
        let unsupported = format!("\"sha384:{}\"", "a".repeat(96));
        assert!(serde_json::from_str::<Digest>(&unsupported).is_err());
    }

    #[test]
    fn a_digest_stays_small() {
        assert!(std::mem::size_of::<Digest>() <= 24);
    }

    #[test]
    fn same_hex_different_algorithm_differ() {
        let a = Digest::from_sha256_bytes(&[1; 32]);
        let b: Digest = format!("sha512:{}", "01".repeat(64))
            .parse()
            .expect("valid digest");
        assert_ne!(a, b);
        assert!(a < b, "sha256 digests sort before sha512 ones");
    }

    #[test]
    fn refuses_malformed() {
        for bad in [
            "".to_string(),
            "sha256".to_string(),
            "sha256:".to_string(),
            "sha256:ABC".to_string(),
            "sha256:zz".to_string(),
            "SHA256:00".to_string(),
            "sha256:e3b0".to_string(),
            // a sha512-length hex under sha256, and the other way round
            format!("sha256:{}", "a".repeat(128)),
            format!("sha512:{}", "a".repeat(64)),
            format!("sha512:{}", "a".repeat(127)),
            format!("sha512:{}", "A".repeat(128)),
            format!("sha512:{}g", "a".repeat(127)),
        ] {
            assert!(
                matches!(bad.parse::<Digest>(), Err(DigestError::Malformed(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn refuses_other_algorithms() {
        for other in [
            format!("sha384:{}", "a".repeat(96)),
            format!("blake3:{}", "a".repeat(64)),
            "md5:d41d8cd98f00b204e9800998ecf8427e".to_string(),
        ] {
            assert!(
                matches!(
                    other.parse::<Digest>(),
                    Err(DigestError::UnsupportedAlgorithm(_))
                ),
                "{other}"
            );
        }
    }
}
