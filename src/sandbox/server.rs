//! The simulator's HTTP/1.1 server: axum routes, served connection by connection with hyper so
//! that a handler can reset its own connection (a fault mode axum alone cannot produce).

use super::state::ConnControl;
use hyper_util::rt::TokioIo;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::Service as _;

/// Serves `router` on `listener` until `stop` is cancelled.
pub async fn serve(listener: TcpListener, router: axum::Router, stop: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "simulator accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        // A duplicate of the socket lets the reset fault close it with SO_LINGER 0 (an RST)
        // after hyper has dropped its own handle.
        let Ok(twin) = stream.into_std().and_then(|s| {
            let twin = s.try_clone()?;
            Ok((s, twin))
        }) else {
            continue;
        };
        let (std_stream, twin) = twin;
        let Ok(stream) = tokio::net::TcpStream::from_std(std_stream) else {
            continue;
        };
        let control = ConnControl::default();
        let reset = control.reset.clone();
        let router = router.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(
                move |mut request: hyper::Request<hyper::body::Incoming>| {
                    request.extensions_mut().insert(control.clone());
                    router.clone().call(request)
                },
            );
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = connection => {}
                () = reset.notified() => {
                    let _ = socket2::SockRef::from(&twin).set_linger(Some(Duration::ZERO));
                }
                () = stop.cancelled() => {}
            }
            drop(twin);
        });
    }
}
