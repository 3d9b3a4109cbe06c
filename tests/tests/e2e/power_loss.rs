//! Power loss (DESIGN.md §1.7 "Nothing lost on crash or power loss"): wharf runs on a
//! `wharf-lazyfs` FUSE mount, two threads push OCI blobs and generic files, and after a seeded
//! number of acknowledgements wharf is SIGKILLed and the FUSE layer cuts the power, which drops
//! every write that was not fsync'd (model: wharf-testkit's crate doc). Wharf restarts on what is
//! left: every acknowledged write must read back byte for byte, nothing may be served with wrong
//! bytes, and every blob file must hash to its name.
//!
//! The second test proves the first can fail: the planted build (see [`planted_wharf_bin`]) run
//! with `WHARF_PLANTED_BUG=skip-blob-fsync`, which skips the blob fsync, must lose acknowledged
//! blobs.

use std::path::Path;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use wharf_tests::init_logging;
use wharf_tests::powercut::{
    LazyFsMount, PLANTED_SKIP_FSYNC, Pushers, Verdict, WharfAt, check_data_dir, planted_wharf_bin,
    test_seed, verify,
};
use wharf_tests::server::wharf_bin;

/// What one power cut did.
struct Round {
    verdict: Verdict,
    disk: Vec<String>,
}

/// Push on a FUSE-mounted data dir until a seeded number of acks, SIGKILL wharf, cut the power,
/// restart wharf (without FUSE) on the recovered backing dir and read everything back. `bin` runs
/// with `WHARF_PLANTED_BUG=<planted_bug>` when one is given.
fn power_cut_round(bin: &Path, planted_bug: Option<&str>, seed: u64) -> Round {
    let tmp = tempfile::Builder::new()
        .prefix("wharf-power-loss-")
        .tempdir()
        .unwrap();
    let backing = tmp.path().join("backing");
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&backing).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let acks = rng.random_range(8..=60);
    let extra = Duration::from_millis(rng.random_range(0..40));

    tracing::info!("--- mount wharf-lazyfs, start {} on it", bin.display());
    let mut fuse = LazyFsMount::mount(&backing, &mnt, &tmp.path().join("lazyfs.log"));
    let mut server = WharfAt::start_with_bug(bin, planted_bug, &mnt, &tmp.path().join("wharf.log"));

    tracing::info!("--- push until {acks} acknowledgements, then {extra:?} more");
    let pushers = Pushers::start(&server.url(), seed, 2, &format!("p{seed}"));
    if !pushers.wait_for_acks(acks, Duration::from_secs(240)) {
        let got = pushers.acked();
        pushers.finish();
        panic!(
            "seed {seed}: only {got} of {acks} pushes acknowledged within 240 s\n{}",
            server.log_tail()
        );
    }
    std::thread::sleep(extra);

    tracing::info!("--- power cut: SIGKILL wharf, then drop every un-fsync'd write");
    server.kill9();
    fuse.power_cut();
    let pushes = pushers.finish();
    let acked = pushes.iter().filter(|p| p.acked).count();
    tracing::info!("{} pushes attempted, {acked} acknowledged", pushes.len());

    tracing::info!("--- restart wharf on the recovered backing dir, read everything back");
    let after_log = tmp.path().join("wharf-after.log");
    let after = WharfAt::start_with_bug(bin, planted_bug, &backing, &after_log);
    let verdict = verify(&after.url(), &pushes);
    let disk = check_data_dir(&backing);
    tracing::info!("seed {seed}: {verdict}");
    drop(after);
    drop(fuse);
    Round { verdict, disk }
}

#[test]
fn power_loss_keeps_every_acknowledged_write() {
    init_logging();
    let bin = wharf_bin();
    let seed = test_seed();
    // three cuts at different points (each round takes a second or two)
    for round in 0..3u64 {
        let seed = seed.wrapping_add(round);
        let r = power_cut_round(&bin, None, seed);
        assert!(
            r.verdict.is_clean() && r.disk.is_empty(),
            "seed {seed} (replay with WHARF_TEST_SEED={seed}): writes lost or damaged by a power \
             cut\n{}\ndata dir: {:#?}",
            r.verdict,
            r.disk
        );
        assert!(r.verdict.acked_ok >= 8, "{}", r.verdict);
    }
}

#[test]
fn power_loss_catches_a_skipped_blob_fsync() {
    init_logging();
    let bin = planted_wharf_bin();
    let seed = test_seed();
    let mut results = Vec::new();
    for round in 0..3u64 {
        let r = power_cut_round(&bin, Some(PLANTED_SKIP_FSYNC), seed.wrapping_add(round));
        let damaged = r.verdict.acked_damaged();
        results.push(r.verdict.to_string());
        if damaged > 0 {
            tracing::info!(
                "round {round}: the planted build lost or corrupted {damaged} acknowledged writes, \
                 as it must"
            );
            return;
        }
    }
    panic!(
        "seed {seed}: wharf with the planted bug {PLANTED_SKIP_FSYNC} lost no acknowledged write \
         in 3 power cuts, so the power-loss test cannot catch a missing blob fsync\n{}",
        results.join("\n")
    );
}
