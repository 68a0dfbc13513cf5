//! `c2p.enrollment.v1.EnrollmentService`.
//!
//! The RPCs answer UNIMPLEMENTED until the enrollment flows land (issue 5); the README says so.

use crate::mastercard::setup::Upstream;
use crate::proto::v1::{
    EnrollCardRequest, EnrollCardResponse, GetEnrollmentStatusRequest, GetEnrollmentStatusResponse,
    NotificationIngestRequest, NotificationIngestResponse, WatchEnrollmentRequest,
    WatchEnrollmentResponse, enrollment_service_server::EnrollmentService,
};
use crate::store::EnrollmentStore;
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

/// A server stream of `T`.
pub type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The service; cheap to clone.
#[derive(Clone)]
pub struct EnrollmentApi {
    #[allow(dead_code)] // read by the enrollment flows (issue 5)
    store: Arc<dyn EnrollmentStore>,
    #[allow(dead_code)] // called by the enrollment flows (issue 5)
    upstream: Option<Arc<Upstream>>,
    #[allow(dead_code)] // ends the long-lived streams on drain (issue 5)
    drain: CancellationToken,
}

impl EnrollmentApi {
    /// The service over `store` and the Mastercard clients; `drain` is cancelled when the
    /// server starts draining.
    pub fn new(
        store: Arc<dyn EnrollmentStore>,
        upstream: Option<Arc<Upstream>>,
        drain: CancellationToken,
    ) -> Self {
        Self {
            store,
            upstream,
            drain,
        }
    }
}

fn not_yet(rpc: &str) -> Status {
    Status::unimplemented(format!("{rpc} is not implemented in this version"))
}

#[tonic::async_trait]
impl EnrollmentService for EnrollmentApi {
    #[tracing::instrument(name = "EnrollCard", skip_all)]
    async fn enroll_card(
        &self,
        _request: Request<EnrollCardRequest>,
    ) -> Result<Response<EnrollCardResponse>, Status> {
        Err(not_yet("EnrollCard"))
    }

    #[tracing::instrument(name = "GetEnrollmentStatus", skip_all)]
    async fn get_enrollment_status(
        &self,
        _request: Request<GetEnrollmentStatusRequest>,
    ) -> Result<Response<GetEnrollmentStatusResponse>, Status> {
        Err(not_yet("GetEnrollmentStatus"))
    }

    type NotificationIngestStream = ResponseStream<NotificationIngestResponse>;

    #[tracing::instrument(name = "NotificationIngest", skip_all)]
    async fn notification_ingest(
        &self,
        _request: Request<Streaming<NotificationIngestRequest>>,
    ) -> Result<Response<Self::NotificationIngestStream>, Status> {
        Err(not_yet("NotificationIngest"))
    }

    type WatchEnrollmentStream = ResponseStream<WatchEnrollmentResponse>;

    #[tracing::instrument(name = "WatchEnrollment", skip_all)]
    async fn watch_enrollment(
        &self,
        _request: Request<WatchEnrollmentRequest>,
    ) -> Result<Response<Self::WatchEnrollmentStream>, Status> {
        Err(not_yet("WatchEnrollment"))
    }
}
