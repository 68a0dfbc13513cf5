//! `c2p.enrollment.v1.EnrollmentService`: each handler converts, calls the app, and maps errors
//! in one place. Spans skip the arguments and record chosen fields only.

use super::auth::{Caller, Denied};
use super::policy::Rpc;
use super::streams::StreamLimits;
use super::{convert, deadline, status, trace};
use crate::app::{App, AppError, Source};
use crate::metrics;
use crate::proto::v1::{
    EnrollCardRequest, EnrollCardResponse, GetClickToPayProfileRequest,
    GetClickToPayProfileResponse, GetEnrollmentStatusRequest, GetEnrollmentStatusResponse,
    NotificationIngestRequest, NotificationIngestResponse, OptOutRequest, OptOutResponse,
    RemoveCardRequest, RemoveCardResponse, UpdateBillingAddressRequest,
    UpdateBillingAddressResponse, UpdateConsumerRequest, UpdateConsumerResponse,
    WatchEnrollmentRequest, WatchEnrollmentResponse, WithdrawOptOutRequest, WithdrawOptOutResponse,
    enrollment_service_server::EnrollmentService,
};
use futures::StreamExt as _;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument as _;

/// A server stream of `T`.
pub type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The service; cheap to clone.
#[derive(Clone)]
pub struct EnrollmentApi {
    pub(super) app: Arc<App>,
    drain: CancellationToken,
    streams: StreamLimits,
    pub(super) default_deadline: std::time::Duration,
    event_time_bounds: convert::EventTimeBounds,
    watch_heartbeat: std::time::Duration,
}

impl EnrollmentApi {
    /// The service over the app; `drain` is cancelled when the server starts draining, which ends
    /// the long-lived streams; `streams` caps them; `default_deadline` bounds unary calls that
    /// bring no deadline; `watch_heartbeat` is the quiet interval after which a watch gets a
    /// heartbeat.
    pub fn new(
        app: Arc<App>,
        drain: CancellationToken,
        streams: StreamLimits,
        default_deadline: std::time::Duration,
        event_time_bounds: convert::EventTimeBounds,
        watch_heartbeat: std::time::Duration,
    ) -> Self {
        Self {
            app,
            drain,
            streams,
            default_deadline,
            event_time_bounds,
            watch_heartbeat,
        }
    }
}

/// The caller named by the auth layer. Every route of the service sits behind that layer, so
/// a request without one was not checked and is refused.
pub(super) fn caller<T>(request: &Request<T>, rpc: Rpc) -> Result<Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| {
            Denied::Unauthenticated.record(rpc, None);
            Denied::Unauthenticated.status(rpc)
        })
}

/// A unary call with its status recorded on the RPC span and counted.
async fn unary<T>(
    rpc: Rpc,
    call: impl std::future::Future<Output = Result<Response<T>, Status>>,
) -> Result<Response<T>, Status> {
    let started = Instant::now();
    let result = call.await;
    trace::record_status(&result);
    metrics::rpc(
        rpc.name(),
        trace::code_name(trace::code_of(&result)),
        trace::reason_of(&result),
        started,
    );
    result
}

#[tonic::async_trait]
impl EnrollmentService for EnrollmentApi {
    // Each call runs inside the RPC span made by `trace::rpc_span` (it skips the arguments); the
    // handlers record chosen fields on it.
    async fn enroll_card(
        &self,
        request: Request<EnrollCardRequest>,
    ) -> Result<Response<EnrollCardResponse>, Status> {
        let started = Instant::now();
        let result = self.enroll_card_inner(request, started).await;
        trace::record_status(&result);
        metrics::rpc(
            "EnrollCard",
            trace::code_name(trace::code_of(&result)),
            trace::reason_of(&result),
            started,
        );
        result
    }

    async fn get_enrollment_status(
        &self,
        request: Request<GetEnrollmentStatusRequest>,
    ) -> Result<Response<GetEnrollmentStatusResponse>, Status> {
        let started = Instant::now();
        let result = self.status_inner(request).await;
        trace::record_status(&result);
        metrics::rpc(
            "GetEnrollmentStatus",
            trace::code_name(trace::code_of(&result)),
            trace::reason_of(&result),
            started,
        );
        result
    }

    async fn remove_card(
        &self,
        request: Request<RemoveCardRequest>,
    ) -> Result<Response<RemoveCardResponse>, Status> {
        unary(Rpc::RemoveCard, self.remove_card_inner(request)).await
    }

    async fn get_click_to_pay_profile(
        &self,
        request: Request<GetClickToPayProfileRequest>,
    ) -> Result<Response<GetClickToPayProfileResponse>, Status> {
        unary(Rpc::GetClickToPayProfile, self.profile_inner(request)).await
    }

    async fn update_consumer(
        &self,
        request: Request<UpdateConsumerRequest>,
    ) -> Result<Response<UpdateConsumerResponse>, Status> {
        unary(Rpc::UpdateConsumer, self.update_consumer_inner(request)).await
    }

    async fn update_billing_address(
        &self,
        request: Request<UpdateBillingAddressRequest>,
    ) -> Result<Response<UpdateBillingAddressResponse>, Status> {
        unary(
            Rpc::UpdateBillingAddress,
            self.update_billing_address_inner(request),
        )
        .await
    }

    async fn opt_out(
        &self,
        request: Request<OptOutRequest>,
    ) -> Result<Response<OptOutResponse>, Status> {
        unary(Rpc::OptOut, self.opt_out_inner(request)).await
    }

    async fn withdraw_opt_out(
        &self,
        request: Request<WithdrawOptOutRequest>,
    ) -> Result<Response<WithdrawOptOutResponse>, Status> {
        unary(Rpc::WithdrawOptOut, self.withdraw_opt_out_inner(request)).await
    }

    type NotificationIngestStream = ResponseStream<NotificationIngestResponse>;

    async fn notification_ingest(
        &self,
        request: Request<Streaming<NotificationIngestRequest>>,
    ) -> Result<Response<Self::NotificationIngestStream>, Status> {
        caller(&request, Rpc::NotificationIngest)?;
        let permit = self.streams.ingest()?;
        let open = metrics::OpenStream::open("NotificationIngest");
        let output = super::ingest::answers(
            self.app.clone(),
            request.into_inner(),
            self.drain.clone(),
            self.event_time_bounds,
            tracing::Span::current(),
        )
        // The gauge and the permit count the stream until it is dropped.
        .map(move |item| {
            let _ = (&open, &permit);
            item
        });
        Ok(Response::new(Box::pin(output)))
    }

    type WatchEnrollmentStream = ResponseStream<WatchEnrollmentResponse>;

    async fn watch_enrollment(
        &self,
        request: Request<WatchEnrollmentRequest>,
    ) -> Result<Response<Self::WatchEnrollmentStream>, Status> {
        let started = Instant::now();
        let result = self.watch_inner(request).await;
        if let Err(status) = &result {
            // A stream that could not be opened counts as a failed call; an opened one is
            // counted (Ok) by its OpenStream guard.
            trace::record_status(&result);
            metrics::rpc(
                "WatchEnrollment",
                trace::code_name(status.code()),
                trace::status_reason(status),
                started,
            );
        }
        result
    }
}

impl EnrollmentApi {
    async fn watch_inner(
        &self,
        request: Request<WatchEnrollmentRequest>,
    ) -> Result<Response<ResponseStream<WatchEnrollmentResponse>>, Status> {
        let deadline = deadline::of(&request, self.default_deadline);
        let caller = caller(&request, Rpc::WatchEnrollment)?;
        let (card, start_after) = convert::watch_request(request.get_ref())
            .map_err(|v| status::to_status(&AppError::InvalidArgument(v)))?;
        tracing::Span::current().record("card", card.get());
        let permit = self.streams.watch()?;
        let (current, source, changes) = self
            .app
            .watch(card, deadline)
            .await
            .map_err(|e| status::to_status(&e))?;
        caller.may_read(&current, Rpc::WatchEnrollment)?;
        let open = metrics::OpenStream::open("WatchEnrollment");
        let stream = super::watch::messages(super::watch::Watch {
            current,
            source,
            changes,
            start_after,
            heartbeat: self.watch_heartbeat,
            drain: self.drain.clone(),
            caller,
        })
        // The gauge and the permit count the stream until it is dropped.
        .map(move |item| {
            let _ = (&open, &permit);
            item
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

impl EnrollmentApi {
    async fn enroll_card_inner(
        &self,
        request: Request<EnrollCardRequest>,
        started: Instant,
    ) -> Result<Response<EnrollCardResponse>, Status> {
        let deadline = deadline::of(&request, self.default_deadline);
        let caller = caller(&request, Rpc::EnrollCard)?;
        // Before anything else: a caller that may not use this program learns nothing more.
        if !caller.may_use(&request.get_ref().program) {
            Denied::ProgramNotAllowed.record(Rpc::EnrollCard, Some(&caller.identity));
            return Err(Denied::ProgramNotAllowed.status(Rpc::EnrollCard));
        }
        let app = self.app.clone();
        let validate_only = request.get_ref().validate_only;
        let command =
            convert::enroll_command(request.into_inner(), caller.identity.to_string(), |p| {
                app.has_program(p)
            })
            .map_err(|v| status::to_status(&AppError::InvalidArgument(v)))?;
        let span = tracing::Span::current();
        span.record("card", command.card_contract_id.get());
        span.record("program", command.program.as_str());
        if validate_only {
            // AIP-163: checked (fields, program, the caller's rights), nothing done.
            span.record("outcome", "validated");
            return Ok(Response::new(EnrollCardResponse {
                enrollment: None,
                replayed: false,
            }));
        }
        // Run to the end even if the caller goes away: the call then records its outcome (or
        // releases its lease and card lock) instead of leaving them to expire.
        // Its Mastercard waits are counted in that task: the call's own time is the rest.
        let app = self.app.clone();
        let call = tokio::spawn(
            metrics::accounting_upstream_wait(async move { app.enroll(command, deadline).await })
                .instrument(span),
        );
        let (enrolled, waited) = call.await.map_err(|e| {
            status::to_status(&AppError::Internal(format!("enrollment task failed: {e}")))
        })?;
        metrics::enroll_own_time(
            match &enrolled {
                Ok(e) if e.replayed => "replayed",
                Ok(_) => "new",
                Err(_) => "error",
            },
            started.elapsed(),
            waited,
        );
        let enrolled = enrolled.map_err(|e| status::from_parts(caller.redact(e.parts())))?;
        Ok(Response::new(EnrollCardResponse {
            enrollment: Some(convert::enrollment(&enrolled.record, Source::Store)),
            replayed: enrolled.replayed,
        }))
    }

    async fn status_inner(
        &self,
        request: Request<GetEnrollmentStatusRequest>,
    ) -> Result<Response<GetEnrollmentStatusResponse>, Status> {
        let deadline = deadline::of(&request, self.default_deadline);
        let caller = caller(&request, Rpc::GetEnrollmentStatus)?;
        let req = request.into_inner();
        let card = convert::card_id(req.card_contract_id)
            .map_err(|v| status::to_status(&AppError::InvalidArgument(v)))?;
        tracing::record_all!(
            tracing::Span::current(),
            card = card.get(),
            refresh = req.refresh
        );
        let (shared, source) = self
            .app
            .status(
                card,
                req.refresh,
                &|program| caller.may_use(program),
                deadline,
            )
            .await
            .map_err(|e| status::to_status(&e))?;
        caller.may_read(shared.record(), Rpc::GetEnrollmentStatus)?;
        Ok(Response::new(convert::status_answer(shared, source)))
    }
}
