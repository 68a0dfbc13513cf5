//! The Redis store's record cache of status reads (README: "Status reads and the record cache"),
//! over a real Redis with several replicas: a change made through one replica reaches another
//! replica's cached answer through the change feed, well within the staleness bound; a Redis
//! restart empties the cache; what no script publishes (`FLUSHALL`) lasts at most
//! `store.cache_max_age`.

use crate::flows::tar;
use crate::harness::{RedisServer, TestService, settings, start_sandbox, t0};
use c2p_enroll::proto::v1::{
    Enrollment, EnrollmentState, GetEnrollmentStatusRequest, NotificationIngestRequest,
    NotificationOutcome, TokenStatus,
};
use std::time::Duration;
use tokio::time::Instant;

async fn ingest(service: &TestService, notification: NotificationIngestRequest) {
    let mut answers = service
        .client()
        .notification_ingest(futures::stream::iter([notification]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    assert_eq!(answer.outcome(), NotificationOutcome::Applied, "{answer:?}");
}

/// [`ingest`] as a gateway does it after a Redis restart: a connection of the service that
/// has not been used since may find its socket broken (`FAILED`, "resend"), and the message is
/// resent (at most 10 times, 100 ms apart) until it is applied.
async fn ingest_resending(service: &TestService, notification: NotificationIngestRequest) {
    for _ in 0..10 {
        let mut answers = service
            .client()
            .notification_ingest(futures::stream::iter([notification.clone()]))
            .await
            .unwrap()
            .into_inner();
        let answer = answers.message().await.unwrap().unwrap();
        match answer.outcome() {
            NotificationOutcome::Applied => return,
            NotificationOutcome::Failed => tokio::time::sleep(Duration::from_millis(100)).await,
            _ => panic!("neither applied nor to resend: {answer:?}"),
        }
    }
    panic!("not applied after 10 sends");
}

async fn status(service: &TestService, card: i64) -> Result<Enrollment, tonic::Status> {
    service
        .client()
        .get_enrollment_status(GetEnrollmentStatusRequest {
            card_contract_id: card,
            refresh: false,
        })
        .await
        .map(|r| r.into_inner().enrollment.unwrap())
}

/// Moves the stored record's revision on by one, as an edit by hand would: nothing published.
fn edit_unpublished(redis: &RedisServer, card: i64) {
    let key = format!("c2p:{{card:{card}}}:enrollment");
    let mut conn = redis.connection();
    let json: String = redis::cmd("GET").arg(&key).query(&mut conn).unwrap();
    let mut record: serde_json::Value = serde_json::from_str(&json).unwrap();
    record["revision"] = (record["revision"].as_i64().unwrap() + 1).into();
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(record.to_string())
        .arg("KEEPTTL")
        .query(&mut conn)
        .unwrap();
}

/// Reads `card` on `service` until its answer comes from the cache: an unpublished edit made
/// between two reads no longer shows. Returns the cached answer.
async fn wait_cached(service: &TestService, redis: &RedisServer, card: i64) -> Enrollment {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let seen = status(service, card).await.unwrap();
        edit_unpublished(redis, card);
        let again = status(service, card).await.unwrap();
        if again.revision == seen.revision {
            return again;
        }
        assert!(Instant::now() < deadline, "{card} never cached");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `card` on `service` until `done` holds for its answer (errors, e.g. while Redis
/// restarts, are retried); fails after `within`.
async fn eventually(
    service: &TestService,
    card: i64,
    within: Duration,
    what: &str,
    done: impl Fn(&Enrollment) -> bool,
) -> Enrollment {
    let deadline = Instant::now() + within;
    loop {
        let answer = status(service, card).await;
        if let Ok(enrollment) = &answer
            && done(enrollment)
        {
            return enrollment.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {within:?}; last answer {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn replicas_caches_follow_changes_and_a_restart_or_flush_leaves_nothing_stale() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let sandbox = start_sandbox().await;
    let writer =
        TestService::start_with(&settings(&[("C2P_REDIS__URL", &url)]), sandbox.clone()).await;
    // A bound far beyond the test's waits: only the feed can explain a change seen in time.
    let reader = TestService::start_with(
        &settings(&[
            ("C2P_REDIS__URL", &url),
            ("C2P_STORE__CACHE_MAX_AGE", "10m"),
        ]),
        sandbox.clone(),
    )
    .await;
    // A short bound, for what no script publishes.
    let short = TestService::start_with(
        &settings(&[("C2P_REDIS__URL", &url), ("C2P_STORE__CACHE_MAX_AGE", "1s")]),
        sandbox.clone(),
    )
    .await;

    // A token of card 70001, through the writer; the reader caches the record.
    ingest(&writer, tar("n-1", 70001, t0(), "50123197928")).await;
    let cached = wait_cached(&reader, &redis, 70001).await;
    assert_eq!(cached.state(), EnrollmentState::TokenizedElsewhere);
    assert_ne!(
        cached.token.as_ref().map(|t| t.status()),
        Some(TokenStatus::Suspended)
    );

    // A change through the writer: the reader's cached answer follows through the feed.
    ingest(
        &writer,
        crate::contract::status_change("n-2", 70001, t0() + 1, TokenStatus::Suspended),
    )
    .await;
    let changed = eventually(
        &reader,
        70001,
        Duration::from_secs(10),
        "the change through the other replica",
        |e| {
            e.token
                .as_ref()
                .is_some_and(|t| t.status() == TokenStatus::Suspended)
        },
    )
    .await;
    assert!(changed.revision > cached.revision);

    // Redis restarts empty: the reader's cache goes with the feed's connection, and the card is
    // read again (Mastercard has no token for it: NOT_ENROLLED).
    let _ = wait_cached(&reader, &redis, 70001).await;
    redis.restart();
    eventually(
        &reader,
        70001,
        Duration::from_secs(20),
        "no stale record after a restart",
        |e| e.state() == EnrollmentState::NotEnrolled,
    )
    .await;

    // FLUSHALL publishes nothing: a cached record lasts at most store.cache_max_age. (The
    // writer has not used its connections since the restart.)
    ingest_resending(&writer, tar("n-3", 70004, t0(), "50123197928")).await;
    let cached = wait_cached(&short, &redis, 70004).await;
    assert_eq!(cached.state(), EnrollmentState::TokenizedElsewhere);
    let _: () = redis::cmd("FLUSHALL")
        .query(&mut redis.connection())
        .unwrap();
    eventually(
        &short,
        70004,
        Duration::from_secs(20),
        "no stale record after FLUSHALL",
        |e| e.state() == EnrollmentState::NotEnrolled,
    )
    .await;
}
