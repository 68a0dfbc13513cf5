//! Accepts connections and hands tonic only those that became useful in time: TLS handshakes
//! (and plaintext connections' first bytes) run off the accept loop, each bounded by
//! `handshake_timeout`, so a client that connects and says nothing holds nothing for long.

use super::conn::{Conn, Peer};
use super::identity::identity_of;
use super::tls::TlsReloader;
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Bounds on accepting.
#[derive(Debug, Clone, Copy)]
pub struct AcceptLimits {
    /// How long a connection has to finish its TLS handshake, or to send its first bytes.
    pub handshake_timeout: Duration,
}

/// The connections accepted on `listener`, TLS when `tls` is given. The accept loop ends when
/// the returned stream is dropped (tonic drops it when it stops serving).
pub fn incoming(
    listener: TcpListener,
    tls: Option<Arc<TlsReloader>>,
    limits: AcceptLimits,
) -> ReceiverStream<io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(64);
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
            let _ = tcp.set_nodelay(true);
            let tx = tx.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let ready =
                    tokio::time::timeout(limits.handshake_timeout, establish(tcp, remote, tls));
                match ready.await {
                    Ok(Ok(conn)) => {
                        let _ = tx.send(Ok(conn)).await;
                    }
                    Ok(Err(e)) => {
                        crate::metrics::connection_refused("handshake");
                        tracing::debug!(%remote, error = %e, "connection refused during the TLS handshake");
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
) -> io::Result<Conn> {
    match tls {
        None => {
            // Plaintext: wait for the first bytes (the HTTP/2 preface) before hyper holds it;
            // `peek` leaves them for hyper and, unlike `readable`, is never spuriously ready.
            tcp.peek(&mut [0u8; 1]).await?;
            Ok(Conn::Plain(
                tcp,
                Peer {
                    remote,
                    identity: None,
                },
            ))
        }
        Some(tls) => {
            let stream = tokio_rustls::TlsAcceptor::from(tls.current())
                .accept(tcp)
                .await?;
            let identity = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|leaf| identity_of(leaf))
                .map(Arc::from);
            Ok(Conn::Tls(Box::new(stream), Peer { remote, identity }))
        }
    }
}
