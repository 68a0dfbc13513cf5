//! (d) Poison: extreme event times, corrupt records written straight into Redis, garbage frames
//! on the ingest stream. Afterwards no card is unusable: each answers GetEnrollmentStatus, and
//! the enrollable one enrolls.

use crate::harness::{RedisServer, connect, t0};
use crate::wire::{frame, raw_ingest};
use crate::{Client, panics, request, sandbox_service, status_of};
use c2p_enroll::proto::v1::{
    EnrollmentState, NotificationIngestRequest, NotificationOutcome, TokenizationAuthorization,
    TokenizationDecision, notification_ingest_request::Event,
};
use prost::Message as _;
use std::time::{Duration, Instant};
use tonic::Code;

fn tar(id: &str, card: i64, seconds: i64, nanos: i32) -> NotificationIngestRequest {
    NotificationIngestRequest {
        notification_id: id.into(),
        sequence: 0,
        event_time: Some(prost_types::Timestamp { seconds, nanos }),
        event: Some(Event::TokenizationAuthorization(
            TokenizationAuthorization {
                card_contract_id: card,
                token_unique_reference: format!("DM4MMC00000{card}"),
                token_requestor_id: "50123197928".into(),
                wallet_name: "MDES for Merchants".into(),
                decision: TokenizationDecision::Approved as i32,
            },
        )),
    }
}

/// Cards of the sample CMS (70001 enrollable; 70002 blocked, 70003 expired, 70004 not
/// tokenizable) and three the CMS does not know.
const CARDS: [i64; 7] = [70_001, 70_002, 70_003, 70_004, 70_010, 70_011, 70_012];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_leaves_no_card_unusable() {
    let started = Instant::now();
    let redis = RedisServer::start();
    let mut service = sandbox_service(&redis.url(), &[]);
    let addr = service.listening_addr().await;
    let mut client = Client::new(connect(addr).await);

    // 1. Extreme event times on every card.
    let now = t0() + 3600;
    let times: [(i64, i32); 10] = [
        (i64::MAX, 999_999_999),
        (i64::MIN, 0),
        (99_999_999_999, 999_000_000),
        (200_000_000_000, 0),
        (-62_135_596_801, 0),
        (0, 0),
        (now + 86_400, 0),
        (now, -1),
        (now, 1_000_000_000),
        (now - 60 * 86_400, 0),
    ];
    let messages: Vec<_> = CARDS
        .iter()
        .flat_map(|&card| {
            times
                .iter()
                .enumerate()
                .map(move |(i, (s, n))| tar(&format!("p-{card}-{i}"), card, *s, *n))
        })
        .collect();
    let poison_sent = messages.len();
    let mut answers = client
        .notification_ingest(futures::stream::iter(messages))
        .await
        .unwrap()
        .into_inner();
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    let mut answered = 0;
    while let Some(a) = answers.message().await.unwrap() {
        answered += 1;
        *outcomes.entry(format!("{:?}", a.outcome())).or_default() += 1;
    }

    // 2. Corrupt records, written straight into Redis.
    let mut conn = redis.connection();
    let key = |card: i64| format!("c2p:{{card:{card}}}:enrollment");
    let corrupt: [(i64, &str); 5] = [
        (
            70_001,
            r#"{"card_contract_id":70001,"state":"in_progress","create_time_ms":1e+14"#,
        ),
        (70_002, ""),
        (70_010, "null"),
        (
            70_011,
            r#"{"card_contract_id":70011,"state":"bogus","create_time_ms":-1}"#,
        ),
        (70_012, "\u{0}\u{1}garbage\u{ff}"),
    ];
    for (card, value) in corrupt {
        let _: () = redis::cmd("SET")
            .arg(key(card))
            .arg(value)
            .query(&mut conn)
            .unwrap();
    }
    // A value of the wrong Redis type.
    let _: () = redis::cmd("DEL").arg(key(70_003)).query(&mut conn).unwrap();
    let _: () = redis::cmd("HSET")
        .arg(key(70_003))
        .arg("state")
        .arg("enrolled")
        .query(&mut conn)
        .unwrap();

    // 3. Garbage frames: each stream ends with an error status after what came before it.
    let valid = |id: &str| frame(&tar(id, 70_010, t0(), 0).encode_to_vec());
    let mut streams = Vec::new();
    let mut garbage = valid("g-1");
    garbage.extend(frame(&[0xff, 0xff, 0xff]));
    garbage.extend(valid("g-2"));
    streams.push(("garbage", garbage));
    let mut partial = valid("g-3");
    partial.extend([0, 0, 0, 0, 100, 1, 2, 3]);
    streams.push(("partial", partial));
    let mut compressed = valid("g-4");
    compressed.extend([1, 0, 0, 0, 3, 1, 2, 3]);
    streams.push(("compressed flag", compressed));
    let mut huge = valid("g-5");
    huge.extend([0, 0xff, 0xff, 0xff, 0xff, 1, 2, 3]);
    streams.push(("4 GiB length", huge));
    let mut frames = Vec::new();
    for (what, body) in streams {
        let (answers, status) = raw_ingest(addr, body).await;
        let answers = answers.len();
        frames.push(format!("{what}: {answers} answer(s), grpc-status {status}"));
        assert_eq!(
            answers, 1,
            "{what}: the valid message before it is answered"
        );
        assert_ne!(status, "0", "{what}: the stream ended OK");
    }

    // 4. Every card answers its status, and the enrollable one enrolls.
    // Unusable: an outage-like answer (the caller would retry for ever), not a final one such
    // as NOT_FOUND for a card the CMS does not know.
    let outage = |e: &tonic::Status| {
        matches!(
            e.code(),
            Code::Unavailable | Code::Internal | Code::Unknown | Code::DataLoss
        )
    };
    let mut unusable = Vec::new();
    for card in CARDS {
        match status_of(&mut client, card).await {
            Err(e) if outage(&e) => {
                unusable.push(format!("{card} status: {:?} {}", e.code(), e.message()))
            }
            _ => {}
        }
        match client
            .enroll_card(request(&format!("k-poison-{card}"), card))
            .await
        {
            Ok(r) => {
                let e = r.into_inner().enrollment.unwrap_or_default();
                if card == 70_001 && e.state() != EnrollmentState::Enrolled {
                    unusable.push(format!("{card} enroll: {:?}", e.state()));
                }
            }
            Err(e) if card == 70_001 || outage(&e) => {
                unusable.push(format!("{card} enroll: {:?} {}", e.code(), e.message()));
            }
            Err(_) => {}
        }
        if let Err(e) = status_of(&mut client, card).await
            && outage(&e)
        {
            unusable.push(format!(
                "{card} status after: {:?} {}",
                e.code(),
                e.message()
            ));
        }
    }
    // And a genuine notification still applies to a poisoned card.
    let mut answers = client
        .notification_ingest(futures::stream::iter([tar("p-ok", 70_012, now - 10, 0)]))
        .await
        .unwrap()
        .into_inner();
    let last = answers.message().await.unwrap().unwrap();
    if last.outcome() != NotificationOutcome::Applied {
        unusable.push(format!("70012 notification: {last:?}"));
    }
    let panic_lines = panics(&service.stderr());
    println!(
        "CHAOS (d) poison: sent {poison_sent} extreme times (answered {answered}: {outcomes:?}), \
         {} corrupt records, {}; lost 0, duplicates 0, panics {panic_lines}, cards unusable {}, {:.1}s",
        corrupt.len() + 1,
        frames.join("; "),
        unusable.len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(answered, poison_sent, "every poison message answered");
    assert!(unusable.is_empty(), "unusable: {unusable:#?}");
    assert_eq!(panic_lines, 0);
    service.signal("TERM");
    service.wait(Duration::from_secs(15)).await;
}
