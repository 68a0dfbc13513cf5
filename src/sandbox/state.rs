//! The simulator's shared state and the steps every request goes through: request log, faults,
//! gateway checks, the payload envelope.

use super::cms::Cms;
use super::faults::{Faults, Route, RouteFault};
use super::gateway::{self, Gateway};
use super::keys::SandboxKeys;
use super::notifier::Notifier;
use super::profiles::Profiles;
use super::requests::{GatewayOutcome, LoggedRequest, RequestLog};
use super::tokens::Registry;
use crate::mastercard::jwe::{JweDecryptor, JweEncryptor, open_envelope, seal_envelope};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// Lets a handler reset its own connection (fault injection).
#[derive(Clone, Default)]
pub struct ConnControl {
    /// Notified to reset the connection.
    pub reset: Arc<Notify>,
}

/// Everything the handlers share.
pub struct State {
    pub cms: Cms,
    pub keys: SandboxKeys,
    pub gateway: Gateway,
    /// Whether Processing payloads travel in the `encryptedValue` envelope.
    pub payload_encryption: bool,
    pub request_decryptor: JweDecryptor,
    pub response_encryptor: JweEncryptor,
    /// Opens `encryptedCard` (Click to Pay's private key).
    pub card_decryptor: JweDecryptor,
    /// The card encryptor of each `Enroll-Client-Encryption-Key` certificate seen (by its DER):
    /// loading an RSA key through OpenSSL 3's decoders took more of the simulator's CPU than the
    /// encryption itself, on every search. A few entries: cleared when it holds 16.
    pub card_encryptors: Mutex<HashMap<Vec<u8>, Arc<JweEncryptor>>>,
    pub registry: Mutex<Registry>,
    /// Click to Pay's consumer profiles and their cards.
    pub profiles: Mutex<Profiles>,
    pub faults: Mutex<Faults>,
    pub log: Arc<Mutex<RequestLog>>,
    pub notifier: Notifier,
}

/// A request as the handlers see it.
pub struct Incoming {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub conn: ConnControl,
}

/// What a handler answers; `src_correlation_id` goes to the request log.
pub struct Answer {
    pub status: StatusCode,
    pub body: serde_json::Value,
    pub src_correlation_id: Option<String>,
}

impl Answer {
    pub fn ok(body: serde_json::Value) -> Self {
        Self {
            status: StatusCode::OK,
            body,
            src_correlation_id: None,
        }
    }
}

impl State {
    fn lock_log(&self) -> std::sync::MutexGuard<'_, RequestLog> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn record(
        &self,
        route: Route,
        gateway: GatewayOutcome,
        status: u16,
        src_correlation_id: Option<String>,
    ) {
        let mut log = self.lock_log();
        // A long-running simulator keeps the newest requests only.
        if log.requests.len() >= 100_000 {
            log.requests.drain(..10_000);
        }
        log.requests.push(LoggedRequest {
            route,
            gateway,
            status,
            src_correlation_id,
        });
    }

    /// Faults, then gateway checks, then the envelope: the plain body, or the answer already given.
    pub async fn prelude(
        &self,
        route: Route,
        req: &Incoming,
        envelope: bool,
    ) -> Result<Bytes, Response> {
        let fault = {
            let mut faults = self.faults.lock().unwrap_or_else(|p| p.into_inner());
            // A lost answer is applied after processing (`respond_or_drop`), not here.
            if faults.routes.get(&route).is_some_and(|f| f.drop_response) {
                None
            } else {
                let fault = faults.take(route);
                // A random lost answer (`[chaos]`): armed for the answer of this route.
                if fault.as_ref().is_some_and(|f| f.drop_response) {
                    faults.routes.insert(
                        route,
                        RouteFault {
                            drop_response: true,
                            times: Some(1),
                            ..RouteFault::default()
                        },
                    );
                }
                fault
            }
        };
        if let Some(fault) = fault {
            tracing::info!(
                route = route.name(),
                fault = fault.kind(),
                "simulator: injected fault"
            );
            if let Some(latency) = fault.latency {
                super::delay::sleep(latency).await;
            }
            if fault.hang {
                self.record(route, GatewayOutcome::Skipped, 0, None);
                std::future::pending::<()>().await;
            }
            if fault.reset {
                self.record(route, GatewayOutcome::Skipped, 0, None);
                req.conn.reset.notify_one();
                std::future::pending::<()>().await;
            }
            if let Some(after) = fault.throttle {
                self.record(route, GatewayOutcome::Skipped, 429, None);
                let body = gateway::mastercard_error(
                    "Gateway",
                    "TOO_MANY_REQUESTS",
                    "Rate limit exceeded",
                    true,
                );
                return Err((
                    StatusCode::TOO_MANY_REQUESTS,
                    [("retry-after", after.as_secs().max(1).to_string())],
                    axum::Json(body),
                )
                    .into_response());
            }
            if let Some(error) = fault.error {
                self.record(route, GatewayOutcome::Skipped, error.status, None);
                let status =
                    StatusCode::from_u16(error.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let body = gateway::mastercard_error(
                    "MASTERCARD PROCESSING",
                    &error.reason_code,
                    "Injected fault",
                    status.is_server_error(),
                );
                return Err((status, axum::Json(body)).into_response());
            }
            if fault.malformed_json {
                self.record(route, GatewayOutcome::Skipped, 200, None);
                return Err((
                    StatusCode::OK,
                    [("content-type", "application/json")],
                    "{\"cardData\": \"eyJ",
                )
                    .into_response());
            }
        }

        let host = req
            .headers
            .get(axum::http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("127.0.0.1");
        let url = url::Url::parse(&format!("http://{host}{}", req.uri)).map_err(|_| {
            self.record(route, GatewayOutcome::MissingAuthorization, 400, None);
            StatusCode::BAD_REQUEST.into_response()
        })?;
        if let Err(outcome) = self
            .gateway
            .check(req.method.as_str(), &url, &req.headers, &req.body)
        {
            let (status, body) = gateway::refusal(outcome);
            self.record(route, outcome, status.as_u16(), None);
            return Err((status, axum::Json(body)).into_response());
        }
        if envelope && self.payload_encryption && !req.body.is_empty() {
            return open_envelope(&self.request_decryptor, &req.body)
                .map(Bytes::from)
                .map_err(|_| {
                    let (status, body) = gateway::refusal(GatewayOutcome::BadEnvelope);
                    self.record(route, GatewayOutcome::BadEnvelope, status.as_u16(), None);
                    (status, axum::Json(body)).into_response()
                });
        }
        Ok(req.body.clone())
    }

    /// Whether the route's answer is to be lost (fault `drop_response`), counting `times` down.
    pub fn drops_response(&self, route: Route) -> bool {
        let mut faults = self.faults.lock().unwrap_or_else(|p| p.into_inner());
        if faults.routes.get(&route).is_some_and(|f| f.drop_response) {
            return faults.take(route).is_some();
        }
        false
    }

    /// As [`State::respond`], unless the answer is to be lost: then the request is logged and
    /// the connection left hanging.
    pub async fn respond_or_drop(&self, route: Route, answer: Answer, envelope: bool) -> Response {
        if self.drops_response(route) {
            tracing::info!(
                route = route.name(),
                fault = "drop_response",
                "simulator: injected fault"
            );
            self.record(
                route,
                GatewayOutcome::Passed,
                0,
                answer.src_correlation_id.clone(),
            );
            std::future::pending::<()>().await;
        }
        self.respond(route, answer, envelope)
    }

    /// Logs the answer and turns it into a response, sealed in the envelope when on.
    pub fn respond(&self, route: Route, answer: Answer, envelope: bool) -> Response {
        self.record(
            route,
            GatewayOutcome::Passed,
            answer.status.as_u16(),
            answer.src_correlation_id,
        );
        if envelope && self.payload_encryption && answer.status.is_success() {
            let plain = serde_json::to_vec(&answer.body).unwrap_or_default();
            return match seal_envelope(&self.response_encryptor, &plain) {
                Ok(sealed) => (
                    answer.status,
                    [("content-type", "application/json")],
                    sealed,
                )
                    .into_response(),
                Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
            };
        }
        (answer.status, axum::Json(answer.body)).into_response()
    }
}
