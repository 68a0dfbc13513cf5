//! Traces, logs and metrics of a whole enrollment, through the real binary: the caller's trace is
//! continued, the RPC span is the parent of the upstream and Redis spans, every log line inside
//! the call carries the trace and request ids, and no span attribute, log line or metric holds
//! card data.

use crate::flows::request;
use crate::harness::{RedisServer, ServiceProcess, connect};
use c2p_enroll::proto::v1::{
    GetEnrollmentStatusRequest, enrollment_service_client::EnrollmentServiceClient,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Every PAN in the simulator's CMS.
const PANS: [&str; 4] = [
    "5186001700009726",
    "5186001700009734",
    "5186001700009742",
    "5186001700009759",
];
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN_ID: &str = "00f067aa0ba902b7";

/// A tiny OTLP receiver: keeps every span exported to it.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn attribute_texts(span: &Span) -> Vec<String> {
    span.attributes
        .iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                Some(Value::IntValue(i)) => i.to_string(),
                Some(other) => format!("{other:?}"),
                None => String::new(),
            };
            format!("{}={value}", kv.key)
        })
        .collect()
}

fn assert_no_card_data(what: &str, text: &str) {
    for pan in PANS {
        assert!(!text.contains(pan), "{what} holds a PAN");
    }
    // A compact JWE starts with base64url of `{"` (the card object, cardData).
    assert!(
        !text.contains("eyJ"),
        "{what} holds a JWE: {}",
        &text[text.find("eyJ").unwrap_or(0)..][..40.min(text.len())]
    );
}

#[tokio::test]
async fn an_enrollment_is_traced_logged_and_counted_without_card_data() {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let redis = RedisServer::start();
    let endpoint = format!("http://{otlp}");
    let mut service = ServiceProcess::spawn(
        &[],
        &[
            ("C2P_GRPC__LISTEN", "127.0.0.1:0"),
            ("C2P_REDIS__URL", &redis.url()),
            // Everything at debug, transport internals included: none of it may hold card data.
            ("C2P_LOG__FILTER", "debug"),
            ("C2P_LOG__FORMAT", "json"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    let addr = service.listening_addr().await;
    let metrics_line = service.wait_for_line("metrics listening").await;
    let metrics_addr: String =
        serde_json::from_str::<serde_json::Value>(&metrics_line).unwrap()["addr"]
            .as_str()
            .unwrap()
            .to_owned();
    let mut client = EnrollmentServiceClient::new(connect(addr).await);

    let mut call = tonic::Request::new(request("k-observed", 70001));
    call.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-{PARENT_SPAN_ID}-01")
            .parse()
            .unwrap(),
    );
    call.metadata_mut()
        .insert("x-request-id", "req-observed-1".parse().unwrap());
    client.enroll_card(call).await.unwrap();
    client
        .get_enrollment_status(GetEnrollmentStatusRequest {
            card_contract_id: 70001,
            refresh: true,
        })
        .await
        .unwrap();

    // A stream that cannot be opened counts as a failed call.
    let refused = client
        .watch_enrollment(c2p_enroll::proto::v1::WatchEnrollmentRequest {
            card_contract_id: 0,
            start_after_revision: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);

    let page = reqwest::get(format!("http://{metrics_addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for series in [
        r#"c2p_grpc_requests_total{rpc="EnrollCard",code="Ok",reason=""} 1"#,
        r#"c2p_grpc_requests_total{rpc="GetEnrollmentStatus",code="Ok",reason=""} 1"#,
        r#"c2p_upstream_requests_total{api="processing",operation="searchCard",outcome="ok",reason=""} 1"#,
        r#"c2p_upstream_requests_total{api="enroll",operation="putCard",outcome="ok",reason=""} 1"#,
        r#"c2p_upstream_requests_total{api="processing",operation="getTokensByCard",outcome="ok",reason=""} 1"#,
        r#"c2p_notifications_total{event="tar",outcome="applied"}"#,
        r#"c2p_notifications_total{event="tcn",outcome="applied"}"#,
        r#"c2p_grpc_requests_total{rpc="WatchEnrollment",code="InvalidArgument",reason="INVALID_REQUEST"} 1"#,
        r#"c2p_grpc_stream_limit{rpc="WatchEnrollment"} 1000"#,
        r#"c2p_grpc_stream_limit{rpc="NotificationIngest"} 64"#,
        "c2p_store_up 1",
        r#"c2p_redis_errors_total{operation="timeout"} 0"#,
        r#"c2p_reconciled_total{result="error"} 0"#,
        "# TYPE process_cpu_seconds_total counter",
        "process_resident_memory_bytes ",
        "c2p_grpc_request_duration_seconds_bucket",
        "c2p_upstream_request_duration_seconds_bucket",
        r#"c2p_upstream_breaker_state{api="enroll"} 0"#,
    ] {
        assert!(page.contains(series), "metrics lack {series}:\n{page}");
    }
    assert_no_card_data("the metrics page", &page);

    service.signal("TERM");
    assert!(service.wait(Duration::from_secs(15)).await.success());

    // Logs: every line inside the call carries its trace id and request id.
    let log = service.stderr();
    assert_no_card_data("the log", &log);
    let call_lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("req-observed-1"))
        .collect();
    assert!(
        call_lines.len() >= 3,
        "too few log lines inside the call:\n{log}"
    );
    for message in ["mastercard call finished", "enrollment finished"] {
        let line = log
            .lines()
            .find(|l| l.contains(message) && l.contains("req-observed-1"));
        let line = line.unwrap_or_else(|| panic!("no {message:?} line inside the call:\n{log}"));
        assert!(line.contains(TRACE_ID), "{line}");
    }

    // Traces: the caller's trace continues, and the RPC span parents the upstream and Redis spans.
    let spans = receiver.0.lock().unwrap().clone();
    for span in &spans {
        assert_no_card_data(
            &format!("span {}", span.name),
            &attribute_texts(span).join(" "),
        );
        assert!(
            !span.name.starts_with("h2") && !span.name.starts_with("hyper"),
            "transport span exported: {}",
            span.name
        );
    }
    let ours: Vec<&Span> = spans
        .iter()
        .filter(|s| hex::encode(&s.trace_id) == TRACE_ID)
        .collect();
    let rpc = ours
        .iter()
        .find(|s| s.name == "c2p.enrollment.v1.EnrollmentService/EnrollCard")
        .unwrap_or_else(|| {
            panic!(
                "no EnrollCard span in the caller's trace: {:?}",
                spans.iter().map(|s| &s.name).collect::<Vec<_>>()
            )
        });
    assert_eq!(hex::encode(&rpc.parent_span_id), PARENT_SPAN_ID);
    assert!(
        attribute_texts(rpc).contains(&"request_id=req-observed-1".to_owned()),
        "{:?}",
        attribute_texts(rpc)
    );
    // The fields the handlers record (in one pass each, `record_all!`) are on the RPC spans.
    let status = spans
        .iter()
        .find(|s| s.name == "c2p.enrollment.v1.EnrollmentService/GetEnrollmentStatus")
        .expect("a GetEnrollmentStatus span");
    for (span, expected) in [
        (*rpc, "rpc.grpc.status_code=0"),
        (*rpc, "outcome=ok"),
        (status, "rpc.grpc.status_code=0"),
        (status, "outcome=ok"),
        (status, "card=70001"),
        (status, "refresh=BoolValue(true)"),
    ] {
        let attrs = attribute_texts(span);
        assert!(
            attrs.iter().any(|a| a == expected),
            "{expected} not on {}: {attrs:?}",
            span.name
        );
    }
    let children = |name: &str| {
        ours.iter()
            .filter(|s| s.name == name && s.parent_span_id == rpc.span_id)
            .count()
    };
    assert_eq!(
        children("mastercard.http"),
        2,
        "searchCard and putCard attempts"
    );
    assert!(
        children("redis.script") >= 4,
        "idempotency, lock, record writes"
    );
    let http = ours.iter().find(|s| s.name == "mastercard.http").unwrap();
    let attrs = attribute_texts(http);
    for expected in [
        "http.request.method=POST",
        "mastercard.attempt=1",
        "mastercard.breaker_state=closed",
        "http.response.status_code=200",
    ] {
        assert!(
            attrs.iter().any(|a| a == expected),
            "{expected} not in {attrs:?}"
        );
    }
}
