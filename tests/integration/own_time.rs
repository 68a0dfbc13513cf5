//! `c2p_enroll_own_duration_seconds`: an EnrollCard whose two Mastercard calls each hold
//! 400 ms (the standalone simulator's injected latency), or whose search is throttled once
//! (a 429 with `Retry-After: 1`, retried after that second), is counted with what the service
//! added only, not with the time it waited for Mastercard, while the call's own latency
//! histogram has it all.

use crate::enroll_client::example::request;
use crate::support::{Service, Simulator, free_port};
use c2p_enroll::proto::v1::enrollment_service_client::EnrollmentServiceClient;
use std::time::Duration;

const UPSTREAM: f64 = 0.4;

/// `name{labels} value` of a Prometheus page.
fn sample(page: &str, series: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in:\n{page}"))
        .trim()
        .parse()
        .unwrap()
}

/// The steps of a new enrollment (`c2p_enroll_stage_duration_seconds`); `recover` runs only
/// when a call resumes one whose POST /cards may have gone out.
const STEPS: [&str; 7] = [
    "begin", "lock", "search", "write", "enroll", "record", "settle",
];

/// One EnrollCard against a simulator with `faults` (after a `validate_only` one): the call's
/// latency and its own time, in seconds, from the service's metrics page (which must hold one
/// own-time sample, of a new enrollment, and buckets fine enough to read a 10 ms objective),
/// and the page.
async fn enroll_once(faults: &str) -> (f64, f64, String) {
    let port = free_port();
    let simulator = Simulator::start(faults, &format!("http://127.0.0.1:{port}"));
    let mut env: Vec<(String, String)> = simulator.env();
    env.push(("C2P_GRPC__LISTEN".into(), format!("127.0.0.1:{port}")));
    env.push(("C2P_LOG__FORMAT".into(), "json".into()));
    let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let service = Service::start(&env);
    let metrics_line = service
        .output()
        .lines()
        .find(|l| l.contains("metrics listening"))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no metrics listener:\n{}", service.output()));
    let metrics_addr = serde_json::from_str::<serde_json::Value>(&metrics_line).unwrap()["addr"]
        .as_str()
        .unwrap()
        .to_owned();

    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = EnrollmentServiceClient::new(channel);
    // The reference client's request (examples/enroll_client.rs).
    let key = format!("own-time-{:08x}", rand::random::<u32>());
    let mut call = tonic::Request::new(request(&key, 70001, "jane.doe@example.com"));
    call.set_timeout(Duration::from_secs(30));
    // Checked and refused before any enrollment runs: not counted.
    let mut checked = request(&key, 70001, "jane.doe@example.com");
    checked.validate_only = true;
    client.enroll_card(checked).await.unwrap();
    client
        .enroll_card(call)
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", service.output()));

    let page = reqwest::get(format!("http://{metrics_addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        sample(
            &page,
            r#"c2p_enroll_own_duration_seconds_count{result="new"}"#
        ),
        1.0,
        "one enrollment, the validate_only call not counted:\n{page}"
    );
    assert!(page.contains(r#"c2p_enroll_own_duration_seconds_bucket{result="new",le="0.01"}"#));
    assert!(page.contains(r#"c2p_enroll_own_duration_seconds_bucket{result="new",le="0.0075"}"#));
    (
        sample(
            &page,
            r#"c2p_grpc_request_duration_seconds_sum{rpc="EnrollCard"}"#,
        ),
        sample(
            &page,
            r#"c2p_enroll_own_duration_seconds_sum{result="new"}"#,
        ),
        page,
    )
}

/// Each step's time (`stage` label), in seconds; every step ran once.
fn steps(page: &str) -> Vec<(&'static str, f64)> {
    assert!(
        !page.contains(r#"c2p_enroll_stage_duration_seconds_count{stage="recover"}"#),
        "a new enrollment recovered nothing:\n{page}"
    );
    STEPS
        .iter()
        .map(|step| {
            let series = |part: &str| {
                format!(r#"c2p_enroll_stage_duration_seconds_{part}{{stage="{step}"}}"#)
            };
            assert_eq!(sample(page, &series("count")), 1.0, "{step}");
            (*step, sample(page, &series("sum")))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_own_time_leaves_out_the_mastercard_waits() {
    let (total, own, page) = enroll_once(
        "[routes.searches]\nlatency = \"400ms\"\n[routes.enroll_cards]\nlatency = \"400ms\"\n",
    )
    .await;
    assert!(total >= 2.0 * UPSTREAM, "the call took {total} s");
    // What is left once both waits are out: signing, the memory store, gRPC.
    assert!(
        own > 0.0 && own < UPSTREAM,
        "own time {own} s of a {total} s call holds Mastercard waits"
    );
    // The steps that hold the two waits count their own part only, and all the steps lie
    // inside the own time (the handler's decoding and answer are outside them).
    let steps = steps(&page);
    for (step, took) in &steps {
        assert!(
            *took < UPSTREAM,
            "{step} took {took} s: a Mastercard wait in it"
        );
    }
    // Both requests were signed on the signing pool, which timed each operation's wait and run.
    let pool = |phase: &str| {
        sample(
            &page,
            &format!(r#"c2p_signing_pool_duration_seconds_count{{phase="{phase}"}}"#),
        )
    };
    assert!(pool("queued") >= 2.0, "{page}");
    assert_eq!(pool("queued"), pool("running"));
    let in_steps: f64 = steps.iter().map(|(_, took)| took).sum();
    assert!(
        in_steps > 0.0 && in_steps <= own,
        "steps {in_steps} s against an own time of {own} s: {steps:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wait_before_a_retry_is_mastercards_time() {
    // The first search answers 429 with Retry-After: 1; the service asks again a second later.
    let (total, own, _) = enroll_once("[routes.searches]\nthrottle = \"1s\"\ntimes = 1\n").await;
    assert!(
        total >= 1.0,
        "the call took {total} s: no retry after the 429?"
    );
    assert!(
        own > 0.0 && own < UPSTREAM,
        "own time {own} s of a {total} s call holds the wait before the retry"
    );
}
