//! Cargo registries at `/cargo/<repo>/` driven by the real `cargo` (docs/clients.md §2.6), with an
//! isolated `CARGO_HOME` and target dir: two Wharf repositories, a crate in one depending on a
//! crate in the other, a fresh project built from both, yank/unyank and owners; then the bad
//! publishes (over plain HTTP and curl), each refused in Cargo's error shape, binding nothing.
//! Wharf only. No crate from any public registry is involved.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use wharf_tests::{ClientEnv, Wharf, expect_status, http_client, run, run_status, run_with_stdin};

/// [`crate::setup`], then waits until the node runs cluster version 5 (package commands): a
/// fresh `wharf dev` may start below it and raise it shortly after.
fn setup() -> (Wharf, ClientEnv) {
    let (server, env) = crate::setup();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let metrics = http_client()
            .get(format!("{}/metrics", server.url()))
            .send()
            .unwrap()
            .text()
            .unwrap();
        let version = metrics
            .lines()
            .find(|l| l.starts_with("wharf_cluster_version{"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        if version >= 5 {
            return (server, env);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the node did not reach cluster version 5 within 30 s (at {version})"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The `cargo` to drive: the one running these tests (`$CARGO`), else `cargo` on PATH.
fn cargo_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("CARGO").map(PathBuf::from)
        && path.is_file()
    {
        return path;
    }
    wharf_tests::require_tool(
        "cargo",
        "the Rust toolchain (rustup, or apt-get install -y cargo)",
    )
}

/// Cargo with this test's own `CARGO_HOME` (holding the registries' config and tokens) and target
/// dir; nothing from the environment of the test run (CARGO_*, RUSTFLAGS) leaks in.
fn cargo(env: &ClientEnv) -> Command {
    let bin = cargo_bin();
    let mut cmd = env.command(&bin);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO")
            || key.starts_with("RUSTC")
            || key.ends_with("RUSTFLAGS")
            || key == "RUSTDOCFLAGS"
        {
            cmd.env_remove(&*key);
        }
    }
    // rustup's proxies find their toolchains through RUSTUP_HOME, by default under the HOME that
    // the client env replaces.
    if std::env::var_os("RUSTUP_HOME").is_none()
        && let Some(home) = std::env::var_os("HOME")
    {
        let rustup = Path::new(&home).join(".rustup");
        if rustup.is_dir() {
            cmd.env("RUSTUP_HOME", rustup);
        }
    }
    // The rustc next to this cargo, when it has one (a toolchain directory).
    if let Some(rustc) = bin.parent().map(|d| d.join("rustc"))
        && rustc.is_file()
    {
        cmd.env("RUSTC", rustc);
    }
    cmd.env("CARGO_HOME", env.join("cargo-home"))
        .env("CARGO_TARGET_DIR", env.join("cargo-target"))
        .env("CARGO_TERM_COLOR", "never")
        .env("CARGO_NET_RETRY", "0");
    cmd
}

/// `sparse+http://127.0.0.1:P/cargo/<repo>/index/`: the index URL cargo is configured with.
fn index_url(server: &Wharf, repo: &str) -> String {
    format!("sparse+{}/cargo/{repo}/index/", server.url())
}

/// Writes `CARGO_HOME/config.toml` naming `repos` as registries and logs in to each.
fn configure(env: &ClientEnv, server: &Wharf, repos: &[&str]) {
    let home = env.join("cargo-home");
    std::fs::create_dir_all(&home).unwrap();
    let mut config = String::new();
    for repo in repos {
        config.push_str(&format!(
            "[registries.{repo}]\nindex = \"{}\"\n\n",
            index_url(server, repo)
        ));
    }
    std::fs::write(home.join("config.toml"), config).unwrap();
    for repo in repos {
        // Wharf accepts any token until it has users; configured the normal way.
        run_with_stdin(
            cargo(env).args(["login", "--registry", repo]),
            b"any-token\n",
        );
    }
}

/// Writes a crate `name` (a lib) at `dir` with `manifest_tail` appended to `[package]`.
fn write_crate(dir: &Path, package: &str, lib_rs: &str) {
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(dir.join("Cargo.toml"), package).unwrap();
    std::fs::write(dir.join("src/lib.rs"), lib_rs).unwrap();
}

fn index_lines(server: &Wharf, repo: &str, path: &str) -> Vec<Value> {
    let url = format!("{}/cargo/{repo}/index/{path}", server.url());
    let resp = expect_status(http_client().get(&url).send().unwrap(), 200, &url);
    resp.text()
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn download(server: &Wharf, repo: &str, name: &str, version: &str) -> Vec<u8> {
    let url = format!(
        "{}/cargo/{repo}/api/v1/crates/{name}/{version}/download",
        server.url()
    );
    let resp = expect_status(http_client().get(&url).send().unwrap(), 200, &url);
    assert!(
        resp.headers().get("content-encoding").is_none(),
        "a .crate is never compressed again"
    );
    resp.bytes().unwrap().to_vec()
}

#[test]
fn publish_in_two_repositories_build_yank_and_owners() {
    let (server, env) = setup();
    configure(&env, &server, &["alpha", "beta"]);
    let work = env.join("work");

    tracing::info!("--- cargo publish base_util 0.1.0 to alpha");
    let base = work.join("base_util");
    write_crate(
        &base,
        "[package]\nname = \"base_util\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\
         description = \"base\"\nlicense = \"MIT\"\npublish = [\"alpha\"]\n",
        "pub fn base() -> u32 { 41 }\n",
    );
    run(cargo(&env)
        .current_dir(&base)
        .args(["publish", "--registry", "alpha", "--allow-dirty"]));

    tracing::info!(
        "--- cargo publish mid-layer 0.2.0+build.7 to beta, depending on base_util in alpha"
    );
    let mid = work.join("mid-layer");
    write_crate(
        &mid,
        "[package]\nname = \"mid-layer\"\nversion = \"0.2.0+build.7\"\nedition = \"2021\"\n\
         description = \"mid\"\nlicense = \"MIT\"\nrust-version = \"1.70\"\n\
         publish = [\"beta\"]\n\n\
         [dependencies]\n\
         base = { package = \"base_util\", version = \"0.1\", registry = \"alpha\", optional = true }\n\n\
         [features]\ndefault = [\"with-base\"]\nwith-base = [\"dep:base\"]\n",
        "#[cfg(feature = \"with-base\")]\npub fn mid() -> u32 { base::base() + 1 }\n",
    );
    run(cargo(&env)
        .current_dir(&mid)
        .args(["publish", "--registry", "beta", "--allow-dirty"]));

    tracing::info!(
        "--- the index line: deps mapped, registry copied verbatim, cksum of the .crate"
    );
    let lines = index_lines(&server, "beta", "mi/d-/mid-layer");
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = &lines[0];
    assert_eq!(line["name"], "mid-layer");
    assert_eq!(line["vers"], "0.2.0+build.7");
    assert_eq!(line["yanked"], false);
    assert_eq!(line["rust_version"], "1.70");
    assert_eq!(line["v"], 2, "dep: features need index format 2");
    assert_eq!(
        line["features"],
        serde_json::json!({"default": ["with-base"], "with-base": ["dep:base"]})
    );
    let dep = &line["deps"][0];
    assert_eq!(dep["name"], "base", "the rename is the dep's name: {dep}");
    assert_eq!(dep["package"], "base_util", "{dep}");
    assert_eq!(dep["req"], "^0.1", "{dep}");
    assert_eq!(dep["optional"], true, "{dep}");
    assert_eq!(dep["kind"], "normal", "{dep}");
    assert_eq!(
        dep["registry"],
        index_url(&server, "alpha"),
        "the other registry's index URL, verbatim: {dep}"
    );
    let krate = download(&server, "beta", "mid-layer", "0.2.0+build.7");
    assert_eq!(line["cksum"], wharf_tests::sha256_hex(&krate));
    let base_line = index_lines(&server, "alpha", "ba/se/base_util")[0].clone();
    assert_eq!(base_line["deps"], serde_json::json!([]));
    assert!(base_line.get("registry").is_none());

    tracing::info!("--- config.json: absolute dl and api, no auth-required");
    let url = format!("{}/cargo/alpha/index/config.json", server.url());
    let config: Value = expect_status(http_client().get(&url).send().unwrap(), 200, &url)
        .json()
        .unwrap();
    assert_eq!(
        config,
        serde_json::json!({
            "dl": format!("{}/cargo/alpha/api/v1/crates", server.url()),
            "api": format!("{}/cargo/alpha", server.url()),
        })
    );

    tracing::info!("--- a fresh project depending on both builds and runs");
    let app = work.join("app");
    std::fs::create_dir_all(app.join("src")).unwrap();
    std::fs::write(
        app.join("Cargo.toml"),
        "[package]\nname = \"app\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n\
         [dependencies]\n\
         mid-layer = { version = \"0.2\", registry = \"beta\" }\n\
         base_util = { version = \"0.1\", registry = \"alpha\" }\n",
    )
    .unwrap();
    std::fs::write(
        app.join("src/main.rs"),
        "fn main() { println!(\"{} {}\", mid_layer::mid(), base_util::base()); }\n",
    )
    .unwrap();
    run(cargo(&env).current_dir(&app).arg("build"));
    let out = run(cargo(&env).current_dir(&app).args(["run", "-q"]));
    assert_eq!(out.trim(), "42 41");
    let lock = std::fs::read_to_string(app.join("Cargo.lock")).unwrap();
    assert!(
        lock.contains(&format!("registry+{}", index_url(&server, "beta")))
            || lock.contains(&index_url(&server, "beta")),
        "Cargo.lock names the beta index: {lock}"
    );

    tracing::info!(
        "--- cargo yank: only yanked changes in the line; the .crate stays downloadable"
    );
    let before = index_lines(&server, "alpha", "ba/se/base_util");
    run(cargo(&env)
        .current_dir(&base)
        .args(["yank", "--registry", "alpha", "base_util@0.1.0"]));
    let after = index_lines(&server, "alpha", "ba/se/base_util");
    let mut expected = before.clone();
    expected[0]["yanked"] = Value::Bool(true);
    assert_eq!(after, expected, "yank changes only `yanked`");
    let bytes = download(&server, "alpha", "base_util", "0.1.0");
    assert_eq!(before[0]["cksum"], wharf_tests::sha256_hex(&bytes));
    // The locked project still builds with the yanked version.
    run(cargo(&env).current_dir(&app).args(["build", "--locked"]));
    run(cargo(&env).current_dir(&base).args([
        "yank",
        "--undo",
        "--registry",
        "alpha",
        "base_util@0.1.0",
    ]));
    assert_eq!(index_lines(&server, "alpha", "ba/se/base_util"), before);

    tracing::info!("--- owners: list, add, remove; the last owner stays");
    let owner = |args: &[&str]| {
        run(cargo(&env)
            .current_dir(&base)
            .args(["owner", "--registry", "alpha"])
            .args(args))
    };
    owner(&["--add", "bob"]);
    let listed = owner(&["--list"]);
    assert!(
        listed.contains("bob") && listed.contains("anonymous"),
        "{listed}"
    );
    owner(&["--remove", "bob"]);
    let listed = owner(&["--list"]);
    assert!(!listed.contains("bob"), "{listed}");
    let last = run_status(
        cargo(&env).current_dir(&base).args([
            "owner",
            "--registry",
            "alpha",
            "--remove",
            "anonymous",
        ]),
        None,
    );
    assert!(!last.status.success(), "{}", last.describe());
    assert!(last.stderr.contains("last owner"), "{}", last.describe());

    tracing::info!("--- republishing 0.1.0 with other content is refused, the line unchanged");
    std::fs::write(base.join("src/lib.rs"), "pub fn base() -> u32 { 7 }\n").unwrap();
    let again = run_status(
        cargo(&env).current_dir(&base).args([
            "publish",
            "--registry",
            "alpha",
            "--allow-dirty",
            "--no-verify",
        ]),
        None,
    );
    assert!(!again.status.success(), "{}", again.describe());
    // cargo reads the index first and stops itself; the server's own 409 for other bytes is
    // checked over HTTP in `bad_publishes_are_refused_and_bind_nothing`.
    assert!(
        again.stderr.contains("already exists"),
        "{}",
        again.describe()
    );
    assert_eq!(index_lines(&server, "alpha", "ba/se/base_util"), before);
}

#[test]
fn index_documents_revalidate() {
    let (server, _env) = setup();
    let client = http_client();
    // Three versions: lines alike enough that gzip pays off.
    for version in ["0.1.0", "0.2.0", "0.3.0"] {
        let krate = crate_file("tiny", version, &[]);
        publish_raw(&server, "docs", "tiny", version, &krate, 200);
    }
    let url = format!("{}/cargo/docs/index/ti/ny/tiny", server.url());
    let resp = expect_status(client.get(&url).send().unwrap(), 200, &url);
    let headers = resp.headers().clone();
    assert_eq!(headers["cache-control"], "no-cache");
    assert_eq!(headers["vary"], "Accept, Accept-Encoding");
    let etag = headers["etag"].to_str().unwrap().to_string();
    let body = resp.bytes().unwrap();
    assert_eq!(
        etag,
        format!("\"{}\"", wharf_tests::sha256_hex(&body)),
        "strong ETag = hash of the body"
    );
    let resp = client
        .get(&url)
        .header("If-None-Match", &etag)
        .send()
        .unwrap();
    expect_status(resp, 304, "If-None-Match with the current tag");
    let resp = client
        .get(&url)
        .header("Accept-Encoding", "gzip")
        .send()
        .unwrap();
    let resp = expect_status(resp, 200, "gzip");
    assert_eq!(resp.headers()["content-encoding"], "gzip");
    let gz_etag = resp.headers()["etag"].to_str().unwrap().to_string();
    assert_ne!(gz_etag, etag, "each representation has its own strong tag");
    let gz = resp.bytes().unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&gz[..]), &mut text).unwrap();
    assert_eq!(text.as_bytes(), &body[..]);
    tracing::info!("--- a yank changes the document and its tag");
    let yank = format!("{}/cargo/docs/api/v1/crates/tiny/0.2.0/yank", server.url());
    expect_status(client.delete(&yank).send().unwrap(), 200, "yank");
    let resp = client
        .get(&url)
        .header("If-None-Match", &etag)
        .send()
        .unwrap();
    let resp = expect_status(resp, 200, "changed document");
    assert_ne!(resp.headers()["etag"].to_str().unwrap(), etag);
    assert!(resp.text().unwrap().contains("\"yanked\":true"));
}

/// A `.crate` for `name`/`version` with a matching Cargo.toml plus `files`.
fn crate_file(name: &str, version: &str, files: &[(&str, &[u8])]) -> Vec<u8> {
    let manifest = format!("[package]\nname = \"{name}\"\nversion = \"{version}\"\n");
    let path = format!("{name}-{version}/Cargo.toml");
    let mut all: Vec<(&str, &[u8])> = vec![(&path, manifest.as_bytes())];
    all.extend_from_slice(files);
    tar_gz(&all, &[])
}

/// A gzip'd tar of regular `files` and `symlinks` (path, target). Paths are written into the
/// header as they are, `..` included (what a hostile client could send).
fn tar_gz(files: &[(&str, &[u8])], symlinks: &[(&str, &str)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (path, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        header.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        header.set_cksum();
        builder.append(&header, *data).unwrap();
    }
    for (path, target) in symlinks {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        builder.append_link(&mut header, path, target).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

fn publish_body(json: &Value, krate: &[u8]) -> Vec<u8> {
    let json = json.to_string();
    let mut body = Vec::new();
    body.extend_from_slice(&(json.len() as u32).to_le_bytes());
    body.extend_from_slice(json.as_bytes());
    body.extend_from_slice(&(krate.len() as u32).to_le_bytes());
    body.extend_from_slice(krate);
    body
}

/// PUTs a publish of `krate` as `name`/`version` to `repo`; expects `status`; returns the body.
fn publish_raw(
    server: &Wharf,
    repo: &str,
    name: &str,
    version: &str,
    krate: &[u8],
    status: u16,
) -> Value {
    let json = serde_json::json!({
        "name": name, "vers": version, "deps": [], "features": {}, "authors": [],
        "description": "d", "license": "MIT", "links": null
    });
    put_publish(server, repo, publish_body(&json, krate), status)
}

fn put_publish(server: &Wharf, repo: &str, body: Vec<u8>, status: u16) -> Value {
    let url = format!("{}/cargo/{repo}/api/v1/crates/new", server.url());
    let resp = http_client()
        .put(&url)
        .header("Authorization", "any-token")
        .body(body)
        .send()
        .unwrap();
    let resp = expect_status(resp, status, &format!("PUT {url}"));
    resp.json().unwrap()
}

/// The error detail of a Cargo error body (`{"errors":[{"detail"}]}`).
fn detail(body: &Value) -> String {
    body["errors"][0]["detail"]
        .as_str()
        .unwrap_or_else(|| panic!("not a Cargo error body: {body}"))
        .to_string()
}

/// Files under the node's blob store.
fn blob_count(server: &Wharf) -> usize {
    fn walk(dir: &Path, in_blobs: bool) -> usize {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        entries
            .flatten()
            .map(|e| {
                let path = e.path();
                let blobs = in_blobs || e.file_name() == "blobs";
                if path.is_dir() {
                    walk(&path, blobs)
                } else {
                    usize::from(blobs)
                }
            })
            .sum()
    }
    walk(&server.data_dir(), false)
}

#[test]
fn bad_publishes_are_refused_and_bind_nothing() {
    let (server, env) = setup();
    let index = |name: &str| {
        let path = match name.len() {
            1 => format!("1/{name}"),
            2 => format!("2/{name}"),
            3 => format!("3/{}/{name}", &name[..1]),
            _ => format!("{}/{}/{name}", &name[..2], &name[2..4]),
        };
        format!("{}/cargo/bad/index/{path}", server.url())
    };
    // A good crate first, so the repository exists and holds one blob.
    let good = crate_file("good", "1.0.0", &[("good-1.0.0/src/lib.rs", b"")]);
    publish_raw(&server, "bad", "good", "1.0.0", &good, 200);
    let blobs = blob_count(&server);
    assert!(blobs >= 1, "the good crate is stored");

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "corrupt tarball",
            b"this is not gzip".to_vec(),
            "not a valid gzip'd tar",
        ),
        (
            "truncated tarball",
            good[..good.len() / 2].to_vec(),
            "not a valid gzip'd tar",
        ),
        (
            "Cargo.toml names another crate",
            tar_gz(
                &[(
                    "evil-1.0.0/Cargo.toml",
                    b"[package]\nname = \"other\"\nversion = \"1.0.0\"\n",
                )],
                &[],
            ),
            "names the package other",
        ),
        (
            "Cargo.toml has another version",
            tar_gz(
                &[(
                    "evil-1.0.0/Cargo.toml",
                    b"[package]\nname = \"evil\"\nversion = \"2.0.0\"\n",
                )],
                &[],
            ),
            "has version 2.0.0",
        ),
        (
            "path traversal",
            tar_gz(
                &[
                    (
                        "evil-1.0.0/Cargo.toml",
                        b"[package]\nname = \"evil\"\nversion = \"1.0.0\"\n",
                    ),
                    ("evil-1.0.0/../../etc/cron.d/x", b"boom"),
                ],
                &[],
            ),
            "`..` paths are refused",
        ),
        (
            "absolute path",
            tar_gz(
                &[
                    (
                        "evil-1.0.0/Cargo.toml",
                        b"[package]\nname = \"evil\"\nversion = \"1.0.0\"\n",
                    ),
                    ("/etc/passwd", b"root"),
                ],
                &[],
            ),
            "outside its directory",
        ),
        (
            "symlink",
            tar_gz(
                &[(
                    "evil-1.0.0/Cargo.toml",
                    b"[package]\nname = \"evil\"\nversion = \"1.0.0\"\n",
                )],
                &[("evil-1.0.0/passwd", "/etc/passwd")],
            ),
            "not a regular file",
        ),
    ];
    for (what, krate, expect) in cases {
        tracing::info!("--- {what} → 400");
        let body = publish_raw(&server, "bad", "evil", "1.0.0", &krate, 400);
        let message = detail(&body);
        assert!(message.contains(expect), "{what}: {message}");
    }

    tracing::info!("--- malformed bodies → 400");
    for (what, body) in [
        ("truncated body", vec![10, 0, 0, 0, b'{']),
        ("bad JSON", publish_body(&Value::String("x".into()), &good)),
        (
            "bad name",
            publish_body(&serde_json::json!({"name": "../x", "vers": "1.0.0"}), &good),
        ),
        (
            "bad version",
            publish_body(&serde_json::json!({"name": "evil", "vers": "1.0"}), &good),
        ),
    ] {
        let resp = put_publish(&server, "bad", body, 400);
        tracing::info!("{what}: {}", detail(&resp));
    }

    tracing::info!("--- a .crate inflating past http.max_crate_unpacked_bytes (512 MiB) → 413");
    let bomb = {
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        let mut header = tar::Header::new_gnu();
        let size = 513u64 << 20;
        header.set_size(size);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        builder
            .append_data(
                &mut header,
                "evil-1.0.0/zeros",
                std::io::Read::take(std::io::repeat(0), size),
            )
            .unwrap();
        builder.into_inner().unwrap().finish().unwrap()
    };
    assert!(bomb.len() < 8 << 20, "zeros compress well: {}", bomb.len());
    let body = publish_raw(&server, "bad", "evil", "1.0.0", &bomb, 413);
    assert!(detail(&body).contains("inflates"), "{body}");

    tracing::info!(
        "--- a publish body past http.max_cargo_publish_bytes (64 MiB) → 413, with curl"
    );
    let big = env.join("big-publish");
    let json = serde_json::json!({"name": "evil", "vers": "1.0.0"}).to_string();
    let mut body = Vec::new();
    body.extend_from_slice(&(json.len() as u32).to_le_bytes());
    body.extend_from_slice(json.as_bytes());
    let krate_len: u32 = 65 << 20;
    body.extend_from_slice(&krate_len.to_le_bytes());
    body.resize(body.len() + krate_len as usize, 7);
    std::fs::write(&big, &body).unwrap();
    drop(body);
    let out = run(env
        .curl()
        .args([
            "-sS",
            "-X",
            "PUT",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "--data-binary",
        ])
        .arg(format!("@{}", big.display()))
        .arg(format!("{}/cargo/bad/api/v1/crates/new", server.url())));
    let (text, code) = out.trim_end().rsplit_once('\n').unwrap();
    assert_eq!(code, "413", "{out}");
    let body: Value = serde_json::from_str(text).unwrap();
    assert!(detail(&body).contains("max_cargo_publish_bytes"), "{body}");

    tracing::info!("--- nothing of evil is bound or stored");
    let resp = http_client().get(index("evil")).send().unwrap();
    expect_status(resp, 404, "index of evil");
    let url = format!(
        "{}/cargo/bad/api/v1/crates/evil/1.0.0/download",
        server.url()
    );
    expect_status(
        http_client().get(&url).send().unwrap(),
        404,
        "download evil",
    );
    assert_eq!(blob_count(&server), blobs, "no blob was stored");

    tracing::info!("--- same bytes again: fine; other bytes for 1.0.0 or 1.0.0+b: 409");
    publish_raw(&server, "bad", "good", "1.0.0", &good, 200);
    let other = crate_file("good", "1.0.0", &[("good-1.0.0/src/lib.rs", b"// other\n")]);
    let body = publish_raw(&server, "bad", "good", "1.0.0", &other, 409);
    assert!(detail(&body).contains("1.0.0"), "{body}");
    let plus = crate_file("good", "1.0.0+b", &[]);
    publish_raw(&server, "bad", "good", "1.0.0+b", &plus, 409);

    tracing::info!("--- another spelling of a published name: 409");
    let spelled = crate_file("Good", "2.0.0", &[]);
    let body = publish_raw(&server, "bad", "Good", "2.0.0", &spelled, 409);
    assert!(detail(&body).contains("good"), "{body}");

    tracing::info!("--- yank of an unknown version: 404 in Cargo's shape");
    let url = format!("{}/cargo/bad/api/v1/crates/good/9.9.9/yank", server.url());
    let resp = expect_status(
        http_client().delete(&url).send().unwrap(),
        404,
        "yank 9.9.9",
    );
    let body: Value = resp.json().unwrap();
    detail(&body);
    let lines = index_lines(&server, "bad", "go/od/good");
    assert_eq!(lines.len(), 1, "{lines:?}");
}

/// A crate published through node 1 of a three-node cluster is built by cargo from node 3's
/// index and downloads right away (DESIGN.md §1.5): cargo's own wait for the new version runs
/// against node 1, the build against node 3 only.
#[test]
fn published_on_one_node_built_from_another() {
    use wharf_tests::cluster::{ClusterOpts, TestCluster};
    wharf_tests::init_logging();
    let cluster = TestCluster::start(3, ClusterOpts::default());
    cluster.wait_for_cluster_version();
    let (status, body) = cluster.post(
        0,
        "/api/v1/repos",
        serde_json::json!({"name": "shared", "format": "cargo", "immutable": true}),
    );
    assert_eq!(status, 201, "{body}");
    let (one, three) = (&cluster.members[0], &cluster.members[2]);
    let env = ClientEnv::new(&one.client);
    let home = env.join("cargo-home");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(
        home.join("config.toml"),
        format!(
            "[registries.one]\nindex = \"sparse+{}/cargo/shared/index/\"\n\n\
             [registries.three]\nindex = \"sparse+{}/cargo/shared/index/\"\n",
            one.url(),
            three.url()
        ),
    )
    .unwrap();
    run_with_stdin(
        cargo(&env).args(["login", "--registry", "one"]),
        b"any-token\n",
    );

    tracing::info!("--- cargo publish through node 1");
    let base = env.join("work/base_util");
    write_crate(
        &base,
        "[package]\nname = \"base_util\"\nversion = \"0.3.0\"\nedition = \"2021\"\n\
         description = \"base\"\nlicense = \"MIT\"\n",
        "pub fn base() -> u32 { 3 }\n",
    );
    run(cargo(&env)
        .current_dir(&base)
        .args(["publish", "--registry", "one", "--allow-dirty"]));

    tracing::info!("--- cargo build from node 3");
    let app = env.join("work/app");
    std::fs::create_dir_all(app.join("src")).unwrap();
    std::fs::write(
        app.join("Cargo.toml"),
        "[package]\nname = \"app\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n\
         [dependencies]\nbase_util = { version = \"0.3\", registry = \"three\" }\n",
    )
    .unwrap();
    std::fs::write(
        app.join("src/main.rs"),
        "fn main() { println!(\"{}\", base_util::base()); }\n",
    )
    .unwrap();
    let out = run(cargo(&env).current_dir(&app).args(["run", "-q"]));
    assert_eq!(out.trim(), "3");
    let lock = std::fs::read_to_string(app.join("Cargo.lock")).unwrap();
    assert!(lock.contains(&three.url()), "built from node 3: {lock}");
}
