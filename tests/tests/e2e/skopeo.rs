//! skopeo (containers/image, the library podman and buildah share): push from an OCI layout, pull
//! back, inspect, list tags, delete.

use serde_json::Value;
use wharf_tests::oci::{self, MANIFEST_V1};
use wharf_tests::{http_client, run, run_status};

use crate::{docker_ref, pull_to_layout, push_random_image, setup};

#[test]
fn copy_layout_to_registry_and_back() {
    let (server, env) = setup();

    tracing::info!("--- push an OCI layout with skopeo");
    let pushed = push_random_image(&env, &server, "skopeo/copy:v1");

    tracing::info!("--- the registry serves the manifest under the tag, unchanged");
    let resp = http_client()
        .get(format!("{}/v2/skopeo/copy/manifests/v1", server.url()))
        .header("Accept", MANIFEST_V1)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200, "GET manifest by tag");
    assert_eq!(
        resp.headers()["Docker-Content-Digest"].to_str().unwrap(),
        pushed.manifest.digest,
        "Docker-Content-Digest of the manifest"
    );
    assert_eq!(
        resp.bytes().unwrap().as_ref(),
        pushed.manifest_bytes.as_slice()
    );

    tracing::info!("--- copy it back into another layout, digests preserved");
    let (layout, back) = pull_to_layout(&env, &server, "skopeo/copy:v1");
    assert_eq!(
        back.manifest.digest, pushed.manifest.digest,
        "manifest digest"
    );
    assert_eq!(back.manifest_bytes, pushed.manifest_bytes, "manifest bytes");
    assert_eq!(back.config.digest, pushed.config.digest, "config digest");
    assert_eq!(back.layers, pushed.layers, "layer descriptors");

    tracing::info!("--- the layer contents came back intact");
    let files = layout.files(&back);
    for (path, content) in &pushed.files {
        assert_eq!(
            oci::file(&files, path),
            content.as_slice(),
            "content of {path}"
        );
    }
}

#[test]
fn inspect_and_list_tags() {
    let (server, env) = setup();

    tracing::info!("--- push one image under two tags");
    let pushed = push_random_image(&env, &server, "skopeo/inspect:v1");
    run(env
        .skopeo()
        .args([
            "copy",
            "--all",
            "--preserve-digests",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
        ])
        .arg(docker_ref(&server, "skopeo/inspect:v1"))
        .arg(docker_ref(&server, "skopeo/inspect:v2")));

    tracing::info!("--- skopeo inspect --raw gives the manifest bytes");
    let raw = run(env
        .skopeo()
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(docker_ref(&server, "skopeo/inspect:v2")));
    assert_eq!(
        raw.as_bytes(),
        pushed.manifest_bytes.as_slice(),
        "inspect --raw"
    );

    tracing::info!("--- skopeo inspect sees digest, layers and labels");
    let info: Value = serde_json::from_str(&run(env
        .skopeo()
        .args(["inspect", "--tls-verify=false"])
        .arg(docker_ref(&server, "skopeo/inspect:v1"))))
    .unwrap();
    assert_eq!(
        info["Digest"],
        pushed.manifest.digest.as_str(),
        "inspect Digest: {info}"
    );
    let layers: Vec<&str> = info["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    let want: Vec<&str> = pushed.layers.iter().map(|l| l.digest.as_str()).collect();
    assert_eq!(layers, want, "inspect Layers");
    assert_eq!(info["Labels"]["wharf.test"], "v1", "inspect Labels: {info}");

    tracing::info!("--- skopeo inspect --config gives the config");
    let config: Value = serde_json::from_str(&run(env
        .skopeo()
        .args(["inspect", "--config", "--raw", "--tls-verify=false"])
        .arg(docker_ref(&server, "skopeo/inspect:v1"))))
    .unwrap();
    assert_eq!(
        config["rootfs"]["diff_ids"],
        serde_json::json!(pushed.diff_ids)
    );

    tracing::info!("--- skopeo list-tags lists both tags");
    let tags: Value = serde_json::from_str(&run(env
        .skopeo()
        .args(["list-tags", "--tls-verify=false"])
        .arg(docker_ref(&server, "skopeo/inspect"))))
    .unwrap();
    let mut tags: Vec<&str> = tags["Tags"]
        .as_array()
        .unwrap_or_else(|| panic!("no Tags in {tags}"))
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    tags.sort_unstable();
    assert_eq!(tags, ["v1", "v2"]);
}

#[test]
fn delete_removes_the_tag() {
    let (server, env) = setup();

    tracing::info!("--- push, then delete with skopeo");
    let pushed = push_random_image(&env, &server, "skopeo/delete:v1");
    run(env
        .skopeo()
        .args(["delete", "--tls-verify=false"])
        .arg(docker_ref(&server, "skopeo/delete:v1")));

    tracing::info!("--- the tag is gone for skopeo");
    let inspect = run_status(
        env.skopeo()
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(docker_ref(&server, "skopeo/delete:v1")),
        None,
    );
    assert!(
        !inspect.status.success(),
        "skopeo inspect of a deleted tag succeeded:\n{}",
        inspect.describe()
    );
    assert!(
        inspect.stderr.contains("manifest unknown")
            || inspect.stderr.to_lowercase().contains("not found"),
        "skopeo inspect of a deleted tag should fail with 'manifest unknown':\n{}",
        inspect.describe()
    );

    tracing::info!("--- and over HTTP: tag and digest answer 404");
    let client = http_client();
    for reference in ["v1", pushed.manifest.digest.as_str()] {
        let resp = client
            .get(format!(
                "{}/v2/skopeo/delete/manifests/{reference}",
                server.url()
            ))
            .header("Accept", MANIFEST_V1)
            .send()
            .unwrap();
        assert_eq!(resp.status(), 404, "GET manifest {reference} after delete");
    }
    let list = run_status(
        env.skopeo()
            .args(["list-tags", "--tls-verify=false"])
            .arg(docker_ref(&server, "skopeo/delete")),
        None,
    );
    if list.status.success() {
        let tags: Value = serde_json::from_str(&list.stdout).unwrap();
        let has_v1 = tags["Tags"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t == "v1"));
        assert!(!has_v1, "list-tags still lists v1 after delete: {tags}");
    } else {
        // a repository without tags may also be unknown altogether
        assert!(
            list.stderr.contains("unknown") || list.stderr.contains("404"),
            "skopeo list-tags after delete failed unexpectedly:\n{}",
            list.describe()
        );
    }
}
