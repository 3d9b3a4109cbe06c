//! The bugs the `planted-bugs` feature of Wharf can plant (selected at run time with
//! `WHARF_PLANTED_BUG`), and the fault families whose schedule exposes each one. The harness
//! must flag every one of them (`jepsen/run --short --planted <bug>` exits non-zero).

/// One planted bug.
#[derive(Debug, Clone, Copy)]
pub struct Bug {
    pub name: &'static str,
    /// The fault families its runs mix.
    pub faults: &'static [&'static str],
}

pub const BUGS: &[Bug] = &[
    // A write on a minority-side node is acknowledged though it never commits: lost writes,
    // non-linearizable registers, two digests for one immutable tag.
    Bug {
        name: "ack-before-commit",
        faults: &["partition-one", "partition-halves", "partition-one"],
    },
    // A cut-off node answers 404 for what was acknowledged on the majority side.
    Bug {
        name: "skip-barrier-on-miss",
        faults: &["partition-one", "partition-halves", "partition-one-way"],
    },
    // A cut-off node serves an old tag value in a strong repository.
    Bug {
        name: "strong-reads-local",
        faults: &["partition-one", "partition-halves", "partition-one"],
    },
    // A corrupt copy on one node spreads to the nodes that copy from it.
    Bug {
        name: "skip-peer-digest-verify",
        faults: &["bitflip", "kill", "bitflip"],
    },
    // Acknowledged blobs vanish when every node loses power.
    Bug {
        name: "skip-blob-fsync",
        faults: &["power-loss-all", "power-loss-all"],
    },
    // The second copy counted toward min_copies was never made durable.
    Bug {
        name: "count-copy-before-peer-fsync",
        faults: &["power-loss-all", "power-loss-all"],
    },
    // A node answers a write (or a strong read) before it applied the entry itself.
    Bug {
        name: "follower-answers-before-apply",
        faults: &["pause", "partition-one-way", "pause"],
    },
    // A retried proposal applies twice.
    Bug {
        name: "drop-request-dedup",
        faults: &["partition-one-way", "kill", "partition-one-way"],
    },
];

pub fn find(name: &str) -> anyhow::Result<&'static Bug> {
    BUGS.iter().find(|b| b.name == name).ok_or_else(|| {
        let names: Vec<&str> = BUGS.iter().map(|b| b.name).collect();
        anyhow::anyhow!("no planted bug {name}; known: {}", names.join(", "))
    })
}
