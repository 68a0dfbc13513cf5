//! One suite for the `EnrollmentStore` port, run against the in-memory adapter and against Redis.

use crate::harness::{RedisServer, settings};
use c2p_enroll::domain::{
    CardContractId, EnrollmentRecord, EnrollmentState, MaskedCard, Token, TokenStatus,
};
use c2p_enroll::store::{self, EnrollmentStore};
use redis::Commands;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;

fn card(id: i64) -> CardContractId {
    CardContractId::new(id).unwrap()
}

fn record(id: i64, state: EnrollmentState) -> EnrollmentRecord {
    let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
    let mut r = EnrollmentRecord::new(card(id), "default".into(), state, now);
    r.src_digital_card_id = Some("d1b4f0a2-0000-4000-8000-000000000001".into());
    r.masked_card = Some(MaskedCard {
        pan_last_four: "9726".into(),
        pan_expiration_month: "12".into(),
        pan_expiration_year: "2030".into(),
        payment_card_descriptor: Some("Mastercard".into()),
        payment_card_type: Some("CREDIT".into()),
        digital_card_status: Some("ACTIVE".into()),
    });
    r.token = Some(Token {
        token_unique_reference: "DM4MMC0000000001".into(),
        status: Some(TokenStatus::Active),
        decision: None,
        token_requestor_id: "50123197928".into(),
        updated_at: Some(now),
    });
    r
}

/// What every adapter must do.
async fn suite(store: Arc<dyn EnrollmentStore>) {
    store.ping().await.unwrap();
    assert_eq!(store.get(card(70001)).await.unwrap(), None);

    let first = record(70001, EnrollmentState::InProgress);
    store.put(&first).await.unwrap();
    assert_eq!(store.get(card(70001)).await.unwrap(), Some(first));

    let second = record(70001, EnrollmentState::Enrolled);
    store.put(&second).await.unwrap();
    assert_eq!(store.get(card(70001)).await.unwrap(), Some(second.clone()));

    // Cards are independent.
    assert_eq!(store.get(card(70002)).await.unwrap(), None);
    let other = record(70002, EnrollmentState::Failed);
    store.put(&other).await.unwrap();
    assert_eq!(store.get(card(70001)).await.unwrap(), Some(second));
    assert_eq!(store.get(card(70002)).await.unwrap(), Some(other));
}

/// Records vanish after `store.enrollment_ttl`.
async fn expiry(store: Arc<dyn EnrollmentStore>) {
    store
        .put(&record(70003, EnrollmentState::Enrolled))
        .await
        .unwrap();
    assert!(store.get(card(70003)).await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(store.get(card(70003)).await.unwrap(), None);
}

#[tokio::test]
async fn memory_store_passes_the_suite() {
    let s = settings(&[("C2P_STORE__ENROLLMENT_TTL", "1s")]);
    let store = store::from_settings(&s).unwrap();
    assert_eq!(store.kind(), "memory");
    suite(store.clone()).await;
    expiry(store).await;
}

#[tokio::test]
async fn redis_store_passes_the_suite() {
    let redis = RedisServer::start();
    let s = settings(&[
        ("C2P_REDIS__URL", &redis.url()),
        ("C2P_STORE__ENROLLMENT_TTL", "1s"),
    ]);
    let store = store::from_settings(&s).unwrap();
    assert_eq!(store.kind(), "redis");
    suite(store.clone()).await;
    expiry(store).await;
}

#[tokio::test]
async fn redis_keys_carry_the_prefix_and_the_card_hash_tag() {
    let redis = RedisServer::start();
    let s = settings(&[
        ("C2P_REDIS__URL", &redis.url()),
        ("C2P_REDIS__KEY_PREFIX", "bank7:"),
    ]);
    let store = store::from_settings(&s).unwrap();
    store
        .put(&record(70001, EnrollmentState::Enrolled))
        .await
        .unwrap();

    let mut conn = redis.connection();
    let keys: Vec<String> = conn.keys("*").unwrap();
    assert_eq!(keys, vec!["bank7:{card:70001}:enrollment".to_string()]);
    let ttl: i64 = conn.pttl("bank7:{card:70001}:enrollment").unwrap();
    assert!(ttl > 0, "the record has no TTL ({ttl})");
    // The stored value holds the masked card only: no 16-digit PAN.
    let value: String = conn.get("bank7:{card:70001}:enrollment").unwrap();
    assert!(value.contains("\"pan_last_four\":\"9726\""), "{value}");
    assert!(!value.contains("5186001700009726"));
}

#[tokio::test]
async fn redis_store_reports_unavailable_then_recovers() {
    let mut redis = RedisServer::start();
    let s = settings(&[("C2P_REDIS__URL", &redis.url())]);
    let store = store::from_settings(&s).unwrap();
    store.ping().await.unwrap();
    redis.stop();
    let err = store.get(card(70001)).await.unwrap_err();
    assert!(matches!(err, store::StoreError::Unavailable(_)), "{err:?}");
    redis.restart();
    // The connection manager reconnects by itself within a few attempts.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while store.ping().await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "no reconnect");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(store.get(card(70001)).await.unwrap(), None);
}
