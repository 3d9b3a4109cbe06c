//! Support code for Wharf's black-box tests (the single test binary in `tests/e2e/`).
//!
//! The tests spawn the real `wharf` binary ([`Wharf`]) and drive real clients (skopeo, podman, buildah,
//! docker, helm, curl; see `docs/clients.md`) against it, each client with its own throw-away state
//! ([`ClientEnv`]). Start reading at [`Wharf::start`], then [`ClientEnv`] and [`oci::write_layout`].
//!
//! Test-only escape hatch: with `WHARF_TEST_EXTERNAL_REGISTRY=127.0.0.1:PORT` [`Wharf::start`] hands
//! out that already running registry instead of spawning Wharf, so the OCI client tests can be checked
//! against a reference registry (Debian's `docker-registry`). Tests that need Wharf itself (generic
//! files, restarts, Wharf-only rules) live in the `generic` and `wharf` modules of the test binary.
#![allow(clippy::unwrap_used)] // test support: a failed unwrap is a failed test

pub mod cluster;
pub mod cmd;
pub mod dockerd;
pub mod env;
pub mod oci;
pub mod ocihttp;
pub mod powercut;
pub mod serve;
pub mod server;

pub use cmd::{Run, helm_bin, require_tool, run, run_status, run_with_stdin};
pub use dockerd::Dockerd;
pub use env::ClientEnv;
pub use server::Wharf;

use rand::Rng;

/// Routes `tracing` output to the test harness (shown for failing tests, or with `--nocapture`).
/// Call at the start of every test; later calls are no-ops.
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_test_writer()
        .with_ansi(false)
        .with_target(false)
        .try_init();
}

/// Random lower-case hex string of `bytes` random bytes (2 × `bytes` characters): makes names and
/// contents unique per test run, so no two tests (or runs against a shared registry) collide.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill(&mut buf[..]);
    hex::encode(buf)
}

/// `bytes` random (incompressible) bytes.
pub fn random_bytes(bytes: usize) -> Vec<u8> {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill(&mut buf[..]);
    buf
}

/// `sha256:<hex>` of `data`, the OCI digest form.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(data))
}

/// Lower-case hex sha256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// A blocking HTTP client for talking to the server under test directly. It ignores proxy settings
/// from the environment: tests only ever talk to 127.0.0.0/8.
pub fn http_client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(std::time::Duration::from_secs(60))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Panics unless `resp` has status `want`, naming `what` (e.g. `"PUT /generic/x"`) and showing the
/// response headers and body. Returns the response for further checks.
pub fn expect_status(
    resp: reqwest::blocking::Response,
    want: u16,
    what: &str,
) -> reqwest::blocking::Response {
    if resp.status().as_u16() == want {
        return resp;
    }
    let status = resp.status();
    let headers = format!("{:?}", resp.headers());
    let body = resp.text().unwrap_or_default();
    let body: String = body.chars().take(2000).collect();
    panic!("{what}: expected HTTP {want}, got {status}\nheaders: {headers}\nbody: {body}");
}
