//! Accepts connections and hands tonic only those that became useful in time: the TLS handshake
//! and the HTTP/2 connection preface run off the accept loop, bounded together by
//! `handshake_timeout`, so a client that connects and says nothing (or half a preface) holds
//! nothing for long; after the preface, hyper's keepalive PINGs close a silent connection. At most
//! `max_connections` are held at once, pending ones included; more are closed at accept.

use super::conn::{Conn, Peer, Stream};
use super::identity::{expiry_of, identity_of};
use super::tls::TlsReloader;
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;

/// Bounds on accepting.
#[derive(Debug, Clone, Copy)]
pub struct AcceptLimits {
    /// How long a connection has to finish its TLS handshake and send the HTTP/2 preface.
    pub handshake_timeout: Duration,
    /// Connections held at once, handshakes in progress included.
    pub max_connections: usize,
}

/// The HTTP/2 client connection preface (RFC 9113 §3.4): gRPC speaks nothing else.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The connections accepted on `listener`, TLS when `tls` is given. The accept loop ends when
/// the returned stream is dropped (tonic drops it when it stops serving).
pub fn incoming(
    listener: TcpListener,
    tls: Option<Arc<TlsReloader>>,
    limits: AcceptLimits,
) -> ReceiverStream<io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(64);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = tx.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let (tcp, remote) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                // Closing at once costs less than holding a connection nobody will serve.
                crate::metrics::connection_refused("max_connections");
                drop(tcp);
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let tx = tx.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let ready = tokio::time::timeout(
                    limits.handshake_timeout,
                    establish(tcp, remote, tls, slot),
                );
                match ready.await {
                    Ok(Ok(conn)) => {
                        let _ = tx.send(Ok(conn)).await;
                    }
                    Ok(Err(e)) => {
                        crate::metrics::connection_refused("handshake");
                        tracing::debug!(%remote, error = %e, "connection refused during the TLS handshake or the HTTP/2 preface");
                    }
                    Err(_) => {
                        crate::metrics::connection_refused("handshake_timeout");
                        tracing::debug!(%remote, "connection closed: nothing useful within the handshake timeout");
                    }
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

async fn establish(
    tcp: TcpStream,
    remote: std::net::SocketAddr,
    tls: Option<Arc<TlsReloader>>,
    slot: OwnedSemaphorePermit,
) -> io::Result<Conn> {
    let (mut stream, identity, expires) = match tls {
        None => (Stream::Plain(tcp), None, None),
        Some(tls) => {
            let stream = tokio_rustls::TlsAcceptor::from(tls.current())
                .accept(tcp)
                .await?;
            let chain = stream.get_ref().1.peer_certificates();
            let identity = chain
                .and_then(|chain| chain.first())
                .and_then(|leaf| identity_of(leaf))
                .map(Arc::from);
            let now = std::time::SystemTime::now();
            let expires = match chain.filter(|c| !c.is_empty()) {
                None => None,
                Some(chain) => {
                    let ders: Vec<&[u8]> = chain.iter().map(|c| c.as_ref()).collect();
                    // Fail closed: a connection whose certificate's end cannot be read would
                    // outlive it.
                    let Some(at) = expiry_of(&ders, now) else {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "the client certificate's validity cannot be read",
                        ));
                    };
                    Some(at)
                }
            };
            // A resumed TLS session carries the certificate of the handshake it resumes,
            // unchecked (the server keeps none with a client CA: this is the backstop).
            if expires.is_some_and(|at| at <= now) {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "the client certificate expired (a resumed TLS session)",
                ));
            }
            (Stream::Tls(Box::new(stream)), identity, expires)
        }
    };
    // hyper waits for the preface without a timeout of its own: read it here, then give it back.
    let mut preface = [0u8; PREFACE.len()];
    stream.read_exact(&mut preface).await?;
    if preface != PREFACE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not an HTTP/2 connection preface",
        ));
    }
    Ok(Conn::new(
        stream,
        Peer { remote, identity },
        PREFACE,
        slot,
        expires,
    ))
}
