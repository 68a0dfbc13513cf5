//! A Mastercard simulator: Processing Digital, the Click to Pay Enroll API and Click to Pay's
//! lifecycle APIs (both families) under Mastercard's paths, a CMS, tokenization with TAR/TCN
//! notifications, profiles whose deletes deactivate tokens, gateway checks and fault injection.
//! It is what sandbox mode, the tests and the benchmarks talk to. It is not Mastercard: what it
//! assumes of Mastercard, and which of it is confirmed, is in `docs/mastercard.md`.

pub mod cms;
mod delay;
mod enroll_api;
pub mod faults;
mod gateway;
pub mod keys;
mod lifecycle_api;
mod notifier;
mod processing_api;
pub mod profiles;
pub mod requests;
mod server;
mod state;
mod tokens;

use crate::mastercard::jwe::{JweDecryptor, JweEncryptor};
use crate::mastercard::keys::KeyError;
pub(crate) use axum::extract::{Path, Request, State as AxumState};
use axum::http::Method;
use axum::response::Response;
use axum::routing::{get, post};
use cms::Cms;
use faults::{Faults, NotificationFaults, Route, RouteFault};
use keys::SandboxKeys;
use requests::{Delivery, GatewayOutcome, RequestLog};
use state::{ConnControl, Incoming, State};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Processing Digital's base path.
pub const PROCESSING_PATH: &str = "/global-processing/digital";
/// The Enroll API's base path (the lifecycle APIs of both families hang off it too).
pub const ENROLL_PATH: &str = "/src/api/digital/payments";
/// The simulator's Credential Directory (`directoryId`).
pub const DIRECTORY_ID: &str = "c2p-sandbox-directory";

/// How a card leaves Click to Pay behind the service's back ([`Sandbox::delete_card_in_click_to_pay`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CardDeletion {
    /// Its token is deactivated and the TokenStatusChanged (DEACTIVATED) goes out.
    Notified,
    /// Its token is deactivated in the token lists; no notification reaches the service.
    Unnotified,
    /// Only the profile forgets it: the token stays as it was (what only a look-up of the card
    /// in Click to Pay notices).
    TokenKept,
}

/// How to run the simulator.
pub struct SandboxConfig {
    /// Listen address (port 0 picks one).
    pub listen: SocketAddr,
    /// The card contracts.
    pub cms: Cms,
    /// The keys.
    pub keys: SandboxKeys,
    /// Whether Processing payloads travel in the `encryptedValue` envelope.
    pub payload_encryption: bool,
    /// Faults from the start.
    pub faults: Faults,
    /// Where notifications go (`http://host:port`), if known yet.
    pub notification_target: Option<String>,
    /// Allowed clock difference of `oauth_timestamp`.
    pub timestamp_window: Duration,
}

impl SandboxConfig {
    /// The sample CMS, the given keys, no faults, no envelope, a 5-minute timestamp window.
    pub fn new(listen: SocketAddr, keys: SandboxKeys) -> Result<Self, String> {
        Ok(Self {
            listen,
            cms: Cms::sample()?,
            keys,
            payload_encryption: false,
            faults: Faults::default(),
            notification_target: None,
            timestamp_window: Duration::from_secs(300),
        })
    }
}

/// Why the simulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// Keys unusable.
    #[error(transparent)]
    Keys(#[from] KeyError),
    /// Listen failed.
    #[error("simulator cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    /// Anything else.
    #[error("simulator: {0}")]
    Other(String),
}

/// A running simulator. Dropping it stops it.
pub struct Sandbox {
    addr: SocketAddr,
    processing_base_url: url::Url,
    enroll_base_url: url::Url,
    state: Arc<State>,
    stop: CancellationToken,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Sandbox {
    /// Binds and serves.
    pub async fn start(config: SandboxConfig) -> Result<Sandbox, SandboxError> {
        let keys = &config.keys;
        let public = |k: &crate::mastercard::keys::SigningKey| {
            k.public_key()
                .map_err(|e| SandboxError::Other(e.to_string()))
        };
        let consumers = HashMap::from([
            (
                keys.processing_consumer_key.clone(),
                public(&keys.processing_signing_key)?,
            ),
            (
                keys.enroll_consumer_key.clone(),
                public(&keys.enroll_signing_key)?,
            ),
        ]);
        let other = |e: crate::mastercard::jwe::JweError| SandboxError::Other(e.to_string());
        let mut request_decryptor = JweDecryptor::new();
        request_decryptor
            .add(&keys.mastercard_payload_key)
            .map_err(other)?;
        let response_encryptor =
            JweEncryptor::new(&public(&keys.client_payload_key)?).map_err(other)?;
        let mut card_decryptor = JweDecryptor::new();
        card_decryptor
            .add(&keys.enroll_encryption_key)
            .map_err(other)?;

        let log = Arc::new(Mutex::new(RequestLog::default()));
        let notifier = notifier::Notifier::new(log.clone(), Duration::from_secs(120));
        if let Some(target) = &config.notification_target {
            notifier.set_target(target).map_err(SandboxError::Other)?;
        }
        let state = Arc::new(State {
            cms: config.cms,
            gateway: gateway::Gateway::new(consumers, config.timestamp_window),
            keys: config.keys,
            payload_encryption: config.payload_encryption,
            request_decryptor,
            response_encryptor,
            card_decryptor,
            card_encryptors: Mutex::default(),
            registry: Mutex::new(tokens::Registry::default()),
            profiles: Mutex::new(profiles::Profiles::default()),
            faults: Mutex::new(config.faults),
            log,
            notifier,
        });

        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| SandboxError::Bind(config.listen, e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| SandboxError::Bind(config.listen, e))?;
        let stop = CancellationToken::new();
        let base_url = |path: &str| {
            url::Url::parse(&format!("http://{addr}{path}"))
                .map_err(|e| SandboxError::Other(e.to_string()))
        };
        let processing_base_url = base_url(PROCESSING_PATH)?;
        let enroll_base_url = base_url(ENROLL_PATH)?;
        tokio::spawn(server::serve(listener, router(state.clone()), stop.clone()));
        tracing::warn!(%addr, "Mastercard SIMULATOR listening: this is not Mastercard");
        Ok(Sandbox {
            addr,
            processing_base_url,
            enroll_base_url,
            state,
            stop,
        })
    }

    /// The listen address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>/global-processing/digital`.
    pub fn processing_base_url(&self) -> url::Url {
        self.processing_base_url.clone()
    }

    /// `http://<addr>/src/api/digital/payments`.
    pub fn enroll_base_url(&self) -> url::Url {
        self.enroll_base_url.clone()
    }

    /// The keys (the issuer side configures its clients with them).
    pub fn keys(&self) -> &SandboxKeys {
        &self.state.keys
    }

    /// Points the notifier at the service's gRPC address.
    pub fn set_notification_target(&self, url: &str) -> Result<(), String> {
        self.state.notifier.set_target(url)
    }

    /// Sends `header: value` with every notification (a service in `mesh_header` mode).
    pub fn set_notification_identity(&self, header: &str, value: &str) {
        self.state.notifier.set_identity(header, value);
    }

    /// Sets (or with `RouteFault::default()`, clears) a route's fault.
    pub fn set_fault(&self, route: Route, fault: RouteFault) {
        let mut faults = self.faults();
        if fault == RouteFault::default() {
            faults.routes.remove(&route);
        } else {
            faults.routes.insert(route, fault);
        }
    }

    /// Sets the notification faults.
    pub fn set_notification_faults(&self, notification_faults: NotificationFaults) {
        self.faults().notifications = notification_faults;
    }

    /// Declines (or not) every TAR.
    pub fn set_decline_tar(&self, decline: bool) {
        self.faults().decline_tar = decline;
    }

    fn faults(&self) -> std::sync::MutexGuard<'_, Faults> {
        self.state.faults.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn log(&self) -> std::sync::MutexGuard<'_, RequestLog> {
        self.state.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Requests seen on `route`.
    pub fn count(&self, route: Route) -> usize {
        self.log().count(route)
    }

    /// `POST /cards` requests that carried `src_correlation_id`.
    pub fn count_for_correlation(&self, src_correlation_id: &str) -> usize {
        self.log().count_for_correlation(src_correlation_id)
    }

    /// The gateway outcome of every request, in order.
    pub fn gateway_outcomes(&self) -> Vec<GatewayOutcome> {
        self.log().gateway_outcomes()
    }

    /// Every notification delivery attempt, in order.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.log().deliveries.clone()
    }

    /// Deletes the card from its Click to Pay profile as if it had been removed at Click to Pay
    /// (by the cardholder, or by Mastercard), as `how` says. Whether the card was there.
    pub async fn delete_card_in_click_to_pay(
        &self,
        card_contract_id: i64,
        how: CardDeletion,
    ) -> bool {
        lifecycle_api::delete_card_of(&self.state, card_contract_id, how).await
    }

    /// The profiles Click to Pay holds now (tests).
    pub fn profiles(&self) -> Vec<profiles::SimProfile> {
        self.state
            .profiles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .all()
            .to_vec()
    }

    /// Changes a token's status in the token lists (lifecycle tests).
    pub fn set_token_status(&self, token_unique_reference: &str, status: &str) -> bool {
        self.state
            .registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set_status(token_unique_reference, status)
    }
}

pub(crate) async fn incoming(request: Request) -> Incoming {
    let (parts, body) = request.into_parts();
    let conn = parts
        .extensions
        .get::<ConnControl>()
        .cloned()
        .unwrap_or_default();
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    Incoming {
        method: parts.method,
        uri: parts.uri,
        headers: parts.headers,
        body,
        conn,
    }
}

fn router(state: Arc<State>) -> axum::Router {
    axum::Router::new()
        .route(
            &format!("{PROCESSING_PATH}/cards/searches"),
            post(|AxumState(s): AxumState<Arc<State>>, r: Request| async move {
                processing_api::search(&s, incoming(r).await).await
            }),
        )
        .route(
            &format!("{PROCESSING_PATH}/cards/{{id}}/tokens"),
            get(|AxumState(s): AxumState<Arc<State>>, Path(id): Path<String>, r: Request| async move {
                processing_api::card_tokens(&s, incoming(r).await, id).await
            }),
        )
        .route(
            &format!("{PROCESSING_PATH}/clients/{{id}}/tokens"),
            get(|AxumState(s): AxumState<Arc<State>>, Path(id): Path<String>, r: Request| async move {
                processing_api::client_tokens(&s, incoming(r).await, id).await
            }),
        )
        .route(
            &format!("{ENROLL_PATH}/cards"),
            post(|AxumState(s): AxumState<Arc<State>>, r: Request| async move {
                enroll_api::enroll(s, incoming(r).await).await
            }),
        )
        .merge(lifecycle_api::routes())
        .fallback(|method: Method| async move { not_found(method) })
        .with_state(state)
}

fn not_found(_method: Method) -> Response {
    use axum::response::IntoResponse;
    let body =
        gateway::mastercard_error("Gateway", "RESOURCE_NOT_FOUND", "No such resource", false);
    (axum::http::StatusCode::NOT_FOUND, axum::Json(body)).into_response()
}

impl Sandbox {
    /// Both API clients pointed at this simulator with its keys, tuned by `settings` (payload
    /// encryption of Processing when `mastercard.processing.payload_encryption.enabled`).
    pub fn upstream(
        &self,
        settings: &crate::config::MastercardSettings,
    ) -> Result<crate::mastercard::setup::Upstream, crate::mastercard::setup::SetupError> {
        use crate::mastercard::error::Api;
        use crate::mastercard::http::PayloadEncryption;
        use crate::mastercard::settings::LifecycleFamily;
        use crate::mastercard::setup::{Endpoint, SetupError, Upstream, build_client};
        let keys = &self.state.keys;
        let setup = |e: String| SetupError::Missing(e);
        let encryption = if settings.processing.payload_encryption_enabled {
            let mastercard_public = keys
                .mastercard_payload_certificate
                .public_key()
                .map_err(|e| setup(e.to_string()))?;
            let mut decryptor = JweDecryptor::new();
            decryptor
                .add(&keys.client_payload_key)
                .map_err(|e| setup(e.to_string()))?;
            Some(PayloadEncryption {
                encryptor: JweEncryptor::new(&mastercard_public)
                    .map_err(|e| setup(e.to_string()))?,
                decryptor,
            })
        } else {
            None
        };
        let processing = build_client(
            Api::Processing,
            &settings.processing,
            Endpoint {
                base_url: self.processing_base_url(),
                consumer_key: keys.processing_consumer_key.clone(),
                signing_key: keys.processing_signing_key.clone(),
            },
            encryption,
            None,
        )?;
        let enroll = build_client(
            Api::Enroll,
            &settings.enroll,
            Endpoint {
                base_url: self.enroll_base_url(),
                consumer_key: keys.enroll_consumer_key.clone(),
                signing_key: keys.enroll_signing_key.clone(),
            },
            None,
            None,
        )?;
        let program = crate::mastercard::setup::Program {
            src_client_id: keys.program.src_client_id.clone(),
            service_id: keys.program.service_id.clone(),
            enroll_certificate: keys.enroll_encryption_certificate.clone(),
            privacy_uri: crate::config::DEFAULT_PRIVACY_URI.into(),
            terms_uri: crate::config::DEFAULT_TERMS_URI.into(),
            lifecycle: LifecycleFamily::Legacy,
        };
        // The same Click to Pay program, its cards managed through the Credential Directory.
        let directory = crate::mastercard::setup::Program {
            lifecycle: LifecycleFamily::CredentialDirectory {
                directory_id: DIRECTORY_ID.into(),
            },
            ..program.clone()
        };
        Ok(Upstream {
            processing: crate::mastercard::processing::ProcessingClient::new(processing),
            enroll: crate::mastercard::enroll::EnrollClient::new(enroll),
            programs: [
                (crate::config::DEFAULT_PROGRAM.to_owned(), program),
                (
                    crate::config::SANDBOX_DIRECTORY_PROGRAM.to_owned(),
                    directory,
                ),
            ]
            .into(),
        })
    }
}
