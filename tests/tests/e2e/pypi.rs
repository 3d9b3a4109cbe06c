//! PyPI repositories driven by the real clients (docs/clients.md §2.3): `python -m build`
//! (offline, `--no-isolation`), `twine upload`, `uv publish`, `pip install` and `uv pip install`
//! from `/pypi/<repo>/simple/`, plus the simple API's headers, PEP 658 metadata, yanking through
//! `wharf pypi yank`, and bad uploads answered in the upload API's shape.
//!
//! The clients live in a venv that `scripts/install-test-tools` creates under
//! `<target>/ci-tools/pyvenv`; without it these tests fail, naming that script.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use wharf_tests::{ClientEnv, Wharf, expect_status, http_client, random_bytes, run, sha256_hex};

use crate::setup;

const REPO: &str = "py";
const JSON: &str = "application/vnd.pypi.simple.v1+json";
/// What pip sends (docs/clients.md §2.3).
const PIP_ACCEPT: &str = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01";
/// The wheel must cross default body limits (20 MiB and more).
const BIG_DATA: usize = 21 * 1024 * 1024;

/// `<target>/ci-tools/pyvenv/bin/<tool>`, or a failure naming the install script.
fn py_tool(tool: &str) -> PathBuf {
    let path = wharf_tests::server::target_dir().join(format!("ci-tools/pyvenv/bin/{tool}"));
    assert!(
        path.is_file(),
        "{tool} not found at {}.\nInstall the PyPI clients (twine, uv, build) with: \
         scripts/install-test-tools (a venv under ${{CARGO_TARGET_DIR:-target}}/ci-tools/pyvenv)",
        path.display()
    );
    path
}

fn py(env: &ClientEnv, tool: &str) -> Command {
    let mut cmd = env.command(py_tool(tool));
    cmd.env("PIP_NO_INPUT", "1")
        .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
        .env("TWINE_NON_INTERACTIVE", "1")
        .env("UV_NO_CACHE", "1")
        .env("UV_OFFLINE", "0")
        .env_remove("PIP_INDEX_URL")
        .env_remove("UV_INDEX_URL")
        .env_remove("PIP_CONFIG_FILE")
        .env("PIP_CONFIG_FILE", "/dev/null");
    cmd
}

/// Writes a setuptools project and builds its sdist and wheel offline; returns the dist dir.
fn build_project(
    env: &ClientEnv,
    name: &str,
    version: &str,
    deps: &[&str],
    data: &[u8],
) -> PathBuf {
    let module = name.replace('-', "_");
    let dir = env.join(&format!(
        "src-{name}-{version}-{}",
        wharf_tests::random_hex(3)
    ));
    std::fs::create_dir_all(dir.join(&module)).unwrap();
    let deps: Vec<String> = deps.iter().map(|d| format!("\"{d}\"")).collect();
    std::fs::write(
        dir.join("pyproject.toml"),
        format!(
            "[build-system]\nrequires = [\"setuptools>=61\"]\nbuild-backend = \"setuptools.build_meta\"\n\n\
             [project]\nname = \"{name}\"\nversion = \"{version}\"\ndescription = \"Wharf test package\"\n\
             requires-python = \">=3.8\"\ndependencies = [{}]\n\n\
             [tool.setuptools]\npackages = [\"{module}\"]\n\n\
             [tool.setuptools.package-data]\n{module} = [\"*.bin\"]\n",
            deps.join(", ")
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join(&module).join("__init__.py"),
        format!("VERSION = \"{version}\"\n"),
    )
    .unwrap();
    std::fs::write(dir.join(&module).join("data.bin"), data).unwrap();
    let out = dir.join("dist");
    run(py(env, "python")
        .args(["-m", "build", "--no-isolation", "--outdir"])
        .arg(&out)
        .arg(&dir));
    out
}

fn dist_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(
        files.len(),
        2,
        "expected an sdist and a wheel in {}: {files:?}",
        dir.display()
    );
    files
}

fn file_named(files: &[PathBuf], suffix: &str) -> PathBuf {
    files
        .iter()
        .find(|f| f.to_string_lossy().ends_with(suffix))
        .unwrap_or_else(|| panic!("no *{suffix} in {files:?}"))
        .clone()
}

fn upload_url(server: &Wharf) -> String {
    format!("{}/pypi/{REPO}/", server.url())
}

fn index_url(server: &Wharf) -> String {
    format!("http://user:secret@{}/pypi/{REPO}/simple/", server.addr())
}

fn twine_upload(env: &ClientEnv, server: &Wharf, files: &[PathBuf]) -> Command {
    let mut cmd = py(env, "twine");
    cmd.args([
        "upload",
        "--non-interactive",
        "--disable-progress-bar",
        "--repository-url",
    ])
    .arg(upload_url(server))
    .args(["-u", "user", "-p", "secret"])
    .args(files);
    cmd
}

fn project_json(server: &Wharf, project: &str) -> serde_json::Value {
    let url = format!("{}/pypi/{REPO}/simple/{project}/", server.url());
    let resp = expect_status(
        http_client()
            .get(&url)
            .header("Accept", PIP_ACCEPT)
            .send()
            .unwrap(),
        200,
        &format!("GET {url}"),
    );
    assert_eq!(
        resp.headers()["content-type"],
        JSON,
        "Content-Type of {url}"
    );
    resp.json().unwrap()
}

#[test]
fn twine_and_uv_publish_then_pip_and_uv_install() {
    let (server, env) = setup();
    let big_data = random_bytes(BIG_DATA);

    tracing::info!("--- build wharf-big 1.0.0 (a wheel over 20 MiB) and wharf-small 0.1.0 offline");
    let big = dist_files(&build_project(&env, "wharf-big", "1.0.0", &[], &big_data));
    let big_wheel = file_named(&big, ".whl");
    assert!(
        std::fs::metadata(&big_wheel).unwrap().len() >= 20 * 1024 * 1024,
        "the wheel must be at least 20 MiB"
    );
    let small = dist_files(&build_project(
        &env,
        "wharf-small",
        "0.1.0",
        &["wharf-big>=1.0"],
        b"small",
    ));

    tracing::info!("--- twine upload wharf-big (sdist + wheel)");
    run(&mut twine_upload(&env, &server, &big));

    tracing::info!("--- uv publish wharf-small (sdist + wheel)");
    run(py(&env, "uv")
        .args(["publish", "--publish-url"])
        .arg(upload_url(&server))
        .args(["-u", "user", "-p", "secret"])
        .args(&small));

    tracing::info!("--- the JSON page: api 1.1, sha256, size, requires-python, PEP 658 metadata");
    let page = project_json(&server, "Wharf_Big");
    assert_eq!(page["meta"]["api-version"], "1.1");
    assert_eq!(page["name"], "wharf-big");
    assert_eq!(page["versions"], serde_json::json!(["1.0.0"]));
    let files = page["files"].as_array().unwrap();
    assert_eq!(files.len(), 2, "{page}");
    let wheel = files
        .iter()
        .find(|f| f["filename"].as_str().unwrap().ends_with(".whl"))
        .unwrap();
    let wheel_bytes = std::fs::read(&big_wheel).unwrap();
    assert_eq!(wheel["hashes"]["sha256"], sha256_hex(&wheel_bytes));
    assert_eq!(wheel["size"], wheel_bytes.len());
    assert_eq!(wheel["requires-python"], ">=3.8");
    assert_eq!(wheel["yanked"], false);
    let metadata_sha = wheel["core-metadata"]["sha256"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(wheel["dist-info-metadata"]["sha256"], metadata_sha.as_str());

    let page_url = format!("{}/pypi/{REPO}/simple/wharf-big/", server.url());
    let wheel_url = reqwest::Url::parse(&page_url)
        .unwrap()
        .join(wheel["url"].as_str().unwrap())
        .unwrap();
    let client = http_client();
    let metadata = expect_status(
        client.get(format!("{wheel_url}.metadata")).send().unwrap(),
        200,
        "GET <wheel>.metadata",
    )
    .bytes()
    .unwrap();
    assert_eq!(sha256_hex(&metadata), metadata_sha, "PEP 658 metadata hash");
    assert!(String::from_utf8_lossy(&metadata).contains("Name: wharf-big"));

    tracing::info!("--- the file: HEAD, Accept-Ranges, 206");
    let head = expect_status(
        client.head(wheel_url.clone()).send().unwrap(),
        200,
        "HEAD wheel",
    );
    assert_eq!(head.headers()["accept-ranges"], "bytes");
    assert_eq!(
        head.headers()["content-length"],
        wheel_bytes.len().to_string().as_str()
    );
    let part = expect_status(
        client
            .get(wheel_url.clone())
            .header("Range", "bytes=100-1123")
            .send()
            .unwrap(),
        206,
        "GET wheel Range",
    );
    assert!(part.headers().get("content-encoding").is_none());
    assert_eq!(part.bytes().unwrap().as_ref(), &wheel_bytes[100..1124]);

    tracing::info!("--- the HTML page, ETag, 304, gzip, Vary");
    let html = expect_status(
        client
            .get(&page_url)
            .header("Accept", "text/html")
            .send()
            .unwrap(),
        200,
        "GET html page",
    );
    assert_eq!(html.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(html.headers()["vary"], "Accept, Accept-Encoding");
    assert_eq!(html.headers()["cache-control"], "no-cache");
    let etag = html.headers()["etag"].to_str().unwrap().to_string();
    let body = html.text().unwrap();
    assert!(body.contains("data-requires-python=\"&gt;=3.8\""), "{body}");
    assert!(
        body.contains(&format!("data-core-metadata=\"sha256={metadata_sha}\"")),
        "{body}"
    );
    expect_status(
        client
            .get(&page_url)
            .header("Accept", "text/html")
            .header("If-None-Match", &etag)
            .send()
            .unwrap(),
        304,
        "GET html page If-None-Match",
    );
    let gz = expect_status(
        client
            .get(&page_url)
            .header("Accept", PIP_ACCEPT)
            .header("Accept-Encoding", "gzip")
            .send()
            .unwrap(),
        200,
        "GET page gzip",
    );
    assert_eq!(gz.headers()["content-encoding"], "gzip");
    let list = expect_status(
        client
            .get(format!("{}/pypi/{REPO}/simple/", server.url()))
            .header("Accept", JSON)
            .send()
            .unwrap(),
        200,
        "GET project list",
    );
    let list: serde_json::Value = list.json().unwrap();
    assert_eq!(list["projects"].as_array().unwrap().len(), 2, "{list}");

    tracing::info!("--- pip install wharf-small (pulls wharf-big) from the simple index");
    let log_before = server.log().matches("core metadata served").count();
    let pip_target = env.join("pip-target");
    run(py(&env, "pip")
        .args(["install", "--no-cache-dir", "--index-url"])
        .arg(index_url(&server))
        .arg("--target")
        .arg(&pip_target)
        .arg("wharf-small"));
    assert_eq!(
        std::fs::read(pip_target.join("wharf_big/data.bin")).unwrap(),
        big_data,
        "pip installed other bytes"
    );
    assert!(pip_target.join("wharf_small/__init__.py").is_file());
    let log_after = server.log().matches("core metadata served").count();
    assert!(
        log_after > log_before,
        "pip did not fetch any PEP 658 metadata file"
    );

    tracing::info!("--- uv pip install wharf-small from the simple index");
    let uv_target = env.join("uv-target");
    run(py(&env, "uv")
        .args(["pip", "install", "--no-cache", "--python"])
        .arg(py_tool("python"))
        .arg("--index-url")
        .arg(index_url(&server))
        .arg("--target")
        .arg(&uv_target)
        .arg("wharf-small"));
    assert_eq!(
        std::fs::read(uv_target.join("wharf_big/data.bin")).unwrap(),
        big_data,
        "uv installed other bytes"
    );
    assert!(
        server.log().matches("core metadata served").count() > log_after,
        "uv did not fetch any PEP 658 metadata file"
    );

    tracing::info!("--- identical re-upload → success; other bytes under the same filename → 409");
    run(&mut twine_upload(&env, &server, &big));
    let rebuilt = dist_files(&build_project(
        &env,
        "wharf-small",
        "0.1.0",
        &["wharf-big>=1.0"],
        b"other bytes",
    ));
    let out = wharf_tests::run_status(
        &mut twine_upload(&env, &server, &[file_named(&rebuilt, ".whl")]),
        None,
    );
    assert!(
        !out.status.success(),
        "a changed re-upload was accepted\n{}",
        out.describe()
    );
    let printed = format!("{}{}", out.stdout, out.stderr);
    assert!(printed.contains("409"), "{}", out.describe());
    assert!(
        printed.contains("File already exists ('wharf_small-0.1.0-py3-none-any.whl')"),
        "{}",
        out.describe()
    );

    tracing::info!("--- wharf pypi yank: the release is marked, its files stay downloadable");
    let mut yank = server.cli();
    yank.args([
        "pypi",
        "yank",
        REPO,
        "Wharf.Small",
        "0.1.0",
        "--reason",
        "broken build",
    ]);
    run(&mut yank);
    let page = project_json(&server, "wharf-small");
    for file in page["files"].as_array().unwrap() {
        assert_eq!(file["yanked"], "broken build", "{page}");
    }
    let small_wheel = page["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["filename"].as_str().unwrap().ends_with(".whl"))
        .unwrap()["url"]
        .as_str()
        .unwrap()
        .to_string();
    let url = reqwest::Url::parse(&format!("{}/pypi/{REPO}/simple/wharf-small/", server.url()))
        .unwrap()
        .join(&small_wheel)
        .unwrap();
    expect_status(client.get(url).send().unwrap(), 200, "GET yanked wheel");
    let html = client
        .get(format!("{}/pypi/{REPO}/simple/wharf-small/", server.url()))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(html.contains("data-yanked=\"broken build\""), "{html}");
    let mut unyank = server.cli();
    unyank.args(["pypi", "unyank", REPO, "wharf-small", "0.1.0"]);
    run(&mut unyank);
    let page = project_json(&server, "wharf-small");
    assert_eq!(page["files"][0]["yanked"], false, "{page}");
}

/// (what, form fields, filename, content, expected status, text the body must contain)
type BadCase = (
    &'static str,
    Vec<(&'static str, String)>,
    &'static str,
    Vec<u8>,
    u16,
    &'static str,
);

/// A minimal wheel for `name` `version` whose METADATA says `meta_name`.
fn wheel_bytes(name: &str, version: &str, meta_name: &str) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    let module = name.replace('-', "_");
    zip.start_file(format!("{module}/__init__.py"), options)
        .unwrap();
    zip.write_all(b"x = 1\n").unwrap();
    zip.start_file(format!("{module}-{version}.dist-info/METADATA"), options)
        .unwrap();
    zip.write_all(
        format!("Metadata-Version: 2.1\nName: {meta_name}\nVersion: {version}\n").as_bytes(),
    )
    .unwrap();
    zip.finish().unwrap().into_inner()
}

/// A twine-shaped multipart body.
fn multipart(fields: &[(&str, &str)], filename: &str, content: &[u8]) -> (String, Vec<u8>) {
    let boundary = format!("wharf{}", wharf_tests::random_hex(8));
    let mut body = Vec::new();
    for (k, v) in fields {
        write!(
            body,
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n"
        )
        .unwrap();
    }
    write!(
        body,
        "--{boundary}\r\nContent-Disposition: form-data; name=\"content\"; filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    )
    .unwrap();
    body.extend_from_slice(content);
    write!(body, "\r\n--{boundary}--\r\n").unwrap();
    (format!("multipart/form-data; boundary={boundary}"), body)
}

fn post_upload(
    server: &Wharf,
    fields: &[(&str, &str)],
    filename: &str,
    content: &[u8],
) -> reqwest::blocking::Response {
    let (content_type, body) = multipart(fields, filename, content);
    http_client()
        .post(format!("{}/pypi/{REPO}", server.url()))
        .basic_auth("user", Some("secret"))
        .header("Content-Type", content_type)
        .body(body)
        .send()
        .unwrap()
}

#[test]
fn bad_uploads_get_clear_errors_and_bind_nothing() {
    let (server, _env) = setup();
    let client = http_client();
    let fields = |sha: &str| {
        vec![
            (":action", "file_upload".to_string()),
            ("protocol_version", "1".to_string()),
            ("name", "tiny".to_string()),
            ("version", "1.0".to_string()),
            ("filetype", "bdist_wheel".to_string()),
            ("sha256_digest", sha.to_string()),
        ]
    };
    let as_refs = |f: &[(&'static str, String)]| -> Vec<(&'static str, String)> { f.to_vec() };
    let good = wheel_bytes("tiny", "1.0", "tiny");
    let filename = "tiny-1.0-py3-none-any.whl";

    tracing::info!("--- a first upload of another project creates the repository");
    // Right after a start the cluster may still be below version 5 (package commands): retry.
    let warmup = wheel_bytes("warmup", "1.0", "warmup");
    let started = std::time::Instant::now();
    loop {
        let resp = post_upload(
            &server,
            &[
                (":action", "file_upload"),
                ("name", "warmup"),
                ("version", "1.0"),
            ],
            "warmup-1.0-py3-none-any.whl",
            &warmup,
        );
        let unsupported = resp
            .headers()
            .get("x-wharf-error-code")
            .is_some_and(|c| c == "UNSUPPORTED");
        if !unsupported || started.elapsed() > std::time::Duration::from_secs(30) {
            expect_status(resp, 200, "first upload");
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let cases: Vec<BadCase> = vec![
        (
            "corrupt wheel",
            as_refs(&fields(&sha256_hex(b"garbage"))),
            filename,
            b"garbage".to_vec(),
            400,
            "Invalid distribution file",
        ),
        (
            "truncated wheel",
            as_refs(&fields(&sha256_hex(&good[..good.len() - 30]))),
            filename,
            good[..good.len() - 30].to_vec(),
            400,
            "Invalid distribution file",
        ),
        (
            "sha256 mismatch",
            as_refs(&fields(&sha256_hex(b"other"))),
            filename,
            good.clone(),
            400,
            "not to the expected",
        ),
        (
            "blake2 mismatch",
            {
                let mut f = fields(&sha256_hex(&good));
                f.push(("blake2_256_digest", "00".repeat(32)));
                f
            },
            filename,
            good.clone(),
            400,
            "blake2_256_digest does not match",
        ),
        (
            "name in METADATA differs",
            as_refs(&fields(&sha256_hex(&wheel_bytes("tiny", "1.0", "other")))),
            filename,
            wheel_bytes("tiny", "1.0", "other"),
            400,
            "does not match the name field",
        ),
        (
            "version in filename differs from the form",
            as_refs(&fields(&sha256_hex(&wheel_bytes("tiny", "2.0", "tiny")))),
            "tiny-2.0-py3-none-any.whl",
            wheel_bytes("tiny", "2.0", "tiny"),
            400,
            "does not match the version field",
        ),
        (
            "a filename not in its normal form (another spelling of the same file)",
            as_refs(&fields(&sha256_hex(&good))),
            "Tiny-1.0-py3-none-any.whl",
            good.clone(),
            400,
            "is not normalized",
        ),
        (
            "a wheel tag outside the normal form",
            as_refs(&fields(&sha256_hex(&good))),
            "tiny-1.0-py3-none-any%23x.whl",
            good.clone(),
            400,
            "invalid filename",
        ),
        (
            "path traversal in the filename",
            as_refs(&fields(&sha256_hex(&good))),
            "../tiny-1.0-py3-none-any.whl",
            good.clone(),
            400,
            "invalid filename",
        ),
    ];
    for (what, fields, filename, content, status, text) in cases {
        tracing::info!("--- {what} → {status}");
        let refs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let resp = post_upload(&server, &refs, filename, &content);
        let resp = expect_status(resp, status, what);
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain"),
            "{what}: content type"
        );
        let body = resp.text().unwrap();
        assert!(body.contains(text), "{what}: body {body:?} lacks {text:?}");
        let page = client
            .get(format!("{}/pypi/{REPO}/simple/tiny/", server.url()))
            .send()
            .unwrap();
        assert_eq!(page.status().as_u16(), 404, "{what}: something was bound");
    }

    tracing::info!("--- a good upload binds; the same again is 200; other bytes are 409");
    let sha = sha256_hex(&good);
    let f = fields(&sha);
    let refs: Vec<(&str, &str)> = f.iter().map(|(k, v)| (*k, v.as_str())).collect();
    expect_status(post_upload(&server, &refs, filename, &good), 200, "upload");
    expect_status(
        post_upload(&server, &refs, filename, &good),
        200,
        "same upload again",
    );
    let changed = changed_wheel();
    assert_ne!(changed, good);
    let f = fields(&sha256_hex(&changed));
    let refs: Vec<(&str, &str)> = f.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let conflict = expect_status(
        post_upload(&server, &refs, filename, &changed),
        409,
        "other bytes under the same filename",
    );
    let body = conflict.text().unwrap();
    assert!(
        body.contains(&format!("File already exists ('{filename}')")),
        "{body}"
    );

    tracing::info!("--- an upload over the limit → 413 with the message as reason phrase");
    let (status_line, body) = raw_oversized_post(&server);
    assert!(
        status_line.starts_with("HTTP/1.1 413 File too large"),
        "{status_line}"
    );
    assert!(body.contains("File too large"), "{body}");
}

/// Another valid wheel under the same name and version (other code, stored, not deflated).
fn changed_wheel() -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default();
    zip.start_file("tiny/__init__.py", options).unwrap();
    zip.write_all(b"x = 2\n").unwrap();
    zip.start_file("tiny-1.0.dist-info/METADATA", options)
        .unwrap();
    zip.write_all(b"Metadata-Version: 2.1\nName: tiny\nVersion: 1.0\n")
        .unwrap();
    zip.finish().unwrap().into_inner()
}

/// Sends headers announcing a body over the upload limit, and reads the answer.
fn raw_oversized_post(server: &Wharf) -> (String, String) {
    let mut stream = std::net::TcpStream::connect(server.addr()).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let request = format!(
        "POST /pypi/{REPO}/ HTTP/1.1\r\nHost: {}\r\nContent-Type: multipart/form-data; boundary=x\r\n\
         Content-Length: {}\r\n\r\n--x\r\n",
        server.addr(),
        4u64 * 1024 * 1024 * 1024
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
        if answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.ends_with(b"\n") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.lines().next().unwrap_or_default().to_string();
    (status, body.to_string())
}

/// A release uploaded with twine through node 1 of a three-node cluster is on the simple page of
/// every other node at once (DESIGN.md §1.5: a miss runs the read barrier), a file added later
/// to that release downloads from node 3 at once (a known version with a missing file runs the
/// barrier too), and pip installs the release from node 3.
#[test]
fn uploaded_on_one_node_installed_from_another() {
    use wharf_tests::cluster::{ClusterOpts, TestCluster};
    let cluster = TestCluster::start(3, ClusterOpts::default());
    let env = ClientEnv::new(&cluster.members[0].client);
    let dist = build_project(&env, "spread-py", "1.0.0", &[], b"everywhere");
    let files = dist_files(&dist);
    let twine = |file: &Path| {
        let mut twine = py(&env, "twine");
        twine
            .args([
                "upload",
                "--non-interactive",
                "--disable-progress-bar",
                "--repository-url",
            ])
            .arg(format!("http://{}/pypi/{REPO}/", cluster.members[0].client))
            .args(["-u", "user", "-p", "secret"])
            .arg(file);
        run(&mut twine);
    };
    let wheel = file_named(&files, ".whl");
    let sdist = file_named(&files, ".tar.gz");
    twine(&wheel);
    // Node 3 learns the release with its wheel only; then the sdist joins it through node 1.
    let page = format!(
        "http://{}/pypi/{REPO}/simple/spread-py/",
        cluster.members[2].client
    );
    expect_status(http_client().get(&page).send().unwrap(), 200, &page);
    twine(&sdist);
    let sdist_name = sdist.file_name().unwrap().to_str().unwrap();
    let sdist_url = format!(
        "http://{}/pypi/{REPO}/files/spread-py/1.0.0/{sdist_name}",
        cluster.members[2].client
    );
    let got = expect_status(
        http_client().get(&sdist_url).send().unwrap(),
        200,
        &format!("GET {sdist_url} right after the upload through node 1"),
    );
    assert_eq!(
        got.bytes().unwrap().as_ref(),
        std::fs::read(&sdist).unwrap()
    );
    for member in &cluster.members[1..] {
        let url = format!("http://{}/pypi/{REPO}/simple/spread-py/", member.client);
        let resp = expect_status(
            http_client()
                .get(&url)
                .header("Accept", PIP_ACCEPT)
                .send()
                .unwrap(),
            200,
            &format!("GET {url} right after the upload through node 1"),
        );
        let page: serde_json::Value = resp.json().unwrap();
        let names: Vec<&str> = page["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["filename"].as_str().unwrap())
            .collect();
        assert_eq!(
            names.len(),
            2,
            "sdist and wheel on {}: {page}",
            member.client
        );
        assert_eq!(page["versions"], serde_json::json!(["1.0.0"]));
    }
    let target = env.join("installed");
    let third = format!(
        "http://user:secret@{}/pypi/{REPO}/simple/",
        cluster.members[2].client
    );
    run(py(&env, "pip")
        .args([
            "install",
            "--no-cache-dir",
            "--index-url",
            &third,
            "--target",
        ])
        .arg(&target)
        .arg("spread-py==1.0.0"));
    assert_eq!(
        std::fs::read(target.join("spread_py/data.bin")).unwrap(),
        b"everywhere"
    );
}
