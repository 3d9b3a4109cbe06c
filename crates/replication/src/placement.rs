//! Who must hold a blob and whom to ask for it. Pure: no I/O.

use std::collections::BTreeSet;
use std::time::Duration;

use wharf_types::NodeId;

/// A member as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub id: NodeId,
    pub region: String,
    /// Round-trip time of the open connection to it, if one is open.
    pub rtt: Option<Duration>,
}

/// How many members must hold verified bytes before an upload is acknowledged (DESIGN.md
/// §1.2): the configured number, or by default 2 (1 while the cluster has a single member).
pub fn min_copies(configured: Option<u32>, members: usize) -> usize {
    match configured {
        Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
        None => members.clamp(1, 2),
    }
}

/// Holders in the order to ask them: same region as `my_region` first, then by measured round
/// trip (unmeasured last), then by id so that the order is stable.
pub fn nearest_first(holders: &[Peer], my_region: &str) -> Vec<NodeId> {
    let mut sorted: Vec<&Peer> = holders.iter().collect();
    sorted.sort_by_key(|p| (p.region != my_region, p.rtt.unwrap_or(Duration::MAX), p.id));
    sorted.into_iter().map(|p| p.id).collect()
}

/// Members to push a copy to, in order of preference, so that `have` (members already holding
/// verified bytes) reaches `needed`: members that lack it, regions not yet covered first (a
/// copy in another region survives the loss of one), then the nearest.
pub fn push_targets(members: &[Peer], have: &BTreeSet<NodeId>, my_region: &str) -> Vec<NodeId> {
    let covered: BTreeSet<&str> = members
        .iter()
        .filter(|p| have.contains(&p.id))
        .map(|p| p.region.as_str())
        .chain([my_region])
        .collect();
    let mut candidates: Vec<&Peer> = members.iter().filter(|p| !have.contains(&p.id)).collect();
    candidates.sort_by_key(|p| {
        (
            covered.contains(p.region.as_str()),
            p.rtt.unwrap_or(Duration::MAX),
            p.id,
        )
    });
    candidates.into_iter().map(|p| p.id).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn peer(id: NodeId, region: &str, rtt_ms: Option<u64>) -> Peer {
        Peer {
            id,
            region: region.into(),
            rtt: rtt_ms.map(Duration::from_millis),
        }
    }

    #[test]
    fn default_min_copies_is_two_once_there_are_two_members() {
        assert_eq!(min_copies(None, 1), 1);
        assert_eq!(min_copies(None, 2), 2);
        assert_eq!(min_copies(None, 5), 2);
        assert_eq!(min_copies(Some(3), 2), 3, "an explicit number is kept");
    }

    #[test]
    fn nearest_holder_is_same_region_then_lowest_rtt() {
        let holders = [
            peer(1, "eu", Some(80)),
            peer(2, "us", Some(5)),
            peer(3, "us", None),
            peer(4, "ap", Some(3)),
        ];
        assert_eq!(nearest_first(&holders, "us"), vec![2, 3, 4, 1]);
    }

    #[test]
    fn pushes_go_to_uncovered_regions_first() {
        let members = [
            peer(1, "us", Some(1)),
            peer(2, "us", Some(1)),
            peer(3, "eu", Some(90)),
            peer(4, "ap", None),
        ];
        let have = BTreeSet::from([1]);
        assert_eq!(push_targets(&members, &have, "us"), vec![3, 4, 2]);
    }
}
