//! The gRPC health status, driven by a probe of the store and by draining.
//!
//! Both the overall service (`""`) and `c2p.enrollment.v1.EnrollmentService` report SERVING only
//! while the store answers; once draining starts they report NOT_SERVING for good.

use crate::app::ports::EnrollmentStore;
use crate::proto::SERVICE_NAME;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::{HealthReporter, HealthService};

/// The names whose status follows the store.
const NAMES: [&str; 2] = ["", SERVICE_NAME];

/// A name that is SERVING while the process runs and serves, whatever the store does: the
/// liveness probe's, so that a Redis outage makes pods unready but does not restart them.
pub const LIVENESS: &str = "liveness";

/// Open `Health/Watch` streams per process, both listeners together: health is open to
/// unauthenticated callers, so its streams need a cap of their own.
pub const MAX_HEALTH_WATCHES: usize = 256;

/// tonic-health's service with `Watch` streams capped at [`MAX_HEALTH_WATCHES`], answering
/// NOT_SERVING for its names once drained.
pub struct CappedHealth {
    inner: HealthService,
    watches: Arc<tokio::sync::Semaphore>,
    /// Set once the drain has set NOT_SERVING and before it clears the statuses (to end the
    /// open watches), after which tonic-health answers NOT_FOUND for them.
    drained: Arc<AtomicBool>,
}

/// Whether `name` is one this process reports a status for.
fn reported(name: &str) -> bool {
    NAMES.into_iter().chain([LIVENESS]).any(|n| n == name)
}

impl CappedHealth {
    /// Whether tonic-health's `error` for a `reported` name means the drain cleared it.
    fn cleared_by_drain(&self, error: &tonic::Status, reported: bool) -> bool {
        error.code() == tonic::Code::NotFound && reported && self.drained.load(Ordering::Acquire)
    }
}

fn not_serving() -> HealthCheckResponse {
    HealthCheckResponse {
        status: ServingStatus::NotServing as i32,
    }
}

/// A health watch that holds its place until dropped.
type CappedWatch = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<HealthCheckResponse, tonic::Status>> + Send>,
>;

#[tonic::async_trait]
impl Health for CappedHealth {
    async fn check(
        &self,
        request: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<HealthCheckResponse>, tonic::Status> {
        let reported = reported(&request.get_ref().service);
        match self.inner.check(request).await {
            Err(e) if self.cleared_by_drain(&e, reported) => {
                Ok(tonic::Response::new(not_serving()))
            }
            answer => answer,
        }
    }

    type WatchStream = CappedWatch;

    async fn watch(
        &self,
        request: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<CappedWatch>, tonic::Status> {
        use tokio_stream::StreamExt as _;
        let permit = self.watches.clone().try_acquire_owned().map_err(|_| {
            crate::metrics::stream_refused("HealthWatch");
            tonic::Status::resource_exhausted("too many open health watches")
        })?;
        let reported = reported(&request.get_ref().service);
        let stream = match self.inner.watch(request).await {
            Ok(stream) => futures::StreamExt::left_stream(stream.into_inner()),
            // Drained: the one status there is to say, and the end.
            Err(e) if self.cleared_by_drain(&e, reported) => {
                futures::StreamExt::right_stream(tokio_stream::once(Ok(not_serving())))
            }
            Err(e) => return Err(e),
        };
        let stream = stream.map(move |item| {
            let _ = &permit;
            item
        });
        Ok(tonic::Response::new(Box::pin(stream)))
    }
}

/// Serialises health changes so a late probe result can never undo draining.
pub struct HealthGate {
    inner: Mutex<Inner>,
    drained: Arc<AtomicBool>,
}

struct Inner {
    reporter: HealthReporter,
    draining: bool,
    store_ok: Option<bool>,
}

impl HealthGate {
    /// A gate reporting NOT_SERVING until the first successful probe, and the gRPC service that
    /// serves its statuses.
    pub async fn new() -> (Arc<Self>, HealthServer<CappedHealth>) {
        let (gate, service) = Self::with_service().await;
        (gate, HealthServer::new(service))
    }

    async fn with_service() -> (Arc<Self>, CappedHealth) {
        let reporter = HealthReporter::new();
        let drained = Arc::new(AtomicBool::new(false));
        let service = CappedHealth {
            inner: HealthService::from_health_reporter(reporter.clone()),
            watches: Arc::new(tokio::sync::Semaphore::new(MAX_HEALTH_WATCHES)),
            drained: drained.clone(),
        };
        for name in NAMES {
            reporter
                .set_service_status(name, ServingStatus::NotServing)
                .await;
        }
        reporter
            .set_service_status(LIVENESS, ServingStatus::Serving)
            .await;
        // Down until the first probe answers, as health says.
        crate::metrics::store_up(false);
        let gate = Arc::new(Self {
            inner: Mutex::new(Inner {
                reporter,
                draining: false,
                store_ok: None,
            }),
            drained,
        });
        (gate, service)
    }

    /// Records a probe result; flips the status when it changed, unless draining.
    pub async fn store_reachable(&self, ok: bool, store_kind: &str) {
        crate::metrics::store_up(ok);
        let mut inner = self.inner.lock().await;
        if inner.draining || inner.store_ok == Some(ok) {
            return;
        }
        inner.store_ok = Some(ok);
        let status = if ok {
            tracing::info!(store = store_kind, "store reachable: health SERVING");
            ServingStatus::Serving
        } else {
            tracing::warn!(store = store_kind, "store unreachable: health NOT_SERVING");
            ServingStatus::NotServing
        };
        for name in NAMES {
            inner.reporter.set_service_status(name, status).await;
        }
    }

    /// Turns NOT_SERVING for good, then ends every open `Health/Watch` stream after it has
    /// delivered NOT_SERVING (dropping a status's sender ends its watchers' streams).
    pub async fn drain(&self) {
        let mut inner = self.inner.lock().await;
        inner.draining = true;
        for name in NAMES.into_iter().chain([LIVENESS]) {
            inner
                .reporter
                .set_service_status(name, ServingStatus::NotServing)
                .await;
        }
        // From here the service answers NOT_SERVING itself for a cleared name (set before the
        // clear: no NOT_FOUND in between).
        self.drained.store(true, Ordering::Release);
        for name in NAMES.into_iter().chain([LIVENESS]) {
            inner.reporter.clear_service_status(name).await;
        }
    }
}

/// Probes the store every `interval` until `stop` is cancelled; a probe slower than `timeout`
/// counts as a failure.
pub async fn monitor_store(
    gate: Arc<HealthGate>,
    store: Arc<dyn EnrollmentStore>,
    interval: Duration,
    timeout: Duration,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let ok = match tokio::time::timeout(timeout, store.ping()).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "store probe failed");
                false
            }
            Err(_) => {
                tracing::debug!("store probe timed out");
                false
            }
        };
        gate.store_reachable(ok, store.kind()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt as _;

    fn asking(service: &str) -> tonic::Request<HealthCheckRequest> {
        tonic::Request::new(HealthCheckRequest {
            service: service.into(),
        })
    }

    #[tokio::test]
    async fn a_drained_server_answers_not_serving_not_not_found() {
        let (gate, health) = HealthGate::with_service().await;
        gate.store_reachable(true, "memory").await;
        let serving = health.check(asking("")).await.unwrap().into_inner();
        assert_eq!(serving.status, ServingStatus::Serving as i32);
        gate.drain().await;
        for name in NAMES.into_iter().chain([LIVENESS]) {
            let answer = health.check(asking(name)).await.unwrap().into_inner();
            assert_eq!(answer.status, ServingStatus::NotServing as i32, "{name:?}");
            let watched: Vec<_> = health
                .watch(asking(name))
                .await
                .unwrap()
                .into_inner()
                .collect()
                .await;
            assert_eq!(watched.len(), 1, "{name:?}");
            let status = watched[0].as_ref().unwrap().status;
            assert_eq!(status, ServingStatus::NotServing as i32, "{name:?}");
        }
        // A name it never reported is still unknown.
        let unknown = health.check(asking("other")).await.unwrap_err();
        assert_eq!(unknown.code(), tonic::Code::NotFound);
    }
}
