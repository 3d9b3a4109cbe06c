//! Behaviour of Wharf itself that a reference registry does not share: `X-Wharf-Node` on every
//! response, the `<repo>/<image>` naming rule, health endpoints, and a graceful restart keeping data.

use serde_json::Value;
use wharf_tests::oci::{self, MANIFEST_V1};
use wharf_tests::{expect_status, http_client, random_bytes, run_status};

use crate::{docker_ref, pull_to_layout, push_random_image, setup};

#[test]
fn every_response_has_x_wharf_node() {
    let (server, _env) = setup();
    let client = http_client();
    let base = server.url();
    let requests = [
        ("GET", "/readyz"),
        ("GET", "/livez"),
        ("GET", "/v2/"),
        ("GET", "/v2/nope/nothing/manifests/latest"),
        (
            "HEAD",
            "/v2/nope/nothing/blobs/sha256:0000000000000000000000000000000000000000000000000000000000000000",
        ),
        ("GET", "/v2/nope/nothing/tags/list"),
        ("GET", "/generic/nope/missing.txt"),
        ("GET", "/no/such/route"),
    ];
    for (method, path) in requests {
        let resp = client
            .request(method.parse().unwrap(), format!("{base}{path}"))
            .send()
            .unwrap();
        assert!(
            resp.headers().contains_key("X-Wharf-Node"),
            "{method} {path} → {}: no X-Wharf-Node header; headers: {:?}",
            resp.status(),
            resp.headers()
        );
    }
}

#[test]
fn health_endpoints_and_api_base() {
    let (server, _env) = setup();
    let client = http_client();
    for path in ["/readyz", "/livez", "/v2/"] {
        expect_status(
            client
                .get(format!("{}{path}", server.url()))
                .send()
                .unwrap(),
            200,
            &format!("GET {path}"),
        );
    }
}

#[test]
fn one_segment_name_is_refused() {
    let (server, env) = setup();

    tracing::info!("--- POST /v2/tiny/blobs/uploads/ → NAME_INVALID");
    let resp = http_client()
        .post(format!("{}/v2/tiny/blobs/uploads/", server.url()))
        .send()
        .unwrap();
    let status = resp.status();
    let body = resp.text().unwrap();
    assert!(
        status.is_client_error(),
        "POST upload to a one-segment name → {status}: {body}"
    );
    let json: Value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {body}"));
    assert_eq!(
        json["errors"][0]["code"], "NAME_INVALID",
        "error body: {body}"
    );

    tracing::info!("--- skopeo push to a one-segment name fails");
    let layout = env.join("layout");
    oci::write_layout(&layout, "v1", 1024);
    let push = run_status(
        env.skopeo()
            .args(["copy", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:v1", layout.display()))
            .arg(docker_ref(&server, "tiny:v1")),
        None,
    );
    assert!(
        !push.status.success(),
        "push to a one-segment name succeeded:\n{}",
        push.describe()
    );
}

#[test]
fn sigterm_restart_keeps_everything() {
    let (mut server, env) = setup();
    let client = http_client();

    tracing::info!("--- push an image and a generic file");
    let pushed = push_random_image(&env, &server, "restart/img:v1");
    let data = random_bytes(50 * 1024);
    let url = format!("{}/generic/files/restart/file.bin", server.url());
    expect_status(
        client.put(&url).body(data.clone()).send().unwrap(),
        201,
        &format!("PUT {url}"),
    );

    tracing::info!("--- SIGTERM: graceful shutdown exits 0");
    let status = server.stop_sigterm();
    assert!(
        status.success(),
        "wharf exited with {status} after SIGTERM\n{}",
        server.log_tail()
    );

    tracing::info!("--- start again on the same data dir");
    server.restart();

    tracing::info!("--- the image is still there");
    let (layout, back) = pull_to_layout(&env, &server, "restart/img:v1");
    assert_eq!(
        back.manifest.digest, pushed.manifest.digest,
        "manifest digest after restart"
    );
    let files = layout.files(&back);
    for (path, content) in &pushed.files {
        assert_eq!(
            oci::file(&files, path),
            content.as_slice(),
            "content of {path} after restart"
        );
    }
    expect_status(
        client
            .head(format!("{}/v2/restart/img/manifests/v1", server.url()))
            .header("Accept", MANIFEST_V1)
            .send()
            .unwrap(),
        200,
        "HEAD manifest after restart",
    );

    tracing::info!("--- the generic file is still there");
    let resp = expect_status(
        client.get(&url).send().unwrap(),
        200,
        &format!("GET {url} after restart"),
    );
    assert!(
        resp.bytes().unwrap().as_ref() == data.as_slice(),
        "generic file after restart differs"
    );
}
