//! The reconciler finishes enrollments that their callers left IN_PROGRESS: from the token list
//! when the card was tokenized, as a retryable FAILED when it was not.

use crate::flows::request;
use crate::harness::{RedisServer, TestService, settings, start_sandbox};
use c2p_enroll::proto::v1::{EnrollmentState, GetEnrollmentStatusRequest, TokenStatus};
use c2p_enroll::sandbox::faults::{Route, RouteFault};
use std::time::Duration;

async fn state_of(service: &TestService, card: i64) -> c2p_enroll::proto::v1::Enrollment {
    service
        .client()
        .get_enrollment_status(GetEnrollmentStatusRequest {
            card_contract_id: card,
            refresh: false,
        })
        .await
        .unwrap()
        .into_inner()
        .enrollment
        .unwrap()
}

/// Starts an enrollment whose POST /cards gets `fault`, with a 1.5 s deadline: the caller
/// gives up and never retries; the record is left IN_PROGRESS.
async fn abandoned(service: &TestService, card: i64, fault: RouteFault) {
    service.sandbox.set_fault(Route::EnrollCards, fault);
    let mut call = tonic::Request::new(request(&format!("k-{card}"), card));
    call.set_timeout(Duration::from_millis(1500));
    let status = service.client().enroll_card(call).await.unwrap_err();
    println!("caller gave up: {:?}", status.code());
    service
        .sandbox
        .set_fault(Route::EnrollCards, RouteFault::default());
    assert_eq!(
        state_of(service, card).await.state(),
        EnrollmentState::InProgress
    );
}

async fn until_not_in_progress(
    service: &TestService,
    card: i64,
) -> c2p_enroll::proto::v1::Enrollment {
    for _ in 0..400 {
        let e = state_of(service, card).await;
        if e.state() != EnrollmentState::InProgress {
            return e;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("card {card} still IN_PROGRESS after 20 s");
}

fn reconciler_settings(redis: &RedisServer) -> c2p_enroll::config::Settings {
    settings(&[
        ("C2P_REDIS__URL", &redis.url()),
        ("C2P_ENROLL__LEASE", "1s"),
        // Well past the abandoned caller's 1.5 s deadline: the check that the record was left
        // IN_PROGRESS must not race the reconciler on a loaded machine.
        ("C2P_ENROLL__RECONCILE_AFTER", "4s"),
        ("C2P_ENROLL__RECONCILE_INTERVAL", "200ms"),
    ])
}

#[tokio::test]
async fn a_tokenized_card_left_in_progress_becomes_enrolled_without_a_retry() {
    let redis = RedisServer::start();
    // No notification target: the TAR/TCN that would also finish the record are lost too.
    let service =
        TestService::start_with(&reconciler_settings(&redis), start_sandbox().await).await;
    // Mastercard processes POST /cards but its answer never arrives.
    abandoned(
        &service,
        70001,
        RouteFault {
            drop_response: true,
            ..RouteFault::default()
        },
    )
    .await;
    let finished = until_not_in_progress(&service, 70001).await;
    assert_eq!(finished.state(), EnrollmentState::Enrolled);
    assert_eq!(finished.token.unwrap().status(), TokenStatus::Active);
    // Dropped from the index: after the ENROLLED record (the reconciler's order), so it may
    // still be there when the record first reads ENROLLED.
    let mut left = usize::MAX;
    for _ in 0..100 {
        left = redis::cmd("ZCARD")
            .arg("c2p:in_progress")
            .query(&mut redis.connection())
            .unwrap();
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        left, 0,
        "still in the IN_PROGRESS index 5 s after its ENROLLED record"
    );
}

#[tokio::test]
async fn a_card_never_tokenized_becomes_a_retryable_failure_and_the_same_key_then_enrolls() {
    let redis = RedisServer::start();
    let service = TestService::start(&reconciler_settings(&redis)).await;
    // Mastercard never answers and processes nothing.
    abandoned(
        &service,
        70001,
        RouteFault {
            hang: true,
            ..RouteFault::default()
        },
    )
    .await;
    let finished = until_not_in_progress(&service, 70001).await;
    assert_eq!(finished.state(), EnrollmentState::Failed);
    let failure = finished.failure.unwrap();
    assert_eq!(
        failure.reason(),
        c2p_enroll::proto::v1::ErrorReason::EnrollmentNotConfirmed
    );
    assert!(failure.retryable);
    // The caller's retry with its key resumes and enrolls.
    let enrolled = service
        .client()
        .enroll_card(request("k-70001", 70001))
        .await
        .unwrap()
        .into_inner()
        .enrollment
        .unwrap();
    assert_eq!(enrolled.state(), EnrollmentState::Enrolled);
    assert_eq!(service.sandbox.count(Route::EnrollCards), 2);
}

#[tokio::test]
async fn refreshes_write_one_dedup_marker_per_change_not_per_call() {
    let redis = RedisServer::start();
    let service = TestService::start(&settings(&[("C2P_REDIS__URL", &redis.url())])).await;
    let enrolled = service
        .client()
        .enroll_card(request("k-refresh", 70001))
        .await
        .unwrap()
        .into_inner()
        .enrollment
        .unwrap();
    let tur = enrolled.token.unwrap().token_unique_reference;
    let refresh = || async {
        service
            .client()
            .get_enrollment_status(GetEnrollmentStatusRequest {
                card_contract_id: 70001,
                refresh: true,
            })
            .await
            .unwrap()
            .into_inner()
            .enrollment
            .unwrap()
    };
    let markers = || {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("c2p:{card:70001}:notification:upstream*")
            .query(&mut redis.connection())
            .unwrap();
        keys.len()
    };
    for _ in 0..20 {
        refresh().await;
    }
    assert_eq!(
        markers(),
        0,
        "20 refreshes that changed nothing wrote markers"
    );
    // A token list is dated by Mastercard's Date header, in whole seconds: the change must come
    // a second after the last notification to be newer than it.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert!(service.sandbox.set_token_status(&tur, "SUSPENDED"));
    for _ in 0..5 {
        let token = refresh().await.token.unwrap();
        assert_eq!(token.status(), TokenStatus::Suspended);
        // Dated by the simulator's Date header (whole seconds), not the replica's clock.
        assert_eq!(token.event_time.unwrap().nanos, 0);
    }
    println!(
        "20 unchanged refreshes + 5 after one change: {} marker(s)",
        markers()
    );
    assert_eq!(markers(), 1);
}
