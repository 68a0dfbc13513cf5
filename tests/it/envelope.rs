//! The envelope of every call over real gRPC (issue 12): the request id echoed in `x-request-id`
//! on success and error, unary and stream, given or generated; `ErrorInfo` and `RequestInfo`
//! on app errors, on the access policy's refusals and on errors tonic makes itself; a drain
//! answering new calls `SERVER_DRAINING` with `RetryInfo` while the connection is still open.

use crate::harness::{TestService, settings};
use crate::wire::request;
use c2p_enroll::grpc::status::ERROR_DOMAIN;
use c2p_enroll::proto::v1::{GetEnrollmentStatusRequest, WatchEnrollmentRequest};
use tonic::Code;
use tonic_types::StatusExt as _;

const ID: &str = "x-request-id";

fn with_id<T>(message: T, id: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(id) = id {
        request.metadata_mut().insert(ID, id.parse().unwrap());
    }
    request
}

fn status_request(card: i64) -> GetEnrollmentStatusRequest {
    GetEnrollmentStatusRequest {
        card_contract_id: card,
        refresh: false,
    }
}

fn watch_request(card: i64) -> WatchEnrollmentRequest {
    WatchEnrollmentRequest {
        card_contract_id: card,
        start_after_revision: 0,
    }
}

/// The `x-request-id` of response metadata: `given`, or a UUID when none was given.
fn echoed(metadata: &tonic::metadata::MetadataMap, given: Option<&str>) -> String {
    let id = metadata
        .get(ID)
        .unwrap_or_else(|| panic!("no x-request-id in {metadata:?}"))
        .to_str()
        .unwrap()
        .to_owned();
    match given {
        Some(given) => assert_eq!(id, given),
        None => assert!(uuid::Uuid::parse_str(&id).is_ok(), "not a UUID: {id}"),
    }
    id
}

/// Checks the error's envelope: `ErrorInfo` in the service's domain with `reason`, and a
/// `RequestInfo` with `request_id`.
fn assert_envelope(status: &tonic::Status, reason: &str, request_id: &str) {
    let details = status.get_error_details();
    let info = details
        .error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo: {status:?}"));
    assert_eq!(
        (info.domain.as_str(), info.reason.as_str()),
        (ERROR_DOMAIN, reason)
    );
    let request_info = details
        .request_info()
        .unwrap_or_else(|| panic!("no RequestInfo: {status:?}"));
    assert_eq!(request_info.request_id, request_id);
}

#[tokio::test]
async fn the_request_id_comes_back_on_unary_success_and_error() {
    let service = TestService::start(&settings(&[])).await;
    let mut client = service.client();
    for given in [Some("it-unary-1"), None] {
        let ok = client
            .get_enrollment_status(with_id(status_request(70001), given))
            .await
            .unwrap();
        echoed(ok.metadata(), given);

        // An app error made by a handler (trailers-only).
        let invalid = client
            .get_enrollment_status(with_id(status_request(-1), given))
            .await
            .unwrap_err();
        assert_eq!(invalid.code(), Code::InvalidArgument);
        let id = echoed(invalid.metadata(), given);
        assert_envelope(&invalid, "INVALID_REQUEST", &id);

        let unknown = client
            .enroll_card(with_id(request(&format!("k-{given:?}"), 79999), given))
            .await
            .unwrap_err();
        assert_eq!(unknown.code(), Code::NotFound);
        let id = echoed(unknown.metadata(), given);
        assert_envelope(&unknown, "CARD_CONTRACT_NOT_FOUND", &id);
        let info = unknown.get_error_details().error_info().unwrap().clone();
        assert_eq!(
            info.metadata.get("step").map(String::as_str),
            Some("search")
        );
    }
}

#[tokio::test]
async fn errors_tonic_makes_get_error_info_and_request_info() {
    let service = TestService::start(&settings(&[])).await;
    let mut client = service.client();
    // Over grpc.limits.max_message_bytes: refused by tonic's decoder, before any handler.
    let mut big = request("k-big", 70001);
    big.cardholder_full_name = "x".repeat(200_000);
    let too_large = client
        .enroll_card(with_id(big, Some("it-big")))
        .await
        .unwrap_err();
    assert_eq!(too_large.code(), Code::OutOfRange, "{too_large:?}");
    echoed(too_large.metadata(), Some("it-big"));
    assert_envelope(&too_large, "REQUEST_TOO_LARGE", "it-big");

    // A method of the service that does not exist, and a service that does not exist.
    for path in [
        "/c2p.enrollment.v1.EnrollmentService/DeleteCard",
        "/c2p.enrollment.v1.Nope/Nope",
    ] {
        let mut grpc = tonic::client::Grpc::new(service.channel.clone());
        grpc.ready().await.unwrap();
        let codec = tonic_prost::ProstCodec::<(), ()>::default();
        let status = grpc
            .unary(tonic::Request::new(()), path.parse().unwrap(), codec)
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unimplemented, "{path}: {status:?}");
        let id = echoed(status.metadata(), None);
        assert_envelope(&status, "NOT_IMPLEMENTED", &id);
    }
}

#[tokio::test]
async fn the_access_policys_refusals_carry_the_envelope_and_camel_case_metadata() {
    let service = TestService::start(&settings(&[
        ("C2P_AUTH__IDENTITY", "mesh_header"),
        ("C2P_AUTH__CALLERS__APP__IDENTITY", "app"),
        ("C2P_AUTH__CALLERS__APP__RPCS", "GetEnrollmentStatus"),
        ("C2P_AUTH__CALLERS__APP__PROGRAMS", "*"),
    ]))
    .await;
    let mut client = service.client();
    let mut as_app = with_id(request("k-1", 70001), Some("it-auth"));
    as_app
        .metadata_mut()
        .insert("x-c2p-caller", "app".parse().unwrap());
    let refused = client.enroll_card(as_app).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    echoed(refused.metadata(), Some("it-auth"));
    assert_envelope(&refused, "RPC_NOT_ALLOWED", "it-auth");
    let info = refused.get_error_details().error_info().unwrap().clone();
    assert_eq!(
        info.metadata.get("rpc").map(String::as_str),
        Some("EnrollCard")
    );

    let nobody = client
        .get_enrollment_status(status_request(70001))
        .await
        .unwrap_err();
    assert_eq!(nobody.code(), Code::Unauthenticated);
    let id = echoed(nobody.metadata(), None);
    assert_envelope(&nobody, "CALLER_UNKNOWN", &id);
}

#[tokio::test]
async fn streams_echo_the_id_and_a_drain_answers_server_draining_with_retry_info() {
    let service = TestService::start(&settings(&[])).await;
    let mut client = service.client();
    let watch = client
        .watch_enrollment(with_id(watch_request(70001), Some("it-watch")))
        .await
        .unwrap();
    echoed(watch.metadata(), Some("it-watch"));
    let mut watch = watch.into_inner();
    assert!(
        watch.message().await.unwrap().is_some(),
        "the current state"
    );
    let generated = client.watch_enrollment(watch_request(70001)).await.unwrap();
    echoed(generated.metadata(), None);

    // The drain token only: the listener and this connection stay open.
    service.running.begin_drain();

    // The open stream ends UNAVAILABLE in its trailers, with the envelope.
    let ended = loop {
        match watch.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the watch ended OK on a drain"),
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), Code::Unavailable, "{ended:?}");
    assert_envelope(&ended, "SERVER_DRAINING", "it-watch");
    assert!(ended.get_error_details().retry_info().is_some());

    // A new call on the same connection is answered, not refused bare.
    for given in [Some("it-drained"), None] {
        let drained = client
            .get_enrollment_status(with_id(status_request(70001), given))
            .await
            .unwrap_err();
        assert_eq!(drained.code(), Code::Unavailable, "{drained:?}");
        let id = echoed(drained.metadata(), given);
        assert_envelope(&drained, "SERVER_DRAINING", &id);
        let retry = drained.get_error_details().retry_info().cloned();
        assert!(retry.and_then(|r| r.retry_delay).is_some(), "{drained:?}");
    }
    let opened = client
        .watch_enrollment(with_id(watch_request(70001), Some("it-watch-2")))
        .await
        .unwrap_err();
    assert_eq!(opened.code(), Code::Unavailable);
    assert_envelope(&opened, "SERVER_DRAINING", "it-watch-2");

    // Health still answers on the gRPC port during the drain.
    let mut health = service.health();
    health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
}
