//! Where the adapter's private-key work runs: every OAuth signature and every JWE sealed or
//! opened goes to Tokio's blocking threads, at most [`width`] at once, so that the async workers
//! never run RSA (an enrollment burst would otherwise hold them for ~0.25 ms per signature and
//! stretch every other call, status reads included) and RSA never has more threads than the
//! cores it shares with them.

use std::sync::{Arc, OnceLock};
use tokio::sync::Semaphore;

/// How many private-key operations run at once: the cores less one for the async workers, at
/// least one (on 2 cores: one signing thread beside the two workers).
pub fn width() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .saturating_sub(1)
        .max(1)
}

fn permits() -> &'static Arc<Semaphore> {
    static PERMITS: OnceLock<Arc<Semaphore>> = OnceLock::new();
    PERMITS.get_or_init(|| Arc::new(Semaphore::new(width())))
}

/// The work could not run to its end (its thread panicked, or the runtime is shutting down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the signing pool could not run the operation")]
pub struct OffloadError;

/// Runs `work` on a blocking thread once a permit is free. The permit goes with the work, so a
/// caller that gives up (a deadline) does not let more operations run at once than the width.
pub async fn run<T, F>(work: F) -> Result<T, OffloadError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let permit = permits()
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| OffloadError)?;
    tokio::task::spawn_blocking(move || {
        let out = work();
        drop(permit);
        out
    })
    .await
    .map_err(|_| OffloadError)
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
