//! podman: pull an image skopeo pushed, push it back under another name, pull that again.
//! TLS is off through the env's `CONTAINERS_REGISTRIES_CONF` (insecure = true), not a flag.

use wharf_tests::oci;
use wharf_tests::run;

use crate::{pull_to_layout, push_random_image, setup};

#[test]
fn pull_and_push_back() {
    let (server, env) = setup();
    let src = format!("{}/podman/src:v1", server.addr());
    let dst = format!("{}/podman/copy:v2", server.addr());

    tracing::info!("--- skopeo pushes an image");
    let pushed = push_random_image(&env, &server, "podman/src:v1");

    tracing::info!("--- podman pulls it");
    run(env.podman().args(["pull", "--quiet", &src]));
    let digest = run(env
        .podman()
        .args(["image", "inspect", "--format", "{{.Digest}}", &src]));
    assert_eq!(
        digest.trim(),
        pushed.manifest.digest,
        "digest of the pulled image"
    );

    tracing::info!("--- podman pushes it under another name");
    run(env.podman().args(["tag", &src, &dst]));
    run(env.podman().args(["push", &dst]));

    tracing::info!("--- the copy has the same layer contents (podman may recompress)");
    let (layout, copy) = pull_to_layout(&env, &server, "podman/copy:v2");
    assert_eq!(
        copy.config_json["rootfs"]["diff_ids"],
        serde_json::json!(pushed.diff_ids),
        "diff_ids of the copy"
    );
    let files = layout.files(&copy);
    for (path, content) in &pushed.files {
        assert_eq!(
            oci::file(&files, path),
            content.as_slice(),
            "content of {path}"
        );
    }

    tracing::info!("--- remove local images, pull the copy with podman");
    run(env.podman().args(["rmi", "--all", "--force"]));
    run(env.podman().args(["pull", "--quiet", &dst]));
    let digest = run(env
        .podman()
        .args(["image", "inspect", "--format", "{{.Digest}}", &dst]));
    assert_eq!(
        digest.trim(),
        copy.manifest.digest,
        "digest of the pulled copy"
    );
}
