//! `<data_dir>/node.toml`: the node's id and region, written once when the data directory is
//! first used and never changed afterwards (DESIGN.md §1.8, §5).

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
}

/// The id of the first node of a single-node cluster. Joining nodes get minted ids from the
/// cluster (cluster issue).
pub const FIRST_NODE_ID: NodeId = 1;

/// Reads `node.toml`, or writes it (durably) on first start.
pub fn load_or_create(data_dir: &Path, region: &str) -> Result<NodeIdentity, ServerError> {
    let path = data_dir.join("node.toml");
    match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text)
            .map_err(|e| ServerError::Identity(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let identity = NodeIdentity {
                node_id: FIRST_NODE_ID,
                region: region.to_string(),
            };
            let text =
                toml::to_string(&identity).map_err(|e| ServerError::Identity(e.to_string()))?;
            let tmp = data_dir.join("node.toml.tmp");
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(data_dir)?.sync_all()?;
            Ok(identity)
        }
        Err(e) => Err(e.into()),
    }
}
