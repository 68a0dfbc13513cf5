//! The per-process caps on long-lived streams: each open `WatchEnrollment` or
//! `NotificationIngest` holds a permit; past the cap a new one is refused with
//! `RESOURCE_EXHAUSTED` instead of growing memory without bound.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The two caps.
#[derive(Debug, Clone)]
pub struct StreamLimits {
    watch: Arc<Semaphore>,
    ingest: Arc<Semaphore>,
}

impl StreamLimits {
    /// At most `watch` open watches and `ingest` open ingest streams.
    pub fn new(watch: usize, ingest: usize) -> Self {
        // Exported so that an alert can compare the open streams with their limit.
        crate::metrics::stream_limit("WatchEnrollment", watch);
        crate::metrics::stream_limit("NotificationIngest", ingest);
        Self {
            watch: Arc::new(Semaphore::new(watch)),
            ingest: Arc::new(Semaphore::new(ingest)),
        }
    }

    /// A permit for one more watch.
    pub fn watch(&self) -> Result<OwnedSemaphorePermit, tonic::Status> {
        take(&self.watch, "WatchEnrollment")
    }

    /// A permit for one more ingest stream.
    pub fn ingest(&self) -> Result<OwnedSemaphorePermit, tonic::Status> {
        take(&self.ingest, "NotificationIngest")
    }
}

fn take(
    semaphore: &Arc<Semaphore>,
    rpc: &'static str,
) -> Result<OwnedSemaphorePermit, tonic::Status> {
    semaphore.clone().try_acquire_owned().map_err(|_| {
        crate::metrics::stream_refused(rpc);
        super::status::build(super::status::Problem {
            metadata: BTreeMap::from([("rpc".to_owned(), rpc.to_owned())]),
            retry_after: Some(Duration::from_secs(1)),
            ..super::status::Problem::new(
                tonic::Code::ResourceExhausted,
                crate::proto::v1::ErrorReason::TooManyStreams,
                format!("this server holds as many {rpc} streams as it may; retry later or on another replica"),
            )
        })
    })
}
