//! npm at `/npm/<repo>/`, driven by the real npm client (docs/clients.md §2.2): publish (plain and
//! scoped), install into a fresh project, dist-tags, deprecate, unpublish, and immutability; both
//! packument forms by their `Content-Type` (npm silently falls back to the full document, so a
//! passing install proves nothing about the abbreviated one); bad publishes over plain HTTP; and a
//! publish on one node of a cluster read at once on another (DESIGN.md §1.5).

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha512};
use wharf_tests::cluster::{ClusterOpts, TestCluster};
use wharf_tests::cmd::{require_tool, run_status};
use wharf_tests::serve::Served;
use wharf_tests::{ClientEnv, expect_status, http_client, run};

use crate::setup;

const INSTALL_HEADER: &str =
    "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*";

/// npm with its state in `env` (HOME) and `registry` as its default registry, any token.
fn npm_env<'e>(env: &'e ClientEnv, registry: &str) -> impl Fn(&Path) -> Command + 'e {
    require_tool("npm", "apt-get install -y npm (or install Node.js)");
    let home = env.join("home");
    std::fs::create_dir_all(&home).unwrap();
    let prefix = registry.trim_start_matches("http:");
    std::fs::write(
        home.join(".npmrc"),
        format!("registry={registry}\n{prefix}:_authToken=any-token-works-in-dev\n"),
    )
    .unwrap();
    move |dir: &Path| {
        let mut cmd = env.command("npm");
        cmd.current_dir(dir)
            .args(["--no-audit", "--no-fund", "--no-update-notifier"]);
        cmd
    }
}

/// A package directory with `package.json` and an `index.js` exporting `value`.
fn package(env: &ClientEnv, dir: &str, name: &str, version: &str, value: &str) -> PathBuf {
    let path = env.join(dir);
    std::fs::create_dir_all(&path).unwrap();
    std::fs::write(
        path.join("package.json"),
        json!({ "name": name, "version": version, "main": "index.js", "description": "wharf test" })
            .to_string(),
    )
    .unwrap();
    std::fs::write(
        path.join("index.js"),
        format!("module.exports = {value:?};\n"),
    )
    .unwrap();
    path
}

fn packument(registry: &str, name: &str, accept: &str) -> reqwest::blocking::Response {
    let url = format!("{registry}{}", name.replace('/', "%2f"));
    let resp = http_client()
        .get(&url)
        .header("accept", accept)
        .send()
        .unwrap();
    expect_status(resp, 200, &format!("GET {url}"))
}

fn content_type(resp: &reqwest::blocking::Response) -> String {
    resp.headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

#[test]
fn npm_publish_install_dist_tags_deprecate_and_immutable_versions() {
    let (server, env) = setup();
    let registry = format!("{}/npm/js/", server.url());
    let npm = npm_env(&env, &registry);

    tracing::info!(
        "--- npm publish: a plain and a scoped package (the repository is created on first publish)"
    );
    let plain = package(&env, "tiny-a", "tiny-a", "1.0.0", "a-1.0.0");
    let scoped = package(&env, "tiny-s", "@acme/tiny-s", "1.0.0", "s-1.0.0");
    // (npm itself refuses to send a version the packument already lists, so the server's
    // own answers to a re-publish are checked over HTTP in the bad-publish test.)
    run(npm(&plain).arg("publish"));
    run(npm(&scoped).arg("publish"));

    tracing::info!("--- both packument forms, by Content-Type");
    let resp = packument(&registry, "@acme/tiny-s", INSTALL_HEADER);
    assert_eq!(content_type(&resp), "application/vnd.npm.install-v1+json");
    let abbreviated: Value = resp.json().unwrap();
    assert_eq!(abbreviated["dist-tags"]["latest"], "1.0.0");
    assert!(abbreviated.get("time").is_none(), "{abbreviated}");
    assert!(
        abbreviated["versions"]["1.0.0"]
            .get("description")
            .is_none()
    );
    let tarball = abbreviated["versions"]["1.0.0"]["dist"]["tarball"]
        .as_str()
        .unwrap();
    assert_eq!(
        tarball,
        format!("{registry}@acme/tiny-s/-/tiny-s-1.0.0.tgz"),
        "tarball URL"
    );
    let resp = packument(&registry, "@acme/tiny-s", "application/json");
    assert_eq!(content_type(&resp), "application/json");
    let etag = resp.headers()["etag"].to_str().unwrap().to_string();
    assert_eq!(resp.headers()["cache-control"], "no-cache");
    let full: Value = resp.json().unwrap();
    assert_eq!(full["versions"]["1.0.0"]["description"], "wharf test");
    assert!(full["time"]["1.0.0"].is_string() && full["_rev"].is_string());
    let again = http_client()
        .get(format!("{registry}@acme%2ftiny-s"))
        .header("accept", "application/json")
        .header("if-none-match", &etag)
        .send()
        .unwrap();
    assert_eq!(again.status(), 304, "If-None-Match with the current ETag");
    let gzipped = http_client()
        .get(format!("{registry}tiny-a"))
        .header("accept-encoding", "gzip")
        .send()
        .unwrap();
    assert_eq!(gzipped.headers()["content-encoding"], "gzip");

    tracing::info!("--- npm install into a fresh project");
    let app = env.join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(
        app.join("package.json"),
        r#"{"name":"app","version":"1.0.0"}"#,
    )
    .unwrap();
    run(npm(&app).args(["install", "tiny-a", "@acme/tiny-s"]));
    let mut node = env.command("node");
    node.current_dir(&app).args([
        "-e",
        "console.log(require('tiny-a') + ' ' + require('@acme/tiny-s'))",
    ]);
    assert_eq!(run(&mut node).trim(), "a-1.0.0 s-1.0.0");
    let lock = std::fs::read_to_string(app.join("package-lock.json")).unwrap();
    assert!(
        lock.contains(&format!("{registry}tiny-a/-/tiny-a-1.0.0.tgz")),
        "{lock}"
    );

    tracing::info!("--- a new version under --tag next; dist-tag add / ls / rm");
    let next = package(&env, "tiny-a-2", "tiny-a", "2.0.0", "a-2.0.0");
    run(npm(&next).args(["publish", "--tag", "next"]));
    run(npm(&app).args(["dist-tag", "add", "tiny-a@1.0.0", "stable"]));
    let tags = run(npm(&app).args(["dist-tag", "ls", "tiny-a"]));
    for line in ["latest: 1.0.0", "next: 2.0.0", "stable: 1.0.0"] {
        assert!(tags.contains(line), "{line} in {tags}");
    }
    run(npm(&app).args(["dist-tag", "rm", "tiny-a", "stable"]));
    assert!(!run(npm(&app).args(["dist-tag", "ls", "tiny-a"])).contains("stable"));

    tracing::info!("--- npm deprecate shows in both forms");
    run(npm(&app).args(["deprecate", "tiny-a@1.0.0", "use 2.x"]));
    let view = run(npm(&app).args(["view", "tiny-a@1.0.0", "deprecated"]));
    assert_eq!(view.trim(), "use 2.x");
    let short: Value = packument(&registry, "tiny-a", INSTALL_HEADER)
        .json()
        .unwrap();
    assert_eq!(short["versions"]["1.0.0"]["deprecated"], "use 2.x");

    tracing::info!(
        "--- a changed 1.0.0 is refused with npm's own message (npm checks the packument first)"
    );
    std::fs::write(plain.join("index.js"), "module.exports = 'changed';\n").unwrap();
    let refused = run_status(npm(&plain).args(["publish", "--tag", "again"]), None);
    assert!(!refused.status.success(), "{}", refused.describe());
    assert!(
        refused
            .stderr
            .contains("You cannot publish over the previously published versions: 1.0.0."),
        "{}",
        refused.describe()
    );

    tracing::info!("--- unpublish is refused in a repository that does not allow it");
    let refused = run_status(
        npm(&app).args(["unpublish", "tiny-a@2.0.0", "--force"]),
        None,
    );
    assert!(!refused.status.success(), "{}", refused.describe());
    assert!(
        refused.stderr.contains("does not allow unpublishing"),
        "{}",
        refused.describe()
    );
    assert!(run(npm(&app).args(["whoami"])).trim() == "anonymous");
}

#[test]
fn npm_unpublish_where_allowed_keeps_the_version_reserved() {
    let (server, env) = setup();
    run(server.cli().args([
        "repo",
        "create",
        "loose",
        "--format",
        "npm",
        "--allow-unpublish",
    ]));
    let registry = format!("{}/npm/loose/", server.url());
    let npm = npm_env(&env, &registry);
    let one = package(&env, "one", "gone", "1.0.0", "1");
    let two = package(&env, "two", "gone", "1.1.0", "1.1");
    run(npm(&one).arg("publish"));
    run(npm(&two).arg("publish"));

    run(npm(&one).args(["unpublish", "gone@1.1.0", "--force"]));
    let doc: Value = packument(&registry, "gone", "application/json")
        .json()
        .unwrap();
    assert!(doc["versions"].get("1.1.0").is_none(), "{doc}");
    assert_eq!(
        doc["dist-tags"]["latest"], "1.0.0",
        "latest moves to what is left"
    );
    let tarball = http_client()
        .get(format!("{registry}gone/-/gone-1.1.0.tgz"))
        .send()
        .unwrap();
    assert_eq!(tarball.status(), 404);

    let again = run_status(npm(&two).arg("publish"), None);
    assert!(!again.status.success(), "{}", again.describe());
    assert!(
        again.stderr.contains("can never be published again"),
        "{}",
        again.describe()
    );
}

/// A publish body as npm sends it, for `name@version` with `tarball` as its attachment.
fn publish_body(name: &str, version: &str, tarball: &[u8]) -> Value {
    let integrity = format!(
        "sha512-{}",
        base64::engine::general_purpose::STANDARD.encode(Sha512::digest(tarball))
    );
    let file = format!("{}-{version}.tgz", name.rsplit('/').next().unwrap());
    json!({
        "_id": name, "name": name, "dist-tags": { "latest": version },
        "versions": { version: { "name": name, "version": version, "dist": { "integrity": integrity } } },
        "_attachments": { file: { "content_type": "application/octet-stream",
            "data": base64::engine::general_purpose::STANDARD.encode(tarball), "length": tarball.len() } }
    })
}

/// A gzipped npm tarball whose `package/package.json` says `name@version`.
fn npm_tarball(name: &str, version: &str) -> Vec<u8> {
    let manifest = json!({ "name": name, "version": version }).to_string();
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(manifest.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    builder
        .append_data(&mut header, "package/package.json", manifest.as_bytes())
        .unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &builder.into_inner().unwrap()).unwrap();
    gz.finish().unwrap()
}

#[test]
fn npm_bad_publishes_get_npm_errors_and_bind_nothing() {
    let mut server = Served::start(&[], |port| {
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"data\"\nauto_create_repos = true\n\n\
             [http]\nmax_npm_publish_bytes = 65536\n"
        )
    });
    let base = format!("http://127.0.0.1:{}", server.port());
    let client = http_client();
    server.wait_until(|| {
        client
            .get(format!("{base}/readyz"))
            .send()
            .is_ok_and(|r| r.status() == 200)
    });
    let put = |name: &str, body: &Value| {
        client
            .put(format!("{base}/npm/js/{}", name.replace('/', "%2f")))
            .json(body)
            .send()
            .unwrap()
    };
    let good = npm_tarball("bad", "1.0.0");
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            "not a tarball",
            publish_body("bad", "1.0.0", b"definitely not gzip"),
            400,
            "not a valid npm package",
        ),
        (
            "integrity mismatch",
            {
                let mut body = publish_body("bad", "1.0.0", &good);
                body["versions"]["1.0.0"]["dist"]["integrity"] = json!(format!(
                    "sha512-{}",
                    base64::engine::general_purpose::STANDARD.encode(Sha512::digest(b"x"))
                ));
                body
            },
            400,
            "integrity mismatch",
        ),
        (
            "tarball of another version",
            publish_body("bad", "1.0.0", &npm_tarball("bad", "9.9.9")),
            400,
            "package.json is bad@9.9.9",
        ),
        (
            "version field disagrees",
            {
                let mut body = publish_body("bad", "1.0.0", &good);
                body["versions"]["1.0.0"]["version"] = json!("1.0.1");
                body
            },
            400,
            "versions.1.0.0.version",
        ),
        (
            "larger than http.max_npm_publish_bytes",
            publish_body("bad", "1.0.0", &wharf_tests::random_bytes(100_000)),
            413,
            "max_npm_publish_bytes",
        ),
    ];
    for (what, body, status, message) in cases {
        let resp = put("bad", &body);
        assert_eq!(resp.status().as_u16(), status, "{what}");
        let error: Value = resp.json().unwrap();
        assert!(
            error["error"]
                .as_str()
                .unwrap_or_default()
                .contains(message),
            "{what}: {error}"
        );
    }
    let resp = put("../etc", &publish_body("../etc", "1.0.0", &good));
    assert_eq!(resp.status(), 400, "a name that is not an npm name");
    let missing = client.get(format!("{base}/npm/js/bad")).send().unwrap();
    assert_eq!(
        missing.status(),
        404,
        "nothing was bound by the refused publishes"
    );
    // The good body goes through, once.
    assert_eq!(
        put("bad", &publish_body("bad", "1.0.0", &good)).status(),
        201
    );
    assert_eq!(
        put("bad", &publish_body("bad", "1.0.0", &good)).status(),
        200
    );
    // Same name and version, other bytes: the same archive, stored without compression.
    let changed = {
        let mut raw = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&good[..]), &mut raw).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::none());
        std::io::Write::write_all(&mut gz, &raw).unwrap();
        gz.finish().unwrap()
    };
    let resp = put("bad", &publish_body("bad", "1.0.0", &changed));
    assert_eq!(resp.status(), 403);
    let error: Value = resp.json().unwrap();
    assert_eq!(
        error["error"],
        "You cannot publish over the previously published versions: 1.0.0."
    );
}

#[test]
fn npm_publish_on_one_node_is_read_at_once_on_the_others() {
    let cluster = TestCluster::start(3, ClusterOpts::default());
    let env = ClientEnv::new(&cluster.members[0].client);
    let first = format!("http://{}/npm/js/", cluster.members[0].client);
    let npm = npm_env(&env, &first);
    let pkg = package(&env, "spread", "spread", "1.0.0", "everywhere");
    run(npm(&pkg).arg("publish"));
    for member in &cluster.members[1..] {
        let registry = format!("http://{}/npm/js/", member.client);
        let doc: Value = packument(&registry, "spread", INSTALL_HEADER)
            .json()
            .unwrap();
        assert_eq!(doc["dist-tags"]["latest"], "1.0.0", "on {}", member.client);
        assert!(
            doc["versions"]["1.0.0"]["dist"]["tarball"]
                .as_str()
                .unwrap()
                .starts_with(&registry),
            "tarball URLs name the node that was asked: {doc}"
        );
    }
    let third = format!("http://{}/npm/js/", cluster.members[2].client);
    let app = env.join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(
        app.join("package.json"),
        r#"{"name":"app","version":"1.0.0"}"#,
    )
    .unwrap();
    run(npm(&app).args(["install", "spread", "--registry", &third]));
    assert!(app.join("node_modules/spread/index.js").exists());
}
