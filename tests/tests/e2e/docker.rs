//! docker CLI + a private dockerd (needs root): import a tiny rootfs, push, remove, pull.
//! Docker pushes `application/vnd.docker.distribution.manifest.v2+json` and one chunked PATCH per blob.

use wharf_tests::oci::{self, DOCKER_MANIFEST_V2};
use wharf_tests::{Dockerd, http_client, run, run_with_stdin};

use crate::{pull_to_layout_converted, push_random_image, setup};

#[test]
fn import_push_pull() {
    let (server, env) = setup();
    tracing::info!("--- start a private dockerd");
    let dockerd = Dockerd::start(&env);
    let image = format!("{}/docker/tiny:1", server.addr());

    tracing::info!("--- docker import a tiny rootfs");
    let content = format!("hello from docker {}\n", wharf_tests::random_hex(8));
    let rootfs = oci::tar_of(&[
        ("hello.txt".to_string(), content.clone().into_bytes()),
        (
            "data/random.bin".to_string(),
            wharf_tests::random_bytes(200 * 1024),
        ),
    ]);
    run_with_stdin(dockerd.docker(&env).args(["import", "-", &image]), &rootfs);
    let id_before = run(dockerd
        .docker(&env)
        .args(["image", "inspect", "--format", "{{.Id}}", &image]));

    tracing::info!("--- docker push");
    let out = run(dockerd.docker(&env).args(["push", &image]));
    let pushed_digest = out
        .split_whitespace()
        .find(|w| w.starts_with("sha256:"))
        .unwrap_or_else(|| panic!("no digest in docker push output:\n{out}"))
        .to_string();

    tracing::info!("--- the registry has a docker v2 manifest under the tag");
    let resp = http_client()
        .head(format!("{}/v2/docker/tiny/manifests/1", server.url()))
        .header("Accept", DOCKER_MANIFEST_V2)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200, "HEAD manifest by tag");
    assert_eq!(
        resp.headers()["Docker-Content-Digest"].to_str().unwrap(),
        pushed_digest,
        "Docker-Content-Digest"
    );
    assert_eq!(
        resp.headers()["Content-Type"].to_str().unwrap(),
        DOCKER_MANIFEST_V2,
        "Content-Type"
    );

    tracing::info!("--- remove the local image, docker pull it again");
    run(dockerd.docker(&env).args(["rmi", &image]));
    let gone = wharf_tests::run_status(
        dockerd.docker(&env).args(["image", "inspect", &image]),
        None,
    );
    assert!(!gone.status.success(), "image still there after rmi");
    run(dockerd.docker(&env).args(["pull", &image]));
    let id_after = run(dockerd
        .docker(&env)
        .args(["image", "inspect", "--format", "{{.Id}}", &image]));
    assert_eq!(id_after.trim(), id_before.trim(), "image ID after pull");
    let repo_digests = run(dockerd.docker(&env).args([
        "image",
        "inspect",
        "--format",
        "{{json .RepoDigests}}",
        &image,
    ]));
    assert!(
        repo_digests.contains(&pushed_digest),
        "RepoDigests {repo_digests} lacks the pushed digest {pushed_digest}"
    );

    tracing::info!("--- other clients see the same content");
    let (layout, pulled) = pull_to_layout_converted(&env, &server, "docker/tiny:1");
    let files = layout.files(&pulled);
    assert_eq!(oci::file(&files, "hello.txt"), content.as_bytes());

    tracing::info!("--- docker pulls an OCI image that skopeo pushed");
    let oci_image = push_random_image(&env, &server, "docker/oci:v1");
    let oci_ref = format!("{}/docker/oci:v1", server.addr());
    run(dockerd.docker(&env).args(["pull", &oci_ref]));
    let id = run(dockerd
        .docker(&env)
        .args(["image", "inspect", "--format", "{{.Id}}", &oci_ref]));
    assert_eq!(
        id.trim(),
        oci_image.config.digest,
        "image ID = config digest"
    );
    drop(dockerd);
}
