//! The span of every RPC: W3C trace context (`traceparent`, `tracestate`) taken from the request
//! metadata so the caller's trace continues here, a `request_id` (chosen by the envelope layer:
//! the caller's `x-request-id`, or a new one, the same the response carries) and the
//! `trace_id`, which every log line inside the call carries.
//!
//! A call draws one random 128-bit id ([`CallId`], from the thread's generator: no system call)
//! and makes both ids from it when it needs them: the request id when the caller sent none, the
//! trace id when neither an exporter nor a `traceparent` gives one (then the trace id is the
//! request id's hex digits, so the two find each other).

use opentelemetry::propagation::Extractor;
use opentelemetry::trace::TraceContextExt as _;
use tonic::codegen::http;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// The trace id of a `traceparent` header (`00-<32 hex>-<16 hex>-<2 hex>`).
fn traceparent_trace_id(headers: &http::HeaderMap) -> Option<String> {
    let value = headers.get("traceparent")?.to_str().ok()?;
    let id = value.split('-').nth(1)?;
    (id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit()) && id != "0".repeat(32))
        .then(|| id.to_ascii_lowercase())
}

/// The random id of one call, drawn once: the source of the ids the call makes itself.
#[derive(Debug, Clone, Copy)]
pub struct CallId(uuid::Uuid);

impl CallId {
    /// A fresh id (a version 4 UUID from the thread's random generator).
    pub fn draw() -> Self {
        Self(uuid::Builder::from_random_bytes(rand::random()).into_uuid())
    }

    /// As a request id: the hyphenated UUID.
    pub fn request_id(self) -> String {
        self.0.hyphenated().to_string()
    }

    /// As a trace id: 32 lowercase hex digits.
    pub fn trace_id(self) -> String {
        self.0.simple().to_string()
    }
}

/// The span of one RPC to `path` (`/service/method`) with request `headers`; handlers record
/// `card`, `program`, `refresh`, `outcome` and the status. `call` makes the trace id when
/// neither the exporter nor the caller's `traceparent` gives one.
pub fn rpc_span(
    path: &str,
    headers: &http::HeaderMap,
    request_id: &str,
    call: CallId,
) -> tracing::Span {
    let path = path.trim_start_matches('/');
    let (service, method) = path.split_once('/').unwrap_or((path, ""));
    let span = tracing::info_span!(
        "rpc",
        otel.name = path,
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = Empty,
        request_id = %request_id,
        trace_id = Empty,
        card = Empty,
        program = Empty,
        refresh = Empty,
        outcome = Empty,
    );
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&Headers(headers)));
    // Without an exporter the span has no OpenTelemetry context; this then does nothing.
    let _ = span.set_parent(parent);
    let exported = span.context().span().span_context().trace_id();
    let trace_id = if exported != opentelemetry::trace::TraceId::INVALID {
        exported.to_string()
    } else {
        traceparent_trace_id(headers).unwrap_or_else(|| call.trace_id())
    };
    span.record("trace_id", trace_id.as_str());
    span
}

/// The gRPC code of a handler's result.
pub fn code_of<T>(result: &Result<T, tonic::Status>) -> tonic::Code {
    match result {
        Ok(_) => tonic::Code::Ok,
        Err(s) => s.code(),
    }
}

/// The name of a gRPC code as the metrics label it (`Ok`, `NotFound`, ...: its `Debug` form),
/// without formatting a string per call.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "Ok",
        Code::Cancelled => "Cancelled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// The `ErrorInfo` reason of a handler's result (an `ErrorReason` name), `""` for OK: the
/// `reason` label of `c2p_grpc_requests_total`. Every status the service makes carries one; a
/// status without one (tonic's own) gets the reason the envelope layer will give it.
pub fn reason_of<T>(result: &Result<T, tonic::Status>) -> &'static str {
    match result {
        Ok(_) => "",
        Err(status) => status_reason(status),
    }
}

/// The `ErrorInfo` reason of an error status, as [`reason_of`].
pub fn status_reason(status: &tonic::Status) -> &'static str {
    use tonic_types::StatusExt as _;
    status
        .get_details_error_info()
        .and_then(|info| crate::proto::v1::ErrorReason::from_str_name(&info.reason))
        .unwrap_or_else(|| super::envelope::fallback_reason(status.code()))
        .as_str_name()
}

/// Records the outcome of a unary call on the current RPC span.
pub fn record_status<T>(result: &Result<T, tonic::Status>) {
    let span = tracing::Span::current();
    // One record of both: each record is a pass through every layer.
    tracing::record_all!(
        span,
        rpc.grpc.status_code = code_of(result) as i32,
        outcome = if result.is_ok() { "ok" } else { "error" }
    );
}

#[cfg(test)]
mod code_name_tests {
    // The label must stay what `format!("{code:?}")` gave: dashboards and alerts select on it.
    #[test]
    fn every_code_is_named_as_its_debug_form() {
        for n in 0..=16 {
            let code = tonic::Code::from_i32(n);
            assert_eq!(super::code_name(code), format!("{code:?}"));
        }
    }
}
