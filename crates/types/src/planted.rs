//! Planted bugs: known faults that a build with the `planted-bugs` cargo feature carries, one of
//! them switched on at run time by `WHARF_PLANTED_BUG=<name>`, so that the fault-injection
//! harness (`jepsen/`) and the power-loss test can prove that they catch it. Test builds only:
//! the feature is never on by default and never ships.
//!
//! Each hook is `if planted::active(PlantedBug::…)` at the exact spot, under a
//! `// planted bug <name>:` comment. Without the feature [`active`] is a `const fn` answering
//! false, so the hooks compile away; with it and the variable unset, nothing changes either.
//! The variable is read once (the one exception to this crate's "no I/O").

use std::fmt;
use std::str::FromStr;

/// The environment variable naming the active planted bug.
pub const ENV_VAR: &str = "WHARF_PLANTED_BUG";

/// A known bug a `planted-bugs` build can plant. Each breaks one guarantee of DESIGN.md §1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlantedBug {
    /// A write this node could not get committed (no leader, no quorum, timeout) is answered
    /// as applied (§1.1, §1.6).
    AckBeforeCommit,
    /// A miss (unknown tag, version, file, repository) is answered from local state without
    /// the read barrier (§1.5b).
    SkipBarrierOnMiss,
    /// A hit on mutable state is served from local state without a ReadIndex, whatever the
    /// repository's consistency (§1.5c, §1.6).
    StrongReadsLocal,
    /// Blob bytes moving between nodes are checked on neither end: chunk hashes, chunk root
    /// and digest (§1.4).
    SkipPeerDigestVerify,
    /// Blob files are never fsync'd (§1.7).
    SkipBlobFsync,
    /// A copy received from a peer is answered "stored" without any fsync, so the uploader
    /// counts it toward `durability.min_copies` (§1.2).
    CountCopyBeforePeerFsync,
    /// A node that forwarded a write answers once the leader applied it, and a follower's read
    /// barrier returns once the leader named the read index, both before this node applied
    /// up to it (§1.1, §1.5).
    FollowerAnswersBeforeApply,
    /// `apply` ignores `request_id`: a duplicate entry is applied again (§1.1).
    DropRequestDedup,
}

impl PlantedBug {
    /// Every planted bug.
    pub const ALL: [PlantedBug; 8] = [
        PlantedBug::AckBeforeCommit,
        PlantedBug::SkipBarrierOnMiss,
        PlantedBug::StrongReadsLocal,
        PlantedBug::SkipPeerDigestVerify,
        PlantedBug::SkipBlobFsync,
        PlantedBug::CountCopyBeforePeerFsync,
        PlantedBug::FollowerAnswersBeforeApply,
        PlantedBug::DropRequestDedup,
    ];

    /// The name `WHARF_PLANTED_BUG` takes.
    pub const fn name(self) -> &'static str {
        match self {
            PlantedBug::AckBeforeCommit => "ack-before-commit",
            PlantedBug::SkipBarrierOnMiss => "skip-barrier-on-miss",
            PlantedBug::StrongReadsLocal => "strong-reads-local",
            PlantedBug::SkipPeerDigestVerify => "skip-peer-digest-verify",
            PlantedBug::SkipBlobFsync => "skip-blob-fsync",
            PlantedBug::CountCopyBeforePeerFsync => "count-copy-before-peer-fsync",
            PlantedBug::FollowerAnswersBeforeApply => "follower-answers-before-apply",
            PlantedBug::DropRequestDedup => "drop-request-dedup",
        }
    }
}

impl fmt::Display for PlantedBug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why `WHARF_PLANTED_BUG` cannot be honoured: the node must not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlantedBugError {
    /// The value names none of [`PlantedBug::ALL`].
    #[error("{ENV_VAR}={0:?} names no planted bug; valid names: {names}", names = valid_names())]
    Unknown(String),
    /// A bug is named, but this build has none compiled in.
    #[error(
        "{ENV_VAR}={0:?} is set, but this wharf was built without planted bugs \
         (cargo build -p wharf-cli --features planted-bugs); unset it"
    )]
    NotBuilt(String),
}

fn valid_names() -> String {
    PlantedBug::ALL.map(PlantedBug::name).join(", ")
}

impl FromStr for PlantedBug {
    type Err = PlantedBugError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PlantedBug::ALL
            .into_iter()
            .find(|bug| bug.name() == s)
            .ok_or_else(|| PlantedBugError::Unknown(s.to_string()))
    }
}

/// The bug a value of `WHARF_PLANTED_BUG` selects: none when unset or empty.
pub fn parse(value: Option<&str>) -> Result<Option<PlantedBug>, PlantedBugError> {
    match value.map(str::trim) {
        None | Some("") => Ok(None),
        Some(name) => name.parse().map(Some),
    }
}

/// The bug `WHARF_PLANTED_BUG` selects, for a node to check before it starts: an unknown
/// name, or any name in a build without the feature, is an error.
pub fn from_env() -> Result<Option<PlantedBug>, PlantedBugError> {
    let value = std::env::var_os(ENV_VAR).map(|v| v.to_string_lossy().into_owned());
    let bug = parse(value.as_deref())?;
    match (bug, value) {
        (Some(_), Some(value)) if !cfg!(feature = "planted-bugs") => {
            Err(PlantedBugError::NotBuilt(value))
        }
        _ => Ok(bug),
    }
}

/// Whether `bug` is the planted bug of this process (read from the environment once).
#[cfg(feature = "planted-bugs")]
pub fn active(bug: PlantedBug) -> bool {
    static ACTIVE: std::sync::OnceLock<Option<PlantedBug>> = std::sync::OnceLock::new();
    // A bad value was refused at startup (`from_env`); here it plants nothing.
    *ACTIVE.get_or_init(|| from_env().ok().flatten()) == Some(bug)
}

/// Whether `bug` is the planted bug of this process: never, in a build without the
/// `planted-bugs` feature.
#[cfg(not(feature = "planted-bugs"))]
#[inline]
pub const fn active(_bug: PlantedBug) -> bool {
    false
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unset_or_empty_plants_nothing() {
        for bug in PlantedBug::ALL {
            assert_eq!(parse(Some(bug.name())), Ok(Some(bug)));
            assert_eq!(bug.to_string(), bug.name());
        }
        assert_eq!(
            parse(Some(" skip-blob-fsync\n")),
            Ok(Some(PlantedBug::SkipBlobFsync))
        );
        assert_eq!(parse(None), Ok(None));
        assert_eq!(parse(Some("")), Ok(None));
    }

    #[test]
    fn an_unknown_name_is_refused_with_the_valid_names() {
        let err = parse(Some("skip_blob_fsync")).unwrap_err();
        assert_eq!(err, PlantedBugError::Unknown("skip_blob_fsync".into()));
        let message = err.to_string();
        assert!(
            message.contains("WHARF_PLANTED_BUG=\"skip_blob_fsync\""),
            "{message}"
        );
        for bug in PlantedBug::ALL {
            assert!(message.contains(bug.name()), "{message}");
        }
    }
}
