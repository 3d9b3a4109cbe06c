//! OCI image layouts (image-spec `image-layout.md`) written and read in Rust, so skopeo can push an
//! image without any remote registry, and what comes back can be compared byte for byte.
//!
//! ```text
//! <dir>/oci-layout            {"imageLayoutVersion":"1.0.0"}
//! <dir>/index.json            manifests[] with annotation org.opencontainers.image.ref.name = tag
//! <dir>/blobs/sha256/<hex>    manifest, config and layers (tar+gzip)
//! ```
//! Every image gets random file contents, so every test pushes digests no other test has.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

pub const MANIFEST_V1: &str = "application/vnd.oci.image.manifest.v1+json";
pub const CONFIG_V1: &str = "application/vnd.oci.image.config.v1+json";
pub const LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const INDEX_V1: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// A content descriptor: digest, size, media type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

impl Descriptor {
    fn of(media_type: &str, data: &[u8]) -> Descriptor {
        Descriptor {
            media_type: media_type.to_string(),
            digest: crate::sha256_digest(data),
            size: data.len() as u64,
        }
    }

    fn to_json(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size})
    }
}

/// What [`write_layout`] wrote: the image's manifest and the files inside its layers.
#[derive(Clone, Debug)]
pub struct TestImage {
    pub manifest: Descriptor,
    pub manifest_bytes: Vec<u8>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    /// sha256 of each uncompressed layer tar, as in the config's `rootfs.diff_ids`.
    pub diff_ids: Vec<String>,
    /// (path inside the image, content) of every file, over all layers.
    pub files: Vec<(String, Vec<u8>)>,
}

/// A tar of `files` (path, content), plain files with mode 0644 and a fixed mtime.
pub fn tar_of(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, content) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(1_700_000_000);
        header.set_entry_type(tar::EntryType::Regular);
        builder
            .append_data(&mut header, path, content.as_slice())
            .unwrap();
    }
    builder.into_inner().unwrap()
}

/// gzip of `data`.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// gunzip of `data`.
pub fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// The regular files in a tar, as (path without leading `./` or `/`, content).
pub fn untar(tar_bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut archive = tar::Archive::new(tar_bytes);
    let mut files = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let path = path
            .trim_start_matches("./")
            .trim_start_matches('/')
            .to_string();
        let mut content = Vec::new();
        entry.read_to_end(&mut content).unwrap();
        files.push((path, content));
    }
    files
}

/// Files for one test image: a small text file naming the image, and `big` random bytes.
pub fn random_files(label: &str, big: usize) -> Vec<Vec<(String, Vec<u8>)>> {
    let id = crate::random_hex(8);
    vec![
        vec![
            (
                "hello.txt".to_string(),
                format!("hello from {label} {id}\n").into_bytes(),
            ),
            ("data/random.bin".to_string(), crate::random_bytes(big)),
        ],
        vec![(
            "etc/wharf-test".to_string(),
            format!("second layer {id}\n").into_bytes(),
        )],
    ]
}

/// Writes an OCI image layout at `dir` (created) holding one image tagged `tag`, with two layers of
/// random content (one of ~`big` bytes). Returns what was written.
pub fn write_layout(dir: &Path, tag: &str, big: usize) -> TestImage {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |data: &[u8]| {
        let digest = crate::sha256_digest(data);
        let hex = digest.trim_start_matches("sha256:");
        std::fs::write(blobs.join(hex), data).unwrap();
    };

    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    let mut all_files = Vec::new();
    for files in random_files(tag, big) {
        let tar = tar_of(&files);
        let gz = gzip(&tar);
        put(&gz);
        layers.push(Descriptor::of(LAYER_TAR_GZIP, &gz));
        diff_ids.push(crate::sha256_digest(&tar));
        all_files.extend(files);
    }

    let config = serde_json::to_vec(&json!({
        "created": "2026-01-01T00:00:00Z",
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/hello"], "Labels": {"wharf.test": tag}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": "2026-01-01T00:00:00Z", "created_by": "wharf-tests"}],
    }))
    .unwrap();
    put(&config);
    let config_desc = Descriptor::of(CONFIG_V1, &config);

    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_V1,
        "config": config_desc.to_json(),
        "layers": layers.iter().map(Descriptor::to_json).collect::<Vec<_>>(),
    }))
    .unwrap();
    put(&manifest);
    let manifest_desc = Descriptor::of(MANIFEST_V1, &manifest);

    let mut index_entry = manifest_desc.to_json();
    index_entry["annotations"] = json!({ REF_NAME: tag });
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(
            &json!({"schemaVersion": 2, "mediaType": INDEX_V1, "manifests": [index_entry]}),
        )
        .unwrap(),
    )
    .unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();

    TestImage {
        manifest: manifest_desc,
        manifest_bytes: manifest,
        config: config_desc,
        layers,
        diff_ids,
        files: all_files,
    }
}

/// An existing OCI image layout (e.g. written by `skopeo copy … oci:DIR:TAG`).
pub struct Layout {
    dir: PathBuf,
}

/// One image read from a [`Layout`].
#[derive(Debug)]
pub struct LayoutImage {
    pub manifest: Descriptor,
    pub manifest_bytes: Vec<u8>,
    pub manifest_json: Value,
    pub config: Descriptor,
    pub config_json: Value,
    pub layers: Vec<Descriptor>,
}

impl Layout {
    pub fn open(dir: &Path) -> Layout {
        assert!(
            dir.join("index.json").is_file(),
            "{} is not an OCI layout (no index.json)",
            dir.display()
        );
        Layout {
            dir: dir.to_path_buf(),
        }
    }

    /// Bytes of the blob `digest`, checked against the digest.
    pub fn blob(&self, digest: &str) -> Vec<u8> {
        let hex = digest
            .strip_prefix("sha256:")
            .unwrap_or_else(|| panic!("not a sha256 digest: {digest}"));
        let path = self.dir.join("blobs/sha256").join(hex);
        let data = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("cannot read blob {}: {e}", path.display()));
        assert_eq!(
            crate::sha256_digest(&data),
            digest,
            "blob {} does not match its digest",
            path.display()
        );
        data
    }

    /// The image tagged `tag` (annotation `org.opencontainers.image.ref.name`).
    pub fn image(&self, tag: &str) -> LayoutImage {
        let index: Value =
            serde_json::from_slice(&std::fs::read(self.dir.join("index.json")).unwrap()).unwrap();
        let entry = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["annotations"][REF_NAME] == tag)
            .unwrap_or_else(|| panic!("no image tagged {tag} in {}: {index}", self.dir.display()));
        let manifest = descriptor(entry);
        let manifest_bytes = self.blob(&manifest.digest);
        assert_eq!(
            manifest_bytes.len() as u64,
            manifest.size,
            "manifest size in index.json"
        );
        let manifest_json: Value = serde_json::from_slice(&manifest_bytes).unwrap();
        let config = descriptor(&manifest_json["config"]);
        let config_json = serde_json::from_slice(&self.blob(&config.digest)).unwrap();
        let layers = manifest_json["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(descriptor)
            .collect();
        LayoutImage {
            manifest,
            manifest_bytes,
            manifest_json,
            config,
            config_json,
            layers,
        }
    }

    /// All regular files of the image's layers (gzip or plain tar), in layer order.
    pub fn files(&self, image: &LayoutImage) -> Vec<(String, Vec<u8>)> {
        let mut files = Vec::new();
        for layer in &image.layers {
            let data = self.blob(&layer.digest);
            let tar = if data.starts_with(&[0x1f, 0x8b]) {
                gunzip(&data)
            } else {
                data
            };
            files.extend(untar(&tar));
        }
        files
    }
}

fn descriptor(v: &Value) -> Descriptor {
    Descriptor {
        media_type: v["mediaType"].as_str().unwrap_or_default().to_string(),
        digest: v["digest"].as_str().unwrap().to_string(),
        size: v["size"].as_u64().unwrap(),
    }
}

/// The content of `path` among `files` (as returned by [`Layout::files`]); panics listing the files.
pub fn file<'a>(files: &'a [(String, Vec<u8>)], path: &str) -> &'a [u8] {
    files
        .iter()
        .rev() // upper layers win
        .find(|(p, _)| p == path)
        .map(|(_, c)| c.as_slice())
        .unwrap_or_else(|| {
            panic!(
                "no file {path} in the image; files: {:?}",
                files.iter().map(|(p, _)| p).collect::<Vec<_>>()
            )
        })
}
