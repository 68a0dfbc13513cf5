//! What an EnrollCard call adds to Mastercard's latency: the call's time less the time its
//! Mastercard HTTP exchanges were waited for, from the signed request handed to the HTTP client
//! (a pooled connection taken or a new one set up, which is ours, included) to the answer's last
//! byte, and the waits before a retry. Signing, sealing, decoding, Redis and gRPC stay the
//! service's own. The Mastercard adapter adds each exchange to the call's account
//! ([`upstream_waited`]); the enrollment's task opens the account
//! ([`accounting_upstream_wait`]) and the gRPC handler records the rest ([`enroll_own_time`]),
//! for the calls that ran the enrollment: a request refused before it (invalid, not allowed,
//! `validate_only`) is not counted, nor a call its caller cancelled or let time out (its
//! handler is gone; the enrollment finishes on its own).
//!
//! A task-local, not a parameter: the exchanges happen three layers below the handler, and
//! the futures that make them are polled by the enrollment's task (retries and joins included),
//! so the account sees exactly this call's exchanges and no other's.

use metrics::histogram;
use std::cell::Cell;
use std::future::Future;
use std::time::Duration;

/// The histogram's name.
pub const OWN_TIME: &str = "c2p_enroll_own_duration_seconds";

/// Finer than the latency buckets below 50 ms, where the service's own share lives; 10 ms is a
/// bound (a latency objective reads `le="0.01"` directly).
pub const OWN_TIME_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0,
    5.0,
];

tokio::task_local! {
    static UPSTREAM_WAIT: Cell<Duration>;
}

/// Runs `call` with an account of Mastercard waits open; returns its output and the total
/// waited.
pub async fn accounting_upstream_wait<F: Future>(call: F) -> (F::Output, Duration) {
    UPSTREAM_WAIT
        .scope(Cell::new(Duration::ZERO), async move {
            let out = call.await;
            (out, UPSTREAM_WAIT.with(Cell::get))
        })
        .await
}

/// Adds one Mastercard exchange to the current call's account (nothing outside one).
pub fn upstream_waited(exchange: Duration) {
    let _ = UPSTREAM_WAIT.try_with(|w| w.set(w.get().saturating_add(exchange)));
}

/// The current call's waits so far; `None` outside an account.
pub(super) fn waited_so_far() -> Option<Duration> {
    UPSTREAM_WAIT.try_with(Cell::get).ok()
}

/// Records what one EnrollCard call took beyond its Mastercard exchanges, by `result`: `new`
/// (an enrollment answered), `replayed` (a stored answer), `error`. The flow awaits each
/// exchange before the next, so the waits add up; were two ever run at once, the sum would
/// overstate them and the own time would read low (it stops at zero).
pub fn enroll_own_time(result: &'static str, total: Duration, upstream: Duration) {
    histogram!(OWN_TIME, "result" => result).record(total.saturating_sub(upstream).as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_the_calls_own_exchanges_are_counted() {
        upstream_waited(Duration::from_secs(7)); // outside any call: dropped
        let (out, waited) = accounting_upstream_wait(async {
            upstream_waited(Duration::from_millis(30));
            // A nested call has its own account.
            let ((), inner) =
                accounting_upstream_wait(async { upstream_waited(Duration::from_millis(5)) }).await;
            assert_eq!(inner, Duration::from_millis(5));
            tokio::task::yield_now().await;
            upstream_waited(Duration::from_millis(20));
            // Another task's exchange is not this call's.
            tokio::spawn(async { upstream_waited(Duration::from_secs(1)) })
                .await
                .unwrap();
            "done"
        })
        .await;
        assert_eq!(out, "done");
        assert_eq!(waited, Duration::from_millis(50));
    }
}
