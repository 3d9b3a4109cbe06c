//! `wharf-bench` keeps working against Wharf: every scenario runs briefly, validates every
//! response and reports in its JSON contract (what `bench/compare` reads).

use std::process::Command;

use wharf_tests::server::built_binary;

use crate::setup;

#[test]
fn every_bench_scenario_runs_against_wharf() {
    let (server, _env) = setup();
    let bench = built_binary(
        "WHARF_BENCH_BIN",
        "wharf-bench",
        "cargo build --release -p wharf-bench",
    );
    let few = ["--versions", "5"];
    let runs: &[(&str, &str, &str, &str, &[&str])] = &[
        ("blob-push", "1MiB", "2", "6", &[]),
        ("blob-pull", "1MiB", "2", "6", &[]),
        ("blob-head", "1KiB", "8", "200", &[]),
        ("manifest-get", "1KiB", "8", "200", &[]),
        ("manifest-head", "1KiB", "8", "200", &[]),
        ("tag-commit", "1KiB", "4", "40", &[]),
        ("npm-packument", "1KiB", "8", "200", &few),
        ("pypi-simple", "1KiB", "8", "200", &few),
    ];
    for (scenario, size, clients, ops, extra) in runs {
        eprintln!("--- wharf-bench {scenario}");
        let out = Command::new(&bench)
            .args([
                "--target",
                &server.url(),
                "--scenario",
                scenario,
                "--size",
                size,
            ])
            .args([
                "--clients",
                clients,
                "--ops",
                ops,
                "--warmup",
                "1",
                "--json",
            ])
            .args(["--server-pid", &server.pid().to_string()])
            .args(*extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{scenario}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["scenario"], *scenario);
        assert_eq!(report["errors"], 0);
        assert_eq!(
            report["ops"].as_u64(),
            Some(ops.parse().unwrap()),
            "{report}"
        );
        assert!(report["ops_per_sec"].as_f64().unwrap() > 0.0, "{report}");
        assert!(report["peak_rss_bytes"].as_u64().unwrap() > 0, "{report}");
    }
}

/// `cross-node-pull` on a three-node cluster: blobs pushed to node 1 of an `on-demand`
/// repository are read from node 3, which must stream each one from a peer — its replication
/// metrics show at least the bytes the bench read.
#[test]
fn cross_node_pull_reads_through_another_node() {
    use wharf_tests::cluster::{ClusterOpts, TestCluster};
    wharf_tests::init_logging();
    let cluster = TestCluster::start(3, ClusterOpts::default());
    let (status, body) = cluster.post(
        0,
        "/api/v1/repos",
        serde_json::json!({"name": "bench", "format": "oci", "immutable": false,
            "replication": "on-demand"}),
    );
    assert_eq!(status, 201, "{body}");
    let bench = built_binary(
        "WHARF_BENCH_BIN",
        "wharf-bench",
        "cargo build --release -p wharf-bench",
    );
    let bytes_in = |i: usize| -> u64 {
        let text = reqwest::blocking::get(format!("{}/metrics", cluster.members[i].url()))
            .unwrap()
            .text()
            .unwrap();
        text.lines()
            .filter(|l| l.starts_with("wharf_replication_bytes_in_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    let before = bytes_in(2);
    let out = Command::new(&bench)
        .args(["--target", &cluster.members[0].url()])
        .args(["--pull-from", &cluster.members[2].url()])
        .args(["--scenario", "cross-node-pull", "--size", "5MiB"])
        .args(["--clients", "1", "--ops", "3", "--warmup", "1", "--json"])
        .args(["--name", "bench/img"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["scenario"], "cross-node-pull");
    assert_eq!(report["errors"], 0);
    assert_eq!(report["ops"].as_u64(), Some(3), "{report}");
    let streamed = bytes_in(2) - before;
    assert!(
        streamed >= 4 * 5 * 1024 * 1024,
        "node 3 received {streamed} bytes from peers for 4 reads of 5 MiB"
    );
}
