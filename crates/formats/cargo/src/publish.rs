//! `cargo publish`'s request, as plain functions over bytes: the length-prefixed body
//! ([`split_body`]), its JSON ([`PublishMeta`]), the index line it becomes ([`IndexLine`]), and
//! the checks on the `.crate` itself ([`check_crate`]) — read through in memory, never unpacked.
//!
//! Body layout (registry web API, "Publish"):
//! ```text
//! u32 LE json length | json | u32 LE crate length | .crate bytes
//! ```

use std::cell::Cell;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Component;

use serde::{Deserialize, Serialize};

use crate::names;

/// Why a publish body or `.crate` is refused (each a 400 for the client, except
/// [`PublishError::TooLarge`], a 413).
#[derive(Debug, PartialEq, Eq)]
pub enum PublishError {
    /// The body does not follow the length-prefixed layout or its JSON is broken.
    Malformed(String),
    /// The `.crate` is not a gzip'd tar, or holds something Wharf refuses.
    BadCrate(String),
    /// The `.crate` inflates past the configured limit.
    TooLarge(String),
}

impl std::fmt::Display for PublishError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PublishError::Malformed(m) | PublishError::BadCrate(m) | PublishError::TooLarge(m) => {
                f.write_str(m)
            }
        }
    }
}

/// Splits a publish body into its JSON and its `.crate`.
pub fn split_body(body: &[u8]) -> Result<(&[u8], &[u8]), PublishError> {
    let (json, rest) = take_prefixed(body, "metadata")?;
    let (krate, rest) = take_prefixed(rest, ".crate")?;
    if !rest.is_empty() {
        return Err(PublishError::Malformed(format!(
            "{} unexpected bytes after the .crate in the publish body",
            rest.len()
        )));
    }
    Ok((json, krate))
}

fn take_prefixed<'a>(buf: &'a [u8], what: &str) -> Result<(&'a [u8], &'a [u8]), PublishError> {
    let truncated = || {
        PublishError::Malformed(format!(
            "the publish body ends inside the {what} part (expected: u32 LE length, then that \
             many bytes)"
        ))
    };
    let len_bytes: [u8; 4] = buf
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(truncated)?;
    let len = usize::try_from(u32::from_le_bytes(len_bytes)).map_err(|_| truncated())?;
    let end = 4usize.checked_add(len).ok_or_else(truncated)?;
    let part = buf.get(4..end).ok_or_else(truncated)?;
    let rest = buf.get(end..).ok_or_else(truncated)?;
    Ok((part, rest))
}

/// The fields of the publish JSON that the index and the checks need; the rest (description,
/// authors, readme, …) is not kept.
#[derive(Debug, Clone, Deserialize)]
pub struct PublishMeta {
    pub name: String,
    pub vers: String,
    #[serde(default)]
    pub deps: Vec<PublishDep>,
    #[serde(default)]
    pub features: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub links: Option<String>,
    #[serde(default)]
    pub rust_version: Option<String>,
}

/// A dependency as `cargo publish` sends it.
#[derive(Debug, Clone, Deserialize)]
pub struct PublishDep {
    /// The real name of the dependency (the package, even when renamed in Cargo.toml).
    pub name: String,
    pub version_req: String,
    #[serde(default)]
    pub features: Vec<String>,
    #[serde(default)]
    pub optional: bool,
    #[serde(default = "yes")]
    pub default_features: bool,
    #[serde(default)]
    pub target: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    /// The index URL of another registry the dependency comes from; absent for this one.
    #[serde(default)]
    pub registry: Option<String>,
    /// The name the dependent uses for it, when renamed (`foo = { package = "bar" }`).
    #[serde(default)]
    pub explicit_name_in_toml: Option<String>,
}

fn yes() -> bool {
    true
}

/// One line of a crate's sparse index file (registry index format, `v` 1 or 2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexLine {
    pub name: String,
    pub vers: String,
    pub deps: Vec<IndexDep>,
    pub cksum: String,
    pub features: BTreeMap<String, Vec<String>>,
    pub yanked: bool,
    pub links: Option<String>,
    pub v: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rust_version: Option<String>,
}

/// A dependency as the index lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexDep {
    /// The name the dependent uses (the rename, if any).
    pub name: String,
    pub req: String,
    pub features: Vec<String>,
    pub optional: bool,
    pub default_features: bool,
    pub target: Option<String>,
    pub kind: String,
    /// Copied verbatim from the publish: the other registry's index URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<String>,
    /// The real name when renamed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<String>,
}

impl PublishMeta {
    /// Parses and checks the publish JSON: a valid name, a semver version, well-formed deps.
    pub fn parse(json: &[u8]) -> Result<PublishMeta, PublishError> {
        let meta: PublishMeta = serde_json::from_slice(json).map_err(|e| {
            PublishError::Malformed(format!("the publish metadata is not valid JSON: {e}"))
        })?;
        if let Some(bad) = names::invalid_name(&meta.name) {
            return Err(PublishError::Malformed(bad));
        }
        names::version_key(&meta.vers).map_err(PublishError::Malformed)?;
        for dep in &meta.deps {
            for name in std::iter::once(&dep.name).chain(dep.explicit_name_in_toml.as_ref()) {
                if let Some(bad) = names::invalid_name(name) {
                    return Err(PublishError::Malformed(format!("dependency: {bad}")));
                }
            }
            semver::VersionReq::parse(&dep.version_req).map_err(|e| {
                PublishError::Malformed(format!(
                    "dependency {}: requirement {:?} is invalid: {e}",
                    dep.name, dep.version_req
                ))
            })?;
            if let Some(kind) = &dep.kind
                && !matches!(kind.as_str(), "normal" | "dev" | "build")
            {
                return Err(PublishError::Malformed(format!(
                    "dependency {}: kind {kind:?} is not normal, dev or build",
                    dep.name
                )));
            }
        }
        Ok(meta)
    }

    /// The index line this publish becomes (not yanked), with the `.crate`'s sha256 (hex).
    pub fn index_line(&self, cksum: &str) -> IndexLine {
        let deps = self
            .deps
            .iter()
            .map(|d| {
                let (name, package) = match &d.explicit_name_in_toml {
                    Some(rename) => (rename.clone(), Some(d.name.clone())),
                    None => (d.name.clone(), None),
                };
                IndexDep {
                    name,
                    req: d.version_req.clone(),
                    features: d.features.clone(),
                    optional: d.optional,
                    default_features: d.default_features,
                    target: d.target.clone(),
                    kind: d.kind.clone().unwrap_or_else(|| "normal".into()),
                    registry: d.registry.clone(),
                    package,
                }
            })
            .collect();
        // `dep:` and `?/` feature syntax needs index format 2: older cargos skip such lines
        // instead of misreading them.
        let v = if self
            .features
            .values()
            .flatten()
            .any(|f| f.starts_with("dep:") || f.contains("?/"))
        {
            2
        } else {
            1
        };
        IndexLine {
            name: self.name.clone(),
            vers: self.vers.clone(),
            deps,
            cksum: cksum.to_string(),
            features: self.features.clone(),
            yanked: false,
            links: self.links.clone(),
            v,
            rust_version: self.rust_version.clone(),
        }
    }
}

/// A reader that fails once more than `left` bytes came out of it, noting why in `hit`.
struct Limited<'a, R> {
    inner: R,
    left: u64,
    hit: &'a Cell<bool>,
}

impl<R: Read> Read for Limited<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        match self.left.checked_sub(n as u64) {
            Some(left) => {
                self.left = left;
                Ok(n)
            }
            None => {
                self.hit.set(true);
                Err(std::io::Error::other("inflation limit reached"))
            }
        }
    }
}

/// Largest `Cargo.toml` read out of a `.crate`.
const MAX_MANIFEST_BYTES: u64 = 4 * 1024 * 1024;

/// Checks a `.crate` without unpacking it to disk: a gzip'd tar whose entries are regular
/// files (or directories) under `<name>-<version>/`, no links, no absolute or `..` paths, at most
/// `max_unpacked` bytes once inflated, and a `Cargo.toml` naming the same crate and version.
pub fn check_crate(
    krate: &[u8],
    name: &str,
    version: &str,
    max_unpacked: u64,
) -> Result<(), PublishError> {
    let hit = Cell::new(false);
    let inflated = Limited {
        inner: flate2::read::GzDecoder::new(krate),
        left: max_unpacked,
        hit: &hit,
    };
    let too_large = || {
        PublishError::TooLarge(format!(
            "the .crate inflates to more than {max_unpacked} bytes (limit \
             http.max_crate_unpacked_bytes)"
        ))
    };
    let broken = |e: std::io::Error| {
        if hit.get() {
            too_large()
        } else {
            PublishError::BadCrate(format!("the .crate is not a valid gzip'd tar archive: {e}"))
        }
    };
    let root = format!("{name}-{version}");
    let mut archive = tar::Archive::new(inflated);
    let mut manifest: Option<String> = None;
    let mut entries = 0usize;
    for entry in archive.entries().map_err(broken)? {
        let mut entry = entry.map_err(broken)?;
        entries += 1;
        let path = entry.path().map_err(broken)?.into_owned();
        let shown = path.display().to_string();
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir()) {
            return Err(PublishError::BadCrate(format!(
                "the .crate holds {shown:?}, which is not a regular file or directory (links \
                 and special files are refused)"
            )));
        }
        let mut components = path.components();
        if components.next() != Some(Component::Normal(std::ffi::OsStr::new(&root))) {
            return Err(PublishError::BadCrate(format!(
                "the .crate holds {shown:?}, outside its directory {root}/"
            )));
        }
        if !components
            .clone()
            .all(|c| matches!(c, Component::Normal(_)))
        {
            return Err(PublishError::BadCrate(format!(
                "the .crate holds {shown:?}: absolute and `..` paths are refused"
            )));
        }
        let rest: Vec<_> = components.collect();
        if kind.is_file()
            && rest.len() == 1
            && rest.first() == Some(&Component::Normal("Cargo.toml".as_ref()))
        {
            let mut text = String::new();
            (&mut entry)
                .take(MAX_MANIFEST_BYTES)
                .read_to_string(&mut text)
                .map_err(|e| {
                    if hit.get() {
                        too_large()
                    } else {
                        PublishError::BadCrate(format!("{root}/Cargo.toml cannot be read: {e}"))
                    }
                })?;
            manifest = Some(text);
        }
    }
    if hit.get() {
        return Err(too_large());
    }
    if entries == 0 {
        return Err(PublishError::BadCrate("the .crate is empty".into()));
    }
    let manifest = manifest
        .ok_or_else(|| PublishError::BadCrate(format!("the .crate has no {root}/Cargo.toml")))?;
    check_manifest(&manifest, name, version)
}

/// The `Cargo.toml` must name the crate and version being published.
fn check_manifest(text: &str, name: &str, version: &str) -> Result<(), PublishError> {
    let table: toml::Table = toml::from_str(text)
        .map_err(|e| PublishError::BadCrate(format!("Cargo.toml in the .crate is invalid: {e}")))?;
    let package = table
        .get("package")
        .and_then(toml::Value::as_table)
        .ok_or_else(|| {
            PublishError::BadCrate("Cargo.toml in the .crate has no [package] table".into())
        })?;
    let got_name = package.get("name").and_then(toml::Value::as_str);
    if got_name != Some(name) {
        return Err(PublishError::BadCrate(format!(
            "Cargo.toml in the .crate names the package {}, but {name} is being published",
            got_name.unwrap_or("(none)")
        )));
    }
    let got_version = package.get("version").and_then(toml::Value::as_str);
    let same = got_version
        .and_then(|v| semver::Version::parse(v).ok())
        .zip(semver::Version::parse(version).ok())
        .is_some_and(|(a, b)| a == b && a.build == b.build);
    if !same {
        return Err(PublishError::BadCrate(format!(
            "Cargo.toml in the .crate has version {}, but {version} is being published",
            got_version.unwrap_or("(none)")
        )));
    }
    Ok(())
}

/// Test helpers: build publish bodies and `.crate`s (also used by the handler tests).
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod testing {
    /// A `.crate` with `files` (path, bytes) written as regular files.
    pub fn crate_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        for (path, data) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_entry_type(tar::EntryType::Regular);
            // set_path refuses `..`; write the name bytes directly to test what others could send
            let name = &mut header.as_old_mut().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            header.set_cksum();
            builder.append(&header, *data).unwrap();
        }
        builder.into_inner().unwrap().finish().unwrap()
    }

    /// A publish body of `json` and `krate`.
    pub fn body(json: &str, krate: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(json.len() as u32).to_le_bytes());
        out.extend_from_slice(json.as_bytes());
        out.extend_from_slice(&(krate.len() as u32).to_le_bytes());
        out.extend_from_slice(krate);
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::testing::*;
    use super::*;

    const MANIFEST: &[u8] = b"[package]\nname = \"tiny\"\nversion = \"0.1.0\"\n";

    #[test]
    fn the_body_splits_into_json_and_crate() {
        let b = body("{}", b"abc");
        assert_eq!(split_body(&b).unwrap(), (&b"{}"[..], &b"abc"[..]));
        assert!(matches!(
            split_body(&b[..b.len() - 1]),
            Err(PublishError::Malformed(_))
        ));
        let mut extra = b.clone();
        extra.push(0);
        assert!(matches!(
            split_body(&extra),
            Err(PublishError::Malformed(_))
        ));
        assert!(matches!(
            split_body(&[1, 0]),
            Err(PublishError::Malformed(_))
        ));
        assert!(matches!(
            split_body(&[255, 255, 255, 255, 1]),
            Err(PublishError::Malformed(_))
        ));
    }

    #[test]
    fn deps_are_mapped_to_the_index_format() {
        let json = r#"{"name":"app","vers":"1.0.0+build.5","deps":[
            {"name":"tiny","version_req":"^0.1","features":["x"],"optional":true,
             "default_features":false,"target":"cfg(unix)","kind":"normal",
             "registry":"sparse+http://127.0.0.1:1/cargo/other/index/"},
            {"name":"real-name","version_req":"=1.2.3","features":[],"optional":false,
             "default_features":true,"target":null,"kind":"dev","explicit_name_in_toml":"alias"}],
            "features":{"default":["tiny"],"opt":["dep:tiny","tiny?/x"]},
            "authors":[],"description":"d","links":"z","rust_version":"1.70"}"#;
        let meta = PublishMeta::parse(json.as_bytes()).unwrap();
        let line = meta.index_line("ab12");
        let rendered = serde_json::to_value(&line).unwrap();
        assert_eq!(
            rendered,
            serde_json::json!({
                "name":"app","vers":"1.0.0+build.5","cksum":"ab12","yanked":false,"links":"z",
                "v":2,"rust_version":"1.70",
                "features":{"default":["tiny"],"opt":["dep:tiny","tiny?/x"]},
                "deps":[
                  {"name":"tiny","req":"^0.1","features":["x"],"optional":true,
                   "default_features":false,"target":"cfg(unix)","kind":"normal",
                   "registry":"sparse+http://127.0.0.1:1/cargo/other/index/"},
                  {"name":"alias","package":"real-name","req":"=1.2.3","features":[],
                   "optional":false,"default_features":true,"target":null,"kind":"dev"}]
            })
        );
        // Plain features stay at index format 1.
        let plain =
            PublishMeta::parse(br#"{"name":"a","vers":"0.1.0","features":{"f":["a/b"]}}"#).unwrap();
        assert_eq!(plain.index_line("x").v, 1);
    }

    #[test]
    fn bad_metadata_is_refused() {
        for json in [
            "not json",
            r#"{"name":"9x","vers":"0.1.0"}"#,
            r#"{"name":"x","vers":"0.1"}"#,
            r#"{"name":"x","vers":"0.1.0","deps":[{"name":"y","version_req":"~~"}]}"#,
            r#"{"name":"x","vers":"0.1.0","deps":[{"name":"../y","version_req":"1"}]}"#,
            r#"{"name":"x","vers":"0.1.0","deps":[{"name":"y","version_req":"1","kind":"z"}]}"#,
        ] {
            assert!(
                matches!(
                    PublishMeta::parse(json.as_bytes()),
                    Err(PublishError::Malformed(_))
                ),
                "{json}"
            );
        }
    }

    #[test]
    fn a_good_crate_passes() {
        let krate = crate_of(&[
            ("tiny-0.1.0/Cargo.toml", MANIFEST),
            ("tiny-0.1.0/src/lib.rs", b"pub fn f() {}\n"),
        ]);
        check_crate(&krate, "tiny", "0.1.0", 1 << 20).unwrap();
    }

    #[test]
    fn manifest_must_match_name_and_version() {
        let krate = crate_of(&[("tiny-0.1.0/Cargo.toml", MANIFEST)]);
        // the archive's directory already names the crate; the manifest must agree with it
        let other = crate_of(&[(
            "tiny-0.2.0/Cargo.toml",
            b"[package]\nname = \"tiny\"\nversion = \"0.1.0\"\n",
        )]);
        let e = check_crate(&other, "tiny", "0.2.0", 1 << 20).unwrap_err();
        assert!(e.to_string().contains("has version 0.1.0"), "{e}");
        let renamed = crate_of(&[(
            "tony-0.1.0/Cargo.toml",
            b"[package]\nname = \"tiny\"\nversion = \"0.1.0\"\n",
        )]);
        let e = check_crate(&renamed, "tony", "0.1.0", 1 << 20).unwrap_err();
        assert!(e.to_string().contains("names the package tiny"), "{e}");
        let e = check_crate(&krate, "tiny", "0.1.0+b", 1 << 20).unwrap_err();
        assert!(matches!(e, PublishError::BadCrate(_)), "{e}");
        let none = crate_of(&[("tiny-0.1.0/src/lib.rs", b"")]);
        let e = check_crate(&none, "tiny", "0.1.0", 1 << 20).unwrap_err();
        assert!(
            e.to_string().contains("has no tiny-0.1.0/Cargo.toml"),
            "{e}"
        );
    }

    #[test]
    fn traversal_links_and_garbage_are_refused() {
        // (`a/./b` is not listed: `Path::components` drops the inner `.`, so it is `a/b`)
        for path in [
            "tiny-0.1.0/../evil",
            "/etc/passwd",
            "other/Cargo.toml",
            "../tiny-0.1.0/x",
        ] {
            let krate = crate_of(&[("tiny-0.1.0/Cargo.toml", MANIFEST), (path, b"x")]);
            let e = check_crate(&krate, "tiny", "0.1.0", 1 << 20).unwrap_err();
            assert!(matches!(e, PublishError::BadCrate(_)), "{path}: {e}");
        }
        // a symlink
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        builder
            .append_link(&mut header, "tiny-0.1.0/link", "/etc/passwd")
            .unwrap();
        let krate = builder.into_inner().unwrap().finish().unwrap();
        let e = check_crate(&krate, "tiny", "0.1.0", 1 << 20).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        // not gzip at all
        let e = check_crate(b"hello", "tiny", "0.1.0", 1 << 20).unwrap_err();
        assert!(matches!(e, PublishError::BadCrate(_)), "{e}");
        // truncated
        let good = crate_of(&[("tiny-0.1.0/Cargo.toml", MANIFEST)]);
        let e = check_crate(&good[..good.len() / 2], "tiny", "0.1.0", 1 << 20).unwrap_err();
        assert!(matches!(e, PublishError::BadCrate(_)), "{e}");
    }

    /// Damaged bodies and archives (random bytes flipped, cut anywhere) are refused or accepted,
    /// never a panic.
    #[test]
    fn damaged_input_never_panics() {
        use rand::{Rng, SeedableRng};
        let seed = rand::random::<u64>();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let krate = crate_of(&[
            ("tiny-0.1.0/Cargo.toml", MANIFEST),
            ("tiny-0.1.0/src/lib.rs", b"pub fn f() {}\n"),
        ]);
        let json = r#"{"name":"tiny","vers":"0.1.0","deps":[{"name":"a","version_req":"1"}]}"#;
        let good = body(json, &krate);
        for _ in 0..500 {
            let mut damaged = good.clone();
            for _ in 0..rng.random_range(1..4) {
                let i = rng.random_range(0..damaged.len());
                damaged[i] = rng.random();
            }
            damaged.truncate(rng.random_range(0..=damaged.len()));
            if let Ok((json, krate)) = split_body(&damaged) {
                let _ = PublishMeta::parse(json).map(|m| m.index_line("x"));
                let _ = check_crate(krate, "tiny", "0.1.0", 1 << 20);
            }
            // the archive alone, damaged
            let mut archive = krate.clone();
            let i = rng.random_range(0..archive.len());
            archive[i] ^= 1 << rng.random_range(0..8);
            archive.truncate(rng.random_range(0..=archive.len()));
            let _ = check_crate(&archive, "tiny", "0.1.0", 1 << 20);
        }
        eprintln!("seed {seed}");
    }

    #[test]
    fn a_crate_that_inflates_too_far_is_refused() {
        let zeros = vec![0u8; 4 << 20];
        let krate = crate_of(&[
            ("tiny-0.1.0/Cargo.toml", MANIFEST),
            ("tiny-0.1.0/big", &zeros),
        ]);
        assert!(krate.len() < 100 * 1024, "zeros compress well");
        let e = check_crate(&krate, "tiny", "0.1.0", 1 << 20).unwrap_err();
        assert!(matches!(e, PublishError::TooLarge(_)), "{e}");
        check_crate(&krate, "tiny", "0.1.0", 8 << 20).unwrap();
    }
}
