//! `<data_dir>/incarnation.toml`: how far this node's raft state has come, recorded outside
//! `raft/` while the node runs (DESIGN.md §1.8).
//!
//! The record names the node and cluster it belongs to; a record of another identity (the
//! directory joined again under a new id) is ignored. A node whose raft state is behind its
//! record — `raft/` restored from an older copy, say — refuses to start: it may have voted, or acknowledged entries, that it no longer remembers,
//! and raft's safety rests on both. Only durable facts are recorded (the applied index and the
//! term of the entry at it, both in the state machine once applied), so the record is never
//! ahead of what a crash leaves on disk.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

const FILE: &str = "incarnation.toml";

/// The furthest point this node's raft state has reached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Incarnation {
    /// The term of the last applied entry.
    pub term: u64,
    /// The last applied index.
    pub applied_index: u64,
}

impl Incarnation {
    /// Whether `self` is further than `other` (worth recording).
    pub fn is_past(&self, other: &Incarnation) -> bool {
        self.applied_index > other.applied_index || self.term > other.term
    }
}

/// Why the raft state on disk is behind its record, if it is: `vote_term` is the term of the
/// stored vote, `applied` what the state machine has applied.
pub fn behind(recorded: &Incarnation, vote_term: u64, applied: &Incarnation) -> Option<String> {
    if applied.applied_index < recorded.applied_index {
        return Some(format!(
            "it has applied up to index {}, but this node had already applied index {}",
            applied.applied_index, recorded.applied_index
        ));
    }
    if vote_term < recorded.term {
        return Some(format!(
            "its vote is for term {vote_term}, but this node had already applied an entry of \
             term {}",
            recorded.term
        ));
    }
    None
}

/// What `incarnation.toml` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub node_id: u64,
    pub cluster_id: String,
    #[serde(flatten)]
    pub reached: Incarnation,
}

/// The record of node `node_id` in cluster `cluster_id`, if it wrote one.
pub fn recorded(
    data_dir: &Path,
    node_id: u64,
    cluster_id: &str,
) -> std::io::Result<Option<Incarnation>> {
    Ok(load(data_dir)?
        .filter(|r| r.node_id == node_id && r.cluster_id == cluster_id)
        .map(|r| r.reached))
}

/// The record, whoever wrote it.
pub fn load(data_dir: &Path) -> std::io::Result<Option<Record>> {
    match std::fs::read_to_string(data_dir.join(FILE)) {
        Ok(text) => toml::from_str(&text)
            .map(Some)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Serializes writers of the record within this process (the recorder and shutdown).
static STORING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Records `incarnation` unless the record is already at least as far; a record never moves
/// back.
pub fn advance(
    data_dir: &Path,
    node_id: u64,
    cluster_id: &str,
    incarnation: &Incarnation,
) -> std::io::Result<()> {
    let _one_writer = STORING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    match recorded(data_dir, node_id, cluster_id)? {
        Some(recorded) if !incarnation.is_past(&recorded) => Ok(()),
        _ => store(
            data_dir,
            &Record {
                node_id,
                cluster_id: cluster_id.to_string(),
                reached: *incarnation,
            },
        ),
    }
}

/// Replaces the record durably (tmp → fsync → rename → fsync dir).
fn store(data_dir: &Path, record: &Record) -> std::io::Result<()> {
    let text = toml::to_string(record)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    let tmp = data_dir.join(format!("{FILE}.tmp"));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, data_dir.join(FILE))?;
    std::fs::File::open(data_dir)?.sync_all()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn behind_compares_applied_index_and_vote_term() {
        let recorded = Incarnation {
            term: 3,
            applied_index: 40,
        };
        let same = recorded;
        assert_eq!(behind(&recorded, 3, &same), None);
        let further = Incarnation {
            term: 4,
            applied_index: 90,
        };
        assert_eq!(behind(&recorded, 5, &further), None);
        let older = Incarnation {
            term: 3,
            applied_index: 39,
        };
        assert!(behind(&recorded, 3, &older).unwrap().contains("index 40"));
        assert!(behind(&recorded, 2, &same).unwrap().contains("term 3"));
    }

    #[test]
    fn record_round_trips_advances_and_belongs_to_one_identity() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), None);
        let i = Incarnation {
            term: 2,
            applied_index: 7,
        };
        advance(dir.path(), 3, "c1", &i).unwrap();
        assert_eq!(recorded(dir.path(), 3, "c1").unwrap(), Some(i));
        let older = Incarnation {
            term: 2,
            applied_index: 5,
        };
        advance(dir.path(), 3, "c1", &older).unwrap();
        assert_eq!(
            recorded(dir.path(), 3, "c1").unwrap(),
            Some(i),
            "a record never moves back"
        );
        // The directory joined again under a new id: the old record does not apply to it.
        assert_eq!(recorded(dir.path(), 4, "c1").unwrap(), None);
        advance(dir.path(), 4, "c1", &older).unwrap();
        assert_eq!(recorded(dir.path(), 4, "c1").unwrap(), Some(older));
    }
}
