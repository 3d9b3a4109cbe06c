//! The values stored in the state tables (JSON-encoded; fields are only ever added).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use wharf_types::{Digest, NodeId};

use crate::command::RepoSettings;

/// A repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoRecord {
    pub settings: RepoSettings,
    pub created_ms: u64,
}

/// A stored blob, shared by every repository that links it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRecord {
    pub size: u64,
    pub chunk_root: Digest,
    /// Nodes holding verified, fsync'd bytes.
    pub holders: BTreeSet<NodeId>,
    /// No repository linking the blob asks for copies everywhere (all are `on-demand`, or none
    /// links it yet): nodes fetch it only when read. Absent in older records: copies everywhere.
    #[serde(default)]
    pub on_demand: bool,
    /// Data residency: the regions whose nodes may store it — the union of the `regions` of the
    /// repositories linking it, or `None` (anywhere) once a repository without residency links
    /// it. Absent in older records: anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regions: Option<BTreeSet<String>>,
}

impl BlobRecord {
    /// Whether a node of `region` may keep a copy.
    pub fn stores_in(&self, region: &str) -> bool {
        self.regions.as_ref().is_none_or(|r| r.contains(region))
    }
}

/// A blob's link into one repository (DESIGN.md §1.9).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkRecord {
    pub size: u64,
    pub linked_ms: u64,
}

/// A manifest stored under an image name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestRecord {
    pub media_type: String,
    pub size: u64,
    pub blobs: Vec<Digest>,
    pub manifests: Vec<Digest>,
    pub subject: Option<Digest>,
    pub created_ms: u64,
}

/// A generic file bound to a path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    pub digest: Digest,
    pub size: u64,
    pub created_ms: u64,
}

/// What the request-dedup table keeps per request id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRecord {
    pub log_index: u64,
    pub result: crate::command::CommandResult,
}

/// A one-time join token (only its sha256 is stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTokenRecord {
    /// Command time after which the token is refused.
    pub expires_at_ms: u64,
    /// The node id it admitted, once used.
    pub used_by: Option<NodeId>,
}
