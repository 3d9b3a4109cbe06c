//! Network partitions between real processes: every node of the cluster runs in its own
//! network namespace (`wharf_testkit::netlab`), and a cut drops the frames between them on the
//! bridge. Unlike SIGSTOP (`replication::a_node_that_was_away_converges_without_reads`) the
//! cut-off node keeps running: it campaigns, times out on its peers and takes requests it
//! cannot finish, and it must still catch up by itself once the network is back.

use std::time::{Duration, Instant};

use serde_json::Value;
use wharf_tests::cluster::{ClusterOpts, TestCluster};
use wharf_tests::{ClientEnv, init_logging, sha256_digest};

use crate::replication::{
    blob_file, holders, push_three_images, skopeo_push_two_chunk_image, wait_until,
};

/// How long node 3 gets, from the heal, to hold every blob pushed while it was cut off.
const CONVERGE_WITHIN: Duration = Duration::from_secs(60);

/// How long a write through the cut-off node may take before it counts as timed out.
const WRITE_TIMEOUT: Duration = Duration::from_secs(20);

/// The leader as member `i` sees it, if it answers and knows one.
fn leader_seen_by(cluster: &TestCluster, i: usize) -> Option<u64> {
    let url = format!("{}/api/v1/cluster", cluster.members[i].url());
    let status: Value = reqwest::blocking::get(url).ok()?.json().ok()?;
    status["leader"].as_u64()
}

/// Three nodes in their own namespaces (`min_copies = 2`, every repository replicated to all
/// regions). Node 3 is cut off from nodes 1 and 2 (the test still reaches it), and images are
/// pushed through node 1, one of them with skopeo and two chunks big: node 3 holds none of
/// them, and a blob pushed through node 3 is not acknowledged. After the heal node 3 holds
/// every blob within a minute without anyone pulling — checked by the holdings the cluster
/// records (on node 1 and on node 3 itself) and by node 3's disk, never by reading from it.
#[test]
fn a_partitioned_node_converges_after_the_heal_without_reads() {
    init_logging();
    let cluster = TestCluster::start(
        3,
        ClusterOpts {
            tls: true,
            netlab: true,
            ..ClusterOpts::default()
        },
    );
    let ids: Vec<u64> = cluster.members.iter().map(|m| m.node_id).collect();
    let id3 = ids[2];

    // Cut before node 3 has reported its version, the cluster could not record holdings at
    // all until the heal.
    cluster.wait_for_cluster_version();

    tracing::info!("--- cut node 3 off from nodes 1 and 2");
    cluster.isolate(2);
    wait_until(
        "node 1 follows a leader on its side of the cut",
        Duration::from_secs(30),
        || leader_seen_by(&cluster, 0).is_some_and(|l| l == ids[0] || l == ids[1]),
    );

    tracing::info!("--- push images through node 1 while node 3 is away");
    let mut digests = push_three_images(&cluster, "part/app");
    let env = ClientEnv::new(&cluster.members[0].client);
    let (_, pushed) = skopeo_push_two_chunk_image(&env, &cluster.members[0].client, "part/big:v1");
    digests.extend(pushed);

    tracing::info!("--- node 3 holds none of them while cut off");
    for digest in &digests {
        wait_until(
            &format!("{digest} is recorded on 2 members"),
            Duration::from_secs(10),
            || holders(&cluster, 0, digest).len() >= 2,
        );
        let h = holders(&cluster, 0, digest);
        assert!(
            !h.contains(&id3),
            "{digest} recorded on the cut-off node: {h:?}"
        );
        assert!(
            !blob_file(&cluster.members[2], digest).exists(),
            "{digest} reached the cut-off node's disk"
        );
    }

    tracing::info!("--- a blob pushed through node 3 is not acknowledged");
    let data = wharf_tests::random_bytes(64 * 1024);
    let digest = sha256_digest(&data);
    let client = reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(WRITE_TIMEOUT)
        .build()
        .unwrap();
    let started = Instant::now();
    let sent = client
        .post(format!(
            "{}/v2/part/app/blobs/uploads/?digest={digest}",
            cluster.members[2].url()
        ))
        .body(data)
        .send();
    match sent {
        Ok(resp) => {
            let status = resp.status();
            let body = resp.text().unwrap_or_default();
            // 503 with a code saying why (no quorum, too few copies), as every refused write.
            assert!(
                status == 503
                    && ["NO_QUORUM", "NOT_ENOUGH_COPIES"]
                        .iter()
                        .any(|c| body.contains(c)),
                "a blob pushed through the cut-off node: want 503 NO_QUORUM or \
                 NOT_ENOUGH_COPIES, got {status} {body}"
            );
            tracing::info!(
                "node 3 refused the write after {:.1}s: {status} {body}",
                started.elapsed().as_secs_f64()
            );
        }
        Err(e) => {
            assert!(e.is_timeout(), "write through node 3: {e:?}");
            tracing::info!("node 3 did not answer the write within {WRITE_TIMEOUT:?}");
        }
    }

    tracing::info!("--- heal: node 3 fetches every blob by itself");
    cluster.heal();
    let healed = Instant::now();
    let deadline = healed + CONVERGE_WITHIN;
    for digest in &digests {
        wait_until(
            &format!("node {id3} holds {digest} (as node 1 records it)"),
            deadline.saturating_duration_since(Instant::now()),
            || holders(&cluster, 0, digest).contains(&id3),
        );
        assert!(blob_file(&cluster.members[2], digest).is_file());
    }
    tracing::info!(
        "node 3 held every blob {:.1}s after the heal",
        healed.elapsed().as_secs_f64()
    );
    for digest in &digests {
        wait_until(
            &format!("node {id3}'s own state records that it holds {digest}"),
            deadline.saturating_duration_since(Instant::now()),
            || holders(&cluster, 2, digest).contains(&id3),
        );
    }
    wait_until(
        "node 3 has no replication backlog",
        deadline.saturating_duration_since(Instant::now()),
        || cluster.metric(2, "wharf_replication_backlog") == 0,
    );
}
