//! Content digests in the OCI form `algorithm:hex`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The hash algorithms Wharf stores content under. Only sha256 for now:
/// other algorithms are refused with `DIGEST_INVALID` / `UNSUPPORTED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum DigestAlgorithm {
    /// SHA-256, 64 lowercase hex characters.
    Sha256,
}

/// Why a digest string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// The string is not `algorithm:encoded`.
    #[error("digest {0:?} is not of the form algorithm:hex")]
    Malformed(String),
    /// A well-formed digest of an algorithm Wharf does not store.
    #[error("digest algorithm {0:?} is not supported; use sha256")]
    UnsupportedAlgorithm(String),
}

/// A sha256 content digest, always stored and printed as `sha256:<64 lowercase hex>`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest {
    hex: String,
}

impl Digest {
    /// Builds a digest from raw sha256 output.
    pub fn from_sha256_bytes(bytes: &[u8; 32]) -> Self {
        Digest {
            hex: hex::encode(bytes),
        }
    }

    /// The algorithm (always sha256 today).
    pub fn algorithm(&self) -> DigestAlgorithm {
        DigestAlgorithm::Sha256
    }

    /// The 64 lowercase hex characters after `sha256:`.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The raw 32 bytes of the hash.
    pub fn to_bytes(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        // `hex` was validated at construction, so decoding cannot fail.
        if hex::decode_to_slice(&self.hex, &mut out).is_err() {
            out = [0u8; 32];
        }
        out
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (algorithm, encoded) = s
            .split_once(':')
            .ok_or_else(|| DigestError::Malformed(s.to_string()))?;
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
        match algorithm {
            "sha256" => {
                if encoded.len() != 64
                    || !encoded
                        .chars()
                        .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
                {
                    return Err(DigestError::Malformed(s.to_string()));
                }
                Ok(Digest {
                    hex: encoded.to_string(),
                })
            }
            "sha512" if encoded.len() != 128 => Err(DigestError::Malformed(s.to_string())),
            other => Err(DigestError::UnsupportedAlgorithm(other.to_string())),
        }
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
        write!(f, "sha256:{}", self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn round_trips_sha256() {
        let d: Digest = EMPTY.parse().expect("valid digest");
        assert_eq!(d.to_string(), EMPTY);
        assert_eq!(Digest::from_sha256_bytes(&d.to_bytes()), d);
    }

    #[test]
    fn refuses_malformed_and_unknown() {
        for bad in [
            "",
            "sha256",
            "sha256:",
            "sha256:ABC",
            "sha256:zz",
            "SHA256:00",
            "sha256:e3b0",
        ] {
            assert!(
                matches!(bad.parse::<Digest>(), Err(DigestError::Malformed(_))),
                "{bad}"
            );
        }
        let sha512 = format!("sha512:{}", "a".repeat(128));
        assert!(matches!(
            sha512.parse::<Digest>(),
            Err(DigestError::UnsupportedAlgorithm(_))
        ));
    }
}
