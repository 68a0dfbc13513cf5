//! (b) NotificationIngest at full speed from one client while the service's redis-server
//! (appendonly yes, appendfsync always) is killed -9 and restarted twice: every message answered
//! APPLIED or DUPLICATE is still there afterwards, and those answered FAILED during the outages
//! apply on resend.

use crate::harness::{RedisServer, connect, t0};
use crate::{Client, panics, sandbox_service, status_of};
use c2p_enroll::proto::v1::{
    EnrollmentSource, NotificationIngestRequest, NotificationOutcome, TokenizationAuthorization,
    TokenizationDecision, notification_ingest_request::Event,
};
use futures::StreamExt as _;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const FIRST_CARD: i64 = 200_000;
const BATCH: usize = 50;
/// At most this many distinct messages (bounds the time of the checks); the sending must end
/// because both outages are over, not at this cap. Batched ingest with cheap spans answers
/// over 4,000 messages a second even through the outages (quick FAILED answers): 15,000 was
/// reached before the outages' 3.5 s were over.
const MAX_MESSAGES: usize = 60_000;

/// Message `i`: a TAR for a card of its own, so that its resend is a DUPLICATE, never STALE. A
/// resend is the same message byte for byte (one event time for the run): the same id with
/// other content would be REJECTED as a reused id.
fn message(i: usize) -> NotificationIngestRequest {
    static AT: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    let at = *AT.get_or_init(t0);
    NotificationIngestRequest {
        notification_id: format!("b-{i}"),
        sequence: 0,
        event_time: Some(prost_types::Timestamp {
            seconds: at,
            nanos: 0,
        }),
        event: Some(Event::TokenizationAuthorization(
            TokenizationAuthorization {
                card_contract_id: FIRST_CARD + i as i64,
                token_unique_reference: format!("DM4MMC{i:010}"),
                token_requestor_id: "50123197928".into(),
                wallet_name: "MDES for Merchants".into(),
                decision: TokenizationDecision::Approved as i32,
            },
        )),
    }
}

/// Sends `ids` on one stream; the outcome of each answered one (a broken stream leaves the
/// rest unanswered).
async fn ingest(client: &mut Client, ids: &[usize]) -> BTreeMap<usize, NotificationOutcome> {
    let mut answers = BTreeMap::new();
    let messages: Vec<_> = ids.iter().map(|&i| message(i)).collect();
    let mut call = tonic::Request::new(futures::stream::iter(messages));
    call.set_timeout(Duration::from_secs(10));
    let Ok(response) = client.notification_ingest(call).await else {
        return answers;
    };
    let mut stream = response.into_inner();
    while let Ok(Some(r)) = stream.message().await {
        if let Some(i) = r
            .notification_id
            .strip_prefix("b-")
            .and_then(|s| s.parse().ok())
        {
            answers.insert(i, r.outcome());
        }
    }
    answers
}

fn acknowledged(o: NotificationOutcome) -> bool {
    matches!(
        o,
        NotificationOutcome::Applied | NotificationOutcome::Duplicate
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_at_full_speed_across_two_redis_kills_loses_no_acknowledged_notification() {
    let started = Instant::now();
    let mut redis =
        RedisServer::start_with_args(&["--appendonly", "yes", "--appendfsync", "always"]);
    let mut service = sandbox_service(&redis.url(), &[]);
    let mut client = Client::new(connect(service.listening_addr().await).await);

    // The killer: twice kill -9 (SIGKILL), 1 s down, restart on the same port and directory.
    let done = Arc::new(AtomicBool::new(false));
    let killer = {
        let done = done.clone();
        tokio::task::spawn_blocking(move || {
            for _ in 0..2 {
                std::thread::sleep(Duration::from_millis(700));
                redis.stop();
                std::thread::sleep(Duration::from_millis(700));
                redis.restart();
            }
            std::thread::sleep(Duration::from_millis(700));
            done.store(true, Ordering::SeqCst);
            redis
        })
    };

    let mut first: BTreeMap<usize, NotificationOutcome> = BTreeMap::new();
    let mut next = 0;
    let mut sent = 0;
    while !done.load(Ordering::SeqCst) && next < MAX_MESSAGES {
        let ids: Vec<usize> = (next..next + BATCH).collect();
        next += BATCH;
        sent += ids.len();
        let answers = ingest(&mut client, &ids).await;
        for i in ids {
            first.insert(i, answers.get(&i).copied().unwrap_or_default());
        }
    }
    assert!(
        done.load(Ordering::SeqCst),
        "{MAX_MESSAGES} messages sent before both outages were over"
    );
    let _redis = killer.await.unwrap();
    let acked: Vec<usize> = first
        .iter()
        .filter(|(_, o)| acknowledged(**o))
        .map(|(i, _)| *i)
        .collect();
    let failed: Vec<usize> = first
        .iter()
        .filter(|(_, o)| **o == NotificationOutcome::Failed)
        .map(|(i, _)| *i)
        .collect();
    let unanswered = first
        .values()
        .filter(|o| **o == NotificationOutcome::Unspecified)
        .count();
    let other: Vec<_> = first
        .iter()
        .filter(|(_, o)| {
            !acknowledged(**o)
                && !matches!(
                    **o,
                    NotificationOutcome::Failed | NotificationOutcome::Unspecified
                )
        })
        .collect();

    // Resend what was not acknowledged until it is.
    let mut pending: Vec<usize> = first
        .iter()
        .filter(|(_, o)| !acknowledged(**o))
        .map(|(i, _)| *i)
        .collect();
    let mut resent = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !pending.is_empty() && Instant::now() < deadline {
        let mut still = Vec::new();
        for chunk in pending.chunks(BATCH) {
            let answers = ingest(&mut client, chunk).await;
            for &i in chunk {
                match answers.get(&i) {
                    Some(o) if acknowledged(*o) => {
                        resent.insert(i, *o);
                    }
                    _ => still.push(i),
                }
            }
        }
        pending = still;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let failed_applied = failed
        .iter()
        .filter(|i| resent.get(*i) == Some(&NotificationOutcome::Applied))
        .count();
    let failed_duplicate = failed
        .iter()
        .filter(|i| resent.get(*i) == Some(&NotificationOutcome::Duplicate))
        .count();

    // Every acknowledged one: its resend is a DUPLICATE and its card's record holds its token.
    let mut lost = Vec::new();
    for chunk in acked.chunks(BATCH) {
        let answers = ingest(&mut client, chunk).await;
        for &i in chunk {
            if answers.get(&i) != Some(&NotificationOutcome::Duplicate) {
                lost.push((i, answers.get(&i).copied()));
            }
        }
    }
    let missing_records: Vec<usize> = futures::stream::iter(acked.iter().copied())
        .map(|i| {
            let mut client = client.clone();
            async move {
                let card = FIRST_CARD + i as i64;
                match status_of(&mut client, card).await {
                    Ok(e) if e.source() == EnrollmentSource::Store && e.token.is_some() => None,
                    _ => Some(i),
                }
            }
        })
        .buffer_unordered(8)
        .filter_map(|x| async move { x })
        .collect()
        .await;
    // Every id is sent once in the first pass: a DUPLICATE there would be a double delivery.
    let duplicates = first
        .values()
        .filter(|o| **o == NotificationOutcome::Duplicate)
        .count();
    let panic_lines = panics(&service.stderr());
    println!(
        "CHAOS (b) ingest across 2 redis kill -9: sent {sent}, acknowledged {}, failed {} \
         (then applied {failed_applied}, duplicate {failed_duplicate}), unanswered {unanswered}, \
         never acknowledged {}, lost {} (records missing {}), duplicates {duplicates}, panics {panic_lines}, \
         other outcomes {}, {:.1}s",
        acked.len(),
        failed.len(),
        pending.len(),
        lost.len(),
        missing_records.len(),
        other.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(other.is_empty(), "unexpected outcomes: {other:?}");
    assert!(lost.is_empty(), "acknowledged, then lost: {lost:?}");
    assert!(
        missing_records.is_empty(),
        "records missing: {missing_records:?}"
    );
    assert!(pending.is_empty(), "never acknowledged: {pending:?}");
    assert!(!failed.is_empty(), "no message met an outage");
    assert_eq!(duplicates, 0);
    assert_eq!(panic_lines, 0);
    service.signal("TERM");
    service.wait(Duration::from_secs(15)).await;
}
