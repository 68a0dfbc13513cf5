//! Settings validation through the real binary: every bad setting named, a non-zero exit, and
//! the file → environment layering.

use crate::harness::{ServiceProcess, connect, health_status};
use std::time::Duration;
use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient};

#[tokio::test]
async fn bad_settings_are_all_named_and_the_process_exits_2() {
    let mut process = ServiceProcess::spawn(
        &["serve"],
        &[
            ("C2P_GRPC__LISTEN", "localhost-ish"),
            ("C2P_REDIS__URL", "ftp://nowhere"),
            ("C2P_SHUTDOWN__GRACE_PERIOD", "a while"),
            ("C2P_LOG__FORMAT", "xml"),
            ("C2P_MODE", "production"),
        ],
    );
    let status = process.wait(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(2));
    let stderr = process.stderr();
    for key in [
        "grpc.listen (C2P_GRPC__LISTEN)",
        "redis.url (C2P_REDIS__URL)",
        "shutdown.grace_period (C2P_SHUTDOWN__GRACE_PERIOD)",
        "log.format (C2P_LOG__FORMAT)",
        "mode (C2P_MODE)",
    ] {
        assert!(stderr.contains(key), "{key} not named in:\n{stderr}");
    }
}

#[tokio::test]
async fn a_worker_count_that_is_not_a_positive_number_is_named_and_the_process_exits_2() {
    // Tokio reads TOKIO_WORKER_THREADS itself and panics on a bad value; the service names it.
    for value in ["0", "two"] {
        let mut process = ServiceProcess::spawn(&["serve"], &[("TOKIO_WORKER_THREADS", value)]);
        let status = process.wait(Duration::from_secs(10)).await;
        let stderr = process.stderr();
        assert_eq!(
            status.code(),
            Some(2),
            "TOKIO_WORKER_THREADS={value}:\n{stderr}"
        );
        assert!(
            stderr.contains("TOKIO_WORKER_THREADS") && !stderr.contains("panicked"),
            "TOKIO_WORKER_THREADS={value} not named plainly in:\n{stderr}"
        );
    }
}

#[tokio::test]
async fn mastercard_mode_refuses_to_start_without_its_keys() {
    let mut process = ServiceProcess::spawn(&[], &[("C2P_MODE", "mastercard")]);
    let status = process.wait(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(2));
    let stderr = process.stderr();
    for api in ["processing", "enroll"] {
        for setting in ["base_url", "consumer_key", "signing_key_file"] {
            let key = format!("mastercard.{api}.{setting}");
            assert!(stderr.contains(&key), "{key} not named in:\n{stderr}");
        }
    }
    assert!(!stderr.contains("gRPC listening"), "{stderr}");
}

#[tokio::test]
async fn a_missing_config_file_is_named() {
    let mut process = ServiceProcess::spawn(&["--config", "/nonexistent/c2p.toml"], &[]);
    assert_eq!(process.wait(Duration::from_secs(10)).await.code(), Some(2));
    assert!(
        process.stderr().contains("/nonexistent/c2p.toml"),
        "{}",
        process.stderr()
    );
}

#[tokio::test]
async fn environment_overrides_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c2p.toml");
    // The file alone would fail (mastercard mode, no keys); the environment switches it back.
    std::fs::write(
        &file,
        "mode = \"mastercard\"\n[grpc]\nlisten = \"127.0.0.1:0\"\n[log]\nformat = \"text\"\n",
    )
    .unwrap();
    let mut process = ServiceProcess::spawn(
        &["--config", file.to_str().unwrap()],
        &[("C2P_MODE", "sandbox")],
    );
    let addr = process.listening_addr().await;
    let mut health = HealthClient::new(connect(addr).await);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while health_status(&mut health, "").await != ServingStatus::Serving {
        assert!(tokio::time::Instant::now() < deadline, "never SERVING");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    process.signal("INT");
    assert!(process.wait(Duration::from_secs(15)).await.success());
    assert!(
        process.stderr().contains("SANDBOX MODE"),
        "{}",
        process.stderr()
    );
}

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/keys/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn mastercard_env(password_file: &str) -> Vec<(String, String)> {
    let mut env = vec![
        ("C2P_MODE".to_string(), "mastercard".to_string()),
        ("C2P_GRPC__LISTEN".into(), "127.0.0.1:0".into()),
        (
            "C2P_ENROLL__FINGERPRINT_KEY_FILE".into(),
            fixture("fingerprint.key"),
        ),
    ];
    for api in ["PROCESSING", "ENROLL"] {
        let p = |k: &str| format!("C2P_MASTERCARD__{api}__{k}");
        env.push((p("BASE_URL"), "http://127.0.0.1:9/api".into()));
        env.push((p("CONSUMER_KEY"), "ck!1".into()));
        env.push((p("SIGNING_KEY_FILE"), fixture("signing-legacy.p12")));
        env.push((p("SIGNING_KEY_PASSWORD_FILE"), password_file.to_string()));
    }
    env.push((
        "C2P_PROGRAMS__DEFAULT__SRC_CLIENT_ID".into(),
        "7f2b8a4e-5c1d-4e8f-9a3b-1c2d3e4f5a6b".into(),
    ));
    env.push((
        "C2P_PROGRAMS__DEFAULT__SERVICE_ID".into(),
        "SRC_SERVICE".into(),
    ));
    env.push((
        "C2P_PROGRAMS__DEFAULT__ENROLL_ENCRYPTION_CERTIFICATE_FILE".into(),
        fixture("signing.cert.pem"),
    ));
    env
}

#[tokio::test]
async fn mastercard_mode_loads_legacy_p12_keys_at_startup() {
    let env = mastercard_env(&fixture("signing.password"));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut process = ServiceProcess::spawn(&[], &env);
    process.listening_addr().await;
    assert!(
        process.stderr().contains("keys loaded"),
        "{}",
        process.stderr()
    );
    process.signal("TERM");
    assert!(process.wait(Duration::from_secs(15)).await.success());
}

#[tokio::test]
async fn a_wrong_key_password_names_the_file_and_stops_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("wrong.password");
    std::fs::write(&wrong, "nope\n").unwrap();
    let env = mastercard_env(wrong.to_str().unwrap());
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut process = ServiceProcess::spawn(&[], &env);
    assert_eq!(process.wait(Duration::from_secs(10)).await.code(), Some(2));
    let stderr = process.stderr();
    assert!(
        stderr.contains("signing-legacy.p12: wrong password"),
        "{stderr}"
    );
    assert!(!stderr.contains("gRPC listening"), "{stderr}");
}

#[tokio::test]
async fn mastercard_mode_refuses_a_plaintext_listener_beyond_loopback() {
    let mut env = mastercard_env(&fixture("signing.password"));
    env.retain(|(k, _)| k != "C2P_GRPC__LISTEN");
    env.push(("C2P_GRPC__LISTEN".into(), "0.0.0.0:0".into()));
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut process = ServiceProcess::spawn(&[], &pairs);
    let status = process.wait(Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(2));
    let stderr = process.stderr();
    assert!(
        stderr.contains("grpc.listen")
            && stderr.contains("plaintext listener on a non-loopback address"),
        "{stderr}"
    );
    // Saying that a mesh terminates mutual TLS (and names the callers) lets it start.
    let mut mesh = pairs.clone();
    mesh.extend([
        ("C2P_AUTH__IDENTITY", "mesh_header"),
        (
            "C2P_AUTH__CALLERS__APP__IDENTITY",
            "spiffe://bank.test/sa/app",
        ),
        ("C2P_AUTH__CALLERS__APP__RPCS", "GetEnrollmentStatus"),
        ("C2P_AUTH__CALLERS__APP__PROGRAMS", "default"),
    ]);
    let mut process = ServiceProcess::spawn(&[], &mesh);
    process.listening_addr().await;
}

#[tokio::test]
async fn the_variables_a_kubelet_injects_for_c2p_services_are_not_settings() {
    // What a kubelet puts in every pod of a namespace with Services `c2p-enroll` (the chart's)
    // and `c2p-redis`: before, the binary took them for unknown settings and exited 2.
    let mut env: Vec<(String, String)> = Vec::new();
    for (svc, port, name) in [("C2P_ENROLL", 50051, "GRPC"), ("C2P_REDIS", 6379, "REDIS")] {
        let tcp = format!("tcp://10.96.0.10:{port}");
        env.extend([
            (format!("{svc}_SERVICE_HOST"), "10.96.0.10".to_owned()),
            (format!("{svc}_SERVICE_PORT"), port.to_string()),
            (format!("{svc}_SERVICE_PORT_{name}"), port.to_string()),
            (format!("{svc}_PORT"), tcp.clone()),
            (format!("{svc}_PORT_{port}_TCP"), tcp),
            (format!("{svc}_PORT_{port}_TCP_PROTO"), "tcp".to_owned()),
            (format!("{svc}_PORT_{port}_TCP_PORT"), port.to_string()),
            (
                format!("{svc}_PORT_{port}_TCP_ADDR"),
                "10.96.0.10".to_owned(),
            ),
        ]);
    }
    env.push(("C2P_GRPC__LISTEN".into(), "127.0.0.1:0".into()));
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut process = ServiceProcess::spawn(&[], &pairs);
    process.listening_addr().await;
    // A misspelt setting is still named: only the service-link shapes are skipped.
    let mut typo = ServiceProcess::spawn(&[], &[("C2P_REDIS_URL", "redis://x")]);
    let status = typo.wait(Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(2));
    assert!(typo.stderr().contains("redis_url"), "{}", typo.stderr());
}
