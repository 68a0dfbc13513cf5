//! The serving process: gRPC listener, health, reflection, store probe and graceful drain.

use crate::app::{App, AppSettings, FingerprintKey};
use crate::config::{GrpcLimits, Settings};
use crate::grpc::EnrollmentApi;
use crate::grpc::auth::{AuthLayer, Policy};
use crate::grpc::envelope::EnvelopeLayer;
use crate::grpc::streams::StreamLimits;
use crate::health::CappedHealth;
use crate::health::{self, HealthGate};
use crate::mastercard::setup::Upstream;
use crate::proto::{FILE_DESCRIPTOR_SET, v1::enrollment_service_server::EnrollmentServiceServer};
use crate::store::{self, EnrollmentStore, StoreError};
use crate::transport::{self, AcceptLimits, TlsError, TlsReloader};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic_health::pb::health_server::HealthServer;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The gRPC address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// `grpc.listen`.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The store could not be set up.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The reflection service could not be built from the descriptor sets.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The TLS files could not be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The fingerprint key could not be read.
    #[error("enroll.fingerprint_key_file: {0}")]
    FingerprintKey(String),
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainOutcome {
    /// Every call and stream finished within the grace period.
    Clean,
    /// The grace period ran out; the remaining connections were closed.
    GraceExpired,
}

/// A started server. Dropping it without [`RunningServer::shutdown`] aborts the serving task.
pub struct RunningServer {
    local_addr: SocketAddr,
    health_addr: Option<SocketAddr>,
    health: Arc<HealthGate>,
    drain: CancellationToken,
    stop_accepting: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
    grace_period: Duration,
    store: Arc<dyn EnrollmentStore>,
    metrics: Option<SocketAddr>,
}

impl RunningServer {
    /// The address the gRPC listener is bound to (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address of the plaintext health listener, when it is on.
    pub fn health_addr(&self) -> Option<SocketAddr> {
        self.health_addr
    }

    /// The address of the metrics listener, when it is on.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics
    }

    /// The store the service uses.
    pub fn store(&self) -> Arc<dyn EnrollmentStore> {
        self.store.clone()
    }

    /// Starts the drain of calls without closing the listener or the connections: long-lived
    /// streams end UNAVAILABLE `SERVER_DRAINING`, and so does every new call that still reaches
    /// the service. [`RunningServer::shutdown`] does this too, then closes; tests call this
    /// alone to see that window, which is otherwise as short as the connections' GOAWAY.
    pub fn begin_drain(&self) {
        self.drain.cancel();
    }

    /// Drains: health turns NOT_SERVING (and health watchers see it), the listener stops
    /// accepting and open connections are told to start no new calls, long-lived streams are
    /// asked to end, and in-flight calls get `shutdown.grace_period` before being cut off.
    pub async fn shutdown(mut self) -> DrainOutcome {
        self.health.drain().await;
        self.drain.cancel();
        if let Some(tx) = self.stop_accepting.take() {
            let _ = tx.send(());
        }
        let Some(mut task) = self.task.take() else {
            return DrainOutcome::Clean;
        };
        match tokio::time::timeout(self.grace_period, &mut task).await {
            Ok(Ok(Ok(()))) => DrainOutcome::Clean,
            Ok(Ok(Err(e))) => {
                tracing::warn!(error = %e, "gRPC server ended with an error while draining");
                DrainOutcome::Clean
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "gRPC server task failed while draining");
                DrainOutcome::Clean
            }
            Err(_) => {
                tracing::warn!(
                    grace_period = ?self.grace_period,
                    "grace period over: closing the remaining connections"
                );
                task.abort();
                DrainOutcome::GraceExpired
            }
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.drain.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The store the settings ask for (see [`store::open`]), with their retention.
pub fn open_store(
    settings: &Settings,
) -> Result<Arc<dyn EnrollmentStore>, crate::store::StoreError> {
    store::open(
        &settings.redis,
        store::Retention {
            enrollment: settings.store.enrollment_ttl,
            notification_dedup: settings.store.notification_dedup_ttl,
            idempotency: settings.store.idempotency_ttl,
        },
        store::RecordCacheSettings {
            capacity: settings.store.cache_size,
            max_age: settings.store.cache_max_age,
        },
        settings.store.memory_max_entries,
    )
}

/// The HTTP/2 receive window of each stream: 64 KiB (the protocol's default; hyper's is 1 MiB).
///
/// h2 closes a whole connection (`GOAWAY ENHANCE_YOUR_CALM`, "too_many_data_frames") once the
/// small DATA frames it holds unread cost more than a budget of half the connection window,
/// each frame under 256 bytes costing 256 minus its size; a gateway pipelining notifications
/// sends one ~100-byte frame per message. `NotificationIngest` reads ahead into its own
/// bounded queue (`grpc::ingest::INGEST_WINDOW`), so frames stay unread only while that queue
/// is full (the store slower than the sender, or stalled), and then at most a stream window of
/// them: [`STALLED_STREAM_COST`]. With 1 MiB per stream, some 3,500 unread 100-byte frames
/// (350 KB, well inside the window the client was given) closed the connection and cut every
/// stream on it.
const STREAM_WINDOW: u32 = 64 * 1024;

/// The smallest DATA frame a well-behaved gateway sends: a whole gRPC message (5 bytes of
/// prefix and the smallest valid notification, more than 24 bytes).
const SMALLEST_FRAME: u32 = 29;

/// What one ingest stream holding a whole [`STREAM_WINDOW`] unread costs h2's budget, at most:
/// ~512 KiB.
const STALLED_STREAM_COST: u64 =
    (STREAM_WINDOW / SMALLEST_FRAME) as u64 * (256 - SMALLEST_FRAME) as u64;

/// The HTTP/2 receive window of a connection: twice (h2's budget is half of it) what every
/// ingest stream that may be open on it costs when all of them stall at once (a store stall
/// stalls them all; a gateway's workers often share one channel), and at least hyper's 1 MiB.
/// A budget of one stream's worth let four stalled streams on one connection close it. Each
/// stream's window, not this one, bounds what a client may send ahead: this only lets h2 keep
/// the frames those windows hold (at the default limits, 64 ingest streams, a window of
/// ~63 MiB; under an attack of 1-byte frames its budget then holds ~128,000 of them, a few MB,
/// per connection).
fn connection_window(limits: &crate::config::GrpcLimits) -> u32 {
    let streams = u64::from(limits.max_concurrent_streams).min(limits.max_ingest_streams as u64);
    let window = (2 * streams * STALLED_STREAM_COST).max(1024 * 1024);
    // The protocol's largest window.
    u32::try_from(window.min((1 << 31) - 1)).unwrap_or(u32::MAX >> 1)
}

/// Binds `grpc.listen` (and `health.listen`) and serves the enrollment, health and reflection
/// services.
pub async fn start(
    settings: &Settings,
    upstream: Arc<Upstream>,
) -> Result<RunningServer, StartError> {
    if settings.metrics.listen.is_some() {
        // The recorder first: what the store, the stream limits and health record at start
        // must not go to the no-op recorder.
        crate::metrics::handle();
        crate::metrics::register_zero_series();
    }
    let store = open_store(settings)?;
    let limits = &settings.grpc.limits;
    let drain = CancellationToken::new();
    let tls = settings
        .grpc
        .tls
        .as_ref()
        .map(|t| TlsReloader::start(t, drain.clone()))
        .transpose()?;
    let addr = settings.grpc.listen;
    let listener = bind(addr).await?;
    let local_addr = listener
        .local_addr()
        .map_err(|source| StartError::Bind { addr, source })?;
    let accept = AcceptLimits {
        handshake_timeout: limits.handshake_timeout,
        max_connections: limits.max_connections,
    };

    let (health_gate, health_service) = HealthGate::new().await;
    tokio::spawn(health::monitor_store(
        health_gate.clone(),
        store.clone(),
        settings.health.check_interval,
        settings.health.check_timeout,
        drain.clone(),
    ));

    // Both reflection versions: grpcurl 1.8 speaks only v1alpha, newer tools v1.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // google.rpc error details, so that grpcurl can show ErrorInfo, RetryInfo, BadRequest.
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
    };
    let (reflection_v1, reflection_v1alpha) = if settings.grpc.reflection {
        (
            Some(reflection().build_v1()?),
            Some(reflection().build_v1alpha()?),
        )
    } else {
        (None, None)
    };
    let fingerprint_key = match &settings.enroll.fingerprint_key_file {
        Some(path) => FingerprintKey::from_file(path).map_err(StartError::FingerprintKey)?,
        None => FingerprintKey::generate(),
    };

    let app = Arc::new(App::new(
        store.clone(),
        upstream,
        AppSettings {
            enrollment_ttl: settings.store.enrollment_ttl,
            not_enrolled_ttl: settings.store.not_enrolled_ttl,
            lease: settings.enroll.lease,
            fingerprint_key,
            lifecycle_check_interval: settings.enroll.lifecycle_check_interval,
        },
    ));
    tokio::spawn(app.clone().reconcile_forever(
        settings.enroll.reconcile_interval,
        settings.enroll.reconcile_after,
        drain.clone(),
    ));
    let api = EnrollmentApi::new(
        app,
        drain.clone(),
        StreamLimits::new(limits.max_watch_streams, limits.max_ingest_streams),
        limits.default_deadline,
        crate::grpc::convert::EventTimeBounds {
            max_future: settings.notifications.max_future_skew,
            max_age: settings.notifications.max_age,
        },
        limits.watch_heartbeat_interval,
    );
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let metrics = match settings.metrics.listen {
        Some(listen) => {
            let (addr, _task) =
                crate::metrics::serve(listen, drain.clone())
                    .await
                    .map_err(|source| StartError::Bind {
                        addr: listen,
                        source,
                    })?;
            Some(addr)
        }
        None => None,
    };
    let health_addr = match settings.health.listen {
        Some(listen) => {
            Some(serve_health(listen, health_service.clone(), limits, drain.clone()).await?)
        }
        None => None,
    };
    let enrollment =
        EnrollmentServiceServer::new(api).max_decoding_message_size(limits.max_message_bytes);
    // No `trace_fn`: the envelope layer makes the RPC span, with the request id it chose.
    let mut builder = tonic::transport::Server::builder()
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(connection_window(limits))
        .max_concurrent_streams(limits.max_concurrent_streams)
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout));
    if let Some(age) = limits.max_connection_age {
        // GOAWAY after `age` makes clients reconnect, so new replicas get their share.
        builder = builder
            .max_connection_age(age)
            .max_connection_age_grace(limits.max_connection_age_grace);
    }
    // The first layer is the outermost: the envelope sees every answer, the auth layer's too.
    let router = builder
        .layer(EnvelopeLayer::new(drain.clone()))
        .layer(AuthLayer::new(Policy::from_settings(&settings.auth)))
        .add_service(health_service)
        .add_service(enrollment)
        .add_optional_service(reflection_v1)
        .add_optional_service(reflection_v1alpha);
    let incoming = transport::incoming(listener, tls, accept);
    let task = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
        let _ = stop_rx.await;
    }));

    if settings.auth.identity == crate::config::IdentitySource::None {
        tracing::warn!(
            "auth.identity = none: every caller is anonymous and may call every RPC (acceptable on loopback only)"
        );
    }
    tracing::info!(
        addr = %local_addr,
        store = store.kind(),
        tls = settings.grpc.tls.is_some(),
        mutual_tls = settings.grpc.tls.as_ref().is_some_and(|t| t.client_ca_file.is_some()),
        identity = ?settings.auth.identity,
        health = ?health_addr,
        "gRPC listening"
    );
    Ok(RunningServer {
        local_addr,
        health_addr,
        health: health_gate,
        drain,
        stop_accepting: Some(stop_tx),
        task: Some(task),
        grace_period: settings.shutdown.grace_period,
        store,
        metrics,
    })
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

/// Connections the health-only listener holds (kubelet probes open one per probe).
const HEALTH_MAX_CONNECTIONS: usize = 64;
/// HTTP/2 streams per health connection.
const HEALTH_MAX_STREAMS: u32 = 4;

/// The plaintext health-only listener for kubelet probes (which cannot speak TLS); it ends
/// when `drain` is cancelled, after health has turned NOT_SERVING. Open to anyone who reaches
/// it, so it gets small limits of its own besides the handshake timeout and keepalive.
async fn serve_health(
    listen: SocketAddr,
    service: HealthServer<CappedHealth>,
    limits: &GrpcLimits,
    drain: CancellationToken,
) -> Result<SocketAddr, StartError> {
    let listener = bind(listen).await?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: listen,
        source,
    })?;
    let accept = AcceptLimits {
        handshake_timeout: limits.handshake_timeout,
        max_connections: HEALTH_MAX_CONNECTIONS,
    };
    let incoming = transport::incoming(listener, None, accept);
    tokio::spawn(
        tonic::transport::Server::builder()
            .max_concurrent_streams(HEALTH_MAX_STREAMS)
            .http2_keepalive_interval(Some(limits.keepalive_interval))
            .http2_keepalive_timeout(Some(limits.keepalive_timeout))
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, drain.cancelled_owned()),
    );
    Ok(addr)
}
