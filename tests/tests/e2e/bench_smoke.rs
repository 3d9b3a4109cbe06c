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
    let runs: &[(&str, &str, &str, &str)] = &[
        ("blob-push", "1MiB", "2", "6"),
        ("blob-pull", "1MiB", "2", "6"),
        ("blob-head", "1KiB", "8", "200"),
        ("manifest-get", "1KiB", "8", "200"),
        ("manifest-head", "1KiB", "8", "200"),
        ("tag-commit", "1KiB", "4", "40"),
    ];
    for (scenario, size, clients, ops) in runs {
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
