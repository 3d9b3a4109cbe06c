//! `[http.tls]`: `wharf serve` with a certificate answers over TLS, HTTP/2 by ALPN and HTTP/1.1,
//! and stops cleanly on SIGTERM.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use wharf_tests::require_tool;
use wharf_tests::server::{signal, wharf_bin};

#[test]
fn serve_with_tls_speaks_http2_and_http1() {
    wharf_tests::init_logging();
    let curl = require_tool("curl", "apt-get install -y curl");
    let dir = tempfile::tempdir().unwrap();
    eprintln!("--- a self-signed certificate for 127.0.0.1");
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    std::fs::write(dir.path().join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"data\"\n\n[http.tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n"
    );
    std::fs::write(dir.path().join("wharf.toml"), config).unwrap();

    eprintln!("--- wharf serve --config wharf.toml");
    let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
    let mut child = KillOnDrop(
        Command::new(wharf_bin())
            .arg("serve")
            .arg("--config")
            .arg(dir.path().join("wharf.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let curl_get = |http: &str, path: &str| {
        Command::new(&curl)
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
            .arg(dir.path().join("cert.pem"))
            .arg(format!("https://127.0.0.1:{port}{path}"))
            .output()
            .unwrap()
    };
    let started = Instant::now();
    loop {
        let out = curl_get("--http1.1", "/readyz");
        if String::from_utf8_lossy(&out.stdout).ends_with(" 200") {
            break;
        }
        let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "TLS server never became ready:\n{log}"
        );
        assert!(
            child.0.try_wait().unwrap().is_none(),
            "wharf serve exited:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    eprintln!("--- HTTP/2 by ALPN");
    let out = String::from_utf8_lossy(&curl_get("--http2", "/v2/").stdout).into_owned();
    assert!(out.ends_with("2 200"), "{out}");
    assert!(
        out.to_ascii_lowercase().contains("x-wharf-node: 1"),
        "{out}"
    );
    assert!(
        out.to_ascii_lowercase()
            .contains("docker-distribution-api-version: registry/2.0"),
        "{out}"
    );

    eprintln!("--- HTTP/1.1");
    let out = String::from_utf8_lossy(&curl_get("--http1.1", "/v2/").stdout).into_owned();
    assert!(out.ends_with("1.1 200"), "{out}");

    eprintln!("--- SIGTERM stops it cleanly");
    signal(child.0.id(), "TERM");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "wharf serve did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}");
}

/// Kills the server (which this test started) if the test fails before stopping it.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
