//! `c2p-enroll bench` against the real service: a stream the service refuses is counted as an
//! error of the run, not as a call with a latency (it has no schedule, and its "latency" would
//! be made up from the window's start).

use crate::harness::{TestService, settings};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_ingest_stream_is_an_error_without_a_latency_or_a_timeline_row() {
    // One stream allowed: of the generator's two, one is refused when it opens.
    let service =
        TestService::start(&settings(&[("C2P_GRPC__LIMITS__MAX_INGEST_STREAMS", "1")])).await;
    let dir = tempfile::tempdir().unwrap();
    let timeline = dir.path().join("timeline.csv");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_c2p-enroll"))
        .args(["bench", "--target"])
        .arg(service.running.local_addr().to_string())
        .args([
            "--rpc",
            "NotificationIngest",
            "--streams",
            "2",
            "--concurrency",
            "4",
            "--cards",
            "9000000-9000099",
            "--warmup",
            "0s",
            "--duration",
            "1s",
            "--json",
            "--timeline",
        ])
        .arg(&timeline)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap();
    let ingest = &report["rpcs"]["NotificationIngest"];
    let refused: Vec<(&String, &serde_json::Value)> = ingest["errors_by_code"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(key, _)| key.starts_with("RESOURCE_EXHAUSTED"))
        .collect();
    assert_eq!(refused.len(), 1, "{ingest}");
    assert_eq!(refused[0].1, 1, "{ingest}");
    let ok = ingest["ok"].as_u64().unwrap();
    assert!(ok > 0, "the allowed stream was answered: {ingest}");
    // Only the answered messages have a latency and a row.
    assert_eq!(ingest["latency_ms"]["count"].as_u64(), Some(ok), "{ingest}");
    let rows = std::fs::read_to_string(&timeline).unwrap();
    let rows: Vec<&str> = rows.lines().skip(1).collect();
    assert_eq!(rows.len() as u64, ok, "{}", rows.join("\n"));
    assert!(rows.iter().all(|r| !r.contains("RESOURCE_EXHAUSTED")));
}
