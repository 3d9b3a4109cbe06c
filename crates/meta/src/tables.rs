//! The state machine's redb tables. Every table maps bytes to bytes so snapshots can stream
//! them generically; keys are built so that byte order is the order listings need.
//!
//! A `<digest>` is the full text form `<alg>:<hex>` (`sha256:…` or `sha512:…`), so the same hex
//! under two algorithms names two different things.
//!
//! ```text
//! repos        <repo>                         -> json RepoRecord
//! blobs        <digest>                       -> json BlobRecord
//! blob_links   <repo> 0x00 <digest>           -> json LinkRecord
//! manifests    <name> 0x00 <digest>           -> json ManifestRecord
//! tags         <name> 0x00 <tag>              -> <digest>
//! images       <name>                         -> "" (catalog)
//! referrers    <name> 0x00 <subject digest> 0x00 <referrer digest> -> json ReferrerDescriptor
//! files        <repo> 0x00 <path>             -> json FileRecord
//! packages, package_versions                  (see crate::packages)
//! requests     <request id>                   -> json (log index, CommandResult)
//! request_log  <log index u64 BE>             -> <request id>   (expiry by log index)
//! sm_meta      "last_applied" | "membership" | "cluster_version" -> json
//! cluster      "join_token" 0x00 <sha256 hex>  -> json JoinTokenRecord
//!              "next_node_id"                 -> json u64 (ids are minted once, never reused)
//!              "node_version" | "state_hash" | "divergence"  (see crate::versions)
//! ```

use redb::TableDefinition;

/// A state table: bytes to bytes.
pub type StateTable = TableDefinition<'static, &'static [u8], &'static [u8]>;

pub const REPOS: StateTable = TableDefinition::new("repos");
pub const BLOBS: StateTable = TableDefinition::new("blobs");
pub const BLOB_LINKS: StateTable = TableDefinition::new("blob_links");
pub const MANIFESTS: StateTable = TableDefinition::new("manifests");
pub const TAGS: StateTable = TableDefinition::new("tags");
pub const IMAGES: StateTable = TableDefinition::new("images");
pub const REFERRERS: StateTable = TableDefinition::new("referrers");
pub const FILES: StateTable = TableDefinition::new("files");
pub const PACKAGES: StateTable = TableDefinition::new("packages");
pub const PACKAGE_VERSIONS: StateTable = TableDefinition::new("package_versions");
pub const REQUESTS: StateTable = TableDefinition::new("requests");
pub const REQUEST_LOG: StateTable = TableDefinition::new("request_log");
/// Raft bookkeeping of the state machine (last applied log id, membership, cluster version).
pub const SM_META: StateTable = TableDefinition::new("sm_meta");
/// Cluster administration: join tokens and the node-id counter.
pub const CLUSTER: StateTable = TableDefinition::new("cluster");

/// Every table a snapshot carries, in a fixed order.
pub const STATE_TABLES: &[StateTable] = &[
    REPOS,
    BLOBS,
    BLOB_LINKS,
    MANIFESTS,
    TAGS,
    IMAGES,
    REFERRERS,
    FILES,
    REQUESTS,
    REQUEST_LOG,
    SM_META,
    CLUSTER,
    PACKAGES,
    PACKAGE_VERSIONS,
];

/// Tables added after cluster version 4. A binary from before them neither hashes nor decodes
/// them, so while one is empty it is left out of state hashes and snapshots: a cluster in the
/// middle of an upgrade keeps equal hashes, and an older follower can install a newer leader's
/// snapshot (the tables fill only once every member runs version 5).
pub fn left_out_when_empty(table: StateTable) -> bool {
    use redb::TableHandle;
    [PACKAGES, PACKAGE_VERSIONS]
        .iter()
        .any(|t| t.name() == table.name())
}

/// Joins key parts with a 0x00 separator (names never contain NUL).
pub fn key(parts: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            out.push(0);
        }
        out.extend_from_slice(p.as_bytes());
    }
    out
}

/// The prefix of every key under `parts` (the parts plus a trailing separator).
pub fn prefix(parts: &[&str]) -> Vec<u8> {
    let mut out = key(parts);
    out.push(0);
    out
}
