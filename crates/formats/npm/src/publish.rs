//! What an `npm publish` body says, checked against its own tarball, and what a metadata `PUT`
//! (deprecate, dist-tags, unpublish) changes. Pure: no I/O here.

use std::collections::BTreeMap;
use std::io::Read;

use base64::Engine as _;
use serde_json::{Map, Value};
use sha1::Sha1;
use sha2::{Digest as _, Sha256, Sha384, Sha512};
use wharf_registry::package_records::{PackageChange, VersionRecord};

use crate::route::{check_name, tarball_name};

/// Largest `package.json` read out of a tarball.
const MAX_PACKAGE_JSON: u64 = 16 * 1024 * 1024;
/// How far a tarball may inflate while its `package.json` is looked for.
const MAX_INFLATED: u64 = 2 * 1024 * 1024 * 1024;

/// Fields of a version document that stay out of the stored metadata: the readme is large and
/// not needed to install, and the tarball URL is built per request (DESIGN.md §4 "URLs").
const NOT_STORED: &[&str] = &["readme", "readmeFilename"];

/// A checked publish of one new version.
#[derive(Debug)]
pub struct Publish {
    pub version: String,
    pub filename: String,
    pub tarball: Vec<u8>,
    /// The version document to keep (dist carries integrity and shasum, no tarball URL).
    pub metadata: Value,
    /// `{"integrity", "shasum"}` of the tarball.
    pub facts: Value,
    /// Dist-tags the publish sets (all pointing to `version`).
    pub dist_tags: BTreeMap<String, String>,
}

/// Whether a `PUT /<name>` body carries a tarball (a publish) or only metadata.
pub fn has_attachments(doc: &Value) -> bool {
    doc.get("_attachments")
        .and_then(Value::as_object)
        .is_some_and(|a| !a.is_empty())
}

/// Checks a publish body for `name`: one version, one attachment whose bytes match the
/// declared length, integrity and shasum, and a tarball whose `package.json` names the same
/// package and version.
pub fn check_publish(name: &str, doc: &Value) -> Result<Publish, String> {
    check_name(name)?;
    if let Some(doc_name) = doc.get("name").and_then(Value::as_str)
        && doc_name != name
    {
        return Err(format!(
            "the document names {doc_name}, but was sent to {name}"
        ));
    }
    let versions = doc
        .get("versions")
        .and_then(Value::as_object)
        .ok_or("a publish needs a \"versions\" object")?;
    let [(version, version_doc)] = versions.iter().collect::<Vec<_>>()[..] else {
        return Err(format!(
            "a publish carries exactly one version, this one has {}",
            versions.len()
        ));
    };
    let parsed = semver::Version::parse(version)
        .map_err(|e| format!("version {version:?} is not semver: {e}"))?;
    if parsed.to_string() != *version {
        return Err(format!(
            "version {version:?} is not in its canonical form {parsed}"
        ));
    }
    let mut metadata = version_doc
        .as_object()
        .cloned()
        .ok_or("each version must be an object")?;
    for (field, want) in [("name", name), ("version", version.as_str())] {
        match metadata.get(field).and_then(Value::as_str) {
            Some(got) if got == want => {}
            got => {
                return Err(format!(
                    "versions.{version}.{field} is {got:?}, expected {want:?}"
                ));
            }
        }
    }
    let attachments = doc
        .get("_attachments")
        .and_then(Value::as_object)
        .ok_or("a publish needs \"_attachments\"")?;
    let [(key, attachment)] = attachments.iter().collect::<Vec<_>>()[..] else {
        return Err(format!(
            "a publish carries exactly one attachment, this one has {}",
            attachments.len()
        ));
    };
    let filename = tarball_name(name, version);
    // npm names a scoped package's attachment with the scope (`@acme/tiny-1.0.0.tgz`).
    if key != &filename && key != &format!("{name}-{version}.tgz") {
        return Err(format!(
            "the attachment is {key:?}; for {name}@{version} it must be {filename:?}"
        ));
    }
    let data = attachment
        .get("data")
        .and_then(Value::as_str)
        .ok_or("the attachment has no base64 \"data\"")?;
    let tarball = base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|e| format!("the attachment's data is not base64: {e}"))?;
    if let Some(length) = attachment.get("length").and_then(Value::as_u64)
        && length != tarball.len() as u64
    {
        return Err(format!(
            "the attachment declares {length} bytes but carries {}",
            tarball.len()
        ));
    }
    let dist = metadata
        .get("dist")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let integrity = sri_sha512(&tarball);
    let shasum = hex::encode(Sha1::digest(&tarball));
    if let Some(declared) = dist.get("integrity").and_then(Value::as_str) {
        check_integrity(declared, &tarball)?;
    }
    if let Some(declared) = dist.get("shasum").and_then(Value::as_str)
        && !declared.eq_ignore_ascii_case(&shasum)
    {
        return Err(format!(
            "shasum mismatch: the document says {declared}, the tarball's sha1 is {shasum}"
        ));
    }
    check_tarball(name, version, &tarball)?;

    for field in NOT_STORED {
        metadata.remove(*field);
    }
    let mut dist = dist;
    dist.remove("tarball");
    dist.insert("integrity".into(), Value::String(integrity.clone()));
    dist.insert("shasum".into(), Value::String(shasum.clone()));
    metadata.insert("dist".into(), Value::Object(dist));
    metadata.insert("_id".into(), Value::String(format!("{name}@{version}")));
    // Deprecation is a mutable fact of the record, never part of the immutable document.
    metadata.remove("deprecated");

    let mut dist_tags = BTreeMap::new();
    if let Some(tags) = doc.get("dist-tags").and_then(Value::as_object) {
        for (tag, target) in tags {
            if target.as_str() == Some(version.as_str()) {
                check_tag(tag)?;
                dist_tags.insert(tag.clone(), version.clone());
            }
        }
    }
    Ok(Publish {
        version: version.clone(),
        filename,
        tarball,
        metadata: Value::Object(metadata),
        facts: serde_json::json!({ "integrity": integrity, "shasum": shasum }),
        dist_tags,
    })
}

/// `sha512-<base64>` of some bytes.
pub fn sri_sha512(bytes: &[u8]) -> String {
    format!(
        "sha512-{}",
        base64::engine::general_purpose::STANDARD.encode(Sha512::digest(bytes))
    )
}

/// Checks every hash of an SRI string (`sha512-… sha1-…`) that Wharf can compute; at least
/// one must be checkable.
fn check_integrity(sri: &str, bytes: &[u8]) -> Result<(), String> {
    let b64 = |d: &[u8]| base64::engine::general_purpose::STANDARD.encode(d);
    let mut checked = 0;
    for item in sri.split_whitespace() {
        let (alg, declared) = item.split_once('-').unwrap_or((item, ""));
        let declared = declared.split('?').next().unwrap_or(declared);
        let actual = match alg {
            "sha512" => b64(&Sha512::digest(bytes)),
            "sha384" => b64(&Sha384::digest(bytes)),
            "sha256" => b64(&Sha256::digest(bytes)),
            "sha1" => b64(&Sha1::digest(bytes)),
            _ => continue,
        };
        if actual != declared {
            return Err(format!(
                "integrity mismatch: the document says {alg}-{declared}, the tarball's is {alg}-{actual}"
            ));
        }
        checked += 1;
    }
    if checked == 0 {
        return Err(format!(
            "integrity {sri:?} has no sha512, sha384, sha256 or sha1 hash"
        ));
    }
    Ok(())
}

/// A dist-tag name: not empty, URL-safe, and not a version range (npm refuses those).
pub fn check_tag(tag: &str) -> Result<(), String> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        && semver::VersionReq::parse(tag).is_err();
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid dist-tag {tag:?}: use letters, digits, '-', '.', '_', and not a version range"
        ))
    }
}

/// Reads the gzipped tarball up to its top-level `package.json` (in `package/` or whatever
/// single directory the packer used) and checks its name and version.
fn check_tarball(name: &str, version: &str, tarball: &[u8]) -> Result<(), String> {
    let bad = |why: String| format!("the tarball is not a valid npm package: {why}");
    let inflated = flate2::read::GzDecoder::new(tarball).take(MAX_INFLATED);
    let mut archive = tar::Archive::new(inflated);
    let entries = archive.entries().map_err(|e| bad(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(e.to_string()))?;
        let path = entry.path().map_err(|e| bad(e.to_string()))?.into_owned();
        let parts: Vec<_> = path.components().collect();
        let is_manifest = parts.len() == 2
            && matches!(parts[0], std::path::Component::Normal(_))
            && parts[1].as_os_str() == "package.json";
        if !is_manifest {
            continue;
        }
        let mut text = String::new();
        (&mut entry)
            .take(MAX_PACKAGE_JSON)
            .read_to_string(&mut text)
            .map_err(|e| bad(format!("package.json: {e}")))?;
        let manifest: Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("package.json: {e}")))?;
        let got_name = manifest.get("name").and_then(Value::as_str);
        let got_version = manifest.get("version").and_then(Value::as_str);
        if got_name != Some(name) || got_version != Some(version) {
            return Err(format!(
                "the tarball's package.json is {}@{}, but {name}@{version} is being published",
                got_name.unwrap_or("?"),
                got_version.unwrap_or("?")
            ));
        }
        return Ok(());
    }
    Err(bad("it has no package.json at its top level".into()))
}

/// What a metadata `PUT` (no tarball) changes, comparing the sent document with the stored
/// versions (by version) and dist-tags. Only `versions` (each one's `deprecated`, and which
/// are left) and `dist-tags` are read; a field that is absent changes nothing (`npm star` and
/// `npm owner` send neither), and the rest of a published version never changes. Versions
/// missing from a sent `versions` are unpublished — only by a write that names the revision it
/// read (`unpublish_allowed`), and refused by the repository unless it allows unpublishing; a
/// version the store lacks cannot be added without its tarball.
pub fn metadata_changes(
    doc: &Value,
    live: &BTreeMap<String, VersionRecord>,
    tags: &BTreeMap<String, String>,
    unpublish_allowed: bool,
) -> Result<Vec<PackageChange>, String> {
    let mut changes = Vec::new();
    let mut leaving = Vec::new();
    if let Some(sent) = doc.get("versions") {
        let sent = sent.as_object().ok_or("\"versions\" must be an object")?;
        version_changes(sent, live, unpublish_allowed, &mut changes, &mut leaving)?;
    }
    if let Some(sent_tags) = doc.get("dist-tags") {
        let sent_tags = sent_tags
            .as_object()
            .ok_or("\"dist-tags\" must be an object")?;
        tag_changes(sent_tags, tags, &leaving, &mut changes)?;
    }
    Ok(changes)
}

fn version_changes(
    sent: &Map<String, Value>,
    live: &BTreeMap<String, VersionRecord>,
    unpublish_allowed: bool,
    changes: &mut Vec<PackageChange>,
    leaving: &mut Vec<String>,
) -> Result<(), String> {
    if let Some(unknown) = sent.keys().find(|v| !live.contains_key(*v)) {
        return Err(format!(
            "version {unknown} is not published; publish it with its tarball (npm publish)"
        ));
    }
    for (version, record) in live {
        let Some(sent_version) = sent.get(version) else {
            if !unpublish_allowed {
                return Err(format!(
                    "the document lacks version {version}: unpublishing takes a write that names \
                     the revision it read (npm unpublish)"
                ));
            }
            leaving.push(version.clone());
            changes.push(PackageChange::Unpublish {
                version: version.clone(),
            });
            continue;
        };
        let message = sent_version
            .get("deprecated")
            .and_then(Value::as_str)
            .filter(|m| !m.is_empty())
            .map(str::to_string);
        if message != record.deprecated {
            changes.push(PackageChange::Deprecate {
                version: version.clone(),
                message,
            });
        }
    }
    Ok(())
}

fn tag_changes(
    sent: &Map<String, Value>,
    tags: &BTreeMap<String, String>,
    leaving: &[String],
    changes: &mut Vec<PackageChange>,
) -> Result<(), String> {
    let sent_tags: BTreeMap<String, String> = sent
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
        .collect();
    for (tag, target) in &sent_tags {
        if tags.get(tag) != Some(target) {
            check_tag(tag)?;
            changes.push(PackageChange::DistTag {
                tag: tag.clone(),
                version: Some(target.clone()),
            });
        }
    }
    for (tag, target) in tags {
        // Tags of an unpublished version go with it.
        if !sent_tags.contains_key(tag) && !leaving.contains(target) {
            changes.push(PackageChange::DistTag {
                tag: tag.clone(),
                version: None,
            });
        }
    }
    Ok(())
}

/// The revision number in an npm `_rev` (`"<n>-<hash>"`).
pub fn revision_of(rev: &str) -> Option<u64> {
    rev.split('-').next()?.parse().ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A gzipped tarball with `package/package.json` naming `name@version`.
    pub fn tarball(name: &str, version: &str) -> Vec<u8> {
        let json = serde_json::json!({ "name": name, "version": version }).to_string();
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(json.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, "package/package.json", json.as_bytes())
            .unwrap();
        let raw = builder.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, &raw).unwrap();
        gz.finish().unwrap()
    }

    fn publish_doc(name: &str, version: &str, bytes: &[u8]) -> Value {
        let key = format!("{name}-{version}.tgz");
        serde_json::json!({
            "_id": name, "name": name, "dist-tags": { "latest": version },
            "versions": { version: {
                "name": name, "version": version, "readme": "big",
                "dist": { "integrity": sri_sha512(bytes), "shasum": hex::encode(Sha1::digest(bytes)),
                          "tarball": "http://elsewhere/x.tgz" } } },
            "_attachments": { key: { "content_type": "application/octet-stream",
                "data": base64::engine::general_purpose::STANDARD.encode(bytes), "length": bytes.len() } }
        })
    }

    #[test]
    fn a_good_publish_is_kept_without_readme_or_tarball_url() {
        let bytes = tarball("@acme/tiny", "1.0.0");
        let p = check_publish("@acme/tiny", &publish_doc("@acme/tiny", "1.0.0", &bytes)).unwrap();
        assert_eq!(p.filename, "tiny-1.0.0.tgz");
        assert_eq!(p.tarball, bytes);
        assert_eq!(p.dist_tags["latest"], "1.0.0");
        assert!(p.metadata.get("readme").is_none());
        assert!(p.metadata["dist"].get("tarball").is_none());
        assert_eq!(p.metadata["dist"]["integrity"], sri_sha512(&bytes));
    }

    #[test]
    fn mismatches_are_refused() {
        let bytes = tarball("tiny", "1.0.0");
        let mut doc = publish_doc("tiny", "1.0.0", &bytes);
        doc["versions"]["1.0.0"]["dist"]["integrity"] = Value::String(sri_sha512(b"other"));
        assert!(
            check_publish("tiny", &doc)
                .unwrap_err()
                .contains("integrity mismatch")
        );

        let mut doc = publish_doc("tiny", "1.0.0", &bytes);
        doc["versions"]["1.0.0"]["dist"]["shasum"] = Value::String("00".repeat(20));
        assert!(
            check_publish("tiny", &doc)
                .unwrap_err()
                .contains("shasum mismatch")
        );

        let other = tarball("tiny", "2.0.0");
        let doc = publish_doc("tiny", "1.0.0", &other);
        assert!(
            check_publish("tiny", &doc)
                .unwrap_err()
                .contains("package.json is tiny@2.0.0")
        );

        let doc = publish_doc("tiny", "1.0.0", b"not a tarball");
        assert!(
            check_publish("tiny", &doc)
                .unwrap_err()
                .contains("not a valid npm package")
        );

        let doc = publish_doc("tiny", "1.0.0", &bytes);
        assert!(
            check_publish("other", &doc)
                .unwrap_err()
                .contains("names tiny")
        );

        let mut doc = publish_doc("tiny", "1.0.0", &bytes);
        doc["_attachments"]["tiny-1.0.0.tgz"]["length"] = Value::from(3);
        assert!(
            check_publish("tiny", &doc)
                .unwrap_err()
                .contains("declares 3 bytes")
        );
    }

    #[test]
    fn metadata_changes_follow_the_sent_document() {
        let record = |deprecated: Option<&str>| VersionRecord {
            version: "x".into(),
            files: BTreeMap::new(),
            metadata: Value::Null,
            published_ms: 1,
            yanked: None,
            deprecated: deprecated.map(str::to_string),
            unpublished_ms: None,
        };
        let live: BTreeMap<String, VersionRecord> = [
            ("1.0.0".to_string(), record(None)),
            ("1.1.0".to_string(), record(Some("old"))),
        ]
        .into();
        let tags: BTreeMap<String, String> = [("latest".to_string(), "1.1.0".to_string())].into();
        // npm deprecate: one version gets a message, the other keeps its own.
        let doc = serde_json::json!({ "dist-tags": { "latest": "1.1.0" }, "versions": {
            "1.0.0": { "deprecated": "use 1.1" }, "1.1.0": { "deprecated": "old" } } });
        assert_eq!(
            metadata_changes(&doc, &live, &tags, false).unwrap(),
            vec![PackageChange::Deprecate {
                version: "1.0.0".into(),
                message: Some("use 1.1".into())
            }]
        );
        // npm unpublish 1.1.0: the version leaves, latest moves to 1.0.0.
        let doc =
            serde_json::json!({ "dist-tags": { "latest": "1.0.0" }, "versions": { "1.0.0": {} } });
        assert!(
            metadata_changes(&doc, &live, &tags, false).is_err(),
            "no unpublish without a revision"
        );
        assert_eq!(
            metadata_changes(&doc, &live, &tags, true).unwrap(),
            vec![
                PackageChange::Unpublish {
                    version: "1.1.0".into()
                },
                PackageChange::DistTag {
                    tag: "latest".into(),
                    version: Some("1.0.0".into())
                }
            ]
        );
        let doc = serde_json::json!({ "versions": { "9.0.0": {} } });
        assert!(metadata_changes(&doc, &live, &tags, true).is_err());
        // npm star / npm owner: neither versions nor dist-tags, nothing changes.
        let doc = serde_json::json!({ "_id": "x", "_rev": "3-a", "users": { "bob": true } });
        assert_eq!(metadata_changes(&doc, &live, &tags, true).unwrap(), vec![]);
    }
}
