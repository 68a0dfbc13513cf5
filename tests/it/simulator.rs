//! The adapter layer against the simulator over real HTTP: every endpoint, the CMS cards, the
//! gateway refusing any changed signed byte, every fault mode, and notifications delivered to a
//! gRPC receiver started by the test.

use crate::harness::{settings, shared_keys};
use c2p_enroll::mastercard::enroll::types::EnrollCardRequest;
use c2p_enroll::mastercard::error::{UpstreamError, UpstreamErrorKind};
use c2p_enroll::mastercard::jwe::JweDecryptor;
use c2p_enroll::mastercard::oauth1::{
    self, Credentials, NonceSource, SignatureMethod, SystemClock,
};
use c2p_enroll::mastercard::processing::types::SynchronousRequest;
use c2p_enroll::mastercard::setup::Upstream;
use c2p_enroll::proto::v1::{
    NotificationIngestRequest, NotificationIngestResponse, NotificationOutcome,
    enrollment_service_server::{EnrollmentService, EnrollmentServiceServer},
    notification_ingest_request::Event,
};
use c2p_enroll::sandbox::faults::{
    ErrorFault, NotificationFaults, NotificationTiming, Route, RouteFault,
};
use c2p_enroll::sandbox::requests::GatewayOutcome;
use c2p_enroll::sandbox::{Sandbox, SandboxConfig};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_stream::StreamExt as _;

async fn start_sandbox(payload_encryption: bool) -> Sandbox {
    let mut config = SandboxConfig::new("127.0.0.1:0".parse().unwrap(), shared_keys()).unwrap();
    config.payload_encryption = payload_encryption;
    Sandbox::start(config).await.unwrap()
}

fn upstream(sandbox: &Sandbox, extra: &[(&str, &str)]) -> Upstream {
    let mut env = vec![
        ("C2P_MASTERCARD__PROCESSING__ATTEMPT_TIMEOUT", "500ms"),
        ("C2P_MASTERCARD__ENROLL__ATTEMPT_TIMEOUT", "5s"),
        ("C2P_MASTERCARD__PROCESSING__INITIAL_BACKOFF", "10ms"),
        ("C2P_MASTERCARD__PROCESSING__MAX_BACKOFF", "20ms"),
    ];
    env.extend_from_slice(extra);
    sandbox.upstream(&settings(&env).mastercard).unwrap()
}

fn enroll_request(
    sandbox: &Sandbox,
    card_data: c2p_enroll::mastercard::processing::types::EncryptedCard,
    correlation: &str,
) -> EnrollCardRequest {
    let program = &sandbox.keys().program;
    crate::harness::mastercard_enroll_request(
        &program.src_client_id,
        &program.service_id,
        correlation,
        card_data,
    )
}

/// Search then enroll one card, as the enrollment flow will.
async fn enroll_card(
    sandbox: &Sandbox,
    up: &Upstream,
    card: i64,
    correlation: &str,
) -> Result<c2p_enroll::mastercard::enroll::types::EnrollCardResponse, UpstreamError> {
    let found = up
        .processing
        .search_card(
            card,
            SynchronousRequest::default(),
            &sandbox.keys().enroll_encryption_certificate,
            None,
        )
        .await?;
    up.enroll
        .enroll_card(&enroll_request(sandbox, found.card_data, correlation), None)
        .await
}

fn new_correlation() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[tokio::test]
async fn card_70001_enrolls_and_its_token_shows_in_both_lists() {
    let sandbox = start_sandbox(false).await;
    let up = upstream(&sandbox, &[]);
    let found = up
        .processing
        .search_card(
            70001,
            SynchronousRequest {
                cardholder_full_name: Some("Jane Doe".into()),
                billing_address: None,
            },
            &sandbox.keys().enroll_encryption_certificate,
            None,
        )
        .await
        .unwrap();
    // Only Click to Pay's key opens the card object; it holds the CMS PAN and the name sent.
    let mut click_to_pay = JweDecryptor::new();
    click_to_pay
        .add(&sandbox.keys().enroll_encryption_key)
        .unwrap();
    let object: serde_json::Value =
        serde_json::from_slice(&click_to_pay.decrypt(found.card_data.expose()).unwrap()).unwrap();
    assert_eq!(object["primaryAccountNumber"], "5186001700009726");
    assert_eq!(object["cardholderFullName"], "Jane Doe");

    let correlation = new_correlation();
    let enrolled = up
        .enroll
        .enroll_card(
            &enroll_request(&sandbox, found.card_data, &correlation),
            None,
        )
        .await
        .unwrap();
    let card = enrolled.masked_card.unwrap();
    assert_eq!(card.pan_last_four.as_deref(), Some("9726"));
    assert!(card.src_digital_card_id.is_some());
    assert!(enrolled.masked_consumer.unwrap().src_consumer_id.is_some());

    let by_card = up.processing.card_tokens(70001, None).await.unwrap();
    assert_eq!(by_card.len(), 1);
    assert!(by_card[0].is_click_to_pay());
    assert_eq!(
        by_card[0].status(),
        Some(c2p_enroll::domain::TokenStatus::Active)
    );
    let by_client = up
        .processing
        .client_tokens(40000, Some("ACTIVE"), None)
        .await
        .unwrap();
    assert_eq!(by_client.len(), 1);
    assert!(
        up.processing
            .client_tokens(40000, Some("Suspended"), None)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(sandbox.gateway_outcomes(), vec![GatewayOutcome::Passed; 5]);
}

#[tokio::test]
async fn cards_70002_to_70004_are_declined_with_the_reason_and_unknown_ids_do_not_exist() {
    let sandbox = start_sandbox(false).await;
    let up = upstream(&sandbox, &[]);
    for (card, reason) in [
        (70002, "CARD_BLOCKED"),
        (70003, "CARD_EXPIRED"),
        (70004, "CARD_PRODUCT_NOT_ELIGIBLE"),
    ] {
        let err = enroll_card(&sandbox, &up, card, &new_correlation())
            .await
            .unwrap_err();
        let UpstreamErrorKind::Rejected {
            status: 400,
            reason: r,
            ..
        } = &err.kind
        else {
            panic!("{card}: {err:?}");
        };
        assert_eq!(
            (r.code.as_deref(), r.detail.as_deref()),
            (Some("INVALID_STATE"), Some(reason)),
            "{card}"
        );
    }
    let err = up
        .processing
        .search_card(
            79999,
            SynchronousRequest::default(),
            &sandbox.keys().enroll_encryption_certificate,
            None,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind, UpstreamErrorKind::Rejected { status: 404, .. }),
        "{err:?}"
    );
    assert_eq!(err.reason_code(), Some("CARD_CONTRACT_DOES_NOT_EXIST"));
    assert!(
        up.processing
            .card_tokens(70002, None)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn the_same_src_correlation_id_gives_the_same_enrollment_and_no_second_token() {
    let sandbox = start_sandbox(false).await;
    let up = upstream(&sandbox, &[]);
    let correlation = new_correlation();
    let first = enroll_card(&sandbox, &up, 70001, &correlation)
        .await
        .unwrap();
    let second = enroll_card(&sandbox, &up, 70001, &correlation)
        .await
        .unwrap();
    assert_eq!(first, second);
    assert_eq!(
        up.processing.card_tokens(70001, None).await.unwrap().len(),
        1
    );
    assert_eq!(sandbox.count_for_correlation(&correlation), 2);
}

#[tokio::test]
async fn src_client_id_and_service_id_are_validated_like_mastercard() {
    let sandbox = start_sandbox(false).await;
    let up = upstream(&sandbox, &[]);
    let found = up
        .processing
        .search_card(
            70001,
            SynchronousRequest::default(),
            &sandbox.keys().enroll_encryption_certificate,
            None,
        )
        .await
        .unwrap();
    let mut bad_format = enroll_request(&sandbox, found.card_data.clone(), &new_correlation());
    bad_format.src_client_id = "not-a-uuid".into();
    bad_format.consumer.country_code = "usa".into();
    let err = up.enroll.enroll_card(&bad_format, None).await.unwrap_err();
    let UpstreamErrorKind::Rejected { reason, .. } = &err.kind else {
        panic!("{err:?}")
    };
    assert_eq!(
        (reason.code.as_deref(), reason.source.as_deref()),
        (Some("INVALID_ARGUMENT"), Some("srcClientId"))
    );

    let mut unknown = enroll_request(&sandbox, found.card_data, &new_correlation());
    unknown.service_id = "NOT_REGISTERED".into();
    let err = up.enroll.enroll_card(&unknown, None).await.unwrap_err();
    let UpstreamErrorKind::Rejected { reason, .. } = &err.kind else {
        panic!("{err:?}")
    };
    assert_eq!(
        (
            reason.code.as_deref(),
            reason.detail.as_deref(),
            reason.source.as_deref()
        ),
        (
            Some("INVALID_STATE"),
            Some("INVALID_VALUE"),
            Some("serviceId")
        )
    );
}

struct FixedNonce(String);
impl NonceSource for FixedNonce {
    fn nonce(&self) -> String {
        self.0.clone()
    }
}

struct OffsetClock(i64);
impl oauth1::Clock for OffsetClock {
    fn unix_seconds(&self) -> u64 {
        SystemClock.unix_seconds().saturating_add_signed(self.0)
    }
}

#[tokio::test]
async fn the_gateway_refuses_any_changed_signed_byte() {
    let sandbox = start_sandbox(false).await;
    let keys = sandbox.keys().clone();
    let http = reqwest::Client::new();
    let url = url::Url::parse(&format!(
        "{}/cards/searches?probe=1",
        sandbox.processing_base_url()
    ))
    .unwrap();
    let body =
        br#"{"enrollType":"SYNCHRONOUS","synchronousRequest":{},"cardContractId":70001}"#.to_vec();
    let cert = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        keys.enroll_encryption_certificate.to_der().unwrap(),
    );
    let sign = |url: &url::Url, body: &[u8], consumer: &str, clock: &dyn oauth1::Clock| {
        let creds = Credentials {
            consumer_key: consumer,
            key: &keys.processing_signing_key,
            method: SignatureMethod::RsaSha256,
        };
        oauth1::authorization_header(
            "POST",
            url,
            body,
            &creds,
            clock,
            &FixedNonce(new_correlation().replace('-', "")[..16].to_owned()),
        )
        .unwrap()
    };
    let send = |url: url::Url, body: Vec<u8>, auth: String, content_type: &'static str| {
        let http = http.clone();
        let cert = cert.clone();
        async move {
            http.post(url)
                .header("authorization", auth)
                .header("content-type", content_type)
                .header("Enroll-Client-Encryption-Key", cert)
                .body(body)
                .send()
                .await
                .unwrap()
        }
    };
    const JSON: &str = "application/json;charset=utf-8";
    let ck = keys.processing_consumer_key.clone();

    let good = sign(&url, &body, &ck, &SystemClock);
    assert_eq!(
        send(url.clone(), body.clone(), good.clone(), JSON)
            .await
            .status(),
        200
    );
    // The same header again: the nonce was used.
    assert_eq!(
        send(url.clone(), body.clone(), good, JSON).await.status(),
        401
    );

    let auth = sign(&url, &body, &ck, &SystemClock);
    let mut changed = body.clone();
    changed[body.len() - 2] = b'2';
    assert_eq!(send(url.clone(), changed, auth, JSON).await.status(), 401);

    let auth = sign(&url, &body, &ck, &SystemClock);
    let other_query = url::Url::parse(&url.as_str().replace("probe=1", "probe=2")).unwrap();
    assert_eq!(
        send(other_query, body.clone(), auth, JSON).await.status(),
        401
    );

    let auth = sign(&url, &body, &ck, &SystemClock);
    let ts_start = auth.find("oauth_timestamp=\"").unwrap() + "oauth_timestamp=\"".len();
    let mut tampered = auth.into_bytes();
    tampered[ts_start + 9] = if tampered[ts_start + 9] == b'0' {
        b'1'
    } else {
        b'0'
    };
    assert_eq!(
        send(
            url.clone(),
            body.clone(),
            String::from_utf8(tampered).unwrap(),
            JSON
        )
        .await
        .status(),
        401
    );

    let auth = sign(&url, &body, &ck, &SystemClock);
    let sig_start = auth.find("oauth_signature=\"").unwrap() + "oauth_signature=\"".len();
    let mut tampered = auth.into_bytes();
    tampered[sig_start + 5] = if tampered[sig_start + 5] == b'A' {
        b'B'
    } else {
        b'A'
    };
    assert_eq!(
        send(
            url.clone(),
            body.clone(),
            String::from_utf8(tampered).unwrap(),
            JSON
        )
        .await
        .status(),
        401
    );

    let stale = sign(&url, &body, &ck, &OffsetClock(-3600));
    assert_eq!(
        send(url.clone(), body.clone(), stale, JSON).await.status(),
        401
    );

    let stranger = sign(&url, &body, "unknown-consumer!00", &SystemClock);
    assert_eq!(
        send(url.clone(), body.clone(), stranger, JSON)
            .await
            .status(),
        401
    );

    let auth = sign(&url, &body, &ck, &SystemClock);
    assert_eq!(
        send(url.clone(), body.clone(), auth, "text/plain")
            .await
            .status(),
        415
    );

    assert_eq!(
        sandbox.gateway_outcomes(),
        vec![
            GatewayOutcome::Passed,
            GatewayOutcome::NonceReplayed,
            GatewayOutcome::BodyHashMismatch,
            GatewayOutcome::BadSignature,
            GatewayOutcome::BadSignature,
            GatewayOutcome::BadSignature,
            GatewayOutcome::TimestampOutOfWindow,
            GatewayOutcome::UnknownConsumerKey,
            GatewayOutcome::BadContentType,
        ]
    );
}

#[tokio::test]
async fn the_gateway_takes_application_json_with_or_without_charset_utf8() {
    // Mastercard's generated clients send plain `application/json`; the adapter sends
    // `application/json;charset=utf-8`. Both are JSON in UTF-8; other media types and charsets
    // are refused.
    let sandbox = start_sandbox(false).await;
    let keys = sandbox.keys().clone();
    let http = reqwest::Client::new();
    let url =
        url::Url::parse(&format!("{}/cards/searches", sandbox.processing_base_url())).unwrap();
    let body =
        br#"{"enrollType":"SYNCHRONOUS","synchronousRequest":{},"cardContractId":70001}"#.to_vec();
    let cert = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        keys.enroll_encryption_certificate.to_der().unwrap(),
    );
    let cases: [(Option<&str>, u16); 9] = [
        (Some("application/json"), 200),
        (Some("application/json;charset=utf-8"), 200),
        (Some("application/json; charset=UTF-8"), 200),
        (Some("Application/JSON;Charset=\"utf-8\""), 200),
        (Some("application/json;charset=iso-8859-1"), 415),
        (Some("application/jsonp"), 415),
        (Some("text/plain"), 415),
        (Some("application/x-www-form-urlencoded"), 415),
        (None, 415),
    ];
    for (content_type, expected) in cases {
        let creds = Credentials {
            consumer_key: &keys.processing_consumer_key,
            key: &keys.processing_signing_key,
            method: SignatureMethod::RsaSha256,
        };
        let auth = oauth1::authorization_header(
            "POST",
            &url,
            &body,
            &creds,
            &SystemClock,
            &oauth1::RandomNonce,
        )
        .unwrap();
        let mut request = http
            .post(url.clone())
            .header("authorization", auth)
            .header("Enroll-Client-Encryption-Key", cert.clone())
            .body(body.clone());
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let status = request.send().await.unwrap().status();
        assert_eq!(status, expected, "content type {content_type:?}");
    }
    let refused = sandbox
        .gateway_outcomes()
        .into_iter()
        .filter(|o| *o == GatewayOutcome::BadContentType)
        .count();
    assert_eq!(refused, 5);
}

#[tokio::test]
async fn every_route_fault_is_observed_through_the_adapter() {
    let sandbox = start_sandbox(false).await;
    let up = upstream(&sandbox, &[]);
    let search = || {
        up.processing.search_card(
            70001,
            SynchronousRequest::default(),
            &sandbox.keys().enroll_encryption_certificate,
            None,
        )
    };

    sandbox.set_fault(
        Route::Searches,
        RouteFault {
            latency: Some(Duration::from_millis(200)),
            times: Some(1),
            ..Default::default()
        },
    );
    let started = tokio::time::Instant::now();
    search().await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(200));

    sandbox.set_fault(
        Route::Searches,
        RouteFault {
            error: Some(ErrorFault {
                status: 503,
                reason_code: "SERVICE_UNAVAILABLE".into(),
            }),
            ..Default::default()
        },
    );
    let err = search().await.unwrap_err();
    assert!(
        matches!(err.kind, UpstreamErrorKind::ServerError { status: 503, .. }),
        "{err:?}"
    );
    assert_eq!(err.attempts, 3);

    sandbox.set_fault(
        Route::Searches,
        RouteFault {
            throttle: Some(Duration::from_secs(1)),
            times: Some(1),
            ..Default::default()
        },
    );
    search().await.unwrap();

    sandbox.set_fault(
        Route::Searches,
        RouteFault {
            reset: true,
            ..Default::default()
        },
    );
    let err = search().await.unwrap_err();
    assert_eq!(err.kind, UpstreamErrorKind::SendFailed);

    sandbox.set_fault(
        Route::Searches,
        RouteFault {
            hang: true,
            ..Default::default()
        },
    );
    let err = search().await.unwrap_err();
    assert_eq!(err.kind, UpstreamErrorKind::Timeout);

    sandbox.set_fault(
        Route::Searches,
        RouteFault {
            malformed_json: true,
            ..Default::default()
        },
    );
    let err = search().await.unwrap_err();
    assert!(matches!(err.kind, UpstreamErrorKind::Decode(_)), "{err:?}");

    sandbox.set_fault(Route::Searches, RouteFault::default());
    sandbox.set_decline_tar(true);
    let err = enroll_card(&sandbox, &up, 70001, &new_correlation())
        .await
        .unwrap_err();
    let UpstreamErrorKind::Rejected { reason, .. } = &err.kind else {
        panic!("{err:?}")
    };
    assert_eq!(reason.detail.as_deref(), Some("TOKENIZATION_DECLINED"));
    // 1 + 3 + 2 + 3 + 3 + 1 searches, then the declined enrollment's search.
    assert_eq!(sandbox.count(Route::Searches), 14);
}

#[tokio::test]
async fn the_processing_envelope_is_opened_and_sealed_when_switched_on() {
    let sandbox = start_sandbox(true).await;
    let sealed = upstream(
        &sandbox,
        &[(
            "C2P_MASTERCARD__PROCESSING__PAYLOAD_ENCRYPTION__ENABLED",
            "true",
        )],
    );
    enroll_card(&sandbox, &sealed, 70001, &new_correlation())
        .await
        .unwrap();
    assert_eq!(
        sealed
            .processing
            .card_tokens(70001, None)
            .await
            .unwrap()
            .len(),
        1
    );
    // A client that sends plain bodies is refused by the envelope check.
    let plain = upstream(&sandbox, &[]);
    let err = plain
        .processing
        .search_card(
            70001,
            SynchronousRequest::default(),
            &sandbox.keys().enroll_encryption_certificate,
            None,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind, UpstreamErrorKind::Rejected { status: 400, .. }),
        "{err:?}"
    );
}

/// A notification receiver: records what arrives, refuses the first `refuse` deliveries.
#[derive(Clone, Default)]
struct Receiver {
    seen: Arc<Mutex<Vec<NotificationIngestRequest>>>,
    refuse: Arc<Mutex<u32>>,
}

type Responses = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<NotificationIngestResponse, tonic::Status>> + Send>,
>;

#[tonic::async_trait]
impl EnrollmentService for Receiver {
    async fn enroll_card(
        &self,
        _: tonic::Request<c2p_enroll::proto::v1::EnrollCardRequest>,
    ) -> Result<tonic::Response<c2p_enroll::proto::v1::EnrollCardResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented(""))
    }
    async fn get_enrollment_status(
        &self,
        _: tonic::Request<c2p_enroll::proto::v1::GetEnrollmentStatusRequest>,
    ) -> Result<tonic::Response<c2p_enroll::proto::v1::GetEnrollmentStatusResponse>, tonic::Status>
    {
        Err(tonic::Status::unimplemented(""))
    }
    type NotificationIngestStream = Responses;
    async fn notification_ingest(
        &self,
        request: tonic::Request<tonic::Streaming<NotificationIngestRequest>>,
    ) -> Result<tonic::Response<Responses>, tonic::Status> {
        let this = self.clone();
        let mut input = request.into_inner();
        let output = async_stream_responses(move |tx| async move {
            while let Some(Ok(n)) = input.next().await {
                let refused = {
                    let mut refuse = this.refuse.lock().unwrap();
                    let r = *refuse > 0;
                    *refuse = refuse.saturating_sub(1);
                    r
                };
                let outcome = if refused {
                    NotificationOutcome::Failed
                } else {
                    this.seen.lock().unwrap().push(n.clone());
                    NotificationOutcome::Applied
                };
                let _ = tx
                    .send(Ok(NotificationIngestResponse {
                        notification_id: n.notification_id,
                        outcome: outcome as i32,
                        sequence: n.sequence,
                        ..Default::default()
                    }))
                    .await;
            }
        });
        Ok(tonic::Response::new(output))
    }
    type WatchEnrollmentStream = Pin<
        Box<
            dyn tokio_stream::Stream<
                    Item = Result<c2p_enroll::proto::v1::WatchEnrollmentResponse, tonic::Status>,
                > + Send,
        >,
    >;
    async fn watch_enrollment(
        &self,
        _: tonic::Request<c2p_enroll::proto::v1::WatchEnrollmentRequest>,
    ) -> Result<tonic::Response<Self::WatchEnrollmentStream>, tonic::Status> {
        Err(tonic::Status::unimplemented(""))
    }
    // A notification receiver only: the calls after an enrollment are the service's.
    async fn remove_card(
        &self,
        _: tonic::Request<c2p_enroll::proto::v1::RemoveCardRequest>,
    ) -> Result<tonic::Response<c2p_enroll::proto::v1::RemoveCardResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented(""))
    }
    async fn get_click_to_pay_profile(
        &self,
        _: tonic::Request<c2p_enroll::proto::v1::GetClickToPayProfileRequest>,
    ) -> Result<tonic::Response<c2p_enroll::proto::v1::GetClickToPayProfileResponse>, tonic::Status>
    {
        Err(tonic::Status::unimplemented(""))
    }
    async fn update_consumer(
        &self,
        _: tonic::Request<c2p_enroll::proto::v1::UpdateConsumerRequest>,
    ) -> Result<tonic::Response<c2p_enroll::proto::v1::UpdateConsumerResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented(""))
    }
    async fn update_billing_address(
        &self,
        _: tonic::Request<c2p_enroll::proto::v1::UpdateBillingAddressRequest>,
    ) -> Result<tonic::Response<c2p_enroll::proto::v1::UpdateBillingAddressResponse>, tonic::Status>
    {
        Err(tonic::Status::unimplemented(""))
    }
    async fn opt_out(
        &self,
        _: tonic::Request<c2p_enroll::proto::v1::OptOutRequest>,
    ) -> Result<tonic::Response<c2p_enroll::proto::v1::OptOutResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented(""))
    }
    async fn withdraw_opt_out(
        &self,
        _: tonic::Request<c2p_enroll::proto::v1::WithdrawOptOutRequest>,
    ) -> Result<tonic::Response<c2p_enroll::proto::v1::WithdrawOptOutResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented(""))
    }
}

use std::pin::Pin;

fn async_stream_responses<F, Fut>(f: F) -> Responses
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<NotificationIngestResponse, tonic::Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

async fn start_receiver(receiver: Receiver) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(EnrollmentServiceServer::new(receiver))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    format!("http://{addr}")
}

fn kinds(seen: &[NotificationIngestRequest]) -> Vec<&'static str> {
    seen.iter()
        .map(|n| match n.event {
            Some(Event::TokenizationAuthorization(_)) => "TAR",
            Some(Event::TokenizationComplete(_)) => "TCN",
            _ => "other",
        })
        .collect()
}

async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn tar_and_tcn_reach_the_receiver_before_the_200_with_retries_when_refused() {
    let sandbox = start_sandbox(false).await;
    let receiver = Receiver::default();
    *receiver.refuse.lock().unwrap() = 2;
    sandbox
        .set_notification_target(&start_receiver(receiver.clone()).await)
        .unwrap();
    let up = upstream(&sandbox, &[]);
    enroll_card(&sandbox, &up, 70001, &new_correlation())
        .await
        .unwrap();
    // Before the 200: both are there when the call returns.
    let seen = receiver.seen.lock().unwrap().clone();
    assert_eq!(kinds(&seen), ["TAR", "TCN"]);
    let Some(Event::TokenizationAuthorization(tar)) = &seen[0].event else {
        panic!()
    };
    assert_eq!(tar.card_contract_id, 70001);
    assert_eq!(
        tar.decision(),
        c2p_enroll::proto::v1::TokenizationDecision::Approved
    );
    assert_eq!(
        (tar.token_requestor_id.as_str(), tar.wallet_name.as_str()),
        ("50123197928", "MDES for Merchants")
    );
    let deliveries = sandbox.deliveries();
    assert_eq!(
        deliveries.iter().filter(|d| !d.acknowledged).count(),
        2,
        "two refusals, retried"
    );
    assert_eq!(deliveries.iter().filter(|d| d.acknowledged).count(), 2);
}

#[tokio::test]
async fn notification_faults_duplicate_reorder_delay_and_after_the_200() {
    let sandbox = start_sandbox(false).await;
    let receiver = Receiver::default();
    sandbox
        .set_notification_target(&start_receiver(receiver.clone()).await)
        .unwrap();
    let up = upstream(&sandbox, &[]);

    sandbox.set_notification_faults(NotificationFaults {
        duplicate: true,
        reorder: true,
        ..Default::default()
    });
    enroll_card(&sandbox, &up, 70001, &new_correlation())
        .await
        .unwrap();
    let seen = receiver.seen.lock().unwrap().clone();
    assert_eq!(kinds(&seen), ["TCN", "TCN", "TAR", "TAR"]);
    assert_eq!(
        seen[0].notification_id, seen[1].notification_id,
        "a duplicate keeps its id"
    );
    receiver.seen.lock().unwrap().clear();

    sandbox.set_notification_faults(NotificationFaults {
        timing: NotificationTiming::AfterResponse,
        delay: Some(Duration::from_millis(300)),
        ..Default::default()
    });
    enroll_card(&sandbox, &up, 70001, &new_correlation())
        .await
        .unwrap();
    assert!(
        receiver.seen.lock().unwrap().is_empty(),
        "nothing before the 200"
    );
    eventually("TAR and TCN after the 200", || {
        receiver.seen.lock().unwrap().len() == 2
    })
    .await;

    // A declined TAR is notified too, with no TCN.
    receiver.seen.lock().unwrap().clear();
    sandbox.set_notification_faults(NotificationFaults::default());
    enroll_card(&sandbox, &up, 70002, &new_correlation())
        .await
        .unwrap_err();
    let seen = receiver.seen.lock().unwrap().clone();
    assert_eq!(kinds(&seen), ["TAR"]);
    let Some(Event::TokenizationAuthorization(tar)) = &seen[0].event else {
        panic!()
    };
    assert_eq!(
        tar.decision(),
        c2p_enroll::proto::v1::TokenizationDecision::Declined
    );
}
