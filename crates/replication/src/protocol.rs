//! The blob-transfer protocol between nodes, version 1. Pure: framing and messages, no I/O.
//!
//! Every request opens one bidirectional QUIC stream (ALPN [`ALPN`]). The client writes one
//! request frame; the server answers with one response frame and, for a fetch, the bytes.
//!
//! ```text
//! request frame   u8 protocol version (1) · u32 big-endian length · JSON Request
//! response frame  u32 big-endian length · JSON Response
//!
//! have   → Have{held}
//! fetch  → Fetch{size, chunk_size, chunk_hashes} · bytes [offset, size)   (offset: a chunk boundary)
//!          (a stream reset mid-way: the sender's copy failed its own check, or it stopped)
//! push   → PushReady{already_held} · (client) bytes [0, size), finish → Stored{size}
//! forward · (client) request body, finish → Forwarded{status, headers} · response body
//! any    → Error{code, message}
//! ```
//!
//! A receiver checks every chunk against `chunk_hashes` before using it, and a fetch's hashes
//! against the chunk root recorded in the state machine, so a peer can never hand over bytes
//! that do not match what was committed (DESIGN.md §1.4).

use serde::{Deserialize, Serialize};
use wharf_types::{Digest, NodeId};

/// The protocol version this node speaks (the first byte of every request).
pub const PROTOCOL_VERSION: u8 = 1;

/// The TLS application protocol of blob-transfer connections.
pub const ALPN: &[u8] = b"wharf-blob/1";

/// Largest frame accepted (a push header of a 1 TiB blob lists 262,144 chunk hashes: ~17 MiB).
pub const MAX_FRAME: u32 = 32 * 1024 * 1024;

/// What a node asks a peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Which of these blobs does the peer hold (verified and fsync'd)?
    Have { from: NodeId, digests: Vec<Digest> },
    /// Send blob `digest` from `offset` (a multiple of the chunk size) to its end.
    Fetch {
        from: NodeId,
        digest: Digest,
        offset: u64,
    },
    /// Take a copy of blob `digest`; its bytes follow once the peer said it lacks it.
    Push {
        from: NodeId,
        digest: Digest,
        size: u64,
        chunk_size: u64,
        /// sha256 of each chunk, hex.
        chunk_hashes: Vec<String>,
    },
    /// Run a client request on the peer (it owns the upload session the request names); the
    /// request body follows.
    Forward {
        from: NodeId,
        method: String,
        uri: String,
        headers: Vec<(String, String)>,
    },
    /// Fetch blob `digest` from its holders into your own store (the leader's repair worker
    /// asks this of a node that may store a blob the leader itself may not: data residency).
    /// Answered with `Stored` once the copy is verified and fsync'd.
    Copy { from: NodeId, digest: Digest },
}

impl Request {
    /// The node that sent the request (checked against its certificate).
    pub fn from(&self) -> NodeId {
        match self {
            Request::Have { from, .. }
            | Request::Fetch { from, .. }
            | Request::Push { from, .. }
            | Request::Forward { from, .. }
            | Request::Copy { from, .. } => *from,
        }
    }
}

/// What a peer answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Response {
    Have {
        held: Vec<bool>,
    },
    /// The bytes from the requested offset follow.
    Fetch {
        size: u64,
        chunk_size: u64,
        chunk_hashes: Vec<String>,
    },
    /// `already_held`: nothing needs to be sent. Otherwise the pusher sends the bytes.
    PushReady {
        already_held: bool,
    },
    /// The pushed bytes are verified and fsync'd on the peer.
    Stored {
        size: u64,
    },
    /// The peer's response to a forwarded request; its body follows.
    Forwarded {
        status: u16,
        headers: Vec<(String, String)>,
    },
    Error {
        /// A stable code ([`wharf_types::ErrorCode`] wire string).
        code: String,
        message: String,
    },
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("protocol version {0} is not supported (this node speaks {PROTOCOL_VERSION})")]
    Version(u8),
    #[error("frame of {0} bytes is larger than {MAX_FRAME}")]
    TooLarge(u32),
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// Encodes a request frame.
pub fn encode_request(request: &Request) -> Vec<u8> {
    let mut out = vec![PROTOCOL_VERSION];
    out.extend(encode_response_like(request));
    out
}

/// Encodes a response frame.
pub fn encode_response(response: &Response) -> Vec<u8> {
    encode_response_like(response)
}

fn encode_response_like<T: Serialize>(message: &T) -> Vec<u8> {
    // Serializing these plain enums cannot fail.
    let json = serde_json::to_vec(message).unwrap_or_default();
    let len = u32::try_from(json.len()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(4 + json.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&json);
    out
}

/// Checks a request's version byte.
pub fn check_version(version: u8) -> Result<(), FrameError> {
    if version == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(FrameError::Version(version))
    }
}

/// Checks a frame length before its body is read.
pub fn check_length(len: u32) -> Result<usize, FrameError> {
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    usize::try_from(len).map_err(|e| FrameError::Malformed(e.to_string()))
}

/// Decodes a frame body.
pub fn decode<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, FrameError> {
    serde_json::from_slice(body).map_err(|e| FrameError::Malformed(e.to_string()))
}

/// Chunk hashes as sent on the wire.
pub fn hashes_to_hex(hashes: &[[u8; 32]]) -> Vec<String> {
    hashes.iter().map(hex::encode).collect()
}

/// Chunk hashes from the wire.
pub fn hashes_from_hex(hashes: &[String]) -> Result<Vec<[u8; 32]>, FrameError> {
    hashes
        .iter()
        .map(|h| {
            let mut out = [0u8; 32];
            hex::decode_to_slice(h, &mut out)
                .map_err(|e| FrameError::Malformed(format!("chunk hash {h:?}: {e}")))?;
            Ok(out)
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_versions_are_checked() {
        let request = Request::Fetch {
            from: 2,
            digest: Digest::from_sha256_bytes(&[1; 32]),
            offset: 4 * 1024 * 1024,
        };
        let frame = encode_request(&request);
        check_version(frame[0]).unwrap();
        let len = u32::from_be_bytes(frame[1..5].try_into().unwrap());
        assert_eq!(check_length(len).unwrap(), frame.len() - 5);
        assert_eq!(decode::<Request>(&frame[5..]).unwrap(), request);
        assert_eq!(request.from(), 2);
        assert_eq!(check_version(2), Err(FrameError::Version(2)));
        assert!(matches!(
            check_length(MAX_FRAME + 1),
            Err(FrameError::TooLarge(_))
        ));
        assert!(decode::<Response>(b"{\"op\":\"nope\"}").is_err());
        let hashes = vec![[7u8; 32], [9u8; 32]];
        assert_eq!(hashes_from_hex(&hashes_to_hex(&hashes)).unwrap(), hashes);
        assert!(hashes_from_hex(&["zz".to_string()]).is_err());
    }
}
