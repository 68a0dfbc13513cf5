//! `NotificationIngest`'s answers: each message validated, applied and answered (in completion
//! order, at most [`INGEST_WINDOW`] in progress), with its `sequence` echoed. A message that
//! cannot be decoded ends the stream with its error status (`INVALID_ARGUMENT`) after every
//! message before it has been answered, and a drain ends it `UNAVAILABLE` likewise, so a
//! gateway never mistakes a cut stream for a finished one.

use super::convert::{self, EventTimeBounds};
use crate::app::{App, FieldViolation, IngestOutcome};
use crate::metrics;
use crate::proto::v1::{
    self as pb, NotificationIngestRequest, NotificationIngestResponse, NotificationOutcome,
    NotificationRejectReason,
};
use futures::{Stream, StreamExt as _};
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tracing::Instrument as _;

/// Unacknowledged notifications one stream may have in progress: the gateway's backpressure.
pub const INGEST_WINDOW: usize = 32;

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
    let answered = good
        .map(move |n| answer(app.clone(), n, bounds, rpc_span.clone()))
        .buffer_unordered(INGEST_WINDOW)
        .map(Ok);
    // Runs only once every earlier message has its answer.
    let end =
        futures::stream::once(
            async move { broken.lock().unwrap_or_else(|p| p.into_inner()).take() },
        )
        .filter_map(|e| std::future::ready(e.map(Err)));
    answered.chain(end)
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

fn answer(
    app: Arc<App>,
    n: NotificationIngestRequest,
    bounds: EventTimeBounds,
    rpc_span: tracing::Span,
) -> impl std::future::Future<Output = NotificationIngestResponse> + Send + 'static {
    // The id is the caller's: bounded and escaped before it reaches a span.
    let id_field = crate::text::bounded(&n.notification_id, 255);
    let span = tracing::info_span!(parent: &rpc_span, "notification", notification.id = %id_field, notification.sequence = n.sequence, card = tracing::field::Empty, outcome = tracing::field::Empty);
    async move {
        let event = match convert::token_event(&n, bounds) {
            Ok(e) => e,
            Err(rejection) => {
                tracing::Span::current().record("outcome", "rejected");
                metrics::notification("rejected");
                let message = rejection.message();
                return rejected(&n, rejection.reason, message, rejection.violations);
            }
        };
        tracing::Span::current().record("card", event.card_contract_id.get());
        let outcome = app.ingest(&event).await;
        let name = match &outcome {
            IngestOutcome::Applied => "applied",
            IngestOutcome::Duplicate => "duplicate",
            IngestOutcome::Stale => "stale",
            IngestOutcome::Ignored => "ignored",
            IngestOutcome::IdReused | IngestOutcome::RecordUnreadable(_) => "rejected",
            IngestOutcome::Failed(_) => "failed",
        };
        tracing::Span::current().record("outcome", name);
        metrics::notification(name);
        match outcome {
            IngestOutcome::Applied => response(&n, NotificationOutcome::Applied, String::new()),
            IngestOutcome::Duplicate => response(
                &n,
                NotificationOutcome::Duplicate,
                "already applied".into(),
            ),
            IngestOutcome::Stale => response(
                &n,
                NotificationOutcome::Stale,
                "older than the stored state".into(),
            ),
            IngestOutcome::Ignored => response(
                &n,
                NotificationOutcome::Ignored,
                "not a Click to Pay token".into(),
            ),
            IngestOutcome::IdReused => rejected(
                &n,
                NotificationRejectReason::IdReusedWithDifferentContent,
                "this notification_id was seen before for this card with different content; nothing changed".into(),
                vec![FieldViolation {
                    field: "notification_id".into(),
                    description: "reused with different content".into(),
                }],
            ),
            IngestOutcome::RecordUnreadable(why) => rejected(
                &n,
                NotificationRejectReason::RecordUnreadable,
                why,
                Vec::new(),
            ),
            IngestOutcome::Failed(why) => response(&n, NotificationOutcome::Failed, why),
        }
    }
    .instrument(span)
}
