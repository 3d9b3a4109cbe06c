//! Black-box end-to-end tests: the real `wharf` binary driven by real clients (docs/clients.md).
//!
//! One module per client. Every test starts its own server ([`Wharf::start`]) and its own client state
//! ([`ClientEnv`]), so tests run in parallel. `generic` and `wharf` need Wharf itself; the OCI client
//! modules also run against a reference registry via `WHARF_TEST_EXTERNAL_REGISTRY` (see tests/README.md).
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod bench_smoke;
mod buildah;
mod cargo;
mod cluster;
mod crash;
mod docker;
mod generic;
mod helm;
mod npm;
mod partition;
mod podman;
mod power_loss;
mod protocol;
mod pypi;
mod replication;
mod skopeo;
mod storage;
mod tls;
mod wharf;

use wharf_tests::oci::{Layout, TestImage};
use wharf_tests::{ClientEnv, Wharf, init_logging, run};

/// Starts logging, a server and a client env for it: the first lines of every test.
pub fn setup() -> (Wharf, ClientEnv) {
    init_logging();
    let server = Wharf::start();
    let env = ClientEnv::new(server.addr());
    (server, env)
}

/// `docker://127.0.0.1:PORT/<name>` for skopeo.
pub fn docker_ref(server: &Wharf, name_tag: &str) -> String {
    format!("docker://{}/{name_tag}", server.addr())
}

/// Writes a fresh random image as an OCI layout in `env` and pushes it with skopeo (digests preserved)
/// to `name_tag` (`repo/image:tag`). Returns what was pushed.
pub fn push_random_image(env: &ClientEnv, server: &Wharf, name_tag: &str) -> TestImage {
    let layout_dir = env.join(&format!("layout-{}", wharf_tests::random_hex(4)));
    let image = wharf_tests::oci::write_layout(&layout_dir, "v1", 300 * 1024);
    run(env
        .skopeo()
        .args(["copy", "--preserve-digests", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:v1", layout_dir.display()))
        .arg(docker_ref(server, name_tag)));
    image
}

/// Copies `name_tag` from the registry into a new OCI layout in `env` (digests preserved) and opens it.
pub fn pull_to_layout(
    env: &ClientEnv,
    server: &Wharf,
    name_tag: &str,
) -> (Layout, wharf_tests::oci::LayoutImage) {
    pull_into_layout(env, server, name_tag, true)
}

/// Like [`pull_to_layout`] but lets skopeo convert the manifest to OCI (for docker v2 manifests, which
/// an OCI layout cannot hold as they are).
pub fn pull_to_layout_converted(
    env: &ClientEnv,
    server: &Wharf,
    name_tag: &str,
) -> (Layout, wharf_tests::oci::LayoutImage) {
    pull_into_layout(env, server, name_tag, false)
}

fn pull_into_layout(
    env: &ClientEnv,
    server: &Wharf,
    name_tag: &str,
    preserve_digests: bool,
) -> (Layout, wharf_tests::oci::LayoutImage) {
    let dir = env.join(&format!("back-{}", wharf_tests::random_hex(4)));
    let mut cmd = env.skopeo();
    cmd.args(["copy", "--src-tls-verify=false"]);
    if preserve_digests {
        cmd.arg("--preserve-digests");
    }
    run(cmd
        .arg(docker_ref(server, name_tag))
        .arg(format!("oci:{}:pulled", dir.display())));
    let layout = Layout::open(&dir);
    let image = layout.image("pulled");
    (layout, image)
}
