//! `[http.tls]`: `wharf serve` with a certificate answers over TLS, HTTP/2 by ALPN and HTTP/1.1,
//! and stops cleanly on SIGTERM.

use std::process::Command;

use wharf_tests::require_tool;
use wharf_tests::serve::Served;

#[test]
fn serve_with_tls_speaks_http2_and_http1() {
    wharf_tests::init_logging();
    let curl = require_tool("curl", "apt-get install -y curl");
    eprintln!("--- a self-signed certificate for 127.0.0.1");
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let (cert_pem, key_pem) = (cert.cert.pem(), cert.signing_key.serialize_pem());
    eprintln!("--- wharf serve --config wharf.toml");
    let mut server = Served::start(
        &[
            ("cert.pem", cert_pem.as_bytes()),
            ("key.pem", key_pem.as_bytes()),
        ],
        |port| {
            format!(
                "[server]\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"data\"\n\n\
                 [http.tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n"
            )
        },
    );
    let (port, ca) = (server.port(), server.dir().join("cert.pem"));
    let curl_get = |http: &str, path: &str| {
        let out = Command::new(&curl)
            .args([
                "-s",
                "-D",
                "-",
                "-o",
                "/dev/null",
                "-w",
                "%{http_version} %{http_code}",
            ])
            .arg(http)
            .arg("--cacert")
            .arg(&ca)
            .arg(format!("https://127.0.0.1:{port}{path}"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    server.wait_until(|| curl_get("--http1.1", "/readyz").ends_with(" 200"));

    eprintln!("--- HTTP/2 by ALPN");
    let out = curl_get("--http2", "/v2/");
    assert!(out.ends_with("2 200"), "{out}");
    let lower = out.to_ascii_lowercase();
    assert!(lower.contains("x-wharf-node: 1"), "{out}");
    assert!(
        lower.contains("docker-distribution-api-version: registry/2.0"),
        "{out}"
    );

    eprintln!("--- HTTP/1.1");
    let out = curl_get("--http1.1", "/v2/");
    assert!(out.ends_with("1.1 200"), "{out}");

    eprintln!("--- SIGTERM stops it cleanly");
    let status = server.stop_sigterm();
    assert!(status.success(), "exit status {status}");
}
