//! The open loop's clock. Latency counts from each request's scheduled time, so the schedule
//! must be kept to the microsecond: Tokio's timer wheel has a millisecond tick and wakes a
//! `sleep_until` up to a tick late, which the generator then charged to the server (a status
//! probe at 200/s against an idle server read p50 1.8 ms). A thread of its own sleeps with the
//! OS's high-resolution timer instead and hands each slot, as it comes due, to the async side.

use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// The `n`-th fixed-interval slot after `t0`.
pub fn slot(t0: Instant, interval: Duration, n: u64) -> Instant {
    t0 + interval.mul_f64(n as f64)
}

/// Every slot `t0 + n * interval` before `end`, each sent when it comes due; the channel closes
/// after the last one, or stops early when the receiver is dropped.
pub fn slots(t0: Instant, interval: Duration, end: Instant) -> mpsc::UnboundedReceiver<Instant> {
    let (tx, rx) = mpsc::unbounded_channel();
    let paced = std::thread::Builder::new()
        .name("bench-pacer".into())
        .spawn(move || {
            for n in 0u64.. {
                let due = slot(t0, interval, n);
                if due >= end {
                    return;
                }
                let wait = due
                    .into_std()
                    .saturating_duration_since(std::time::Instant::now());
                if !wait.is_zero() {
                    std::thread::sleep(wait);
                }
                if tx.send(due).is_err() {
                    return;
                }
            }
        });
    if let Err(e) = paced {
        // No thread, no schedule: the run sends nothing and reports no requests.
        eprintln!("bench: cannot start the open loop's pacer thread: {e}");
    }
    rx
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[tokio::test]
    async fn every_slot_before_the_end_comes_once_in_order_and_not_early() {
        let t0 = Instant::now();
        let interval = Duration::from_millis(2);
        let mut rx = slots(t0, interval, t0 + Duration::from_millis(21));
        let mut got = Vec::new();
        while let Some(due) = rx.recv().await {
            assert!(Instant::now() >= due, "slot handed out before it was due");
            got.push(due);
        }
        let expected: Vec<_> = (0..11).map(|n| slot(t0, interval, n)).collect();
        assert_eq!(got, expected);
    }
}
