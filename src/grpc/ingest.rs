//! `NotificationIngest`'s answers: each message validated, applied and answered (in completion
//! order, at most [`INGEST_WINDOW`] in progress). A message that cannot be decoded ends the
//! stream with its error status (`INVALID_ARGUMENT`) after every message before it has been
//! answered, so a gateway never mistakes a cut stream for a finished one.

use super::convert::{self, EventTimeBounds};
use crate::app::{App, IngestOutcome};
use crate::metrics;
use crate::proto::v1::{
    NotificationIngestRequest, NotificationIngestResponse, NotificationOutcome,
};
use futures::{Stream, StreamExt as _};
use std::sync::{Arc, Mutex};
use tonic::Status;
use tracing::Instrument as _;

/// Unacknowledged notifications one stream may have in progress: the gateway's backpressure.
pub const INGEST_WINDOW: usize = 32;

/// The status that ends a stream whose input broke. tonic reports a stream that ends inside a
/// message as `INTERNAL`; from the request side that is the caller's malformed input.
fn input_error(status: Status) -> Status {
    match status.code() {
        tonic::Code::Internal => Status::invalid_argument(
            "malformed request stream (it ended inside a message, or a frame is invalid)",
        ),
        _ => status,
    }
}

/// The answers to `input`, then its error, if it broke.
pub fn answers(
    app: Arc<App>,
    input: impl Stream<Item = Result<NotificationIngestRequest, Status>> + Send + 'static,
    bounds: EventTimeBounds,
    rpc_span: tracing::Span,
) -> impl Stream<Item = Result<NotificationIngestResponse, Status>> + Send + 'static {
    let broken: Arc<Mutex<Option<Status>>> = Arc::new(Mutex::new(None));
    let seen = broken.clone();
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
    id: String,
    outcome: NotificationOutcome,
    message: String,
) -> NotificationIngestResponse {
    NotificationIngestResponse {
        notification_id: id,
        outcome: outcome as i32,
        message,
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
    let span = tracing::info_span!(parent: &rpc_span, "notification", notification.id = %id_field, card = tracing::field::Empty, outcome = tracing::field::Empty);
    async move {
        let event = match convert::token_event(&n, bounds) {
            Ok(e) => e,
            Err(why) => {
                tracing::Span::current().record("outcome", "rejected");
                metrics::notification("rejected");
                // An id over its bound is not echoed whole.
                let id: String = n.notification_id.chars().take(255).collect();
                return response(id, NotificationOutcome::Rejected, why);
            }
        };
        tracing::Span::current().record("card", event.card_contract_id.get());
        let (outcome, name, message) = match app.ingest(&event).await {
            IngestOutcome::Applied => (NotificationOutcome::Applied, "applied", String::new()),
            IngestOutcome::Duplicate => (
                NotificationOutcome::Duplicate,
                "duplicate",
                "already applied".into(),
            ),
            IngestOutcome::Stale => (
                NotificationOutcome::Stale,
                "stale",
                "older than the stored state".into(),
            ),
            IngestOutcome::Ignored => (
                NotificationOutcome::Ignored,
                "ignored",
                "not a Click to Pay token".into(),
            ),
            IngestOutcome::Rejected(why) => (NotificationOutcome::Rejected, "rejected", why),
            IngestOutcome::Failed(why) => (NotificationOutcome::Failed, "failed", why),
        };
        tracing::Span::current().record("outcome", name);
        metrics::notification(name);
        response(n.notification_id, outcome, message)
    }
    .instrument(span)
}
