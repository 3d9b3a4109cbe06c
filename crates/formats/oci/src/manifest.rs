//! Pure manifest parsing: media type resolution and the references a manifest makes.
//! No I/O; unit-tested on byte strings.

use std::collections::BTreeMap;

use serde::Deserialize;
use wharf_registry::NewManifest;
use wharf_types::{Digest, ErrorCode};

use crate::OciError;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_SCHEMA1: [&str; 2] = [
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
];

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: Option<String>,
    digest: String,
    #[serde(default)]
    urls: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    schema_version: Option<u32>,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
    subject: Option<Descriptor>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

fn invalid(message: impl Into<String>) -> OciError {
    OciError::new(ErrorCode::ManifestInvalid, message)
}

/// The media type without parameters, lower-cased.
pub fn bare_media_type(value: &str) -> String {
    value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// Parses manifest bytes pushed with `content_type` (the request's `Content-Type`, if any).
///
/// The media type is the body's `mediaType`, else the header (helm sends none in the body);
/// both missing or disagreeing is MANIFEST_INVALID, and schema 1 is refused.
pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<NewManifest, OciError> {
    let doc: Document = serde_json::from_slice(bytes)
        .map_err(|e| invalid(format!("manifest is not valid JSON: {e}")))?;
    let header = content_type
        .map(bare_media_type)
        .filter(|t| !t.is_empty() && t != "application/octet-stream");
    let media_type = match (&doc.media_type, &header) {
        (Some(body), Some(header))
            if &bare_media_type(body) != header && header != "application/json" =>
        {
            return Err(invalid(format!(
                "manifest mediaType {body} disagrees with Content-Type {header}"
            )));
        }
        (Some(body), _) => bare_media_type(body),
        (None, Some(header)) => header.clone(),
        (None, None) => {
            return Err(invalid(
                "manifest has no mediaType and the request no Content-Type",
            ));
        }
    };
    if DOCKER_SCHEMA1.contains(&media_type.as_str()) {
        return Err(invalid(
            "Docker schema 1 manifests are not supported; push schema 2 or OCI",
        ));
    }
    if doc.schema_version != Some(2) {
        return Err(invalid("schemaVersion must be 2"));
    }
    let parse_digest = |d: &Descriptor| -> Result<Digest, OciError> {
        d.digest
            .parse()
            .map_err(|e| invalid(format!("descriptor digest {}: {e}", d.digest)))
    };
    let mut blobs = Vec::new();
    let mut children = Vec::new();
    let mut artifact_type = doc.artifact_type.clone();
    match media_type.as_str() {
        OCI_MANIFEST | DOCKER_MANIFEST => {
            let config = doc
                .config
                .as_ref()
                .ok_or_else(|| invalid("image manifest has no config"))?;
            blobs.push(parse_digest(config)?);
            if artifact_type.is_none() {
                artifact_type = config.media_type.clone();
            }
            for layer in doc.layers.as_deref().unwrap_or_default() {
                let digest = parse_digest(layer)?;
                if !is_optional_layer(layer) {
                    blobs.push(digest);
                }
            }
            if doc.manifests.is_some() {
                return Err(invalid("an image manifest cannot list manifests"));
            }
        }
        OCI_INDEX | DOCKER_LIST => {
            let manifests = doc
                .manifests
                .as_ref()
                .ok_or_else(|| invalid("index has no manifests list"))?;
            for m in manifests {
                children.push(parse_digest(m)?);
            }
        }
        other => {
            return Err(invalid(format!(
                "unsupported manifest media type {other}; use {OCI_MANIFEST}, {OCI_INDEX}, {DOCKER_MANIFEST} or {DOCKER_LIST}"
            )));
        }
    }
    let subject = doc.subject.as_ref().map(parse_digest).transpose()?;
    blobs.sort();
    blobs.dedup();
    children.sort();
    children.dedup();
    Ok(NewManifest {
        media_type,
        blobs,
        manifests: children,
        subject,
        artifact_type,
        annotations: doc.annotations,
    })
}

/// Non-distributable layers and layers with external `urls` need not be pushed.
fn is_optional_layer(layer: &Descriptor) -> bool {
    let foreign = layer.media_type.as_deref().is_some_and(|t| {
        t.starts_with("application/vnd.oci.image.layer.nondistributable")
            || t == "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
    });
    foreign || !layer.urls.is_empty()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn image(media_type_field: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,{media_type_field}"config":{{"mediaType":"application/vnd.cncf.helm.config.v1+json","digest":"{D1}","size":1}},"layers":[{{"mediaType":"x","digest":"{D2}","size":2}}]}}"#
        )
    }

    #[test]
    fn helm_style_manifest_takes_type_from_header() {
        let m = parse(image("").as_bytes(), Some(OCI_MANIFEST)).unwrap();
        assert_eq!(m.media_type, OCI_MANIFEST);
        assert_eq!(m.blobs.len(), 2);
        assert_eq!(
            m.artifact_type.as_deref(),
            Some("application/vnd.cncf.helm.config.v1+json")
        );
    }

    #[test]
    fn missing_or_disagreeing_types_are_invalid() {
        assert_eq!(
            parse(image("").as_bytes(), None).unwrap_err().code,
            ErrorCode::ManifestInvalid
        );
        let body = image(&format!(r#""mediaType":"{OCI_MANIFEST}","#));
        assert!(parse(body.as_bytes(), Some(DOCKER_MANIFEST)).is_err());
        assert!(parse(body.as_bytes(), Some(OCI_MANIFEST)).is_ok());
        assert!(parse(b"{not json", Some(OCI_MANIFEST)).is_err());
        let schema1 = r#"{"schemaVersion":1,"mediaType":"application/vnd.docker.distribution.manifest.v1+json"}"#;
        assert!(parse(schema1.as_bytes(), None).is_err());
    }

    #[test]
    fn index_lists_children_and_foreign_layers_are_optional() {
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"digest":"{D1}","size":1}}]}}"#
        );
        let m = parse(index.as_bytes(), None).unwrap();
        assert_eq!(m.manifests.len(), 1);
        let foreign = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"digest":"{D1}"}},"layers":[{{"mediaType":"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip","digest":"{D2}","urls":["http://x"]}}]}}"#
        );
        assert_eq!(parse(foreign.as_bytes(), None).unwrap().blobs.len(), 1);
    }

    #[test]
    fn descriptors_may_be_sha512() {
        let d512 = format!("sha512:{}", "3".repeat(128));
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"x","digest":"{D1}","size":1}},"layers":[{{"mediaType":"x","digest":"{d512}","size":2}}]}}"#
        );
        let m = parse(body.as_bytes(), None).unwrap();
        assert_eq!(m.blobs, vec![D1.parse().unwrap(), d512.parse().unwrap()]);
        let other = body.replace(&d512, &format!("sha384:{}", "3".repeat(96)));
        assert!(parse(other.as_bytes(), None).is_err());
    }
}
