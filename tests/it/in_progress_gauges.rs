//! The gauges of the IN_PROGRESS index move: `c2p_enrollments_in_progress` counts a card left
//! IN_PROGRESS, `c2p_enrollments_in_progress_overdue` counts it once it is older than
//! `enroll.reconcile_after` plus two reconcile intervals while the reconciler cannot take it
//! (its lock is held), and both fall back to 0 once the lock is gone and the reconciler
//! finished it. The service is its own process (gauges are process-wide) in mastercard mode
//! against the standalone simulator, whose first `POST /cards` hangs.

use crate::flows::request;
use crate::harness::{RedisServer, ServiceProcess, connect, read_env};
use c2p_enroll::proto::v1::{
    EnrollmentState, GetEnrollmentStatusRequest, enrollment_service_client::EnrollmentServiceClient,
};
use std::time::Duration;

/// The two gauges on `/metrics`, `None` until they are set.
async fn gauges(metrics: &str) -> Option<(f64, f64)> {
    let page = reqwest::get(format!("http://{metrics}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let value = |name: &str| {
        page.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
    };
    Some((
        value("c2p_enrollments_in_progress")?,
        value("c2p_enrollments_in_progress_overdue")?,
    ))
}

/// Polls the gauges until `want` holds (at most 15 s); every reading seen.
async fn until(metrics: &str, what: &str, want: impl Fn((f64, f64)) -> bool) -> Vec<(f64, f64)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut seen = Vec::new();
    loop {
        if let Some(g) = gauges(metrics).await {
            if seen.last() != Some(&g) {
                seen.push(g);
            }
            if want(g) {
                return seen;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gauges never {what}: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `addr` of the "metrics listening" line (JSON in mastercard mode, or text).
fn metrics_addr(line: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(line) {
        Ok(json) => json["addr"].as_str().unwrap().to_owned(),
        Err(_) => line
            .split("addr=")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned(),
    }
}

#[tokio::test]
async fn the_in_progress_gauges_count_a_card_the_reconciler_cannot_finish_then_fall_to_zero() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let faults = dir.path().join("faults.toml");
    // The first POST /cards never answers: its caller gives up, the record stays IN_PROGRESS.
    std::fs::write(&faults, "[routes.enroll_cards]\nhang = true\ntimes = 1\n").unwrap();
    let keys = dir.path().join("keys");
    let mut simulator = ServiceProcess::spawn(
        &[
            "sandbox",
            "--dir",
            keys.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--faults",
            faults.to_str().unwrap(),
        ],
        &[],
    );
    simulator.wait_for_line("SIMULATOR running alone").await;
    let mut env = read_env(&keys.join("service.env"));
    env.extend(
        [
            ("C2P_REDIS__URL", redis.url()),
            ("C2P_GRPC__LISTEN", "127.0.0.1:0".to_owned()),
            ("C2P_ENROLL__LEASE", "1s".to_owned()),
            // Overdue 4.4 s after it went IN_PROGRESS: time enough to hold the card's lock
            // before the reconciler would take it.
            ("C2P_ENROLL__RECONCILE_AFTER", "4s".to_owned()),
            ("C2P_ENROLL__RECONCILE_INTERVAL", "200ms".to_owned()),
        ]
        .map(|(k, v)| (k.to_owned(), v)),
    );
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut service = ServiceProcess::spawn(&[], &env);
    let addr = service.listening_addr().await;
    let metrics = metrics_addr(&service.wait_for_line("metrics listening").await);
    let mut client = EnrollmentServiceClient::new(connect(addr).await);
    until(&metrics, "(0, 0) at start", |g| g == (0.0, 0.0)).await;

    let mut call = tonic::Request::new(request("k-gauges", 70001));
    call.set_timeout(Duration::from_millis(1500));
    let gave_up = client.enroll_card(call).await.unwrap_err();
    // Another owner holds the card: the reconciler's passes find it busy and leave it.
    let _: () = redis::cmd("SET")
        .arg("c2p:{card:70001}:lock")
        .arg("someone-else")
        .arg("PX")
        .arg(120_000)
        .query(&mut redis.connection())
        .unwrap();
    let status = |client: &mut EnrollmentServiceClient<_>| {
        let mut client = client.clone();
        async move {
            client
                .get_enrollment_status(GetEnrollmentStatusRequest {
                    card_contract_id: 70001,
                    refresh: false,
                })
                .await
                .unwrap()
                .into_inner()
                .enrollment
                .unwrap()
                .state()
        }
    };
    assert_eq!(status(&mut client).await, EnrollmentState::InProgress);

    let rising = until(&metrics, "(1, 1)", |g| g == (1.0, 1.0)).await;
    // Still counted five passes later: the card is not finished while its lock is held.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(gauges(&metrics).await, Some((1.0, 1.0)));
    assert_eq!(status(&mut client).await, EnrollmentState::InProgress);

    let _: () = redis::cmd("DEL")
        .arg("c2p:{card:70001}:lock")
        .query(&mut redis.connection())
        .unwrap();
    let falling = until(&metrics, "back to (0, 0)", |g| g == (0.0, 0.0)).await;
    // The reconciler finished it: no Click to Pay token, so a retryable FAILED.
    assert_eq!(status(&mut client).await, EnrollmentState::Failed);
    println!(
        "IN_PROGRESS gauges (in_progress, overdue): the caller gave up with {:?}; {rising:?} while the lock was held, then {falling:?}",
        gave_up.code()
    );
    service.signal("TERM");
    assert!(service.wait(Duration::from_secs(15)).await.success());
}
