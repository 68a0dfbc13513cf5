//! The issuer's notification gateway, simulated: TAR and TCN notifications delivered over gRPC
//! to `c2p.enrollment.v1.EnrollmentService/NotificationIngest`, each retried until acknowledged.

use super::requests::{Delivery, RequestLog};
use crate::proto::v1::{
    NotificationIngestRequest, NotificationOutcome,
    enrollment_service_client::EnrollmentServiceClient,
};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::transport::Channel;

/// One notification to deliver.
#[derive(Debug, Clone)]
pub struct Notification {
    /// `TAR` or `TCN`.
    pub kind: &'static str,
    /// The message.
    pub request: NotificationIngestRequest,
}

/// Delivers notifications to the configured target.
pub struct Notifier {
    target: Mutex<Option<(String, Channel)>>,
    /// Metadata sent with every delivery: the identity header a mesh would set.
    identity: Mutex<Option<(String, String)>>,
    log: Arc<Mutex<RequestLog>>,
    give_up_after: Duration,
}

impl Notifier {
    /// A notifier without a target (notifications are dropped, with a warning, until one is set).
    pub fn new(log: Arc<Mutex<RequestLog>>, give_up_after: Duration) -> Self {
        Self {
            target: Mutex::new(None),
            identity: Mutex::new(None),
            log,
            give_up_after,
        }
    }

    /// Points the notifier at a gRPC endpoint, e.g. `http://127.0.0.1:50051`.
    pub fn set_target(&self, url: &str) -> Result<(), String> {
        let channel = Channel::from_shared(url.to_owned())
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_secs(2))
            .connect_lazy();
        *self.target.lock().unwrap_or_else(|p| p.into_inner()) = Some((url.to_owned(), channel));
        Ok(())
    }

    /// Sends `header: value` with every delivery, as a service mesh in front of a service in
    /// `auth.identity = mesh_header` mode would.
    pub fn set_identity(&self, header: &str, value: &str) {
        *self.identity.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((header.to_owned(), value.to_owned()));
    }

    fn channel(&self) -> Option<Channel> {
        self.target
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(_, c)| c.clone())
    }

    /// Delivers `notifications` one after the other, each until acknowledged or given up.
    pub async fn deliver_all(&self, notifications: Vec<Notification>) {
        for n in notifications {
            self.deliver(n).await;
        }
    }

    async fn deliver(&self, notification: Notification) {
        let Some(channel) = self.channel() else {
            tracing::warn!(
                kind = notification.kind,
                "simulator has no notification target; notification dropped"
            );
            return;
        };
        let started = tokio::time::Instant::now();
        let mut delay = Duration::from_millis(50);
        let identity = self
            .identity
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        loop {
            let acknowledged = attempt(
                channel.clone(),
                notification.request.clone(),
                identity.as_ref(),
            )
            .await;
            self.log
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .deliveries
                .push(Delivery {
                    notification_id: notification.request.notification_id.clone(),
                    kind: notification.kind,
                    acknowledged,
                });
            if acknowledged {
                return;
            }
            if started.elapsed() + delay > self.give_up_after {
                tracing::warn!(
                    kind = notification.kind,
                    "notification not acknowledged; giving up"
                );
                return;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }
}

/// One delivery on its own stream: acknowledged when the answer carries any final outcome.
async fn attempt(
    channel: Channel,
    request: NotificationIngestRequest,
    identity: Option<&(String, String)>,
) -> bool {
    let mut client = EnrollmentServiceClient::new(channel);
    let id = request.notification_id.clone();
    let mut call_request = tonic::Request::new(tokio_stream::iter([request]));
    if let Some((header, value)) = identity {
        let name = tonic::metadata::MetadataKey::from_bytes(header.as_bytes());
        if let (Ok(name), Ok(value)) = (name, value.parse()) {
            call_request.metadata_mut().insert(name, value);
        }
    }
    let call = async {
        let mut responses = client
            .notification_ingest(call_request)
            .await
            .ok()?
            .into_inner();
        let response = responses.message().await.ok()??;
        Some(
            response.notification_id == id
                && response.outcome() != NotificationOutcome::Failed
                && response.outcome() != NotificationOutcome::Unspecified,
        )
    };
    tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}
