//! One accepted connection, plaintext or TLS, and what tonic puts in each request's extensions
//! about it.

use std::future::Future as _;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// What is known of the peer of a connection; tonic puts it in every request's extensions.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The client's address.
    pub remote: SocketAddr,
    /// The identity of its verified client certificate (mutual TLS), if it names one.
    pub identity: Option<Arc<str>>,
}

/// The transport under a connection.
pub enum Stream {
    /// Plaintext.
    Plain(TcpStream),
    /// TLS, handshake done.
    Tls(Box<TlsStream<TcpStream>>),
}

/// An accepted connection: its stream, the HTTP/2 preface already read from it (given back to
/// hyper first), its place among the listener's connections (freed when it closes), and when
/// its client certificate expires.
pub struct Conn {
    stream: Stream,
    peer: Peer,
    preface: &'static [u8],
    _slot: tokio::sync::OwnedSemaphorePermit,
    /// The connection fails at its client certificate's expiry: the identity the policy decides
    /// on is verified at the handshake only, and an HTTP/2 connection (its streams too) may
    /// outlive the certificate by far. Boxed: only mutual TLS connections have one.
    expiry: Option<Box<Expiry>>,
}

/// When a connection's client certificate expires, and a timer towards it.
struct Expiry {
    at: std::time::SystemTime,
    timer: Pin<Box<tokio::time::Sleep>>,
}

/// The longest a timer is set for (tokio's timer reaches about two years); a certificate that
/// ends later is looked at again then.
const LONGEST_TIMER: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);

/// A timer for what is left until `at`, at most [`LONGEST_TIMER`].
fn timer_towards(at: std::time::SystemTime) -> Pin<Box<tokio::time::Sleep>> {
    let left = at
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default()
        .min(LONGEST_TIMER);
    Box::pin(tokio::time::sleep(left))
}

impl Conn {
    /// A connection whose first bytes, `preface`, were read already; its client certificate
    /// (chain) valid until `expires`.
    pub fn new(
        stream: Stream,
        peer: Peer,
        preface: &'static [u8],
        slot: tokio::sync::OwnedSemaphorePermit,
        expires: Option<std::time::SystemTime>,
    ) -> Self {
        Self {
            stream,
            peer,
            preface,
            _slot: slot,
            expiry: expires.map(|at| {
                Box::new(Expiry {
                    at,
                    timer: timer_towards(at),
                })
            }),
        }
    }

    /// An error once the client certificate expired (the caller then closes the connection);
    /// polled with each read and write, so an idle connection is woken at the expiry too.
    fn check_expiry(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let Some(expiry) = self.expiry.as_mut() else {
            return Ok(());
        };
        while expiry.timer.as_mut().poll(cx).is_ready() {
            if std::time::SystemTime::now() >= expiry.at {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "the client certificate expired",
                ));
            }
            // A timer capped at LONGEST_TIMER (or a clock that moved): set it again.
            expiry.timer = timer_towards(expiry.at);
        }
        Ok(())
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Err(e) = this.check_expiry(cx) {
            return Poll::Ready(Err(e));
        }
        if !this.preface.is_empty() {
            let n = this.preface.len().min(buf.remaining());
            buf.put_slice(&this.preface[..n]);
            this.preface = &this.preface[n..];
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Err(e) = this.check_expiry(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Err(e) = this.check_expiry(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.stream).poll_write_vectored(cx, bufs)
    }

    // Not vectored, on purpose: h2 then copies DATA payloads up to 1 KiB into its write buffer
    // (vectored: only up to 256 bytes, and a larger payload is chained, so that the frames after
    // it wait for the next write). A unary answer (headers, a few hundred bytes of message,
    // trailers) then leaves in one write instead of two (issue 14: a status answer took two
    // `writev` calls, a health answer one).
    fn is_write_vectored(&self) -> bool {
        false
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
