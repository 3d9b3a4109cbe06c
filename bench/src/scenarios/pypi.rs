//! `pypi-simple`: GETs of one project's simple page (`/simple/<project>/`) in its PEP 503 HTML
//! form (`Accept: text/html`), the representation every PyPI server serves, so that Wharf and
//! pypiserver are compared on equal documents. The setup uploads the project's versions
//! (untimed, one wheel each, through the upload API as twine sends it, skipping versions the
//! page already lists), then keeps the page the server serves; every op must get those same
//! bytes with the same `Content-Type`.

use std::collections::BTreeSet;
use std::io::Write as _;

use anyhow::Context as _;
use bytes::Bytes;
use http::{Method, StatusCode, header};
use sha2::{Digest, Sha256};

use super::document::{self, Document, Headers};
use crate::client::{self, Conn, ReqBody};

/// The project uploaded and read.
pub const PROJECT: &str = "bench-pkg";

/// The PEP 503 page, the form every PyPI server serves.
const HTML: Headers = &[(header::ACCEPT, "text/html")];

/// Uploads `versions` wheels of [`PROJECT`] to the PyPI repository at `prefix` (its upload URL,
/// e.g. `/pypi/bench-pypi` on Wharf or empty for pypiserver; the simple index is below it) and
/// reads the project page back.
pub async fn setup(conn: &mut Conn, prefix: &str, versions: u64) -> anyhow::Result<Document> {
    let prefix = prefix.trim_end_matches('/');
    let path = format!("{prefix}/simple/{PROJECT}/");
    let have = listed(conn, &path).await?;
    for i in 0..versions {
        let version = format!("1.0.{i}");
        if have.contains(&wheel_name(&version)) {
            continue;
        }
        upload(conn, &format!("{prefix}/"), &version)
            .await
            .with_context(|| format!("setup: uploading {PROJECT} {version}"))?;
    }
    let count = listed(conn, &path).await?.len() as u64;
    anyhow::ensure!(
        count >= versions,
        "GET {path}: the page lists {count} files after uploading {versions}"
    );
    Document::read(conn, path, HTML, "text/html").await
}

/// The wheel file names the page links to (none for a 404).
async fn listed(conn: &mut Conn, path: &str) -> anyhow::Result<BTreeSet<String>> {
    let what = format!("GET {path}");
    let resp = document::get(conn, path, HTML).await?;
    if resp.status() == StatusCode::NOT_FOUND {
        client::drain(resp, &what).await?;
        return Ok(BTreeSet::new());
    }
    let resp = client::expect_status(resp, StatusCode::OK, &what).await?;
    let page = client::collect(resp, &what).await?;
    let page = String::from_utf8_lossy(&page);
    Ok(page
        .split('>')
        .filter_map(|piece| piece.strip_suffix("</a"))
        .map(str::trim)
        .filter(|name| name.ends_with(".whl"))
        .map(str::to_string)
        .collect())
}

fn wheel_name(version: &str) -> String {
    format!("{}-{version}-py3-none-any.whl", PROJECT.replace('-', "_"))
}

/// POSTs one wheel as twine does (multipart, `:action=file_upload`, sha256 digest).
async fn upload(conn: &mut Conn, path: &str, version: &str) -> anyhow::Result<()> {
    let wheel = wheel(version)?;
    let filename = wheel_name(version);
    let digest = hex::encode(Sha256::digest(&wheel));
    let boundary = format!("wharfbench{}", &digest[..16]);
    let mut body = Vec::new();
    for (k, v) in [
        (":action", "file_upload"),
        ("protocol_version", "1"),
        ("name", PROJECT),
        ("version", version),
        ("filetype", "bdist_wheel"),
        ("pyversion", "py3"),
        ("metadata_version", "2.1"),
        ("summary", "a project with many versions, for benchmarks"),
        ("requires_python", ">=3.8"),
        ("sha256_digest", &digest),
    ] {
        write!(
            body,
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n"
        )?;
    }
    write!(
        body,
        "--{boundary}\r\nContent-Disposition: form-data; name=\"content\"; filename=\"{filename}\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    )?;
    body.extend_from_slice(&wheel);
    write!(body, "\r\n--{boundary}--\r\n")?;
    let what = format!("POST {path} ({version})");
    let req = conn
        .request(Method::POST, path)
        .header(
            header::CONTENT_TYPE,
            format!("multipart/form-data; boundary={boundary}"),
        )
        // Any credentials: pypiserver is run without authentication, Wharf accepts any.
        .header(header::AUTHORIZATION, "Basic YmVuY2g6YmVuY2g=")
        .body(ReqBody::Full(Some(Bytes::from(body))))?;
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

/// A minimal wheel: the module and its `.dist-info` (METADATA, WHEEL, RECORD).
fn wheel(version: &str) -> anyhow::Result<Vec<u8>> {
    let module = PROJECT.replace('-', "_");
    let info = format!("{module}-{version}.dist-info");
    let files = [
        (format!("{module}/__init__.py"), format!("VERSION = {version:?}\n")),
        (
            format!("{info}/METADATA"),
            format!(
                "Metadata-Version: 2.1\nName: {PROJECT}\nVersion: {version}\n\
                 Summary: a project with many versions, for benchmarks\nRequires-Python: >=3.8\n"
            ),
        ),
        (
            format!("{info}/WHEEL"),
            "Wheel-Version: 1.0\nGenerator: wharf-bench\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
                .to_string(),
        ),
        (format!("{info}/RECORD"), String::new()),
    ];
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, text) in files {
        zip.start_file(name, options)?;
        zip.write_all(text.as_bytes())?;
    }
    Ok(zip.finish()?.into_inner())
}
