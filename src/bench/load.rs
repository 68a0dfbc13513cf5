//! The load: closed loop (N callers, each sends its next request when its answer came) or open
//! loop (requests scheduled at fixed intervals, whatever the answers do; latency counts from the
//! scheduled time, so a server that stalls is charged for every request it delayed: no
//! coordinated omission), for unary RPCs, one or more NotificationIngest streams, or idle
//! WatchEnrollment streams.

use super::pacer;
use super::rpc::{self, Clients, Mix, Requests};
use super::stats::{Stats, Window};
use c2p_enroll::proto::v1::WatchEnrollmentRequest;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Everything the load tasks share.
pub struct Ctx {
    pub clients: Vec<Clients>,
    pub requests: Requests,
    pub mix: Mix,
    /// Open loop: requests per second (all streams together); closed loop: `None`.
    pub rate: Option<f64>,
    /// Closed loop: callers; open loop: most requests in flight; ingest: messages in flight per
    /// stream; watch: watches.
    pub concurrency: usize,
    pub streams: usize,
    /// When the load starts (warm-up first).
    pub t0: Instant,
    pub window: Window,
    /// At most this many requests in all.
    pub max_requests: Option<u64>,
    pub timeout: Duration,
    pub seq: AtomicU64,
    pub stats: Mutex<Stats>,
    /// Cancelled once no further request will be sent.
    pub issuing_done: CancellationToken,
}

impl Ctx {
    fn record(&self, rpc: &'static str, scheduled: Instant, r: super::stats::CallResult) {
        let done = Instant::now();
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).record(
            rpc,
            scheduled.into_std(),
            done.into_std(),
            r,
        );
    }

    fn record_lost(&self, rpc: &'static str, scheduled: Instant, key: &str, n: u64) {
        self.stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record_lost(rpc, scheduled.into_std(), key, n);
    }

    /// The next request's number, or `None` once `--requests` are all sent.
    fn next(&self) -> Option<u64> {
        let i = self.seq.fetch_add(1, Ordering::Relaxed);
        match self.max_requests {
            Some(n) if i >= n => None,
            _ => Some(i),
        }
    }

    fn client(&self, n: usize) -> &Clients {
        &self.clients[n % self.clients.len()]
    }

    fn end(&self) -> Instant {
        Instant::from_std(self.window.end)
    }
}

/// Unary RPCs, closed or open loop; returns when every request sent has its answer.
pub async fn unary(ctx: Arc<Ctx>) {
    match ctx.rate {
        None => closed_unary(ctx).await,
        Some(rate) => open_unary(ctx, rate).await,
    }
}

async fn closed_unary(ctx: Arc<Ctx>) {
    let mut workers = JoinSet::new();
    for w in 0..ctx.concurrency {
        let ctx = ctx.clone();
        workers.spawn(async move {
            let clients = ctx.client(w).clone();
            loop {
                let start = Instant::now();
                if start >= ctx.end() {
                    break;
                }
                let Some(i) = ctx.next() else { break };
                let rpc = ctx.mix.pick(i);
                let r = rpc::unary(&clients, rpc, &ctx.requests, i, ctx.timeout).await;
                ctx.record(rpc.name(), start, r);
            }
        });
    }
    while workers.join_next().await.is_some() {}
    ctx.issuing_done.cancel();
}

async fn open_unary(ctx: Arc<Ctx>, rate: f64) {
    let interval = Duration::from_secs_f64(1.0 / rate.max(1e-3));
    let in_flight = Arc::new(Semaphore::new(ctx.concurrency.max(1)));
    let mut tasks = JoinSet::new();
    let mut schedule = pacer::slots(ctx.t0, interval, ctx.end());
    while let Some(due) = schedule.recv().await {
        // Waiting here for a free slot delays the send, not the latency's start: `due` stays.
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        let Some(i) = ctx.next() else { break };
        let task_ctx = ctx.clone();
        tasks.spawn(async move {
            let rpc = task_ctx.mix.pick(i);
            let clients = task_ctx.client(usize::try_from(i).unwrap_or(0));
            let r = rpc::unary(clients, rpc, &task_ctx.requests, i, task_ctx.timeout).await;
            task_ctx.record(rpc.name(), due, r);
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    ctx.issuing_done.cancel();
    while tasks.join_next().await.is_some() {}
}

/// `NotificationIngest`: `ctx.streams` streams, each with up to `ctx.concurrency` messages
/// unanswered; an answer is matched to its message by `sequence`.
pub async fn ingest(ctx: Arc<Ctx>) {
    let mut streams = JoinSet::new();
    for s in 0..ctx.streams.max(1) {
        streams.spawn(ingest_stream(ctx.clone(), s));
    }
    while streams.join_next().await.is_some() {}
    ctx.issuing_done.cancel();
}

async fn ingest_stream(ctx: Arc<Ctx>, stream: usize) {
    const RPC: &str = "NotificationIngest";
    let (tx, rx) = tokio::sync::mpsc::channel(ctx.concurrency.max(1));
    let mut client = ctx.client(stream).service.clone();
    let mut answers = match tokio::time::timeout(
        ctx.timeout,
        client.notification_ingest(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
    .await
    {
        Ok(Ok(r)) => r.into_inner(),
        // A stream that did not open, or (below) ended, is an error of the run but no call: no
        // latency, no timeline row. Counted as of the window's start, so that one refused
        // during the warm-up is not lost from the report.
        Ok(Err(status)) => {
            ctx.record_lost(RPC, ctx.window.start.into(), &rpc::error_key(&status), 1);
            return;
        }
        Err(_) => {
            ctx.record_lost(
                RPC,
                ctx.window.start.into(),
                "DEADLINE_EXCEEDED (client)",
                1,
            );
            return;
        }
    };
    let pending: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let window = Arc::new(Semaphore::new(ctx.concurrency.max(1)));
    let sender = {
        let ctx = ctx.clone();
        let pending = pending.clone();
        let window = window.clone();
        tokio::spawn(async move {
            let per_stream = ctx.rate.map(|r| r / ctx.streams.max(1) as f64);
            let interval = per_stream.map(|r| Duration::from_secs_f64(1.0 / r.max(1e-3)));
            let mut schedule = interval.map(|i| pacer::slots(ctx.t0, i, ctx.end()));
            loop {
                let scheduled = match schedule.as_mut() {
                    Some(schedule) => match schedule.recv().await {
                        Some(due) => due,
                        None => break,
                    },
                    None => Instant::now(),
                };
                // A slot in the window, given back when the answer arrives.
                let Ok(permit) = window.acquire().await else {
                    break;
                };
                permit.forget();
                let scheduled = if interval.is_some() {
                    scheduled
                } else {
                    let now = Instant::now();
                    if now >= ctx.end() {
                        break;
                    }
                    now
                };
                let Some(i) = ctx.next() else { break };
                let sequence = i + 1;
                pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(sequence, scheduled);
                if tx
                    .send(ctx.requests.notification(i, sequence))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            // Dropping `tx` ends the request stream: the server answers the rest, then ends OK.
        })
    };
    loop {
        match tokio::time::timeout(ctx.timeout, answers.message()).await {
            Ok(Ok(Some(answer))) => {
                let sent = pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&answer.sequence);
                window.add_permits(1);
                let Some(sent) = sent else {
                    ctx.record(
                        RPC,
                        ctx.window.start.into(),
                        Err("answer with an unknown sequence".into()),
                    );
                    continue;
                };
                let (name, acked) = rpc::ingest_outcome(answer.outcome);
                ctx.record(
                    RPC,
                    sent,
                    if acked {
                        Ok(name)
                    } else {
                        Err(format!("outcome {name}"))
                    },
                );
            }
            Ok(Ok(None)) => break,
            Ok(Err(status)) => {
                ctx.record_lost(
                    RPC,
                    Instant::now(),
                    &format!("stream ended {}", rpc::error_key(&status)),
                    1,
                );
                break;
            }
            Err(_) => {
                if sender.is_finished()
                    && pending.lock().unwrap_or_else(|p| p.into_inner()).is_empty()
                {
                    break;
                }
                ctx.record_lost(
                    RPC,
                    Instant::now(),
                    "no answer for the timeout: stream given up",
                    1,
                );
                break;
            }
        }
    }
    sender.abort();
    let lost: Vec<Instant> = pending
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .drain()
        .map(|(_, t)| t)
        .collect();
    for t in lost {
        ctx.record_lost(RPC, t, "no answer (stream ended)", 1);
    }
}

/// What the watch run saw.
pub struct WatchRun {
    pub opened: u64,
    pub messages: u64,
}

/// `WatchEnrollment`: opens `ctx.concurrency` watches (card i of the range for watch i), waits
/// for each one's first message (its latency is the one recorded), calls `hold` while they are
/// all open (it measures, then returns), then closes them.
pub async fn watch<F, Fut>(ctx: Arc<Ctx>, hold: F) -> WatchRun
where
    F: FnOnce(u64) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    const RPC: &str = "WatchEnrollment";
    let opened = Arc::new(AtomicU64::new(0));
    let messages = Arc::new(AtomicU64::new(0));
    let close = CancellationToken::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(ctx.concurrency.max(1));
    let mut tasks = JoinSet::new();
    let n = ctx.concurrency;
    for w in 0..n {
        let ctx = ctx.clone();
        let opened = opened.clone();
        let messages = messages.clone();
        let close = close.clone();
        let ready = ready_tx.clone();
        tasks.spawn(async move {
            let start = Instant::now();
            let mut client = ctx.client(w).service.clone();
            let request = WatchEnrollmentRequest {
                card_contract_id: ctx.requests.card(w as u64),
                start_after_revision: 0,
            };
            let first = async {
                let mut stream = client.watch_enrollment(request).await?.into_inner();
                let first = stream.message().await?;
                Ok::<_, tonic::Status>((stream, first))
            };
            let mut stream = match tokio::time::timeout(ctx.timeout, first).await {
                Ok(Ok((stream, Some(_)))) => {
                    ctx.record(RPC, start, Ok(String::new()));
                    opened.fetch_add(1, Ordering::Relaxed);
                    messages.fetch_add(1, Ordering::Relaxed);
                    let _ = ready.send(()).await;
                    stream
                }
                Ok(Ok((_, None))) => {
                    ctx.record(RPC, start, Err("ended before its first message".into()));
                    let _ = ready.send(()).await;
                    return;
                }
                Ok(Err(status)) => {
                    ctx.record(RPC, start, Err(rpc::error_key(&status)));
                    let _ = ready.send(()).await;
                    return;
                }
                Err(_) => {
                    ctx.record(RPC, start, Err("DEADLINE_EXCEEDED (client)".into()));
                    let _ = ready.send(()).await;
                    return;
                }
            };
            drop(ready);
            loop {
                tokio::select! {
                    _ = close.cancelled() => break,
                    m = stream.message() => match m {
                        Ok(Some(_)) => { messages.fetch_add(1, Ordering::Relaxed); }
                        Ok(None) => {
                            ctx.record_lost(RPC, start, "ended while held open", 1);
                            break;
                        }
                        Err(status) => {
                            ctx.record_lost(RPC, start, &format!("ended while held open: {}", rpc::error_key(&status)), 1);
                            break;
                        }
                    }
                }
            }
        });
    }
    drop(ready_tx);
    for _ in 0..n {
        if ready_rx.recv().await.is_none() {
            break;
        }
    }
    ctx.issuing_done.cancel();
    hold(opened.load(Ordering::Relaxed)).await;
    close.cancel();
    while tasks.join_next().await.is_some() {}
    WatchRun {
        opened: opened.load(Ordering::Relaxed),
        messages: messages.load(Ordering::Relaxed),
    }
}
