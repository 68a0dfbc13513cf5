//! `c2p.enrollment.v1.EnrollmentService`: each handler converts, calls the app, and maps errors
//! in one place. Spans skip the arguments and record chosen fields only.

use super::{convert, deadline, status};
use crate::app::{App, AppError, IngestOutcome, Source};
use crate::proto::v1::{
    EnrollCardRequest, EnrollCardResponse, GetEnrollmentStatusRequest, GetEnrollmentStatusResponse,
    NotificationIngestRequest, NotificationIngestResponse, NotificationOutcome,
    WatchEnrollmentRequest, WatchEnrollmentResponse, enrollment_service_server::EnrollmentService,
};
use futures::StreamExt as _;
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

/// A server stream of `T`.
pub type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Unacknowledged notifications one stream may have in progress: the gateway's backpressure.
const INGEST_WINDOW: usize = 32;

/// The service; cheap to clone.
#[derive(Clone)]
pub struct EnrollmentApi {
    app: Arc<App>,
    caller_header: String,
    drain: CancellationToken,
}

impl EnrollmentApi {
    /// The service over the app; `drain` is cancelled when the server starts draining, which ends
    /// the long-lived streams.
    pub fn new(app: Arc<App>, caller_header: String, drain: CancellationToken) -> Self {
        Self {
            app,
            caller_header,
            drain,
        }
    }

    fn caller<T>(&self, request: &Request<T>) -> String {
        request
            .metadata()
            .get(self.caller_header.as_str())
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .unwrap_or("default")
            .to_owned()
    }
}

fn ingest_response(
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

#[tonic::async_trait]
impl EnrollmentService for EnrollmentApi {
    #[tracing::instrument(name = "EnrollCard", skip_all, fields(card = tracing::field::Empty, program = tracing::field::Empty, outcome = tracing::field::Empty))]
    async fn enroll_card(
        &self,
        request: Request<EnrollCardRequest>,
    ) -> Result<Response<EnrollCardResponse>, Status> {
        let deadline = deadline::of(&request);
        let caller = self.caller(&request);
        let app = self.app.clone();
        let command = convert::enroll_command(request.into_inner(), caller, |p| app.has_program(p))
            .map_err(|v| status::to_status(&AppError::InvalidArgument(v)))?;
        let span = tracing::Span::current();
        span.record("card", command.card_contract_id.get());
        span.record("program", command.program.as_str());
        let result = self.app.enroll(command, deadline).await;
        span.record("outcome", if result.is_ok() { "ok" } else { "error" });
        let record = result.map_err(|e| status::to_status(&e))?;
        Ok(Response::new(EnrollCardResponse {
            enrollment: Some(convert::enrollment(&record, Source::Store)),
        }))
    }

    #[tracing::instrument(name = "GetEnrollmentStatus", skip_all, fields(card = tracing::field::Empty, refresh = tracing::field::Empty))]
    async fn get_enrollment_status(
        &self,
        request: Request<GetEnrollmentStatusRequest>,
    ) -> Result<Response<GetEnrollmentStatusResponse>, Status> {
        let deadline = deadline::of(&request);
        let req = request.into_inner();
        let card = convert::card_id(req.card_contract_id)
            .map_err(|v| status::to_status(&AppError::InvalidArgument(v)))?;
        tracing::Span::current().record("card", card.get());
        tracing::Span::current().record("refresh", req.refresh);
        let (record, source) = self
            .app
            .status(card, req.refresh, deadline)
            .await
            .map_err(|e| status::to_status(&e))?;
        Ok(Response::new(GetEnrollmentStatusResponse {
            enrollment: Some(convert::enrollment(&record, source)),
        }))
    }

    type NotificationIngestStream = ResponseStream<NotificationIngestResponse>;

    #[tracing::instrument(name = "NotificationIngest", skip_all)]
    async fn notification_ingest(
        &self,
        request: Request<Streaming<NotificationIngestRequest>>,
    ) -> Result<Response<Self::NotificationIngestStream>, Status> {
        let app = self.app.clone();
        let input = request
            .into_inner()
            .take_until(self.drain.clone().cancelled_owned());
        // At most INGEST_WINDOW notifications are in progress; the rest wait in the transport,
        // which pushes back on the gateway instead of growing a buffer here.
        let output = input
            .take_while(|item| std::future::ready(item.is_ok()))
            .filter_map(|item| std::future::ready(item.ok()))
            .map(move |n| {
                let app = app.clone();
                async move {
                    let event = match convert::token_event(&n) {
                        Ok(e) => e,
                        Err(why) => {
                            return Ok(ingest_response(
                                n.notification_id,
                                NotificationOutcome::Rejected,
                                why,
                            ));
                        }
                    };
                    let (outcome, message) = match app.ingest(&event).await {
                        IngestOutcome::Applied => (NotificationOutcome::Applied, String::new()),
                        IngestOutcome::Duplicate => {
                            (NotificationOutcome::Duplicate, "already applied".into())
                        }
                        IngestOutcome::Stale => (
                            NotificationOutcome::Stale,
                            "older than the stored state".into(),
                        ),
                        IngestOutcome::Ignored => (
                            NotificationOutcome::Ignored,
                            "not a Click to Pay token".into(),
                        ),
                        IngestOutcome::Failed(why) => (NotificationOutcome::Failed, why),
                    };
                    Ok(ingest_response(n.notification_id, outcome, message))
                }
            })
            .buffer_unordered(INGEST_WINDOW);
        Ok(Response::new(Box::pin(output)))
    }

    type WatchEnrollmentStream = ResponseStream<WatchEnrollmentResponse>;

    #[tracing::instrument(name = "WatchEnrollment", skip_all, fields(card = tracing::field::Empty))]
    async fn watch_enrollment(
        &self,
        request: Request<WatchEnrollmentRequest>,
    ) -> Result<Response<Self::WatchEnrollmentStream>, Status> {
        let card = convert::card_id(request.get_ref().card_contract_id)
            .map_err(|v| status::to_status(&AppError::InvalidArgument(v)))?;
        tracing::Span::current().record("card", card.get());
        let (current, changes) = self
            .app
            .watch(card)
            .await
            .map_err(|e| status::to_status(&e))?;
        let mut last = current.clone();
        let changes = changes
            .take_until(self.drain.clone().cancelled_owned())
            .filter_map(move |record| {
                // Writes that changed nothing visible are not repeated to the watcher.
                let fresh = record != last;
                last = record.clone();
                async move { fresh.then_some(record) }
            });
        let stream = futures::stream::once(async move { current })
            .chain(changes)
            .map(|record| {
                Ok(WatchEnrollmentResponse {
                    enrollment: Some(convert::enrollment(&record, Source::Store)),
                })
            });
        Ok(Response::new(Box::pin(stream)))
    }
}
