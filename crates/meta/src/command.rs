//! The commands that change Wharf's metadata, the envelope they travel in through Raft, and
//! the results `apply` gives back.
//!
//! Every encoding here is written to the Raft log, so it carries a version
//! ([`Envelope::version`]) and old variants are never removed or reordered; new ones are added
//! at the end (serde's externally tagged enums keep that compatible).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use wharf_types::{Digest, ErrorCode, Format, ImageName, NodeId, RepoName, Tag};

use crate::packages::{PackagePublish, PackageUpdate};

/// Current envelope encoding version.
pub const ENVELOPE_VERSION: u16 = 1;

/// Minted once per client request and reused by every forward and retry, so a retried write
/// applies once (DESIGN.md §1.1).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestId(pub String);

/// What travels through Raft: one command plus who asked, when, and under which request id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub version: u16,
    pub request_id: RequestId,
    /// The node that proposed the command.
    pub proposer: NodeId,
    /// The authenticated user (or `anonymous`).
    pub actor: String,
    /// The proposer's wall clock in milliseconds since the epoch. `apply` uses this, never its
    /// own clock, so every node computes the same state.
    pub timestamp_ms: u64,
    pub command: Command,
}

impl std::fmt::Display for Envelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.request_id.0, self.command.kind())
    }
}

/// Settings of a repository, chosen at creation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoSettings {
    pub format: Format,
    /// Tags (OCI) / paths (generic) bind once, forever.
    pub immutable: bool,
    /// Admit OCI indexes whose child manifests are not (yet) in the repository.
    #[serde(default)]
    pub allow_sparse_index: bool,
    /// How mutable tags, listings and generated indexes are read (DESIGN.md §1.5c).
    #[serde(default)]
    pub consistency: Consistency,
    /// Where the repository's blobs are copied (DESIGN.md §4 "Replication").
    #[serde(default)]
    pub replication: ReplicationPolicy,
    /// Data residency: when not empty, the repository's bytes are stored only on nodes of these
    /// regions (`replication` then applies within them); other nodes forward its writes and
    /// stream its reads without keeping a copy. Since cluster version 4.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub regions: BTreeSet<String>,
    /// Package repositories (npm): versions may be unpublished (each stays reserved forever).
    /// Since cluster version 5.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_unpublish: bool,
}

impl RepoSettings {
    /// Whether this repository lets a node of `region` store its bytes.
    pub fn stores_in(&self, region: &str) -> bool {
        self.regions.is_empty() || self.regions.contains(region)
    }
}

/// Why a region name cannot be used in a repository's `regions`.
pub fn check_region_name(region: &str) -> Result<(), String> {
    let ok = !region.is_empty()
        && region.len() <= 64
        && region
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "region {region:?} is not a region name (1 to 64 letters, digits, '-', '_' or '.')"
        ))
    }
}

/// Which nodes keep a copy of a repository's blobs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReplicationPolicy {
    /// Every node fetches a copy soon after the commit.
    #[default]
    AllRegions,
    /// Copies are made by uploads (`min_copies`), reads (read-through) and repairs only.
    OnDemand,
}

/// How a repository's mutable state is read on a node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    /// Linearizable: every read of mutable state goes through a (shared) ReadIndex.
    #[default]
    Strong,
    /// Served from local state while the node heard from a leader within
    /// `read.max_staleness` and applied what it knew committed; else as `strong`.
    Bounded,
}

/// A descriptor as it is kept for referrers listings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReferrerDescriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    pub artifact_type: Option<String>,
    pub annotations: BTreeMap<String, String>,
}

/// A manifest being stored, with everything `apply` needs to check it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestPut {
    pub name: ImageName,
    /// Tag to bind, if the manifest was pushed by tag.
    pub tag: Option<Tag>,
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    /// Blobs (config + layers) that must be linked in the repository.
    pub blobs: Vec<Digest>,
    /// Child manifests (of an index) that must exist under `name`, unless the repository
    /// allows sparse indexes.
    pub manifests: Vec<Digest>,
    /// The `subject` this manifest refers to (never checked for existence).
    pub subject: Option<Digest>,
    /// How this manifest appears in its subject's referrers list.
    pub referrer: Option<ReferrerDescriptor>,
    /// Chunk root of the stored manifest bytes (they are a blob like any other).
    pub chunk_root: Digest,
    /// The node that stored the manifest bytes.
    pub holder: NodeId,
}

/// Every kind of metadata change. Append new variants at the end only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Create a repository; `if_absent` makes it a no-op when one with the same format exists
    /// (the implicit create of `wharf dev` on first push).
    CreateRepo {
        name: RepoName,
        settings: RepoSettings,
        if_absent: bool,
    },
    /// Record that a verified blob is stored and link it into a repository (upload or mount).
    LinkBlob {
        repo: RepoName,
        digest: Digest,
        size: u64,
        chunk_root: Digest,
        holder: NodeId,
    },
    /// Link a blob that is already linked in `from` into `repo` (cross-repository mount).
    MountBlob {
        repo: RepoName,
        from: RepoName,
        digest: Digest,
    },
    /// Drop a blob's link from a repository (blob DELETE); the bytes stay for GC.
    UnlinkBlob { repo: RepoName, digest: Digest },
    /// Store a manifest (already stored as a blob) and optionally bind a tag to it.
    PutManifest(ManifestPut),
    /// Delete a manifest by digest, and every tag pointing to it.
    DeleteManifest { name: ImageName, digest: Digest },
    /// Delete one tag.
    DeleteTag { name: ImageName, tag: Tag },
    /// Bind a generic-file path to a blob that was stored for it.
    PutFile {
        repo: RepoName,
        path: String,
        digest: Digest,
        size: u64,
        chunk_root: Digest,
        holder: NodeId,
    },
    /// Delete a generic-file path.
    DeleteFile { repo: RepoName, path: String },
    /// Record a one-time join token (only its sha256 is kept), valid until `expires_at_ms`
    /// (command time, never a node's clock).
    CreateJoinToken {
        token_sha256: String,
        expires_at_ms: u64,
    },
    /// Consume a join token and mint a fresh, never-reused node id for the node that presented
    /// it (`wharf serve --join`).
    AdmitNode {
        token_sha256: String,
        addr: String,
        region: String,
        /// The cluster version the joining node's binary supports (absent in older entries:
        /// the base version).
        #[serde(default)]
        supported_version: u32,
    },
    /// A node reports the newest cluster version its binary supports (at every start).
    ReportNodeVersion { node_id: NodeId, supported: u32 },
    /// Raise the cluster version: command kinds it introduced may be used from then on.
    /// Rejected unless every member of the configuration reported supporting it.
    SetClusterVersion { version: u32 },
    /// A node's state hash at a checkpoint index (see [`crate::versions`]).
    ReportStateHash {
        node_id: NodeId,
        index: u64,
        sha256: String,
    },
    /// A node's own holdings changed: `added` blobs are fsync'd and verified on it, `removed`
    /// ones are about to be unlinked (DESIGN.md §4). Only the node itself proposes this for its
    /// id; holdings of a node outside the configuration are ignored.
    HoldingsChanged {
        node_id: NodeId,
        added: Vec<HeldBlob>,
        removed: Vec<Digest>,
    },
    /// Bind a package version (or more files of it) to stored blobs (npm, PyPI, Cargo).
    /// Since cluster version 5.
    PublishPackage(PackagePublish),
    /// Change a package's dist-tags, deprecations, yanks, owners or unpublish versions.
    /// Since cluster version 5.
    UpdatePackage(PackageUpdate),
}

/// A blob a node reports holding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldBlob {
    pub digest: Digest,
    pub size: u64,
    pub chunk_root: Digest,
}

impl Command {
    /// A short stable name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::CreateRepo { .. } => "create_repo",
            Command::LinkBlob { .. } => "link_blob",
            Command::MountBlob { .. } => "mount_blob",
            Command::UnlinkBlob { .. } => "unlink_blob",
            Command::PutManifest(_) => "put_manifest",
            Command::DeleteManifest { .. } => "delete_manifest",
            Command::DeleteTag { .. } => "delete_tag",
            Command::PutFile { .. } => "put_file",
            Command::DeleteFile { .. } => "delete_file",
            Command::CreateJoinToken { .. } => "create_join_token",
            Command::AdmitNode { .. } => "admit_node",
            Command::ReportNodeVersion { .. } => "report_node_version",
            Command::SetClusterVersion { .. } => "set_cluster_version",
            Command::ReportStateHash { .. } => "report_state_hash",
            Command::HoldingsChanged { .. } => "holdings_changed",
            Command::PublishPackage(_) => "publish_package",
            Command::UpdatePackage(_) => "update_package",
        }
    }
}

/// What a successful command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The command changed state.
    Applied,
    /// The state already was what the command asked for (idempotent re-push).
    Unchanged,
    /// A join token was consumed; the joining node gets this id.
    NodeAdmitted { node_id: NodeId },
}

/// Why `apply` refused a committed command. A rejection is a normal, deterministic result
/// (every node rejects the same way), not a fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// A stable code string, see [`ErrorCode::as_str`].
    pub code: String,
    pub message: String,
}

impl Rejection {
    /// Builds a rejection with one of the stable codes.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Rejection {
            code: code.as_str().to_string(),
            message: message.into(),
        }
    }
}

/// The apply result returned to the proposer (and to a retry with the same request id).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    /// Entries that carry no command (blank, membership) produce this.
    #[default]
    None,
    Ok(Outcome),
    Rejected(Rejection),
}
