//! `<data_dir>/node.toml`: the node's id, region and cluster id, written once — when
//! `wharf cluster init` creates a cluster or when the node joins one — and never changed
//! afterwards (DESIGN.md §1.8, §5).

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};
use wharf_types::NodeId;

use crate::ServerError;

/// What `node.toml` records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeIdentity {
    pub node_id: NodeId,
    pub region: String,
    /// Empty in directories written before clusters existed (a single node).
    #[serde(default)]
    pub cluster_id: String,
}

fn path(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("node.toml")
}

/// Reads `node.toml`, if this directory already belongs to a cluster.
///
/// A node whose raft state is missing refuses to start: after a wipe it must rejoin under a
/// new id, never resume under its old one.
pub fn load(data_dir: &Path) -> Result<Option<NodeIdentity>, ServerError> {
    let path = path(data_dir);
    let identity: NodeIdentity = match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text)
            .map_err(|e| ServerError::Identity(format!("{}: {e}", path.display())))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if !data_dir.join("raft").join("log.redb").exists() {
        return Err(ServerError::Identity(format!(
            "{} names node {} but its raft state (raft/log.redb) is missing; a wiped node must \
             not come back under its old id: move the directory away and join again with a new \
             token",
            path.display(),
            identity.node_id
        )));
    }
    Ok(Some(identity))
}

/// Creates the raft log (empty) and then writes `node.toml`, in that order: a crash in between
/// leaves a directory without `node.toml`, which simply starts over, never a `node.toml` whose
/// raft state looks wiped.
pub fn store_with_raft_dir(data_dir: &Path, identity: &NodeIdentity) -> Result<(), ServerError> {
    let raft_dir = data_dir.join("raft");
    drop(
        wharf_meta::log_store::LogStore::open(&raft_dir)
            .map_err(|e| ServerError::Identity(format!("{}: {e}", raft_dir.display())))?,
    );
    store(data_dir, identity)
}

/// The random nonce this directory presents when it joins a cluster, created (durably) on
/// first use: a retry after a crash presents the same one and gets the same node id, while a
/// wiped directory gets a new one and cannot reuse a spent token.
pub fn join_nonce(data_dir: &Path) -> Result<String, ServerError> {
    let path = data_dir.join("join.nonce");
    match std::fs::read_to_string(&path) {
        Ok(nonce) if nonce.trim().len() >= 16 => return Ok(nonce.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    let nonce = hex::encode(rand::random::<[u8; 16]>());
    write_durably(data_dir, "join.nonce", nonce.as_bytes())?;
    Ok(nonce)
}

/// Writes `data_dir/name` durably (tmp → fsync → rename → fsync dir).
fn write_durably(data_dir: &Path, name: &str, bytes: &[u8]) -> Result<(), ServerError> {
    let tmp = data_dir.join(format!("{name}.tmp"));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, data_dir.join(name))?;
    std::fs::File::open(data_dir)?.sync_all()?;
    Ok(())
}

/// Writes `node.toml` durably (tmp → fsync → rename → fsync dir).
fn store(data_dir: &Path, identity: &NodeIdentity) -> Result<(), ServerError> {
    let text = toml::to_string(identity).map_err(|e| ServerError::Identity(e.to_string()))?;
    write_durably(data_dir, "node.toml", text.as_bytes())
}
