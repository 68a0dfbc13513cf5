//! Prometheus metrics, served in text format on their own listener (`metrics.listen`), which
//! stops with the gRPC listener. Labels never hold card data: RPC and API names, codes, reasons.
//! The process's own CPU, memory and file descriptors are read from `/proc` at each scrape
//! ([`process`]). `helm/c2p-enroll/files/` holds the alert rules and the dashboard built on
//! these names (`docs/runbook.md` explains each alert).

mod enroll_stage;
mod own_time;
mod process;

pub use enroll_stage::{EnrollStage, enroll_stage};
pub use own_time::{accounting_upstream_wait, enroll_own_time, upstream_waited};

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

/// Latency buckets in seconds: gRPC calls and Mastercard calls span 1 ms to 30 s.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A signature takes ~0.25 ms of a core and a Redis step a few tenths of a millisecond: the
/// buckets of the signing pool and of EnrollCard's steps start well below both.
const FINE_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0,
];

/// The signing pool's histogram ([`signing_pool`]).
const SIGNING_POOL: &str = "c2p_signing_pool_duration_seconds";

/// The process-wide recorder, once installed (`None` inside when another was).
static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process-wide recorder (installed once; later calls share it).
pub fn handle() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            // A full name wins over a suffix (the exporter tries full names first).
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
                .ok()?
                .set_buckets_for_metric(
                    Matcher::Full(own_time::OWN_TIME.into()),
                    own_time::OWN_TIME_BUCKETS,
                )
                .ok()?
                .set_buckets_for_metric(Matcher::Full(SIGNING_POOL.into()), FINE_BUCKETS)
                .ok()?
                .set_buckets_for_metric(
                    Matcher::Full(enroll_stage::ENROLL_STAGE.into()),
                    FINE_BUCKETS,
                )
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            describe();
            Some(handle)
        })
        .clone()
}

fn describe() {
    metrics::describe_counter!(
        "c2p_grpc_requests_total",
        "gRPC calls by RPC, status code and ErrorInfo reason (empty for OK)"
    );
    metrics::describe_histogram!(
        "c2p_grpc_request_duration_seconds",
        metrics::Unit::Seconds,
        "gRPC unary call latency"
    );
    metrics::describe_histogram!(
        own_time::OWN_TIME,
        metrics::Unit::Seconds,
        "EnrollCard latency less the time its Mastercard HTTP exchanges and retry waits took (what the service adds), by result (new, replayed, error); calls refused before the enrollment or cancelled by their caller are not counted"
    );
    metrics::describe_histogram!(
        enroll_stage::ENROLL_STAGE,
        metrics::Unit::Seconds,
        "EnrollCard time by step of the flow (begin, lock, read, recover, search, track, write, enroll, record, index, settle), less the Mastercard HTTP exchanges and retry waits inside it: where the service's own time goes; every call that ran the step (a replayed key runs begin only)"
    );
    metrics::describe_histogram!(
        SIGNING_POOL,
        metrics::Unit::Seconds,
        "private-key operations (OAuth signatures, JWE) of the signing pool by phase: queued (waiting for a pool thread, behind other operations or for a core) and running (on it, wall time)"
    );
    metrics::describe_gauge!("c2p_grpc_open_streams", "open server streams by RPC");
    metrics::describe_gauge!(
        "c2p_grpc_stream_limit",
        "open server streams the process allows by RPC (grpc.limits.max_watch_streams, max_ingest_streams)"
    );
    metrics::describe_counter!(
        "c2p_upstream_requests_total",
        "Mastercard HTTP attempts by API, operation and outcome"
    );
    metrics::describe_histogram!(
        "c2p_upstream_request_duration_seconds",
        metrics::Unit::Seconds,
        "Mastercard HTTP attempt latency"
    );
    metrics::describe_counter!(
        "c2p_upstream_retries_total",
        "Mastercard HTTP retries by API and operation"
    );
    metrics::describe_gauge!(
        "c2p_upstream_breaker_state",
        "circuit breaker state by API: 0 closed, 1 half-open, 2 open"
    );
    metrics::describe_counter!(
        "c2p_notifications_total",
        "notifications answered by event (tar, tcn, status_change, none) and outcome"
    );
    metrics::describe_counter!(
        "c2p_redis_errors_total",
        "failed Redis operations by operation"
    );
    metrics::describe_counter!(
        "c2p_auth_denied_total",
        "calls refused before any work by RPC and reason (unauthenticated, rpc_not_allowed, program_not_allowed)"
    );
    metrics::describe_counter!(
        "c2p_connections_refused_total",
        "connections closed before serving: TLS handshake failed or nothing arrived in time"
    );
    metrics::describe_counter!(
        "c2p_tls_reloads_total",
        "reloads of the gRPC TLS files by result (ok, error)"
    );
    metrics::describe_counter!(
        "c2p_records_quarantined_total",
        "unreadable enrollment records renamed aside (the card is rebuilt from the token list)"
    );
    metrics::describe_counter!(
        "c2p_reconciled_total",
        "reconciler results: IN_PROGRESS enrollments finished (enrolled, failed) or left for a later pass (error); ENROLLED cards Click to Pay no longer holds, now REMOVED (removed), and failed look-ups of ENROLLED cards in Click to Pay (lookup_failed)"
    );
    metrics::describe_counter!(
        "c2p_notification_merge_retries_total",
        "notifications the Redis store merged in the service but wrote with its Lua merge instead: the record changed between the read and the write (another writer), or could not be merged there"
    );
    metrics::describe_counter!(
        "c2p_record_cache_reads_total",
        "status reads of the Redis store's record cache by result (hit, load, bypass)"
    );
    metrics::describe_counter!(
        "c2p_streams_refused_total",
        "streams refused because the process holds its limit of them, by RPC"
    );
    metrics::describe_gauge!(
        "c2p_store_up",
        "1 while the store answers its health probe (health SERVING), 0 while it does not"
    );
    metrics::describe_gauge!(
        "c2p_enrollments_in_progress",
        "enrollments IN_PROGRESS in the store's index (all replicas', read every enroll.reconcile_interval)"
    );
    metrics::describe_gauge!(
        "c2p_enrollments_in_progress_overdue",
        "enrollments IN_PROGRESS for longer than enroll.reconcile_after plus two enroll.reconcile_interval: ones the reconciler should have finished"
    );
}

/// The reasons of `c2p_reconciled_total`, the outcomes of a Redis error: their series exist
/// from the start at 0, so that the first increment is seen by `rate()` and alerts on them.
const RECONCILE_RESULTS: [&str; 5] = ["enrolled", "failed", "removed", "error", "lookup_failed"];
const REDIS_ERROR_KINDS: [&str; 3] = ["timeout", "connection", "command"];

/// Registers at 0 the series that alerts watch before they first move (a counter that appears
/// at 1 is invisible to `rate()` and `increase()` until its second increment).
pub fn register_zero_series() {
    for result in RECONCILE_RESULTS {
        counter!("c2p_reconciled_total", "result" => result).increment(0);
    }
}

/// Registers the Redis error counters at 0 (a Redis store was opened).
pub fn register_redis_errors() {
    for kind in REDIS_ERROR_KINDS {
        counter!("c2p_redis_errors_total", "operation" => kind).increment(0);
    }
}

/// One finished unary call; `code` is the gRPC code's name (`Ok`, `NotFound`, ...), `reason`
/// its `ErrorInfo` reason (an `ErrorReason` name; empty for OK): the business refusals that an
/// availability objective leaves out share codes with failures (`FAILED_PRECONDITION` is both
/// `CARD_NOT_ELIGIBLE` and `UPSTREAM_REJECTED`).
pub fn rpc(rpc: &'static str, code: &'static str, reason: &'static str, started: Instant) {
    let seconds = started.elapsed().as_secs_f64();
    let count = |(calls, latency): &RpcHandles| {
        calls.increment(1);
        latency.record(seconds);
    };
    // The recorder's lookup builds and hashes the key on every call (~3% of a status hit's
    // CPU): each worker thread keeps the handles it looked up. Only once our recorder is in:
    // a handle taken before would be a no-op one for good.
    if HANDLE.get().is_some_and(Option::is_some) {
        RPC_HANDLES.with_borrow_mut(|handles| {
            count(
                handles
                    .entry((rpc, code, reason))
                    .or_insert_with(|| rpc_handles(rpc, code, reason)),
            )
        });
    } else {
        count(&rpc_handles(rpc, code, reason));
    }
}

/// The series of one finished call: its count and the RPC's latency histogram.
type RpcHandles = (metrics::Counter, metrics::Histogram);

fn rpc_handles(rpc: &'static str, code: &'static str, reason: &'static str) -> RpcHandles {
    (
        counter!("c2p_grpc_requests_total", "rpc" => rpc, "code" => code, "reason" => reason),
        histogram!("c2p_grpc_request_duration_seconds", "rpc" => rpc),
    )
}

/// A call's labels: (rpc, code, reason).
type RpcLabels = (&'static str, &'static str, &'static str);

thread_local! {
    /// [`rpc`]'s handles by labels: a few dozen at most (the names are the code's own
    /// `&'static str`s, so the map is bounded by the code, not by callers).
    static RPC_HANDLES: std::cell::RefCell<std::collections::HashMap<RpcLabels, RpcHandles>> =
        std::cell::RefCell::default();
}

/// Counts an open server stream while alive.
pub struct OpenStream(&'static str);

impl OpenStream {
    /// A stream of `rpc` opened (also counted as a call).
    pub fn open(rpc: &'static str) -> Self {
        counter!("c2p_grpc_requests_total", "rpc" => rpc, "code" => "Ok", "reason" => "")
            .increment(1);
        gauge!("c2p_grpc_open_streams", "rpc" => rpc).increment(1.0);
        Self(rpc)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        gauge!("c2p_grpc_open_streams", "rpc" => self.0).decrement(1.0);
    }
}

/// One Mastercard HTTP attempt; `reason` is Mastercard's reason code of a refusal (bounded by
/// Mastercard's list), or empty.
pub fn upstream_attempt(
    api: &'static str,
    operation: &'static str,
    outcome: &'static str,
    reason: &str,
    started: Instant,
) {
    let reason: String = reason
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(64)
        .collect();
    counter!("c2p_upstream_requests_total", "api" => api, "operation" => operation, "outcome" => outcome, "reason" => reason).increment(1);
    histogram!("c2p_upstream_request_duration_seconds", "api" => api, "operation" => operation)
        .record(started.elapsed().as_secs_f64());
}

/// One private-key operation of the signing pool: how long it waited for a pool thread and how
/// long it ran there (wall time: a thread that waits for a core mid-signature counts it).
pub fn signing_pool(queued: std::time::Duration, running: std::time::Duration) {
    signing_pool_skipped(queued);
    histogram!(SIGNING_POOL, "phase" => "running").record(running.as_secs_f64());
}

/// An operation whose caller stopped waiting while it was queued: its wait, and no run (every
/// operation's wait is recorded here, run or not).
pub fn signing_pool_skipped(queued: std::time::Duration) {
    histogram!(SIGNING_POOL, "phase" => "queued").record(queued.as_secs_f64());
}

/// One retry of a Mastercard call.
pub fn upstream_retry(api: &'static str, operation: &'static str) {
    counter!("c2p_upstream_retries_total", "api" => api, "operation" => operation).increment(1);
}

/// The gauge values of a circuit breaker's states (`c2p_upstream_breaker_state`). Metrics own
/// this vocabulary so that they depend on no adapter type (the breaker maps its state to it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerGauge {
    /// 0: calls flow.
    Closed,
    /// 1: probe calls flow.
    HalfOpen,
    /// 2: calls are refused.
    Open,
}

/// The breaker state of an API.
pub fn breaker_state(api: &'static str, state: BreakerGauge) {
    let value = match state {
        BreakerGauge::Closed => 0.0,
        BreakerGauge::HalfOpen => 1.0,
        BreakerGauge::Open => 2.0,
    };
    gauge!("c2p_upstream_breaker_state", "api" => api).set(value);
}

/// The limit of open streams of `rpc` in this process.
pub fn stream_limit(rpc: &'static str, limit: usize) {
    gauge!("c2p_grpc_stream_limit", "rpc" => rpc).set(limit as f64);
}

/// One notification's outcome; `event` is `tar`, `tcn`, `status_change` or `none` (a message
/// without one).
pub fn notification(event: &'static str, outcome: &'static str) {
    counter!("c2p_notifications_total", "event" => event, "outcome" => outcome).increment(1);
}

/// A result of the store's health probe.
pub fn store_up(up: bool) {
    gauge!("c2p_store_up").set(if up { 1.0 } else { 0.0 });
}

/// The enrollments IN_PROGRESS in the store's index, and those of them overdue.
pub fn enrollments_in_progress(total: u64, overdue: u64) {
    gauge!("c2p_enrollments_in_progress").set(total as f64);
    gauge!("c2p_enrollments_in_progress_overdue").set(overdue as f64);
}

/// One failed Redis operation.
pub fn redis_error(operation: &'static str) {
    counter!("c2p_redis_errors_total", "operation" => operation).increment(1);
}

/// A call refused by the access policy; `reason` is a fixed word.
pub fn auth_denied(rpc: &'static str, reason: &'static str) {
    counter!("c2p_auth_denied_total", "rpc" => rpc, "reason" => reason).increment(1);
}

/// A connection closed before it was served.
pub fn connection_refused(reason: &'static str) {
    counter!("c2p_connections_refused_total", "reason" => reason).increment(1);
}

/// A reload of the TLS files.
pub fn tls_reload(result: &'static str) {
    counter!("c2p_tls_reloads_total", "result" => result).increment(1);
}

/// One card the reconciler dealt with. An IN_PROGRESS enrollment: `enrolled`, `failed` or
/// `error` (left for a later pass). An ENROLLED card looked up in Click to Pay
/// (`enroll.lifecycle_check_interval`): `removed` (no longer held: REMOVED) or `lookup_failed`.
pub fn reconciled(result: &'static str) {
    counter!("c2p_reconciled_total", "result" => result).increment(1);
}

/// A status read of the Redis store's record cache: `hit` (answered from memory), `load` (read
/// from Redis into the cache), `bypass` (read from Redis, the card not subscribed yet).
pub fn record_cache(result: &'static str) {
    counter!("c2p_record_cache_reads_total", "result" => result).increment(1);
}

/// Notifications of a batch the Redis store applied with its Lua merge after planning them in
/// the service failed (`store/merge_plan.rs`).
pub fn notification_merge_retries(count: usize) {
    counter!("c2p_notification_merge_retries_total").increment(count as u64);
}

/// An unreadable enrollment record set aside.
pub fn record_quarantined() {
    counter!("c2p_records_quarantined_total").increment(1);
}

/// A stream refused at the per-process limit.
pub fn stream_refused(rpc: &'static str) {
    counter!("c2p_streams_refused_total", "rpc" => rpc).increment(1);
}

/// Serves `GET /metrics` on `listen` until `stop` is cancelled; returns the bound address.
pub async fn serve(
    listen: SocketAddr,
    stop: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async {
            match handle() {
                Some(h) => (
                    axum::http::StatusCode::OK,
                    [("content-type", "text/plain; version=0.0.4")],
                    h.render() + &process::render(),
                ),
                None => (
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    [("content-type", "text/plain")],
                    String::new(),
                ),
            }
        }),
    );
    let task = tokio::spawn(async move {
        let shutdown = async move { stop.cancelled().await };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::warn!(error = %e, "metrics listener failed");
        }
    });
    tracing::info!(%addr, "metrics listening");
    Ok((addr, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_counted_through_the_kept_handles_all_show() {
        let handle = handle().expect("the recorder installs");
        // Labels no other test uses; two threads, each with its own kept handles.
        let calls = || {
            for _ in 0..3 {
                rpc("MetricsTestRpc", "Ok", "", Instant::now());
            }
            rpc(
                "MetricsTestRpc",
                "NotFound",
                "NOT_IN_CLICK_TO_PAY",
                Instant::now(),
            );
        };
        calls();
        std::thread::spawn(calls).join().unwrap();
        let page = handle.render();
        for series in [
            "c2p_grpc_requests_total{rpc=\"MetricsTestRpc\",code=\"Ok\",reason=\"\"} 6\n",
            "c2p_grpc_requests_total{rpc=\"MetricsTestRpc\",code=\"NotFound\",reason=\"NOT_IN_CLICK_TO_PAY\"} 2\n",
            "c2p_grpc_request_duration_seconds_count{rpc=\"MetricsTestRpc\"} 8\n",
        ] {
            assert!(page.contains(series), "{series} not in:\n{page}");
        }
    }
}
