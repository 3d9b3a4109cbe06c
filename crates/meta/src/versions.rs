//! Cluster versions and state-hash checkpoints (DESIGN.md §1.1).
//!
//! **Cluster version.** Every command kind names the cluster version that introduced it
//! ([`Command::since_version`]); `apply` rejects a kind newer than the committed version, and
//! proposers do not send one. Each node reports the version its binary supports
//! ([`Command::ReportNodeVersion`], at every start); the leader raises the cluster version
//! ([`Command::SetClusterVersion`]) once every member of the configuration has reported it, and
//! `apply` checks that again, so an old binary never meets a command it cannot decode. A node
//! whose binary supports less than the committed version refuses to start or join.
//!
//! **State-hash checkpoints.** Every node hashes its state at the same indexes (the snapshot
//! interval) and reports it ([`Command::ReportStateHash`]); `apply` compares the reports for
//! an index and records the first divergence, which every node then exports.
//!
//! ```text
//! sm_meta  "cluster_version"                    -> json u32 (absent: 1)
//! cluster  "node_version" 0x00 <node id, 20 digits> -> json u32
//!          "state_hash" 0x00 <index, 20 digits>     -> json {node id: sha256 hex}
//!          "divergence"                         -> json Divergence
//! ```

use std::collections::BTreeMap;

use redb::{ReadTransaction, ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};
use wharf_types::{ErrorCode, NodeId};

use crate::apply::{ApplyError, get_json, put_json};
use crate::command::{Command, Outcome, Rejection};
use crate::handle::MetaError;
use crate::raft_types::StoredMembership;
use crate::tables::{self, key, prefix};

/// The cluster version of a cluster that never raised it: every command kind of the release
/// that introduced versions (including the two version commands themselves). Binaries from
/// before that release cannot join a cluster of later ones.
pub const BASE_CLUSTER_VERSION: u32 = 1;
/// The newest cluster version this binary can run: it decodes and applies every command kind
/// introduced up to it.
pub const SUPPORTED_CLUSTER_VERSION: u32 = 5;
/// How many checkpoints' reports are kept.
const CHECKPOINTS_KEPT: usize = 16;

const KEY_CLUSTER_VERSION: &[u8] = b"cluster_version";
const KEY_MEMBERSHIP: &[u8] = b"membership";
const NODE_VERSION: &str = "node_version";
const STATE_HASH: &str = "state_hash";
const KEY_DIVERGENCE: &[u8] = b"divergence";

/// Two nodes reported different state hashes at the same index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Divergence {
    pub index: u64,
    /// Every report for that index when the divergence was found.
    pub hashes: BTreeMap<NodeId, String>,
}

/// The reports for one checkpoint index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub index: u64,
    pub hashes: BTreeMap<NodeId, String>,
}

impl Command {
    /// The cluster version that introduced this kind of command.
    pub fn since_version(&self) -> u32 {
        match self {
            Command::ReportStateHash { .. } => 2,
            Command::HoldingsChanged { .. } => 3,
            Command::CreateRepo { settings, .. }
                if settings.format.is_package() || settings.allow_unpublish =>
            {
                5
            }
            Command::CreateRepo { settings, .. } if !settings.regions.is_empty() => 4,
            Command::PublishPackage(_) | Command::UpdatePackage(_) => 5,
            _ => BASE_CLUSTER_VERSION,
        }
    }
}

fn padded(n: u64) -> String {
    format!("{n:020}")
}

type Verdict = Result<Outcome, Rejection>;

/// The committed cluster version, inside `apply`.
pub(crate) fn cluster_version_in(txn: &WriteTransaction) -> Result<u32, ApplyError> {
    Ok(get_json::<u32>(txn, tables::SM_META, KEY_CLUSTER_VERSION)?.unwrap_or(BASE_CLUSTER_VERSION))
}

/// Refuses a command kind newer than the committed cluster version.
pub(crate) fn gate(
    txn: &WriteTransaction,
    command: &Command,
) -> Result<Option<Rejection>, ApplyError> {
    let needed = command.since_version();
    let running = cluster_version_in(txn)?;
    Ok((needed > running).then(|| {
        Rejection::new(
            ErrorCode::Unsupported,
            format!(
                "{} needs cluster version {needed}; the cluster runs version {running} until \
                 every member runs a wharf that supports it",
                command.kind()
            ),
        )
    }))
}

pub(crate) fn report_node_version(
    txn: &WriteTransaction,
    node_id: NodeId,
    supported: u32,
) -> Result<Verdict, ApplyError> {
    let k = key(&[NODE_VERSION, &padded(node_id)]);
    if get_json::<u32>(txn, tables::CLUSTER, &k)? == Some(supported) {
        return Ok(Ok(Outcome::Unchanged));
    }
    put_json(txn, tables::CLUSTER, &k, &supported)?;
    Ok(Ok(Outcome::Applied))
}

pub(crate) fn set_cluster_version(
    txn: &WriteTransaction,
    log_index: u64,
    version: u32,
) -> Result<Verdict, ApplyError> {
    let running = cluster_version_in(txn)?;
    if version <= running {
        return Ok(Ok(Outcome::Unchanged));
    }
    let members = membership_from_meta(txn)?.unwrap_or_default();
    for id in &members {
        let k = key(&[NODE_VERSION, &padded(*id)]);
        let supported = get_json::<u32>(txn, tables::CLUSTER, &k)?.unwrap_or(BASE_CLUSTER_VERSION);
        if supported < version {
            return Ok(Err(Rejection::new(
                ErrorCode::Conflict,
                format!(
                    "node {id} supports cluster version {supported}, not {version}: upgrade it \
                     first"
                ),
            )));
        }
    }
    if version > SUPPORTED_CLUSTER_VERSION {
        // Every member reported supporting it, yet this binary does not: it was replaced by an
        // older one since, and cannot apply what follows. (Checked after the members, so that
        // a raise every node rejects does not stop a node.)
        return Err(ApplyError::UnsupportedClusterVersion {
            index: log_index,
            version,
        });
    }
    put_json(txn, tables::SM_META, KEY_CLUSTER_VERSION, &version)?;
    tracing::info!(version, "cluster version raised");
    Ok(Ok(Outcome::Applied))
}

pub(crate) fn membership_from_meta(
    txn: &WriteTransaction,
) -> Result<Option<Vec<NodeId>>, ApplyError> {
    let meta = txn.open_table(tables::SM_META)?;
    let Some(bytes) = meta.get(KEY_MEMBERSHIP)? else {
        return Ok(None);
    };
    let membership: StoredMembership =
        crate::log_store::decode(bytes.value()).map_err(|e| ApplyError::Corrupt {
            table: "sm_meta".to_string(),
            source: serde::de::Error::custom(e),
        })?;
    Ok(Some(
        membership.membership().nodes().map(|(id, _)| *id).collect(),
    ))
}

pub(crate) fn report_state_hash(
    txn: &WriteTransaction,
    node_id: NodeId,
    index: u64,
    sha256: &str,
) -> Result<Verdict, ApplyError> {
    let k = key(&[STATE_HASH, &padded(index)]);
    let mut hashes: BTreeMap<NodeId, String> =
        get_json(txn, tables::CLUSTER, &k)?.unwrap_or_default();
    if hashes.get(&node_id).map(String::as_str) == Some(sha256) {
        return Ok(Ok(Outcome::Unchanged));
    }
    hashes.insert(node_id, sha256.to_string());
    let diverged = hashes.values().any(|h| h != sha256);
    if diverged && get_json::<Divergence>(txn, tables::CLUSTER, KEY_DIVERGENCE)?.is_none() {
        tracing::error!(
            index,
            ?hashes,
            "nodes disagree on the state at the same index"
        );
        put_json(
            txn,
            tables::CLUSTER,
            KEY_DIVERGENCE,
            &Divergence {
                index,
                hashes: hashes.clone(),
            },
        )?;
    }
    put_json(txn, tables::CLUSTER, &k, &hashes)?;
    // Keep the newest checkpoints only.
    let mut table = txn.open_table(tables::CLUSTER)?;
    let start = prefix(&[STATE_HASH]);
    let mut keys = Vec::new();
    for item in table.range(start.as_slice()..)? {
        let (k, _) = item?;
        if !k.value().starts_with(&start) {
            break;
        }
        keys.push(k.value().to_vec());
    }
    for old in keys
        .iter()
        .take(keys.len().saturating_sub(CHECKPOINTS_KEPT))
    {
        table.remove(old.as_slice())?;
    }
    Ok(Ok(Outcome::Applied))
}

fn read_json<T: serde::de::DeserializeOwned>(
    txn: &ReadTransaction,
    table: tables::StateTable,
    k: &[u8],
) -> Result<Option<T>, MetaError> {
    let t = match txn.open_table(table) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let Some(v) = t.get(k)? else { return Ok(None) };
    serde_json::from_slice(v.value())
        .map(Some)
        .map_err(|e| MetaError::Fatal(format!("{k:?}: {e}")))
}

/// The committed cluster version.
pub fn cluster_version(txn: &ReadTransaction) -> Result<u32, MetaError> {
    Ok(read_json(txn, tables::SM_META, KEY_CLUSTER_VERSION)?.unwrap_or(BASE_CLUSTER_VERSION))
}

/// The version node `node_id` last reported supporting.
pub fn node_version(txn: &ReadTransaction, node_id: NodeId) -> Result<Option<u32>, MetaError> {
    read_json(
        txn,
        tables::CLUSTER,
        &key(&[NODE_VERSION, &padded(node_id)]),
    )
}

/// The first divergence found, if any.
pub fn divergence(txn: &ReadTransaction) -> Result<Option<Divergence>, MetaError> {
    read_json(txn, tables::CLUSTER, KEY_DIVERGENCE)
}

/// The kept checkpoints, oldest first.
pub fn checkpoints(txn: &ReadTransaction) -> Result<Vec<Checkpoint>, MetaError> {
    let t = match txn.open_table(tables::CLUSTER) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let start = prefix(&[STATE_HASH]);
    let mut out = Vec::new();
    for item in t.range(start.as_slice()..)? {
        let (k, v) = item?;
        let Some(index) = k.value().strip_prefix(start.as_slice()) else {
            break;
        };
        let index = String::from_utf8_lossy(index)
            .parse()
            .map_err(|e| MetaError::Fatal(format!("checkpoint key: {e}")))?;
        let hashes = serde_json::from_slice(v.value())
            .map_err(|e| MetaError::Fatal(format!("checkpoint {index}: {e}")))?;
        out.push(Checkpoint { index, hashes });
    }
    Ok(out)
}
