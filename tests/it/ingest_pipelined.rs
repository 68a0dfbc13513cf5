//! A gateway that pipelines small notifications much faster than the service applies them,
//! keeping no window of its own, must never trip HTTP/2 flood protection: h2 closes a
//! connection with `GOAWAY ENHANCE_YOUR_CALM "too_many_data_frames"` once the small DATA frames
//! it holds unread cost more than its budget, losing every message in flight.

use crate::flows::tar;
use crate::harness::{RedisServer, TestService, settings, t0};
use crate::wire::{pipelined_ingest, pipelined_ingest_streams};
use c2p_enroll::proto::v1::NotificationOutcome;
use prost::Message as _;
use std::collections::BTreeSet;

const MESSAGES: u64 = 50_000;

/// `count` encoded TARs over 100 cards, ids `<prefix>-<i>`, sequences from 0.
fn encoded_tars(prefix: &str, count: u64) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            let mut n = tar(
                &format!("{prefix}-{i}"),
                70_100 + (i % 100) as i64,
                t0(),
                "50123197928",
            );
            n.sequence = i;
            n.encode_to_vec()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_thousand_small_notifications_pipelined_without_a_window_are_all_answered() {
    let redis = RedisServer::start();
    let service = TestService::start(&settings(&[("C2P_REDIS__URL", &redis.url())])).await;
    let messages = encoded_tars("n", MESSAGES);
    let size = messages[0].len();
    let started = std::time::Instant::now();
    let run = pipelined_ingest(service.running.local_addr(), messages).await;
    println!(
        "{} of {MESSAGES} answers ({size}-byte messages, one DATA frame each) in {:?}, \
         grpc-status {}, connection {:?}",
        run.answers.len(),
        started.elapsed(),
        run.status,
        run.connection_error
    );
    assert_eq!(run.connection_error, None, "the connection was closed");
    assert_eq!(run.status, "0");
    assert_eq!(run.answers.len() as u64, MESSAGES);
    let sequences: BTreeSet<u64> = run.answers.iter().map(|a| a.sequence).collect();
    assert_eq!(
        sequences.len() as u64,
        MESSAGES,
        "each message answered once"
    );
    // 100 cards, the same token and time: each applied or stale (ties go to the greater id).
    assert!(run.answers.iter().all(|a| matches!(
        a.outcome(),
        NotificationOutcome::Applied | NotificationOutcome::Stale
    )));
}

/// A gateway's workers pipelining on several streams of one connection, while the store stalls
/// (Redis stopped for a second): every stream's queue fills and its window with it. h2's budget
/// for unread small frames is per connection, so it must hold every such stream at once: with
/// the budget of one stream's worth, four stalled streams closed the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_pipelined_streams_on_one_connection_survive_a_store_stall() {
    const STREAMS: u64 = 8;
    const EACH: u64 = 8_000;
    let redis = RedisServer::start();
    let service = TestService::start(&settings(&[("C2P_REDIS__URL", &redis.url())])).await;
    let streams: Vec<Vec<Vec<u8>>> = (0..STREAMS)
        .map(|s| encoded_tars(&format!("n-{s}"), EACH))
        .collect();
    let size = streams[0][0].len();
    redis.freeze();
    let thaw = async {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        redis.thaw();
    };
    let started = std::time::Instant::now();
    let ((runs, connection_error), ()) = tokio::join!(
        pipelined_ingest_streams(service.running.local_addr(), streams),
        thaw
    );
    let answered: usize = runs.iter().map(|(answers, _)| answers.len()).sum();
    println!(
        "{answered} of {} answers on {STREAMS} streams of one connection ({size}-byte messages, \
         one DATA frame each, Redis stopped for the first second) in {:?}, connection {:?}",
        STREAMS * EACH,
        started.elapsed(),
        connection_error
    );
    assert_eq!(connection_error, None, "the connection was closed");
    for (answers, status) in &runs {
        assert_eq!(status, "0");
        let sequences: BTreeSet<u64> = answers.iter().map(|a| a.sequence).collect();
        assert_eq!(sequences.len() as u64, EACH, "each message answered once");
        assert!(answers.iter().all(|a| matches!(
            a.outcome(),
            NotificationOutcome::Applied | NotificationOutcome::Stale
        )));
    }
}
