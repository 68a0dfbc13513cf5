//! The one place where an application error becomes a `tonic::Status`: `google.rpc.Status`
//! details with `ErrorInfo` (domain [`ERROR_DOMAIN`], a reason from the proto's `ErrorReason`,
//! lowerCamelCase metadata), `RetryInfo` when a retry may succeed, `BadRequest` with every
//! invalid field, and the current `Enrollment` for `CARD_ALREADY_ENROLLED`.

use super::convert;
use crate::app::{AppError, ErrorParts, FieldViolation, Reason, Source};
use crate::domain::EnrollmentRecord;
use crate::proto::v1::ErrorReason;
use prost::Message as _;
use std::collections::BTreeMap;
use std::time::Duration;
use tonic_types::pb;

/// The `ErrorInfo.domain` of every error: the service's name, as AIP-193 asks.
pub const ERROR_DOMAIN: &str = "enrollment.c2p";

/// Everything an error status of the service is made of: the gRPC code (chosen in this layer
/// only), an `ErrorReason` name, and the details.
#[derive(Debug, Clone)]
pub struct Problem {
    /// The gRPC code.
    pub code: tonic::Code,
    /// The `ErrorInfo.reason`: an `ErrorReason` value's name.
    pub reason: &'static str,
    /// Human-readable message (no card data).
    pub message: String,
    /// `ErrorInfo.metadata` (lowerCamelCase keys).
    pub metadata: BTreeMap<String, String>,
    /// `RetryInfo.retry_delay`, when a retry may succeed.
    pub retry_after: Option<Duration>,
    /// `BadRequest.field_violations`.
    pub violations: Vec<FieldViolation>,
    /// The enrollment carried in the details.
    pub enrollment: Option<EnrollmentRecord>,
}

impl Problem {
    /// A problem with no details but its reason.
    pub fn new(code: tonic::Code, reason: ErrorReason, message: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.as_str_name(),
            message: message.into(),
            metadata: BTreeMap::new(),
            retry_after: None,
            violations: Vec::new(),
            enrollment: None,
        }
    }
}

/// The gRPC code of each reason the app gives: the one table of it (the proto's `ErrorReason`
/// comments and the README's error table say the same; `grpc/reasons.rs` checks it).
pub fn code_of(reason: Reason) -> tonic::Code {
    use tonic::Code;
    match reason {
        Reason::InvalidRequest => Code::InvalidArgument,
        Reason::IdempotencyKeyReused => Code::FailedPrecondition,
        Reason::RequestInProgress | Reason::EnrollmentInProgress => Code::Aborted,
        Reason::CardAlreadyEnrolled => Code::AlreadyExists,
        Reason::CardContractNotFound => Code::NotFound,
        Reason::CardNotEligible | Reason::UpstreamRejected => Code::FailedPrecondition,
        Reason::ConsumerOptedOut | Reason::CardNotEnrolled => Code::FailedPrecondition,
        Reason::ClickToPayIdsUnknown => Code::FailedPrecondition,
        Reason::NotInClickToPay => Code::NotFound,
        Reason::UpstreamUnavailable | Reason::StoreUnavailable => Code::Unavailable,
        Reason::UpstreamInvalidResponse | Reason::Internal => Code::Internal,
        Reason::DeadlineExceeded => Code::DeadlineExceeded,
        // Never an RPC error (a record's failure), but a replayed one must still map.
        Reason::EnrollmentNotConfirmed => Code::FailedPrecondition,
    }
}

/// How long a caller should wait before retrying on another connection when this replica
/// drains.
const DRAIN_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// UNAVAILABLE `SERVER_DRAINING` with `RetryInfo`: how a call or stream ends when this replica
/// drains (never OK: a watcher resumes, a gateway resends what got no answer).
pub fn draining() -> tonic::Status {
    build(Problem {
        retry_after: Some(DRAIN_RETRY),
        ..Problem::new(
            tonic::Code::Unavailable,
            ErrorReason::ServerDraining,
            "this server is shutting down; retry on a new connection (another replica)",
        )
    })
}

/// DEADLINE_EXCEEDED `DEADLINE_EXCEEDED` without a step: the caller's `grpc-timeout` ran out
/// before the call answered (the envelope layer's answer, in place of tonic's bare CANCELLED).
pub fn deadline_passed() -> tonic::Status {
    build(Problem::new(
        tonic::Code::DeadlineExceeded,
        ErrorReason::DeadlineExceeded,
        "the caller's deadline passed before the call could answer",
    ))
}

fn any<M: prost::Message>(type_name: &str, message: &M) -> prost_types::Any {
    prost_types::Any {
        type_url: format!("type.googleapis.com/{type_name}"),
        value: message.encode_to_vec(),
    }
}

/// INVALID_ARGUMENT `MALFORMED_REQUEST`: a message that is not protobuf of its type.
pub fn malformed(message: &str) -> tonic::Status {
    build(Problem::new(
        tonic::Code::InvalidArgument,
        ErrorReason::MalformedRequest,
        message,
    ))
}

/// The status of an error.
pub fn to_status(error: &AppError) -> tonic::Status {
    from_parts(error.parts())
}

/// The status of an app error's parts (also used to replay a stored failure).
pub fn from_parts(parts: ErrorParts) -> tonic::Status {
    build(Problem {
        code: code_of(parts.reason),
        reason: parts.reason.name(),
        message: parts.message,
        metadata: parts.metadata,
        retry_after: parts.retry_after,
        violations: parts.violations,
        enrollment: parts.enrollment,
    })
}

/// The status of a problem: `google.rpc.Status` details with `ErrorInfo`, `RetryInfo`,
/// `BadRequest` and the enrollment, as the problem has them.
pub fn build(parts: Problem) -> tonic::Status {
    let code = parts.code;
    let mut details = vec![any(
        "google.rpc.ErrorInfo",
        &pb::ErrorInfo {
            reason: parts.reason.into(),
            domain: ERROR_DOMAIN.into(),
            metadata: parts.metadata.clone().into_iter().collect(),
        },
    )];
    if let Some(delay) = parts.retry_after {
        details.push(any(
            "google.rpc.RetryInfo",
            &pb::RetryInfo {
                retry_delay: prost_types::Duration::try_from(delay).ok(),
            },
        ));
    }
    if !parts.violations.is_empty() {
        details.push(any(
            "google.rpc.BadRequest",
            &pb::BadRequest {
                field_violations: parts
                    .violations
                    .iter()
                    .map(|v| pb::bad_request::FieldViolation {
                        field: v.field.clone(),
                        description: v.description.clone(),
                        ..Default::default()
                    })
                    .collect(),
            },
        ));
    }
    if let Some(enrollment) = &parts.enrollment {
        details.push(any(
            "c2p.enrollment.v1.Enrollment",
            &convert::enrollment(enrollment, Source::Store),
        ));
    }
    let status = pb::Status {
        code: code as i32,
        message: parts.message.clone(),
        details,
    };
    tonic::Status::with_details(code, parts.message, status.encode_to_vec().into())
}
