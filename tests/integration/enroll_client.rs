//! `examples/enroll_client.rs` against the service binary (mastercard mode) and the standalone
//! simulator, whose first card search answers 429 with `Retry-After: 2`. The service makes one
//! attempt per Processing call (`mastercard.processing.max_attempts` 1), so the first
//! EnrollCard answers UNAVAILABLE UPSTREAM_UNAVAILABLE with a `RetryInfo` of 2 s: the client
//! must wait at least that long and send the same request with the same key, which enrolls the
//! card, and its watch must then see ENROLLED. A refusal (FAILED_PRECONDITION
//! CARD_NOT_ELIGIBLE) is answered once and never retried.

#[allow(dead_code)] // its `main` and command line are the example's, not the test's
#[path = "../../examples/enroll_client.rs"]
pub(crate) mod example;

use crate::support::{Service, Simulator, free_port};
use c2p_enroll::proto::v1::EnrollmentState;
use c2p_enroll::proto::v1::enrollment_service_client::EnrollmentServiceClient;
use example::{ClientConfig, connect, enroll, request, watch_until_final};
use std::time::Duration;
use tonic::Code;

/// The simulator's `Retry-After`, which the service passes on as `RetryInfo`.
const RETRY_AFTER: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_client_honours_retry_info_and_retries_only_what_the_error_table_says() {
    let port = free_port();
    let simulator = Simulator::start(
        "[routes.searches]\nthrottle = \"2s\"\ntimes = 1\n",
        &format!("http://127.0.0.1:{port}"),
    );
    let mut env: Vec<(String, String)> = simulator.env();
    env.push(("C2P_GRPC__LISTEN".into(), format!("127.0.0.1:{port}")));
    env.push((
        "C2P_MASTERCARD__PROCESSING__MAX_ATTEMPTS".into(),
        "1".into(),
    ));
    let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let service = Service::start(&env);

    let config = ClientConfig::new(format!("http://127.0.0.1:{port}"));
    // Its own backoff is far shorter than the RetryInfo: a wait of 2 s is the RetryInfo's.
    assert!(config.initial_backoff < RETRY_AFTER / 4);
    let mut client = EnrollmentServiceClient::new(connect(&config).await.expect("connect"));
    let key = format!("example-{:08x}", rand::random::<u32>());
    let enrolled = tokio::time::timeout(
        Duration::from_secs(60),
        enroll(
            &mut client,
            &config,
            request(&key, 70001, "jane.doe@example.com"),
        ),
    )
    .await
    .expect("EnrollCard within 60 s")
    .unwrap_or_else(|e| panic!("gave up: {e:?}\n{}", service.output()));

    // One failed attempt, retried with the same key after the RetryInfo delay.
    assert_eq!(enrolled.failures.len(), 1, "{:?}", enrolled.failures);
    let first = &enrolled.failures[0];
    assert_eq!(
        (first.attempt, first.code, first.reason.as_str()),
        (1, Code::Unavailable, "UPSTREAM_UNAVAILABLE"),
        "{first:?}"
    );
    assert_eq!(first.retry_info, Some(RETRY_AFTER), "{first:?}");
    assert_eq!(first.idempotency_key, key);
    let waited = first.waited.expect("it retried");
    assert!(
        waited >= RETRY_AFTER,
        "waited {waited:?}, under the RetryInfo"
    );
    // The second attempt enrolled the card: a fresh answer (a failure that says "same key" is
    // not stored), not a replay.
    let enrollment = enrolled.response.enrollment.clone().expect("an enrollment");
    assert_eq!(enrollment.state(), EnrollmentState::Enrolled);
    assert!(!enrolled.response.replayed);

    let seen = watch_until_final(&mut client, &config, 70001)
        .await
        .expect("the watch sees a final state");
    let last = seen.last().expect("a message");
    assert_eq!(last.state(), EnrollmentState::Enrolled);
    assert!(last.revision >= enrollment.revision);

    // The same key later: the stored answer, at the first attempt.
    let again = enroll(
        &mut client,
        &config,
        request(&key, 70001, "jane.doe@example.com"),
    )
    .await
    .expect("replayed");
    assert!(again.response.replayed && again.failures.is_empty());

    // A refusal is an answer: one attempt, no wait.
    let refused = enroll(
        &mut client,
        &config,
        request(&format!("{key}-4"), 70004, "jane.doe@example.com"),
    )
    .await
    .expect_err("card 70004 is not eligible");
    assert_eq!(refused.status.code(), Code::FailedPrecondition);
    assert_eq!(refused.failures.len(), 1, "{:?}", refused.failures);
    assert_eq!(refused.failures[0].reason, "CARD_NOT_ELIGIBLE");
    assert_eq!(refused.failures[0].waited, None);

    println!(
        "INTEGRATION enroll_client: attempt 1 {:?}/{} with RetryInfo {:?}, waited {:.2}s, attempt 2 (same key) {}; watch saw {} message(s) ending {}; same key again: replayed; CARD_NOT_ELIGIBLE: 1 attempt, not retried",
        first.code,
        first.reason,
        RETRY_AFTER,
        waited.as_secs_f64(),
        enrollment.state().as_str_name(),
        seen.len(),
        last.state().as_str_name()
    );
}
