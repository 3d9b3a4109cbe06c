//! buildah: build an image from scratch (no base image pulled), commit, push (docs/clients.md §2.1).

use wharf_tests::oci;
use wharf_tests::run;

use crate::{pull_to_layout, setup};

#[test]
fn build_from_scratch_and_push() {
    let (server, env) = setup();
    let content = format!("hello from buildah {}\n", wharf_tests::random_hex(8));
    std::fs::write(env.join("hello.txt"), &content).unwrap();

    tracing::info!("--- buildah from scratch, copy a file, commit");
    let ctr = run(env.buildah().args(["from", "scratch"]));
    let ctr = ctr.trim();
    run(env
        .buildah()
        .args(["copy", ctr])
        .arg(env.join("hello.txt"))
        .arg("/hello.txt"));
    run(env.buildah().args([
        "config",
        "--cmd",
        r#"["/hello"]"#,
        "--label",
        "wharf.test=buildah",
        ctr,
    ]));
    run(env
        .buildah()
        .args(["commit", "--quiet", ctr, "localhost/tiny:1"]));
    run(env.buildah().args(["rm", ctr]));

    tracing::info!("--- buildah push");
    let digest_file = env.join("pushed.digest");
    run(env
        .buildah()
        .args(["push", "--tls-verify=false", "--digestfile"])
        .arg(&digest_file)
        .arg("localhost/tiny:1")
        .arg(format!("docker://{}/buildah/tiny:1", server.addr())));
    let pushed_digest = std::fs::read_to_string(&digest_file).unwrap();

    tracing::info!("--- pull back with skopeo: the file and the config are there");
    let (layout, image) = pull_to_layout(&env, &server, "buildah/tiny:1");
    assert_eq!(
        image.manifest.digest,
        pushed_digest.trim(),
        "manifest digest vs buildah --digestfile"
    );
    assert_eq!(
        image.config_json["config"]["Labels"]["wharf.test"],
        "buildah"
    );
    let files = layout.files(&image);
    assert_eq!(oci::file(&files, "hello.txt"), content.as_bytes());
}
