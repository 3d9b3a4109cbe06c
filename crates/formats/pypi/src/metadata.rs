//! Core metadata (`METADATA` in a wheel, `PKG-INFO` in an sdist): the RFC 822-style header
//! block of the core metadata specification, and the PEP 658 rule for which files may have
//! their metadata served on its own.

use crate::names::DistKind;

/// The fields Wharf reads from a file's core metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CoreMetadata {
    pub metadata_version: String,
    pub name: String,
    pub version: String,
    pub requires_python: Option<String>,
    pub summary: Option<String>,
    /// `Dynamic:` fields (metadata 2.2): fields a build may still change.
    pub dynamic: Vec<String>,
}

/// Why a metadata file could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadMetadata {
    #[error("the core metadata is not UTF-8")]
    NotUtf8,
    #[error("the core metadata has no {0} field")]
    Missing(&'static str),
}

impl CoreMetadata {
    /// Parses the header block (up to the first empty line; the description body after it is
    /// ignored). Continuation lines (starting with whitespace) extend the previous field.
    pub fn parse(bytes: &[u8]) -> Result<CoreMetadata, BadMetadata> {
        let text = std::str::from_utf8(bytes).map_err(|_| BadMetadata::NotUtf8)?;
        let mut fields: Vec<(String, String)> = Vec::new();
        for line in text.lines() {
            if line.trim().is_empty() {
                break;
            }
            if line.starts_with([' ', '\t']) {
                if let Some((_, value)) = fields.last_mut() {
                    value.push('\n');
                    value.push_str(line.trim());
                }
                continue;
            }
            if let Some((key, value)) = line.split_once(':') {
                fields.push((key.trim().to_ascii_lowercase(), value.trim().to_string()));
            }
        }
        let first = |key: &str| {
            fields
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };
        Ok(CoreMetadata {
            metadata_version: first("metadata-version")
                .ok_or(BadMetadata::Missing("Metadata-Version"))?,
            name: first("name").ok_or(BadMetadata::Missing("Name"))?,
            version: first("version").ok_or(BadMetadata::Missing("Version"))?,
            requires_python: first("requires-python").filter(|v| !v.is_empty()),
            summary: first("summary"),
            dynamic: fields
                .iter()
                .filter(|(k, _)| k == "dynamic")
                .map(|(_, v)| v.clone())
                .collect(),
        })
    }

    /// Whether this metadata may be served as `<file>.metadata` (PEP 658): always for a wheel;
    /// for an sdist only from metadata 2.2 on and without `Dynamic:` fields, since older
    /// `PKG-INFO` may lack the dependencies and pip would install without them.
    pub fn servable(&self, kind: DistKind) -> bool {
        match kind {
            DistKind::Wheel => true,
            DistKind::Sdist => self.dynamic.is_empty() && at_least(&self.metadata_version, (2, 2)),
        }
    }
}

/// Whether a `major.minor` metadata version is at least `want`.
fn at_least(version: &str, want: (u64, u64)) -> bool {
    let mut parts = version.trim().split('.').map(|p| p.parse::<u64>());
    match (parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => (major, minor) >= want,
        (Some(Ok(major)), None) => (major, 0) >= want,
        _ => false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const WHEEL: &str = "Metadata-Version: 2.4\nName: tiny_pkg\nVersion: 0.1.0\nSummary: A tiny\n  package\nRequires-Python: >=3.8\nRequires-Dist: requests\n\nLong: description: here\nName: other\n";

    #[test]
    fn parses_the_header_block_only() {
        let m = CoreMetadata::parse(WHEEL.as_bytes()).unwrap();
        assert_eq!(m.metadata_version, "2.4");
        assert_eq!(m.name, "tiny_pkg");
        assert_eq!(m.version, "0.1.0");
        assert_eq!(m.requires_python.as_deref(), Some(">=3.8"));
        assert_eq!(m.summary.as_deref(), Some("A tiny\npackage"));
        assert!(m.dynamic.is_empty());
        assert_eq!(
            CoreMetadata::parse(b"Metadata-Version: 2.1\nVersion: 1\n"),
            Err(BadMetadata::Missing("Name"))
        );
        assert_eq!(
            CoreMetadata::parse(&[0xff, 0xfe]),
            Err(BadMetadata::NotUtf8)
        );
    }

    #[test]
    fn sdist_metadata_is_served_only_from_2_2_without_dynamic_fields() {
        let m = |text: &str| CoreMetadata::parse(text.as_bytes()).unwrap();
        let new = m("Metadata-Version: 2.2\nName: a\nVersion: 1\n");
        let dynamic = m("Metadata-Version: 2.4\nName: a\nVersion: 1\nDynamic: Requires-Dist\n");
        let old = m("Metadata-Version: 2.1\nName: a\nVersion: 1\n");
        let ten = m("Metadata-Version: 10.0\nName: a\nVersion: 1\n");
        assert!(new.servable(DistKind::Sdist));
        assert!(ten.servable(DistKind::Sdist));
        assert!(!dynamic.servable(DistKind::Sdist));
        assert!(!old.servable(DistKind::Sdist));
        assert!(old.servable(DistKind::Wheel));
        assert!(dynamic.servable(DistKind::Wheel));
    }
}
