//! Graceful drain: on SIGTERM health watchers see NOT_SERVING, their streams end within the
//! grace period, new calls are refused and the process exits 0.

use crate::harness::{ServiceProcess, TestService, connect, settings};
use std::time::Duration;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

const GRACE: &str = "3s";

#[tokio::test]
async fn sigterm_ends_health_watch_with_not_serving_and_exits_0() {
    let mut process = ServiceProcess::spawn(
        &["serve"],
        &[
            ("C2P_GRPC__LISTEN", "127.0.0.1:0"),
            ("C2P_SHUTDOWN__GRACE_PERIOD", GRACE),
        ],
    );
    let addr = process.listening_addr().await;
    let mut health = HealthClient::new(connect(addr).await);
    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    // Skip the NOT_SERVING reported before the first store probe.
    loop {
        let status = watch.message().await.unwrap().expect("watch open").status();
        if status == ServingStatus::Serving {
            break;
        }
    }

    process.signal("TERM");

    let grace = humantime::parse_duration(GRACE).unwrap();
    let seen = tokio::time::timeout(grace, async {
        let mut seen = Vec::new();
        // The stream ends (None) or is cut (Err); either way no message follows.
        while let Ok(Some(m)) = watch.message().await {
            seen.push(m.status());
        }
        seen
    })
    .await
    .expect("the health watch stream ended within the grace period");
    assert_eq!(seen, vec![ServingStatus::NotServing]);

    let status = process.wait(grace + Duration::from_secs(2)).await;
    assert_eq!(status.code(), Some(0), "{}", process.stderr());
}

#[tokio::test]
async fn sigint_also_drains_and_exits_0() {
    let mut process = ServiceProcess::spawn(&[], &[("C2P_GRPC__LISTEN", "127.0.0.1:0")]);
    process.listening_addr().await;
    process.signal("INT");
    assert_eq!(process.wait(Duration::from_secs(12)).await.code(), Some(0));
    assert!(process.stderr().contains("SIGINT"), "{}", process.stderr());
}

#[tokio::test]
async fn after_drain_new_calls_are_refused() {
    let service = TestService::start(&settings(&[])).await;
    let addr = service.running.local_addr();
    let outcome = service.running.shutdown().await;
    assert_eq!(outcome, c2p_enroll::server::DrainOutcome::Clean);
    let connected = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(1))
        .connect()
        .await;
    assert!(
        connected.is_err(),
        "the listener still accepts after the drain"
    );
}
