//! The simulator's injected latency, kept to what it says. Tokio's timer has a millisecond tick
//! and fires a `sleep` from the tick after its deadline, when a worker next polls the driver:
//! a `latency = "50ms"` answered at idle after 51.2-51.5 ms more than the route's own work, and
//! later when the simulator is busy, which the benchmarks then charged to the service. One
//! thread of its own sleeps with the OS's high-resolution timer to the earliest deadline and
//! wakes each waiter as it comes due.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::{OnceLock, mpsc};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Waits `d` (not less), woken by the delay thread; Tokio's timer where that thread could not
/// be started.
pub async fn sleep(d: Duration) {
    sleep_until(Instant::now() + d).await;
}

/// Waits until `at` (not less).
pub async fn sleep_until(at: Instant) {
    let (done, fired) = oneshot::channel();
    let queued = sender().is_some_and(|tx| tx.send(Due { at, done }).is_ok());
    if !(queued && fired.await.is_ok()) {
        tokio::time::sleep_until(at.into()).await;
    }
}

/// A waiter and when it is due; the earliest first out of the heap.
struct Due {
    at: Instant,
    done: oneshot::Sender<()>,
}

impl Ord for Due {
    fn cmp(&self, other: &Self) -> Ordering {
        other.at.cmp(&self.at)
    }
}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}

impl Eq for Due {}

/// The delay thread's queue; `None` when the thread could not be started.
fn sender() -> Option<&'static mpsc::Sender<Due>> {
    static QUEUE: OnceLock<Option<mpsc::Sender<Due>>> = OnceLock::new();
    QUEUE
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel();
            std::thread::Builder::new()
                .name("sim-delay".into())
                .spawn(move || run(&rx))
                .ok()
                .map(|_| tx)
        })
        .as_ref()
}

/// Wakes every waiter that is due, then sleeps until the next one is or a new one comes.
fn run(queue: &mpsc::Receiver<Due>) {
    let mut heap = BinaryHeap::new();
    loop {
        let now = Instant::now();
        while heap.peek().is_some_and(|d: &Due| d.at <= now) {
            if let Some(due) = heap.pop() {
                // A waiter that went away (its request was dropped) is nobody's loss.
                let _ = due.done.send(());
            }
        }
        let next = match heap.peek() {
            Some(d) => queue.recv_timeout(d.at.saturating_duration_since(now)),
            None => queue
                .recv()
                .map_err(|_| mpsc::RecvTimeoutError::Disconnected),
        };
        match next {
            Ok(due) => heap.push(due),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use std::sync::{Arc, Mutex};

    #[tokio::test]
    async fn a_sleep_does_not_end_before_its_time() {
        for ms in [0, 1, 7, 20] {
            let start = Instant::now();
            sleep(Duration::from_millis(ms)).await;
            assert!(
                start.elapsed() >= Duration::from_millis(ms),
                "{ms} ms ended early"
            );
        }
    }

    #[tokio::test]
    async fn waiters_queued_out_of_order_wake_in_the_order_of_their_deadlines() {
        let order = Arc::new(Mutex::new(Vec::new()));
        // Deadlines from 200 ms ahead, 50 ms apart: a loaded machine that pauses this thread
        // while the waiters queue must not let one deadline pass before a later one is queued.
        let base = Instant::now() + Duration::from_millis(200);
        let waits = [250u64, 50, 150, 100, 0, 200];
        let tasks: Vec<_> = waits
            .iter()
            .map(|&ms| {
                let order = order.clone();
                tokio::spawn(async move {
                    sleep_until(base + Duration::from_millis(ms)).await;
                    order.lock().unwrap().push(ms);
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let mut sorted = waits.to_vec();
        sorted.sort_unstable();
        assert_eq!(*order.lock().unwrap(), sorted);
    }

    #[tokio::test]
    async fn a_waiter_dropped_before_its_time_leaves_the_others_on_time() {
        let dropped = tokio::spawn(sleep(Duration::from_millis(5)));
        dropped.abort();
        let start = Instant::now();
        sleep(Duration::from_millis(10)).await;
        assert!(start.elapsed() >= Duration::from_millis(10));
    }
}
