//! Packuments generated from the state machine: the full document (`application/json`) and
//! the abbreviated one npm asks for when installing (`application/vnd.npm.install-v1+json`).
//! Pure: the caller hands in the records and the base URL.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};
use wharf_registry::package_records::{PackageRecord, VersionRecord};

/// The media type of the abbreviated packument.
pub const ABBREVIATED: &str = "application/vnd.npm.install-v1+json";

/// Version fields the abbreviated packument keeps (npm's registry docs), besides `dist` and
/// `deprecated`.
const ABBREVIATED_FIELDS: &[&str] = &[
    "name",
    "version",
    "dependencies",
    "optionalDependencies",
    "devDependencies",
    "peerDependencies",
    "peerDependenciesMeta",
    "bundleDependencies",
    "bundledDependencies",
    "bin",
    "directories",
    "engines",
    "os",
    "cpu",
    "libc",
    "_hasShrinkwrap",
    "hasInstallScript",
];

/// Which packument a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Representation {
    Full,
    Abbreviated,
}

impl Representation {
    /// From an `Accept` header: the abbreviated form when it is asked for with a non-zero q.
    pub fn from_accept(accept: Option<&str>) -> Self {
        let asks = accept.is_some_and(|a| {
            a.split(',').any(|item| {
                let mut parts = item.split(';').map(str::trim);
                parts.next() == Some(ABBREVIATED)
                    && !parts.any(|p| {
                        p.strip_prefix("q=")
                            .and_then(|q| q.parse::<f32>().ok())
                            .is_some_and(|q| q <= 0.0)
                    })
            })
        });
        if asks {
            Representation::Abbreviated
        } else {
            Representation::Full
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Representation::Full => "application/json",
            Representation::Abbreviated => ABBREVIATED,
        }
    }
}

/// npm's `_rev` for a package at a revision: `<revision>-<hash>`, the same on every node.
pub fn rev(repo: &str, name: &str, revision: u64) -> String {
    let hash = Sha256::digest(format!("{repo}\0{name}\0{revision}").as_bytes());
    format!("{revision}-{}", &hex::encode(hash)[..16])
}

/// RFC 3339 in UTC with milliseconds, as npm writes `time`.
pub fn iso_time(ms: u64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// Whether an install of this version runs scripts (what `hasInstallScript` tells npm).
fn has_install_script(doc: &Map<String, Value>) -> bool {
    doc.get("scripts")
        .and_then(Value::as_object)
        .is_some_and(|s| {
            ["preinstall", "install", "postinstall"]
                .iter()
                .any(|k| s.contains_key(*k))
        })
}

/// One version's document as served: the stored one with its tarball URL and deprecation.
pub fn version_doc(
    record: &VersionRecord,
    tarball_url: &str,
    representation: Representation,
) -> Value {
    let stored = record.metadata.as_object().cloned().unwrap_or_default();
    let mut doc = match representation {
        Representation::Full => stored.clone(),
        Representation::Abbreviated => stored
            .iter()
            .filter(|(k, _)| ABBREVIATED_FIELDS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    };
    let mut dist = stored
        .get("dist")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    dist.insert("tarball".into(), Value::String(tarball_url.to_string()));
    doc.insert("dist".into(), Value::Object(dist));
    if has_install_script(&stored) {
        doc.insert("hasInstallScript".into(), Value::Bool(true));
    }
    if let Some(message) = &record.deprecated {
        doc.insert("deprecated".into(), Value::String(message.clone()));
    }
    Value::Object(doc)
}

/// The packument of a package: live versions only. `tarball_url(filename)` builds each
/// version's absolute tarball URL. `None` when no version is live.
pub fn render(
    repo: &str,
    package: &PackageRecord,
    versions: &[(String, VersionRecord)],
    representation: Representation,
    tarball_url: impl Fn(&str) -> String,
) -> Option<Value> {
    let live: Vec<&VersionRecord> = versions
        .iter()
        .map(|(_, v)| v)
        .filter(|v| v.is_live())
        .collect();
    if live.is_empty() {
        return None;
    }
    let mut docs = Map::new();
    let mut times = BTreeMap::new();
    for v in &live {
        let file = v.files.keys().next().cloned().unwrap_or_default();
        docs.insert(
            v.version.clone(),
            version_doc(v, &tarball_url(&file), representation),
        );
        times.insert(v.version.clone(), iso_time(v.published_ms));
    }
    let modified = iso_time(package.modified_ms);
    let tags: Map<String, Value> = package
        .dist_tags
        .iter()
        .map(|(t, v)| (t.clone(), Value::String(v.clone())))
        .collect();
    Some(match representation {
        Representation::Abbreviated => json!({
            "name": package.name,
            "modified": modified,
            "dist-tags": tags,
            "versions": docs,
        }),
        Representation::Full => {
            let mut time: Map<String, Value> = times
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect();
            time.insert(
                "created".into(),
                Value::String(iso_time(package.created_ms)),
            );
            time.insert("modified".into(), Value::String(modified));
            json!({
                "_id": package.name,
                "_rev": rev(repo, &package.name, package.revision),
                "name": package.name,
                "dist-tags": tags,
                "versions": docs,
                "time": time,
            })
        }
    })
}

/// The highest live version by semver precedence that is not a prerelease (else the highest
/// of all): where `latest` goes when npm asks to move it.
pub fn highest<'a>(versions: impl Iterator<Item = &'a str>) -> Option<String> {
    let mut parsed: Vec<semver::Version> = versions
        .filter_map(|v| semver::Version::parse(v).ok())
        .collect();
    parsed.sort();
    parsed
        .iter()
        .rev()
        .find(|v| v.pre.is_empty())
        .or(parsed.last())
        .map(ToString::to_string)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn accept_headers_pick_the_representation() {
        let npm = "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*";
        assert_eq!(
            Representation::from_accept(Some(npm)),
            Representation::Abbreviated
        );
        assert_eq!(
            Representation::from_accept(Some("application/json")),
            Representation::Full
        );
        assert_eq!(
            Representation::from_accept(Some("application/vnd.npm.install-v1+json;q=0")),
            Representation::Full
        );
        assert_eq!(Representation::from_accept(None), Representation::Full);
    }

    #[test]
    fn documents_carry_urls_deprecation_and_times() {
        let record = VersionRecord {
            version: "1.0.0".into(),
            files: [(
                "tiny-1.0.0.tgz".to_string(),
                wharf_registry::package_records::VersionFile {
                    digest: wharf_types::Digest::from_sha256_bytes(&[1; 32]),
                    size: 3,
                    uploaded_ms: 0,
                    facts: Value::Null,
                },
            )]
            .into(),
            metadata: json!({ "name": "tiny", "version": "1.0.0", "description": "d",
                "scripts": { "postinstall": "x" }, "dist": { "shasum": "ab" } }),
            published_ms: 1_700_000_000_123,
            yanked: None,
            deprecated: Some("old".into()),
            unpublished_ms: None,
        };
        let package = PackageRecord {
            name: "tiny".into(),
            created_ms: 1_700_000_000_000,
            modified_ms: 1_700_000_000_123,
            revision: 2,
            dist_tags: [("latest".to_string(), "1.0.0".to_string())].into(),
            owners: Default::default(),
        };
        let versions = vec![("1.0.0".to_string(), record)];
        let url = |f: &str| format!("http://h/npm/js/tiny/-/{f}");
        let full = render("js", &package, &versions, Representation::Full, url).unwrap();
        assert_eq!(
            full["versions"]["1.0.0"]["dist"]["tarball"],
            "http://h/npm/js/tiny/-/tiny-1.0.0.tgz"
        );
        assert_eq!(full["versions"]["1.0.0"]["description"], "d");
        assert_eq!(full["versions"]["1.0.0"]["deprecated"], "old");
        assert_eq!(full["time"]["1.0.0"], "2023-11-14T22:13:20.123Z");
        assert!(full["_rev"].as_str().unwrap().starts_with("2-"));
        let short = render("js", &package, &versions, Representation::Abbreviated, url).unwrap();
        assert!(short["versions"]["1.0.0"].get("description").is_none());
        assert_eq!(short["versions"]["1.0.0"]["hasInstallScript"], true);
        assert_eq!(short["modified"], "2023-11-14T22:13:20.123Z");
        assert!(short.get("time").is_none());
    }

    #[test]
    fn highest_prefers_releases() {
        let v = ["1.0.0", "1.10.0", "1.9.0", "2.0.0-rc.1"];
        assert_eq!(highest(v.into_iter()).as_deref(), Some("1.10.0"));
        assert_eq!(
            highest(["2.0.0-rc.1"].into_iter()).as_deref(),
            Some("2.0.0-rc.1")
        );
    }
}
