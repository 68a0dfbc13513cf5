//! A scripted HTTP/1.1 server on loopback for the adapter tests: each connection takes one
//! request, records it (exact body bytes included) and answers with the next scripted reply,
//! which may also be a hang or a connection reset.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the server does with one request.
#[derive(Clone, Debug)]
pub enum Reply {
    /// Answers with this status, headers and body.
    Respond {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// Reads the request, then never answers.
    Hang,
    /// Reads the request, then resets the connection (RST): the request was sent.
    ResetAfterRead,
}

impl Reply {
    pub fn json(status: u16, body: &str) -> Reply {
        Reply::Respond {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.as_bytes().to_vec(),
        }
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Reply {
        if let Reply::Respond { headers, .. } = &mut self {
            headers.push((name.into(), value.into()));
        }
        self
    }
}

/// One request as received.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub struct HttpStub {
    pub addr: SocketAddr,
    script: Arc<Mutex<VecDeque<Reply>>>,
    log: Arc<Mutex<Vec<Recorded>>>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpStub {
    /// Serves `replies` in order; the last one repeats once the others are used.
    pub async fn start(replies: Vec<Reply>) -> HttpStub {
        Self::start_inner(replies, None).await
    }

    /// As [`HttpStub::start`], over TLS with the test CA's `127.0.0.1` certificate.
    pub async fn start_tls(replies: Vec<Reply>) -> HttpStub {
        use tokio_rustls::rustls::{
            self,
            pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
        };
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keys");
        let certs = CertificateDer::pem_file_iter(format!("{dir}/localhost.cert.pem"))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(format!("{dir}/localhost.key.pem")).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        Self::start_inner(
            replies,
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
        )
        .await
    }

    async fn start_inner(replies: Vec<Reply>, tls: Option<tokio_rustls::TlsAcceptor>) -> HttpStub {
        assert!(!replies.is_empty());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let script = Arc::new(Mutex::new(VecDeque::from(replies)));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (s, l) = (script.clone(), log.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (s, l, tls) = (s.clone(), l.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        Some(acceptor) => {
                            if let Ok(tls_stream) = acceptor.accept(stream).await {
                                let _ = serve(tls_stream, s, l, |_| Ok(())).await;
                            }
                        }
                        None => {
                            let _ = serve(stream, s, l, reset).await;
                        }
                    }
                });
            }
        });
        HttpStub {
            addr,
            script,
            log,
            task,
        }
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> url::Url {
        url::Url::parse(&format!("http://{}{path}", self.addr)).unwrap()
    }

    /// `https://127.0.0.1:<port><path>`.
    pub fn https_url(&self, path: &str) -> url::Url {
        url::Url::parse(&format!("https://{}{path}", self.addr)).unwrap()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.log.lock().unwrap().clone()
    }

    /// Replaces the remaining script.
    pub fn script(&self, replies: Vec<Reply>) {
        *self.script.lock().unwrap() = VecDeque::from(replies);
    }
}

impl Drop for HttpStub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Resets a plain TCP connection: SO_LINGER 0 turns the close into an RST.
fn reset(stream: TcpStream) -> std::io::Result<()> {
    let std = stream.into_std()?;
    socket2::SockRef::from(&std).set_linger(Some(Duration::ZERO))?;
    drop(std);
    Ok(())
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    script: Arc<Mutex<VecDeque<Reply>>>,
    log: Arc<Mutex<Vec<Recorded>>>,
    reset: impl FnOnce(S) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let header_end = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let method = request_line.next().unwrap_or_default().to_owned();
    let target = request_line.next().unwrap_or_default().to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < header_end + length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf[header_end..(header_end + length).min(buf.len())].to_vec();
    log.lock().unwrap().push(Recorded {
        method,
        target,
        headers,
        body,
        at: Instant::now(),
    });

    let reply = {
        let mut script = script.lock().unwrap();
        if script.len() > 1 {
            script.pop_front().unwrap()
        } else {
            script.front().cloned().unwrap()
        }
    };
    match reply {
        Reply::Respond {
            status,
            headers,
            body,
        } => {
            let mut out = format!(
                "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n",
                body.len()
            );
            for (k, v) in headers {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
            out.push_str("\r\n");
            stream.write_all(out.as_bytes()).await?;
            stream.write_all(&body).await?;
            stream.shutdown().await?;
        }
        Reply::Hang => tokio::time::sleep(Duration::from_secs(3600)).await,
        Reply::ResetAfterRead => reset(stream)?,
    }
    Ok(())
}
