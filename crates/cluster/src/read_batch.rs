//! Concurrent linearizable reads share read barriers (DESIGN.md §1.5c: "a batched ReadIndex
//! that concurrent reads share").
//!
//! A caller may only use a barrier that *started after it arrived*: a barrier already in
//! flight may have taken its read index before the caller's request, so the caller waits for
//! the next one. Callers are queued; one batch is taken from the queue just before each
//! barrier starts, and the whole batch gets that barrier's result.
//!
//! ```text
//! arrivals:  a b   c d e        f
//! barriers:  [--1--][----2----] [-3-]
//! 1 serves a (taken before 1 started); 2 serves b c d e; 3 serves f.
//! ```

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// Why a shared barrier failed (cloned to every caller of its batch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BarrierFailure {
    /// Leadership or quorum could not be confirmed: safe to retry.
    NoQuorum(String),
    /// The node is broken.
    Fatal(String),
}

type Waiter = oneshot::Sender<Result<(), BarrierFailure>>;

#[derive(Default)]
struct State {
    running: bool,
    queued: Vec<Waiter>,
}

/// Runs at most one barrier at a time and shares each one with every caller queued before it
/// started.
pub struct ReadBatcher<F> {
    state: Mutex<State>,
    barrier: F,
}

impl<F, Fut> ReadBatcher<F>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), BarrierFailure>> + Send + 'static,
{
    /// A batcher running `barrier` for each batch.
    pub fn new(barrier: F) -> Arc<Self> {
        Arc::new(ReadBatcher {
            state: Mutex::new(State::default()),
            barrier,
        })
    }

    /// Waits for a barrier that started after this call, and returns its result.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future drops only this caller's place in the batch; the barrier runs on.
    pub async fn barrier(self: &Arc<Self>) -> Result<(), BarrierFailure> {
        let (tx, rx) = oneshot::channel();
        let start_runner = {
            let mut state = self.lock();
            state.queued.push(tx);
            !std::mem::replace(&mut state.running, true)
        };
        if start_runner {
            let this = Arc::clone(self);
            tokio::spawn(async move { this.run_batches().await });
        }
        rx.await
            .unwrap_or_else(|_| Err(BarrierFailure::Fatal("read barrier runner stopped".into())))
    }

    async fn run_batches(&self) {
        loop {
            let batch = {
                let mut state = self.lock();
                if state.queued.is_empty() {
                    state.running = false;
                    return;
                }
                std::mem::take(&mut state.queued)
            };
            let result = (self.barrier)().await;
            for waiter in batch {
                // A caller that went away no longer needs its answer.
                let _ = waiter.send(result.clone());
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is two plain fields; a panic elsewhere cannot leave them inconsistent.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn concurrent_reads_share_barriers() {
        let runs = Arc::new(AtomicUsize::new(0));
        let counter = runs.clone();
        let batcher = ReadBatcher::new(move || {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok(())
            }
        });
        let calls: Vec<_> = (0..200)
            .map(|_| {
                let b = batcher.clone();
                tokio::spawn(async move { b.barrier().await })
            })
            .collect();
        for c in calls {
            c.await.unwrap().unwrap();
        }
        let n = runs.load(Ordering::SeqCst);
        assert!(
            (1..=3).contains(&n),
            "200 concurrent reads took {n} barriers"
        );
    }

    #[tokio::test]
    async fn a_read_never_uses_a_barrier_that_started_before_it() {
        // Each barrier records the number of barriers started so far when it starts; a caller
        // that arrives while barrier k runs must be answered by barrier k+1 or later.
        let started = Arc::new(AtomicUsize::new(0));
        let s = started.clone();
        let batcher = ReadBatcher::new(move || {
            let s = s.clone();
            async move {
                s.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok(())
            }
        });
        let first = tokio::spawn({
            let b = batcher.clone();
            async move { b.barrier().await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(started.load(Ordering::SeqCst), 1);
        // arrives while barrier 1 runs
        batcher.barrier().await.unwrap();
        assert_eq!(
            started.load(Ordering::SeqCst),
            2,
            "the late caller needed a second barrier"
        );
        first.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn failures_reach_every_caller_of_the_batch() {
        let batcher =
            ReadBatcher::new(|| async { Err(BarrierFailure::NoQuorum("partitioned".into())) });
        let a = tokio::spawn({
            let b = batcher.clone();
            async move { b.barrier().await }
        });
        let r = batcher.barrier().await;
        assert_eq!(r, Err(BarrierFailure::NoQuorum("partitioned".into())));
        assert!(a.await.unwrap().is_err());
    }
}
