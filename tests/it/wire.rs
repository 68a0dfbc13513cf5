//! What the tests put on the wire themselves: the standard EnrollCard request, and a raw HTTP/2
//! NotificationIngest stream (for frames no gRPC client would send). Shared by the integration
//! and chaos suites.

use bytes::{Buf as _, Bytes};
use c2p_enroll::proto::v1::{Consumer, EnrollCardRequest, NotificationIngestResponse};
use prost::Message as _;

/// An EnrollCard request for Jane Doe with idempotency key `key`.
pub fn request(key: &str, card: i64) -> EnrollCardRequest {
    EnrollCardRequest {
        idempotency_key: key.into(),
        card_contract_id: card,
        program: String::new(),
        consumer: Some(Consumer {
            email: "jane.doe@example.com".into(),
            mobile_number: None,
            first_name: "Jane".into(),
            last_name: "Doe".into(),
            country_code: "US".into(),
            language_code: "en_US".into(),
        }),
        cardholder_full_name: "Jane Doe".into(),
        billing_address: None,
        src_correlation_id: String::new(),
        validate_only: false,
    }
}

/// One gRPC length-prefixed message.
pub fn frame(message: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8];
    out.extend((message.len() as u32).to_be_bytes());
    out.extend(message);
    out
}

/// What one raw HTTP/2 call answered: the response's headers, its body and its trailers.
struct RawAnswer {
    headers: http::HeaderMap,
    data: Vec<u8>,
    trailers: Option<http::HeaderMap>,
}

impl RawAnswer {
    /// The grpc-status header of the trailers, or of the headers for a trailers-only answer.
    fn status_headers(&self) -> &http::HeaderMap {
        match &self.trailers {
            Some(t) if t.contains_key("grpc-status") => t,
            _ => &self.headers,
        }
    }
}

/// Sends `body` as the whole request stream of `method` over raw HTTP/2 with `headers` beside
/// the standard ones, and reads the whole answer.
async fn raw_call(
    addr: std::net::SocketAddr,
    method: &str,
    body: Vec<u8>,
    headers: &[(&str, String)],
) -> RawAnswer {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let mut request = http::Request::builder()
        .method("POST")
        .uri(format!(
            "http://{addr}/c2p.enrollment.v1.EnrollmentService/{method}"
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let (response, mut send) = client
        .send_request(request.body(()).unwrap(), false)
        .unwrap();
    send.send_data(Bytes::from(body), true).unwrap();
    let response = response.await.unwrap();
    let headers = response.headers().clone();
    let mut body = response.into_body();
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await.unwrap();
    RawAnswer {
        headers,
        data,
        trailers,
    }
}

/// Sends `body` as the whole NotificationIngest request stream over raw HTTP/2; returns the
/// answers and the final grpc-status (`none` when the server sent none).
pub async fn raw_ingest(
    addr: std::net::SocketAddr,
    body: Vec<u8>,
) -> (Vec<NotificationIngestResponse>, String) {
    let answer = raw_call(addr, "NotificationIngest", body, &[]).await;
    let status = answer
        .status_headers()
        .get("grpc-status")
        .map_or_else(|| "none".into(), |v| v.to_str().unwrap().to_owned());
    let mut answers = Vec::new();
    let mut buf = Bytes::from(answer.data);
    while buf.remaining() >= 5 {
        let _compressed = buf.get_u8();
        let len = buf.get_u32() as usize;
        answers.push(NotificationIngestResponse::decode(buf.split_to(len)).unwrap());
    }
    (answers, status)
}

/// Sends one unary request of `method` (e.g. `EnrollCard`) over raw HTTP/2 with a
/// `grpc-timeout` of `timeout` and no timer of its own, and returns the answer's status.
/// tonic's client enforces the `grpc-timeout` it sends with a timer of its own, which would
/// race the service's answer, sent a margin before the deadline, on a loaded machine; this one
/// waits for the service.
pub async fn raw_unary_status(
    addr: std::net::SocketAddr,
    method: &str,
    message: &[u8],
    timeout: std::time::Duration,
) -> tonic::Status {
    let timeout = ("grpc-timeout", format!("{}m", timeout.as_millis()));
    let answer = raw_call(addr, method, frame(message), &[timeout]).await;
    tonic::Status::from_header_map(answer.status_headers())
        .unwrap_or_else(|| tonic::Status::unknown("the answer carried no grpc-status"))
}

/// How a pipelined ingest stream went: the answers, the final grpc-status (`none` when the
/// server sent none) and how the connection ended (`None`: still fine when the stream ended).
pub struct Pipelined {
    pub answers: Vec<NotificationIngestResponse>,
    pub status: String,
    pub connection_error: Option<String>,
}

/// Sends each of `messages` (encoded requests) as its own small DATA frame on one raw HTTP/2
/// NotificationIngest stream, all of them at once, as fast as the server's flow-control window
/// lets them go, without waiting for a single answer (a gateway that keeps no window); reads
/// the answers meanwhile.
pub async fn pipelined_ingest(addr: std::net::SocketAddr, messages: Vec<Vec<u8>>) -> Pipelined {
    let (mut runs, connection_error) = pipelined_ingest_streams(addr, vec![messages]).await;
    let (answers, status) = runs.remove(0);
    Pipelined {
        answers,
        status,
        connection_error,
    }
}

/// [`pipelined_ingest`] on several streams of one HTTP/2 connection at once (a gateway's
/// workers sharing one channel): each stream's answers and final grpc-status, and how the
/// connection ended.
#[allow(clippy::type_complexity)]
pub async fn pipelined_ingest_streams(
    addr: std::net::SocketAddr,
    streams: Vec<Vec<Vec<u8>>>,
) -> (
    Vec<(Vec<NotificationIngestResponse>, String)>,
    Option<String>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    let mut runs = Vec::new();
    for messages in streams {
        let mut client = client.clone().ready().await.unwrap();
        let request = http::Request::builder()
            .method("POST")
            .uri(format!(
                "http://{addr}/c2p.enrollment.v1.EnrollmentService/NotificationIngest"
            ))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let (response, mut send) = client.send_request(request, false).unwrap();
        runs.push(tokio::spawn(async move {
            // h2 queues every message as its own frame and sends each as soon as the window
            // has room.
            for m in messages {
                if send.send_data(Bytes::from(frame(&m)), false).is_err() {
                    break;
                }
            }
            let _ = send.send_data(Bytes::new(), true);
            read_answers(response).await
        }));
    }
    let mut answers = Vec::new();
    for run in runs {
        answers.push(run.await.unwrap());
    }
    drop(client);
    let connection_error =
        match tokio::time::timeout(std::time::Duration::from_secs(1), connection).await {
            Ok(Ok(Err(e))) => Some(e.to_string()),
            _ => None,
        };
    (answers, connection_error)
}

/// The answers of a raw NotificationIngest stream and its grpc-status (`none`: none came).
async fn read_answers(
    response: h2::client::ResponseFuture,
) -> (Vec<NotificationIngestResponse>, String) {
    let mut answers = Vec::new();
    let mut status = "none".to_owned();
    if let Ok(response) = response.await {
        if let Some(s) = response.headers().get("grpc-status") {
            status = s.to_str().unwrap().to_owned();
        }
        let mut body = response.into_body();
        let mut pending = bytes::BytesMut::new();
        while let Some(chunk) = body.data().await {
            let Ok(chunk) = chunk else { break };
            let _ = body.flow_control().release_capacity(chunk.len());
            pending.extend_from_slice(&chunk);
            while pending.len() >= 5 {
                let len = u32::from_be_bytes([pending[1], pending[2], pending[3], pending[4]]);
                if pending.len() < 5 + len as usize {
                    break;
                }
                let mut message = pending.split_to(5 + len as usize);
                message.advance(5);
                answers.push(NotificationIngestResponse::decode(message.freeze()).unwrap());
            }
        }
        if let Ok(Some(trailers)) = body.trailers().await
            && let Some(s) = trailers.get("grpc-status")
        {
            status = s.to_str().unwrap().to_owned();
        }
    }
    (answers, status)
}
