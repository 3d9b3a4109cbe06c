//! The bugs the `planted-bugs` feature of Wharf can plant (selected at run time with
//! `WHARF_PLANTED_BUG`), and the fault families whose schedule exposes each one. The harness
//! must flag every one of them (`jepsen/run --short --planted <bug>` exits non-zero).

/// One planted bug.
#[derive(Debug, Clone, Copy)]
pub struct Bug {
    pub name: &'static str,
    /// The fault families its runs mix.
    pub faults: &'static [&'static str],
    /// Every fault aimed at the leader.
    pub at_leader: bool,
    /// `durability.min_copies` of its runs. With 1, a cut-off node stores new bytes by itself,
    /// so its writes reach the proposal (with 2 they are refused before, for want of a second
    /// copy, and a bug in the proposal path stays hidden).
    pub min_copies: usize,
}

pub const BUGS: &[Bug] = &[
    // A write on a minority-side node is acknowledged though it never commits: lost writes,
    // non-linearizable registers, two digests for one immutable tag.
    Bug {
        name: "ack-before-commit",
        faults: &["partition-one", "partition-halves", "partition-one"],
        at_leader: false,
        min_copies: 1,
    },
    // A cut-off node answers 404 for what was acknowledged on the majority side.
    Bug {
        name: "skip-barrier-on-miss",
        faults: &["partition-one", "partition-halves", "partition-one-way"],
        at_leader: false,
        min_copies: 2,
    },
    // A cut-off node serves an old tag value in a strong repository.
    Bug {
        name: "strong-reads-local",
        faults: &["partition-one", "partition-halves", "partition-one"],
        at_leader: false,
        min_copies: 2,
    },
    // A corrupt copy on one node spreads to a node that catches up from it.
    Bug {
        name: "skip-peer-digest-verify",
        faults: &["bitflip-catch-up", "bitflip-catch-up", "bitflip-catch-up"],
        at_leader: false,
        min_copies: 2,
    },
    // Acknowledged blobs vanish when every node loses power.
    Bug {
        name: "skip-blob-fsync",
        faults: &["power-loss-all", "power-loss-all"],
        at_leader: false,
        min_copies: 2,
    },
    // The second copy counted toward min_copies was never made durable.
    Bug {
        name: "count-copy-before-peer-fsync",
        faults: &["power-loss-all", "power-loss-all"],
        at_leader: false,
        min_copies: 2,
    },
    // A node answers a write (or a strong read) before it applied the entry itself: a node
    // that hears the leader late serves a read right after an acknowledged write from state
    // that does not have it yet.
    Bug {
        name: "follower-answers-before-apply",
        faults: &["latency", "latency", "latency"],
        at_leader: false,
        min_copies: 2,
    },
    // A retried proposal applies twice: a follower whose leader was killed after applying a
    // forwarded write proposes it again to the next leader; a create of a fresh repository
    // name then answers "already exists".
    Bug {
        name: "drop-request-dedup",
        faults: &["kill", "kill", "kill", "kill"],
        at_leader: true,
        min_copies: 2,
    },
];

pub fn find(name: &str) -> anyhow::Result<&'static Bug> {
    BUGS.iter().find(|b| b.name == name).ok_or_else(|| {
        let names: Vec<&str> = BUGS.iter().map(|b| b.name).collect();
        anyhow::anyhow!("no planted bug {name}; known: {}", names.join(", "))
    })
}
