//! A small `NotificationIngest` load loop: one stream, `--count` notifications (token status
//! changes and authorizations over `--cards` cards, each newer than the card's last one, so
//! most are APPLIED), at most `--window` unanswered (0: no window, everything is written as
//! fast as the transport takes it). Prints the acknowledgements per second and the outcomes.
//!
//! ```sh
//! cargo build --release --bin c2p-enroll --example ingest_load
//! C2P_REDIS__URL=redis://127.0.0.1:6390/ C2P_GRPC__LISTEN=127.0.0.1:50071 target/release/c2p-enroll &
//! target/release/examples/ingest_load --endpoint http://127.0.0.1:50071 --count 100000
//! ```

use c2p_enroll::proto::v1::enrollment_service_client::EnrollmentServiceClient;
use c2p_enroll::proto::v1::{
    NotificationIngestRequest, TokenStatus, TokenStatusChanged, TokenizationAuthorization,
    TokenizationDecision, notification_ingest_request::Event,
};
use clap::Parser;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tonic::transport::Endpoint;

#[derive(Parser, Debug)]
struct Args {
    /// The service.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    endpoint: String,
    /// Notifications to send.
    #[arg(long, default_value_t = 100_000)]
    count: u64,
    /// Distinct cards (card ids from `--first-card`).
    #[arg(long, default_value_t = 10_000)]
    cards: u64,
    /// The first card id.
    #[arg(long, default_value_t = 1_000_000)]
    first_card: i64,
    /// Most messages unanswered at once; 0 = no window.
    #[arg(long, default_value_t = 0)]
    window: usize,
    /// A prefix for notification ids (a new one per run, so that a rerun is not all DUPLICATE).
    #[arg(long)]
    run: Option<String>,
    /// Raw HTTP/2 instead of a gRPC client: every message its own small DATA frame, all
    /// queued at once (sent as fast as the server's window allows), no window of our own.
    #[arg(long)]
    frames: bool,
}

fn notification(args: &Args, run: &str, i: u64, base_s: i64) -> NotificationIngestRequest {
    let card = args.first_card + (i % args.cards.max(1)) as i64;
    let round = i / args.cards.max(1);
    // Each round is one millisecond later than the last: every notification is the card's newest.
    let millis = base_s * 1000 + round as i64;
    let event = if round.is_multiple_of(2) {
        Event::TokenStatusChanged(TokenStatusChanged {
            card_contract_id: card,
            token_unique_reference: format!("DM4MMC{card:010}"),
            token_requestor_id: "50123197928".into(),
            wallet_name: "MDES for Merchants".into(),
            status: if round.is_multiple_of(4) {
                TokenStatus::Active
            } else {
                TokenStatus::Suspended
            } as i32,
            reason: String::new(),
        })
    } else {
        Event::TokenizationAuthorization(TokenizationAuthorization {
            card_contract_id: card,
            token_unique_reference: format!("DM4MMC{card:010}"),
            token_requestor_id: "50123197928".into(),
            wallet_name: "MDES for Merchants".into(),
            decision: TokenizationDecision::Approved as i32,
        })
    };
    NotificationIngestRequest {
        notification_id: format!("{run}-{i}"),
        event_time: Some(prost_types::Timestamp {
            seconds: millis.div_euclid(1000),
            nanos: (millis.rem_euclid(1000) * 1_000_000) as i32,
        }),
        sequence: i,
        event: Some(event),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    let run = args
        .run
        .clone()
        .unwrap_or_else(|| format!("load-{}", now.as_millis()));
    // An hour ago: inside the accepted event-time range, leaving room for the rounds.
    let base_s = now.as_secs() as i64 - 3600;
    let messages: Vec<_> = (0..args.count)
        .map(|i| notification(&args, &run, i, base_s))
        .collect();

    if args.frames {
        return frames(&args, messages).await;
    }
    let channel = Endpoint::from_shared(args.endpoint.clone())?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await?;
    let mut client = EnrollmentServiceClient::new(channel);
    let window = Arc::new(Semaphore::new(if args.window == 0 {
        Semaphore::MAX_PERMITS
    } else {
        args.window
    }));
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    let sender_window = window.clone();
    let started = Instant::now();
    tokio::spawn(async move {
        for m in messages {
            let Ok(permit) = sender_window.acquire().await else {
                return;
            };
            permit.forget();
            if tx.send(m).await.is_err() {
                return;
            }
        }
    });
    let mut answers = client
        .notification_ingest(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    let mut got = 0u64;
    while got < args.count {
        let Some(answer) = answers.message().await? else {
            break;
        };
        window.add_permits(1);
        got += 1;
        *outcomes
            .entry(format!("{:?}", answer.outcome()))
            .or_default() += 1;
    }
    let elapsed = started.elapsed();
    println!(
        "{got} answers of {} in {:.3} s: {:.0} acks/s; {outcomes:?}",
        args.count,
        elapsed.as_secs_f64(),
        got as f64 / elapsed.as_secs_f64()
    );
    if got < args.count {
        return Err(format!("the stream ended after {got} answers").into());
    }
    Ok(())
}

/// `--frames`: one raw HTTP/2 stream, a DATA frame per message, answers read as they come.
async fn frames(
    args: &Args,
    messages: Vec<NotificationIngestRequest>,
) -> Result<(), Box<dyn std::error::Error>> {
    use bytes::{Buf as _, Bytes, BytesMut};
    use prost::Message as _;
    let authority = args
        .endpoint
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let tcp = tokio::net::TcpStream::connect(authority).await?;
    tcp.set_nodelay(true)?;
    let (client, connection) = h2::client::handshake(tcp).await?;
    let connection = tokio::spawn(connection);
    let mut client = client.ready().await?;
    let request = http::Request::builder()
        .method("POST")
        .uri(format!(
            "http://{authority}/c2p.enrollment.v1.EnrollmentService/NotificationIngest"
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())?;
    let started = Instant::now();
    let (response, mut send) = client.send_request(request, false)?;
    let size = messages.first().map(|m| m.encoded_len()).unwrap_or(0);
    let mut send_error = None;
    for m in &messages {
        let body = m.encode_to_vec();
        let mut framed = Vec::with_capacity(body.len() + 5);
        framed.push(0);
        framed.extend((body.len() as u32).to_be_bytes());
        framed.extend(body);
        if let Err(e) = send.send_data(Bytes::from(framed), false) {
            // The stream is gone (e.g. the connection was closed): the answers say why.
            send_error = Some(e.to_string());
            break;
        }
    }
    if send_error.is_none() {
        send.send_data(Bytes::new(), true)?;
    }
    let mut got = 0u64;
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    let mut status = "none".to_owned();
    let mut problem = None;
    match response.await {
        Err(e) => problem = Some(e.to_string()),
        Ok(response) => {
            let mut body = response.into_body();
            let mut pending = BytesMut::new();
            while let Some(chunk) = body.data().await {
                let chunk = match chunk {
                    Ok(chunk) => chunk,
                    Err(e) => {
                        problem = Some(e.to_string());
                        break;
                    }
                };
                let _ = body.flow_control().release_capacity(chunk.len());
                pending.extend_from_slice(&chunk);
                while pending.len() >= 5 {
                    let len = u32::from_be_bytes([pending[1], pending[2], pending[3], pending[4]])
                        as usize;
                    if pending.len() < 5 + len {
                        break;
                    }
                    let mut message = pending.split_to(5 + len);
                    message.advance(5);
                    let answer =
                        c2p_enroll::proto::v1::NotificationIngestResponse::decode(message)?;
                    got += 1;
                    *outcomes
                        .entry(format!("{:?}", answer.outcome()))
                        .or_default() += 1;
                }
            }
            if let Ok(Some(trailers)) = body.trailers().await
                && let Some(s) = trailers.get("grpc-status")
            {
                status = s.to_str()?.to_owned();
            }
        }
    }
    let elapsed = started.elapsed();
    drop(client);
    if let Ok(Ok(Err(e))) = tokio::time::timeout(Duration::from_secs(1), connection).await {
        problem.get_or_insert(e.to_string());
    }
    println!(
        "{got} answers of {} ({size}-byte messages, a DATA frame each) in {:.3} s: {:.0} acks/s; \
         grpc-status {status}; {outcomes:?}; connection problem: {problem:?}; \
         sending stopped: {send_error:?}",
        messages.len(),
        elapsed.as_secs_f64(),
        got as f64 / elapsed.as_secs_f64()
    );
    if got < messages.len() as u64 || status != "0" {
        return Err(format!("the stream ended after {got} answers").into());
    }
    Ok(())
}
