//! The one place where an application error becomes a `tonic::Status`: `google.rpc.Status`
//! details with `ErrorInfo` (domain [`ERROR_DOMAIN`], a reason from the proto's `ErrorReason`,
//! lowerCamelCase metadata), `RetryInfo` when a retry may succeed, `BadRequest` with every
//! invalid field, and the current `Enrollment` for `CARD_ALREADY_ENROLLED`.

use super::convert;
use crate::app::{AppError, ErrorParts, Source};
use crate::proto::v1::ErrorReason;
use prost::Message as _;
use tonic_types::pb;

/// The `ErrorInfo.domain` of every error: the service's name, as AIP-193 asks.
pub const ERROR_DOMAIN: &str = "enrollment.c2p";

/// How long a caller should wait before retrying on another connection when this replica
/// drains.
const DRAIN_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// UNAVAILABLE `SERVER_DRAINING` with `RetryInfo`: how a call or stream ends when this replica
/// drains (never OK: a watcher resumes, a gateway resends what got no answer).
pub fn draining() -> tonic::Status {
    from_parts(ErrorParts {
        code: tonic::Code::Unavailable as i32,
        reason: ErrorReason::ServerDraining.as_str_name().into(),
        message: "this server is shutting down; retry on a new connection (another replica)".into(),
        metadata: Default::default(),
        retry_after: Some(DRAIN_RETRY),
        violations: Vec::new(),
        enrollment: None,
    })
}

/// DEADLINE_EXCEEDED `DEADLINE_EXCEEDED` without a step: the caller's `grpc-timeout` ran out
/// before the call answered (the envelope layer's answer, in place of tonic's bare CANCELLED).
pub fn deadline_passed() -> tonic::Status {
    from_parts(ErrorParts {
        code: tonic::Code::DeadlineExceeded as i32,
        reason: ErrorReason::DeadlineExceeded.as_str_name().into(),
        message: "the caller's deadline passed before the call could answer".into(),
        metadata: Default::default(),
        retry_after: None,
        violations: Vec::new(),
        enrollment: None,
    })
}

fn any<M: prost::Message>(type_name: &str, message: &M) -> prost_types::Any {
    prost_types::Any {
        type_url: format!("type.googleapis.com/{type_name}"),
        value: message.encode_to_vec(),
    }
}

/// INVALID_ARGUMENT `MALFORMED_REQUEST`: a message that is not protobuf of its type.
pub fn malformed(message: &str) -> tonic::Status {
    from_parts(ErrorParts {
        code: tonic::Code::InvalidArgument as i32,
        reason: ErrorReason::MalformedRequest.as_str_name().into(),
        message: message.into(),
        metadata: Default::default(),
        retry_after: None,
        violations: Vec::new(),
        enrollment: None,
    })
}

/// The status of an error.
pub fn to_status(error: &AppError) -> tonic::Status {
    from_parts(error.parts())
}

/// The status of error parts (also used to replay a stored failure).
pub fn from_parts(parts: ErrorParts) -> tonic::Status {
    let code = tonic::Code::from_i32(parts.code);
    let mut details = vec![any(
        "google.rpc.ErrorInfo",
        &pb::ErrorInfo {
            reason: parts.reason.clone(),
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
        code: parts.code,
        message: parts.message.clone(),
        details,
    };
    tonic::Status::with_details(code, parts.message, status.encode_to_vec().into())
}
