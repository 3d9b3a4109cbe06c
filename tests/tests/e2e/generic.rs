//! Generic files at `/generic/<repo>/<path>` over plain HTTP (reqwest) and with curl
//! (docs/clients.md §2.8). Wharf only: the reference registry has no such API.
//!
//! A generic repository created by a first push in dev mode is immutable (DESIGN.md "Immutable means
//! immutable"): a path binds once, the same bytes again are fine, other bytes conflict, DELETE is
//! refused. A repository created with `wharf repo create NAME --format generic` is mutable.

use reqwest::blocking::Response;
use wharf_tests::{expect_status, http_client, random_bytes, run, sha256_hex};

use crate::setup;

fn header<'a>(resp: &'a Response, name: &str) -> &'a str {
    resp.headers()
        .get(name)
        .unwrap_or_else(|| panic!("response has no {name} header: {:?}", resp.headers()))
        .to_str()
        .unwrap()
}

fn unquote(etag: &str) -> &str {
    etag.trim_start_matches("W/").trim_matches('"')
}

#[test]
fn put_get_head_range() {
    let (server, _env) = setup();
    let client = http_client();
    let url = format!("{}/generic/files/some/dir/blob.bin", server.url());
    let data = random_bytes(100 * 1024 + 7);
    let sha = sha256_hex(&data);

    tracing::info!("--- PUT → 201");
    let resp = expect_status(
        client.put(&url).body(data.clone()).send().unwrap(),
        201,
        &format!("PUT {url}"),
    );
    header(&resp, "X-Wharf-Node");

    tracing::info!("--- GET → the same bytes, ETag and X-Checksum-Sha256 = sha256");
    let resp = expect_status(client.get(&url).send().unwrap(), 200, &format!("GET {url}"));
    assert_eq!(header(&resp, "X-Checksum-Sha256"), sha, "X-Checksum-Sha256");
    assert_eq!(unquote(header(&resp, "ETag")), sha, "ETag");
    header(&resp, "X-Wharf-Node");
    assert!(
        resp.bytes().unwrap().as_ref() == data.as_slice(),
        "GET body differs from PUT body"
    );

    tracing::info!("--- HEAD → length and checksum, no body");
    let resp = expect_status(
        client.head(&url).send().unwrap(),
        200,
        &format!("HEAD {url}"),
    );
    assert_eq!(
        header(&resp, "Content-Length"),
        data.len().to_string(),
        "HEAD Content-Length"
    );
    assert_eq!(
        header(&resp, "X-Checksum-Sha256"),
        sha,
        "HEAD X-Checksum-Sha256"
    );
    assert_eq!(unquote(header(&resp, "ETag")), sha, "HEAD ETag");

    tracing::info!("--- Range: bytes=10-99 → 206 with that slice");
    let resp = expect_status(
        client
            .get(&url)
            .header("Range", "bytes=10-99")
            .send()
            .unwrap(),
        206,
        "GET Range: bytes=10-99",
    );
    assert_eq!(
        header(&resp, "Content-Range"),
        format!("bytes 10-99/{}", data.len()),
        "Content-Range"
    );
    assert!(
        resp.bytes().unwrap().as_ref() == &data[10..100],
        "range body"
    );

    tracing::info!("--- Range: bytes=-16 (suffix) → the last 16 bytes");
    let resp = expect_status(
        client
            .get(&url)
            .header("Range", "bytes=-16")
            .send()
            .unwrap(),
        206,
        "GET Range: bytes=-16",
    );
    assert!(
        resp.bytes().unwrap().as_ref() == &data[data.len() - 16..],
        "suffix range body"
    );

    tracing::info!("--- Range past the end → 416");
    expect_status(
        client
            .get(&url)
            .header("Range", format!("bytes={}-", data.len() + 10))
            .send()
            .unwrap(),
        416,
        "GET unsatisfiable range",
    );
}

#[test]
fn missing_file_is_404() {
    let (server, _env) = setup();
    let client = http_client();
    let url = format!("{}/generic/files/never/put.txt", server.url());
    let resp = expect_status(client.get(&url).send().unwrap(), 404, &format!("GET {url}"));
    header(&resp, "X-Wharf-Node");
    expect_status(
        client.head(&url).send().unwrap(),
        404,
        &format!("HEAD {url}"),
    );
}

#[test]
fn checksum_header_is_verified() {
    let (server, _env) = setup();
    let client = http_client();
    let data = random_bytes(4096);

    tracing::info!("--- PUT with the right X-Checksum-Sha256 → 201");
    let good = format!("{}/generic/files/checked/good.bin", server.url());
    expect_status(
        client
            .put(&good)
            .header("X-Checksum-Sha256", sha256_hex(&data))
            .body(data.clone())
            .send()
            .unwrap(),
        201,
        "PUT with a correct checksum",
    );

    tracing::info!("--- PUT with a wrong X-Checksum-Sha256 → 400, nothing stored");
    let bad = format!("{}/generic/files/checked/bad.bin", server.url());
    let resp = expect_status(
        client
            .put(&bad)
            .header("X-Checksum-Sha256", sha256_hex(b"something else"))
            .body(data.clone())
            .send()
            .unwrap(),
        400,
        "PUT with a wrong checksum",
    );
    header(&resp, "X-Wharf-Node");
    expect_status(
        client.get(&bad).send().unwrap(),
        404,
        "GET of a file whose PUT was refused",
    );
}

#[test]
fn curl_upload_download() {
    let (server, env) = setup();
    let data = random_bytes(64 * 1024);
    std::fs::write(env.join("up.bin"), &data).unwrap();
    let url = format!("{}/generic/files/curl/up.bin", server.url());

    tracing::info!("--- curl -T (PUT)");
    run(env
        .curl()
        .args(["-fsS", "-T"])
        .arg(env.join("up.bin"))
        .arg(&url));

    tracing::info!("--- curl -o (GET)");
    run(env
        .curl()
        .args(["-fsS", "-o"])
        .arg(env.join("down.bin"))
        .arg(&url));
    assert!(
        std::fs::read(env.join("down.bin")).unwrap() == data,
        "downloaded file differs"
    );

    tracing::info!("--- curl -I (HEAD) shows the checksum");
    let head = run(env.curl().args(["-fsSI", &url]));
    assert!(
        head.to_lowercase()
            .contains(&format!("x-checksum-sha256: {}", sha256_hex(&data))),
        "HEAD headers:\n{head}"
    );
}

#[test]
fn auto_created_repository_is_immutable() {
    let (server, _env) = setup();
    let client = http_client();
    let url = format!("{}/generic/files/pinned/file.txt", server.url());
    let data = random_bytes(1000);

    tracing::info!("--- first PUT creates the repository and binds the path");
    expect_status(
        client.put(&url).body(data.clone()).send().unwrap(),
        201,
        &format!("PUT {url}"),
    );

    tracing::info!("--- the same bytes again: idempotent success");
    let resp = client.put(&url).body(data.clone()).send().unwrap();
    assert!(
        resp.status().is_success(),
        "PUT of the same bytes to an immutable path: {}",
        resp.status()
    );

    tracing::info!("--- other bytes: 409 Conflict");
    expect_status(
        client
            .put(&url)
            .body(b"other bytes".to_vec())
            .send()
            .unwrap(),
        409,
        "PUT of other bytes to an immutable path",
    );

    tracing::info!("--- DELETE is refused");
    let resp = client.delete(&url).send().unwrap();
    assert!(
        resp.status().is_client_error(),
        "DELETE in an immutable repository: {}",
        resp.status()
    );

    tracing::info!("--- the first bytes are still served");
    let resp = expect_status(
        client.get(&url).send().unwrap(),
        200,
        "GET after refused writes",
    );
    assert!(
        resp.bytes().unwrap().as_ref() == data.as_slice(),
        "content changed"
    );
}

#[test]
fn mutable_repository_overwrite_and_delete() {
    let (server, _env) = setup();
    let client = http_client();

    tracing::info!("--- wharf repo create scratch --format generic (mutable)");
    run(server
        .cli()
        .args(["repo", "create", "scratch", "--format", "generic"]));
    let url = format!("{}/generic/scratch/some/dir/blob.bin", server.url());

    tracing::info!("--- PUT, then PUT other bytes: both 201, the second wins");
    let first = random_bytes(2048);
    let second = random_bytes(4096);
    expect_status(client.put(&url).body(first).send().unwrap(), 201, "PUT");
    expect_status(
        client.put(&url).body(second.clone()).send().unwrap(),
        201,
        "PUT (overwrite)",
    );
    let resp = expect_status(client.get(&url).send().unwrap(), 200, "GET after overwrite");
    assert_eq!(header(&resp, "X-Checksum-Sha256"), sha256_hex(&second));
    assert!(
        resp.bytes().unwrap().as_ref() == second.as_slice(),
        "GET after overwrite"
    );

    tracing::info!("--- DELETE → 2xx, then GET and HEAD → 404");
    let resp = client.delete(&url).send().unwrap();
    assert!(
        resp.status().is_success(),
        "DELETE {url}: {}",
        resp.status()
    );
    header(&resp, "X-Wharf-Node");
    expect_status(client.get(&url).send().unwrap(), 404, "GET after DELETE");
    expect_status(client.head(&url).send().unwrap(), 404, "HEAD after DELETE");
}
