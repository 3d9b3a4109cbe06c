//! A network lab of real Linux network namespaces: N "hosts" on one machine, each with its own
//! network stack and address, so that a partition is a frame dropped on a wire between two
//! processes — not a flag inside the process under test (that is [`crate::cluster::Net`]).
//!
//! This is "Design A" of the fault-lab notes: one namespace per node on a bridge in a hub
//! namespace. Laid out for a lab with id `c8a1` (subnet `10.200.161.0/24`):
//!
//! ```text
//!  root namespace (the test process: HTTP clients, CLIs)
//!    wlc8a1r  10.200.161.254/24 ─┐ veth, never cut
//!                                │
//!  hub namespace wl-c8a1-hub     wlc8a1pr
//!                                │
//!                       bridge wlc8a1br ◀── nft table `bridge netlab`, chain `cut`: drops the
//!                  ┌─────────────┼─────────────┐   frames from one node port to another
//!              wlc8a1p1      wlc8a1p2  ...  wlc8a1pN
//!                  │ veth        │             │
//!  wl-c8a1-n1  wlc8a1n1      wl-c8a1-n2    wl-c8a1-nN
//!              10.200.161.1  10.200.161.2  10.200.161.N      (no default route: nothing leaves)
//! ```
//!
//! Why this shape:
//! - Every node has its own source address, so a cut between two nodes is a rule about two
//!   bridge ports, and the processes need no cooperation (no binding of outgoing sockets).
//! - The root link lets the test process reach every node's listeners directly; cuts are only
//!   ever made between node ports, so the test can always watch and drive a cut-off node.
//! - No namespace has a default route, so nothing a node sends can leave the lab.
//!
//! The subnet `10.X.Y.0/24` (X in 200–239) is picked at random among those that no route of
//! the root namespace overlaps; the lab id is `X` and `Y` in hex, and creating the hub
//! namespace (named after the id) is what reserves it, so labs of tests running side by side
//! never share a subnet. Interface names carry the id too (all within the 15-byte limit).
//!
//! Everything is torn down on drop, also while a test panics: the root-side veth is deleted
//! (its peer goes with it), then the namespaces (their veths, bridge and rules go with them).
//! A test process killed with SIGKILL leaves its lab behind: `ip netns list | grep '^wl-'`
//! shows it and `ip netns del NAME` removes it.
//!
//! Latency: the kernels here have no `netem`, so [`NetLab::delay`] sends the packets of one
//! direction to an NFQUEUE where `wharf-delayd`, a binary of this crate running in the sending
//! node's namespace, holds each for a while. The rule is an `iptables` one (the xt `NFQUEUE`
//! target): nft's own `queue` statement is not built into these kernels. With
//! `--queue-bypass`, packets pass undelayed if the daemon is gone.
//!
//! Needs root and the `ip` (Debian `iproute2`) and `nft` (`nftables`) commands, and
//! `iptables` for delays. Every command that fails panics with the command line and what it
//! printed.

use std::ffi::OsStr;
use std::io::{BufRead, Read, Write};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// What to do when a command of the lab is missing or refused.
const HINT: &str = "the network lab needs root and the commands ip, nft and (for delays) \
     iptables: apt-get install -y --no-install-recommends iproute2 nftables iptables (or run \
     scripts/install-test-tools)";

/// Second octets of the subnets a lab may take (the third octet is any).
const SECOND_OCTET: std::ops::RangeInclusive<u8> = 200..=239;

/// Host part of the root namespace's address in every lab.
const ROOT_HOST: u8 = 254;

/// The most nodes a lab can have (`.1` to `.253`).
pub const MAX_NODES: usize = 253;

/// How many random subnets [`NetLab::up`] tries before giving up.
const ATTEMPTS: usize = 64;

/// A running lab. Nodes are numbered from 1: node `i` has the address `10.X.Y.i` and lives in
/// [`NetLab::namespace`]`(i)`.
pub struct NetLab {
    id: String,
    /// `[10, X, Y]`.
    subnet: [u8; 3],
    nodes: usize,
    /// Whether the root-side veth was made (so that drop deletes it).
    root_link: bool,
    /// The `wharf-delayd` processes of [`NetLab::delay`], with the node each runs in.
    delays: Mutex<Vec<(usize, Child)>>,
}

impl NetLab {
    /// Builds a lab of `nodes` nodes, each connected to every other and to the root namespace.
    ///
    /// # Panics
    /// When `ip` or `nft` is missing, without root, or when no free subnet was found.
    pub fn up(nodes: usize) -> NetLab {
        // Asked first, so that a missing `nft` fails here and not at the first cut.
        run(Command::new("nft").arg("--version"), None);
        let mut lab = NetLab::reserve();
        lab.connect_root();
        for _ in 0..nodes {
            lab.add_node();
        }
        lab
    }

    /// Picks a subnet no route of the root namespace overlaps and creates the hub namespace
    /// named after it (which fails if another lab took it meanwhile), with its bridge.
    fn reserve() -> NetLab {
        let routes = parse_routes(&run(
            Command::new("ip").args(["-4", "-o", "route", "show", "table", "all"]),
            None,
        ));
        for _ in 0..ATTEMPTS {
            let [x, y] = random_subnet();
            let net = u32::from(Ipv4Addr::new(10, x, y, 0));
            if routes.iter().any(|&route| overlaps(route, (net, 24))) {
                continue;
            }
            let id = format!("{x:02x}{y:02x}");
            let hub = format!("wl-{id}-hub");
            match try_run(Command::new("ip").args(["netns", "add", &hub]), None) {
                Ok(_) => {}
                Err(e) if e.contains("File exists") => continue,
                Err(e) => panic!("{e}"),
            }
            let lab = NetLab {
                id,
                subnet: [10, x, y],
                nodes: 0,
                root_link: false,
                delays: Mutex::new(Vec::new()),
            };
            let bridge = lab.bridge();
            lab.ip(&["-n", &hub, "link", "set", "lo", "up"]);
            lab.ip(&["-n", &hub, "link", "add", &bridge, "type", "bridge"]);
            lab.ip(&["-n", &hub, "link", "set", &bridge, "up"]);
            return lab;
        }
        panic!(
            "no free subnet 10.{}-{}.*.0/24 for a network lab after {ATTEMPTS} tries; routes of \
             the root namespace: {routes:?}",
            SECOND_OCTET.start(),
            SECOND_OCTET.end()
        );
    }

    /// The veth from the root namespace into the bridge, with the `.254` address.
    fn connect_root(&mut self) {
        let (root_if, hub_port) = (format!("wl{}r", self.id), format!("wl{}pr", self.id));
        let hub = self.hub_namespace();
        self.ip(&[
            "link", "add", &root_if, "type", "veth", "peer", "name", &hub_port, "netns", &hub,
        ]);
        self.root_link = true;
        self.ip(&[
            "-n",
            &hub,
            "link",
            "set",
            &hub_port,
            "master",
            &self.bridge(),
            "up",
        ]);
        let addr = format!("{}/24", self.root_ip());
        self.ip(&["addr", "add", &addr, "dev", &root_if]);
        self.ip(&["link", "set", &root_if, "up"]);
    }

    /// Adds one node (a namespace with a veth into the bridge); returns its number.
    ///
    /// # Panics
    /// When the lab has [`MAX_NODES`] already, or a command fails.
    pub fn add_node(&mut self) -> usize {
        let i = self.nodes + 1;
        assert!(
            i <= MAX_NODES,
            "a network lab holds at most {MAX_NODES} nodes"
        );
        let (ns, hub) = (format!("wl-{}-n{i}", self.id), self.hub_namespace());
        self.ip(&["netns", "add", &ns]);
        self.nodes = i;
        let (port, inner) = (self.port(i), format!("wl{}n{i}", self.id));
        self.ip(&["-n", &ns, "link", "set", "lo", "up"]);
        self.ip(&[
            "-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", &inner, "netns", &ns,
        ]);
        self.ip(&[
            "-n",
            &hub,
            "link",
            "set",
            &port,
            "master",
            &self.bridge(),
            "up",
        ]);
        let addr = format!("{}/24", self.node_ip(i));
        self.ip(&["-n", &ns, "addr", "add", &addr, "dev", &inner]);
        self.ip(&["-n", &ns, "link", "set", &inner, "up"]);
        i
    }

    /// The lab's short id (in every namespace and interface name).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// How many nodes the lab has.
    pub fn nodes(&self) -> usize {
        self.nodes
    }

    /// The address of node `i` (from 1).
    pub fn node_ip(&self, i: usize) -> Ipv4Addr {
        self.check(i);
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, u8::try_from(i).expect("i <= MAX_NODES"))
    }

    /// The root namespace's address in the lab (`.254`): where the test's own connections to
    /// the nodes come from.
    pub fn root_ip(&self) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, ROOT_HOST)
    }

    /// The network namespace of node `i`, for `ip netns exec NAME …`.
    pub fn namespace(&self, i: usize) -> String {
        self.check(i);
        format!("wl-{}-n{i}", self.id)
    }

    /// The hub namespace that holds the bridge and the cut rules.
    pub fn hub_namespace(&self) -> String {
        format!("wl-{}-hub", self.id)
    }

    /// `nsenter --net=/run/netns/<namespace of i> -- <program>`: add arguments and spawn.
    /// `nsenter` execs the program, so the child's PID is the program's own and signals reach
    /// it directly. Only the network namespace is entered: `ip netns exec` would also give the
    /// program a mount namespace of its own, holding a copy of every mount of that moment —
    /// a FUSE mount of another node's data dir among them, which then outlives its unmount
    /// (and a power cut of it never completes).
    pub fn command(&self, i: usize, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{}", self.namespace(i)))
            .arg("--")
            .arg(program);
        command
    }

    /// Drops every frame between nodes `a` and `b`, both ways. Their links to other nodes and
    /// to the root namespace stay.
    pub fn cut(&self, a: usize, b: usize) {
        self.cut_pairs(&[(a, b), (b, a)]);
    }

    /// Drops the frames node `from` sends to node `to`; those from `to` to `from` still pass
    /// (a TCP connection then fails both ways, a datagram gets through one way).
    pub fn cut_one_way(&self, from: usize, to: usize) {
        self.cut_pairs(&[(from, to)]);
    }

    /// Cuts node `i` off from every other node, both ways. Its link to the root namespace
    /// stays, so the test can still talk to it.
    pub fn isolate(&self, i: usize) {
        self.check(i);
        let pairs: Vec<(usize, usize)> = (1..=self.nodes)
            .filter(|&j| j != i)
            .flat_map(|j| [(i, j), (j, i)])
            .collect();
        self.cut_pairs(&pairs);
    }

    /// Holds every packet node `from` sends to node `to` for `delay` (one way: call it for
    /// both directions to add `2 × delay` to the round trip), by running `delayd` (the
    /// `wharf-delayd` binary) in `from`'s namespace. Once per direction until [`NetLab::heal`].
    ///
    /// # Panics
    /// When the daemon does not start or the rule cannot be added.
    pub fn delay(&self, delayd: &Path, from: usize, to: usize, delay: Duration) {
        self.check(to);
        assert_ne!(from, to, "a node's packets to itself never reach the lab");
        let queue = to.to_string();
        let mut command = self.command(from, delayd);
        command
            .args([queue.as_str(), &delay.as_millis().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let line = format!("{command:?}");
        let mut daemon = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {line}: {e}\n{HINT}"));
        let mut first = String::new();
        if let Some(out) = daemon.stdout.take() {
            // An error reads as no line at all, which fails below with the daemon's stderr.
            let _ = std::io::BufReader::new(out).read_line(&mut first);
        }
        if first.trim() != "ready" {
            let _ = daemon.kill();
            let _ = daemon.wait();
            let mut stderr = String::new();
            if let Some(mut err) = daemon.stderr.take() {
                let _ = err.read_to_string(&mut stderr);
            }
            panic!(
                "{line} did not print `ready`; stdout: {:?}, stderr: {}",
                first.trim(),
                stderr.trim()
            );
        }
        self.delays().push((from, daemon));
        let to_ip = self.node_ip(to).to_string();
        run(
            self.command(from, "iptables").args([
                "-A",
                "OUTPUT",
                "-d",
                &to_ip,
                "-j",
                "NFQUEUE",
                "--queue-num",
                &queue,
                "--queue-bypass",
            ]),
            None,
        );
    }

    /// Restores every link between nodes: no cuts, no delays.
    pub fn heal(&self) {
        // `add` first makes the `delete` succeed when nothing was cut.
        self.nft_in(
            &self.hub_namespace(),
            "add table bridge netlab\ndelete table bridge netlab\n",
        );
        let mut delayed: Vec<usize> = self.delays().iter().map(|(from, _)| *from).collect();
        delayed.sort_unstable();
        delayed.dedup();
        for from in delayed {
            // Only the lab adds rules in a node's namespace.
            run(self.command(from, "iptables").args(["-F", "OUTPUT"]), None);
        }
        self.stop_delays();
    }

    /// Kills the delay daemons (our children, by their PIDs).
    fn stop_delays(&self) {
        for (_, mut daemon) in self.delays().drain(..) {
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
    }

    /// Drops every frame from `from` to `to` for each pair (one way each); the rules add up
    /// until [`NetLab::heal`].
    pub fn cut_pairs(&self, pairs: &[(usize, usize)]) {
        let mut script = String::from(
            "add table bridge netlab\n\
             add chain bridge netlab cut { type filter hook forward priority 0; policy accept; }\n",
        );
        for &(from, to) in pairs {
            script.push_str(&format!(
                "add rule bridge netlab cut iifname \"{}\" oifname \"{}\" drop\n",
                self.port(from),
                self.port(to)
            ));
        }
        self.nft_in(&self.hub_namespace(), &script);
    }

    /// Runs an nft script in `namespace` (one transaction: all of it or nothing).
    fn nft_in(&self, namespace: &str, script: &str) {
        run(
            Command::new("ip").args(["netns", "exec", namespace, "nft", "-f", "-"]),
            Some(script),
        );
    }

    fn delays(&self) -> std::sync::MutexGuard<'_, Vec<(usize, Child)>> {
        self.delays.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ip(&self, args: &[&str]) {
        run(Command::new("ip").args(args), None);
    }

    fn bridge(&self) -> String {
        format!("wl{}br", self.id)
    }

    /// Node `i`'s port on the bridge (the hub end of its veth).
    fn port(&self, i: usize) -> String {
        self.check(i);
        format!("wl{}p{i}", self.id)
    }

    fn check(&self, i: usize) {
        assert!(
            (1..=self.nodes).contains(&i),
            "lab {} has nodes 1 to {}, not {i}",
            self.id,
            self.nodes
        );
    }
}

impl Drop for NetLab {
    /// Deletes the root-side veth (its peer goes with it) and every namespace (their veths,
    /// the bridge and the rules go with them). Processes still running in a node namespace
    /// keep it alive, unreachable: stop them first.
    fn drop(&mut self) {
        self.stop_delays();
        let mut failed = Vec::new();
        let mut del = |args: &[&str]| {
            if let Err(e) = try_run(Command::new("ip").args(args), None) {
                failed.push(e);
            }
        };
        if self.root_link {
            del(&["link", "del", &format!("wl{}r", self.id)]);
        }
        for i in (1..=self.nodes).rev() {
            del(&["netns", "del", &format!("wl-{}-n{i}", self.id)]);
        }
        del(&["netns", "del", &self.hub_namespace()]);
        if failed.is_empty() {
            return;
        }
        let message = format!(
            "tearing down network lab {} failed:\n{}",
            self.id,
            failed.join("\n")
        );
        if std::thread::panicking() {
            eprintln!("{message}");
        } else {
            panic!("{message}");
        }
    }
}

/// A random `[X, Y]` for the subnet `10.X.Y.0/24`.
fn random_subnet() -> [u8; 2] {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let span = (u32::from(*SECOND_OCTET.end()) - u32::from(*SECOND_OCTET.start()) + 1) * 256;
    let n = crate::ports::process_seed().wrapping_add(
        NEXT.fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(2_654_435_761),
    ) % span;
    let x = *SECOND_OCTET.start() + u8::try_from(n / 256).expect("n < span");
    let y = u8::try_from(n % 256).expect("n % 256 < 256");
    [x, y]
}

/// The IPv4 destinations (network, prefix length) of `ip -4 -o route show table all`, without
/// default routes. Lines it does not understand are left out.
fn parse_routes(text: &str) -> Vec<(u32, u32)> {
    const TYPES: [&str; 10] = [
        "unicast",
        "local",
        "broadcast",
        "multicast",
        "anycast",
        "unreachable",
        "blackhole",
        "prohibit",
        "throw",
        "nat",
    ];
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let mut dest = words.next()?;
            if TYPES.contains(&dest) {
                dest = words.next()?;
            }
            let (addr, len) = dest.split_once('/').unwrap_or((dest, "32"));
            let addr: Ipv4Addr = addr.parse().ok()?;
            let len: u32 = len.parse().ok().filter(|l| (1..=32).contains(l))?;
            Some((u32::from(addr), len))
        })
        .collect()
}

/// Whether two prefixes share an address.
fn overlaps((a, a_len): (u32, u32), (b, b_len): (u32, u32)) -> bool {
    let len = a_len.min(b_len);
    let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
    a & mask == b & mask
}

/// Runs `command` (feeding it `stdin`) and returns its stdout; panics with the command line
/// and its stderr if it cannot start or fails.
fn run(command: &mut Command, stdin: Option<&str>) -> String {
    try_run(command, stdin).unwrap_or_else(|e| panic!("{e}"))
}

fn try_run(command: &mut Command, stdin: Option<&str>) -> Result<String, String> {
    let line = format!("{command:?}");
    let mut child = command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {line}: {e}\n{HINT}"))?;
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        pipe.write_all(text.as_bytes())
            .map_err(|e| format!("{line}: writing its input: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{line}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{line} failed ({}): {}{}\n{HINT}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end(),
            stdin.map(|s| format!("\ninput:\n{s}")).unwrap_or_default(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
mod tests;
