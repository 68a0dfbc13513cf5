//! The simulator's request log: what tests ask of it (counts per route and per
//! `srcCorrelationId`, the outcome of each gateway check, notification deliveries).

use super::faults::Route;

/// The outcome of the gateway checks of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayOutcome {
    /// Every check passed.
    Passed,
    /// No or malformed `Authorization` header.
    MissingAuthorization,
    /// The consumer key is not registered.
    UnknownConsumerKey,
    /// `oauth_body_hash` does not match the body received.
    BodyHashMismatch,
    /// The signature does not verify.
    BadSignature,
    /// `oauth_timestamp` is outside the allowed window.
    TimestampOutOfWindow,
    /// The nonce was used before.
    NonceReplayed,
    /// The content type is not `application/json` (bare or with `charset=utf-8`).
    BadContentType,
    /// The payload envelope could not be opened.
    BadEnvelope,
    /// A fault answered before the checks ran.
    Skipped,
}

/// One logged request.
#[derive(Debug, Clone)]
pub struct LoggedRequest {
    /// The route.
    pub route: Route,
    /// The gateway outcome.
    pub gateway: GatewayOutcome,
    /// The HTTP status answered (0 when the connection was reset or the call hung).
    pub status: u16,
    /// `srcCorrelationId` of a `POST /cards`.
    pub src_correlation_id: Option<String>,
}

/// One notification delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The notification id.
    pub notification_id: String,
    /// `TAR` or `TCN`.
    pub kind: &'static str,
    /// Whether the receiver acknowledged it (any outcome but a retryable failure).
    pub acknowledged: bool,
}

/// The log.
#[derive(Debug, Default)]
pub struct RequestLog {
    /// Requests in arrival order.
    pub requests: Vec<LoggedRequest>,
    /// Notification delivery attempts in order.
    pub deliveries: Vec<Delivery>,
}

impl RequestLog {
    /// Requests seen on `route`.
    pub fn count(&self, route: Route) -> usize {
        self.requests.iter().filter(|r| r.route == route).count()
    }

    /// `POST /cards` requests that carried `id`.
    pub fn count_for_correlation(&self, id: &str) -> usize {
        self.requests
            .iter()
            .filter(|r| r.src_correlation_id.as_deref() == Some(id))
            .count()
    }

    /// Gateway outcomes in order.
    pub fn gateway_outcomes(&self) -> Vec<GatewayOutcome> {
        self.requests.iter().map(|r| r.gateway).collect()
    }
}
