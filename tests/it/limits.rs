//! What one client can make the service hold, and what hostile input gets back: message size,
//! undecodable protobuf, field bounds, stream caps (with the RSS of the release binary's
//! process while a client tries 5,000 watches), silent connections and the default deadline.

use crate::flows::request;
use crate::harness::{ServiceProcess, TestService, connect, settings, t0};
use bytes::{Buf as _, BufMut as _};
use c2p_enroll::proto::v1::{
    NotificationIngestRequest, NotificationOutcome, TokenStatus, TokenStatusChanged,
    WatchEnrollmentRequest, enrollment_service_client::EnrollmentServiceClient,
    notification_ingest_request::Event,
};
use c2p_enroll::sandbox::faults::{Route, RouteFault};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic_types::StatusExt as _;

/// Sends raw bytes as a request message: what a hostile or broken client can put on the wire.
#[derive(Default)]
struct RawCodec;
struct Raw;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let bytes = src.copy_to_bytes(src.remaining()).to_vec();
        Ok(Some(bytes))
    }
}

async fn raw_call(
    channel: tonic::transport::Channel,
    method: &str,
    body: Vec<u8>,
) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = format!("/c2p.enrollment.v1.EnrollmentService/{method}")
        .parse()
        .unwrap();
    grpc.unary(tonic::Request::new(body), path, RawCodec)
        .await
        .unwrap_err()
}

fn violations(status: &tonic::Status) -> Vec<(String, String)> {
    status
        .get_error_details()
        .bad_request()
        .map(|b| {
            b.field_violations
                .iter()
                .map(|v| (v.field.clone(), v.description.clone()))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn oversized_and_malformed_requests_are_refused_without_echo() {
    let service = TestService::start(&settings(&[])).await;
    let mut client = service.client();
    // 100 KB of a name (over the 16 KiB default): refused before decoding, with a short message.
    let mut big = request("big", 70001);
    big.cardholder_full_name = "4111111111111111".repeat(6_400);
    let status = client.enroll_card(big).await.unwrap_err();
    println!("oversized: {:?} {:?}", status.code(), status.message());
    assert_eq!(status.code(), Code::OutOfRange);
    assert!(status.message().len() < 200 && !status.message().contains("4111"));

    // Not protobuf of the expected type: invalid UTF-8 in field 1, a truncated varint, a
    // wrong wire type.
    for body in [
        vec![0x0a, 0x03, 0xff, 0xfe, 0xfd],
        vec![0x10, 0xff, 0xff],
        vec![0x0f],
    ] {
        let status = raw_call(service.channel.clone(), "EnrollCard", body.clone()).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{body:?}: {status:?}");
        let status = raw_call(service.channel.clone(), "GetEnrollmentStatus", body).await;
        assert_eq!(status.code(), Code::InvalidArgument);
    }
    assert_eq!(service.sandbox.count(Route::Searches), 0);
}

#[tokio::test]
async fn fields_over_their_bounds_are_named_and_never_echoed() {
    let service = TestService::start(&settings(&[])).await;
    let mut client = service.client();
    let mut bad = request("k\u{1b}[2J", 70001);
    bad.program = "P4111111111111111".repeat(500); // 8.5 KB: under the message limit
    let consumer = bad.consumer.as_mut().unwrap();
    consumer.first_name = "Jane\u{1b}[31m".into();
    consumer.last_name = "Doe\nInjected: yes".into();
    bad.cardholder_full_name = "x".repeat(256);
    let status = client.enroll_card(bad).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let fields: Vec<String> = violations(&status).into_iter().map(|(f, _)| f).collect();
    for f in [
        "idempotency_key",
        "program",
        "consumer.first_name",
        "consumer.last_name",
        "cardholder_full_name",
    ] {
        assert!(fields.contains(&f.to_string()), "{f} not in {fields:?}");
    }
    let details = format!("{:?}", status.get_error_details());
    assert!(
        !details.contains("4111") && !details.contains('\u{1b}'),
        "{details}"
    );
    assert!(
        status.details().len() < 2_000,
        "{} bytes of details",
        status.details().len()
    );

    // A notification with a 1,000-character reason and one with control characters.
    let notification = |id: &str, reason: String| NotificationIngestRequest {
        notification_id: id.into(),
        sequence: 0,
        event_time: Some(prost_types::Timestamp {
            seconds: t0(),
            nanos: 0,
        }),
        event: Some(Event::TokenStatusChanged(TokenStatusChanged {
            card_contract_id: 70001,
            token_unique_reference: "DM4MMC0000000000000000000001".into(),
            token_requestor_id: "50123197928".into(),
            wallet_name: "MDES for Merchants".into(),
            status: TokenStatus::Deactivated as i32,
            reason,
        })),
    };
    let answers: Vec<_> = client
        .notification_ingest(futures::stream::iter(vec![
            notification("n-long", "r".repeat(1_000)),
            notification("n-ctrl", "STATUS\u{1b}[2J".into()),
            notification(&"i".repeat(10_000), String::new()),
        ]))
        .await
        .unwrap()
        .into_inner()
        .collect::<Vec<_>>()
        .await;
    assert_eq!(answers.len(), 3);
    for a in answers {
        let a = a.unwrap();
        assert_eq!(a.outcome(), NotificationOutcome::Rejected, "{a:?}");
        assert!(a.notification_id.chars().count() <= 255);
    }
    // Nothing was applied to the card.
    let status = client
        .get_enrollment_status(c2p_enroll::proto::v1::GetEnrollmentStatusRequest {
            card_contract_id: 70001,
            refresh: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(status.enrollment.unwrap().token.is_none());
}

use futures::StreamExt as _;

#[tokio::test]
async fn watch_streams_past_the_cap_are_refused() {
    let service =
        TestService::start(&settings(&[("C2P_GRPC__LIMITS__MAX_WATCH_STREAMS", "20")])).await;
    let mut open = Vec::new();
    let mut refused = 0;
    for _ in 0..30 {
        match service
            .client()
            .watch_enrollment(WatchEnrollmentRequest {
                card_contract_id: 70001,
                start_after_revision: 0,
            })
            .await
        {
            Ok(stream) => open.push(stream.into_inner()),
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted);
                refused += 1;
            }
        }
    }
    println!("watch cap 20: {} open, {refused} refused", open.len());
    assert_eq!((open.len(), refused), (20, 10));
    // Closing one frees its place (once the server has seen the stream end).
    open.pop();
    let mut reopened = false;
    for _ in 0..100 {
        let attempt = service
            .client()
            .watch_enrollment(WatchEnrollmentRequest {
                card_contract_id: 70001,
                start_after_revision: 0,
            })
            .await;
        if attempt.is_ok() {
            reopened = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reopened, "the closed watch's place was never freed");
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// The stated bound on the service's RSS while one client tries to open 5,000 watches with
/// the default limits (1,000 watches per process, 100 streams per connection).
const RSS_BOUND_MIB: u64 = 128;

#[tokio::test]
async fn five_thousand_watch_attempts_stay_under_the_rss_bound() {
    let mut process = ServiceProcess::spawn(&[], &[("C2P_GRPC__LISTEN", "127.0.0.1:0")]);
    let addr = process.listening_addr().await;
    let before = rss_kib(process.pid());
    let mut streams = Vec::new();
    let (mut ok, mut refused, mut other) = (0, 0, 0);
    // 50 connections x 100 streams each (the per-connection limit).
    for _ in 0..50 {
        let channel = connect(addr).await;
        let mut attempts = futures::stream::FuturesUnordered::new();
        for _ in 0..100 {
            let mut client = EnrollmentServiceClient::new(channel.clone());
            attempts.push(async move {
                client
                    .watch_enrollment(WatchEnrollmentRequest {
                        card_contract_id: 70001,
                        start_after_revision: 0,
                    })
                    .await
            });
        }
        while let Some(result) = attempts.next().await {
            match result {
                Ok(s) => {
                    ok += 1;
                    streams.push(s.into_inner());
                }
                Err(s) if s.code() == Code::ResourceExhausted => refused += 1,
                Err(_) => other += 1,
            }
        }
    }
    let during = rss_kib(process.pid());
    println!(
        "5000 watch attempts: {ok} open, {refused} refused, {other} other errors; RSS {} MiB before, {} MiB with them open (bound {RSS_BOUND_MIB} MiB)",
        before / 1024,
        during / 1024
    );
    assert_eq!(ok, 1_000);
    assert_eq!((refused, other), (4_000, 0));
    assert!(during / 1024 < RSS_BOUND_MIB);
}

/// Reads (never answering SETTINGS or PINGs) until the server closes the connection; how long
/// that took. Panics if it is still open after 10 s.
pub async fn closed_after<S: tokio::io::AsyncRead + Unpin>(mut stream: S) -> Duration {
    let started = Instant::now();
    let mut buf = vec![0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => continue,
            Err(_) => panic!("connection still open after 10 s"),
        }
    }
}

/// The HTTP/2 preface and an empty SETTINGS frame.
pub const PREFACE_AND_SETTINGS: &[u8] =
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

#[tokio::test]
async fn silent_connections_are_closed() {
    let service = TestService::start(&settings(&[
        ("C2P_GRPC__LIMITS__HANDSHAKE_TIMEOUT", "300ms"),
        ("C2P_GRPC__LIMITS__KEEPALIVE_INTERVAL", "300ms"),
        ("C2P_GRPC__LIMITS__KEEPALIVE_TIMEOUT", "300ms"),
        ("C2P_HEALTH__LISTEN", "127.0.0.1:0"),
    ]))
    .await;
    let addr = service.running.local_addr();
    let connect = || tokio::net::TcpStream::connect(addr);
    // Bare TCP: nothing is ever sent.
    println!(
        "bare TCP closed after {:?}",
        closed_after(connect().await.unwrap()).await
    );
    // Half a preface, then silence.
    let mut half = connect().await.unwrap();
    half.write_all(b"PRI * HTTP").await.unwrap();
    println!("half a preface closed after {:?}", closed_after(half).await);
    // Not HTTP/2 at all.
    let mut http1 = connect().await.unwrap();
    http1
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n123456")
        .await
        .unwrap();
    println!("HTTP/1.1 closed after {:?}", closed_after(http1).await);
    // The whole preface and SETTINGS, then silence: PINGs go unanswered.
    let mut preface = connect().await.unwrap();
    preface.write_all(PREFACE_AND_SETTINGS).await.unwrap();
    println!(
        "preface-only closed after {:?}",
        closed_after(preface).await
    );
    // The health-only listener is held to the same.
    let health = service.running.health_addr().unwrap();
    let bare = tokio::net::TcpStream::connect(health).await.unwrap();
    println!(
        "health port, bare TCP closed after {:?}",
        closed_after(bare).await
    );
    let mut preface = tokio::net::TcpStream::connect(health).await.unwrap();
    preface.write_all(PREFACE_AND_SETTINGS).await.unwrap();
    println!(
        "health port, preface-only closed after {:?}",
        closed_after(preface).await
    );
}

#[tokio::test]
async fn connections_past_the_cap_are_closed_at_once() {
    let service =
        TestService::start(&settings(&[("C2P_GRPC__LIMITS__MAX_CONNECTIONS", "3")])).await;
    let addr = service.running.local_addr();
    // The harness's channel holds one; two more with a preface.
    let _ = crate::harness::health_status(&mut service.health(), "").await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(PREFACE_AND_SETTINGS).await.unwrap();
        held.push(tcp);
    }
    // The fourth is closed without being served, though it sends a valid preface.
    let mut fourth = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = fourth.write_all(PREFACE_AND_SETTINGS).await;
    let mut buf = [0u8; 64];
    let answer = tokio::time::timeout(Duration::from_secs(10), fourth.read(&mut buf))
        .await
        .expect("the fourth connection was neither served nor closed");
    assert!(
        matches!(answer, Ok(0) | Err(_)),
        "the fourth connection got {answer:?}"
    );
    // The first connection still works.
    let _ = crate::harness::health_status(&mut service.health(), "").await;
}

#[tokio::test]
async fn health_watches_past_their_cap_are_refused() {
    let service = TestService::start(&settings(&[])).await;
    let mut open = Vec::new();
    let mut refused = 0;
    let mut channel = service.channel.clone();
    for i in 0..(c2p_enroll::health::MAX_HEALTH_WATCHES + 5) {
        // At most 100 streams per connection: a new one every 90 watches.
        if i % 90 == 89 {
            channel = connect(service.running.local_addr()).await;
        }
        match tonic_health::pb::health_client::HealthClient::new(channel.clone())
            .watch(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
        {
            Ok(s) => open.push(Some(s.into_inner())),
            Err(s) => {
                assert_eq!(s.code(), Code::ResourceExhausted);
                refused += 1;
            }
        }
    }
    let opened = open.iter().flatten().count();
    println!("health watches: {opened} open, {refused} refused");
    assert_eq!(
        (opened, refused),
        (c2p_enroll::health::MAX_HEALTH_WATCHES, 5)
    );
}

#[tokio::test]
async fn unary_calls_without_a_deadline_get_the_default_one() {
    let service =
        TestService::start(&settings(&[("C2P_GRPC__LIMITS__DEFAULT_DEADLINE", "1s")])).await;
    service.sandbox.set_fault(
        Route::Searches,
        RouteFault {
            latency: Some(Duration::from_secs(5)),
            ..RouteFault::default()
        },
    );
    let started = Instant::now();
    let status = service
        .client()
        .enroll_card(request("slow", 70001))
        .await
        .unwrap_err();
    println!(
        "no deadline, upstream 5 s: {:?} after {:?}",
        status.code(),
        started.elapsed()
    );
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
}

#[tokio::test]
async fn ingest_streams_past_the_cap_are_refused() {
    let service =
        TestService::start(&settings(&[("C2P_GRPC__LIMITS__MAX_INGEST_STREAMS", "2")])).await;
    let mut held = Vec::new();
    let mut results = Vec::new();
    for _ in 0..3 {
        // An input that stays open: the stream lives until its sender is dropped.
        let (tx, rx) = tokio::sync::mpsc::channel::<NotificationIngestRequest>(1);
        let result = service
            .client()
            .notification_ingest(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await;
        results.push(result.as_ref().map(|_| ()).map_err(|s| s.code()));
        held.push((tx, result));
    }
    assert_eq!(results, vec![Ok(()), Ok(()), Err(Code::ResourceExhausted)]);
}

#[tokio::test]
async fn the_server_announces_its_per_connection_stream_limit() {
    let service = TestService::start(&settings(&[(
        "C2P_GRPC__LIMITS__MAX_CONCURRENT_STREAMS",
        "5",
    )]))
    .await;
    let tcp = tokio::net::TcpStream::connect(service.running.local_addr())
        .await
        .unwrap();
    let (send, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    // The server's SETTINGS frame arrives right after the handshake; wait until it is applied.
    let mut limit = 0;
    for _ in 0..100 {
        let ready = send.clone().ready().await.unwrap();
        limit = ready.current_max_send_streams();
        if limit != usize::MAX {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(limit, 5);
}

#[tokio::test]
async fn connections_are_recycled_after_their_max_age() {
    // Keepalive stays at its 30 s default: what closes the connection here is its age.
    let service = TestService::start(&settings(&[
        ("C2P_GRPC__LIMITS__MAX_CONNECTION_AGE", "500ms"),
        ("C2P_GRPC__LIMITS__MAX_CONNECTION_AGE_GRACE", "500ms"),
    ]))
    .await;
    let mut tcp = tokio::net::TcpStream::connect(service.running.local_addr())
        .await
        .unwrap();
    tcp.write_all(PREFACE_AND_SETTINGS).await.unwrap();
    println!(
        "connection closed after {:?} (max age 500ms + 500ms grace)",
        closed_after(tcp).await
    );
}
