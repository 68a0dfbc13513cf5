//! A reference `NotificationIngest` gateway: the loop an issuer's notification gateway runs to
//! relay tokenization notifications (TAR, TCN, token status changes) to c2p-enroll without
//! losing one, whatever happens to the stream. Copy it; the parts to replace are marked
//! `INTEGRATE:`.
//!
//! ```sh
//! cargo run                                                    # the service, sandbox mode
//! cargo run --example ingest_gateway -- --demo 1000            # 1000 made-up notifications
//! cargo run --example ingest_gateway -- --input notifications.jsonl --endpoint http://127.0.0.1:50051
//! ```
//!
//! # The contract it implements (`proto/c2p/enrollment/v1/enrollment.proto`)
//!
//! - Every message read by the service is answered exactly once, with the `sequence` the gateway
//!   gave it. Answers come in completion order, not request order: match them by `sequence`
//!   (a `notification_id` may legitimately be in flight twice, e.g. after a resend).
//! - An answer is final: APPLIED, DUPLICATE (applied before: e.g. an earlier send whose answer
//!   was lost), STALE and IGNORED mean done; REJECTED means done but not applied (the message
//!   says why, `reject_reason` is a code): park it for a human, resending it unchanged will not
//!   help (except UNSUPPORTED_EVENT, once the service is upgraded); FAILED means not applied
//!   because of a temporary failure: resend it.
//! - **However a stream ends** — OK, an error status (UNAVAILABLE `SERVER_DRAINING` when a
//!   replica shuts down, with a `RetryInfo`), a cut connection (a replica killed, a connection
//!   past `grpc.limits.max_connection_age` and its grace) — every message sent without an
//!   answer was not applied, or was applied and its answer lost: resend it on a new stream.
//!   Resending is always safe: the service deduplicates by `notification_id` (per card, at
//!   least 72 hours) and answers a resend of an applied notification DUPLICATE.
//!
//! So the gateway keeps every message until its answer arrives, keyed by sequence, and never
//! acknowledges a notification to its own source (a queue, a file, MDES) before the service
//! answered it. At most `window` messages are unanswered on a stream (the service reads up to
//! 2,048 ahead and applies them in batches; the rest wait in the transport, which is its
//! backpressure).
//!
//! This file is also run by CI (`tests/integration/gateway.rs`), against the service binary
//! drained, restarted and cutting connections mid-way: every notification must end answered
//! exactly once, APPLIED or DUPLICATE, none lost.

use c2p_enroll::proto::v1::enrollment_service_client::EnrollmentServiceClient;
use c2p_enroll::proto::v1::{
    NotificationIngestRequest, NotificationIngestResponse, NotificationOutcome,
    NotificationRejectReason, TokenStatus, TokenStatusChanged, TokenizationAuthorization,
    TokenizationComplete, TokenizationDecision, notification_ingest_request::Event,
};
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic_types::StatusExt as _;

/// How long opening a stream may take before it counts as ended.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest `RetryInfo` delay obeyed.
const RETRY_INFO_CAP: Duration = Duration::from_secs(300);

/// A notification as the source hands it over. Its `sequence` is set by the gateway at each
/// send (leave it 0).
pub type Notification = NotificationIngestRequest;

/// How the gateway behaves.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The service, e.g. `http://127.0.0.1:50051` (`https://…` with a TLS config in production:
    /// INTEGRATE: `Endpoint::tls_config` with the gateway's client certificate).
    pub endpoint: String,
    /// Most messages unanswered on one stream.
    pub window: usize,
    /// First delay before a new stream after a stream ended early (doubled at each end in a
    /// row that brought no answer, jittered, capped by `max_backoff`). A `RetryInfo` in the
    /// status that ended the stream wins.
    pub initial_backoff: Duration,
    /// Largest delay between streams (and before resending FAILED messages).
    pub max_backoff: Duration,
}

impl GatewayConfig {
    /// Sensible defaults for `endpoint`.
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            window: 64,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// A notification that got its final answer.
#[derive(Debug, Clone)]
pub struct Done {
    /// The notification as last sent.
    pub notification: Notification,
    /// The service's answer.
    pub answer: NotificationIngestResponse,
    /// Why it was sent again, once per resend: how the stream it was on ended
    /// (`Unavailable/SERVER_DRAINING`, `Unknown` for a cut, …) or `FAILED`. Empty when the
    /// first send was answered.
    pub resent_after: Vec<String>,
}

/// A notification taken from the source and not finally answered yet.
struct Pending {
    notification: Notification,
    /// See [`Done::resent_after`].
    resent_after: Vec<String>,
}

impl Pending {
    fn resent(mut self, why: &str) -> Self {
        self.resent_after.push(why.to_owned());
        self
    }
}

/// What the gateway did: the figures a gateway should export as metrics.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Notifications taken from the source.
    pub notifications: u64,
    /// Messages written on streams (first sends and resends).
    pub sent: u64,
    /// Messages sent again: unanswered when their stream ended, or answered FAILED.
    pub resent: u64,
    /// Notifications with a final answer.
    pub acknowledged: u64,
    /// Final answers by outcome (`APPLIED`, `DUPLICATE`, `STALE`, `IGNORED`, `REJECTED`,
    /// `UNKNOWN(n)`).
    pub outcomes: BTreeMap<String, u64>,
    /// FAILED answers (each followed by a resend).
    pub failed_answers: u64,
    /// Streams opened (attempted).
    pub streams: u64,
    /// How streams ended: `OK`, or the status code with the ErrorInfo reason when there is one
    /// (`Unavailable/SERVER_DRAINING`), `Unavailable` for a cut connection or a refused one.
    pub stream_ends: BTreeMap<String, u64>,
    /// Notifications answered REJECTED (or with an outcome this gateway does not know), kept
    /// for an operator: `(notification_id, reject reason, message)`.
    pub parked: Vec<(String, String, String)>,
    /// Notifications taken from the source without a final answer. 0 when `run` returns.
    pub lost: u64,
}

/// Relays every notification of `source` until the source is closed and every notification
/// has its final answer; `on_done` is called once per notification with it (INTEGRATE:
/// acknowledge it to your source there: commit the offset, delete the file, answer MDES).
///
/// Never gives up: a service that stays unreachable is retried with backoff forever (bound it
/// from outside, e.g. `tokio::time::timeout`; in production export the `Report` figures as
/// metrics while they change and alert on streams ending early).
pub async fn run(
    config: &GatewayConfig,
    mut source: mpsc::Receiver<Notification>,
    mut on_done: impl FnMut(Done),
) -> Result<Report, tonic::transport::Error> {
    // Connects lazily and reconnects by itself: every stream after a cut opens a new
    // connection (to another replica behind a load balancer).
    let channel: Channel = Endpoint::from_shared(config.endpoint.clone())?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        // A peer that vanished without closing the connection (a killed node) ends the stream
        // within 40 s instead of never: its unanswered messages then go out again.
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .connect_lazy();
    let mut report = Report::default();
    // To send on the current (or next) stream: resends first, in their first order.
    let mut backlog: VecDeque<Pending> = VecDeque::new();
    // Answered FAILED: resent after a pause.
    let mut failed: Vec<Pending> = Vec::new();
    let mut source_open = true;
    let mut next_sequence: u64 = 1;
    // Stream ends in a row that brought no answer: drives the backoff.
    let mut fruitless_ends: u32 = 0;

    loop {
        report.streams += 1;
        let (tx, rx) = mpsc::channel::<NotificationIngestRequest>(config.window.max(1));
        let mut tx = Some(tx);
        // Unanswered messages of this stream, by sequence.
        let mut in_flight: BTreeMap<u64, Pending> = BTreeMap::new();
        let mut answers_on_stream: u64 = 0;
        // When the messages answered FAILED go out again.
        let mut retry_failed_at: Option<Instant> = None;

        let mut client = EnrollmentServiceClient::new(channel.clone());
        // The call is opened with the request stream still empty: the messages are written
        // below, while answers are read.
        let opened = tokio::time::timeout(
            OPEN_TIMEOUT,
            client.notification_ingest(ReceiverStream::new(rx)),
        )
        .await
        .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("the stream did not open")));
        let end: Result<(), tonic::Status> = match opened {
            Err(status) => Err(status),
            Ok(response) => {
                let mut inbound = response.into_inner();
                loop {
                    let can_send = tx.is_some() && in_flight.len() < config.window;
                    let mut writer_gone = false;
                    tokio::select! {
                        biased;
                        answer = inbound.message() => match answer {
                            Ok(Some(answer)) => {
                                answers_on_stream += 1;
                                let Some(pending) = in_flight.remove(&answer.sequence) else {
                                    // Not one of ours on this stream: a server bug. Nothing
                                    // is removed, so nothing can be lost by it.
                                    eprintln!("gateway: an answer with unknown sequence {} ({})", answer.sequence, answer.notification_id);
                                    continue;
                                };
                                if settle(pending, answer, &mut report, &mut failed, &mut on_done) && retry_failed_at.is_none() {
                                    retry_failed_at = Some(Instant::now() + backoff(config, 1));
                                }
                            }
                            Ok(None) => break Ok(()),
                            Err(status) => break Err(status),
                        },
                        // Resends, then the source; only while the window has room.
                        permit = reserve(&tx), if can_send && !backlog.is_empty() => {
                            match (permit, backlog.pop_front()) {
                                (Some(permit), Some(mut pending)) => {
                                    pending.notification.sequence = next_sequence;
                                    next_sequence += 1;
                                    report.sent += 1;
                                    if !pending.resent_after.is_empty() {
                                        report.resent += 1;
                                    }
                                    permit.send(pending.notification.clone());
                                    in_flight.insert(pending.notification.sequence, pending);
                                }
                                (None, popped) => {
                                    // The transport dropped the request stream: stop writing;
                                    // the answer side reports how the stream ended.
                                    if let Some(popped) = popped {
                                        backlog.push_front(popped);
                                    }
                                    writer_gone = true;
                                }
                                (Some(_), None) => {}
                            }
                        },
                        next = source.recv(), if can_send && source_open && backlog.is_empty() => match next {
                            Some(notification) => {
                                report.notifications += 1;
                                report.lost += 1;
                                backlog.push_back(Pending { notification, resent_after: Vec::new() });
                            }
                            None => source_open = false,
                        },
                        _ = sleep_until(retry_failed_at), if retry_failed_at.is_some() => {
                            retry_failed_at = None;
                            backlog.extend(failed.drain(..));
                        },
                    }
                    // All taken and all answered: close our side; the service then ends the
                    // stream OK.
                    if writer_gone
                        || !source_open
                            && backlog.is_empty()
                            && failed.is_empty()
                            && in_flight.is_empty()
                    {
                        tx = None;
                    }
                }
            }
        };

        // The stream is over, however it ended: what it did not answer goes out again.
        let unanswered = in_flight.len();
        let kind = end_kind(&end);
        for (_, pending) in in_flight.into_iter().rev() {
            backlog.push_front(pending.resent(&kind));
        }
        backlog.extend(failed.drain(..));
        *report.stream_ends.entry(kind.clone()).or_default() += 1;
        if !source_open && backlog.is_empty() && report.lost == 0 {
            // Everything taken has its final answer (the stream may still have ended with an
            // error after the last answer: nothing is left to resend).
            return Ok(report);
        }
        if end.is_ok() && unanswered > 0 {
            // The contract says this does not happen; resending is right anyway.
            eprintln!("gateway: stream ended OK with {unanswered} messages unanswered");
        }
        fruitless_ends = if answers_on_stream > 0 {
            1
        } else {
            fruitless_ends.saturating_add(1)
        };
        let delay = match &end {
            // The server says when a retry makes sense (e.g. 1 s after a drain); a delay past
            // RETRY_INFO_CAP is not believed.
            Err(status) => status
                .get_details_retry_info()
                .and_then(|r| r.retry_delay)
                .map(|d| d.min(RETRY_INFO_CAP))
                .unwrap_or_else(|| backoff(config, fruitless_ends)),
            Ok(()) => backoff(config, fruitless_ends),
        };
        if end.is_err() || unanswered > 0 {
            let why = end.as_ref().err().map(|s| s.message()).unwrap_or("");
            eprintln!(
                "gateway: stream ended ({kind}: {why}) with {unanswered} unanswered; {} to send on a new stream in {delay:?}",
                backlog.len()
            );
        }
        tokio::time::sleep(delay).await;
    }
}

/// Books a final answer, or queues a FAILED one for a resend. True when it was FAILED.
fn settle(
    pending: Pending,
    answer: NotificationIngestResponse,
    report: &mut Report,
    failed: &mut Vec<Pending>,
    on_done: &mut impl FnMut(Done),
) -> bool {
    let outcome = NotificationOutcome::try_from(answer.outcome);
    let name = match outcome {
        Ok(NotificationOutcome::Failed) => {
            // Not applied (e.g. Redis unreachable): resend after a pause.
            report.failed_answers += 1;
            failed.push(pending.resent("FAILED"));
            return true;
        }
        Ok(
            o @ (NotificationOutcome::Applied
            | NotificationOutcome::Duplicate
            | NotificationOutcome::Stale
            | NotificationOutcome::Ignored),
        ) => short_name(o),
        Ok(NotificationOutcome::Rejected) => {
            // INTEGRATE: park it where an operator sees it (a dead-letter queue).
            let reason = NotificationRejectReason::try_from(answer.reject_reason)
                .map(|r| r.as_str_name().to_owned())
                .unwrap_or_else(|_| format!("UNKNOWN({})", answer.reject_reason));
            eprintln!(
                "gateway: {} REJECTED {reason}: {} {:?}",
                answer.notification_id, answer.message, answer.field_violations
            );
            report.parked.push((
                answer.notification_id.clone(),
                reason,
                answer.message.clone(),
            ));
            "REJECTED".to_owned()
        }
        // Unspecified, or an outcome added after this gateway was written: not lost, not
        // resent in a loop; an operator decides.
        Ok(NotificationOutcome::Unspecified) | Err(_) => {
            let name = format!("UNKNOWN({})", answer.outcome);
            report.parked.push((
                answer.notification_id.clone(),
                name.clone(),
                answer.message.clone(),
            ));
            name
        }
    };
    *report.outcomes.entry(name).or_default() += 1;
    report.acknowledged += 1;
    report.lost -= 1;
    on_done(Done {
        notification: pending.notification,
        answer,
        resent_after: pending.resent_after,
    });
    false
}

fn short_name(outcome: NotificationOutcome) -> String {
    outcome
        .as_str_name()
        .trim_start_matches("NOTIFICATION_OUTCOME_")
        .to_owned()
}

fn end_kind(end: &Result<(), tonic::Status>) -> String {
    match end {
        Ok(()) => "OK".to_owned(),
        Err(status) => match status.get_details_error_info() {
            Some(info) => format!("{:?}/{}", status.code(), info.reason),
            None => format!("{:?}", status.code()),
        },
    }
}

/// `initial_backoff × 2^(n-1)`, capped at `max_backoff`, drawn evenly from its upper half
/// (jitter, so that gateways cut at once do not come back at once).
fn backoff(config: &GatewayConfig, n: u32) -> Duration {
    let exp = config
        .initial_backoff
        .saturating_mul(1u32 << n.saturating_sub(1).min(16))
        .min(config.max_backoff);
    exp / 2 + exp.mul_f64(rand::random::<f64>() / 2.0)
}

async fn reserve(
    tx: &Option<mpsc::Sender<NotificationIngestRequest>>,
) -> Option<mpsc::Permit<'_, NotificationIngestRequest>> {
    match tx {
        // Err: the transport dropped the request stream; the answer side reports why.
        Some(tx) => tx.reserve().await.ok(),
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

// ---------------------------------------------------------------------------------------------
// A source: JSON lines (one notification per line), or made-up notifications (`--demo N`).
// INTEGRATE: your source is a queue consumer or MDES' callback; map its messages to
// `NotificationIngestRequest` and feed the channel.

/// One line of a JSON-lines file: `notification_id`, `event_time` (RFC 3339) and exactly one of
/// `tokenization_authorization`, `tokenization_complete`, `token_status_changed`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonNotification {
    notification_id: String,
    event_time: String,
    tokenization_authorization: Option<JsonToken>,
    tokenization_complete: Option<JsonToken>,
    token_status_changed: Option<JsonToken>,
}

/// The token fields of the three events (`decision` for a TAR, `status` and `reason` for a
/// status change).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonToken {
    card_contract_id: i64,
    token_unique_reference: String,
    #[serde(default = "click_to_pay_requestor")]
    token_requestor_id: String,
    #[serde(default = "click_to_pay_wallet")]
    wallet_name: String,
    decision: Option<String>,
    status: Option<String>,
    reason: Option<String>,
}

fn click_to_pay_requestor() -> String {
    "50123197928".into()
}

fn click_to_pay_wallet() -> String {
    "MDES for Merchants".into()
}

impl JsonNotification {
    /// The protobuf message.
    pub fn into_request(self) -> Result<Notification, String> {
        let time = time::OffsetDateTime::parse(
            &self.event_time,
            &time::format_description::well_known::Rfc3339,
        )
        .map_err(|e| format!("{}: event_time: {e}", self.notification_id))?;
        let event_time = prost_types::Timestamp {
            seconds: time.unix_timestamp(),
            nanos: i32::try_from(time.nanosecond()).unwrap_or(0),
        };
        let enum_value = |prefix: &str, text: &Option<String>| {
            text.as_deref()
                .map(|t| format!("{prefix}{}", t.trim_start_matches(prefix)))
        };
        let event = match (
            self.tokenization_authorization,
            self.tokenization_complete,
            self.token_status_changed,
        ) {
            (Some(t), None, None) => {
                let name = enum_value("TOKENIZATION_DECISION_", &t.decision);
                let decision = name
                    .as_deref()
                    .and_then(TokenizationDecision::from_str_name)
                    .ok_or(format!("{}: bad or missing decision", self.notification_id))?;
                Event::TokenizationAuthorization(TokenizationAuthorization {
                    card_contract_id: t.card_contract_id,
                    token_unique_reference: t.token_unique_reference,
                    token_requestor_id: t.token_requestor_id,
                    wallet_name: t.wallet_name,
                    decision: decision as i32,
                })
            }
            (None, Some(t), None) => Event::TokenizationComplete(TokenizationComplete {
                card_contract_id: t.card_contract_id,
                token_unique_reference: t.token_unique_reference,
                token_requestor_id: t.token_requestor_id,
                wallet_name: t.wallet_name,
            }),
            (None, None, Some(t)) => {
                let name = enum_value("TOKEN_STATUS_", &t.status);
                let status = name
                    .as_deref()
                    .and_then(TokenStatus::from_str_name)
                    .ok_or(format!("{}: bad or missing status", self.notification_id))?;
                Event::TokenStatusChanged(TokenStatusChanged {
                    card_contract_id: t.card_contract_id,
                    token_unique_reference: t.token_unique_reference,
                    token_requestor_id: t.token_requestor_id,
                    wallet_name: t.wallet_name,
                    status: status as i32,
                    reason: t.reason.unwrap_or_default(),
                })
            }
            _ => {
                return Err(format!(
                    "{}: exactly one event is needed",
                    self.notification_id
                ));
            }
        };
        Ok(NotificationIngestRequest {
            notification_id: self.notification_id,
            event_time: Some(event_time),
            sequence: 0,
            event: Some(event),
        })
    }
}

/// Reads a JSON-lines file (blank lines skipped).
pub fn read_jsonl(text: &str) -> Result<Vec<Notification>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str::<JsonNotification>(line)
                .map_err(|e| format!("line {}: {e}", i + 1))
                .and_then(JsonNotification::into_request)
        })
        .collect()
}

/// `n` made-up notifications, each a TCN for a card of its own (`first_card`, `first_card +
/// 1`, …) dated a second ago, so each is APPLIED the first time and DUPLICATE after.
pub fn demo(n: u64, first_card: i64, run_id: &str) -> Vec<Notification> {
    let now = time::OffsetDateTime::now_utc() - time::Duration::seconds(1);
    (0..n)
        .map(|i| {
            let card = first_card.saturating_add(i64::try_from(i).unwrap_or(i64::MAX));
            NotificationIngestRequest {
                notification_id: format!("demo-{run_id}-{i}"),
                event_time: Some(prost_types::Timestamp {
                    seconds: now.unix_timestamp(),
                    nanos: 0,
                }),
                sequence: 0,
                event: Some(Event::TokenizationComplete(TokenizationComplete {
                    card_contract_id: card,
                    token_unique_reference: format!("DEMO{card:026}"),
                    token_requestor_id: click_to_pay_requestor(),
                    wallet_name: click_to_pay_wallet(),
                })),
            }
        })
        .collect()
}

/// Feeds `notifications` into a channel, `rate` per second at most (0 = as fast as taken).
pub fn feed(notifications: Vec<Notification>, rate: u32) -> mpsc::Receiver<Notification> {
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        let start = Instant::now();
        for (i, n) in notifications.into_iter().enumerate() {
            if rate > 0 {
                let due = start + Duration::from_secs_f64(i as f64 / f64::from(rate));
                tokio::time::sleep_until(due).await;
            }
            if tx.send(n).await.is_err() {
                return;
            }
        }
    });
    rx
}

#[derive(Debug, clap::Parser)]
#[command(about = "A reference NotificationIngest gateway (c2p-enroll)")]
struct Args {
    /// The service's URL.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    endpoint: String,
    /// A JSON-lines file of notifications (see `JsonNotification`).
    #[arg(long, conflicts_with = "demo")]
    input: Option<std::path::PathBuf>,
    /// Made-up notifications instead: this many, one card each from 90000000.
    #[arg(long)]
    demo: Option<u64>,
    /// Notifications per second taken from the source (0 = unpaced).
    #[arg(long, default_value_t = 0)]
    rate: u32,
    /// Most unanswered messages on a stream.
    #[arg(long, default_value_t = 64)]
    window: usize,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    use clap::Parser as _;
    let args = Args::parse();
    let notifications = match (&args.input, args.demo) {
        (Some(path), _) => read_jsonl(&std::fs::read_to_string(path)?)?,
        (None, Some(n)) => demo(n, 90_000_000, &format!("{:08x}", rand::random::<u32>())),
        (None, None) => return Err("give --input FILE or --demo N".into()),
    };
    let mut config = GatewayConfig::new(args.endpoint);
    config.window = args.window;
    let report = run(&config, feed(notifications, args.rate), |_done| {
        // INTEGRATE: acknowledge `_done.notification` to the source here.
    })
    .await?;
    println!(
        "notifications={} sent={} acknowledged={} resent={} lost={} outcomes={:?} failed_answers={} streams={} stream_ends={:?} parked={}",
        report.notifications,
        report.sent,
        report.acknowledged,
        report.resent,
        report.lost,
        report.outcomes,
        report.failed_answers,
        report.streams,
        report.stream_ends,
        report.parked.len()
    );
    for (id, reason, message) in &report.parked {
        println!("parked {id}: {reason}: {message}");
    }
    Ok(())
}
