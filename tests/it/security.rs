//! Access control over real TLS handshakes: certificates from a CA made here, the service's
//! rustls listener, a tonic TLS client, the simulator and a real Redis. Each refused call is
//! shown to have cost no Mastercard request and no Redis key.

use crate::flows::request;
use crate::harness::{RedisServer, TestService, settings, start_sandbox};
use c2p_enroll::devcerts::{DevCa, Issued};
use c2p_enroll::proto::v1::{
    GetEnrollmentStatusRequest, NotificationIngestRequest, WatchEnrollmentRequest,
    enrollment_service_client::EnrollmentServiceClient,
};
use c2p_enroll::sandbox::faults::Route;
use rustls::pki_types::pem::PemObject as _;
use std::net::SocketAddr;
use std::time::Duration;
use time::OffsetDateTime;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_types::StatusExt as _;

const APP: &str = "spiffe://bank.test/ns/payments/sa/app-backend";
const GATEWAY: &str = "spiffe://bank.test/ns/payments/sa/notification-gateway";
const STRANGER: &str = "spiffe://bank.test/ns/other/sa/stranger";

/// A CA, the server's certificate and key on disk, and the service settings for mutual TLS with
/// a policy: the app backend enrolls/reads/watches under `default`, the gateway only ingests.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: DevCa,
}

fn valid() -> (OffsetDateTime, OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    (
        now - time::Duration::hours(1),
        now + time::Duration::days(1),
    )
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = DevCa::new("test CA").unwrap();
        let pki = Pki { dir, ca };
        pki.write_server(&pki.ca);
        std::fs::write(pki.path("ca.pem"), &pki.ca.cert_pem).unwrap();
        pki
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// (Re)writes the server certificate and key, issued by `ca`.
    pub fn write_server(&self, ca: &DevCa) {
        let server = ca.server(&["localhost", "127.0.0.1"]).unwrap();
        std::fs::write(self.path("server.pem"), server.cert_pem).unwrap();
        std::fs::write(self.path("server.key"), server.key_pem).unwrap();
    }

    pub fn client(&self, identity: &str) -> Issued {
        let (from, until) = valid();
        self.ca.client(identity, from, until).unwrap()
    }

    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("C2P_GRPC__TLS__CERT_FILE".into(), self.path("server.pem")),
            ("C2P_GRPC__TLS__KEY_FILE".into(), self.path("server.key")),
            ("C2P_GRPC__TLS__CLIENT_CA_FILE".into(), self.path("ca.pem")),
            ("C2P_GRPC__TLS__RELOAD_INTERVAL".into(), "100ms".into()),
            ("C2P_GRPC__LIMITS__HANDSHAKE_TIMEOUT".into(), "1s".into()),
            ("C2P_AUTH__CALLERS__APP__IDENTITY".into(), APP.into()),
            (
                "C2P_AUTH__CALLERS__APP__RPCS".into(),
                "EnrollCard,GetEnrollmentStatus,WatchEnrollment".into(),
            ),
            ("C2P_AUTH__CALLERS__APP__PROGRAMS".into(), "default".into()),
            (
                "C2P_AUTH__CALLERS__GATEWAY__IDENTITY".into(),
                GATEWAY.into(),
            ),
            (
                "C2P_AUTH__CALLERS__GATEWAY__RPCS".into(),
                "NotificationIngest".into(),
            ),
        ]
    }
}

/// A TLS channel to `addr` trusting `ca_pem`, presenting `client` when given.
pub async fn tls_channel(
    addr: SocketAddr,
    ca_pem: &str,
    client: Option<&Issued>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    if let Some(c) = client {
        tls = tls.identity(Identity::from_pem(&c.cert_pem, &c.key_pem));
    }
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
}

fn reason(status: &tonic::Status) -> String {
    status
        .get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default()
}

/// Keys that hold cards, idempotency records or dedup markers (not the reconciler's lease).
fn key_count(redis: &RedisServer) -> usize {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query(&mut redis.connection())
        .unwrap();
    keys.iter().filter(|k| !k.starts_with("c2p:lease:")).count()
}

fn upstream_calls(service: &TestService) -> usize {
    [
        Route::Searches,
        Route::EnrollCards,
        Route::CardTokens,
        Route::ClientTokens,
    ]
    .into_iter()
    .map(|r| service.sandbox.count(r))
    .sum()
}

async fn mtls_service(pki: &Pki, redis: &RedisServer) -> TestService {
    mtls_service_with(pki, redis, &[]).await
}

/// [`mtls_service`] with `extra` settings.
async fn mtls_service_with(pki: &Pki, redis: &RedisServer, extra: &[(&str, &str)]) -> TestService {
    let mut env = pki.env();
    env.push(("C2P_REDIS__URL".into(), redis.url()));
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let settings = settings(&env);
    let sandbox = start_sandbox().await;
    let upstream = sandbox.upstream(&settings.mastercard).unwrap();
    let running = c2p_enroll::server::start(&settings, std::sync::Arc::new(upstream))
        .await
        .unwrap();
    // The harness's plaintext channel is of no use here; the tests make TLS ones.
    let channel = Endpoint::from_static("http://127.0.0.1:9").connect_lazy();
    TestService {
        running,
        channel,
        sandbox,
    }
}

#[tokio::test]
async fn handshakes_without_a_valid_client_certificate_are_refused() {
    let redis = RedisServer::start();
    let pki = Pki::new();
    let service = mtls_service(&pki, &redis).await;
    let addr = service.running.local_addr();
    let baseline = key_count(&redis);

    let other_ca = DevCa::new("another CA").unwrap();
    let (from, until) = valid();
    let foreign = other_ca.client(APP, from, until).unwrap();
    let now = OffsetDateTime::now_utc();
    let expired = pki
        .ca
        .client(
            APP,
            now - time::Duration::days(10),
            now - time::Duration::days(1),
        )
        .unwrap();
    for (case, client) in [
        ("no client certificate", None),
        ("a certificate from another CA", Some(&foreign)),
        ("an expired certificate", Some(&expired)),
    ] {
        // With TLS 1.3 the client may finish its side before the server's alert arrives, so
        // the refusal shows either at connect or on the first call.
        let outcome = match tls_channel(addr, &pki.ca.cert_pem, client).await {
            Err(_) => None,
            Ok(channel) => Some(
                EnrollmentServiceClient::new(channel)
                    .enroll_card(request(&format!("k-{case}"), 70001))
                    .await,
            ),
        };
        if let Some(result) = outcome {
            let status = result.expect_err(case);
            assert!(
                matches!(status.code(), Code::Unavailable | Code::Unknown),
                "{case}: {status:?}"
            );
        }
        println!("{case}: handshake refused");
    }
    // A plaintext client does not get a gRPC conversation either.
    let plain = crate::harness::connect_lazy(addr);
    assert!(
        EnrollmentServiceClient::new(plain)
            .get_enrollment_status(GetEnrollmentStatusRequest {
                card_contract_id: 70001,
                refresh: false,
            })
            .await
            .is_err()
    );
    assert_eq!(upstream_calls(&service), 0);
    assert_eq!(key_count(&redis), baseline);
    // The same server answers a client with a valid certificate: the refusals were the
    // certificates', not a broken listener.
    let app = pki.client(APP);
    let channel = tls_channel(addr, &pki.ca.cert_pem, Some(&app))
        .await
        .unwrap();
    EnrollmentServiceClient::new(channel)
        .get_enrollment_status(GetEnrollmentStatusRequest {
            card_contract_id: 70001,
            refresh: false,
        })
        .await
        .unwrap();
    // A TLS client that finishes its handshake and then says nothing is closed too.
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pki.ca.cert_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let chain = rustls::pki_types::CertificateDer::pem_slice_iter(app.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(app.key_pem.as_bytes()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .unwrap();
    let silent = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    println!(
        "TLS handshake then silence: closed after {:?}",
        crate::limits::closed_after(silent).await
    );
}

#[tokio::test]
async fn the_policy_decides_before_any_work() {
    let redis = RedisServer::start();
    let pki = Pki::new();
    let service = mtls_service(&pki, &redis).await;
    let addr = service.running.local_addr();
    let baseline = key_count(&redis);
    let client = |identity: &'static str| {
        let issued = pki.client(identity);
        let ca = pki.ca.cert_pem.clone();
        async move { EnrollmentServiceClient::new(tls_channel(addr, &ca, Some(&issued)).await.unwrap()) }
    };

    // A certificate from the right CA whose identity the policy does not know.
    let status = client(STRANGER)
        .await
        .enroll_card(request("k1", 70001))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(reason(&status), "CALLER_UNKNOWN");

    // The gateway may not enroll, read or watch; the app backend may not ingest.
    let mut gateway = client(GATEWAY).await;
    let status = gateway.enroll_card(request("k1", 70001)).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(reason(&status), "RPC_NOT_ALLOWED");
    let status = gateway
        .get_enrollment_status(GetEnrollmentStatusRequest {
            card_contract_id: 70001,
            refresh: true,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = gateway
        .watch_enrollment(WatchEnrollmentRequest {
            card_contract_id: 70001,
            start_after_revision: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let mut app = client(APP).await;
    let status = app
        .notification_ingest(futures::stream::iter(vec![
            NotificationIngestRequest::default(),
        ]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    // A program outside the caller's list: refused even though it is configured nowhere.
    let mut other_program = request("k2", 70001);
    other_program.program = "premium".into();
    let status = app.enroll_card(other_program).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(reason(&status), "PROGRAM_NOT_ALLOWED");

    assert_eq!(
        upstream_calls(&service),
        0,
        "a refused call reached Mastercard"
    );
    assert_eq!(key_count(&redis), baseline, "a refused call wrote to Redis");

    // The allowed call works end to end over mutual TLS.
    let enrolled = app
        .enroll_card(request("k3", 70001))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(enrolled.enrollment.unwrap().card_contract_id, 70001);
    assert!(upstream_calls(&service) >= 2);
}

#[tokio::test]
async fn idempotency_keys_are_scoped_by_the_certificate_identity() {
    let redis = RedisServer::start();
    let pki = Pki::new();
    let mut env = pki.env();
    let second = "spiffe://bank.test/ns/payments/sa/second-app";
    env.push(("C2P_AUTH__CALLERS__SECOND__IDENTITY".into(), second.into()));
    env.push((
        "C2P_AUTH__CALLERS__SECOND__RPCS".into(),
        "EnrollCard".into(),
    ));
    env.push(("C2P_AUTH__CALLERS__SECOND__PROGRAMS".into(), "*".into()));
    env.push(("C2P_REDIS__URL".into(), redis.url()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let settings = settings(&env);
    let sandbox = start_sandbox().await;
    let running = c2p_enroll::server::start(
        &settings,
        std::sync::Arc::new(sandbox.upstream(&settings.mastercard).unwrap()),
    )
    .await
    .unwrap();
    let addr = running.local_addr();
    let connect = |identity: &str| {
        let issued = pki.client(identity);
        let ca = pki.ca.cert_pem.clone();
        async move { EnrollmentServiceClient::new(tls_channel(addr, &ca, Some(&issued)).await.unwrap()) }
    };
    let mut a = connect(APP).await;
    let mut b = connect(second).await;
    let first = a
        .enroll_card(request("shared-key", 70001))
        .await
        .unwrap()
        .into_inner();
    // The same key from another identity is another call: for card 70002 (declined at
    // Mastercard) B gets its own answer, not a replay of A's enrollment.
    let other = b
        .enroll_card(request("shared-key", 70002))
        .await
        .unwrap_err();
    assert_eq!(other.code(), Code::FailedPrecondition, "{other:?}");
    assert_eq!(reason(&other), "CARD_NOT_ELIGIBLE");
    // A's key still replays A's answer.
    let replay = a
        .enroll_card(request("shared-key", 70001))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replay.enrollment, first.enrollment);
    // A forged mesh header changes nothing: the certificate names the caller.
    let forged = as_caller(second, request("shared-key", 70002));
    let replay = a.enroll_card(forged).await.unwrap_err();
    assert_eq!(replay.code(), Code::FailedPrecondition, "{replay:?}");
    assert_eq!(reason(&replay), "IDEMPOTENCY_KEY_REUSED");
}

#[tokio::test]
async fn certificates_replaced_on_disk_are_used_by_new_handshakes_and_open_streams_survive() {
    let redis = RedisServer::start();
    let pki = Pki::new();
    let service = mtls_service(&pki, &redis).await;
    let addr = service.running.local_addr();
    let app = pki.client(APP);
    let channel = tls_channel(addr, &pki.ca.cert_pem, Some(&app))
        .await
        .unwrap();
    let mut watch = EnrollmentServiceClient::new(channel.clone())
        .watch_enrollment(WatchEnrollmentRequest {
            card_contract_id: 70001,
            start_after_revision: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(watch.message().await.unwrap().is_some());

    // Rotate: a new CA issues the server certificate and is the client CA from now on.
    let rotated = DevCa::new("rotated CA").unwrap();
    pki.write_server(&rotated);
    let both = format!("{}{}", pki.ca.cert_pem, rotated.cert_pem);
    std::fs::write(pki.path("ca.pem"), &both).unwrap();
    let (from, until) = valid();
    let new_client = rotated.client(APP, from, until).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        // Only a handshake that trusts the rotated CA alone succeeds once the reload happened.
        if let Ok(ch) = tls_channel(addr, &rotated.cert_pem, Some(&new_client)).await {
            let answer = EnrollmentServiceClient::new(ch)
                .get_enrollment_status(GetEnrollmentStatusRequest {
                    card_contract_id: 70001,
                    refresh: false,
                })
                .await;
            if answer.is_ok() {
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The old connection and its stream are still there: a change to card 70001 reaches it.
    EnrollmentServiceClient::new(channel)
        .enroll_card(request("after-rotation", 70001))
        .await
        .unwrap();
    let update = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .expect("the watch saw the enrollment")
        .unwrap();
    assert!(update.is_some());
}

#[tokio::test]
async fn readme_dev_certs_give_a_working_mutual_tls_setup() {
    // What the README's mTLS lines do: `c2p-enroll dev-certs --dir D`, then `--config D/mtls.toml`.
    let dir = tempfile::tempdir().unwrap();
    c2p_enroll::devcerts::write(dir.path()).unwrap();
    let mut env: Vec<(String, String)> = vec![
        ("C2P_GRPC__LISTEN".into(), "127.0.0.1:0".into()),
        ("C2P_HEALTH__LISTEN".into(), "127.0.0.1:0".into()),
        ("C2P_METRICS__LISTEN".into(), "".into()),
    ];
    env.push(("C2P_HEALTH__CHECK_INTERVAL".into(), "100ms".into()));
    let settings =
        c2p_enroll::config::Settings::load(Some(&dir.path().join("mtls.toml")), env).unwrap();
    let service = TestService::start_with(&settings, start_sandbox().await).await;
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
    let issued = |stem: &str| Issued {
        cert_pem: read(&format!("{stem}.pem")),
        key_pem: read(&format!("{stem}.key")),
    };
    let addr = service.running.local_addr();
    let app = tls_channel(addr, &read("ca.pem"), Some(&issued("app-backend")))
        .await
        .unwrap();
    let answer = EnrollmentServiceClient::new(app)
        .enroll_card(request("dev", 70001))
        .await
        .unwrap();
    assert_eq!(
        answer.into_inner().enrollment.unwrap().card_contract_id,
        70001
    );
    let gateway = tls_channel(addr, &read("ca.pem"), Some(&issued("notification-gateway")))
        .await
        .unwrap();
    let refused = EnrollmentServiceClient::new(gateway)
        .enroll_card(request("dev", 70001))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    // Probes: the plaintext health listener serves health, and nothing else.
    let health_addr = service.running.health_addr().unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        crate::harness::connect(health_addr).await,
    );
    crate::harness::wait_for_health(
        &mut health,
        "",
        tonic_health::pb::health_check_response::ServingStatus::Serving,
        Duration::from_secs(5),
    )
    .await;
    let status = EnrollmentServiceClient::new(crate::harness::connect(health_addr).await)
        .get_enrollment_status(GetEnrollmentStatusRequest {
            card_contract_id: 70001,
            refresh: false,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
}

#[tokio::test]
async fn mesh_header_mode_takes_the_identity_from_the_header() {
    let service = TestService::start(&settings(&[
        ("C2P_AUTH__IDENTITY", "mesh_header"),
        ("C2P_AUTH__CALLERS__APP__IDENTITY", APP),
        (
            "C2P_AUTH__CALLERS__APP__RPCS",
            "EnrollCard,GetEnrollmentStatus",
        ),
        ("C2P_AUTH__CALLERS__APP__PROGRAMS", "*"),
        ("C2P_AUTH__CALLERS__GATEWAY__IDENTITY", GATEWAY),
        ("C2P_AUTH__CALLERS__GATEWAY__RPCS", "NotificationIngest"),
    ]))
    .await;
    // The simulator's notifications come through the "mesh" as the gateway.
    service
        .sandbox
        .set_notification_identity("x-c2p-caller", GATEWAY);
    let mut client = service.client();
    let status = client.enroll_card(request("m1", 70001)).await.unwrap_err();
    assert_eq!(
        status.code(),
        Code::Unauthenticated,
        "no header: {status:?}"
    );
    let enrolled = client
        .enroll_card(as_caller(APP, request("m1", 70001)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(enrolled.enrollment.unwrap().card_contract_id, 70001);
    let as_stranger = as_caller(
        STRANGER,
        GetEnrollmentStatusRequest {
            card_contract_id: 70001,
            refresh: false,
        },
    );
    let status = client.get_enrollment_status(as_stranger).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
}

/// A connection lives no longer than its client certificate: the identity is verified at the
/// handshake only, and calls and open streams on the connection went on after the expiry (with
/// no `grpc.limits.max_connection_age`, for as long as the client kept it open).
#[tokio::test]
async fn a_connection_ends_when_its_client_certificate_expires() {
    let redis = RedisServer::start();
    let pki = Pki::new();
    let service = mtls_service(&pki, &redis).await;
    let addr = service.running.local_addr();
    let now = OffsetDateTime::now_utc();
    let until = now + time::Duration::seconds(3);
    let issued = pki
        .ca
        .client(APP, now - time::Duration::hours(1), until)
        .unwrap();
    let channel = tls_channel(addr, &pki.ca.cert_pem, Some(&issued))
        .await
        .unwrap();
    let mut app = EnrollmentServiceClient::new(channel);
    let read = || GetEnrollmentStatusRequest {
        card_contract_id: 70001,
        refresh: false,
    };
    app.get_enrollment_status(read()).await.unwrap();
    let mut watch = app
        .watch_enrollment(WatchEnrollmentRequest {
            card_contract_id: 70001,
            start_after_revision: 0,
        })
        .await
        .unwrap()
        .into_inner();
    watch.message().await.unwrap().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let next = tokio::time::timeout_at(deadline, watch.message())
            .await
            .expect("the watch outlived its certificate by 7 s");
        match next {
            // Heartbeats.
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => break,
        }
    }
    // X.509 times are whole seconds, the last one valid: the certificate ends within a second of
    // `until`.
    assert!(
        OffsetDateTime::now_utc() >= until - time::Duration::seconds(1),
        "the connection ended before the certificate expired"
    );
    // Calls after it need a new handshake, which the expired certificate cannot make: each
    // fails (the first may meet the closed connection), until one carries the handshake's
    // refusal (TLS 1.3 refuses a client certificate after the client finished its part: the
    // client learns it from the alert, as a transport error).
    let mut refusal = None;
    for _ in 0..10 {
        let after = app.get_enrollment_status(read()).await.unwrap_err();
        assert!(
            matches!(after.code(), Code::Unavailable | Code::Unknown),
            "{after:?}"
        );
        if format!("{after:?}").contains("CertificateExpired") {
            refusal = Some(after);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        refusal.is_some(),
        "no call was refused in the handshake for its expired certificate"
    );
}

/// A mesh header over mutual TLS is believed only from the mesh proxies' connections: another
/// workload whose certificate the same CA signed, naming itself the app backend in the header,
/// was that caller before `auth.mesh_peers`.
#[tokio::test]
async fn over_mutual_tls_only_the_mesh_proxies_may_name_the_caller() {
    const PROXY: &str = "spiffe://bank.test/ns/istio-system/sa/ingress-proxy";
    let redis = RedisServer::start();
    let pki = Pki::new();
    let service = mtls_service_with(
        &pki,
        &redis,
        &[
            ("C2P_AUTH__IDENTITY", "mesh_header"),
            ("C2P_AUTH__MESH_PEERS", PROXY),
        ],
    )
    .await;
    let addr = service.running.local_addr();
    let read = || {
        as_caller(
            APP,
            GetEnrollmentStatusRequest {
                card_contract_id: 70001,
                refresh: false,
            },
        )
    };
    let connect = |identity: &'static str| {
        let issued = pki.client(identity);
        let ca = pki.ca.cert_pem.clone();
        async move { EnrollmentServiceClient::new(tls_channel(addr, &ca, Some(&issued)).await.unwrap()) }
    };
    let through_mesh = connect(PROXY)
        .await
        .get_enrollment_status(read())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(through_mesh.enrollment.unwrap().card_contract_id, 70001);
    for workload in [STRANGER, APP] {
        let status = connect(workload)
            .await
            .get_enrollment_status(read())
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            Code::Unauthenticated,
            "{workload}: {status:?}"
        );
        assert_eq!(reason(&status), "CALLER_UNKNOWN");
    }
}

/// `message` sent as `identity` (mesh header mode).
fn as_caller<T>(identity: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("x-c2p-caller", identity.parse().unwrap());
    request
}

const DIRECTORY_APP: &str = "spiffe://bank.test/ns/payments/sa/directory-backend";

/// A service in mesh header mode whose app backend (`default`) and directory backend
/// (`directory`) may call these RPCs, and the gateway NotificationIngest (the simulator's
/// notifications come as it).
async fn two_programs(app_rpcs: &str, directory_rpcs: &str) -> TestService {
    let service = TestService::start(&settings(&[
        ("C2P_AUTH__IDENTITY", "mesh_header"),
        ("C2P_AUTH__CALLERS__APP__IDENTITY", APP),
        ("C2P_AUTH__CALLERS__APP__RPCS", app_rpcs),
        ("C2P_AUTH__CALLERS__APP__PROGRAMS", "default"),
        ("C2P_AUTH__CALLERS__DIRECTORY__IDENTITY", DIRECTORY_APP),
        ("C2P_AUTH__CALLERS__DIRECTORY__RPCS", directory_rpcs),
        ("C2P_AUTH__CALLERS__DIRECTORY__PROGRAMS", "directory"),
        ("C2P_AUTH__CALLERS__GATEWAY__IDENTITY", GATEWAY),
        ("C2P_AUTH__CALLERS__GATEWAY__RPCS", "NotificationIngest"),
    ]))
    .await;
    service
        .sandbox
        .set_notification_identity("x-c2p-caller", GATEWAY);
    service
}

/// Reads `watch` until it ends, every record it sends one the watcher may see (`visible`): it
/// ends PERMISSION_DENIED PROGRAM_NOT_ALLOWED, within 10 s of each message.
async fn refused_while_watching(
    watch: &mut tonic::Streaming<c2p_enroll::proto::v1::WatchEnrollmentResponse>,
    visible: impl Fn(&c2p_enroll::proto::v1::Enrollment) -> bool,
) {
    use c2p_enroll::proto::v1::watch_enrollment_response::Event;
    let ended = loop {
        let next = tokio::time::timeout(Duration::from_secs(10), watch.message())
            .await
            .expect("the watch neither ended nor sent anything");
        match next {
            Ok(Some(message)) => {
                if let Some(Event::Enrollment(e)) = message.event {
                    assert!(
                        visible(&e),
                        "a record the watcher may not see was sent: {e:?}"
                    );
                }
            }
            Ok(None) => panic!("the watch ended OK"),
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), Code::PermissionDenied, "{ended:?}");
    assert_eq!(reason(&ended), "PROGRAM_NOT_ALLOWED");
}

#[tokio::test]
async fn a_watch_ends_when_its_card_is_enrolled_again_under_a_program_the_watcher_may_not_see() {
    use c2p_enroll::proto::v1::{RemovalReason, RemoveCardRequest};
    let service = two_programs("EnrollCard,RemoveCard,WatchEnrollment", "EnrollCard").await;
    let mut client = service.client();
    client
        .enroll_card(as_caller(APP, request("a1", 70001)))
        .await
        .unwrap();
    let remove = RemoveCardRequest {
        idempotency_key: "r1".into(),
        card_contract_id: 70001,
        reason: RemovalReason::CardClosed as i32,
    };
    client.remove_card(as_caller(APP, remove)).await.unwrap();
    let watched = WatchEnrollmentRequest {
        card_contract_id: 70001,
        start_after_revision: 0,
    };
    let mut watch = client
        .watch_enrollment(as_caller(APP, watched))
        .await
        .unwrap()
        .into_inner();
    // The removed card, the watcher's program's.
    watch.message().await.unwrap().unwrap();

    // Another program's backend enrolls the removed card again.
    let mut again = request("d1", 70001);
    again.program = "directory".into();
    client
        .enroll_card(as_caller(DIRECTORY_APP, again))
        .await
        .unwrap();
    refused_while_watching(&mut watch, |e| e.program != "directory").await;
}

/// A card nobody enrolled belongs to no program: a backend of any program reads and watches it
/// before it enrolls it (it was PROGRAM_NOT_ALLOWED for every caller without `default`, the
/// program an empty record's stands for); once enrolled under another program it is refused.
#[tokio::test]
async fn a_card_nobody_enrolled_is_visible_to_every_program_until_one_enrolls_it() {
    use c2p_enroll::proto::v1::{EnrollmentState, watch_enrollment_response};
    let service = two_programs(
        "EnrollCard",
        "EnrollCard,GetEnrollmentStatus,WatchEnrollment",
    )
    .await;
    let mut client = service.client();
    let status_of = |card| {
        as_caller(
            DIRECTORY_APP,
            GetEnrollmentStatusRequest {
                card_contract_id: card,
                refresh: false,
            },
        )
    };
    for card in [70001, 70005] {
        let read = client
            .get_enrollment_status(status_of(card))
            .await
            .unwrap()
            .into_inner()
            .enrollment
            .unwrap();
        assert_eq!(read.state(), EnrollmentState::NotEnrolled, "{read:?}");
    }
    let mut watch = client
        .watch_enrollment(as_caller(
            DIRECTORY_APP,
            WatchEnrollmentRequest {
                card_contract_id: 70001,
                start_after_revision: 0,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    match first.event {
        Some(watch_enrollment_response::Event::Enrollment(e)) => {
            assert_eq!(e.state(), EnrollmentState::NotEnrolled, "{e:?}");
        }
        other => panic!("{other:?}"),
    }
    // The checked card enrolls under the directory program.
    let mut directory = request("d1", 70005);
    directory.program = "directory".into();
    client
        .enroll_card(as_caller(DIRECTORY_APP, directory))
        .await
        .unwrap();
    // The default program's backend enrolls the watched one: the watch ends, and reads are
    // refused from now on.
    client
        .enroll_card(as_caller(APP, request("a1", 70001)))
        .await
        .unwrap();
    refused_while_watching(&mut watch, |e| {
        matches!(
            e.state(),
            EnrollmentState::NotEnrolled | EnrollmentState::TokenizedElsewhere
        )
    })
    .await;
    let status = client
        .get_enrollment_status(status_of(70001))
        .await
        .unwrap_err();
    assert_eq!(reason(&status), "PROGRAM_NOT_ALLOWED");
    let own = client
        .get_enrollment_status(status_of(70005))
        .await
        .unwrap()
        .into_inner()
        .enrollment
        .unwrap();
    assert_eq!(own.state(), EnrollmentState::Enrolled);
    assert_eq!(own.program, "directory");
}

/// Mastercard's lifecycle routes of both families: what a change after the enrollment calls.
fn lifecycle_calls(service: &TestService) -> usize {
    [
        Route::LifecycleCards,
        Route::LifecycleProfiles,
        Route::DirectoryConsumers,
        Route::DirectoryCredentials,
    ]
    .into_iter()
    .map(|r| service.sandbox.count(r))
    .sum()
}

#[tokio::test]
async fn the_policy_guards_the_rpcs_after_an_enrollment() {
    use c2p_enroll::proto::v1::{
        EnrollmentState, GetClickToPayProfileRequest, OptOutRequest, RemovalReason,
        RemoveCardRequest, UpdateConsumerRequest, WithdrawOptOutRequest,
    };
    let redis = RedisServer::start();
    let pki = Pki::new();
    let mut env = pki.env();
    // A back office that may call every RPC after an enrollment, but only for the `directory`
    // program's cards.
    let back_office = "spiffe://bank.test/ns/payments/sa/back-office";
    env.push((
        "C2P_AUTH__CALLERS__OFFICE__IDENTITY".into(),
        back_office.into(),
    ));
    env.push((
        "C2P_AUTH__CALLERS__OFFICE__RPCS".into(),
        "GetEnrollmentStatus,RemoveCard,GetClickToPayProfile,UpdateConsumer,UpdateBillingAddress,OptOut,WithdrawOptOut".into(),
    ));
    env.push((
        "C2P_AUTH__CALLERS__OFFICE__PROGRAMS".into(),
        "directory".into(),
    ));
    // The `default` program's own back office: opt-outs only.
    let owner = "spiffe://bank.test/ns/payments/sa/default-office";
    env.push(("C2P_AUTH__CALLERS__OWNER__IDENTITY".into(), owner.into()));
    env.push((
        "C2P_AUTH__CALLERS__OWNER__RPCS".into(),
        "OptOut,WithdrawOptOut".into(),
    ));
    env.push((
        "C2P_AUTH__CALLERS__OWNER__PROGRAMS".into(),
        "default".into(),
    ));
    env.push(("C2P_REDIS__URL".into(), redis.url()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let settings = settings(&env);
    let sandbox = start_sandbox().await;
    let running = c2p_enroll::server::start(
        &settings,
        std::sync::Arc::new(sandbox.upstream(&settings.mastercard).unwrap()),
    )
    .await
    .unwrap();
    let service = TestService {
        running,
        channel: Endpoint::from_static("http://127.0.0.1:9").connect_lazy(),
        sandbox,
    };
    let addr = service.running.local_addr();
    let connect = |identity: &str| {
        let issued = pki.client(identity);
        let ca = pki.ca.cert_pem.clone();
        async move { EnrollmentServiceClient::new(tls_channel(addr, &ca, Some(&issued)).await.unwrap()) }
    };
    let remove = |key: &str| RemoveCardRequest {
        idempotency_key: key.into(),
        card_contract_id: 70001,
        reason: RemovalReason::CardClosed as i32,
    };
    let opt_out = OptOutRequest {
        card_contract_id: 70001,
    };

    // The app backend enrolls 70001 under `default`; its policy names no RPC after that.
    let mut app = connect(APP).await;
    let enrolled = app
        .enroll_card(request("k-enroll", 70001))
        .await
        .unwrap()
        .into_inner()
        .enrollment
        .unwrap();
    assert_eq!(enrolled.state(), EnrollmentState::Enrolled);
    let keys_after_enrollment = key_count(&redis);

    let status = app.remove_card(remove("k-remove")).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(reason(&status), "RPC_NOT_ALLOWED");
    let status = app.opt_out(opt_out).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(reason(&status), "RPC_NOT_ALLOWED");
    let status = app
        .withdraw_opt_out(WithdrawOptOutRequest {
            card_contract_id: 70001,
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&status), "RPC_NOT_ALLOWED");

    // The back office may call them, but not on a card of a program outside its list.
    let mut office = connect(back_office).await;
    let status = office.remove_card(remove("k-remove")).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(reason(&status), "PROGRAM_NOT_ALLOWED");
    let status = office.opt_out(opt_out).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(reason(&status), "PROGRAM_NOT_ALLOWED");
    let status = office
        .get_click_to_pay_profile(GetClickToPayProfileRequest {
            card_contract_id: 70001,
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&status), "PROGRAM_NOT_ALLOWED");
    let status = office
        .update_consumer(UpdateConsumerRequest {
            card_contract_id: 70001,
            consumer: Some(c2p_enroll::proto::v1::Consumer {
                email: "mary.major@bank.example".into(),
                mobile_number: None,
                first_name: "Mary".into(),
                last_name: "Major".into(),
                country_code: "GB".into(),
                language_code: "en_GB".into(),
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&status), "PROGRAM_NOT_ALLOWED");

    // Nothing changed: no lifecycle call reached Mastercard, nothing was written, the card is
    // still ENROLLED and may be enrolled again (no opt-out was recorded).
    assert_eq!(
        lifecycle_calls(&service),
        0,
        "a refused call reached Mastercard"
    );
    assert_eq!(
        key_count(&redis),
        keys_after_enrollment,
        "a refused call wrote to Redis"
    );
    let now = app
        .get_enrollment_status(GetEnrollmentStatusRequest {
            card_contract_id: 70001,
            refresh: false,
        })
        .await
        .unwrap()
        .into_inner()
        .enrollment
        .unwrap();
    assert_eq!(now.state(), EnrollmentState::Enrolled);
    assert_eq!(now.revision, enrolled.revision);
    let replay = app
        .enroll_card(request("k-enroll", 70001))
        .await
        .unwrap()
        .into_inner();
    assert!(replay.replayed);

    // The cardholder opts out through the `default` program's office; the opt-out outlives
    // the card's record (deleted here, as its TTL would). The other program's office still may
    // not lift it: the opt-out keeps its program.
    let mut default_office = connect(owner).await;
    default_office.opt_out(opt_out).await.unwrap();
    let record_key = "c2p:{card:70001}:enrollment";
    let deleted: i64 = redis::cmd("DEL")
        .arg(record_key)
        .query(&mut redis.connection())
        .unwrap();
    assert_eq!(deleted, 1);
    let withdraw = WithdrawOptOutRequest {
        card_contract_id: 70001,
    };
    let status = office.withdraw_opt_out(withdraw).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(reason(&status), "PROGRAM_NOT_ALLOWED");
    let status = app
        .enroll_card(request("k-after-opt-out", 70001))
        .await
        .unwrap_err();
    assert_eq!(reason(&status), "CONSUMER_OPTED_OUT", "{status:?}");
    let withdrawn = default_office
        .withdraw_opt_out(withdraw)
        .await
        .unwrap()
        .into_inner();
    assert!(withdrawn.withdrawn);
}
