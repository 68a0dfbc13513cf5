//! `examples/ingest_gateway.rs` against the service binary, with the stream ended under it
//! mid-way in every way the contract names: connections past `grpc.limits.max_connection_age`
//! cut after their grace, and a drain (SIGTERM: UNAVAILABLE SERVER_DRAINING with RetryInfo)
//! followed by a restart on the same port (refused connections meanwhile). The store is a
//! Redis, so that deduplication outlives the process. Every notification must end answered
//! exactly once, APPLIED or DUPLICATE, and be applied in the store: none lost. A drain answers
//! every message it read, so a message resent only because of a drain must not be DUPLICATE.

#[allow(dead_code)] // its `main` and CLI are the example's, not the test's
#[path = "../../examples/ingest_gateway.rs"]
mod ingest_gateway;

use crate::support::{Redis, Service, free_port};
use ingest_gateway::{GatewayConfig, demo, feed, read_jsonl, run};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const NOTIFICATIONS: u64 = 2400;
/// A final answer: the outcome, and why the notification was resent before it.
type Final = (String, Vec<String>);
/// Notifications per second from the source: the run lasts about 3 s.
const RATE: u32 = 800;

fn service_env(port: u16, redis: &Redis) -> Vec<(&'static str, String)> {
    vec![
        ("C2P_GRPC__LISTEN", format!("127.0.0.1:{port}")),
        ("C2P_REDIS__URL", redis.url()),
        // A stream lives at most 0.9 s: several are cut during the run.
        ("C2P_GRPC__LIMITS__MAX_CONNECTION_AGE", "700ms".into()),
        ("C2P_GRPC__LIMITS__MAX_CONNECTION_AGE_GRACE", "200ms".into()),
        ("C2P_SHUTDOWN__GRACE_PERIOD", "3s".into()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_reference_gateway_loses_nothing_across_drain_restart_and_cut_connections() {
    let redis = Redis::start();
    let port = free_port();
    let service = Service::start(&service_env(port, &redis));

    let run_id = format!("{:08x}", rand::random::<u32>());
    let notifications = demo(NOTIFICATIONS, 91_000_000, &run_id);
    let ids: Vec<String> = notifications
        .iter()
        .map(|n| n.notification_id.clone())
        .collect();

    // Half-way (after the first connection was cut at 0.9 s): drain the service, then start
    // it again on the same port.
    let restart_env = service_env(port, &redis);
    let restarter = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs_f64(
            NOTIFICATIONS as f64 / f64::from(RATE) / 2.0,
        ))
        .await;
        tokio::task::spawn_blocking(move || {
            let mut service = service;
            let status = service.terminate(Duration::from_secs(10));
            assert!(
                status.success(),
                "exit {status} after SIGTERM:\n{}",
                service.output()
            );
            let drained = service.output();
            drop(service);
            (drained, Service::start(&restart_env))
        })
        .await
        .expect("restart")
    });

    // Every final answer per notification: (outcome, why it was resent).
    let answers: Arc<Mutex<HashMap<String, Vec<Final>>>> = Arc::default();
    let sink = answers.clone();
    let mut config = GatewayConfig::new(format!("http://127.0.0.1:{port}"));
    config.max_backoff = Duration::from_secs(1);
    let report = tokio::time::timeout(
        Duration::from_secs(60),
        run(&config, feed(notifications, RATE), move |done| {
            let outcome = ingest_gateway_outcome(done.answer.outcome);
            sink.lock()
                .expect("answers")
                .entry(done.notification.notification_id)
                .or_default()
                .push((outcome, done.resent_after));
        }),
    )
    .await
    .expect("the gateway finished within 60 s")
    .expect("valid endpoint");
    let (drained_log, mut restarted) = restarter.await.expect("restarter");

    // The gateway's own books.
    let answers = answers.lock().expect("answers").clone();
    let lost = ids.iter().filter(|id| !answers.contains_key(*id)).count();
    let twice: Vec<_> = answers.iter().filter(|(_, a)| a.len() != 1).collect();
    let wrong: Vec<_> = answers
        .iter()
        .filter(|(_, a)| a.iter().any(|(o, _)| o != "APPLIED" && o != "DUPLICATE"))
        .collect();
    let finals: Vec<&Final> = answers.values().flatten().collect();
    let duplicates = finals.iter().filter(|(o, _)| o == "DUPLICATE").count();
    // A drain answers every message it read: what it left unanswered was not applied, so its
    // resend is APPLIED. Only a cut connection can lose the answer of an applied message.
    const DRAIN: &str = "Unavailable/SERVER_DRAINING";
    let after_drain_only = |why: &Vec<String>| why.iter().all(|w| w == DRAIN);
    let resent_after_drain = finals
        .iter()
        .filter(|(_, why)| !why.is_empty() && after_drain_only(why))
        .count();
    let duplicates_after_drain: Vec<_> = answers
        .iter()
        .filter(|(_, a)| {
            a.iter()
                .any(|(o, why)| o == "DUPLICATE" && after_drain_only(why))
        })
        .collect();
    // The store's: one dedup marker per notification applied (resends add none).
    let applied_in_store =
        redis.count_keys(&format!("c2p:{{card:*}}:notification:demo-{run_id}-*"));
    let drains = report
        .stream_ends
        .iter()
        .filter(|(k, _)| k.ends_with("/SERVER_DRAINING"))
        .map(|(_, n)| n)
        .sum::<u64>();
    let early_ends = report
        .stream_ends
        .iter()
        .filter(|(k, _)| k.as_str() != "OK")
        .map(|(_, n)| n)
        .sum::<u64>();
    println!(
        "INTEGRATION gateway: notifications={} sent={} acknowledged={} resent={} (after a drain only: {resent_after_drain}) lost={lost} duplicates={duplicates} (after a drain only: {}) applied_in_store={applied_in_store} streams={} stream_ends={:?} outcomes={:?}",
        report.notifications,
        report.sent,
        report.acknowledged,
        report.resent,
        duplicates_after_drain.len(),
        report.streams,
        report.stream_ends,
        report.outcomes
    );
    assert_eq!(lost, 0, "notifications without an answer");
    assert!(twice.is_empty(), "answered more than once: {twice:?}");
    assert!(wrong.is_empty(), "not APPLIED or DUPLICATE: {wrong:?}");
    assert!(
        duplicates_after_drain.is_empty(),
        "applied but left unanswered by a drain: {duplicates_after_drain:?}"
    );
    assert_eq!(report.notifications, NOTIFICATIONS);
    assert_eq!(report.acknowledged, NOTIFICATIONS);
    assert_eq!(report.lost, 0);
    assert_eq!(report.sent, report.notifications + report.resent);
    assert_eq!(
        applied_in_store as u64, NOTIFICATIONS,
        "applied in the store"
    );
    assert!(
        drains >= 1,
        "no stream ended SERVER_DRAINING: {:?}\n{drained_log}",
        report.stream_ends
    );
    assert!(
        early_ends >= 2,
        "the stream was not ended under the gateway (drain and cut): {:?}",
        report.stream_ends
    );

    // The restarted service drains cleanly too.
    let status = restarted.terminate(Duration::from_secs(10));
    assert!(status.success(), "exit {status}:\n{}", restarted.output());
}

fn ingest_gateway_outcome(outcome: i32) -> String {
    c2p_enroll::proto::v1::NotificationOutcome::try_from(outcome)
        .map(|o| {
            o.as_str_name()
                .trim_start_matches("NOTIFICATION_OUTCOME_")
                .to_owned()
        })
        .unwrap_or_else(|_| format!("UNKNOWN({outcome})"))
}

/// The example's JSON-lines source, every event kind, against a sandbox service: the gateway
/// sends, every line is answered, a bad one is parked as REJECTED with its reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_gateway_reads_json_lines_and_parks_rejections() {
    let port = free_port();
    let service = Service::start(&[("C2P_GRPC__LISTEN", format!("127.0.0.1:{port}"))]);
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .expect("now");
    let lines = format!(
        r#"{{"notification_id":"jl-1","event_time":"{now}","tokenization_authorization":{{"card_contract_id":92000001,"token_unique_reference":"DM4MMC0000000000000000000000001","decision":"APPROVED"}}}}
{{"notification_id":"jl-2","event_time":"{now}","tokenization_complete":{{"card_contract_id":92000002,"token_unique_reference":"DM4MMC0000000000000000000000002"}}}}

{{"notification_id":"jl-3","event_time":"{now}","token_status_changed":{{"card_contract_id":92000003,"token_unique_reference":"DM4MMC0000000000000000000000003","status":"TOKEN_STATUS_SUSPENDED","reason":"STATUS_UPDATE"}}}}
{{"notification_id":"jl-4","event_time":"{now}","tokenization_complete":{{"card_contract_id":92000004,"token_unique_reference":"DM4MMC0000000000000000000000004","token_requestor_id":"50123197928","wallet_name":"Some Other Wallet"}}}}
{{"notification_id":"jl-5","event_time":"2999-01-01T00:00:00Z","tokenization_complete":{{"card_contract_id":92000005,"token_unique_reference":"DM4MMC0000000000000000000000005"}}}}
"#
    );
    let notifications = read_jsonl(&lines).expect("valid lines");
    assert_eq!(notifications.len(), 5);
    assert!(read_jsonl(r#"{"notification_id":"x","event_time":"now"}"#).is_err());

    let outcomes: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let sink = outcomes.clone();
    let config = GatewayConfig::new(format!("http://127.0.0.1:{port}"));
    let report = tokio::time::timeout(
        Duration::from_secs(30),
        run(&config, feed(notifications, 0), move |done| {
            sink.lock().expect("outcomes").insert(
                done.notification.notification_id,
                ingest_gateway_outcome(done.answer.outcome),
            );
        }),
    )
    .await
    .expect("finished within 30 s")
    .expect("valid endpoint");
    let outcomes = outcomes.lock().expect("outcomes").clone();
    println!(
        "INTEGRATION gateway json-lines: {outcomes:?} parked={:?}",
        report.parked
    );
    for id in ["jl-1", "jl-2", "jl-3"] {
        assert_eq!(
            outcomes.get(id).map(String::as_str),
            Some("APPLIED"),
            "{id}"
        );
    }
    assert_eq!(outcomes.get("jl-4").map(String::as_str), Some("IGNORED"));
    assert_eq!(outcomes.get("jl-5").map(String::as_str), Some("REJECTED"));
    assert_eq!(report.parked.len(), 1);
    assert_eq!(report.parked[0].0, "jl-5");
    assert_eq!(
        report.parked[0].1,
        "NOTIFICATION_REJECT_REASON_EVENT_TIME_IN_FUTURE"
    );
    assert_eq!(
        report.stream_ends.get("OK"),
        Some(&1),
        "{:?}",
        report.stream_ends
    );
    drop(service);
}
