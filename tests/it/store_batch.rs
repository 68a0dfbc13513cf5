//! `EnrollmentStore::apply_notifications`, the ingest path's batch: each notification of a
//! batch gets the effect it would get on its own, in the order given, whatever the others do
//! (a copy within the batch, an id reused, an older one, a time the store refuses, a stored
//! record the script cannot read), on the memory store, a standalone Redis and a Cluster; and
//! the writes are those one-by-one application makes, change events included.

use crate::harness::{RedisCluster, RedisServer, settings};
use c2p_enroll::domain::{
    CardContractId, STORE_INTEGER_LIMIT, TokenEvent, TokenEventKind, TokenStatus,
    TokenizationDecision,
};
use c2p_enroll::store::{EnrollmentStore, NotificationEffect, StoreError};
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::StreamExt as _;

const T: i64 = 1_800_000_000_000;

fn card(id: i64) -> CardContractId {
    CardContractId::new(id).unwrap()
}

fn event(id: &str, at_ms: i64, card_id: i64, kind: TokenEventKind) -> TokenEvent {
    TokenEvent {
        notification_id: id.into(),
        event_at_ms: at_ms,
        card_contract_id: card(card_id),
        token_unique_reference: "DM4MMC0000000001".into(),
        token_requestor_id: "50123197928".into(),
        wallet_name: "MDES for Merchants".into(),
        kind,
    }
}

fn effects(results: Vec<Result<NotificationEffect, StoreError>>) -> Vec<String> {
    results
        .into_iter()
        .map(|r| match r {
            Ok(effect) => format!("{effect:?}"),
            Err(StoreError::Refused(_)) => "Refused".into(),
            Err(e) => format!("error: {e}"),
        })
        .collect()
}

async fn batch_suite(store: Arc<dyn EnrollmentStore>, base: i64) {
    let (a, b) = (base, base + 1);
    let mut changes = store.watch(card(a)).await.unwrap();
    // Give the feed its subscription before the writes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let active = TokenEventKind::StatusChanged(TokenStatus::Active);
    let approved = TokenEventKind::Authorization(TokenizationDecision::Approved);
    let batch = vec![
        event("n-1", T, a, approved),
        // The same notification again, within the batch.
        event("n-1", T, a, approved),
        // Its id again with other content.
        event("n-1", T + 5, a, approved),
        event("n-2", T + 10, a, active),
        // Older than n-2's status: nothing changes.
        event(
            "n-3",
            T + 1,
            a,
            TokenEventKind::StatusChanged(TokenStatus::Suspended),
        ),
        // A time the store cannot keep exactly.
        event("n-4", STORE_INTEGER_LIMIT, b, active),
        event("n-5", T, b, active),
    ];
    let got = effects(store.apply_notifications(&batch).await);
    assert_eq!(
        got,
        [
            "Applied",
            "Duplicate",
            "Conflict",
            "Applied",
            "Stale",
            "Refused",
            "Applied"
        ],
        "{}",
        store.kind()
    );
    // Applied one by one, the record is the same: the batch wrote what each would have.
    let record = store.get(card(a)).await.unwrap().unwrap();
    let token = record.token.unwrap();
    assert_eq!(token.status, Some(TokenStatus::Active));
    assert_eq!(token.decision, Some(TokenizationDecision::Approved));
    assert_eq!(token.status_version.unwrap().by, "n-2");
    // Each applied change of the card was published, in order.
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let change = tokio::time::timeout(Duration::from_secs(5), changes.next())
            .await
            .expect("a change event")
            .unwrap();
        seen.push(change.revision);
    }
    assert!(seen[0] < seen[1], "{seen:?}");
    assert_eq!(seen[1], record.revision);
    // Again: all seen before (the refused one was never remembered).
    let again = effects(store.apply_notifications(&batch).await);
    assert_eq!(
        again,
        [
            "Duplicate",
            "Duplicate",
            "Conflict",
            "Duplicate",
            "Duplicate",
            "Refused",
            "Duplicate"
        ],
        "{}",
        store.kind()
    );
    assert!(store.apply_notifications(&[]).await.is_empty());
}

#[tokio::test]
async fn memory_store_applies_batches_as_one_by_one() {
    batch_suite(
        c2p_enroll::server::open_store(&settings(&[])).unwrap(),
        60_000,
    )
    .await;
}

#[tokio::test]
async fn redis_store_applies_batches_as_one_by_one() {
    let redis = RedisServer::start();
    let store =
        c2p_enroll::server::open_store(&settings(&[("C2P_REDIS__URL", &redis.url())])).unwrap();
    batch_suite(store.clone(), 60_000).await;

    // A record the script cannot read, in the middle of a batch: set aside, the notification
    // applied to a fresh record; the others around it applied as usual.
    let mut conn = redis.connection();
    let _: () = redis::cmd("SET")
        .arg("c2p:{card:60011}:enrollment")
        .arg(r#"{"card_contract_id":60011,"create_time_ms":1e+14"#)
        .query(&mut conn)
        .unwrap();
    let active = TokenEventKind::StatusChanged(TokenStatus::Active);
    let batch = vec![
        event("q-1", T, 60_010, active),
        event("q-2", T, 60_011, active),
        event("q-3", T, 60_012, active),
    ];
    let got = effects(store.apply_notifications(&batch).await);
    assert_eq!(got, ["Applied", "Applied", "Applied"]);
    let aside: Vec<String> = redis::cmd("KEYS")
        .arg("c2p:{card:60011}:enrollment:quarantined:*")
        .query(&mut conn)
        .unwrap();
    assert_eq!(aside.len(), 1);
    assert!(store.get(card(60_011)).await.unwrap().is_some());

    // Two notifications of one card whose record the script cannot read, in one batch: the
    // first one's settling sets the record aside, and the second is applied as well (it was
    // answered FAILED: its own settling found the record readable and took the script's
    // failure for another kind).
    let _: () = redis::cmd("SET")
        .arg("c2p:{card:60013}:enrollment")
        .arg(r#"{"card_contract_id":60013,"create_time_ms":1e+14"#)
        .query(&mut conn)
        .unwrap();
    let batch = vec![
        event("r-1", T, 60_013, active),
        event("r-2", T + 1, 60_013, approved()),
    ];
    let got = effects(store.apply_notifications(&batch).await);
    assert_eq!(got, ["Applied", "Applied"]);

    // A stored revision at 10^14 (a record another writer made: the scripts never write one):
    // the next one would be written rounded, so the script's guard refuses the write. Every
    // later notification of the card would meet it and be answered FAILED for ever: the record
    // is set aside as an unreadable one is, and the notification applied to a fresh record;
    // the next in the batch is applied as usual.
    let key = "c2p:{card:60010}:enrollment";
    let stored = set_revision(&mut conn, key, 100_000_000_000_000);
    let batch = vec![
        event("g-1", T + 1, 60_010, approved()),
        event("g-2", T + 1, 60_012, approved()),
    ];
    let got = effects(store.apply_notifications(&batch).await);
    assert_eq!(got, ["Applied", "Applied"]);
    let aside: Vec<String> = redis::cmd("KEYS")
        .arg("c2p:{card:60010}:enrollment:quarantined:*")
        .query(&mut conn)
        .unwrap();
    assert_eq!(aside.len(), 1, "{aside:?}");
    let kept: String = redis::cmd("GET").arg(&aside[0]).query(&mut conn).unwrap();
    assert_eq!(
        kept,
        stored.to_string(),
        "the record set aside is kept as it was"
    );
    let fresh = store.get(card(60_010)).await.unwrap().unwrap();
    assert!(fresh.revision < 100_000_000_000_000, "{}", fresh.revision);
    // One notification alone (merged by the script in one call) meets the same guard.
    set_revision(&mut conn, key, 100_000_000_000_000);
    let got = effects(
        store
            .apply_notifications(&[event("g-3", T + 2, 60_010, approved())])
            .await,
    );
    assert_eq!(got, ["Applied"]);
    let aside: Vec<String> = redis::cmd("KEYS")
        .arg("c2p:{card:60010}:enrollment:quarantined:*")
        .query(&mut conn)
        .unwrap();
    assert_eq!(aside.len(), 2, "{aside:?}");
    // Two notifications of that card in one batch, a revision at 10^14 - 1 (the next would be
    // 10^14): the first one's settling sets the record aside and is applied to a fresh one;
    // the second is applied onto that fresh record, which is not set aside in turn (it was,
    // and the first one's effect went with it).
    set_revision(&mut conn, key, 99_999_999_999_999);
    let batch = vec![
        event("g-4", T + 3, 60_010, approved()),
        event("g-5", T + 4, 60_010, active),
    ];
    let got = effects(store.apply_notifications(&batch).await);
    assert_eq!(got, ["Applied", "Applied"]);
    let aside: Vec<String> = redis::cmd("KEYS")
        .arg("c2p:{card:60010}:enrollment:quarantined:*")
        .query(&mut conn)
        .unwrap();
    assert_eq!(
        aside.len(),
        3,
        "only the record that could not be written: {aside:?}"
    );
    let token = store
        .get(card(60_010))
        .await
        .unwrap()
        .unwrap()
        .token
        .unwrap();
    assert_eq!(token.status, Some(TokenStatus::Active));
    assert_eq!(token.decision, Some(TokenizationDecision::Approved));
}

/// Rewrites the record under `key` with `revision` (as another writer could): the record
/// written.
fn set_revision(conn: &mut redis::Connection, key: &str, revision: i64) -> serde_json::Value {
    let raw: String = redis::cmd("GET").arg(key).query(conn).unwrap();
    let mut stored: serde_json::Value = serde_json::from_str(&raw).unwrap();
    stored["revision"] = serde_json::json!(revision);
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg(stored.to_string())
        .query(conn)
        .unwrap();
    stored
}

fn approved() -> TokenEventKind {
    TokenEventKind::Authorization(TokenizationDecision::Approved)
}

#[tokio::test]
async fn redis_cluster_store_applies_batches_as_one_by_one() {
    let cluster = RedisCluster::start();
    let store = c2p_enroll::server::open_store(&settings(&[
        ("C2P_REDIS__URL", &cluster.urls()),
        ("C2P_REDIS__CLUSTER", "true"),
    ]))
    .unwrap();
    batch_suite(store.clone(), 60_000).await;
    // Cards on many slots in one batch: each group on its own node, every effect in place.
    let events: Vec<_> = (0..200)
        .map(|i| {
            event(
                &format!("s-{i}"),
                T,
                61_000 + i,
                TokenEventKind::StatusChanged(TokenStatus::Active),
            )
        })
        .collect();
    let got = effects(store.apply_notifications(&events).await);
    assert!(got.iter().all(|e| e == "Applied"), "{got:?}");
    for i in [0, 99, 199] {
        let record = store.get(card(61_000 + i)).await.unwrap().unwrap();
        assert_eq!(
            record.token.unwrap().status_version.unwrap().by,
            format!("s-{i}")
        );
    }
}

/// The Redis store merges a batch in the service and writes each record only if it is still
/// the one it read (`store/merge_plan.rs`); a record another replica changed in between is
/// applied again by the Lua merge. Two replicas apply interleaved batches of the same few cards
/// at once, until such retries happened: every notification got one effect, and each card's
/// record is the one the memory store makes of all of them (the merge is a join: the order of
/// arrival does not matter).
#[tokio::test]
async fn replicas_racing_on_the_same_cards_end_where_one_store_ends() {
    use c2p_enroll::store::{KeySpace, RecordCacheSettings, RedisSettings, RedisStore};
    let redis = RedisServer::start();
    let s = settings(&[("C2P_REDIS__URL", &redis.url())]);
    let open = |r: &RedisSettings| {
        Arc::new(
            RedisStore::connect_lazy(
                &redis.url(),
                r,
                KeySpace::new("race:"),
                c2p_enroll::store::Retention {
                    enrollment: Duration::from_secs(3600),
                    notification_dedup: Duration::from_secs(3600),
                    idempotency: Duration::from_secs(3600),
                },
                RecordCacheSettings {
                    capacity: 0,
                    max_age: Duration::from_secs(1),
                },
            )
            .unwrap(),
        )
    };
    let (one, two) = (open(&s.redis), open(&s.redis));
    let memory = c2p_enroll::server::open_store(&settings(&[])).unwrap();
    let statuses = [
        TokenStatus::Active,
        TokenStatus::Suspended,
        TokenStatus::Inactive,
        TokenStatus::Active,
    ];
    let cards = 4;
    let (mut sent, mut answered, mut retries) = (0usize, 0usize, 0u64);
    let mut all = Vec::new();
    // Bounded: rounds until both replicas retried, at most 200 (each takes milliseconds).
    for round in 0..200i64 {
        let batch = |replica: i64| -> Vec<TokenEvent> {
            (0..16)
                .map(|i| {
                    let at = T + round * 1000 + i * 10 + replica;
                    event(
                        &format!("r{round}-{replica}-{i}"),
                        at,
                        70_000 + (i % cards),
                        TokenEventKind::StatusChanged(statuses[(i as usize + round as usize) % 4]),
                    )
                })
                .collect()
        };
        let (a, b) = (batch(0), batch(1));
        let (ra, rb) = tokio::join!(one.apply_notifications(&a), two.apply_notifications(&b));
        for (events, results) in [(&a, ra), (&b, rb)] {
            assert_eq!(results.len(), events.len());
            sent += events.len();
            for r in effects(results) {
                assert!(r == "Applied" || r == "Stale", "{r}");
                answered += 1;
            }
        }
        all.extend(a);
        all.extend(b);
        retries = one.merge_retries().min(two.merge_retries());
        if retries > 0 && round >= 20 {
            break;
        }
    }
    for e in &all {
        memory.apply_notification(e).await.unwrap();
    }
    let mut differ = 0;
    for c in 0..cards {
        let got = one.get(card(70_000 + c)).await.unwrap().unwrap();
        let want = memory.get(card(70_000 + c)).await.unwrap().unwrap();
        if (got.state, &got.token) != (want.state, &want.token) {
            differ += 1;
        }
    }
    println!(
        "RACE sent {sent} answered {answered} merge retries {} + {} cards differing {differ}",
        one.merge_retries(),
        two.merge_retries()
    );
    assert_eq!(answered, sent);
    assert_eq!(differ, 0, "a write was lost");
    assert!(
        retries > 0,
        "the replicas never raced: the retry path was not exercised"
    );
}

/// A record write Redis refuses (here a TTL that rounds to `PX 0`, which the settings no longer
/// allow) leaves no dedup marker behind: the notification is answered failed, and applies when
/// it is sent again, instead of being answered duplicate without ever being written.
#[tokio::test]
async fn a_refused_record_write_leaves_no_marker_behind() {
    use c2p_enroll::store::{KeySpace, RecordCacheSettings, RedisStore};
    let redis = RedisServer::start();
    let s = settings(&[("C2P_REDIS__URL", &redis.url())]);
    let open = |enrollment: Duration| {
        RedisStore::connect_lazy(
            &redis.url(),
            &s.redis,
            KeySpace::new("refused:"),
            c2p_enroll::store::Retention {
                enrollment,
                notification_dedup: Duration::from_secs(3600),
                idempotency: Duration::from_secs(3600),
            },
            RecordCacheSettings {
                capacity: 0,
                max_age: Duration::from_secs(1),
            },
        )
        .unwrap()
    };
    let active = TokenEventKind::StatusChanged(TokenStatus::Active);
    let batch = vec![
        event("f-1", T, 71_000, active),
        event("f-2", T, 71_001, active),
    ];
    let refused = open(Duration::from_micros(500));
    let got = effects(refused.apply_notifications(&batch).await);
    assert!(got.iter().all(|e| e.starts_with("error")), "{got:?}");
    let fine = open(Duration::from_secs(3600));
    let got = effects(fine.apply_notifications(&batch).await);
    assert_eq!(got, ["Applied", "Applied"]);
}
