//! The serving process: gRPC listener, health, reflection, store probe and graceful drain.

use crate::app::{App, AppSettings};
use crate::config::Settings;
use crate::grpc::EnrollmentApi;
use crate::health::{self, HealthGate};
use crate::mastercard::setup::Upstream;
use crate::proto::{FILE_DESCRIPTOR_SET, v1::enrollment_service_server::EnrollmentServiceServer};
use crate::store::{self, EnrollmentStore, StoreError};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;

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

    /// The address of the metrics listener, when it is on.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics
    }

    /// The store the service uses.
    pub fn store(&self) -> Arc<dyn EnrollmentStore> {
        self.store.clone()
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

/// Binds `grpc.listen` and serves the enrollment, health and reflection services.
pub async fn start(
    settings: &Settings,
    upstream: Arc<Upstream>,
) -> Result<RunningServer, StartError> {
    let store = store::from_settings(settings)?;
    let addr = settings.grpc.listen;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })?;
    let local_addr = listener
        .local_addr()
        .map_err(|source| StartError::Bind { addr, source })?;

    let (health_gate, health_service) = HealthGate::new().await;
    let drain = CancellationToken::new();
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
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    let app = Arc::new(App::new(
        store.clone(),
        upstream,
        AppSettings::from_settings(settings),
    ));
    let api = EnrollmentApi::new(app, settings.auth.mesh_header.clone(), drain.clone());
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let metrics = match settings.metrics.listen {
        Some(listen) => {
            crate::metrics::handle();
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
    let router = tonic::transport::Server::builder()
        .trace_fn(crate::grpc::trace::rpc_span)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(EnrollmentServiceServer::new(api));
    let task = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
        let _ = stop_rx.await;
    }));

    tracing::info!(addr = %local_addr, store = store.kind(), "gRPC listening");
    Ok(RunningServer {
        local_addr,
        health: health_gate,
        drain,
        stop_accepting: Some(stop_tx),
        task: Some(task),
        grace_period: settings.shutdown.grace_period,
        store,
        metrics,
    })
}
