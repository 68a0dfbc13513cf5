//! The one place where an application error becomes a `tonic::Status`: `google.rpc.Status`
//! details with `ErrorInfo` (domain `c2p-enroll`, stable reason, metadata), `RetryInfo` when a
//! retry may succeed, `BadRequest` with every invalid field, and the current `Enrollment` for
//! `CARD_ALREADY_ENROLLED`.

use super::convert;
use crate::app::{AppError, ErrorParts, Source};
use prost::Message as _;
use tonic_types::pb;

/// The `ErrorInfo.domain` of every error.
pub const ERROR_DOMAIN: &str = "c2p-enroll";

fn any<M: prost::Message>(type_name: &str, message: &M) -> prost_types::Any {
    prost_types::Any {
        type_url: format!("type.googleapis.com/{type_name}"),
        value: message.encode_to_vec(),
    }
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
