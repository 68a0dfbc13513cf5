//! `integration/service-config.json` under an independent gRPC implementation: Debian's grpcio
//! (gRPC core, python3-grpcio) calls EnrollCard on a sandbox service while the simulator's
//! Processing API answers 503. With the service config the channel retries by itself (the same
//! request, so the same idempotency key) and the call succeeds; without it the caller gets
//! UNAVAILABLE. Also checks the file against the contract and the settings' upstream budgets.

use crate::support::{grpc_python, repo, write};
use c2p_enroll::config::Settings;
use c2p_enroll::sandbox::faults::{ErrorFault, Route, RouteFault};
use c2p_enroll::sandbox::keys::SandboxKeys;
use c2p_enroll::sandbox::{Sandbox, SandboxConfig};
use c2p_enroll::server::{self, RunningServer};
use prost::Message as _;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

const SERVICE: &str = "c2p.enrollment.v1.EnrollmentService";

fn service_config() -> serde_json::Value {
    let text = std::fs::read_to_string(repo().join("integration/service-config.json"))
        .expect("integration/service-config.json");
    serde_json::from_str(&text).expect("the service config is JSON")
}

/// "65s", "0.5s" (the proto3 JSON form of a Duration) in seconds.
fn seconds(value: &serde_json::Value) -> f64 {
    let text = value.as_str().expect("a duration string");
    text.strip_suffix('s')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a duration: {text}"))
}

/// The method config naming `method`.
fn method_config<'a>(config: &'a serde_json::Value, method: &str) -> Option<&'a serde_json::Value> {
    config["methodConfig"].as_array()?.iter().find(|m| {
        m["name"].as_array().is_some_and(|names| {
            names
                .iter()
                .any(|n| n["service"] == SERVICE && n["method"] == method)
        })
    })
}

#[test]
fn service_config_matches_the_contract_and_the_upstream_budgets() {
    let config = service_config();
    let set = prost_types::FileDescriptorSet::decode(c2p_enroll::proto::FILE_DESCRIPTOR_SET)
        .expect("the embedded descriptor set");
    let methods: BTreeMap<String, bool> = set
        .file
        .iter()
        .filter(|f| f.package() == "c2p.enrollment.v1")
        .flat_map(|f| f.service.iter())
        .filter(|s| s.name() == "EnrollmentService")
        .flat_map(|s| s.method.iter())
        .map(|m| {
            let streaming = m.client_streaming() || m.server_streaming();
            (m.name().to_owned(), streaming)
        })
        .collect();
    assert_eq!(methods.len(), 10, "{methods:?}");

    // Every name is a method of the contract; no streaming RPC has a retry policy or timeout.
    for entry in config["methodConfig"].as_array().expect("methodConfig") {
        for name in entry["name"].as_array().expect("name") {
            assert_eq!(name["service"], SERVICE, "{name}");
            let method = name["method"].as_str().expect("a method per name");
            let streaming = *methods
                .get(method)
                .unwrap_or_else(|| panic!("{method} is not an RPC of {SERVICE}"));
            if streaming {
                assert!(
                    entry.get("retryPolicy").is_none(),
                    "{method}: no retries on a stream"
                );
                assert!(
                    entry.get("timeout").is_none(),
                    "{method}: no deadline on a stream"
                );
            }
        }
        if let Some(policy) = entry.get("retryPolicy") {
            let attempts = policy["maxAttempts"].as_u64().expect("maxAttempts");
            // grpc-go and grpc-java cap at 5; more would be silently cut.
            assert!((2..=5).contains(&attempts), "maxAttempts {attempts}");
            assert!(seconds(&policy["initialBackoff"]) > 0.0);
            assert!(seconds(&policy["maxBackoff"]) >= seconds(&policy["initialBackoff"]));
            for code in policy["retryableStatusCodes"].as_array().expect("codes") {
                // Only the codes the error table says are safe with the same key; never
                // DEADLINE_EXCEEDED (the deadline covers every attempt: nothing would be left).
                assert!(
                    code == "UNAVAILABLE" || code == "ABORTED",
                    "{code} is not safe to retry blindly"
                );
            }
        }
    }

    // The deadlines cover the upstream work the service may do within them, on its defaults.
    let settings = Settings::load(None, Vec::<(String, String)>::new()).expect("defaults");
    let processing = settings.mastercard.processing.policy.budget.as_secs_f64();
    let enroll = settings.mastercard.enroll.policy.budget.as_secs_f64();
    let enroll_card = method_config(&config, "EnrollCard").expect("EnrollCard's config");
    let status = method_config(&config, "GetEnrollmentStatus").expect("its config");
    let enroll_card_timeout = seconds(&enroll_card["timeout"]);
    let status_timeout = seconds(&status["timeout"]);
    assert!(
        enroll_card_timeout >= processing + enroll,
        "EnrollCard's timeout {enroll_card_timeout}s is under its upstream budget: /cards/searches {processing}s + POST /cards {enroll}s"
    );
    assert!(
        status_timeout >= processing && status_timeout < enroll_card_timeout,
        "GetEnrollmentStatus's timeout {status_timeout}s: at least a token list's budget ({processing}s), under EnrollCard's"
    );
    // The RPCs after an enrollment: each one lifecycle call of the Enroll API's budget.
    for method in [
        "RemoveCard",
        "GetClickToPayProfile",
        "UpdateConsumer",
        "UpdateBillingAddress",
        "OptOut",
        "WithdrawOptOut",
    ] {
        let config = method_config(&config, method).unwrap_or_else(|| panic!("{method}'s config"));
        let timeout = seconds(&config["timeout"]);
        assert!(
            timeout >= enroll,
            "{method}'s timeout {timeout}s is under the Enroll API's budget ({enroll}s)"
        );
    }
    let codes = &enroll_card["retryPolicy"]["retryableStatusCodes"];
    assert!(
        codes
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c == "UNAVAILABLE")),
        "EnrollCard must retry UNAVAILABLE"
    );
    println!(
        "INTEGRATION service-config: EnrollCard timeout {enroll_card_timeout}s >= upstream budget {}s; GetEnrollmentStatus {status_timeout}s; streams without retry policy",
        processing + enroll
    );
}

/// Simulator keys: generated once per test binary (slow in debug builds).
fn keys() -> SandboxKeys {
    static KEYS: OnceLock<SandboxKeys> = OnceLock::new();
    KEYS.get_or_init(|| SandboxKeys::generate().expect("simulator keys"))
        .clone()
}

/// A sandbox service of its own: the simulator and the service in this process, on free
/// loopback ports, the in-memory store.
struct SandboxService {
    sandbox: Arc<Sandbox>,
    running: RunningServer,
    settings: Settings,
}

impl SandboxService {
    async fn start() -> SandboxService {
        let env = [
            ("C2P_GRPC__LISTEN", "127.0.0.1:0"),
            ("C2P_METRICS__LISTEN", "127.0.0.1:0"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let settings = Settings::load(None, env).expect("settings");
        let config = SandboxConfig::new("127.0.0.1:0".parse().expect("addr"), keys())
            .expect("simulator config");
        let sandbox = Arc::new(Sandbox::start(config).await.expect("simulator"));
        let upstream = sandbox.upstream(&settings.mastercard).expect("upstream");
        let running = server::start(&settings, Arc::new(upstream))
            .await
            .expect("service");
        sandbox
            .set_notification_target(&format!("http://{}", running.local_addr()))
            .expect("notification target");
        SandboxService {
            sandbox,
            running,
            settings,
        }
    }

    /// `/cards/searches` answers 503 to every attempt of one EnrollCard (the service's HTTP
    /// client retries a search itself, `mastercard.processing.max_attempts` in all), so that
    /// the call ends UNAVAILABLE (UPSTREAM_UNAVAILABLE); the next search succeeds.
    fn fail_next_enrollment_with_503(&self) -> usize {
        let attempts = self.settings.mastercard.processing.policy.max_attempts as usize;
        self.sandbox.set_fault(
            Route::Searches,
            RouteFault {
                error: Some(ErrorFault {
                    status: 503,
                    reason_code: "SERVICE_UNAVAILABLE".into(),
                }),
                times: Some(u32::try_from(attempts).expect("attempts")),
                ..RouteFault::default()
            },
        );
        attempts
    }

    /// EnrollCard calls the service finished, by code (this process' counters: one test at a
    /// time calls EnrollCard in this binary).
    async fn enroll_card_calls(&self) -> BTreeMap<String, u64> {
        let addr = self.running.metrics_addr().expect("metrics on");
        let text = reqwest::get(format!("http://{addr}/metrics"))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text");
        text.lines()
            .filter_map(|l| l.strip_prefix("c2p_grpc_requests_total{"))
            .filter(|l| l.contains("rpc=\"EnrollCard\""))
            .filter_map(|l| {
                let code = l.split("code=\"").nth(1)?.split('"').next()?.to_owned();
                let value = l.rsplit(' ').next()?.parse().ok()?;
                Some((code, value))
            })
            .collect()
    }
}

/// Runs integration/python/enroll_card.py; its JSON answer.
async fn python_enroll(
    dir: &Path,
    target: std::net::SocketAddr,
    key: &str,
    with_service_config: bool,
) -> serde_json::Value {
    let contract = write(
        dir,
        "contract.binpb",
        c2p_enroll::proto::FILE_DESCRIPTOR_SET,
    );
    let rpc = write(
        dir,
        "google-rpc.binpb",
        tonic_types::pb::FILE_DESCRIPTOR_SET,
    );
    let mut command = tokio::process::Command::new(grpc_python());
    command
        .arg(repo().join("integration/python/enroll_card.py"))
        .arg("--target")
        .arg(target.to_string())
        .arg("--descriptor-set")
        .arg(&contract)
        .arg("--descriptor-set")
        .arg(&rpc)
        .args(["--idempotency-key", key, "--card-contract-id", "70001"])
        // No proxy variables, no user site: only Debian's modules, only loopback.
        .env_clear()
        .env("PYTHONNOUSERSITE", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    if with_service_config {
        command
            .arg("--service-config")
            .arg(repo().join("integration/service-config.json"));
    }
    let output = tokio::time::timeout(Duration::from_secs(90), command.output())
        .await
        .expect("the python client finished within 90 s")
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "enroll_card.py failed: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>, code: &str) -> u64 {
    after.get(code).copied().unwrap_or(0) - before.get(code).copied().unwrap_or(0)
}

/// Both scenarios in one test, one after the other: they read this process' counters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_retries_an_unavailable_enroll_card_only_with_the_service_config() {
    let dir = tempfile::tempdir().expect("temp dir");

    // Without the service config: the caller sees UNAVAILABLE, after one attempt.
    let service = SandboxService::start().await;
    let failing_searches = service.fail_next_enrollment_with_503();
    let before = service.enroll_card_calls().await;
    let plain = python_enroll(dir.path(), service.running.local_addr(), "sc-plain", false).await;
    let after = service.enroll_card_calls().await;
    assert_eq!(plain["ok"], false, "{plain}");
    assert_eq!(plain["code"], "UNAVAILABLE", "{plain}");
    assert_eq!(plain["reason"], "UPSTREAM_UNAVAILABLE", "{plain}");
    assert_eq!(delta(&before, &after, "Unavailable"), 1, "{after:?}");
    assert_eq!(delta(&before, &after, "Ok"), 0, "{after:?}");
    assert_eq!(service.sandbox.count(Route::Searches), failing_searches);
    assert_eq!(service.sandbox.count(Route::EnrollCards), 0);
    // The rule the service config automates: the same key again resumes the call.
    let again = python_enroll(dir.path(), service.running.local_addr(), "sc-plain", false).await;
    assert_eq!(again["ok"], true, "{again}");
    assert_eq!(again["state"], "ENROLLMENT_STATE_ENROLLED", "{again}");
    let plain_calls = delta(&before, &service.enroll_card_calls().await, "Ok");
    drop(service);

    // With it: one call for the caller, two attempts at the service, enrolled once.
    let service = SandboxService::start().await;
    let failing_searches = service.fail_next_enrollment_with_503();
    let before = service.enroll_card_calls().await;
    let retried = python_enroll(dir.path(), service.running.local_addr(), "sc-retried", true).await;
    let after = service.enroll_card_calls().await;
    assert_eq!(retried["ok"], true, "{retried}");
    assert_eq!(retried["state"], "ENROLLMENT_STATE_ENROLLED", "{retried}");
    // The second attempt carried the same key: a fresh answer, not a replay of the failure
    // (failures that say "same key" are not stored).
    assert_eq!(retried["replayed"], false, "{retried}");
    let unavailable = delta(&before, &after, "Unavailable");
    let ok = delta(&before, &after, "Ok");
    assert_eq!((unavailable, ok), (1, 1), "{after:?}");
    assert_eq!(
        service.sandbox.count(Route::Searches),
        failing_searches + 1,
        "one failed attempt's searches, then the retry's"
    );
    assert_eq!(
        service.sandbox.count(Route::EnrollCards),
        1,
        "enrolled once"
    );
    println!(
        "INTEGRATION service-config under grpcio: without it UNAVAILABLE/{} after 1 attempt ({}s; the same key again: {plain_calls} Ok); with it ENROLLED after {} attempts ({unavailable} UNAVAILABLE + {ok} OK, {}s), {} searches, 1 POST /cards",
        plain["reason"].as_str().unwrap_or("?"),
        plain["seconds"],
        unavailable + ok,
        retried["seconds"],
        failing_searches + 1
    );
}
