//! Typed settings: built-in defaults → optional TOML file → `C2P_` environment variables.
//!
//! Loading goes through a lenient raw layer ([`raw`]) so that validation ([`validate`]) can name
//! every missing or bad setting in one message instead of stopping at the first.

mod checker;
mod raw;
mod validate;
mod validate_api;
mod validate_security;

pub use crate::domain::DEFAULT_PROGRAM;

/// The simulator's second program in sandbox mode: the same Click to Pay program as `default`,
/// its cards managed through the Credential Directory instead of the legacy APIs.
pub const SANDBOX_DIRECTORY_PROGRAM: &str = "directory";
pub use crate::grpc::policy::{AuthSettings, CallerPolicy, IdentitySource, Rpc};
pub use crate::mastercard::settings::{
    ApiCredentials, ApiSettings, KeyFile, MastercardSettings, PayloadEncryptionFiles,
    ProgramSettings,
};
pub use crate::store::RedisSettings;
pub use crate::transport::TlsSettings;
use std::{fmt, net::SocketAddr, path::PathBuf, time::Duration};

use raw::RawSettings;
pub use raw::env_pairs;

/// The prefix of the environment variables that override settings; `__` separates nesting levels.
pub const ENV_PREFIX: &str = "C2P_";

/// Where the service sends its Mastercard calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The in-repo Mastercard simulator, on loopback. Never Mastercard.
    Sandbox,
    /// Mastercard's real APIs (sandbox, MTF or production base URLs), with real keys.
    Mastercard,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Sandbox => "sandbox",
            Mode::Mastercard => "mastercard",
        })
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The validated settings of the service.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `mode`.
    pub mode: Mode,
    /// `grpc.*`.
    pub grpc: GrpcSettings,
    /// `redis.*`.
    pub redis: RedisSettings,
    /// `store.*`.
    pub store: StoreSettings,
    /// `enroll.*`.
    pub enroll: EnrollSettings,
    /// `metrics.*`.
    pub metrics: MetricsSettings,
    /// `health.*`.
    pub health: HealthSettings,
    /// `shutdown.*`.
    pub shutdown: ShutdownSettings,
    /// `log.*`.
    pub log: LogSettings,
    /// `auth.*`: who may call what.
    pub auth: AuthSettings,
    /// `notifications.*`: what NotificationIngest accepts.
    pub notifications: NotificationSettings,
    /// `mastercard.*`: credentials complete in `mastercard` mode; tuning in both modes.
    pub mastercard: MastercardSettings,
    /// `programs.<name>.*`: the Click to Pay programs (mastercard mode; sandbox mode uses the
    /// simulator's). `default` is the one used when a request names none.
    pub programs: std::collections::BTreeMap<String, ProgramSettings>,
}

/// `grpc.*`: the gRPC listener.
#[derive(Debug, Clone)]
pub struct GrpcSettings {
    /// `grpc.listen`: the address the gRPC server binds (port 0 picks a free port).
    pub listen: SocketAddr,
    /// `grpc.reflection`: serve gRPC reflection (default: on in sandbox mode, off in mastercard
    /// mode).
    pub reflection: bool,
    /// `grpc.tls.*`: TLS on the listener; `None` serves plaintext.
    pub tls: Option<TlsSettings>,
    /// `grpc.limits.*`.
    pub limits: GrpcLimits,
}

/// `grpc.limits.*`: what one client can make the process hold.
#[derive(Debug, Clone)]
pub struct GrpcLimits {
    /// `max_message_bytes`: the largest request message decoded.
    pub max_message_bytes: usize,
    /// `max_concurrent_streams`: HTTP/2 streams one connection may have open.
    pub max_concurrent_streams: u32,
    /// `max_watch_streams`: open `WatchEnrollment` streams per process.
    pub max_watch_streams: usize,
    /// `max_ingest_streams`: open `NotificationIngest` streams per process.
    pub max_ingest_streams: usize,
    /// `handshake_timeout`: how long a new connection has to finish TLS and send its first
    /// bytes.
    pub handshake_timeout: Duration,
    /// `keepalive_interval`: how often an HTTP/2 PING checks a connection.
    pub keepalive_interval: Duration,
    /// `keepalive_timeout`: how long a PING may go unanswered before the connection is closed.
    pub keepalive_timeout: Duration,
    /// `default_deadline`: the deadline of a unary call that brings none.
    pub default_deadline: Duration,
    /// `watch_heartbeat_interval`: a WatchEnrollment stream with no change for this long gets a
    /// heartbeat.
    pub watch_heartbeat_interval: Duration,
    /// `max_connections`: connections the gRPC listener holds at once (handshakes included).
    pub max_connections: usize,
    /// `max_connection_age`: after it the server sends GOAWAY so that clients reconnect (and
    /// rebalance over replicas); `None` = never.
    pub max_connection_age: Option<Duration>,
    /// `max_connection_age_grace`: how long calls in flight get after that GOAWAY.
    pub max_connection_age_grace: Duration,
}

/// `notifications.*`.
#[derive(Debug, Clone)]
pub struct NotificationSettings {
    /// `notifications.max_future_skew`: how far in the future an `event_time` may be.
    pub max_future_skew: Duration,
    /// `notifications.max_age`: how far in the past an `event_time` may be.
    pub max_age: Duration,
}

/// `store.*`: retention of the records.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    /// `store.enrollment_ttl`: how long an enrollment record (the token-status cache) is kept.
    pub enrollment_ttl: Duration,
    /// `store.not_enrolled_ttl`: how long a NOT_ENROLLED answer rebuilt from Mastercard is cached.
    pub not_enrolled_ttl: Duration,
    /// `store.notification_dedup_ttl`: how long a notification id is remembered (>= 72 h).
    pub notification_dedup_ttl: Duration,
    /// `store.idempotency_ttl`: how long an idempotency record is kept (>= 24 h).
    pub idempotency_ttl: Duration,
    /// `store.cache_size`: enrollment records the Redis store keeps in process memory for
    /// status reads (0: none).
    pub cache_size: usize,
    /// `store.cache_max_age`: how long a cached record is served without news of it.
    pub cache_max_age: Duration,
    /// `store.memory_max_entries`: the in-memory store's bound on records, on dedup markers and
    /// on idempotency records (each); the oldest are evicted past it.
    pub memory_max_entries: usize,
}

/// `enroll.*`: the enrollment flow.
#[derive(Debug, Clone)]
pub struct EnrollSettings {
    /// `enroll.lease`: how long a call holds its idempotency key without renewing it; after a
    /// crash, a retry resumes once it ran out.
    pub lease: Duration,
    /// `enroll.fingerprint_key_file`: the secret of the idempotency fingerprint (HMAC-SHA256);
    /// `None` in sandbox mode = a key generated per process.
    pub fingerprint_key_file: Option<PathBuf>,
    /// `enroll.reconcile_interval`: how often the reconciler looks for enrollments in limbo.
    pub reconcile_interval: Duration,
    /// `enroll.reconcile_after`: how long an enrollment stays IN_PROGRESS before the
    /// reconciler finishes it from the token list.
    pub reconcile_after: Duration,
    /// `enroll.lifecycle_check_interval`: how often the reconciler asks Click to Pay whether it
    /// still holds each ENROLLED card; `None` ("off"): never.
    pub lifecycle_check_interval: Option<Duration>,
}

/// `metrics.*`: the Prometheus listener.
#[derive(Debug, Clone)]
pub struct MetricsSettings {
    /// `metrics.listen`: where `GET /metrics` is served; `None` (empty setting) turns it off.
    pub listen: Option<SocketAddr>,
}

/// `health.*`: the store probe behind the gRPC health service.
#[derive(Debug, Clone)]
pub struct HealthSettings {
    /// `health.listen`: a plaintext listener serving only `grpc.health.v1` (for kubelet probes
    /// when the gRPC listener speaks TLS); `None` = off.
    pub listen: Option<SocketAddr>,
    /// `health.check_interval`: how often the store is probed.
    pub check_interval: Duration,
    /// `health.check_timeout`: how long one probe may take before the store counts as unreachable.
    pub check_timeout: Duration,
}

/// `shutdown.*`: draining on SIGTERM / SIGINT.
#[derive(Debug, Clone)]
pub struct ShutdownSettings {
    /// `shutdown.grace_period`: how long in-flight calls and streams get before the process exits.
    pub grace_period: Duration,
}

/// `log.*`: logging.
#[derive(Debug, Clone)]
pub struct LogSettings {
    /// `log.filter`: a `tracing` env-filter directive, e.g. `info` or `c2p_enroll=debug,info`.
    pub filter: String,
    /// `log.format`: `text`, `json`, or `auto` (text in sandbox mode, JSON in mastercard mode).
    pub format: LogFormat,
}

/// Mastercard's Click to Pay privacy notice (en-US), the default `privacy_uri`.
pub const DEFAULT_PRIVACY_URI: &str =
    "https://www.mastercard.com/global/click-to-pay/en-us/privacy-notice.html";
/// Mastercard's Click to Pay terms of use (en-US), the default `terms_uri`.
pub const DEFAULT_TERMS_URI: &str =
    "https://www.mastercard.com/global/click-to-pay/en-us/terms-of-use.html";

/// Every problem found while loading the settings.
#[derive(Debug, thiserror::Error)]
#[error("{}", render_problems(.problems))]
pub struct ConfigError {
    /// One entry per bad or missing setting.
    pub problems: Vec<Problem>,
}

/// One bad or missing setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The dotted setting name, e.g. `grpc.listen`.
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

fn render_problems(problems: &[Problem]) -> String {
    let mut out = format!("invalid settings ({} problems):", problems.len());
    for p in problems {
        out.push_str(&format!(
            "\n  - {} ({}): {}",
            p.key,
            env_name(&p.key),
            p.message
        ));
    }
    out
}

/// The environment variable that sets a dotted setting name: `grpc.listen` → `C2P_GRPC__LISTEN`.
pub fn env_name(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.replace('.', "__").to_uppercase())
}

impl Settings {
    /// Loads defaults, then the TOML file if given, then the `C2P_` variables among `env`, and
    /// validates the result. `env` is passed in (rather than read here) so tests need not touch
    /// the process environment.
    pub fn load(
        file: Option<&std::path::Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        let raw = RawSettings::load(file, env)?;
        validate::validate(raw)
    }
}
