//! `npm-packument`: GETs of one package's packument as npm sends them when installing
//! (`Accept: application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*`,
//! `Accept-Encoding: gzip, deflate`). The setup publishes the package's versions (untimed,
//! through the npm publish API, skipping versions already there), then keeps the document the
//! registry serves; every op must get those same bytes with the same `Content-Type`.

use std::collections::BTreeSet;
use std::io::Write as _;

use anyhow::Context as _;
use bytes::Bytes;
use http::{Method, StatusCode, header};
use sha2::{Digest, Sha512};

use super::document::{Document, Headers};
use crate::client::{self, Conn, ReqBody};

/// npm's `Accept` when it resolves a dependency.
pub const INSTALL_ACCEPT: &str =
    "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*";
/// The abbreviated packument's media type.
pub const ABBREVIATED: &str = "application/vnd.npm.install-v1+json";
/// The package published and read.
pub const PACKAGE: &str = "bench-pkg";

/// What npm sends when it resolves a dependency.
const INSTALL_HEADERS: Headers = &[
    (header::ACCEPT, INSTALL_ACCEPT),
    (header::ACCEPT_ENCODING, "gzip, deflate"),
];

/// Publishes `versions` versions of [`PACKAGE`] under the npm registry at `prefix` (a path such
/// as `/npm/bench-npm`, or empty for a registry at the root) and reads the packument back.
pub async fn setup(conn: &mut Conn, prefix: &str, versions: u64) -> anyhow::Result<Document> {
    let path = format!("{}/{PACKAGE}", prefix.trim_end_matches('/'));
    let have = published(conn, &path).await?;
    for i in 0..versions {
        let version = format!("1.0.{i}");
        if have.contains(&version) {
            continue;
        }
        publish(conn, &path, &version)
            .await
            .with_context(|| format!("setup: publishing {PACKAGE}@{version}"))?;
    }
    let count = published(conn, &path).await?.len() as u64;
    anyhow::ensure!(
        count >= versions,
        "GET {path}: the registry lists {count} versions after publishing {versions}"
    );
    Document::read(conn, path, INSTALL_HEADERS, ABBREVIATED).await
}

/// The versions the registry lists (full document, uncompressed), or none for a 404.
async fn published(conn: &mut Conn, path: &str) -> anyhow::Result<BTreeSet<String>> {
    let what = format!("GET {path} (full)");
    let req = conn
        .request(Method::GET, path)
        .header(header::ACCEPT, "application/json")
        .body(ReqBody::Empty)?;
    let resp = conn.send(req).await?;
    if resp.status() == StatusCode::NOT_FOUND {
        client::drain(resp, &what).await?;
        return Ok(BTreeSet::new());
    }
    let resp = client::expect_status(resp, StatusCode::OK, &what).await?;
    let body = client::collect(resp, &what).await?;
    let doc: serde_json::Value = serde_json::from_slice(&body).with_context(|| what.clone())?;
    Ok(doc["versions"]
        .as_object()
        .map(|v| v.keys().cloned().collect())
        .unwrap_or_default())
}

/// PUTs one version as `npm publish` does: the version document and the base64 tarball.
async fn publish(conn: &mut Conn, path: &str, version: &str) -> anyhow::Result<()> {
    let manifest = serde_json::json!({
        "name": PACKAGE, "version": version, "main": "index.js",
        "description": "a package with many versions, for benchmarks",
        "dependencies": { "left-pad": "^1.3.0" }, "engines": { "node": ">=18" },
    });
    let tarball = tarball(&manifest.to_string())?;
    let integrity = format!("sha512-{}", base64(&Sha512::digest(&tarball)));
    let mut doc = manifest.clone();
    doc["_id"] = format!("{PACKAGE}@{version}").into();
    doc["dist"] = serde_json::json!({ "integrity": integrity });
    let file = format!("{PACKAGE}-{version}.tgz");
    let body = serde_json::json!({
        "_id": PACKAGE, "name": PACKAGE, "dist-tags": { "latest": version },
        "versions": { version: doc },
        "_attachments": { file: { "content_type": "application/octet-stream",
            "data": base64(&tarball), "length": tarball.len() } },
    });
    let what = format!("PUT {path} ({version})");
    let req = conn
        .request(Method::PUT, path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(ReqBody::Full(Some(Bytes::from(body.to_string()))))?;
    let resp = conn.send(req).await?;
    let status = resp.status();
    let answer = client::collect(resp, &what).await?;
    anyhow::ensure!(
        status.is_success(),
        "{what}: {status} {}",
        String::from_utf8_lossy(&answer)
    );
    Ok(())
}

/// A gzipped tar with `package/package.json` and a one-line `package/index.js`.
fn tarball(manifest: &str) -> anyhow::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, bytes) in [
        ("package/package.json", manifest.as_bytes()),
        ("package/index.js", b"module.exports = 1;\n".as_slice()),
    ] {
        let mut head = tar::Header::new_gnu();
        head.set_size(bytes.len() as u64);
        head.set_mode(0o644);
        head.set_cksum();
        builder.append_data(&mut head, name, bytes)?;
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&builder.into_inner()?)?;
    Ok(gz.finish()?)
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
