//! Redis over TLS (`rediss://`) as an ACL user whose password is in `redis.password_file`,
//! standalone and Cluster: EnrollCard end to end with the record really in that Redis, the
//! store suite (the change feed's own client included), the binary starting on a `rediss://`
//! URL, and the failures (a wrong password, a server certificate from another CA) turning the
//! service NOT_SERVING and calls UNAVAILABLE without ever showing a password.

use crate::flows::request;
use crate::harness::{
    RedisCluster, RedisServer, RedisTls, ServiceProcess, TestService, connect, settings,
    wait_for_health,
};
use c2p_enroll::config::Settings;
use c2p_enroll::proto::v1::EnrollmentState;
use redis::Commands as _;
use std::path::Path;
use std::time::Duration;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The enrollment record of the only enrollable sample card, under `tls:`.
const KEY: &str = "tls:{card:70001}:enrollment";

/// Settings for `url` as `tls`'s user with its password file and CA, plus `extra`.
fn tls_settings(url: &str, tls: &RedisTls, extra: &[(&str, &str)]) -> Settings {
    settings_with(
        url,
        &tls.password_file(),
        &tls.ca_file(),
        &[extra, &[("C2P_REDIS__KEY_PREFIX", "tls:")]].concat(),
    )
}

fn settings_with(
    url: &str,
    password_file: &Path,
    ca_file: &Path,
    extra: &[(&str, &str)],
) -> Settings {
    let password_file = password_file.display().to_string();
    let ca_file = ca_file.display().to_string();
    let mut env = vec![
        ("C2P_REDIS__URL", url),
        ("C2P_REDIS__USERNAME", RedisTls::USER),
        ("C2P_REDIS__PASSWORD_FILE", password_file.as_str()),
        ("C2P_REDIS__CA_FILE", ca_file.as_str()),
    ];
    env.extend_from_slice(extra);
    settings(&env)
}

/// EnrollCard on a fresh service: ENROLLED.
async fn enroll(settings: &Settings) {
    let service = TestService::start(settings).await;
    wait_for_health(
        &mut service.health(),
        "",
        ServingStatus::Serving,
        Duration::from_secs(5),
    )
    .await;
    let enrolled = service
        .client()
        .enroll_card(request("k-tls", 70001))
        .await
        .expect("EnrollCard over rediss://")
        .into_inner()
        .enrollment
        .expect("an enrollment");
    assert_eq!(enrolled.state(), EnrollmentState::Enrolled, "{enrolled:?}");
}

#[tokio::test]
async fn enroll_card_over_rediss_with_an_acl_user_on_standalone_redis() {
    let tls = RedisTls::generate();
    let redis = RedisServer::start_tls(&tls);
    enroll(&tls_settings(&redis.url(), &tls, &[])).await;
    // Read back over TLS as the ACL user: the record is in that server.
    let stored: Option<String> = redis.connection().get(KEY).unwrap();
    let stored = stored.expect("the enrollment record is in the TLS Redis");
    assert!(stored.contains("\"pan_last_four\":\"9726\""), "{stored}");
}

#[tokio::test]
async fn enroll_card_over_rediss_with_an_acl_user_on_a_redis_cluster() {
    let tls = RedisTls::generate();
    let cluster = RedisCluster::start_tls(&tls);
    enroll(&tls_settings(
        &cluster.urls(),
        &tls,
        &[("C2P_REDIS__CLUSTER", "true")],
    ))
    .await;
    let exists: bool = cluster.cluster_connection().exists(KEY).unwrap();
    assert!(exists, "the enrollment record is in the TLS cluster");
}

#[tokio::test]
async fn redis_store_over_rediss_passes_the_suite() {
    let tls = RedisTls::generate();
    let redis = RedisServer::start_tls(&tls);
    let store = c2p_enroll::server::open_store(&tls_settings(&redis.url(), &tls, &[])).unwrap();
    crate::store::suite(store).await;
}

#[tokio::test]
async fn redis_cluster_store_over_rediss_passes_the_suite() {
    let tls = RedisTls::generate();
    let cluster = RedisCluster::start_tls(&tls);
    let store = c2p_enroll::server::open_store(&tls_settings(
        &cluster.urls(),
        &tls,
        &[("C2P_REDIS__CLUSTER", "true")],
    ))
    .unwrap();
    crate::store::suite(store).await;
}

/// The service starts, stays NOT_SERVING, answers EnrollCard UNAVAILABLE, and neither the
/// answer nor the store's error shows a password. Returns the store's error.
async fn refused(settings: &Settings, passwords: &[&str]) -> String {
    let service = TestService::start(settings).await;
    let mut health = service.health();
    // Give the probe several rounds to (wrongly) turn SERVING.
    tokio::time::sleep(Duration::from_millis(500)).await;
    wait_for_health(
        &mut health,
        "",
        ServingStatus::NotServing,
        Duration::from_secs(1),
    )
    .await;
    let err = service
        .client()
        .enroll_card(request("k-refused", 70001))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let store_err = service
        .running
        .store()
        .ping()
        .await
        .unwrap_err()
        .to_string();
    for password in passwords {
        assert!(!err.message().contains(password), "{err:?}");
        assert!(!format!("{err:?}").contains(password), "{err:?}");
        assert!(!store_err.contains(password), "{store_err}");
    }
    store_err
}

#[tokio::test]
async fn a_wrong_password_is_not_serving_and_never_shown() {
    let tls = RedisTls::generate();
    let redis = RedisServer::start_tls(&tls);
    let dir = tempfile::tempdir().unwrap();
    let wrong = format!("wrong-{:032x}", rand::random::<u128>());
    let wrong_file = dir.path().join("wrong.password");
    std::fs::write(&wrong_file, format!("{wrong}\n")).unwrap();
    let s = settings_with(&redis.url(), &wrong_file, &tls.ca_file(), &[]);
    let why = refused(&s, &[&wrong, tls.password()]).await;
    assert!(
        why.contains("WRONGPASS") || why.to_lowercase().contains("auth"),
        "{why}"
    );
}

#[tokio::test]
async fn a_server_certificate_from_another_ca_is_not_serving() {
    let tls = RedisTls::generate();
    let other_ca = RedisTls::generate();
    let redis = RedisServer::start_tls(&tls);
    // The right user and password, but the server's certificate is not from the trusted CA.
    let s = settings_with(&redis.url(), &tls.password_file(), &other_ca.ca_file(), &[]);
    let why = refused(&s, &[tls.password()]).await;
    assert!(why.to_lowercase().contains("certificate"), "{why}");
}

#[tokio::test]
async fn the_binary_starts_and_serves_on_a_rediss_url() {
    let tls = RedisTls::generate();
    let redis = RedisServer::start_tls(&tls);
    let (url, password_file, ca_file) = (
        redis.url(),
        tls.password_file().display().to_string(),
        tls.ca_file().display().to_string(),
    );
    let mut process = ServiceProcess::spawn(
        &["serve"],
        &[
            ("C2P_GRPC__LISTEN", "127.0.0.1:0"),
            ("C2P_HEALTH__CHECK_INTERVAL", "100ms"),
            ("C2P_REDIS__URL", &url),
            ("C2P_REDIS__USERNAME", RedisTls::USER),
            ("C2P_REDIS__PASSWORD_FILE", &password_file),
            ("C2P_REDIS__CA_FILE", &ca_file),
        ],
    );
    let addr = process.listening_addr().await;
    wait_for_health(
        &mut HealthClient::new(connect(addr).await),
        "",
        ServingStatus::Serving,
        Duration::from_secs(5),
    )
    .await;
    let log = process.stderr();
    assert!(!log.contains("InvalidClientConfig"), "{log}");
    assert!(!log.contains(tls.password()), "{log}");
}
