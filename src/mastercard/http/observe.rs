//! What a Mastercard call tells the operator, apart from its retry policy: the `mastercard.http`
//! span of each attempt and its fields, the `c2p_upstream_*` metrics (attempts, retries, breaker
//! state) and the one warn line of a failed call. The retry loop in `http.rs` calls these at the
//! same points as before and records nothing itself.

use super::{AttemptFailure, CallSpec, UpstreamResponse};
use crate::mastercard::breaker::BreakerState;
use crate::mastercard::error::{Api, UpstreamError, UpstreamErrorKind};
use std::time::Duration;

/// The span and metrics of one attempt: opened before it is sent, then told its outcome, the
/// breaker's state after it, and whether the call retries.
pub(super) struct AttemptObserver {
    api: Api,
    operation: &'static str,
    absent_is_answer: bool,
    attempt: u32,
    span: tracing::Span,
    started: std::time::Instant,
}

impl AttemptObserver {
    /// Opens the attempt's `mastercard.http` span, `breaker` being the state that admitted it,
    /// and starts its clock.
    pub(super) fn start(
        api: Api,
        spec: &CallSpec,
        url: &url::Url,
        attempt: u32,
        breaker: BreakerState,
    ) -> Self {
        // A debug span: the exporter takes it (see `telemetry`); at the default log level with
        // no exporter it is never built.
        let span = tracing::debug_span!(
            "mastercard.http",
            otel.kind = "client",
            http.request.method = %spec.method,
            url.path = %url.path(),
            server.address = url.host_str().unwrap_or_default(),
            mastercard.api = api.name(),
            mastercard.operation = spec.operation,
            mastercard.attempt = attempt,
            mastercard.breaker_state = breaker.name(),
            http.response.status_code = tracing::field::Empty,
            mastercard.correlation_id = tracing::field::Empty,
            error.type = tracing::field::Empty,
        );
        Self {
            api,
            operation: spec.operation,
            absent_is_answer: spec.absent_is_answer,
            attempt,
            span,
            started: std::time::Instant::now(),
        }
    }

    /// The span the attempt runs in.
    pub(super) fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// Records the attempt's outcome and hands it back: a failure is counted now; a 2xx is
    /// stamped with the attempt's start and counted once opened and decoded
    /// (`answered`). The span gets the status, correlation id and error type.
    pub(super) fn finished(
        &self,
        mut outcome: Result<UpstreamResponse, AttemptFailure>,
    ) -> Result<UpstreamResponse, AttemptFailure> {
        let outcome_name = match &outcome {
            Ok(_) => "ok",
            Err(f) if self.absent_is_answer && f.kind.is_api_not_found() => "not_found",
            Err(f) => error_type(&f.kind),
        };
        if let Err(failure) = &outcome {
            let reason = match &failure.kind {
                UpstreamErrorKind::Rejected { reason, .. }
                | UpstreamErrorKind::ServerError { reason, .. } => {
                    reason.code.clone().unwrap_or_default()
                }
                _ => String::new(),
            };
            crate::metrics::upstream_attempt(
                self.api.name(),
                self.operation,
                outcome_name,
                &reason,
                self.started,
            );
        }
        tracing::debug!(
            api = self.api.name(),
            operation = self.operation,
            attempt = self.attempt,
            outcome = outcome_name,
            "mastercard call finished"
        );
        match &mut outcome {
            Ok(response) => {
                response.started = self.started;
                self.span
                    .record("http.response.status_code", response.status);
                if let Some(id) = response.correlation.best() {
                    self.span.record("mastercard.correlation_id", id);
                }
            }
            Err(failure) => {
                // "Not held" is an answer of a lifecycle call, not an error of the span.
                if outcome_name != "not_found" {
                    self.span.record("error.type", error_type(&failure.kind));
                }
                if let Some(id) = failure.correlation.best() {
                    self.span.record("mastercard.correlation_id", id);
                }
                if let UpstreamErrorKind::Rejected { status, .. }
                | UpstreamErrorKind::ServerError { status, .. } = &failure.kind
                {
                    self.span.record("http.response.status_code", *status);
                }
            }
        }
        outcome
    }

    /// The breaker's state once the attempt's outcome was recorded in it.
    pub(super) fn breaker_state(&self, state: BreakerState) {
        crate::metrics::breaker_state(self.api.name(), state.gauge());
    }

    /// The call tries again after `delay`.
    pub(super) fn retrying(&self, delay: Duration) {
        tracing::debug!(
            api = %self.api,
            operation = self.operation,
            attempt = self.attempt,
            ?delay,
            "retrying"
        );
        crate::metrics::upstream_retry(self.api.name(), self.operation);
    }
}

/// The metric of a 2xx answer once it was opened and decoded (`ok`) or found undecryptable
/// (`decrypt`) or undecodable (`decode`), timed from the start of its attempt.
pub(super) fn answered(
    api: Api,
    operation: &'static str,
    response: &UpstreamResponse,
    outcome: &'static str,
) {
    crate::metrics::upstream_attempt(api.name(), operation, outcome, "", response.started);
}

/// One warn line per failed call: what, why (type and Mastercard's reason code), which
/// correlation id to quote to Mastercard; no URL query, no body, no card data.
pub(crate) fn log_failure(e: &UpstreamError) {
    let reason = match &e.kind {
        UpstreamErrorKind::Rejected { reason, .. }
        | UpstreamErrorKind::ServerError { reason, .. } => {
            reason.code.as_deref().map(crate::text::excerpt)
        }
        _ => None,
    };
    tracing::warn!(
        api = e.api.name(),
        operation = e.operation,
        error.type = error_type(&e.kind),
        mastercard.reason = reason.as_deref().unwrap_or(""),
        mastercard.correlation_id = e.correlation.best().map(crate::text::excerpt).as_deref().unwrap_or(""),
        attempts = e.attempts,
        "mastercard call failed"
    );
}

/// The `error.type` of spans and logs and the `outcome` label of a failed attempt.
fn error_type(kind: &UpstreamErrorKind) -> &'static str {
    match kind {
        UpstreamErrorKind::ConnectFailed => "connect_failed",
        UpstreamErrorKind::SendFailed => "send_failed",
        UpstreamErrorKind::Timeout => "timeout",
        UpstreamErrorKind::Rejected { .. } => "rejected",
        UpstreamErrorKind::ServerError { .. } => "server_error",
        UpstreamErrorKind::Decode(_) => "decode",
        UpstreamErrorKind::Decrypt(_) => "decrypt",
        UpstreamErrorKind::CircuitOpen { .. } => "circuit_open",
        UpstreamErrorKind::Request(_) => "request",
    }
}
