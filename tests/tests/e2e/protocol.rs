//! The OCI distribution protocol spoken by hand (reqwest, raw TCP): what no real client sends —
//! chunked and out-of-order uploads, mounts, cancels, ranges, byte-exact manifests, refused pushes,
//! pagination, referrers, deletes, immutability and malformed input. Every response is checked for
//! `X-Wharf-Node`, `Docker-Distribution-API-Version` under `/v2/` and spec-only error codes
//! ([`OciHttp::send`]). Behaviour follows the OCI distribution spec v1.1.

use serde_json::{Value, json};
use wharf_tests::ocihttp::{OciHttp, Resp, image_manifest, raw_request};
use wharf_tests::{Wharf, init_logging, random_bytes, run, sha256_digest};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const MIB: usize = 1024 * 1024;

fn start() -> (Wharf, OciHttp) {
    init_logging();
    let server = Wharf::start();
    let oci = OciHttp::new(&server);
    (server, oci)
}

/// `location` with `query` appended (`?` or `&`).
fn with_query(location: &str, query: &str) -> String {
    let sep = if location.contains('?') { '&' } else { '?' };
    format!("{location}{sep}{query}")
}

/// POST a new upload session to `name`; returns its Location.
fn start_upload(oci: &OciHttp, name: &str) -> String {
    let r = oci
        .call("POST", &format!("/v2/{name}/blobs/uploads/"))
        .expect(202);
    r.must_header("Location").to_string()
}

/// A config and a layer pushed to `name`, and an OCI manifest naming them (compact JSON).
struct Image {
    config: (String, usize),
    layer: (String, usize),
    manifest: Vec<u8>,
}

fn push_image_blobs(oci: &OciHttp, name: &str) -> Image {
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","x":"{}"}}"#,
        wharf_tests::random_hex(8)
    )
    .into_bytes();
    let layer = random_bytes(4096);
    let config_digest = oci.push_blob(name, &config);
    let layer_digest = oci.push_blob(name, &layer);
    let manifest = image_manifest(
        (OCI_CONFIG, &config_digest, config.len()),
        &[(OCI_LAYER, &layer_digest, layer.len())],
    );
    Image {
        config: (config_digest, config.len()),
        layer: (layer_digest, layer.len()),
        manifest,
    }
}

fn assert_blob(oci: &OciHttp, name: &str, digest: &str, data: &[u8]) {
    let r = oci
        .call("GET", &format!("/v2/{name}/blobs/{digest}"))
        .expect(200);
    assert_eq!(r.body.len(), data.len(), "GET blob {digest}: length");
    assert!(r.body == data, "GET blob {digest}: bytes differ");
    assert_eq!(r.header("Docker-Content-Digest"), Some(digest));
}

fn head_status(oci: &OciHttp, name: &str, digest: &str) -> u16 {
    oci.call("HEAD", &format!("/v2/{name}/blobs/{digest}"))
        .status
}

#[test]
fn chunked_upload_with_status_and_out_of_order_chunk() {
    let (_server, oci) = start();
    let name = "chunks/img";
    let data = random_bytes(6 * MIB + 123);
    let digest = sha256_digest(&data);
    let (c1, c2) = (3 * MIB, 5 * MIB + 7); // chunk 2 crosses the 4 MiB boundary

    eprintln!("--- POST starts a session: 202, Location, Range 0-0, Docker-Upload-UUID");
    let r = oci
        .call("POST", &format!("/v2/{name}/blobs/uploads/"))
        .expect(202);
    let location = r.must_header("Location").to_string();
    assert_eq!(r.header("Range"), Some("0-0"));
    let uuid = r.must_header("Docker-Upload-UUID").to_string();
    assert!(!uuid.is_empty());

    eprintln!("--- PATCH chunk 1 with Content-Range 0-{}", c1 - 1);
    let r = oci
        .send(
            oci.req("PATCH", &location)
                .header("Content-Type", "application/octet-stream")
                .header("Content-Range", format!("0-{}", c1 - 1))
                .body(data[..c1].to_vec()),
        )
        .expect(202);
    assert_eq!(r.header("Range"), Some(format!("0-{}", c1 - 1).as_str()));
    let location = r.must_header("Location").to_string();

    eprintln!("--- GET <location>: 204 with Range");
    let r = oci.call("GET", &location).expect(204);
    assert_eq!(r.header("Range"), Some(format!("0-{}", c1 - 1).as_str()));
    assert_eq!(r.header("Docker-Upload-UUID"), Some(uuid.as_str()));

    eprintln!("--- PATCH chunk 2 with the right range");
    let r = oci
        .send(
            oci.req("PATCH", &location)
                .header("Content-Type", "application/octet-stream")
                .header("Content-Range", format!("{c1}-{}", c2 - 1))
                .body(data[c1..c2].to_vec()),
        )
        .expect(202);
    assert_eq!(r.header("Range"), Some(format!("0-{}", c2 - 1).as_str()));
    let location = r.must_header("Location").to_string();

    eprintln!("--- out-of-order PATCH (starts at 0) → 416 with the current Range");
    let r = oci
        .send(
            oci.req("PATCH", &location)
                .header("Content-Type", "application/octet-stream")
                .header("Content-Range", "0-99")
                .body(data[..100].to_vec()),
        )
        .expect(416);
    assert_eq!(r.header("Range"), Some(format!("0-{}", c2 - 1).as_str()));
    let r = oci.call("GET", &location).expect(204);
    assert_eq!(
        r.header("Range"),
        Some(format!("0-{}", c2 - 1).as_str()),
        "the refused chunk changed nothing"
    );

    eprintln!("--- PUT ?digest= with the final chunk → 201");
    let r = oci
        .send(
            oci.req("PUT", &with_query(&location, &format!("digest={digest}")))
                .header("Content-Type", "application/octet-stream")
                .header("Content-Range", format!("{c2}-{}", data.len() - 1))
                .body(data[c2..].to_vec()),
        )
        .expect(201);
    assert_eq!(
        r.header("Location"),
        Some(format!("/v2/{name}/blobs/{digest}").as_str())
    );
    assert_eq!(r.header("Docker-Content-Digest"), Some(digest.as_str()));

    eprintln!("--- the blob reads back byte-identical");
    assert_blob(&oci, name, &digest, &data);
    eprintln!("--- the finished session is gone");
    oci.call("GET", &location)
        .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
}

#[test]
fn streamed_patch_without_content_range() {
    let (_server, oci) = start();
    let name = "stream/img";
    let data = random_bytes(5 * MIB + 11);
    let digest = sha256_digest(&data);

    let location = start_upload(&oci, name);
    eprintln!("--- PATCH without Content-Range, Transfer-Encoding: chunked");
    let reader = std::io::Cursor::new(data.clone());
    let r = oci
        .send(
            oci.req("PATCH", &location)
                .header("Content-Type", "application/octet-stream")
                .body(reqwest::blocking::Body::new(reader)),
        )
        .expect(202);
    assert_eq!(
        r.header("Range"),
        Some(format!("0-{}", data.len() - 1).as_str())
    );
    let location = r.must_header("Location").to_string();

    eprintln!("--- PUT ?digest= with an empty body → 201");
    let r = oci
        .send(
            oci.req("PUT", &with_query(&location, &format!("digest={digest}")))
                .body(Vec::new()),
        )
        .expect(201);
    assert_eq!(r.header("Docker-Content-Digest"), Some(digest.as_str()));
    assert_blob(&oci, name, &digest, &data);
}

#[test]
fn monolithic_uploads() {
    let (_server, oci) = start();
    let name = "mono/img";

    eprintln!("--- POST ?digest= with the body → 201");
    let a = random_bytes(100_000);
    let da = sha256_digest(&a);
    let r = oci
        .send(
            oci.req("POST", &format!("/v2/{name}/blobs/uploads/?digest={da}"))
                .header("Content-Type", "application/octet-stream")
                .body(a.clone()),
        )
        .expect(201);
    assert_eq!(
        r.header("Location"),
        Some(format!("/v2/{name}/blobs/{da}").as_str())
    );
    assert_eq!(r.header("Docker-Content-Digest"), Some(da.as_str()));
    assert_blob(&oci, name, &da, &a);

    eprintln!("--- POST, then PUT <location>?digest= with the whole body → 201");
    let b = random_bytes(200_000);
    let db = sha256_digest(&b);
    let location = start_upload(&oci, name);
    let r = oci
        .send(
            oci.req("PUT", &with_query(&location, &format!("digest={db}")))
                .header("Content-Type", "application/octet-stream")
                .body(b.clone()),
        )
        .expect(201);
    assert_eq!(r.header("Docker-Content-Digest"), Some(db.as_str()));
    assert_blob(&oci, name, &db, &b);
}

#[test]
fn cross_repository_mount() {
    let (_server, oci) = start();
    let data = random_bytes(50_000);
    eprintln!("--- blob in a/img");
    let digest = oci.push_blob("a/img", &data);

    eprintln!("--- HEAD in c/img (a third repository) → 404");
    assert_eq!(head_status(&oci, "c/img", &digest), 404);
    oci.call("GET", &format!("/v2/c/img/blobs/{digest}"))
        .expect_error(404, "BLOB_UNKNOWN");

    eprintln!("--- mount into b/img from a/img → 201");
    let r = oci
        .call(
            "POST",
            &format!("/v2/b/img/blobs/uploads/?mount={digest}&from=a/img"),
        )
        .expect(201);
    assert_eq!(r.header("Docker-Content-Digest"), Some(digest.as_str()));
    assert_eq!(
        r.header("Location"),
        Some(format!("/v2/b/img/blobs/{digest}").as_str())
    );
    eprintln!("--- HEAD in b/img → 200");
    assert_eq!(head_status(&oci, "b/img", &digest), 200);
    assert_blob(&oci, "b/img", &digest, &data);

    eprintln!("--- mount from c/img (which lacks it) → 202 upload session");
    let r = oci
        .call(
            "POST",
            &format!("/v2/d/img/blobs/uploads/?mount={digest}&from=c/img"),
        )
        .expect(202);
    r.must_header("Location");
    assert_eq!(head_status(&oci, "d/img", &digest), 404);
    assert_eq!(head_status(&oci, "c/img", &digest), 404);
}

#[test]
fn upload_cancel_and_unknown_session() {
    let (_server, oci) = start();
    let name = "cancel/img";
    let location = start_upload(&oci, name);
    oci.send(
        oci.req("PATCH", &location)
            .header("Content-Type", "application/octet-stream")
            .body(random_bytes(1000)),
    )
    .expect(202);

    eprintln!("--- DELETE <location> → 204");
    oci.call("DELETE", &location).expect(204);
    eprintln!("--- GET <location> → 404 BLOB_UPLOAD_UNKNOWN");
    oci.call("GET", &location)
        .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
    oci.send(oci.req("PATCH", &location).body(vec![1u8; 10]))
        .expect_error(404, "BLOB_UPLOAD_UNKNOWN");

    eprintln!("--- an unknown session id → 404 BLOB_UPLOAD_UNKNOWN");
    let unknown = format!("/v2/{name}/blobs/uploads/{}", wharf_tests::random_hex(16));
    oci.call("GET", &unknown)
        .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
    oci.send(oci.req("PATCH", &unknown).body(vec![1u8; 10]))
        .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
    oci.call("DELETE", &unknown)
        .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
}

#[test]
fn blob_range_requests() {
    let (_server, oci) = start();
    let name = "range/img";
    let data = random_bytes(1000);
    let size = data.len();
    let digest = oci.push_blob(name, &data);
    let path = format!("/v2/{name}/blobs/{digest}");
    let range = |spec: &str| oci.send(oci.req("GET", &path).header("Range", spec));

    eprintln!("--- bytes=0-9 → 206");
    let r = range("bytes=0-9").expect(206);
    assert_eq!(
        r.header("Content-Range"),
        Some(format!("bytes 0-9/{size}").as_str())
    );
    assert_eq!(r.body, &data[..10]);

    eprintln!("--- bytes=10- → 206");
    let r = range("bytes=10-").expect(206);
    assert_eq!(
        r.header("Content-Range"),
        Some(format!("bytes 10-{}/{size}", size - 1).as_str())
    );
    assert_eq!(r.body, &data[10..]);

    eprintln!("--- bytes=-5 → 206, the last 5 bytes");
    let r = range("bytes=-5").expect(206);
    assert_eq!(
        r.header("Content-Range"),
        Some(format!("bytes {}-{}/{size}", size - 5, size - 1).as_str())
    );
    assert_eq!(r.body, &data[size - 5..]);

    eprintln!("--- bytes={size}- → 416 with Content-Range bytes */{size}");
    let r = range(&format!("bytes={size}-")).expect(416);
    assert_eq!(
        r.header("Content-Range"),
        Some(format!("bytes */{size}").as_str())
    );

    eprintln!("--- HEAD → 200, Content-Length, Docker-Content-Digest, no body");
    let r = oci.call("HEAD", &path).expect(200);
    assert_eq!(r.header("Content-Length"), Some(size.to_string().as_str()));
    assert_eq!(r.header("Docker-Content-Digest"), Some(digest.as_str()));
    assert!(r.body.is_empty());
}

/// Asserts GET/HEAD of `name:reference` serve exactly `bytes` as `media_type`.
fn assert_manifest(oci: &OciHttp, name: &str, reference: &str, media_type: &str, bytes: &[u8]) {
    let digest = sha256_digest(bytes);
    let path = format!("/v2/{name}/manifests/{reference}");
    let r = oci.call("GET", &path).expect(200);
    assert!(
        r.body == bytes,
        "GET {path}: bytes differ from what was pushed"
    );
    assert_eq!(r.header("Content-Type"), Some(media_type), "GET {path}");
    assert_eq!(
        r.header("Docker-Content-Digest"),
        Some(digest.as_str()),
        "GET {path}"
    );
    let r = oci.call("HEAD", &path).expect(200);
    assert!(r.body.is_empty());
    assert_eq!(r.header("Content-Type"), Some(media_type), "HEAD {path}");
    assert_eq!(
        r.header("Docker-Content-Digest"),
        Some(digest.as_str()),
        "HEAD {path}"
    );
    assert_eq!(
        r.header("Content-Length"),
        Some(bytes.len().to_string().as_str()),
        "HEAD {path}"
    );
}

/// A refused PUT to `name:tag`: the status and code, and the tag does not exist afterwards.
fn assert_refused(r: Resp, oci: &OciHttp, name: &str, tag: &str, status: u16, code: &str) {
    r.expect_error(status, code);
    oci.assert_no_manifest(name, tag);
}

#[test]
fn manifest_push_and_fetch_rules() {
    let (_server, oci) = start();
    let name = "man/img";
    let img = push_image_blobs(&oci, name);

    eprintln!(
        "--- PUT by tag, bytes with odd whitespace and key order → 201, digest of the exact bytes"
    );
    let odd = format!(
        "{{\n   \"layers\" : [ {{\"size\": {}, \"digest\": \"{}\",\t\"mediaType\": \"{OCI_LAYER}\"}} ],\n\"config\":{{\"digest\":\"{}\",\"mediaType\":\"{OCI_CONFIG}\",\"size\":{}}},\n  \"schemaVersion\" : 2 ,  \"mediaType\":\"{OCI_MANIFEST}\"\n}}\n\n",
        img.layer.1, img.layer.0, img.config.0, img.config.1
    )
    .into_bytes();
    let odd_digest = sha256_digest(&odd);
    let r = oci
        .put_manifest(name, "odd", Some(OCI_MANIFEST), &odd)
        .expect(201);
    assert_eq!(r.header("Docker-Content-Digest"), Some(odd_digest.as_str()));
    assert_eq!(
        r.header("Location"),
        Some(format!("/v2/{name}/manifests/{odd_digest}").as_str())
    );

    eprintln!("--- GET/HEAD by tag and by digest: the exact bytes, type and digest");
    assert_manifest(&oci, name, "odd", OCI_MANIFEST, &odd);
    assert_manifest(&oci, name, &odd_digest, OCI_MANIFEST, &odd);

    eprintln!("--- the digest is not served in another repository → 404");
    oci.call("GET", &format!("/v2/other/img/manifests/{odd_digest}"))
        .expect_error(404, "MANIFEST_UNKNOWN");
    oci.call("HEAD", &format!("/v2/other/img/manifests/{odd_digest}"))
        .expect(404);

    eprintln!("--- Accept naming only another type → 404 MANIFEST_UNKNOWN");
    oci.send(
        oci.req("GET", &format!("/v2/{name}/manifests/odd"))
            .header("Accept", DOCKER_MANIFEST),
    )
    .expect_error(404, "MANIFEST_UNKNOWN");
    eprintln!("--- several Accept lines, one matching → 200");
    let r = oci
        .send(
            oci.req("GET", &format!("/v2/{name}/manifests/odd"))
                .header("Accept", DOCKER_MANIFEST)
                .header("Accept", DOCKER_LIST)
                .header("Accept", OCI_MANIFEST),
        )
        .expect(200);
    assert!(r.body == odd);

    eprintln!("--- a 3 MiB manifest → 201 and reads back");
    let mut big: Value = serde_json::from_slice(&img.manifest).unwrap();
    big["annotations"] = json!({ "pad": "x".repeat(3 * MIB) });
    let big = serde_json::to_vec(&big).unwrap();
    oci.put_manifest(name, "big", Some(OCI_MANIFEST), &big)
        .expect(201);
    assert_manifest(&oci, name, "big", OCI_MANIFEST, &big);

    eprintln!("--- a 5 MiB manifest → 413");
    let mut huge: Value = serde_json::from_slice(&img.manifest).unwrap();
    huge["annotations"] = json!({ "pad": "x".repeat(5 * MIB) });
    let huge = serde_json::to_vec(&huge).unwrap();
    let r = oci.put_manifest(name, "huge", Some(OCI_MANIFEST), &huge);
    assert_eq!(r.status, 413, "{}: {}", r.what, r.text_excerpt());
    oci.assert_no_manifest(name, "huge");

    eprintln!("--- broken JSON → 400 MANIFEST_INVALID");
    let r = oci.put_manifest(
        name,
        "broken",
        Some(OCI_MANIFEST),
        b"{\"schemaVersion\": 2,",
    );
    assert_refused(r, &oci, name, "broken", 400, "MANIFEST_INVALID");

    eprintln!("--- mediaType disagreeing with Content-Type → 400 MANIFEST_INVALID");
    let r = oci.put_manifest(name, "disagree", Some(DOCKER_MANIFEST), &img.manifest);
    assert_refused(r, &oci, name, "disagree", 400, "MANIFEST_INVALID");

    eprintln!("--- no mediaType and no Content-Type → 400 MANIFEST_INVALID");
    let mut untyped: Value = serde_json::from_slice(&img.manifest).unwrap();
    untyped.as_object_mut().unwrap().remove("mediaType");
    let untyped = serde_json::to_vec(&untyped).unwrap();
    let r = oci.put_manifest(name, "untyped", None, &untyped);
    assert_refused(r, &oci, name, "untyped", 400, "MANIFEST_INVALID");

    eprintln!("--- a manifest naming an unlinked blob → 400 MANIFEST_BLOB_UNKNOWN");
    let ghost = sha256_digest(&random_bytes(64));
    let m = image_manifest(
        (OCI_CONFIG, &img.config.0, img.config.1),
        &[(OCI_LAYER, &ghost, 64)],
    );
    let r = oci.put_manifest(name, "ghost", Some(OCI_MANIFEST), &m);
    assert_refused(r, &oci, name, "ghost", 400, "MANIFEST_BLOB_UNKNOWN");

    eprintln!(
        "--- a manifest naming a blob only in another repository → 400 MANIFEST_BLOB_UNKNOWN"
    );
    let elsewhere = random_bytes(777);
    let elsewhere_digest = oci.push_blob("other/img", &elsewhere);
    let m = image_manifest(
        (OCI_CONFIG, &img.config.0, img.config.1),
        &[(OCI_LAYER, &elsewhere_digest, elsewhere.len())],
    );
    let r = oci.put_manifest(name, "elsewhere", Some(OCI_MANIFEST), &m);
    assert_refused(r, &oci, name, "elsewhere", 400, "MANIFEST_BLOB_UNKNOWN");

    eprintln!("--- PUT by a digest that is not the bytes' → 400 DIGEST_INVALID");
    let wrong = sha256_digest(b"something else");
    let r = oci.put_manifest(name, &wrong, Some(OCI_MANIFEST), &img.manifest);
    r.expect_error(400, "DIGEST_INVALID");
    oci.assert_no_manifest(name, &wrong);
    oci.assert_no_manifest(name, &sha256_digest(&img.manifest));

    eprintln!("--- Docker schema 2 manifest → 201");
    let docker = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": { "mediaType": DOCKER_CONFIG, "digest": img.config.0, "size": img.config.1 },
        "layers": [ { "mediaType": DOCKER_LAYER, "digest": img.layer.0, "size": img.layer.1 } ],
    }))
    .unwrap();
    let docker_digest = sha256_digest(&docker);
    oci.put_manifest(name, "docker", Some(DOCKER_MANIFEST), &docker)
        .expect(201);
    assert_manifest(&oci, name, "docker", DOCKER_MANIFEST, &docker);

    eprintln!("--- Docker manifest list with its child → 201");
    let list = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_LIST,
        "manifests": [ { "mediaType": DOCKER_MANIFEST, "digest": docker_digest, "size": docker.len(),
                         "platform": { "architecture": "amd64", "os": "linux" } } ],
    }))
    .unwrap();
    oci.put_manifest(name, "list", Some(DOCKER_LIST), &list)
        .expect(201);
    assert_manifest(&oci, name, "list", DOCKER_LIST, &list);

    eprintln!("--- OCI index with its child → 201");
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [ { "mediaType": OCI_MANIFEST, "digest": odd_digest, "size": odd.len(),
                         "platform": { "architecture": "amd64", "os": "linux" } } ],
    }))
    .unwrap();
    oci.put_manifest(name, "index", Some(OCI_INDEX), &index)
        .expect(201);
    assert_manifest(&oci, name, "index", OCI_INDEX, &index);

    eprintln!("--- OCI index with a missing child → 400 MANIFEST_BLOB_UNKNOWN");
    let orphan = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [ { "mediaType": OCI_MANIFEST, "digest": ghost, "size": 123 } ],
    }))
    .unwrap();
    let r = oci.put_manifest(name, "orphan", Some(OCI_INDEX), &orphan);
    assert_refused(r, &oci, name, "orphan", 400, "MANIFEST_BLOB_UNKNOWN");
}

/// Follows `Link: <…>; rel="next"` headers from `path`, collecting `field` of every page.
fn follow_pages(oci: &OciHttp, path: &str, field: &str) -> (Vec<String>, usize) {
    let mut all = Vec::new();
    let mut pages = 0;
    let mut next = Some(path.to_string());
    while let Some(path) = next.take() {
        let r = oci.call("GET", &path).expect(200);
        pages += 1;
        assert!(pages < 20, "pagination does not end");
        let v = r.json();
        for t in v[field].as_array().unwrap() {
            all.push(t.as_str().unwrap().to_string());
        }
        if let Some(link) = r.header("Link") {
            assert!(link.ends_with("; rel=\"next\""), "Link {link:?}");
            let target = link
                .strip_prefix('<')
                .and_then(|l| l.split_once('>'))
                .map(|(t, _)| t.to_string())
                .unwrap_or_else(|| panic!("Link {link:?}"));
            next = Some(target);
        }
    }
    (all, pages)
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn tag_and_catalog_pagination() {
    let (_server, oci) = start();
    let name = "pages/img";
    let img = push_image_blobs(&oci, name);
    let pushed = ["v10", "b", "a2", "Z9", "a10"];
    eprintln!("--- push 5 tags in non-sorted order");
    for tag in pushed {
        oci.put_manifest(name, tag, Some(OCI_MANIFEST), &img.manifest)
            .expect(201);
    }
    let sorted = ["Z9", "a10", "a2", "b", "v10"];

    eprintln!("--- tags/list → byte order");
    let r = oci
        .call("GET", &format!("/v2/{name}/tags/list"))
        .expect(200);
    let v = r.json();
    assert_eq!(v["name"], name);
    assert_eq!(strings(&v["tags"]), sorted);
    assert!(r.header("Link").is_none());

    eprintln!("--- ?n=2 → 2 tags and Link");
    let r = oci
        .call("GET", &format!("/v2/{name}/tags/list?n=2"))
        .expect(200);
    assert_eq!(strings(&r.json()["tags"]), ["Z9", "a10"]);
    assert_eq!(
        r.header("Link"),
        Some(format!("</v2/{name}/tags/list?n=2&last=a10>; rel=\"next\"").as_str())
    );

    eprintln!("--- follow Link to the end");
    let (all, pages) = follow_pages(&oci, &format!("/v2/{name}/tags/list?n=2"), "tags");
    assert_eq!(all, sorted);
    assert_eq!(pages, 3);

    eprintln!("--- ?last=a2 without n → exclusive");
    let r = oci
        .call("GET", &format!("/v2/{name}/tags/list?last=a2"))
        .expect(200);
    assert_eq!(strings(&r.json()["tags"]), ["b", "v10"]);
    assert!(r.header("Link").is_none());

    eprintln!("--- ?n=0 → empty list, no Link");
    let r = oci
        .call("GET", &format!("/v2/{name}/tags/list?n=0"))
        .expect(200);
    assert_eq!(strings(&r.json()["tags"]), Vec::<String>::new());
    assert!(r.header("Link").is_none());

    eprintln!("--- unknown image → 404 NAME_UNKNOWN");
    oci.call("GET", "/v2/pages/nothing/tags/list")
        .expect_error(404, "NAME_UNKNOWN");

    eprintln!("--- _catalog?n=1 with two images → Link, follow it");
    let img2 = push_image_blobs(&oci, "pages/other");
    oci.put_manifest("pages/other", "v1", Some(OCI_MANIFEST), &img2.manifest)
        .expect(201);
    let r = oci.call("GET", "/v2/_catalog?n=1").expect(200);
    assert_eq!(strings(&r.json()["repositories"]), ["pages/img"]);
    assert!(r.header("Link").is_some(), "_catalog?n=1: no Link");
    let (all, _) = follow_pages(&oci, "/v2/_catalog?n=1", "repositories");
    assert_eq!(all, ["pages/img", "pages/other"]);
}

#[test]
fn referrers_api() {
    let (_server, oci) = start();
    let name = "refs/img";
    let img = push_image_blobs(&oci, name);
    eprintln!("--- push the subject");
    let subject = img.manifest.clone();
    let subject_digest = sha256_digest(&subject);
    oci.put_manifest(name, "v1", Some(OCI_MANIFEST), &subject)
        .expect(201);

    let empty_digest = oci.push_blob(name, b"{}");
    let artifact = |artifact_type: &str, note: &str| {
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": { "mediaType": OCI_EMPTY, "digest": empty_digest, "size": 2 },
            "layers": [ { "mediaType": OCI_EMPTY, "digest": empty_digest, "size": 2 } ],
            "subject": { "mediaType": OCI_MANIFEST, "digest": subject_digest, "size": subject.len() },
            "annotations": { "org.example.note": note },
        }))
        .unwrap()
    };
    let sig = artifact("application/vnd.example.signature", "signed");
    let sbom = artifact("application/vnd.example.sbom", "bill");

    eprintln!("--- push two artifacts with subject: OCI-Subject on the response");
    for m in [&sig, &sbom] {
        let r = oci
            .put_manifest(name, &sha256_digest(m), Some(OCI_MANIFEST), m)
            .expect(201);
        assert_eq!(r.header("OCI-Subject"), Some(subject_digest.as_str()));
    }

    eprintln!("--- GET referrers → index of both");
    let r = oci
        .call("GET", &format!("/v2/{name}/referrers/{subject_digest}"))
        .expect(200);
    assert_eq!(r.header("Content-Type"), Some(OCI_INDEX));
    let v = r.json();
    assert_eq!(v["schemaVersion"], 2);
    assert_eq!(v["mediaType"], OCI_INDEX);
    let manifests = v["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 2, "{v}");
    for (m, t, note) in [
        (&sig, "application/vnd.example.signature", "signed"),
        (&sbom, "application/vnd.example.sbom", "bill"),
    ] {
        let d = sha256_digest(m);
        let desc = manifests
            .iter()
            .find(|x| x["digest"] == d.as_str())
            .unwrap_or_else(|| panic!("referrer {d} missing: {v}"));
        assert_eq!(desc["mediaType"], OCI_MANIFEST);
        assert_eq!(desc["size"], m.len());
        assert_eq!(desc["artifactType"], t);
        assert_eq!(desc["annotations"]["org.example.note"], note);
    }

    eprintln!("--- ?artifactType= filters, OCI-Filters-Applied");
    let r = oci
        .call(
            "GET",
            &format!(
                "/v2/{name}/referrers/{subject_digest}?artifactType=application/vnd.example.sbom"
            ),
        )
        .expect(200);
    assert_eq!(r.header("OCI-Filters-Applied"), Some("artifactType"));
    let v = r.json();
    let manifests = v["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 1, "{v}");
    assert_eq!(manifests[0]["digest"], sha256_digest(&sbom).as_str());

    eprintln!("--- the same subject seen from another repository → 200 empty index");
    let r = oci
        .call(
            "GET",
            &format!("/v2/elsewhere/img/referrers/{subject_digest}"),
        )
        .expect(200);
    assert_eq!(r.json()["manifests"], json!([]));

    eprintln!("--- unknown subject → 200 empty index");
    let unknown = sha256_digest(b"nobody points here");
    let r = oci
        .call("GET", &format!("/v2/{name}/referrers/{unknown}"))
        .expect(200);
    assert_eq!(r.header("Content-Type"), Some(OCI_INDEX));
    let v = r.json();
    assert_eq!(v["manifests"], json!([]));
}

#[test]
fn deletes() {
    let (_server, oci) = start();
    let name = "del/img";
    let img = push_image_blobs(&oci, name);
    let digest = sha256_digest(&img.manifest);
    oci.put_manifest(name, "v1", Some(OCI_MANIFEST), &img.manifest)
        .expect(201);

    eprintln!("--- DELETE manifest by digest → 202, tag gone");
    oci.call("DELETE", &format!("/v2/{name}/manifests/{digest}"))
        .expect(202);
    oci.assert_no_manifest(name, &digest);
    oci.assert_no_manifest(name, "v1");

    eprintln!("--- DELETE tag → 202, manifest stays by digest");
    oci.put_manifest(name, "v2", Some(OCI_MANIFEST), &img.manifest)
        .expect(201);
    oci.call("DELETE", &format!("/v2/{name}/manifests/v2"))
        .expect(202);
    oci.assert_no_manifest(name, "v2");
    oci.call("GET", &format!("/v2/{name}/manifests/{digest}"))
        .expect(200);

    eprintln!("--- blob DELETE → 202, then HEAD 404 there but 200 in another repo linking it");
    let data = random_bytes(3000);
    let blob = oci.push_blob(name, &data);
    oci.push_blob("keep/img", &data);
    oci.call("DELETE", &format!("/v2/{name}/blobs/{blob}"))
        .expect(202);
    assert_eq!(head_status(&oci, name, &blob), 404);
    assert_eq!(head_status(&oci, "keep/img", &blob), 200);
    assert_blob(&oci, "keep/img", &blob, &data);
}

#[test]
fn immutable_repository() {
    let (server, oci) = start();
    eprintln!("--- wharf repo create prod --format oci --immutable");
    run(server
        .cli()
        .args(["repo", "create", "prod", "--format", "oci", "--immutable"]));
    let name = "prod/app";
    let img = push_image_blobs(&oci, name);
    let first = sha256_digest(&img.manifest);

    eprintln!("--- push v1 → 201, same manifest again → 201");
    oci.put_manifest(name, "v1", Some(OCI_MANIFEST), &img.manifest)
        .expect(201);
    oci.put_manifest(name, "v1", Some(OCI_MANIFEST), &img.manifest)
        .expect(201);

    eprintln!("--- a different manifest to v1 → 409 DENIED naming the tag and the repository");
    let mut other: Value = serde_json::from_slice(&img.manifest).unwrap();
    other["annotations"] = json!({ "x": "other" });
    let other = serde_json::to_vec(&other).unwrap();
    let r = oci
        .put_manifest(name, "v1", Some(OCI_MANIFEST), &other)
        .expect_error(409, "DENIED");
    let message = r.error_message().unwrap_or_default();
    assert!(
        message.contains("v1") && message.contains("prod"),
        "message should name the tag and the repository: {message}"
    );

    eprintln!("--- DELETE tag → 405 DENIED");
    oci.call("DELETE", &format!("/v2/{name}/manifests/v1"))
        .expect_error(405, "DENIED");
    eprintln!("--- DELETE manifest by digest → 405 DENIED");
    oci.call("DELETE", &format!("/v2/{name}/manifests/{first}"))
        .expect_error(405, "DENIED");

    eprintln!("--- v1 still serves the first digest");
    let r = oci
        .call("GET", &format!("/v2/{name}/manifests/v1"))
        .expect(200);
    assert_eq!(r.header("Docker-Content-Digest"), Some(first.as_str()));
    assert!(r.body == img.manifest);
}

#[test]
fn bad_input_is_refused_and_leaves_nothing_behind() {
    let (server, oci) = start();
    let zero = format!("sha256:{}", "0".repeat(64));

    eprintln!("--- names with .. (raw paths, not normalized) → 400 NAME_INVALID or 404");
    for (method, target) in [
        ("GET", "/v2/a/../b/manifests/latest".to_string()),
        ("GET", "/v2/a/%2e%2e/b/manifests/latest".to_string()),
        ("GET", "/v2/../a/b/tags/list".to_string()),
        ("POST", "/v2/a/../b/blobs/uploads/".to_string()),
        ("POST", "/v2/a/%2E%2E/b/blobs/uploads/".to_string()),
        ("HEAD", format!("/v2/a/%2e%2e/b/blobs/{zero}")),
    ] {
        {
            let r = raw_request(server.addr(), method, &target);
            let code = r.error_code().unwrap_or_default();
            assert!(
                (r.status == 400 && (code == "NAME_INVALID" || method == "HEAD"))
                    || r.status == 404,
                "{method} {target} → {} {code}: {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            );
        }
    }

    eprintln!("--- uppercase name → 400 NAME_INVALID");
    oci.call("POST", "/v2/Upper/img/blobs/uploads/")
        .expect_error(400, "NAME_INVALID");
    oci.call("GET", "/v2/upper/Img/manifests/latest")
        .expect_error(400, "NAME_INVALID");

    eprintln!("--- one-segment name → 400 NAME_INVALID explaining <repository>/<image>");
    let r = oci
        .call("POST", "/v2/single/blobs/uploads/")
        .expect_error(400, "NAME_INVALID");
    let message = r.error_message().unwrap_or_default();
    assert!(
        message.contains("<repository>/<image>"),
        "message should explain <repository>/<image>: {message}"
    );

    eprintln!("--- 300-character name → 400 NAME_INVALID");
    let long = format!("a/{}", "b".repeat(298));
    oci.call("POST", &format!("/v2/{long}/blobs/uploads/"))
        .expect_error(400, "NAME_INVALID");

    eprintln!("--- malformed digests → 400 DIGEST_INVALID");
    let name = "bad/img";
    let bad_digests = [
        "sha256:xyz".to_string(),
        format!("md5:{}", "0".repeat(32)),
        format!("sha256:{}", "a".repeat(63)),
    ];
    let location = start_upload(&oci, name);
    for d in &bad_digests {
        oci.call("GET", &format!("/v2/{name}/blobs/{d}"))
            .expect_error(400, "DIGEST_INVALID");
        let r = oci
            .call("HEAD", &format!("/v2/{name}/blobs/{d}"))
            .expect(400);
        assert!(r.body.is_empty());
        oci.send(
            oci.req("PUT", &with_query(&location, &format!("digest={d}")))
                .body(b"abc".to_vec()),
        )
        .expect_error(400, "DIGEST_INVALID");
    }

    eprintln!("--- digest mismatch on upload PUT → 400 DIGEST_INVALID, blob not HEAD-able");
    let data = random_bytes(5000);
    let actual = sha256_digest(&data);
    let claimed = sha256_digest(b"not these bytes");
    let location = start_upload(&oci, name);
    oci.send(
        oci.req("PUT", &with_query(&location, &format!("digest={claimed}")))
            .header("Content-Type", "application/octet-stream")
            .body(data.clone()),
    )
    .expect_error(400, "DIGEST_INVALID");
    assert_eq!(head_status(&oci, name, &claimed), 404);
    assert_eq!(head_status(&oci, name, &actual), 404);
    eprintln!("--- same on a monolithic POST ?digest=");
    oci.send(
        oci.req(
            "POST",
            &format!("/v2/{name}/blobs/uploads/?digest={claimed}"),
        )
        .body(data.clone()),
    )
    .expect_error(400, "DIGEST_INVALID");
    assert_eq!(head_status(&oci, name, &claimed), 404);
    assert_eq!(head_status(&oci, name, &actual), 404);

    eprintln!("--- Content-Range: abc on PATCH → 416");
    let location = start_upload(&oci, name);
    oci.send(
        oci.req("PATCH", &location)
            .header("Content-Range", "abc")
            .body(vec![7u8; 10]),
    )
    .expect(416);
    let r = oci.call("GET", &location).expect(204);
    assert_eq!(r.header("Range"), Some("0-0"));

    eprintln!("--- nothing left behind: no images in the catalog");
    let r = oci.call("GET", "/v2/_catalog").expect(200);
    assert_eq!(r.json()["repositories"], json!([]), "catalog");
}

#[test]
fn api_base() {
    let (_server, oci) = start();
    eprintln!("--- GET /v2/ → 200 {{}}");
    let r = oci.call("GET", "/v2/").expect(200);
    assert_eq!(r.json(), json!({}));
    assert_eq!(
        r.header("Docker-Distribution-API-Version"),
        Some("registry/2.0")
    );
    eprintln!("--- unknown /v2/ route → 404 in the OCI error shape");
    let r = oci.call("GET", "/v2/a/b/nonsense").expect(404);
    assert!(r.error_code().is_some());
}

#[test]
fn satisfiable_multi_range_is_not_416() {
    let (_server, oci) = start();
    let name = "multi/img";
    let data = random_bytes(1000);
    let digest = oci.push_blob(name, &data);
    eprintln!("--- Range: bytes=0-9,20-29 → 200 (whole blob) or 206, never 416");
    let r = oci.send(
        oci.req("GET", &format!("/v2/{name}/blobs/{digest}"))
            .header("Range", "bytes=0-9,20-29"),
    );
    assert!(
        r.status == 200 || r.status == 206,
        "{} → {} (want 200 or 206)",
        r.what,
        r.status
    );
    if r.status == 200 {
        assert!(r.body == data);
    }
}

#[test]
fn an_upload_session_belongs_to_the_name_it_was_started_for() {
    let (_server, oci) = start();
    let data = random_bytes(2000);
    let digest = sha256_digest(&data);
    let location = start_upload(&oci, "p/img");
    let session = location.rsplit('/').next().unwrap().to_string();
    eprintln!("--- finishing p's session under q → 404 BLOB_UPLOAD_UNKNOWN, nothing linked in q");
    let foreign = format!("/v2/q/img/blobs/uploads/{session}?digest={digest}");
    oci.send(oci.req("PUT", &foreign).body(data.clone()))
        .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
    oci.call("HEAD", &format!("/v2/q/img/blobs/{digest}"))
        .expect(404);
    eprintln!("--- the session still works under its own name");
    oci.send(
        oci.req("PUT", &format!("{location}?digest={digest}"))
            .body(data),
    )
    .expect(201);
    oci.call("HEAD", &format!("/v2/p/img/blobs/{digest}"))
        .expect(200);
}

#[test]
fn a_chunk_shorter_than_its_content_range_is_refused() {
    let (_server, oci) = start();
    let location = start_upload(&oci, "short/img");
    eprintln!("--- chunked body of 5 bytes claiming 0-15 → 416 with the real Range");
    let body = reqwest::blocking::Body::new(std::io::Cursor::new(vec![7u8; 5]));
    let resp = oci
        .send(
            oci.req("PATCH", &location)
                .header("Content-Type", "application/octet-stream")
                .header("Content-Range", "0-15")
                .body(body),
        )
        .expect(416);
    assert_eq!(resp.header("range"), Some("0-4"));
}

#[test]
fn a_corrupt_stored_blob_is_never_served_as_a_complete_response() {
    let (server, oci) = start();
    let data = random_bytes(9 * MIB);
    let digest = oci.push_blob("rot/img", &data);
    let hex = digest.strip_prefix("sha256:").unwrap();
    let path = server
        .data_dir()
        .join("blobs/sha256")
        .join(&hex[..2])
        .join(hex);
    eprintln!(
        "--- flip one byte in the third 4 MiB chunk of {}",
        path.display()
    );
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[8 * MIB + 17] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();

    eprintln!("--- GET: the response is cut off (never the full, wrong body)");
    let client = wharf_tests::http_client();
    let resp = client
        .get(oci.url(&format!("/v2/rot/img/blobs/{digest}")))
        .send()
        .unwrap();
    assert_eq!(
        resp.status(),
        200,
        "the first chunks are intact, so the response starts"
    );
    let body = resp.bytes();
    match body {
        Ok(b) => {
            assert!(
                b.len() < data.len(),
                "a corrupt blob was served whole ({} bytes)",
                b.len()
            );
            assert_eq!(
                &b[..],
                &data[..b.len()],
                "bytes sent before the bad chunk are the right ones"
            );
        }
        Err(e) => eprintln!("body aborted as expected: {e}"),
    }
    eprintln!("--- a range inside the intact first chunk is still served");
    let r = oci
        .send(
            oci.req("GET", &format!("/v2/rot/img/blobs/{digest}"))
                .header("Range", "bytes=0-99"),
        )
        .expect(206);
    assert_eq!(r.body, data[..100]);
}
