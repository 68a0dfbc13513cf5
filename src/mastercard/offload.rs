//! Where the adapter's private-key work runs: every OAuth signature and every JWE sealed or
//! opened goes to a small pool of threads of its own, [`width`] of them, so that the async
//! workers never run RSA (an enrollment burst would otherwise hold them for ~0.25 ms per
//! signature and stretch every other call, status reads included) and RSA never has more
//! threads than the cores it shares with them. The threads take the work from one queue: under
//! load they go from one signature to the next without sleeping (Tokio's blocking pool would
//! wake a thread, often a new one, for each).

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::Instant;

/// How many private-key operations run at once: the cores less one for the async workers, at
/// least one (on 2 cores: one signing thread beside the two workers).
pub fn width() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .saturating_sub(1)
        .max(1)
}

type Job = Box<dyn FnOnce() + Send>;

/// The queue of the pool's threads; `None` when not one of them could be started.
fn queue() -> Option<&'static mpsc::Sender<Job>> {
    static QUEUE: OnceLock<Option<mpsc::Sender<Job>>> = OnceLock::new();
    QUEUE
        .get_or_init(|| {
            let (jobs, queue) = mpsc::channel::<Job>();
            let queue = Arc::new(Mutex::new(queue));
            let started = (0..width())
                .filter(|i| {
                    let queue = queue.clone();
                    std::thread::Builder::new()
                        .name(format!("c2p-signing-{i}"))
                        .spawn(move || work_from(&queue))
                        .is_ok()
                })
                .count();
            (started > 0).then_some(jobs)
        })
        .as_ref()
}

/// A pool thread: runs jobs until the queue is gone; a job that panics is dropped (its caller
/// gets [`OffloadError`]) and the thread goes on.
fn work_from(queue: &Mutex<mpsc::Receiver<Job>>) {
    loop {
        let job = queue.lock().unwrap_or_else(|p| p.into_inner()).recv();
        match job {
            Ok(job) => {
                let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
                // An async worker woken on this core runs before the next signature, not after
                // a run of them: status p99 under EnrollCard saturation (the probe's client at
                // SCHED_FIFO, 12 runs each) 4.1-8.3 ms (median 5.4) -> 2.8-5.6 ms (median 3.5),
                // for ~6% more service CPU per EnrollCard (0.89 -> 0.95 ms, medians).
                std::thread::yield_now();
            }
            Err(_) => return,
        }
    }
}

/// The work could not run to its end (it panicked, or the pool could not be started).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the signing pool could not run the operation")]
pub struct OffloadError;

/// Runs `work` on the pool and waits for its result without holding an async worker.
pub async fn run<T, F>(work: F) -> Result<T, OffloadError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let queue = queue().ok_or(OffloadError)?;
    let (done, result) = tokio::sync::oneshot::channel();
    let queued = Instant::now();
    queue
        .send(Box::new(move || {
            // A caller that stopped waiting while this was queued (its deadline passed) wants
            // no result: under the overload that makes callers give up, not signing for them
            // is what lets the queue drain.
            if done.is_closed() {
                crate::metrics::signing_pool_skipped(queued.elapsed());
                return;
            }
            let started = Instant::now();
            let out = work();
            let ran = started.elapsed();
            // The caller has its answer first; a job that panics is counted in neither phase.
            let _ = done.send(out);
            crate::metrics::signing_pool(started.saturating_duration_since(queued), ran);
        }))
        .map_err(|_| OffloadError)?;
    result.await.map_err(|_| OffloadError)
}

/// Test support: every pool thread held (for 5 s at most) until [`HeldPool::release`]. One
/// holder at a time across the crate's tests: two holding at once on a pool of several threads
/// could each take some of them and wait for the rest.
#[cfg(test)]
pub(crate) struct HeldPool {
    releases: Vec<mpsc::Sender<()>>,
    _one_at_a_time: tokio::sync::MutexGuard<'static, ()>,
}

#[cfg(test)]
impl HeldPool {
    pub(crate) async fn hold() -> Self {
        static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let guard = ONE_AT_A_TIME.lock().await;
        let mut releases = Vec::new();
        let mut started = Vec::new();
        for _ in 0..width() {
            let (release, held) = mpsc::channel::<()>();
            let (on, running) = tokio::sync::oneshot::channel::<()>();
            releases.push(release);
            started.push(running);
            tokio::spawn(run(move || {
                let _ = on.send(());
                let _ = held.recv_timeout(std::time::Duration::from_secs(5));
            }));
        }
        for running in started {
            let _ = running.await;
        }
        Self {
            releases,
            _one_at_a_time: guard,
        }
    }

    /// Lets the threads go: `false` when some had stopped waiting (5 s) first.
    pub(crate) fn release(self) -> bool {
        self.releases.iter().all(|release| release.send(()).is_ok())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    // One async worker: the work, once started, waits for a message that only that worker can
    // send, which it could not if the work held it.
    #[tokio::test(flavor = "current_thread")]
    async fn work_runs_off_the_async_worker() {
        let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let work = tokio::spawn(run(move || {
            let _ = started_tx.send(());
            go_rx.recv_timeout(Duration::from_secs(30)).is_ok()
        }));
        started_rx.await.unwrap();
        go_tx.send(()).unwrap();
        assert!(
            work.await.unwrap().unwrap(),
            "the work held the async worker"
        );
    }

    /// Work whose caller stopped waiting while it was queued is not run (it ran before, a full
    /// RSA operation for nobody).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn work_whose_caller_gave_up_while_queued_is_not_run() {
        use std::sync::atomic::AtomicBool;
        // Every pool thread held, so that the next job queues.
        let held = HeldPool::hold().await;
        let ran = Arc::new(AtomicBool::new(false));
        let given_up = {
            let ran = ran.clone();
            tokio::time::timeout(
                Duration::from_millis(20),
                run(move || ran.store(true, Ordering::SeqCst)),
            )
            .await
        };
        assert!(given_up.is_err(), "queued behind the held threads");
        assert!(held.release());
        // Queued after it: once this ran, the one given up was taken from the queue (strictly
        // so with one pool thread, as on 2 cores; with more, this one may finish first).
        assert_eq!(run(|| 7).await, Ok(7));
        assert!(!ran.load(Ordering::SeqCst), "the work given up ran");
    }

    #[tokio::test]
    async fn a_panicking_operation_fails_alone() {
        assert_eq!(run(|| panic!("boom")).await, Err::<(), _>(OffloadError));
        assert_eq!(run(|| 7).await, Ok(7));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_most_width_operations_run_at_once() {
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let calls = (0..16).map(|_| {
            let (running, most) = (running.clone(), most.clone());
            run(move || {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(2));
                running.fetch_sub(1, Ordering::SeqCst);
            })
        });
        for result in futures::future::join_all(calls).await {
            result.unwrap();
        }
        let most = most.load(Ordering::SeqCst);
        assert!(
            (1..=width()).contains(&most),
            "{most} at once, width {}",
            width()
        );
    }
}
