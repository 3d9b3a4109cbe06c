//! `wharf-delayd <queue-num> <delay-ms>`: holds every packet that the kernel hands to NFQUEUE
//! `<queue-num>` of the network namespace it runs in for `<delay-ms>`, then lets it pass, in
//! the order it came. The kernels the tests run on have no `netem` qdisc, so this is how
//! [`wharf_testkit::netlab::NetLab::delay`] adds latency to a link; TCP and UDP (QUIC) alike.
//!
//! Prints `ready` on stdout once bound to the queue; runs until killed (the packets it holds
//! then are dropped, as on a link that went away). Needs CAP_NET_ADMIN in its namespace.

use std::collections::VecDeque;
use std::io::{ErrorKind, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use nfq::{Message, Queue, Verdict};

const USAGE: &str = "usage: wharf-delayd <queue-num> <delay-ms>";

/// Packets the kernel keeps for us before it drops new ones: room for a busy link's worth of
/// a few hundred milliseconds.
const MAX_QUEUED: u32 = 8192;

/// Bytes of each packet copied to us: none are read, and every held packet keeps its receive
/// buffer alive, so keep them small (0 would mean "all of it").
const COPY_BYTES: u16 = 64;

/// The longest sleep between two looks at the queue: bounds the delay's error.
const TICK: Duration = Duration::from_millis(1);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parsed = match args.as_slice() {
        [queue, ms] => queue.parse::<u16>().ok().zip(ms.parse::<u64>().ok()),
        _ => None,
    };
    let Some((queue_num, ms)) = parsed else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    match serve(queue_num, Duration::from_millis(ms)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wharf-delayd: queue {queue_num}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(queue_num: u16, delay: Duration) -> std::io::Result<()> {
    let mut queue = Queue::open()?;
    queue.bind(queue_num)?;
    queue.set_copy_range(queue_num, COPY_BYTES)?;
    queue.set_queue_max_len(queue_num, MAX_QUEUED)?;
    queue.set_nonblocking(true);
    let mut stdout = std::io::stdout();
    writeln!(stdout, "ready")?;
    stdout.flush()?;

    let mut held: VecDeque<(Instant, Message)> = VecDeque::new();
    loop {
        loop {
            match queue.recv() {
                Ok(mut message) => {
                    message.set_verdict(Verdict::Accept);
                    held.push_back((Instant::now() + delay, message));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        let now = Instant::now();
        while held.front().is_some_and(|(due, _)| *due <= now) {
            if let Some((_, message)) = held.pop_front() {
                queue.verdict(message)?;
            }
        }
        let next = held
            .front()
            .map_or(TICK, |(due, _)| due.saturating_duration_since(now));
        std::thread::sleep(next.min(TICK));
    }
}
