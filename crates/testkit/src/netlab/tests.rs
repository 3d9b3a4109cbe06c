//! The route parser on its own, then a real lab (needs root, `ip` and `nft`): who reaches whom
//! under cuts, isolation and heal, and how long a connection takes under a delay, checked with
//! TCP connects from threads that entered the node namespaces.

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};

use super::*;

#[test]
fn routes_are_parsed_without_defaults() {
    let text = "default via 192.0.2.1 dev eth0\n\
                192.0.2.0/24 dev eth0 proto kernel scope link src 192.0.2.2\n\
                local 10.200.7.254 dev wlc807r table local proto kernel scope host\n\
                broadcast 127.255.255.255 dev lo table local proto kernel scope link\n\
                unreachable 10.0.0.0/8\n\
                fe80::/64 dev eth0\n";
    let ip = |s: &str| u32::from(s.parse::<Ipv4Addr>().unwrap());
    assert_eq!(
        parse_routes(text),
        vec![
            (ip("192.0.2.0"), 24),
            (ip("10.200.7.254"), 32),
            (ip("127.255.255.255"), 32),
            (ip("10.0.0.0"), 8),
        ]
    );
}

#[test]
fn prefixes_overlap_when_the_shorter_one_holds_the_other() {
    let ip = |s: &str| u32::from(s.parse::<Ipv4Addr>().unwrap());
    assert!(overlaps((ip("10.0.0.0"), 8), (ip("10.200.1.0"), 24)));
    assert!(overlaps((ip("10.200.1.0"), 24), (ip("10.200.1.254"), 32)));
    assert!(!overlaps((ip("10.200.1.0"), 24), (ip("10.200.2.0"), 24)));
    assert!(!overlaps((ip("192.0.2.0"), 24), (ip("10.200.1.0"), 24)));
}

/// Runs `f` on a thread that entered `namespace` (`None`: stays in the root namespace). The
/// network namespace is per thread, so the rest of the test process is not moved.
fn inside<T: Send>(namespace: Option<&str>, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            if let Some(ns) = namespace {
                let file = File::open(Path::new("/run/netns").join(ns)).unwrap();
                setns(&file, CloneFlags::CLONE_NEWNET).unwrap();
            }
            f()
        })
        .join()
        .unwrap()
    })
}

/// Whether a TCP connection from `from` (a node, or `None` for the root namespace) to `to`
/// is accepted; a dropped SYN shows as a timeout.
fn reaches(lab: &NetLab, from: Option<usize>, to: SocketAddr) -> bool {
    let ns = from.map(|i| lab.namespace(i));
    inside(ns.as_deref(), || {
        TcpStream::connect_timeout(&to, Duration::from_millis(500)).is_ok()
    })
}

/// One TCP listener inside each of the lab's three node namespaces, on the node's address.
fn listeners_in(lab: &NetLab) -> Vec<TcpListener> {
    (1..=3)
        .map(|i| {
            let addr = SocketAddr::from((lab.node_ip(i), 0));
            inside(Some(&lab.namespace(i)), || TcpListener::bind(addr).unwrap())
        })
        .collect()
}

#[test]
fn a_lab_cuts_isolates_and_heals_and_leaves_nothing_behind() {
    let lab = NetLab::up(3);
    let listeners = listeners_in(&lab);
    let at: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    let node = |i: usize| at[i - 1];
    let all_pairs_reach = |lab: &NetLab| {
        for from in 1..=3 {
            for to in 1..=3 {
                assert!(reaches(lab, Some(from), node(to)), "{from} -> {to}");
            }
        }
    };
    for i in 1..=3 {
        assert!(reaches(&lab, None, node(i)), "root -> {i}");
    }
    all_pairs_reach(&lab);

    // No default route: nothing leaves the lab.
    let outside = SocketAddr::from(([192, 0, 2, 1], 80));
    let err = inside(Some(&lab.namespace(1)), || {
        TcpStream::connect_timeout(&outside, Duration::from_millis(500)).unwrap_err()
    });
    assert_eq!(err.kind(), std::io::ErrorKind::NetworkUnreachable, "{err}");

    lab.cut(1, 3);
    assert!(!reaches(&lab, Some(1), node(3)));
    assert!(!reaches(&lab, Some(3), node(1)));
    assert!(reaches(&lab, Some(1), node(2)));
    assert!(reaches(&lab, Some(2), node(3)));
    assert!(reaches(&lab, None, node(3)), "the root link is never cut");
    lab.heal();
    all_pairs_reach(&lab);

    lab.isolate(3);
    lab.isolate(3); // twice is the same as once
    for other in [1, 2] {
        assert!(!reaches(&lab, Some(other), node(3)), "{other} -> 3");
        assert!(!reaches(&lab, Some(3), node(other)), "3 -> {other}");
    }
    assert!(reaches(&lab, Some(1), node(2)));
    assert!(reaches(&lab, None, node(3)), "the root link is never cut");
    lab.heal();
    lab.heal(); // healing a healed lab is fine
    all_pairs_reach(&lab);

    let names: Vec<String> = (1..=3)
        .map(|i| lab.namespace(i))
        .chain([lab.hub_namespace()])
        .collect();
    let root_if = format!("wl{}r", lab.id());
    drop(listeners);
    drop(lab);
    for name in names {
        assert!(
            !Path::new("/run/netns").join(&name).exists(),
            "{name} left behind"
        );
    }
    assert!(
        !Path::new("/sys/class/net").join(&root_if).exists(),
        "{root_if} left behind"
    );
}

#[test]
fn labs_side_by_side_get_different_subnets() {
    let a = NetLab::up(1);
    let b = NetLab::up(1);
    assert_ne!(a.id(), b.id());
    assert_ne!(a.node_ip(1), b.node_ip(1));
}

/// `$WHARF_DELAYD_BIN`, else `wharf-delayd` in the profile dir of this test executable
/// (`<target>/<profile>/deps/<test>`): `cargo test` alone does not build it.
fn delayd_bin() -> PathBuf {
    let path = std::env::var_os("WHARF_DELAYD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let exe = std::env::current_exe().unwrap();
            let deps = exe.parent().unwrap();
            deps.parent().unwrap().join("wharf-delayd")
        });
    assert!(
        path.is_file(),
        "wharf-delayd not found at {}.\nBuild it with: cargo build -p wharf-testkit (--release \
         too if the tests run with it), or set WHARF_DELAYD_BIN",
        path.display()
    );
    path
}

/// How long a TCP connect from node `from` to `to` takes: one round trip (SYN, SYN-ACK).
fn connect_time(lab: &NetLab, from: usize, to: SocketAddr) -> Duration {
    let ns = lab.namespace(from);
    inside(Some(&ns), || {
        let started = Instant::now();
        TcpStream::connect_timeout(&to, Duration::from_secs(5)).unwrap();
        started.elapsed()
    })
}

#[test]
fn a_delayed_direction_is_slow_and_the_others_are_not() {
    let delayd = delayd_bin();
    let delay = Duration::from_millis(300);
    let fast = Duration::from_millis(150);
    let lab = NetLab::up(3);
    let listeners = listeners_in(&lab);
    let node = |i: usize| listeners[i - 1].local_addr().unwrap();

    lab.delay(&delayd, 1, 2, delay);
    let slow = connect_time(&lab, 1, node(2));
    assert!(slow >= delay && slow < delay * 3, "1 -> 2 took {slow:?}");
    // The SYN-ACK of node 2 is held this time: one way, but every round trip pays it.
    let back = connect_time(&lab, 2, node(1));
    assert!(back >= delay, "2 -> 1 took {back:?}");
    for (from, to) in [(1, 3), (3, 2), (3, 1)] {
        let t = connect_time(&lab, from, node(to));
        assert!(t < fast, "{from} -> {to} took {t:?}, without a delay");
    }

    lab.heal();
    let healed = connect_time(&lab, 1, node(2));
    assert!(healed < fast, "1 -> 2 took {healed:?} after the heal");
}
