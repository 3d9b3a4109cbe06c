//! helm 3 and helm 4 (oras-go): push a packaged chart to `oci://…/charts`, pull it back byte for byte.
//! helm's manifest has no top-level `mediaType`; its upload is POST + one monolithic PUT.

use serde_json::Value;
use wharf_tests::oci::MANIFEST_V1;
use wharf_tests::{ClientEnv, Wharf, http_client, run};

use crate::setup;

const CHART_LAYER: &str = "application/vnd.cncf.helm.chart.content.v1.tar+gzip";
const CHART_CONFIG: &str = "application/vnd.cncf.helm.config.v1+json";

#[test]
fn helm3_push_pull() {
    push_pull(3);
}

#[test]
fn helm4_push_pull() {
    push_pull(4);
}

/// Writes a minimal chart by hand (random description, so digests are unique) and packages it.
/// Returns the path of the `.tgz`.
fn package_chart(env: &ClientEnv, major: u32, name: &str, description: &str) -> std::path::PathBuf {
    let dir = env.join(name);
    std::fs::create_dir_all(dir.join("templates")).unwrap();
    std::fs::write(
        dir.join("Chart.yaml"),
        format!(
            "apiVersion: v2\nname: {name}\ndescription: {description}\ntype: application\n\
             version: 0.1.0\nappVersion: \"1.0\"\n"
        ),
    )
    .unwrap();
    std::fs::write(dir.join("values.yaml"), format!("message: {description}\n")).unwrap();
    std::fs::write(
        dir.join("templates/configmap.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-cm\n\
         data:\n  message: {{ .Values.message | quote }}\n",
    )
    .unwrap();
    run(env
        .helm(major)
        .arg("package")
        .arg(&dir)
        .arg("--destination")
        .arg(env.join("packaged")));
    let tgz = env.join(&format!("packaged/{name}-0.1.0.tgz"));
    assert!(
        tgz.is_file(),
        "helm package did not write {}",
        tgz.display()
    );
    tgz
}

fn push_pull(major: u32) {
    let (server, env) = setup();
    let name = format!("tiny-helm{major}");
    let description = format!("Wharf test chart {}", wharf_tests::random_hex(8));
    let version = run(env
        .helm(major)
        .args(["version", "--template", "{{.Version}}"]));
    tracing::info!("helm {}", version.trim());

    tracing::info!("--- helm package");
    let tgz = package_chart(&env, major, &name, &description);
    let tgz_bytes = std::fs::read(&tgz).unwrap();

    tracing::info!("--- helm push");
    let repo = format!("oci://{}/charts", server.addr());
    let pushed = run_all(
        env.helm(major)
            .arg("push")
            .arg(&tgz)
            .arg(&repo)
            .arg("--plain-http"),
    );
    let digest = pushed
        .split_whitespace()
        .find(|w| w.starts_with("sha256:"))
        .unwrap_or_else(|| panic!("no digest in helm push output:\n{pushed}"))
        .to_string();

    tracing::info!("--- the registry holds a helm chart manifest under the version tag");
    check_manifest(&server, &name, &digest, &tgz_bytes);

    tracing::info!("--- helm show chart");
    let shown = run(env
        .helm(major)
        .args(["show", "chart"])
        .arg(format!("{repo}/{name}"))
        .args(["--version", "0.1.0", "--plain-http"]));
    assert!(shown.contains(&description), "helm show chart:\n{shown}");

    tracing::info!("--- helm pull gives the same bytes");
    let dest = env.join("pulled");
    std::fs::create_dir_all(&dest).unwrap();
    run(env
        .helm(major)
        .arg("pull")
        .arg(format!("{repo}/{name}"))
        .args(["--version", "0.1.0", "--plain-http", "--destination"])
        .arg(&dest));
    let pulled = std::fs::read(dest.join(format!("{name}-0.1.0.tgz"))).unwrap();
    assert!(
        pulled == tgz_bytes,
        "pulled chart differs from the pushed .tgz"
    );
}

/// Runs and returns stdout + stderr (helm prints the push result on stderr in some versions).
fn run_all(cmd: &mut std::process::Command) -> String {
    let r = wharf_tests::run_status(cmd, None);
    assert!(
        r.status.success(),
        "command failed: {}\n{}",
        wharf_tests::cmd::command_line(cmd),
        r.describe()
    );
    format!("{}\n{}", r.stdout, r.stderr)
}

fn check_manifest(server: &Wharf, name: &str, digest: &str, tgz: &[u8]) {
    let resp = http_client()
        .get(format!("{}/v2/charts/{name}/manifests/0.1.0", server.url()))
        .header("Accept", MANIFEST_V1)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200, "GET chart manifest by tag");
    assert_eq!(
        resp.headers()["Docker-Content-Digest"].to_str().unwrap(),
        digest,
        "Docker-Content-Digest vs helm push output"
    );
    let manifest: Value = resp.json().unwrap();
    assert_eq!(manifest["config"]["mediaType"], CHART_CONFIG, "{manifest}");
    assert_eq!(
        manifest["layers"][0]["mediaType"], CHART_LAYER,
        "{manifest}"
    );
    assert_eq!(
        manifest["layers"][0]["digest"],
        wharf_tests::sha256_digest(tgz).as_str(),
        "chart layer digest = sha256 of the .tgz: {manifest}"
    );
}
