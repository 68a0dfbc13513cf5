//! Completes the `google.rpc.Status` of an error so that every error carries an `ErrorInfo` and
//! a `RequestInfo`, whoever made it: a handler, the auth layer, or tonic itself (which sends a
//! bare code and message). Runs only on statuses other than OK, so successes cost one header
//! lookup.

use crate::grpc::status::ERROR_DOMAIN;
use crate::proto::v1::ErrorReason;
use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use http::{HeaderMap, HeaderName, HeaderValue};
use prost::Message as _;
use tonic::Code;
use tonic_types::pb;

const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
const GRPC_STATUS_DETAILS: HeaderName = HeaderName::from_static("grpc-status-details-bin");
const ERROR_INFO: &str = "type.googleapis.com/google.rpc.ErrorInfo";
const REQUEST_INFO: &str = "type.googleapis.com/google.rpc.RequestInfo";

/// Base64 as gRPC carries binary metadata: written without padding, read with or without it.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The reason of an error that came without one. Only tonic makes such errors (the service's
/// own all carry a reason): a message over the size limit, an unknown method or a compressed
/// request, a decoding failure outside the codec, a deadline.
pub fn fallback_reason(code: Code) -> ErrorReason {
    match code {
        Code::OutOfRange => ErrorReason::RequestTooLarge,
        Code::Unimplemented => ErrorReason::NotImplemented,
        Code::DeadlineExceeded => ErrorReason::DeadlineExceeded,
        Code::InvalidArgument => ErrorReason::MalformedRequest,
        _ => ErrorReason::Internal,
    }
}

/// When `headers` (the headers of a trailers-only response, or trailers) end the call with an
/// error: adds an `ErrorInfo` if it has none and a `RequestInfo` with `request_id` if it has
/// none, keeping every other detail, the code and the message as they are.
pub fn complete(headers: &mut HeaderMap, request_id: &str) {
    let Some(code) = headers
        .get(GRPC_STATUS)
        .map(|v| Code::from_bytes(v.as_bytes()))
    else {
        return;
    };
    if code == Code::Ok {
        return;
    }
    // Details that do not decode are not ours to keep (nobody could read them either).
    let mut status = headers
        .get(GRPC_STATUS_DETAILS)
        .and_then(|v| BASE64.decode(v.as_bytes()).ok())
        .and_then(|bytes| pb::Status::decode(bytes.as_slice()).ok())
        .unwrap_or_else(|| pb::Status {
            code: code as i32,
            message: message(headers),
            details: Vec::new(),
        });
    let has =
        |status: &pb::Status, type_url: &str| status.details.iter().any(|d| d.type_url == type_url);
    let mut changed = false;
    if !has(&status, ERROR_INFO) {
        let info = pb::ErrorInfo {
            reason: fallback_reason(code).as_str_name().into(),
            domain: ERROR_DOMAIN.into(),
            metadata: Default::default(),
        };
        status.details.push(any(ERROR_INFO, &info));
        changed = true;
    }
    if !has(&status, REQUEST_INFO) {
        let info = pb::RequestInfo {
            request_id: request_id.into(),
            serving_data: String::new(),
        };
        status.details.push(any(REQUEST_INFO, &info));
        changed = true;
    }
    if !changed {
        return;
    }
    // Base64 is always a valid header value.
    if let Ok(value) = HeaderValue::from_str(&BASE64.encode(status.encode_to_vec())) {
        headers.insert(GRPC_STATUS_DETAILS, value);
    }
}

/// The `grpc-message`, percent-decoded.
fn message(headers: &HeaderMap) -> String {
    headers
        .get(GRPC_MESSAGE)
        .map(|v| {
            percent_encoding::percent_decode(v.as_bytes())
                .decode_utf8_lossy()
                .into_owned()
        })
        .unwrap_or_default()
}

fn any<M: prost::Message>(type_url: &str, message: &M) -> prost_types::Any {
    prost_types::Any {
        type_url: type_url.into(),
        value: message.encode_to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::StatusExt as _;

    fn headers_of(status: tonic::Status) -> HeaderMap {
        let mut headers = HeaderMap::new();
        status.add_header(&mut headers).unwrap();
        headers
    }

    #[test]
    fn a_bare_tonic_error_gets_error_info_and_request_info() {
        let mut headers = headers_of(tonic::Status::out_of_range("message length too large"));
        complete(&mut headers, "req-1");
        let status = tonic::Status::from_header_map(&headers).unwrap();
        assert_eq!(status.code(), Code::OutOfRange);
        assert_eq!(status.message(), "message length too large");
        let details = status.get_error_details();
        let info = details.error_info().unwrap();
        assert_eq!(info.reason, "REQUEST_TOO_LARGE");
        assert_eq!(info.domain, ERROR_DOMAIN);
        assert_eq!(details.request_info().unwrap().request_id, "req-1");
    }

    #[test]
    fn an_app_error_keeps_its_details_and_gains_request_info() {
        let mut headers = headers_of(crate::grpc::status::draining());
        complete(&mut headers, "req-2");
        let details = tonic::Status::from_header_map(&headers)
            .unwrap()
            .get_error_details();
        assert_eq!(details.error_info().unwrap().reason, "SERVER_DRAINING");
        assert!(details.retry_info().is_some());
        assert_eq!(details.request_info().unwrap().request_id, "req-2");
        // A second pass changes nothing (the header is the same value).
        let before = headers.get(GRPC_STATUS_DETAILS).cloned();
        complete(&mut headers, "other");
        assert_eq!(headers.get(GRPC_STATUS_DETAILS).cloned(), before);
    }

    #[test]
    fn ok_and_statusless_headers_are_left_alone() {
        let mut ok = HeaderMap::new();
        ok.insert(GRPC_STATUS, HeaderValue::from_static("0"));
        complete(&mut ok, "req");
        assert!(ok.get(GRPC_STATUS_DETAILS).is_none());
        let mut none = HeaderMap::new();
        complete(&mut none, "req");
        assert!(none.is_empty());
    }

    #[test]
    fn padded_details_are_read_too() {
        let padded = base64::engine::general_purpose::STANDARD.encode(
            pb::Status {
                code: Code::NotFound as i32,
                message: "x".into(),
                details: vec![any(
                    ERROR_INFO,
                    &pb::ErrorInfo {
                        reason: "CARD_CONTRACT_NOT_FOUND".into(),
                        domain: ERROR_DOMAIN.into(),
                        metadata: Default::default(),
                    },
                )],
            }
            .encode_to_vec(),
        );
        let mut headers = HeaderMap::new();
        headers.insert(GRPC_STATUS, HeaderValue::from_static("5"));
        headers.insert(GRPC_STATUS_DETAILS, HeaderValue::from_str(&padded).unwrap());
        complete(&mut headers, "req");
        let details = tonic::Status::from_header_map(&headers)
            .unwrap()
            .get_error_details();
        assert_eq!(
            details.error_info().unwrap().reason,
            "CARD_CONTRACT_NOT_FOUND"
        );
        assert_eq!(details.request_info().unwrap().request_id, "req");
    }
}
