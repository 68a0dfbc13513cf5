//! The Mastercard adapter against a scripted local HTTP server: every error shape, every retry
//! rule (attempts counted on the server), the breaker, the deadline, and the signed bytes.

use crate::http_stub::{HttpStub, Reply};
use base64::Engine as _;
use c2p_enroll::mastercard::breaker::{BreakerConfig, BreakerState};
use c2p_enroll::mastercard::enroll::EnrollClient;
use c2p_enroll::mastercard::enroll::types::EnrollCardRequest;
use c2p_enroll::mastercard::error::{Api, UpstreamErrorKind};
use c2p_enroll::mastercard::http::{ApiClient, ApiClientConfig, HttpPolicy, PayloadEncryption};
use c2p_enroll::mastercard::jwe::{JweDecryptor, JweEncryptor, open_envelope, seal_envelope};
use c2p_enroll::mastercard::keys::{Certificate, SigningKey};
use c2p_enroll::mastercard::oauth1::{self, SignatureMethod};
use c2p_enroll::mastercard::processing::ProcessingClient;
use c2p_enroll::mastercard::processing::types::{EncryptedCard, SynchronousRequest};
use std::path::Path;
use std::time::Duration;

const CARD_DATA: &str = r#"{"cardData":"eyJhbGciOiJSU0EtT0FFUC0yNTYifQ.a.b.c.d"}"#;

fn fixtures() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keys"))
}

fn signing_key() -> SigningKey {
    SigningKey::load(&fixtures().join("signing.key.pem"), None).unwrap()
}

fn enroll_certificate() -> Certificate {
    Certificate::load(&fixtures().join("signing.cert.pem")).unwrap()
}

fn fast_policy() -> HttpPolicy {
    HttpPolicy {
        attempt_timeout: Duration::from_millis(400),
        connect_timeout: Duration::from_millis(400),
        budget: Duration::from_secs(10),
        max_attempts: 3,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(40),
    }
}

fn client(api: Api, base: url::Url, policy: HttpPolicy, breaker: BreakerConfig) -> ApiClient {
    client_with(api, base, policy, breaker, None)
}

fn client_with(
    api: Api,
    base: url::Url,
    policy: HttpPolicy,
    breaker: BreakerConfig,
    encryption: Option<PayloadEncryption>,
) -> ApiClient {
    client_full(api, base, policy, breaker, encryption, None)
}

fn client_full(
    api: Api,
    base: url::Url,
    policy: HttpPolicy,
    breaker: BreakerConfig,
    encryption: Option<PayloadEncryption>,
    extra_ca: Option<Certificate>,
) -> ApiClient {
    ApiClient::new(ApiClientConfig {
        api,
        base_url: base,
        consumer_key: "test-consumer-key!0123456789abcdef".into(),
        signing_key: signing_key(),
        signature_method: SignatureMethod::RsaSha256,
        policy,
        breaker,
        encryption,
        extra_ca,
    })
    .unwrap()
}

fn processing(stub: &HttpStub) -> ProcessingClient {
    ProcessingClient::new(client(
        Api::Processing,
        stub.url("/global-processing/digital"),
        fast_policy(),
        BreakerConfig::default(),
    ))
}

fn enroll(stub: &HttpStub) -> EnrollClient {
    EnrollClient::new(client(
        Api::Enroll,
        stub.url("/src/api/digital/payments"),
        fast_policy(),
        BreakerConfig::default(),
    ))
}

fn enroll_request() -> EnrollCardRequest {
    crate::harness::mastercard_enroll_request(
        "7f2b8a4e-5c1d-4e8f-9a3b-1c2d3e4f5a6b",
        "SRC_TEST_SERVICE",
        "0b9a3c2e-1f4d-4a6b-8c7d-9e0f1a2b3c4d",
        EncryptedCard::new("eyJ.x.y.z.w".into()),
    )
}

async fn search(
    client: &ProcessingClient,
) -> Result<(), c2p_enroll::mastercard::error::UpstreamError> {
    client
        .search_card(
            70001,
            SynchronousRequest::default(),
            &enroll_certificate(),
            None,
        )
        .await
        .map(|_| ())
}

#[tokio::test]
async fn the_bytes_on_the_wire_are_the_signed_bytes() {
    let stub = HttpStub::start(vec![Reply::json(200, CARD_DATA)]).await;
    let found = processing(&stub)
        .search_card(
            70001,
            SynchronousRequest {
                cardholder_full_name: Some("Jane Q. Cardholder".into()),
                billing_address: None,
            },
            &enroll_certificate(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        found.card_data.expose(),
        "eyJhbGciOiJSU0EtT0FFUC0yNTYifQ.a.b.c.d"
    );

    let requests = stub.requests();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!(
        (r.method.as_str(), r.target.as_str()),
        ("POST", "/global-processing/digital/cards/searches")
    );
    assert_eq!(
        r.header("content-type"),
        Some("application/json;charset=utf-8")
    );
    let public = signing_key().public_key().unwrap();
    let signed = oauth1::verify(
        "POST",
        &stub.url(&r.target),
        &r.body,
        r.header("authorization").unwrap(),
        &public,
    )
    .expect("the received bytes carry a valid signature");
    assert_eq!(signed.consumer_key, "test-consumer-key!0123456789abcdef");
    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"enrollType":"SYNCHRONOUS","synchronousRequest":{"cardholderFullName":"Jane Q. Cardholder"},"cardContractId":70001})
    );
    let der = enroll_certificate().to_der().unwrap();
    assert_eq!(
        r.header("Enroll-Client-Encryption-Key"),
        Some(
            base64::engine::general_purpose::STANDARD
                .encode(der)
                .as_str()
        )
    );
}

#[tokio::test]
async fn enroll_sends_the_client_id_header_and_parses_the_masked_card() {
    let stub = HttpStub::start(vec![Reply::json(
        200,
        r#"{"srcCorrelationId":"0b9a3c2e-1f4d-4a6b-8c7d-9e0f1a2b3c4d","maskedCard":{"srcDigitalCardId":"dc-1","panBin":"518600","panLastFour":"9726","panExpirationMonth":"12","panExpirationYear":"2030","paymentCardType":"CREDIT","digitalCardData":{"status":"ACTIVE","artUri":"x"}},"maskedConsumer":{"srcConsumerId":"sc-1","status":"ACTIVE"}}"#,
    )])
    .await;
    let response = enroll(&stub)
        .enroll_card(&enroll_request(), None)
        .await
        .unwrap();
    let card = response.masked_card.unwrap();
    assert_eq!(card.pan_last_four.as_deref(), Some("9726"));
    assert_eq!(card.src_digital_card_id.as_deref(), Some("dc-1"));
    assert_eq!(
        response.masked_consumer.unwrap().src_consumer_id.as_deref(),
        Some("sc-1")
    );
    let r = &stub.requests()[0];
    assert_eq!(r.target, "/src/api/digital/payments/cards");
    assert_eq!(r.header("x-openapi-clientid"), Some("test-consumer-key"));
    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["encryptedCard"], "eyJ.x.y.z.w");
    assert_eq!(body["cardSource"], "ISSUER");
    assert_eq!(
        body["consumer"]["consumerIdentity"]["identityType"],
        "EMAIL_ADDRESS"
    );
}

#[tokio::test]
async fn token_lists_sign_their_query_and_read_statuses_in_any_case() {
    let stub = HttpStub::start(vec![Reply::json(
        200,
        r#"{"clientTokens":[{"cardContractId":70001,"tokenRequestorId":"50123197928","walletName":"MDES for Merchants","tokenStatus":"Active","tokenUniqueReference":"DM1"},{"cardContractId":70002,"tokenRequestorId":50123197999,"walletName":"Other","tokenStatus":"SUSPENDED","tokenUniqueReference":"DM2"}]}"#,
    )])
    .await;
    let tokens = processing(&stub)
        .client_tokens(40000, Some("Active"), None)
        .await
        .unwrap();
    assert_eq!(tokens.len(), 2);
    assert!(tokens[0].is_click_to_pay() && !tokens[1].is_click_to_pay());
    assert_eq!(
        tokens[1].status(),
        Some(c2p_enroll::domain::TokenStatus::Suspended)
    );
    let r = &stub.requests()[0];
    assert_eq!(
        r.target,
        "/global-processing/digital/clients/40000/tokens?status=Active"
    );
    let public = signing_key().public_key().unwrap();
    oauth1::verify(
        "GET",
        &stub.url(&r.target),
        &r.body,
        r.header("authorization").unwrap(),
        &public,
    )
    .unwrap();
    assert_eq!(
        oauth1::body_hash(&r.body),
        "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
    );
}

#[tokio::test]
async fn status_429_is_retried_after_retry_after_even_for_post_cards() {
    let stub = HttpStub::start(vec![
        Reply::json(429, r#"{"Errors":{"Error":[{"Source":"Gateway","ReasonCode":"TOO_MANY_REQUESTS","Recoverable":true}]}}"#)
            .with_header("Retry-After", "1"),
        Reply::json(200, r#"{"maskedCard":{"panLastFour":"9726"}}"#),
    ])
    .await;
    enroll(&stub)
        .enroll_card(&enroll_request(), None)
        .await
        .unwrap();
    let requests = stub.requests();
    assert_eq!(requests.len(), 2);
    let gap = requests[1].at - requests[0].at;
    assert!(
        gap >= Duration::from_millis(950),
        "Retry-After: 1 not honoured, retried after {gap:?}"
    );
}

#[tokio::test]
async fn a_retry_after_past_the_clock_ends_the_call_with_the_429() {
    // Seconds that no clock can add: the call ends with the answer, not a panic.
    let stub = HttpStub::start(vec![
        Reply::json(429, r#"{"Errors":{"Error":[{"Source":"Gateway","ReasonCode":"TOO_MANY_REQUESTS","Recoverable":true}]}}"#)
            .with_header("Retry-After", "10000000000000000000"),
    ])
    .await;
    let err = enroll(&stub)
        .enroll_card(&enroll_request(), None)
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind, UpstreamErrorKind::Rejected { status: 429, .. }),
        "{err}"
    );
    assert!(err.budget_exhausted, "{err:?}");
    assert_eq!((err.attempts, stub.requests().len()), (1, 1));
}

#[tokio::test]
async fn status_503_is_retried_for_searches_but_not_for_post_cards() {
    let unavailable = Reply::json(503, r#"{"Errors":{"Error":[{"Source":"MASTERCARD PROCESSING","ReasonCode":"SERVICE_UNAVAILABLE","Recoverable":true}]}}"#)
        .with_header("X-MC-Correlation-ID", "corr-503");
    let stub = HttpStub::start(vec![unavailable.clone()]).await;
    let err = search(&processing(&stub)).await.unwrap_err();
    assert!(
        matches!(err.kind, UpstreamErrorKind::ServerError { status: 503, .. }),
        "{err}"
    );
    assert_eq!(err.reason_code(), Some("SERVICE_UNAVAILABLE"));
    assert_eq!(
        err.correlation.mc_correlation_id.as_deref(),
        Some("corr-503")
    );
    assert_eq!((err.attempts, stub.requests().len()), (3, 3));

    let stub = HttpStub::start(vec![unavailable]).await;
    let err = enroll(&stub)
        .enroll_card(&enroll_request(), None)
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind, UpstreamErrorKind::ServerError { status: 503, .. }),
        "{err}"
    );
    assert_eq!((err.attempts, stub.requests().len()), (1, 1));
}

#[tokio::test]
async fn a_transient_503_then_success_recovers() {
    let stub = HttpStub::start(vec![
        Reply::json(502, "bad gateway"),
        Reply::json(200, CARD_DATA),
    ])
    .await;
    search(&processing(&stub)).await.unwrap();
    assert_eq!(stub.requests().len(), 2);
}

#[tokio::test]
async fn a_hang_past_the_attempt_timeout() {
    let stub = HttpStub::start(vec![Reply::Hang]).await;
    let err = search(&processing(&stub)).await.unwrap_err();
    assert_eq!(err.kind, UpstreamErrorKind::Timeout);
    assert_eq!((err.attempts, stub.requests().len()), (3, 3));

    let stub = HttpStub::start(vec![Reply::Hang]).await;
    let err = enroll(&stub)
        .enroll_card(&enroll_request(), None)
        .await
        .unwrap_err();
    assert_eq!(err.kind, UpstreamErrorKind::Timeout);
    assert_eq!(
        (err.attempts, stub.requests().len()),
        (1, 1),
        "a POST /cards that may have arrived is not repeated"
    );
}

#[tokio::test]
async fn connection_refused_means_nothing_was_sent_so_even_post_cards_is_retried() {
    // Bind and drop a listener: the port refuses connections.
    let port = crate::harness::free_port();
    let base =
        url::Url::parse(&format!("http://127.0.0.1:{port}/src/api/digital/payments")).unwrap();
    let client = EnrollClient::new(client(
        Api::Enroll,
        base,
        fast_policy(),
        BreakerConfig::default(),
    ));
    let err = client
        .enroll_card(&enroll_request(), None)
        .await
        .unwrap_err();
    assert_eq!(err.kind, UpstreamErrorKind::ConnectFailed);
    assert_eq!(err.attempts, 3);
}

#[tokio::test]
async fn a_reset_after_the_request_was_sent() {
    let stub = HttpStub::start(vec![Reply::ResetAfterRead]).await;
    let err = search(&processing(&stub)).await.unwrap_err();
    assert_eq!(err.kind, UpstreamErrorKind::SendFailed);
    assert_eq!((err.attempts, stub.requests().len()), (3, 3));

    let stub = HttpStub::start(vec![Reply::ResetAfterRead]).await;
    let err = enroll(&stub)
        .enroll_card(&enroll_request(), None)
        .await
        .unwrap_err();
    assert_eq!(err.kind, UpstreamErrorKind::SendFailed);
    assert_eq!((err.attempts, stub.requests().len()), (1, 1));
}

#[tokio::test]
async fn malformed_json_is_a_decode_error_without_the_body() {
    let stub = HttpStub::start(vec![Reply::json(
        200,
        r#"{"cardData": "eyJ.secret-card-object"#,
    )])
    .await;
    let err = search(&processing(&stub)).await.unwrap_err();
    assert!(matches!(err.kind, UpstreamErrorKind::Decode(_)), "{err}");
    assert_eq!((err.attempts, stub.requests().len()), (1, 1));
    assert!(!format!("{err} {err:?}").contains("secret-card-object"));
}

#[tokio::test]
async fn a_401_gateway_error_is_not_retried_and_keeps_its_reason() {
    let stub = HttpStub::start(vec![Reply::json(
        401,
        r#"{"Errors":{"Error":[{"Source":"Gateway","ReasonCode":"INVALID_SIGNATURE","Description":"Unauthorized - signature invalid","Recoverable":false,"Details":null}]}}"#,
    )
    .with_header("correlation-id", "gw-1")])
    .await;
    let err = search(&processing(&stub)).await.unwrap_err();
    match &err.kind {
        UpstreamErrorKind::Rejected {
            status: 401,
            reason,
            ..
        } => {
            assert_eq!(reason.code.as_deref(), Some("INVALID_SIGNATURE"));
            assert_eq!(reason.source.as_deref(), Some("Gateway"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(err.correlation.correlation_id.as_deref(), Some("gw-1"));
    assert_eq!((err.attempts, stub.requests().len()), (1, 1));
}

#[tokio::test]
async fn enroll_error_bodies_of_both_shapes() {
    let stub = HttpStub::start(vec![
        Reply::json(400, r#"{"code":400,"status":"INVALID_ARGUMENT","message":"m","details":[{"reason":"INVALID_FORMAT","source":"srcClientId","message":"m","sourceType":"BODY"}]}"#),
        Reply::json(400, r#"{"status":"INVALID_STATE","reason":"INVALID_VALUE","message":"m","errordetail":[{"reason":"INVALID_VALUE","sourceType":"BODY","message":"m","source":"serviceId"}]}"#),
    ])
    .await;
    let client = enroll(&stub);
    for (code, detail, source) in [
        ("INVALID_ARGUMENT", "INVALID_FORMAT", "srcClientId"),
        ("INVALID_STATE", "INVALID_VALUE", "serviceId"),
    ] {
        let err = client
            .enroll_card(&enroll_request(), None)
            .await
            .unwrap_err();
        let UpstreamErrorKind::Rejected {
            status: 400,
            reason,
            ..
        } = &err.kind
        else {
            panic!("{err:?}");
        };
        assert_eq!(
            (
                reason.code.as_deref(),
                reason.detail.as_deref(),
                reason.source.as_deref()
            ),
            (Some(code), Some(detail), Some(source))
        );
    }
}

#[tokio::test]
async fn the_breaker_opens_then_half_opens_and_closes() {
    let stub = HttpStub::start(vec![Reply::json(500, "{}")]).await;
    let breaker = BreakerConfig {
        failure_rate_threshold: 50.0,
        window_size: 2,
        minimum_calls: 2,
        // Long enough that the third call, on a loaded machine, still finds it open.
        open_duration: Duration::from_millis(1500),
        half_open_calls: 1,
    };
    let policy = HttpPolicy {
        max_attempts: 1,
        ..fast_policy()
    };
    let client = ProcessingClient::new(client(Api::Processing, stub.url("/p"), policy, breaker));
    search(&client).await.unwrap_err();
    search(&client).await.unwrap_err();
    assert_eq!(client.http().breaker_state(), BreakerState::Open);
    let err = search(&client).await.unwrap_err();
    // It says when a probe will be let through: within the 1.5 s open period.
    let UpstreamErrorKind::CircuitOpen { closes_in } = err.kind else {
        panic!("{err:?}");
    };
    assert!(
        closes_in > Duration::ZERO && closes_in <= Duration::from_millis(1500),
        "{closes_in:?}"
    );
    // The caller's RetryInfo carries it.
    let c2p_enroll::app::ports::UpstreamFailure::Unavailable {
        retry_after,
        context,
    } = c2p_enroll::mastercard::ports::processing_failure(err.clone())
    else {
        panic!("an open breaker is Unavailable");
    };
    let app_error = c2p_enroll::app::AppError::UpstreamUnavailable {
        step: c2p_enroll::app::Step::Search,
        context,
        retry_after,
    };
    let retry = app_error.parts().retry_after.unwrap();
    assert!(
        retry <= Duration::from_millis(1500) && retry >= Duration::from_millis(100),
        "{retry:?}"
    );
    assert_eq!(
        (err.attempts, stub.requests().len()),
        (0, 2),
        "no request while open"
    );

    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(client.http().breaker_state(), BreakerState::HalfOpen);
    stub.script(vec![Reply::json(200, CARD_DATA)]);
    search(&client).await.unwrap();
    assert_eq!(client.http().breaker_state(), BreakerState::Closed);
    assert_eq!(stub.requests().len(), 3);
}

/// Attempts cut short by the caller's deadline are no evidence against Mastercard: one
/// caller's 100 ms deadlines against slow answers opened the breaker for every caller.
#[tokio::test]
async fn attempts_cut_by_the_callers_deadline_do_not_open_the_breaker() {
    let mut replies = vec![Reply::Hang; 6];
    replies.push(Reply::json(200, CARD_DATA));
    let stub = HttpStub::start(replies).await;
    let breaker = BreakerConfig {
        failure_rate_threshold: 50.0,
        window_size: 4,
        minimum_calls: 4,
        open_duration: Duration::from_secs(60),
        half_open_calls: 1,
    };
    let policy = HttpPolicy {
        max_attempts: 1,
        ..fast_policy()
    };
    let client = ProcessingClient::new(client(Api::Processing, stub.url("/p"), policy, breaker));
    // A search within `ms` of now.
    let certificate = enroll_certificate();
    let within = |ms: u64| {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
        client.search_card(
            70001,
            SynchronousRequest::default(),
            &certificate,
            Some(deadline),
        )
    };
    for _ in 0..6 {
        let err = within(100).await.unwrap_err();
        assert_eq!(err.kind, UpstreamErrorKind::Timeout, "{err:?}");
    }
    assert_eq!(client.http().breaker_state(), BreakerState::Closed);
    // A caller with time gets its answer.
    search(&client).await.unwrap();
    // Deadlines that leave an attempt at least half its timeout (400 ms here) do count: callers
    // with seconds to spare against a Mastercard that never answers open the breaker.
    stub.script(vec![Reply::Hang]);
    for _ in 0..4 {
        within(300).await.unwrap_err();
    }
    assert_eq!(client.http().breaker_state(), BreakerState::Open);
}

#[tokio::test]
async fn the_callers_deadline_cuts_the_retries_short() {
    let stub = HttpStub::start(vec![Reply::json(503, "{}")]).await;
    let policy = HttpPolicy {
        max_attempts: 50,
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(100),
        ..fast_policy()
    };
    let client = ProcessingClient::new(client(
        Api::Processing,
        stub.url("/p"),
        policy,
        BreakerConfig::default(),
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_millis(450);
    let err = client
        .search_card(
            70001,
            SynchronousRequest::default(),
            &enroll_certificate(),
            Some(deadline),
        )
        .await
        .unwrap_err();
    assert!(err.budget_exhausted, "{err:?}");
    assert!(
        err.attempts >= 2 && err.attempts < 50,
        "{} attempts",
        err.attempts
    );
    // Each attempt is in the stub's log, but the last may not be: its time is what is left of
    // the deadline, and on a loaded machine that can run out before the stub logs it (seen in
    // CI: 4 attempts, 3 requests). The error then is that attempt's timeout, at the deadline.
    let seen = stub.requests().len() as u32;
    assert!(
        seen == err.attempts
            || (seen + 1 == err.attempts
                && err.kind == UpstreamErrorKind::Timeout
                && tokio::time::Instant::now() >= deadline),
        "{seen} requests seen: {err:?}"
    );
    // Well short of 50 attempts' 5 s of backoff, with room for a loaded machine.
    assert!(tokio::time::Instant::now() <= deadline + Duration::from_secs(1));
}

#[tokio::test]
async fn payload_encryption_seals_requests_and_opens_responses() {
    // Mastercard's side: its key decrypts our requests; our key decrypts its responses.
    let mastercard_key = SigningKey::generate().unwrap();
    let our_key = signing_key();
    let mut our_decryptor = JweDecryptor::new();
    our_decryptor.add(&our_key).unwrap();
    let encryption = PayloadEncryption {
        encryptor: JweEncryptor::new(&mastercard_key.public_key().unwrap()).unwrap(),
        decryptor: our_decryptor,
    };
    let to_us = JweEncryptor::new(&our_key.public_key().unwrap()).unwrap();
    let sealed_response = seal_envelope(&to_us, CARD_DATA.as_bytes()).unwrap();
    let stub = HttpStub::start(vec![Reply::json(
        200,
        std::str::from_utf8(&sealed_response).unwrap(),
    )])
    .await;
    let client = ProcessingClient::new(client_with(
        Api::Processing,
        stub.url("/p"),
        fast_policy(),
        BreakerConfig::default(),
        Some(encryption),
    ));
    search(&client).await.unwrap();

    let r = &stub.requests()[0];
    let mut mastercard = JweDecryptor::new();
    mastercard.add(&mastercard_key).unwrap();
    let plain: serde_json::Value =
        serde_json::from_slice(&open_envelope(&mastercard, &r.body).unwrap()).unwrap();
    assert_eq!(plain["cardContractId"], 70001);
    // The signature covers the sealed bytes that were sent.
    oauth1::verify(
        "POST",
        &stub.url(&r.target),
        &r.body,
        r.header("authorization").unwrap(),
        &our_key.public_key().unwrap(),
    )
    .unwrap();

    // A response sealed for another key is a decrypt error.
    let stranger =
        JweEncryptor::new(&SigningKey::generate().unwrap().public_key().unwrap()).unwrap();
    stub.script(vec![Reply::json(
        200,
        std::str::from_utf8(&seal_envelope(&stranger, CARD_DATA.as_bytes()).unwrap()).unwrap(),
    )]);
    let err = search(&client).await.unwrap_err();
    assert!(matches!(err.kind, UpstreamErrorKind::Decrypt(_)), "{err:?}");
}

#[tokio::test]
async fn tls_with_the_configured_extra_ca() {
    let stub = HttpStub::start_tls(vec![Reply::json(200, CARD_DATA)]).await;
    let ca = Certificate::load(&fixtures().join("test-ca.cert.pem")).unwrap();
    let trusted = ProcessingClient::new(client_full(
        Api::Processing,
        stub.https_url("/p"),
        fast_policy(),
        BreakerConfig::default(),
        None,
        Some(ca),
    ));
    search(&trusted).await.unwrap();
    assert_eq!(stub.requests().len(), 1);

    // Without the CA the server is not trusted: the handshake fails before any request is sent.
    let untrusted = ProcessingClient::new(client(
        Api::Processing,
        stub.https_url("/p"),
        fast_policy(),
        BreakerConfig::default(),
    ));
    let err = search(&untrusted).await.unwrap_err();
    assert_eq!(err.kind, UpstreamErrorKind::ConnectFailed, "{err}");
    assert_eq!(stub.requests().len(), 1);
}

#[tokio::test]
async fn an_undecodable_answer_counts_as_decode_not_ok() {
    let metrics = c2p_enroll::metrics::handle().unwrap();
    // A 2xx whose body is not the expected JSON, from an operation only this test calls.
    let stub = HttpStub::start(vec![Reply::json(200, r#"{"tokens": "not a list"}"#)]).await;
    let client = processing(&stub);
    let err = client.card_tokens(70001, None).await.unwrap_err();
    assert!(matches!(err.kind, UpstreamErrorKind::Decode(_)), "{err:?}");
    let page = metrics.render();
    let series = |outcome: &str| {
        format!(
            r#"c2p_upstream_requests_total{{api="processing",operation="getTokensByCard",outcome="{outcome}",reason=""}}"#
        )
    };
    assert!(page.contains(&series("decode")), "{page}");
    // Other tests' successful calls of this operation may exist, but not as one more "ok" from
    // this one: the stub saw one request, counted once, as decode.
    assert_eq!(stub.requests().len(), 1);
}

#[tokio::test]
async fn a_token_list_is_dated_by_mastercards_date_header() {
    let stub = HttpStub::start(vec![
        Reply::json(200, r#"{"tokens": []}"#).with_header("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
    ])
    .await;
    let (tokens, observed_at) = processing(&stub)
        .card_tokens_observed(70001, None)
        .await
        .unwrap();
    assert!(tokens.is_empty());
    assert_eq!(observed_at, Some(784_111_777_000));
}

/// Deletes `card` (legacy lifecycle API), which must be refused with the 404 (not "gone").
async fn refused_with_404(http: &ApiClient, card: &str) {
    use c2p_enroll::mastercard::lifecycle::legacy;
    let ids = ("src-client", "SRC_TEST_SERVICE");
    let refused = legacy::delete_card(http, "client-id", ids, card, None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            refused.kind,
            UpstreamErrorKind::Rejected { status: 404, .. }
        ),
        "{card}: {refused:?}"
    );
}

/// A 404 is "Click to Pay does not hold it" only with an error body of Mastercard's: an empty
/// or HTML one (a proxy's, an ingress's, a wrong base URL's) is a refusal. It counted as the
/// card gone: a RemoveCard answered OK, the record REMOVED, with the card still in Click to Pay.
#[tokio::test]
async fn a_lifecycle_404_without_mastercards_error_body_is_a_refusal() {
    let html = Reply::Respond {
        status: 404,
        headers: vec![("content-type".into(), "text/html".into())],
        body: b"<html><body><h1>404 Not Found</h1>nginx</body></html>".to_vec(),
    };
    let empty = Reply::Respond {
        status: 404,
        headers: Vec::new(),
        body: Vec::new(),
    };
    let stub = HttpStub::start(vec![html, empty, Reply::json(404, r#"{"message":"no"}"#)]).await;
    let http = client(
        Api::Enroll,
        stub.url("/src/api/digital/payments"),
        fast_policy(),
        BreakerConfig::default(),
    );
    for card in ["card-html", "card-empty", "card-other-json"] {
        refused_with_404(&http, card).await;
    }
    assert_eq!(stub.requests().len(), 3);
}

/// An answer is read up to 1 MiB: a larger 2xx is undecodable, a larger error keeps no reason
/// (each was read whole into memory, on every call in flight).
#[tokio::test]
async fn answers_past_a_mebibyte_are_not_read_whole() {
    let huge = |status| Reply::Respond {
        status,
        headers: vec![("content-type".into(), "application/json".into())],
        body: vec![b' '; 2 << 20],
    };
    let stub = HttpStub::start(vec![huge(200), huge(500)]).await;
    let policy = HttpPolicy {
        max_attempts: 1,
        ..fast_policy()
    };
    let client = ProcessingClient::new(client(
        Api::Processing,
        stub.url("/p"),
        policy,
        BreakerConfig::default(),
    ));
    let err = search(&client).await.unwrap_err();
    assert!(
        matches!(&err.kind, UpstreamErrorKind::Decode(why) if why.contains("1048576")),
        "{err:?}"
    );
    let err = search(&client).await.unwrap_err();
    assert!(
        matches!(&err.kind, UpstreamErrorKind::ServerError { status: 500, reason } if *reason == Default::default()),
        "{err:?}"
    );
}

/// Redirects are not followed: a 302 to POST /cards was followed as a GET whose 200 read as an
/// enrollment (and a 307 would have sent the consumer's data where it pointed).
#[tokio::test]
async fn a_redirect_is_a_failed_answer_not_followed() {
    let stub = HttpStub::start(vec![Reply::json(500, "{}")]).await;
    let elsewhere = stub.url("/elsewhere").to_string();
    stub.script(vec![
        Reply::Respond {
            status: 302,
            headers: vec![("location".into(), elsewhere)],
            body: Vec::new(),
        },
        Reply::json(200, r#"{"maskedCard":{"srcDigitalCardId":"not-enrolled"}}"#),
    ]);
    let failed = enroll(&stub)
        .enroll_card(&enroll_request(), None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            failed.kind,
            UpstreamErrorKind::ServerError { status: 302, .. }
        ),
        "{failed:?}"
    );
    assert_eq!(stub.requests().len(), 1, "the redirect was followed");
}

#[tokio::test]
async fn a_lifecycle_404_counts_not_found_and_a_gateway_404_rejected() {
    use c2p_enroll::mastercard::lifecycle::{Answer, legacy};
    let metrics = c2p_enroll::metrics::handle().unwrap();
    let stub = HttpStub::start(vec![
        Reply::json(
            404,
            r#"{"status":404,"reason":"NOT_FOUND","message":"Card not found"}"#,
        ),
        Reply::json(
            404,
            r#"{"Errors":{"Error":[{"Source":"Gateway","ReasonCode":"RESOURCE_NOT_FOUND","Recoverable":false}]}}"#,
        ),
    ])
    .await;
    let http = client(
        Api::Enroll,
        stub.url("/src/api/digital/payments"),
        fast_policy(),
        BreakerConfig::default(),
    );
    let ids = ("src-client", "SRC_TEST_SERVICE");
    // The card is gone: an answer, counted apart from the refusals the error-ratio alert counts.
    let gone = legacy::delete_card(&http, "client-id", ids, "card-gone", None)
        .await
        .unwrap();
    assert!(matches!(gone, Answer::NotFound(_)), "{gone:?}");
    // The gateway routes no such path: a refusal, counted as one.
    refused_with_404(&http, "card-x").await;
    assert_eq!(stub.requests().len(), 2, "a 404 is not retried");

    let page = metrics.render();
    let series = |outcome: &str, reason: &str| {
        format!(
            r#"c2p_upstream_requests_total{{api="enroll",operation="deleteCard",outcome="{outcome}",reason="{reason}"}}"#
        )
    };
    assert!(page.contains(&series("not_found", "NOT_FOUND")), "{page}");
    // No lifecycle 404 of this process (other tests' included) counts as a refusal.
    assert!(!page.contains(&series("rejected", "NOT_FOUND")), "{page}");
    assert!(
        page.contains(&series("rejected", "RESOURCE_NOT_FOUND")),
        "{page}"
    );
}
