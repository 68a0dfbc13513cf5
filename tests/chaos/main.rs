//! The chaos suite (issue 11, item 12): real service processes, the standalone simulator with
//! random faults, a Redis killed -9, a process stopped past its lease, and poison. Each scenario
//! prints its figures on one line starting with `CHAOS`. Everything runs on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)]
#[path = "../it/harness.rs"]
mod harness;

#[allow(dead_code)]
#[path = "../it/wire.rs"]
mod wire;

mod fleet;
mod ingest_outage;
mod poison;
mod stalled;

use c2p_enroll::config::Settings;
use c2p_enroll::mastercard::setup::Upstream;
use c2p_enroll::proto::v1::{
    Enrollment, GetEnrollmentStatusRequest, enrollment_service_client::EnrollmentServiceClient,
};
use harness::{ServiceProcess, fixture, read_env};
use std::time::Duration;
use tonic::transport::Channel;

pub type Client = EnrollmentServiceClient<Channel>;

pub use wire::request;

/// The stored record (no refresh).
pub async fn status_of(client: &mut Client, card: i64) -> Result<Enrollment, tonic::Status> {
    client
        .get_enrollment_status(GetEnrollmentStatusRequest {
            card_contract_id: card,
            refresh: false,
        })
        .await
        .map(|r| r.into_inner().enrollment.unwrap_or_default())
}

/// Lines of a process' log that report a panic.
pub fn panics(log: &str) -> usize {
    log.lines().filter(|l| l.contains("panicked")).count()
}

/// The standalone simulator (`c2p-enroll sandbox`) with a faults file and optionally a CMS,
/// and the `C2P_*` settings of a mastercard-mode service that talks to it.
pub struct Simulator {
    pub process: ServiceProcess,
    pub env: Vec<(String, String)>,
    _dir: tempfile::TempDir,
}

impl Simulator {
    pub async fn start(faults: &str, cms: Option<&str>) -> Simulator {
        let dir = tempfile::tempdir().unwrap();
        let faults_file = dir.path().join("faults.toml");
        std::fs::write(&faults_file, faults).unwrap();
        let keys = dir.path().join("keys");
        let mut args: Vec<String> = [
            "sandbox",
            "--dir",
            keys.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--faults",
            faults_file.to_str().unwrap(),
        ]
        .map(str::to_owned)
        .to_vec();
        if let Some(cms) = cms {
            let cms_file = dir.path().join("cms.toml");
            std::fs::write(&cms_file, cms).unwrap();
            args.extend(["--cms".to_owned(), cms_file.to_str().unwrap().to_owned()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut process = ServiceProcess::spawn(&args, &[]);
        process.wait_for_line("SIMULATOR running alone").await;
        let env = read_env(&keys.join("service.env"));
        Simulator {
            process,
            env,
            _dir: dir,
        }
    }

    /// Mastercard's clients as the service builds them, to ask the simulator what it holds.
    pub fn upstream(&self) -> Upstream {
        let settings = Settings::load(None, self.env.clone()).unwrap();
        Upstream::from_settings(&settings.mastercard, &settings.programs).unwrap()
    }

    /// The simulator's Click to Pay tokens of `card`, asked until an answer gets through the
    /// injected faults.
    pub async fn tokens_of(&self, upstream: &Upstream, card: i64) -> usize {
        for _ in 0..30 {
            if let Ok(tokens) = upstream.processing.card_tokens(card, None).await {
                return tokens.len();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the simulator never answered the token list of card {card}");
    }

    /// A service process against this simulator with a Redis at `redis_url`, plus `extra`.
    pub fn service(&self, redis_url: &str, extra: &[(&str, &str)]) -> ServiceProcess {
        let mut env = self.env.clone();
        let fingerprint = fixture("keys/fingerprint.key").display().to_string();
        env.extend(
            [
                ("C2P_REDIS__URL", redis_url),
                ("C2P_GRPC__LISTEN", "127.0.0.1:0"),
                ("C2P_ENROLL__FINGERPRINT_KEY_FILE", fingerprint.as_str()),
            ]
            .iter()
            .chain(extra)
            .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        ServiceProcess::spawn(&[], &env)
    }
}

/// A sandbox-mode service process (its own simulator inside) with a Redis at `redis_url`.
pub fn sandbox_service(redis_url: &str, extra: &[(&str, &str)]) -> ServiceProcess {
    let fingerprint = fixture("keys/fingerprint.key").display().to_string();
    let mut env: Vec<(&str, &str)> = vec![
        ("C2P_REDIS__URL", redis_url),
        ("C2P_GRPC__LISTEN", "127.0.0.1:0"),
        ("C2P_ENROLL__FINGERPRINT_KEY_FILE", fingerprint.as_str()),
        ("C2P_REDIS__CONNECT_TIMEOUT", "300ms"),
        ("C2P_REDIS__RESPONSE_TIMEOUT", "500ms"),
    ];
    env.extend_from_slice(extra);
    ServiceProcess::spawn(&[], &env)
}
