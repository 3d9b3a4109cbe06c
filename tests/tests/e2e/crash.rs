//! Crash (DESIGN.md §1.7): two threads push OCI blobs and generic files, wharf is SIGKILLed at
//! a seeded point, restarted on the same data dir; twice. Every acknowledged push must read back
//! byte for byte, nothing may be served with wrong bytes, no partial upload may survive (`uploads/`
//! empty) and every blob file must hash to its name.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use wharf_tests::powercut::{Pushers, check_data_dir, test_seed, verify};
use wharf_tests::{Wharf, init_logging};

#[test]
fn kill9_mid_push_loses_no_acknowledged_write() {
    init_logging();
    let seed = test_seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut server = Wharf::start();
    let mut pushes = Vec::new();
    for round in 0..2u64 {
        let acks = rng.random_range(5..=50);
        let extra = Duration::from_millis(rng.random_range(0..40));
        tracing::info!("--- round {round}: push until {acks} acknowledgements, then {extra:?}");
        let pushers = Pushers::start(
            &server.url(),
            seed.wrapping_add(round),
            2,
            &format!("c{seed}-{round}"),
        );
        if !pushers.wait_for_acks(acks, Duration::from_secs(240)) {
            let got = pushers.acked();
            pushers.finish();
            panic!("seed {seed}: only {got} of {acks} pushes acknowledged within 240 s");
        }
        std::thread::sleep(extra);
        server.kill9();
        pushes.extend(pushers.finish());

        server.restart();
        tracing::info!(
            "--- round {round}: read back all {} pushes so far",
            pushes.len()
        );
        let verdict = verify(&server.url(), &pushes);
        tracing::info!("seed {seed}: {verdict}");
        assert!(
            verdict.is_clean(),
            "seed {seed} (replay with WHARF_TEST_SEED={seed}), round {round}: writes lost or \
             damaged by kill -9\n{verdict}"
        );
        let disk = check_data_dir(&server.data_dir());
        assert!(
            disk.is_empty(),
            "seed {seed}, round {round}: data dir after kill -9 and restart: {disk:#?}"
        );
    }
}
