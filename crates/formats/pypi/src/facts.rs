//! What Wharf keeps about each uploaded file (`PublishedFile.facts`) and about a release
//! (`PackagePublish.metadata`). The core metadata file itself is bound beside its
//! distribution file as `<file>.metadata` (a blob of its own, recorded and replicated like
//! the file); its sha256 is that binding's digest.

use serde::{Deserialize, Serialize};

/// Per-file facts, as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileFacts {
    /// `Requires-Python` (from the form, else the core metadata).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requires_python: Option<String>,
    /// `bdist_wheel` or `sdist`.
    #[serde(default)]
    pub filetype: String,
    /// The core metadata's `Metadata-Version`.
    #[serde(default)]
    pub metadata_version: String,
    /// sha256 (hex) of the core metadata, whether or not it is served (PEP 658 serves it only
    /// for wheels and sdists with static metadata 2.2+).
    #[serde(default)]
    pub core_metadata_sha256: String,
}

impl FileFacts {
    /// Reads stored facts; anything unreadable is treated as absent.
    pub fn from_value(value: &serde_json::Value) -> FileFacts {
        serde_json::from_value(value.clone()).unwrap_or_default()
    }

    /// As stored.
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_absent_facts() {
        let facts = FileFacts {
            requires_python: Some(">=3.8".into()),
            filetype: "sdist".into(),
            metadata_version: "2.4".into(),
            core_metadata_sha256: "ab".repeat(32),
        };
        assert_eq!(FileFacts::from_value(&facts.to_value()), facts);
        assert_eq!(
            FileFacts::from_value(&serde_json::Value::Null),
            FileFacts::default()
        );
    }
}
