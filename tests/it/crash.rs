//! Crash and resume, with real processes: service A is killed (SIGKILL) after its POST /cards
//! reached the simulator but before the answer came back; service B, same key, resumes with the
//! same `srcCorrelationId`, and the simulator enrolls the card only once.

use crate::flows::request;
use crate::harness::{RedisServer, ServiceProcess, connect, read_env};
use c2p_enroll::config::Settings;
use c2p_enroll::mastercard::setup::Upstream;
use c2p_enroll::proto::v1::{EnrollmentState, enrollment_service_client::EnrollmentServiceClient};
use std::time::Duration;
use tonic::Code;

/// The idempotency record's JSON, once one exists with the given phase.
async fn idempotency_record_in_phase(redis: &RedisServer, phase: &str) -> serde_json::Value {
    let mut conn = redis.connection();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("c2p:idempotency:*")
            .query(&mut conn)
            .unwrap();
        for key in keys {
            let value: String = redis::cmd("GET").arg(&key).query(&mut conn).unwrap();
            let json: serde_json::Value = serde_json::from_str(&value).unwrap();
            if json["phase"] == phase {
                return json;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no idempotency record reached {phase}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_killed_call_resumes_with_the_same_correlation_id_and_no_second_enrollment() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let faults = dir.path().join("faults.toml");
    // The first POST /cards is processed, but its answer never comes back.
    std::fs::write(
        &faults,
        "[routes.enroll_cards]\ndrop_response = true\ntimes = 1\n",
    )
    .unwrap();
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
    let upstream = {
        let settings = Settings::load(None, env.clone()).unwrap();
        Upstream::from_settings(&settings.mastercard, &settings.programs).unwrap()
    };
    env.extend(
        [
            ("C2P_REDIS__URL", redis.url()),
            ("C2P_GRPC__LISTEN", "127.0.0.1:0".to_owned()),
            ("C2P_ENROLL__LEASE", "1s".to_owned()),
            ("C2P_MASTERCARD__ENROLL__ATTEMPT_TIMEOUT", "60s".to_owned()),
        ]
        .map(|(k, v)| (k.to_owned(), v)),
    );
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();

    let mut a = ServiceProcess::spawn(&[], &env);
    let mut client_a = EnrollmentServiceClient::new(connect(a.listening_addr().await).await);
    let call_a = tokio::spawn(async move { client_a.enroll_card(request("k-crash", 70001)).await });
    let sent = idempotency_record_in_phase(&redis, "enroll_sent").await;
    let correlation = sent["src_correlation_id"].as_str().unwrap().to_owned();
    // Wait until the simulator has enrolled the card (its token exists), then kill A.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while upstream
        .processing
        .card_tokens(70001, None)
        .await
        .unwrap()
        .is_empty()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the simulator never processed A's POST /cards"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.signal("KILL");
    a.wait(Duration::from_secs(10)).await;
    call_a.abort();

    // B logs its Mastercard calls (debug), to show it does not send POST /cards again.
    let mut env_b = env.clone();
    env_b.push(("C2P_LOG__FILTER", "c2p_enroll=debug,info"));
    let mut b = ServiceProcess::spawn(&[], &env_b);
    let mut client_b = EnrollmentServiceClient::new(connect(b.listening_addr().await).await);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let enrollment = loop {
        match client_b.enroll_card(request("k-crash", 70001)).await {
            Ok(r) => break r.into_inner().enrollment.unwrap(),
            // A's lease has not run out yet.
            Err(e) if e.code() == Code::Aborted && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{e:?}\n{}", b.stderr()),
        }
    };
    assert_eq!(enrollment.state(), EnrollmentState::Enrolled);
    assert_eq!(
        enrollment.src_correlation_id, correlation,
        "resumed with A's srcCorrelationId"
    );
    assert!(
        b.stderr().contains("resuming an interrupted enrollment"),
        "{}",
        b.stderr()
    );
    let tokens = upstream.processing.card_tokens(70001, None).await.unwrap();
    assert_eq!(tokens.len(), 1, "the simulator enrolled the card once");
    // B finished from the token list instead of re-sending POST /cards.
    let log = b.stderr();
    assert!(log.contains("finished from the token list"), "{log}");
    assert!(
        !log.lines()
            .any(|l| l.contains("mastercard call finished") && l.contains("putCard")),
        "B sent POST /cards again:\n{log}"
    );
    b.signal("TERM");
    assert!(b.wait(Duration::from_secs(15)).await.success());
}

#[tokio::test]
async fn an_attempt_that_loses_its_card_lock_stops_before_post_cards() {
    lock_lost_under_a_running_attempt(LockLoss::TakenOver).await;
}

/// The lock expired and the attempt that took it over finished and released it: the stalled
/// attempt must not pick the free lock up again (its heartbeat only renews).
#[tokio::test]
async fn an_attempt_whose_lock_was_freed_meanwhile_does_not_take_it_again() {
    lock_lost_under_a_running_attempt(LockLoss::Freed).await;
}

enum LockLoss {
    TakenOver,
    Freed,
}

async fn lock_lost_under_a_running_attempt(loss: LockLoss) {
    use crate::harness::{TestService, settings};
    use c2p_enroll::sandbox::faults::{Route, RouteFault};
    let redis = RedisServer::start();
    let service = TestService::start(&settings(&[
        ("C2P_REDIS__URL", &redis.url()),
        ("C2P_ENROLL__LEASE", "900ms"),
    ]))
    .await;
    // The search takes 2 s: time for the lock to be taken over under the running attempt.
    service.sandbox.set_fault(
        Route::Searches,
        RouteFault {
            latency: Some(Duration::from_secs(2)),
            ..RouteFault::default()
        },
    );
    let mut client = service.client();
    let call = tokio::spawn(async move { client.enroll_card(request("k-lost", 70001)).await });
    // Wait until the attempt holds the card lock, then give it to another owner (as a paused
    // process' lock would be taken over once it expired).
    let mut conn = redis.connection();
    let lock = "c2p:{card:70001}:lock";
    redis.wait_for_key(lock).await;
    match loss {
        LockLoss::TakenOver => {
            let _: () = redis::cmd("SET")
                .arg(lock)
                .arg("another-attempt")
                .arg("PX")
                .arg(10_000)
                .query(&mut conn)
                .unwrap();
        }
        LockLoss::Freed => {
            let _: i64 = redis::cmd("DEL").arg(lock).query(&mut conn).unwrap();
        }
    }
    let status = call.await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    // Past the search's latency: the stopped attempt never sent POST /cards.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(service.sandbox.count(Route::EnrollCards), 0);
}
