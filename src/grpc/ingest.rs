//! `NotificationIngest`'s answers: each message validated, applied and answered, with its
//! `sequence` echoed. The stream is read ahead of the answers (up to [`INGEST_WINDOW`] messages
//! and [`HELD_BYTES`] held), and what was read while the store was busy is applied
//! together: one store call per batch (pipelined script calls on Redis), at most
//! [`BATCHES_IN_FLIGHT`] at a time. Each message is answered once its batch's writes returned,
//! in completion order. A message that cannot be decoded ends the stream with its error status
//! (`INVALID_ARGUMENT`) after every message before it has been answered, and a drain ends it
//! `UNAVAILABLE` likewise, so a gateway never mistakes a cut stream for a finished one.

use super::convert::{self, EventTimeBounds};
use crate::app::{App, FieldViolation, IngestOutcome};
use crate::metrics;
use crate::proto::v1::{
    self as pb, NotificationIngestRequest, NotificationIngestResponse, NotificationOutcome,
    NotificationRejectReason,
};
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt as _, Stream, StreamExt as _};
use prost::Message as _;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tonic::Status;
use tracing::Instrument as _;

/// Messages one stream holds at most (read ahead, being applied, or answered and not yet
/// sent): the gateway's backpressure. Beyond it the server stops reading, and the stream's
/// HTTP/2 window (`server::STREAM_WINDOW`) holds the rest.
pub const INGEST_WINDOW: usize = 2048;

/// Bytes of messages one stream holds at most, read ahead or being applied (messages may be up
/// to `grpc.limits.max_message_bytes`): the stream reads on while less is held, so it holds at
/// most this and one message more. Applied batches free theirs; answers are small (an id of at
/// most 255 characters echoed).
pub const HELD_BYTES: usize = 1 << 20;

/// Store calls one stream has in flight; what is read meanwhile makes the next batch. On Redis
/// a batch waits on two round trips, so more of them in flight keep Redis and the workers busy:
/// with 128 messages in flight, 8 gave 51-57 k acks/s where 4 gave 46-54 k and 2 (polled in the
/// response stream) 40-41 k (3 runs each, 2 cores, batches of up to 512 then); with batches of
/// 32, 16 gave 43-50 k against 8's 42-45 k (6 runs each): within the noise.
pub const BATCHES_IN_FLIGHT: usize = 8;

/// The most notifications in one store call. Smaller batches keep more of them in the
/// pipeline at once, so Redis waits less between them: one stream at 128 in flight, 512 gave
/// 36-42 k acks/s (Redis 0.68-0.70 of a core) where 32 gave 38-49 k (0.78-0.81), 6 runs each
/// alternated on 2 cores; at 1,024 in flight 46-55 k and 51-53 k (3 runs each). A batch still
/// costs a round trip or two whatever its size, which is what a cap much lower would pay for.
pub const MAX_BATCH: usize = 32;

/// The status that ends a stream whose input broke. tonic reports a stream that ends inside a
/// message as `INTERNAL`; from the request side that is the caller's malformed input.
fn input_error(status: Status) -> Status {
    match status.code() {
        tonic::Code::Internal => super::status::malformed(
            "malformed request stream (it ended inside a message, or a frame is invalid)",
        ),
        _ => status,
    }
}

/// The answers to `input`, then its error, if it broke, or UNAVAILABLE `SERVER_DRAINING` if
/// `drain` cut it: a stream the server ended itself never ends OK, so a gateway never takes
/// the messages it could not read for answered.
pub fn answers(
    app: Arc<App>,
    input: impl Stream<Item = Result<NotificationIngestRequest, Status>> + Send + 'static,
    drain: CancellationToken,
    bounds: EventTimeBounds,
    rpc_span: tracing::Span,
) -> impl Stream<Item = Result<NotificationIngestResponse, Status>> + Send + 'static {
    let broken: Arc<Mutex<Option<Status>>> = Arc::new(Mutex::new(None));
    let seen = broken.clone();
    let cut = broken.clone();
    let input = input.take_until(async move {
        drain.cancelled().await;
        let mut end = cut.lock().unwrap_or_else(|p| p.into_inner());
        end.get_or_insert_with(super::status::draining);
    });
    let good = input
        .take_while(move |item| {
            let ok = match item {
                Ok(_) => true,
                Err(status) => {
                    *seen.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(input_error(status.clone()));
                    false
                }
            };
            std::future::ready(ok)
        })
        .filter_map(|item| std::future::ready(item.ok()));
    let answered = Batches {
        input: Some(Box::pin(good)),
        app,
        bounds,
        rpc_span,
        waiting: VecDeque::new(),
        waiting_bytes: 0,
        in_flight: FuturesUnordered::new(),
        in_flight_messages: 0,
        in_flight_bytes: 0,
        done: VecDeque::new(),
    }
    .map(Ok);
    // Runs only once every earlier message has its answer.
    let end =
        futures::stream::once(
            async move { broken.lock().unwrap_or_else(|p| p.into_inner()).take() },
        )
        .filter_map(|e| std::future::ready(e.map(Err)));
    answered.chain(end)
}

type Input = Pin<Box<dyn Stream<Item = NotificationIngestRequest> + Send>>;

/// The read-ahead and the batches of one stream.
struct Batches {
    /// `None` once it ended.
    input: Option<Input>,
    app: Arc<App>,
    bounds: EventTimeBounds,
    rpc_span: tracing::Span,
    /// Read, not yet applied, with their encoded sizes.
    waiting: VecDeque<(NotificationIngestRequest, usize)>,
    /// Their encoded size.
    waiting_bytes: usize,
    /// Batches being applied: each gives its messages' answers.
    in_flight: FuturesUnordered<BoxFuture<'static, Applied>>,
    in_flight_messages: usize,
    /// Their encoded size.
    in_flight_bytes: usize,
    /// Answers not sent yet.
    done: VecDeque<NotificationIngestResponse>,
}

impl Batches {
    fn held(&self) -> usize {
        self.waiting.len() + self.in_flight_messages + self.done.len()
    }

    /// Takes in whatever the transport has, up to the bounds: the stream's DATA frames keep
    /// being consumed while the store works (h2 closes a connection that holds too many small
    /// DATA frames unread), and what arrives makes the next batch.
    fn read_ahead(&mut self, cx: &mut Context<'_>) {
        while self.held() < INGEST_WINDOW && self.waiting_bytes + self.in_flight_bytes < HELD_BYTES
        {
            let Some(input) = self.input.as_mut() else {
                return;
            };
            match input.poll_next_unpin(cx) {
                Poll::Ready(Some(n)) => {
                    let size = n.encoded_len();
                    self.waiting_bytes += size;
                    self.waiting.push_back((n, size));
                }
                Poll::Ready(None) => self.input = None,
                Poll::Pending => return,
            }
        }
    }

    /// Starts a batch of what is waiting while fewer than [`BATCHES_IN_FLIGHT`] run.
    fn start_batches(&mut self) {
        while self.in_flight.len() < BATCHES_IN_FLIGHT && !self.waiting.is_empty() {
            let take = self.waiting.len().min(MAX_BATCH);
            let mut bytes = 0;
            let batch: Arc<Vec<_>> = Arc::new(
                self.waiting
                    .drain(..take)
                    .map(|(n, size)| {
                        bytes += size;
                        n
                    })
                    .collect(),
            );
            self.waiting_bytes -= bytes;
            let messages = batch.len();
            self.in_flight_messages += messages;
            self.in_flight_bytes += bytes;
            // Each batch on a task of its own: its store round trips and merging go on (on
            // either worker) while the connection's task reads and answers; polled inside the
            // response stream, a stream's batches moved only when hyper polled it (4 in
            // flight: 45-47 k vs 44-45 k acks/s). Aborted when the stream is dropped, as the
            // batch's future would have been. The task answers every message even if it panics
            // (`answer_batch`); should it end without answers (cancelled: the runtime shutting
            // down), its messages are answered FAILED here, so none goes unanswered.
            let task = AbortOnDropHandle::new(tokio::spawn(answer_batch(
                self.app.clone(),
                batch.clone(),
                self.bounds,
                self.rpc_span.clone(),
            )));
            self.in_flight.push(Box::pin(async move {
                let answers = task.await.unwrap_or_else(|_| lost(&batch));
                Applied {
                    answers,
                    messages,
                    bytes,
                }
            }));
        }
    }
}

impl Stream for Batches {
    type Item = NotificationIngestResponse;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            this.read_ahead(cx);
            this.start_batches();
            if let Some(answer) = this.done.pop_front() {
                return Poll::Ready(Some(answer));
            }
            if let Poll::Ready(Some(applied)) = this.in_flight.poll_next_unpin(cx) {
                this.in_flight_messages -= applied.messages;
                this.in_flight_bytes -= applied.bytes;
                this.done.extend(applied.answers);
                continue;
            }
            if this.input.is_none() && this.waiting.is_empty() && this.in_flight.is_empty() {
                return Poll::Ready(None);
            }
            return Poll::Pending;
        }
    }
}

/// A batch's answers, and what it held.
struct Applied {
    answers: Vec<NotificationIngestResponse>,
    messages: usize,
    bytes: usize,
}

/// The answers of a batch whose processing panicked (it should not: the store's errors are
/// outcomes) or whose task was cancelled: every message answered FAILED, for the gateway to
/// resend.
fn lost(batch: &[NotificationIngestRequest]) -> Vec<NotificationIngestResponse> {
    batch
        .iter()
        .map(|n| {
            answered(n, "failed");
            response(
                n,
                NotificationOutcome::Failed,
                "not applied, resend: the batch failed".into(),
            )
        })
        .collect()
}

fn response(
    n: &NotificationIngestRequest,
    outcome: NotificationOutcome,
    message: String,
) -> NotificationIngestResponse {
    NotificationIngestResponse {
        // An id over its bound is not echoed whole.
        notification_id: n.notification_id.chars().take(255).collect(),
        outcome: outcome as i32,
        message,
        sequence: n.sequence,
        reject_reason: NotificationRejectReason::Unspecified as i32,
        field_violations: Vec::new(),
    }
}

fn rejected(
    n: &NotificationIngestRequest,
    reason: NotificationRejectReason,
    message: String,
    violations: Vec<FieldViolation>,
) -> NotificationIngestResponse {
    NotificationIngestResponse {
        reject_reason: reason as i32,
        field_violations: violations
            .into_iter()
            .map(|v| pb::FieldViolation {
                field: v.field,
                description: v.description,
            })
            .collect(),
        ..response(n, NotificationOutcome::Rejected, message)
    }
}

/// Validates the messages of `batch` and applies the valid ones in one store call: an answer
/// per message, in order, once the writes returned; all of them FAILED if that panicked. One
/// span per batch; each message's outcome is a debug event (with its id, bounded and escaped:
/// it is the caller's).
fn answer_batch(
    app: Arc<App>,
    batch: Arc<Vec<NotificationIngestRequest>>,
    bounds: EventTimeBounds,
    rpc_span: tracing::Span,
) -> impl std::future::Future<Output = Vec<NotificationIngestResponse>> + Send + 'static {
    let span = tracing::info_span!(parent: &rpc_span, "notifications", count = batch.len());
    async move {
        let answers = std::panic::AssertUnwindSafe(apply_batch(&app, &batch, bounds))
            .catch_unwind()
            .await;
        answers.unwrap_or_else(|_| lost(&batch))
    }
    .instrument(span)
}

/// The answers of `batch`, in order (see [`answer_batch`]).
async fn apply_batch(
    app: &App,
    batch: &[NotificationIngestRequest],
    bounds: EventTimeBounds,
) -> Vec<NotificationIngestResponse> {
    let mut answers = Vec::with_capacity(batch.len());
    let mut events = Vec::with_capacity(batch.len());
    for n in batch {
        match convert::token_event(n, bounds) {
            Ok(event) => {
                events.push(event);
                answers.push(None);
            }
            Err(rejection) => {
                answered(n, "rejected");
                let message = rejection.message();
                answers.push(Some(rejected(
                    n,
                    rejection.reason,
                    message,
                    rejection.violations,
                )));
            }
        }
    }
    let mut outcomes = app.ingest_all(events).await.into_iter();
    batch
        .iter()
        .zip(answers)
        .map(|(n, ready)| {
            ready.unwrap_or_else(|| {
                let outcome = outcomes.next().unwrap_or_else(|| {
                    IngestOutcome::Failed("not applied, resend: no outcome".into())
                });
                answer(n, outcome)
            })
        })
        .collect()
}

/// The `event` label of a message: which notification it carries.
fn event_name(n: &NotificationIngestRequest) -> &'static str {
    use pb::notification_ingest_request::Event;
    match n.event {
        Some(Event::TokenizationAuthorization(_)) => "tar",
        Some(Event::TokenizationComplete(_)) => "tcn",
        Some(Event::TokenStatusChanged(_)) => "status_change",
        None => "none",
    }
}

/// Counts and traces one message's outcome.
fn answered(n: &NotificationIngestRequest, outcome: &'static str) {
    metrics::notification(event_name(n), outcome);
    tracing::debug!(
        notification.id = %crate::text::bounded(&n.notification_id, 255),
        notification.sequence = n.sequence,
        outcome,
        "notification answered"
    );
}

fn answer(n: &NotificationIngestRequest, outcome: IngestOutcome) -> NotificationIngestResponse {
    let name = match &outcome {
        IngestOutcome::Applied => "applied",
        IngestOutcome::Duplicate => "duplicate",
        IngestOutcome::Stale => "stale",
        IngestOutcome::Ignored => "ignored",
        IngestOutcome::IdReused | IngestOutcome::RecordUnreadable(_) => "rejected",
        IngestOutcome::Failed(_) => "failed",
    };
    answered(n, name);
    match outcome {
        IngestOutcome::Applied => response(n, NotificationOutcome::Applied, String::new()),
        IngestOutcome::Duplicate => {
            response(n, NotificationOutcome::Duplicate, "already applied".into())
        }
        IngestOutcome::Stale => response(
            n,
            NotificationOutcome::Stale,
            "older than the stored state".into(),
        ),
        IngestOutcome::Ignored => response(
            n,
            NotificationOutcome::Ignored,
            "not a Click to Pay token".into(),
        ),
        IngestOutcome::IdReused => rejected(
            n,
            NotificationRejectReason::IdReusedWithDifferentContent,
            "this notification_id was seen before for this card with different content; nothing changed".into(),
            vec![FieldViolation {
                field: "notification_id".into(),
                description: "reused with different content".into(),
            }],
        ),
        IngestOutcome::RecordUnreadable(why) => rejected(
            n,
            NotificationRejectReason::RecordUnreadable,
            why,
            Vec::new(),
        ),
        IngestOutcome::Failed(why) => response(n, NotificationOutcome::Failed, why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::tests::fakes::{Op, world};
    use pb::notification_ingest_request::Event;
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    const ANY_TIME: EventTimeBounds = EventTimeBounds {
        max_future: Duration::from_secs(1 << 40),
        max_age: Duration::from_secs(1 << 40),
    };

    /// A Click to Pay TCN (applied by the store), or with `pad` bytes of id an invalid one
    /// (answered REJECTED without a store call, but held with its batch until it returns).
    fn message(sequence: u64, card: i64, pad: usize) -> NotificationIngestRequest {
        NotificationIngestRequest {
            notification_id: if pad == 0 {
                format!("n-{sequence}")
            } else {
                "x".repeat(pad)
            },
            event_time: Some(prost_types::Timestamp {
                seconds: 1_800_000_000,
                nanos: 0,
            }),
            sequence,
            event: Some(Event::TokenizationComplete(pb::TokenizationComplete {
                card_contract_id: card,
                token_unique_reference: format!("DM4MMC{card:010}"),
                token_requestor_id: "50123197928".into(),
                wallet_name: "MDES for Merchants".into(),
            })),
        }
    }

    #[tokio::test]
    async fn a_stream_holds_at_most_its_byte_bound_while_its_batches_are_applied() {
        const CHUNKS: u64 = 20;
        const PAD: usize = 30 * 1024;
        let w = world();
        // Every store call waits until the test opens it: the batches stay in flight.
        let gates: Vec<_> = (1..=CHUNKS as usize)
            .map(|n| w.store.pause(Op::ApplyNotification, n))
            .collect();
        // Chunks of 32 (a batch each while fewer than BATCHES_IN_FLIGHT run): one valid TCN,
        // then 31 messages of 30 KiB; the transport has nothing between chunks.
        let taken = Arc::new(AtomicUsize::new(0));
        let counted = taken.clone();
        let input = futures::stream::iter(0..CHUNKS)
            .then(|chunk| async move {
                tokio::task::yield_now().await;
                futures::stream::iter((0..32).map(move |i| {
                    let sequence = chunk * 32 + i;
                    message(
                        sequence,
                        70_001 + chunk as i64,
                        if i == 0 { 0 } else { PAD },
                    )
                }))
            })
            .flatten()
            .inspect(move |n| {
                counted.fetch_add(n.encoded_len(), Ordering::SeqCst);
            })
            .map(Ok);
        let mut answers = Box::pin(answers(
            w.app.clone(),
            input,
            CancellationToken::new(),
            ANY_TIME,
            tracing::Span::none(),
        ));
        let early = tokio::time::timeout(Duration::from_millis(300), answers.next()).await;
        assert!(early.is_err(), "answered before the store returned");
        let held = taken.load(Ordering::SeqCst);
        let largest = message(1, 70_001, PAD).encoded_len();
        assert!(
            held <= HELD_BYTES + largest,
            "{held} bytes taken in while the store held every batch (bound {HELD_BYTES} + one message of {largest})"
        );
        assert!(held >= HELD_BYTES, "{held} bytes: it stopped reading early");
        for gate in &gates {
            gate.open();
        }
        let mut sequences = HashSet::new();
        while let Some(answer) = tokio::time::timeout(Duration::from_secs(10), answers.next())
            .await
            .expect("every message answered once the store returns")
        {
            let answer = answer.unwrap();
            let expected = if answer.sequence % 32 == 0 {
                NotificationOutcome::Applied
            } else {
                NotificationOutcome::Rejected
            };
            assert_eq!(answer.outcome, expected as i32, "{answer:?}");
            assert!(
                sequences.insert(answer.sequence),
                "answered twice: {answer:?}"
            );
        }
        assert_eq!(sequences.len(), CHUNKS as usize * 32);
    }

    #[test]
    fn a_batch_whose_task_is_cancelled_is_answered_failed() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let w = runtime.block_on(async { world() });
        let _held = w.store.pause(Op::ApplyNotification, 1);
        let input = futures::stream::iter([Ok(message(7, 70_001, 0))]);
        let mut answers = Box::pin(answers(
            w.app.clone(),
            input,
            CancellationToken::new(),
            ANY_TIME,
            tracing::Span::none(),
        ));
        runtime.block_on(async {
            let early = tokio::time::timeout(Duration::from_millis(100), answers.next()).await;
            assert!(early.is_err(), "answered before the store returned");
        });
        // The runtime goes (a shutdown), and with it the batch's task, unanswered.
        drop(runtime);
        let answer = futures::executor::block_on(answers.next())
            .expect("the message is answered, not left out of a stream that ends OK")
            .unwrap();
        assert_eq!(answer.sequence, 7);
        assert_eq!(
            answer.outcome,
            NotificationOutcome::Failed as i32,
            "{answer:?}"
        );
        assert!(futures::executor::block_on(answers.next()).is_none());
    }
}
