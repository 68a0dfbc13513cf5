//! `c2p-enroll sandbox` alone, and a service in mastercard mode configured with its key
//! directory (`service.env`), talking to each other over real HTTP.

use crate::harness::{ServiceProcess, read_env};
use c2p_enroll::config::Settings;
use c2p_enroll::mastercard::processing::types::SynchronousRequest;
use c2p_enroll::mastercard::setup::Upstream;
use std::time::Duration;

#[tokio::test]
async fn a_mastercard_mode_service_talks_to_the_standalone_simulator() {
    let dir = tempfile::tempdir().unwrap();
    let dir_arg = dir.path().to_str().unwrap().to_owned();
    let mut simulator = ServiceProcess::spawn(
        &["sandbox", "--dir", &dir_arg, "--listen", "127.0.0.1:0"],
        &[],
    );
    simulator.wait_for_line("SIMULATOR running alone").await;
    let env = read_env(&dir.path().join("service.env"));

    // The service's own startup code, on exactly those settings.
    let settings = Settings::load(None, env.clone()).unwrap();
    let upstream = Upstream::from_settings(&settings.mastercard, &settings.programs).unwrap();
    let program = &upstream.programs["default"];
    let found = upstream
        .processing
        .search_card(
            70001,
            SynchronousRequest::default(),
            &program.enroll_certificate,
            None,
        )
        .await
        .unwrap();
    let enrolled = upstream
        .enroll
        .enroll_card(
            &crate::harness::mastercard_enroll_request(
                &program.src_client_id,
                &program.service_id,
                &uuid::Uuid::new_v4().to_string(),
                found.card_data,
            ),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        enrolled.masked_card.unwrap().pan_last_four.as_deref(),
        Some("9726")
    );

    // The service binary starts in mastercard mode on the same file (keys loaded at startup).
    let mut service_env: Vec<(&str, &str)> =
        env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    service_env.push(("C2P_GRPC__LISTEN", "127.0.0.1:0"));
    let mut service = ServiceProcess::spawn(&[], &service_env);
    service.listening_addr().await;
    assert!(
        service.stderr().contains("keys loaded"),
        "{}",
        service.stderr()
    );
    service.signal("TERM");
    assert!(service.wait(Duration::from_secs(15)).await.success());

    // A second simulator on the same directory reuses the keys it wrote.
    simulator.signal("TERM");
    assert!(simulator.wait(Duration::from_secs(15)).await.success());
    let mut again = ServiceProcess::spawn(
        &["sandbox", "--dir", &dir_arg, "--listen", "127.0.0.1:0"],
        &[],
    );
    again.wait_for_line("SIMULATOR running alone").await;
    let env_again = read_env(&dir.path().join("service.env"));
    let key = |env: &[(String, String)]| {
        env.iter()
            .find(|(k, _)| k == "C2P_MASTERCARD__ENROLL__CONSUMER_KEY")
            .unwrap()
            .1
            .clone()
    };
    assert_eq!(key(&env), key(&env_again));
}
