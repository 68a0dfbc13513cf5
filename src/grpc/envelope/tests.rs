//! The envelope over stand-in services: what it adds to successes, errors (trailers-only and in
//! a stream's trailers), during a drain and past a deadline.

use super::*;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, StreamBody};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use tonic_types::StatusExt as _;
use tower::{Layer as _, ServiceExt as _};

type TestBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

/// A gRPC success: one data frame, then trailers with `grpc-status: 0`.
fn success() -> Response<TestBody> {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    stream_response(trailers)
}

/// A stream that sends one message and ends with `trailers`.
fn stream_response(trailers: HeaderMap) -> Response<TestBody> {
    let frames = vec![
        Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\0"))),
        Ok(Frame::trailers(trailers)),
    ];
    Response::new(StreamBody::new(futures::stream::iter(frames)).boxed_unsync())
}

fn trailers_only(status: tonic::Status) -> Response<TestBody> {
    status
        .into_http::<()>()
        .map(|()| Full::new(Bytes::new()).boxed_unsync())
}

/// Calls the envelope over a service answering `answer`, with request `headers`, on `path`;
/// returns the response and the request id the inner service saw (if it was called).
async fn call(
    drain: &CancellationToken,
    path: &str,
    headers: &[(&str, &str)],
    answer: impl Fn() -> Response<TestBody> + Send + Sync + 'static,
) -> (Response<EnvelopeBody<TestBody>>, Option<String>) {
    let seen = Arc::new(Mutex::new(None));
    let seen_inner = seen.clone();
    let inner = tower::service_fn(move |request: Request<()>| {
        *seen_inner.lock().unwrap() = request
            .headers()
            .get(X_REQUEST_ID)
            .map(|v| v.to_str().unwrap().to_owned());
        std::future::ready(Ok::<_, Infallible>(answer()))
    });
    let mut request = Request::builder().uri(path);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let service = EnvelopeLayer::new(drain.clone()).layer(inner);
    let response = service.oneshot(request.body(()).unwrap()).await.unwrap();
    let seen = seen.lock().unwrap().clone();
    (response, seen)
}

const ENROLL: &str = "/c2p.enrollment.v1.EnrollmentService/EnrollCard";

fn id_of<B>(response: &Response<B>) -> String {
    response.headers()[X_REQUEST_ID]
        .to_str()
        .unwrap()
        .to_owned()
}

/// The status of a response: from its trailers, or from its headers when trailers-only.
async fn status_of(response: Response<EnvelopeBody<TestBody>>) -> tonic::Status {
    if let Some(status) = tonic::Status::from_header_map(response.headers()) {
        return status;
    }
    let collected = response.into_body().collect().await.unwrap();
    tonic::Status::from_header_map(collected.trailers().unwrap()).unwrap()
}

#[tokio::test]
async fn a_success_carries_the_callers_request_id_and_stays_as_it_was() {
    let drain = CancellationToken::new();
    let (response, seen) = call(&drain, ENROLL, &[("x-request-id", "abc-123")], success).await;
    assert_eq!(id_of(&response), "abc-123");
    assert_eq!(seen.as_deref(), Some("abc-123"));
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().unwrap().clone();
    assert_eq!(trailers.len(), 1, "{trailers:?}");
    assert_eq!(collected.to_bytes().len(), 5);
}

#[test]
fn only_short_printable_ascii_request_ids_are_taken() {
    let of = |value: HeaderValue| {
        let mut headers = HeaderMap::new();
        headers.insert(X_REQUEST_ID, value);
        callers_request_id(&headers)
    };
    let max = "y".repeat(MAX_REQUEST_ID);
    for good in ["a", "abc-123 with space", "~!@#", max.as_str()] {
        assert!(
            of(HeaderValue::from_str(good).unwrap()).is_some(),
            "{good:?}"
        );
    }
    let long = "x".repeat(MAX_REQUEST_ID + 1);
    for bad in [&b""[..], long.as_bytes(), b"tab\there", "é".as_bytes()] {
        assert!(
            of(HeaderValue::from_bytes(bad).unwrap()).is_none(),
            "{bad:?}"
        );
    }
    assert!(callers_request_id(&HeaderMap::new()).is_none());
}

#[tokio::test]
async fn an_unusable_request_id_is_replaced_by_a_uuid_the_handler_sees_too() {
    let drain = CancellationToken::new();
    let long = "x".repeat(MAX_REQUEST_ID + 1);
    for headers in [vec![], vec![("x-request-id", long.as_str())]] {
        let (response, seen) = call(&drain, ENROLL, &headers, success).await;
        let id = id_of(&response);
        assert!(
            uuid::Uuid::parse_str(&id).is_ok(),
            "{headers:?} gave {id:?}"
        );
        assert_eq!(seen.as_deref(), Some(id.as_str()));
    }
}

#[tokio::test]
async fn a_bare_trailers_only_error_gets_error_info_and_request_info() {
    let drain = CancellationToken::new();
    let (response, _) = call(
        &drain,
        "/c2p.enrollment.v1.EnrollmentService/Nope",
        &[("x-request-id", "r-1")],
        || trailers_only(tonic::Status::unimplemented("")),
    )
    .await;
    assert_eq!(id_of(&response), "r-1");
    let status = status_of(response).await;
    assert_eq!(status.code(), tonic::Code::Unimplemented);
    let details = status.get_error_details();
    let info = details.error_info().unwrap();
    assert_eq!(
        (info.reason.as_str(), info.domain.as_str()),
        ("NOT_IMPLEMENTED", status::ERROR_DOMAIN)
    );
    assert_eq!(details.request_info().unwrap().request_id, "r-1");
}

#[tokio::test]
async fn an_error_in_a_streams_trailers_gets_request_info() {
    let drain = CancellationToken::new();
    let (response, _) = call(&drain, ENROLL, &[("x-request-id", "r-2")], || {
        let mut trailers = HeaderMap::new();
        status::draining().add_header(&mut trailers).unwrap();
        stream_response(trailers)
    })
    .await;
    assert_eq!(id_of(&response), "r-2");
    let status = status_of(response).await;
    let details = status.get_error_details();
    assert_eq!(details.error_info().unwrap().reason, "SERVER_DRAINING");
    assert!(details.retry_info().is_some());
    assert_eq!(details.request_info().unwrap().request_id, "r-2");
}

#[tokio::test]
async fn while_draining_new_calls_get_server_draining_but_health_answers() {
    let drain = CancellationToken::new();
    drain.cancel();
    let (response, seen) = call(&drain, ENROLL, &[("x-request-id", "r-3")], success).await;
    assert!(seen.is_none(), "the handler was called during the drain");
    assert_eq!(id_of(&response), "r-3");
    let status = status_of(response).await;
    assert_eq!(status.code(), tonic::Code::Unavailable);
    let details = status.get_error_details();
    assert_eq!(details.error_info().unwrap().reason, "SERVER_DRAINING");
    assert!(details.retry_info().unwrap().retry_delay.is_some());
    assert_eq!(details.request_info().unwrap().request_id, "r-3");

    let (health, seen) = call(&drain, "/grpc.health.v1.Health/Check", &[], success).await;
    assert!(seen.is_some());
    assert!(tonic::Status::from_header_map(health.headers()).is_none());
}

#[tokio::test(start_paused = true)]
async fn a_call_past_its_grpc_timeout_gets_deadline_exceeded_with_its_reason() {
    let drain = CancellationToken::new();
    let inner = tower::service_fn(|_: Request<()>| {
        std::future::pending::<Result<Response<TestBody>, Infallible>>()
    });
    let request = Request::builder()
        .uri(ENROLL)
        .header("grpc-timeout", "50m")
        .body(())
        .unwrap();
    let service = EnvelopeLayer::new(drain).layer(inner);
    let response = service.oneshot(request).await.unwrap();
    let id = id_of(&response);
    let status = status_of(response).await;
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
    let details = status.get_error_details();
    assert_eq!(details.error_info().unwrap().reason, "DEADLINE_EXCEEDED");
    assert_eq!(details.request_info().unwrap().request_id, id);
}
