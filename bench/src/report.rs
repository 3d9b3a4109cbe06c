//! The result: a one-row table for people, or exactly one JSON object for `bench/compare`.

use serde::Serialize;

use crate::cli::format_size;

/// Latency percentiles in microseconds.
#[derive(Debug, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Slowest op.
    pub max: u64,
    /// Mean.
    pub mean: f64,
}

/// The `--json` object; field names and meanings are a contract with `bench/compare`.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Scenario name as on the command line.
    pub scenario: String,
    /// `--target` as given (`loopback` for the loopback scenario).
    pub target: String,
    /// Bytes per op: the blob size, or the manifest length for manifest scenarios.
    pub size: u64,
    /// Concurrent clients.
    pub clients: u64,
    /// Measured ops.
    pub ops: u64,
    /// Always 0: any error aborts the run with exit code 2 and no report.
    pub errors: u64,
    /// Wall time of the measured section.
    pub seconds: f64,
    /// Measured ops per second.
    pub ops_per_sec: f64,
    /// Blob bytes moved per second (0 for scenarios that move no blobs).
    pub bytes_per_sec: f64,
    /// Per-op latency.
    pub latency_us: Latency,
    /// Highest server VmRSS seen (with `--server-pid`).
    pub peak_rss_bytes: Option<u64>,
    /// Server utime + stime during the measured section (with `--server-pid`).
    pub server_cpu_seconds: Option<f64>,
    /// Server CPU seconds per 10^9 blob bytes moved (with `--server-pid`, blob scenarios).
    pub cpu_seconds_per_gb: Option<f64>,
}

impl Report {
    /// The human table: a header line and one row.
    pub fn table(&self) -> String {
        let ms = |us: u64| us as f64 / 1000.0;
        let rss = self
            .peak_rss_bytes
            .map_or_else(|| "-".to_owned(), |b| format!("{:.1}", b as f64 / 1e6));
        let cpu = self
            .cpu_seconds_per_gb
            .map_or_else(|| "-".to_owned(), |c| format!("{c:.3}"));
        let mbs = if self.bytes_per_sec > 0.0 {
            format!("{:.1}", self.bytes_per_sec / 1e6)
        } else {
            "-".to_owned()
        };
        let header = format!(
            "{:<14} {:>8} {:>7} {:>7} {:>10} {:>9} {:>9} {:>9} {:>9} {:>12} {:>9}",
            "scenario",
            "size",
            "clients",
            "ops",
            "ops/s",
            "MB/s",
            "p50 ms",
            "p99 ms",
            "p999 ms",
            "peak RSS MB",
            "CPU s/GB"
        );
        let row = format!(
            "{:<14} {:>8} {:>7} {:>7} {:>10.1} {:>9} {:>9.3} {:>9.3} {:>9.3} {:>12} {:>9}",
            self.scenario,
            format_size(self.size),
            self.clients,
            self.ops,
            self.ops_per_sec,
            mbs,
            ms(self.latency_us.p50),
            ms(self.latency_us.p99),
            ms(self.latency_us.p999),
            rss,
            cpu
        );
        format!("{header}\n{row}")
    }
}
