//! Server reflection, v1 and v1alpha, lists the enrollment and health services and serves their
//! descriptors.

use crate::harness::{TestService, settings};
use prost::Message;
use tonic_reflection::pb::{v1, v1alpha};

const EXPECTED: [&str; 3] = [
    "c2p.enrollment.v1.EnrollmentService",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
];

#[tokio::test]
async fn v1_lists_services_and_serves_descriptors() {
    let service = TestService::start(&settings(&[])).await;
    let mut client =
        v1::server_reflection_client::ServerReflectionClient::new(service.channel.clone());
    let requests = [
        v1::server_reflection_request::MessageRequest::ListServices(String::new()),
        v1::server_reflection_request::MessageRequest::FileContainingSymbol(
            "c2p.enrollment.v1.EnrollmentService".into(),
        ),
    ]
    .map(|m| v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(m),
    });
    let mut responses = client
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();

    let listed = match responses.message().await.unwrap().unwrap().message_response {
        Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(l)) => l,
        other => panic!("expected a service list, got {other:?}"),
    };
    let names: Vec<String> = listed.service.into_iter().map(|s| s.name).collect();
    for want in EXPECTED {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }

    let files = match responses.message().await.unwrap().unwrap().message_response {
        Some(v1::server_reflection_response::MessageResponse::FileDescriptorResponse(f)) => f,
        other => panic!("expected file descriptors, got {other:?}"),
    };
    let file = files
        .file_descriptor_proto
        .iter()
        .map(|b| prost_types::FileDescriptorProto::decode(b.as_slice()).unwrap())
        .find(|f| f.name() == "c2p/enrollment/v1/enrollment.proto")
        .expect("the enrollment file is served");
    let messages: Vec<&str> = file.message_type.iter().map(|m| m.name()).collect();
    for want in [
        "EnrollCardRequest",
        "Enrollment",
        "NotificationIngestRequest",
        "WatchEnrollmentResponse",
    ] {
        assert!(messages.contains(&want), "{want} not in {messages:?}");
    }
    let rpcs: Vec<&str> = file.service[0].method.iter().map(|m| m.name()).collect();
    assert_eq!(
        rpcs,
        [
            "EnrollCard",
            "GetEnrollmentStatus",
            "NotificationIngest",
            "WatchEnrollment",
            "RemoveCard",
            "GetClickToPayProfile",
            "UpdateConsumer",
            "UpdateBillingAddress",
            "OptOut",
            "WithdrawOptOut"
        ]
    );
}

#[tokio::test]
async fn v1alpha_lists_services_for_grpcurl_1_8() {
    let service = TestService::start(&settings(&[])).await;
    let mut client =
        v1alpha::server_reflection_client::ServerReflectionClient::new(service.channel.clone());
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let listed = match responses.message().await.unwrap().unwrap().message_response {
        Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(l)) => l,
        other => panic!("expected a service list, got {other:?}"),
    };
    let names: Vec<String> = listed.service.into_iter().map(|s| s.name).collect();
    for want in [
        "c2p.enrollment.v1.EnrollmentService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }
}
