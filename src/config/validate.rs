//! Raw settings → typed [`Settings`], collecting every problem rather than stopping at the first.

use super::checker::Checker;
use super::{
    ConfigError, EnrollSettings, HealthSettings, LogFormat, LogSettings, MastercardSettings,
    MetricsSettings, Mode, RedisSettings, Settings, ShutdownSettings, StoreSettings,
    raw::RawSettings,
    validate_api::validate_api,
    validate_security::{check_caller_programs, optional_addr, validate_auth, validate_grpc},
};
use std::time::Duration;

/// The built-in defaults, in one place so the README table can be checked against them.
pub(super) mod defaults {
    pub const MODE: &str = "sandbox";
    pub const METRICS_LISTEN: &str = "127.0.0.1:9464";
    pub const REDIS_KEY_PREFIX: &str = "c2p:";
    pub const REDIS_CONNECT_TIMEOUT: &str = "2s";
    pub const REDIS_RESPONSE_TIMEOUT: &str = "1s";
    pub const STORE_ENROLLMENT_TTL: &str = "30d";
    pub const STORE_NOT_ENROLLED_TTL: &str = "60s";
    pub const STORE_NOTIFICATION_DEDUP_TTL: &str = "72h";
    pub const STORE_IDEMPOTENCY_TTL: &str = "24h";
    pub const STORE_CACHE_SIZE: usize = 10_000;
    pub const STORE_CACHE_MAX_AGE: &str = "2s";
    pub const ENROLL_LEASE: &str = "15s";
    pub const ENROLL_RECONCILE_INTERVAL: &str = "30s";
    pub const ENROLL_RECONCILE_AFTER: &str = "2m";
    pub const ENROLL_LIFECYCLE_CHECK_INTERVAL: &str = "24h";
    pub const HEALTH_CHECK_INTERVAL: &str = "1s";
    pub const HEALTH_CHECK_TIMEOUT: &str = "1s";
    pub const SHUTDOWN_GRACE_PERIOD: &str = "10s";
    pub const LOG_FILTER: &str = "info";
    pub const LOG_FORMAT: &str = "auto";
    pub const NOTIFICATIONS_MAX_FUTURE_SKEW: &str = "5m";
    pub const NOTIFICATIONS_MAX_AGE: &str = "30d";
}

pub(super) fn validate(raw: RawSettings) -> Result<Settings, ConfigError> {
    let mut c = Checker::default();
    c.unknown("", &raw.unknown);
    c.unknown("grpc", &raw.grpc.unknown);
    c.unknown("redis", &raw.redis.unknown);
    c.unknown("store", &raw.store.unknown);
    c.unknown("enroll", &raw.enroll.unknown);
    c.unknown("health", &raw.health.unknown);
    c.unknown("metrics", &raw.metrics.unknown);
    c.unknown("shutdown", &raw.shutdown.unknown);
    c.unknown("log", &raw.log.unknown);
    c.unknown("mastercard", &raw.mastercard.unknown);
    c.unknown("notifications", &raw.notifications.unknown);

    // An empty mode given (`C2P_MODE=` from an unset shell variable or an empty Secret) is an
    // error, not the default: it would turn a mastercard file into sandbox mode.
    let given_empty = raw.mode.as_ref().is_some_and(|m| m.0.trim().is_empty());
    let mode = match Checker::text(&raw.mode, defaults::MODE).as_str() {
        _ if given_empty => {
            c.problem("mode", "is empty; use \"sandbox\" or \"mastercard\"");
            Mode::Sandbox
        }
        "sandbox" => Mode::Sandbox,
        "mastercard" => Mode::Mastercard,
        other => {
            c.problem(
                "mode",
                format!("{other:?} is not a mode; use \"sandbox\" or \"mastercard\""),
            );
            Mode::Sandbox
        }
    };

    let grpc = validate_grpc(&mut c, &raw, mode);
    let auth = validate_auth(&mut c, &raw.auth, mode, &grpc);

    // Unset means the default; set to empty text, the listener is off.
    let metrics_listen = optional_addr(
        &mut c,
        "metrics.listen",
        &raw.metrics.listen,
        Some(defaults::METRICS_LISTEN),
    );
    let redis = validate_redis(&mut c, &raw, mode);
    let store = StoreSettings {
        enrollment_ttl: c.duration(
            "store.enrollment_ttl",
            &raw.store.enrollment_ttl,
            defaults::STORE_ENROLLMENT_TTL,
        ),
        not_enrolled_ttl: c.duration(
            "store.not_enrolled_ttl",
            &raw.store.not_enrolled_ttl,
            defaults::STORE_NOT_ENROLLED_TTL,
        ),
        notification_dedup_ttl: c.duration(
            "store.notification_dedup_ttl",
            &raw.store.notification_dedup_ttl,
            defaults::STORE_NOTIFICATION_DEDUP_TTL,
        ),
        idempotency_ttl: c.duration(
            "store.idempotency_ttl",
            &raw.store.idempotency_ttl,
            defaults::STORE_IDEMPOTENCY_TTL,
        ),
        cache_size: c.number(
            "store.cache_size",
            &raw.store.cache_size,
            defaults::STORE_CACHE_SIZE,
            0..=10_000_000,
        ),
        cache_max_age: c.duration(
            "store.cache_max_age",
            &raw.store.cache_max_age,
            defaults::STORE_CACHE_MAX_AGE,
        ),
        memory_max_entries: c.number(
            "store.memory_max_entries",
            &raw.store.memory_max_entries,
            crate::store::DEFAULT_MEMORY_MAX_ENTRIES,
            1_000..=100_000_000,
        ),
    };
    // Redis keeps TTLs in whole milliseconds and refuses 0: under a second is a mistake anyway.
    for (key, ttl) in [
        ("store.enrollment_ttl", store.enrollment_ttl),
        ("store.not_enrolled_ttl", store.not_enrolled_ttl),
    ] {
        if ttl < Duration::from_secs(1) {
            c.problem(key, "must be at least 1s");
        }
    }
    // The staleness bound of status reads: an hour would defeat its purpose.
    if store.cache_max_age > Duration::from_secs(3600) {
        c.problem("store.cache_max_age", "must be at most 1h");
    }
    // Webhook senders retry for days and callers retry the next day: shorter would break dedup
    // and idempotency.
    if store.notification_dedup_ttl < Duration::from_secs(72 * 3600) {
        c.problem("store.notification_dedup_ttl", "must be at least 72h");
    }
    if store.idempotency_ttl < Duration::from_secs(24 * 3600) {
        c.problem("store.idempotency_ttl", "must be at least 24h");
    }
    let enroll = EnrollSettings {
        lease: c.duration("enroll.lease", &raw.enroll.lease, defaults::ENROLL_LEASE),
        fingerprint_key_file: c.readable_file(
            "enroll.fingerprint_key_file",
            &raw.enroll.fingerprint_key_file,
        ),
        reconcile_interval: c.duration(
            "enroll.reconcile_interval",
            &raw.enroll.reconcile_interval,
            defaults::ENROLL_RECONCILE_INTERVAL,
        ),
        reconcile_after: c.duration(
            "enroll.reconcile_after",
            &raw.enroll.reconcile_after,
            defaults::ENROLL_RECONCILE_AFTER,
        ),
        // "off": the reconciler never asks; only GetEnrollmentStatus with refresh does.
        lifecycle_check_interval: match Checker::optional(&raw.enroll.lifecycle_check_interval) {
            Some(text) if text.eq_ignore_ascii_case("off") => None,
            _ => Some(c.duration(
                "enroll.lifecycle_check_interval",
                &raw.enroll.lifecycle_check_interval,
                defaults::ENROLL_LIFECYCLE_CHECK_INTERVAL,
            )),
        },
    };
    // A running attempt renews its lease; finishing its card before the lease could run out
    // would race it (the card lock keeps it out, but the answer would then be the reconciler's).
    if enroll.reconcile_after < enroll.lease {
        c.problem("enroll.reconcile_after", "must be at least enroll.lease");
    }
    // Replicas must agree on fingerprints, and a per-process key would make every retry after a
    // restart look like a reused key.
    if mode == Mode::Mastercard && enroll.fingerprint_key_file.is_none() {
        c.problem(
            "enroll.fingerprint_key_file",
            "required in mastercard mode: a file holding at least 32 random bytes, the same on every replica",
        );
    }
    let health = HealthSettings {
        listen: optional_addr(&mut c, "health.listen", &raw.health.listen, None),
        check_interval: c.duration(
            "health.check_interval",
            &raw.health.check_interval,
            defaults::HEALTH_CHECK_INTERVAL,
        ),
        check_timeout: c.duration(
            "health.check_timeout",
            &raw.health.check_timeout,
            defaults::HEALTH_CHECK_TIMEOUT,
        ),
    };
    let shutdown = ShutdownSettings {
        grace_period: c.duration(
            "shutdown.grace_period",
            &raw.shutdown.grace_period,
            defaults::SHUTDOWN_GRACE_PERIOD,
        ),
    };
    let log = validate_log(&mut c, &raw, mode);
    let notifications = super::NotificationSettings {
        max_future_skew: c.duration(
            "notifications.max_future_skew",
            &raw.notifications.max_future_skew,
            defaults::NOTIFICATIONS_MAX_FUTURE_SKEW,
        ),
        max_age: c.duration(
            "notifications.max_age",
            &raw.notifications.max_age,
            defaults::NOTIFICATIONS_MAX_AGE,
        ),
    };
    // Webhook senders retry for days: a shorter window would refuse genuine resends.
    if notifications.max_age < Duration::from_secs(72 * 3600) {
        c.problem("notifications.max_age", "must be at least 72h");
    }

    // Credentials and key files are required only in mastercard mode: sandbox mode points the
    // clients at the simulator, so such settings left in a file for the other mode are ignored.
    let mastercard = MastercardSettings {
        processing: validate_api(
            &mut c,
            "mastercard.processing",
            &raw.mastercard.processing,
            mode,
        ),
        enroll: validate_api(&mut c, "mastercard.enroll", &raw.mastercard.enroll, mode),
    };

    let programs = super::validate_api::validate_programs(&mut c, &raw.programs, mode);
    check_caller_programs(&mut c, &auth, &programs, mode);

    if !c.problems.is_empty() {
        return Err(ConfigError {
            problems: c.problems,
        });
    }
    Ok(Settings {
        mode,
        grpc,
        auth,
        notifications,
        redis,
        store,
        enroll,
        metrics: MetricsSettings {
            listen: metrics_listen,
        },
        health,
        shutdown,
        log,
        mastercard,
        programs,
    })
}

fn validate_redis(c: &mut Checker, raw: &RawSettings, mode: Mode) -> RedisSettings {
    let url = Checker::optional(&raw.redis.url);
    // In mastercard mode an empty URL given (`C2P_REDIS__URL` from an empty Secret) is an error,
    // not the in-memory store: replicas would each keep their own state and lose it on exit.
    // Left unset, it still selects the in-memory store (with a warning at start).
    let given_empty = raw
        .redis
        .url
        .as_ref()
        .is_some_and(|u| u.0.trim().is_empty());
    if given_empty && mode == Mode::Mastercard {
        c.problem(
            "redis.url",
            "is empty in mastercard mode (an empty Secret?); name a Redis, or leave it unset for the in-memory development store",
        );
    }
    let cluster = c.boolean("redis.cluster", &raw.redis.cluster, false);
    if let Some(text) = &url {
        let nodes: Vec<&str> = text.split(',').map(str::trim).collect();
        if nodes.len() > 1 && !cluster {
            c.problem(
                "redis.url",
                "lists several nodes; set redis.cluster = true for a Redis Cluster",
            );
        }
        for node in nodes {
            match url::Url::parse(node) {
                Ok(u) if matches!(u.scheme(), "redis" | "rediss") && u.host_str().is_some() => {}
                // The URL may hold a password: name the problem, never echo the value.
                Ok(_) => c.problem(
                    "redis.url",
                    "must be a redis:// or rediss:// URL with a host (empty selects the in-memory store)",
                ),
                Err(e) => c.problem("redis.url", format!("is not a URL ({e})")),
            }
        }
    }
    let key_prefix = Checker::text(&raw.redis.key_prefix, defaults::REDIS_KEY_PREFIX);
    if key_prefix.contains(['{', '}']) {
        // Braces would move the Redis Cluster hash tag away from the card id.
        c.problem("redis.key_prefix", "must not contain '{' or '}'");
    }
    let ca_file = c.readable_file("redis.ca_file", &raw.redis.ca_file);
    if ca_file.is_some() && url.as_deref().is_some_and(|u| !u.contains("rediss://")) {
        c.problem("redis.ca_file", "is used only with rediss:// URLs");
    }
    RedisSettings {
        username: Checker::optional(&raw.redis.username),
        password_file: c.readable_file("redis.password_file", &raw.redis.password_file),
        ca_file,
        url: url.map(secrecy::SecretString::from),
        key_prefix,
        connect_timeout: c.duration(
            "redis.connect_timeout",
            &raw.redis.connect_timeout,
            defaults::REDIS_CONNECT_TIMEOUT,
        ),
        response_timeout: c.duration(
            "redis.response_timeout",
            &raw.redis.response_timeout,
            defaults::REDIS_RESPONSE_TIMEOUT,
        ),
        cluster,
    }
}

fn validate_log(c: &mut Checker, raw: &RawSettings, mode: Mode) -> LogSettings {
    let filter = Checker::text(&raw.log.filter, defaults::LOG_FILTER);
    if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&filter) {
        c.problem(
            "log.filter",
            format!("{filter:?} is not a tracing filter ({e})"),
        );
    }
    let format = match Checker::text(&raw.log.format, defaults::LOG_FORMAT).as_str() {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        "auto" if mode == Mode::Mastercard => LogFormat::Json,
        "auto" => LogFormat::Text,
        other => {
            c.problem(
                "log.format",
                format!("{other:?} is not a log format; use \"auto\", \"text\" or \"json\""),
            );
            LogFormat::Text
        }
    };
    LogSettings { filter, format }
}

#[cfg(test)]
mod tests {
    use super::super::Settings;
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn keys(err: &ConfigError) -> Vec<&str> {
        err.problems.iter().map(|p| p.key.as_str()).collect()
    }

    #[test]
    fn defaults_give_a_sandbox_on_loopback_with_the_memory_store() {
        let s = Settings::load(None, Vec::new()).unwrap();
        assert_eq!(s.mode, Mode::Sandbox);
        assert_eq!(s.grpc.listen.to_string(), "127.0.0.1:50051");
        assert!(s.redis.url.is_none());
        assert_eq!(s.redis.key_prefix, "c2p:");
        assert_eq!(s.shutdown.grace_period, Duration::from_secs(10));
        assert_eq!(s.log.format, LogFormat::Text);
        assert!(s.mastercard.processing.credentials.is_none());
    }

    #[test]
    fn record_ttls_under_a_second_are_refused() {
        // Redis would be asked for `PX 0` (whole milliseconds), which it refuses.
        let err = Settings::load(
            None,
            env(&[
                ("C2P_STORE__ENROLLMENT_TTL", "500us"),
                ("C2P_STORE__NOT_ENROLLED_TTL", "10ms"),
            ]),
        )
        .unwrap_err();
        assert_eq!(
            keys(&err),
            ["store.enrollment_ttl", "store.not_enrolled_ttl"]
        );
    }

    #[test]
    fn file_overrides_defaults_and_env_overrides_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c2p.toml");
        std::fs::write(
            &path,
            "[grpc]\nlisten = \"0.0.0.0:6000\"\n[redis]\nkey_prefix = \"file:\"\n",
        )
        .unwrap();
        let s =
            Settings::load(Some(&path), env(&[("C2P_GRPC__LISTEN", "127.0.0.1:7000")])).unwrap();
        assert_eq!(s.grpc.listen.to_string(), "127.0.0.1:7000");
        assert_eq!(s.redis.key_prefix, "file:");
    }

    #[test]
    fn an_empty_mode_is_refused_not_taken_for_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c2p.toml");
        std::fs::write(&path, "mode = \"mastercard\"\n").unwrap();
        let err = Settings::load(Some(&path), env(&[("C2P_MODE", " ")])).unwrap_err();
        assert!(keys(&err).contains(&"mode"), "{err}");
        // Other settings keep their meaning of empty (`metrics.listen`: off).
        let s = Settings::load(None, env(&[("C2P_METRICS__LISTEN", "")])).unwrap();
        assert!(s.metrics.listen.is_none());
    }

    #[test]
    fn an_empty_redis_url_in_mastercard_mode_is_refused_not_taken_for_the_memory_store() {
        let dir = tempfile::tempdir().unwrap();
        let (mut pairs, _key) = mastercard_env(&dir, "https://x.example/", "ck");
        with_default_program(&dir, &mut pairs);
        pairs.push(("C2P_REDIS__URL".into(), " ".into()));
        let err = Settings::load(None, pairs.clone()).unwrap_err();
        assert_eq!(keys(&err), ["redis.url"], "{err}");
        // Unset, it is the in-memory store; in sandbox mode empty means that too.
        pairs.pop();
        assert!(Settings::load(None, pairs).unwrap().redis.url.is_none());
        let s = Settings::load(None, env(&[("C2P_REDIS__URL", "")])).unwrap();
        assert!(s.redis.url.is_none());
    }

    #[test]
    fn a_mistyped_setting_ending_in_port_is_named() {
        let err = Settings::load(None, env(&[("C2P_HEALTH__PORT", "8086")])).unwrap_err();
        assert_eq!(keys(&err), ["health.port"]);
    }

    #[test]
    fn every_bad_setting_is_named_at_once() {
        let err = Settings::load(
            None,
            env(&[
                ("C2P_MODE", "mastercard"),
                ("C2P_GRPC__LISTEN", "not-an-address"),
                ("C2P_REDIS__URL", "ftp://x"),
                ("C2P_SHUTDOWN__GRACE_PERIOD", "soon"),
                ("C2P_GRPC__LISTN", "typo"),
                (
                    "C2P_MASTERCARD__ENROLL__BASE_URL",
                    "http://mastercard.example",
                ),
                (
                    "C2P_MASTERCARD__ENROLL__SIGNING_KEY_FILE",
                    "/nonexistent/key.p12",
                ),
            ]),
        )
        .unwrap_err();
        let keys = keys(&err);
        for expected in [
            "grpc.listen",
            "grpc.listn",
            "redis.url",
            "shutdown.grace_period",
            "mastercard.processing.base_url",
            "mastercard.processing.consumer_key",
            "mastercard.processing.signing_key_file",
            "mastercard.enroll.base_url",
            "mastercard.enroll.consumer_key",
            "mastercard.enroll.signing_key_file",
            "mastercard.enroll.signing_key_password_file",
        ] {
            assert!(keys.contains(&expected), "{expected} not named in {keys:?}");
        }
        let text = err.to_string();
        assert!(text.contains("C2P_GRPC__LISTEN"), "{text}");
    }

    /// Mastercard mode with both APIs' base URL, consumer key and a (placeholder) key file.
    fn mastercard_env(
        dir: &tempfile::TempDir,
        base_url: &str,
        consumer_key: &str,
    ) -> (Vec<(String, String)>, std::path::PathBuf) {
        let key = dir.path().join("signing.pem");
        std::fs::write(&key, "placeholder").unwrap();
        let fingerprint_key = dir.path().join("fingerprint.key");
        std::fs::write(&fingerprint_key, [7u8; 32]).unwrap();
        let mut pairs = vec![
            ("C2P_MODE".to_string(), "mastercard".to_string()),
            (
                "C2P_ENROLL__FINGERPRINT_KEY_FILE".to_string(),
                fingerprint_key.display().to_string(),
            ),
        ];
        for api in ["PROCESSING", "ENROLL"] {
            pairs.push((format!("C2P_MASTERCARD__{api}__BASE_URL"), base_url.into()));
            pairs.push((
                format!("C2P_MASTERCARD__{api}__CONSUMER_KEY"),
                consumer_key.into(),
            ));
            pairs.push((
                format!("C2P_MASTERCARD__{api}__SIGNING_KEY_FILE"),
                key.display().to_string(),
            ));
        }
        (pairs, key)
    }

    /// The `default` program's settings, its certificate a placeholder file in `dir`.
    fn with_default_program(dir: &tempfile::TempDir, pairs: &mut Vec<(String, String)>) {
        let cert = dir.path().join("enroll.cert.pem");
        std::fs::write(&cert, "placeholder").unwrap();
        pairs.push((
            "C2P_PROGRAMS__DEFAULT__SRC_CLIENT_ID".into(),
            "7f2b8a4e-5c1d-4e8f-9a3b-1c2d3e4f5a6b".into(),
        ));
        pairs.push((
            "C2P_PROGRAMS__DEFAULT__SERVICE_ID".into(),
            "SRC_SERVICE".into(),
        ));
        pairs.push((
            "C2P_PROGRAMS__DEFAULT__ENROLL_ENCRYPTION_CERTIFICATE_FILE".into(),
            cert.display().to_string(),
        ));
    }

    #[test]
    fn complete_mastercard_settings_validate() {
        let dir = tempfile::tempdir().unwrap();
        let (mut pairs, _key) =
            mastercard_env(&dir, "https://sandbox.api.mastercard.com/x", "ck!abc");
        with_default_program(&dir, &mut pairs);
        let s = Settings::load(None, pairs).unwrap();
        assert_eq!(s.log.format, LogFormat::Json);
        let program = &s.programs["default"];
        assert_eq!(program.service_id, "SRC_SERVICE");
        assert_eq!(program.terms_uri.as_str(), super::super::DEFAULT_TERMS_URI);
        let enroll = s.mastercard.enroll.credentials.unwrap();
        assert_eq!(enroll.consumer_key, "ck!abc");
        assert_eq!(
            s.mastercard
                .processing
                .credentials
                .unwrap()
                .signing_key_password_file,
            None
        );
    }

    #[test]
    fn api_tuning_is_validated_in_both_modes() {
        let err = Settings::load(
            None,
            env(&[
                ("C2P_MASTERCARD__PROCESSING__MAX_ATTEMPTS", "0"),
                (
                    "C2P_MASTERCARD__ENROLL__BREAKER__FAILURE_RATE_THRESHOLD",
                    "150",
                ),
                ("C2P_MASTERCARD__ENROLL__SIGNATURE_METHOD", "hmac-sha1"),
                (
                    "C2P_MASTERCARD__ENROLL__PAYLOAD_ENCRYPTION__ENABLED",
                    "maybe",
                ),
                ("C2P_MASTERCARD__ENROLL__BREAKER__OPEN_FOR", "1s"),
            ]),
        )
        .unwrap_err();
        assert_eq!(
            keys(&err),
            vec![
                "mastercard.processing.max_attempts",
                "mastercard.enroll.breaker.open_for",
                "mastercard.enroll.signature_method",
                "mastercard.enroll.breaker.failure_rate_threshold",
                "mastercard.enroll.payload_encryption.enabled",
            ]
        );
        let s = Settings::load(
            None,
            env(&[
                ("C2P_MASTERCARD__ENROLL__SIGNATURE_METHOD", "RSA-PSS"),
                ("C2P_MASTERCARD__PROCESSING__BREAKER__MINIMUM_CALLS", "20"),
            ]),
        )
        .unwrap();
        assert_eq!(
            s.mastercard.enroll.signature_method,
            crate::mastercard::oauth1::SignatureMethod::RsaPss
        );
        assert_eq!(s.mastercard.processing.breaker.minimum_calls, 20);
        assert_eq!(s.mastercard.processing.breaker.window_size, 100);
        assert_eq!(s.mastercard.processing.policy.max_attempts, 3);
    }

    #[test]
    fn payload_encryption_needs_its_files_in_mastercard_mode() {
        let dir = tempfile::tempdir().unwrap();
        let (mut pairs, key) = mastercard_env(&dir, "https://x.example/", "ck");
        pairs.push((
            "C2P_MASTERCARD__PROCESSING__PAYLOAD_ENCRYPTION__ENABLED".into(),
            "true".into(),
        ));
        pairs.push((
            "C2P_MASTERCARD__PROCESSING__PAYLOAD_ENCRYPTION__DECRYPTION_KEY_FILE".into(),
            "/nonexistent/mc.p12".into(),
        ));
        pairs.push((
            "C2P_PROGRAMS__DEFAULT__SRC_CLIENT_ID".into(),
            "not-a-uuid".into(),
        ));
        pairs.push(("C2P_PROGRAMS__DEFAULT__SERVICE_ID".into(), "S".into()));
        pairs.push((
            "C2P_PROGRAMS__DEFAULT__ENROLL_ENCRYPTION_CERTIFICATE_FILE".into(),
            key.display().to_string(),
        ));
        pairs.push((
            "C2P_PROGRAMS__DEFAULT__PRIVACY_URI".into(),
            "http://plain.example/".into(),
        ));
        let err = Settings::load(None, pairs).unwrap_err();
        assert_eq!(
            keys(&err),
            vec![
                "mastercard.processing.payload_encryption.encryption_certificate_file",
                "mastercard.processing.payload_encryption.decryption_key_file",
                "mastercard.processing.payload_encryption.decryption_key_password_file",
                "programs.default.src_client_id",
                "programs.default.privacy_uri",
            ]
        );
    }

    #[test]
    fn reflection_is_on_in_sandbox_mode_and_off_in_mastercard_mode() {
        assert!(Settings::load(None, Vec::new()).unwrap().grpc.reflection);
        let dir = tempfile::tempdir().unwrap();
        let (mut pairs, key) = mastercard_env(&dir, "https://x.example/", "ck");
        for (k, v) in [
            (
                "SRC_CLIENT_ID",
                "7f2b8a4e-5c1d-4e8f-9a3b-1c2d3e4f5a6b".to_string(),
            ),
            ("SERVICE_ID", "S".to_string()),
            (
                "ENROLL_ENCRYPTION_CERTIFICATE_FILE",
                key.display().to_string(),
            ),
        ] {
            pairs.push((format!("C2P_PROGRAMS__DEFAULT__{k}"), v));
        }
        assert!(!Settings::load(None, pairs.clone()).unwrap().grpc.reflection);
        let mut on = pairs.clone();
        on.push(("C2P_GRPC__REFLECTION".into(), "true".into()));
        assert!(Settings::load(None, on).unwrap().grpc.reflection);
        let mut on = pairs;
        on.push(("C2P_GRPC__REFLECTION".into(), "maybe".into()));
        assert!(keys(&Settings::load(None, on).unwrap_err()).contains(&"grpc.reflection"));
    }

    #[test]
    fn the_access_policy_is_checked_as_a_whole() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "placeholder").unwrap();
        let ca = ca.display().to_string();
        // Client CA without a server certificate; callers without rpcs or programs; the same
        // identity twice; an unknown RPC; a policy while nobody is identified.
        let err = Settings::load(
            None,
            env(&[
                ("C2P_GRPC__TLS__CLIENT_CA_FILE", &ca),
                ("C2P_AUTH__CALLERS__A__IDENTITY", "spiffe://x/a"),
                ("C2P_AUTH__CALLERS__A__RPCS", "EnrollCard,DeleteEverything"),
                ("C2P_AUTH__CALLERS__B__IDENTITY", "spiffe://x/a"),
            ]),
        )
        .unwrap_err();
        assert_eq!(
            keys(&err),
            vec![
                "grpc.tls.client_ca_file",
                "auth.callers.a.rpcs",
                "auth.callers.a.programs",
                "auth.callers.b.identity",
                "auth.callers.b.rpcs",
                "auth.callers",
            ]
        );
        // certificate identity without mutual TLS; mesh_header without callers.
        let err = Settings::load(None, env(&[("C2P_AUTH__IDENTITY", "certificate")])).unwrap_err();
        assert_eq!(keys(&err), vec!["auth.identity", "auth.callers"]);
        let err = Settings::load(None, env(&[("C2P_AUTH__IDENTITY", "mesh_header")])).unwrap_err();
        assert_eq!(keys(&err), vec!["auth.callers"]);
        let s = Settings::load(
            None,
            env(&[
                ("C2P_AUTH__IDENTITY", "mesh_header"),
                ("C2P_AUTH__CALLERS__GW__IDENTITY", "gw"),
                ("C2P_AUTH__CALLERS__GW__RPCS", "NotificationIngest"),
            ]),
        )
        .unwrap();
        assert_eq!(s.auth.callers["gw"].rpcs.len(), 1);
    }

    #[test]
    fn policies_that_could_never_match_or_be_trusted_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, "placeholder").unwrap();
            p.display().to_string()
        };
        let (cert, key, ca) = (file("c.pem"), file("k.pem"), file("ca.pem"));
        // Server-only TLS on 0.0.0.0 with a header identity: anyone could set the header.
        let err = Settings::load(
            None,
            env(&[
                ("C2P_GRPC__LISTEN", "0.0.0.0:0"),
                ("C2P_GRPC__TLS__CERT_FILE", &cert),
                ("C2P_GRPC__TLS__KEY_FILE", &key),
                ("C2P_AUTH__IDENTITY", "mesh_header"),
                ("C2P_AUTH__CALLERS__GW__IDENTITY", "gw"),
                ("C2P_AUTH__CALLERS__GW__RPCS", "NotificationIngest"),
            ]),
        )
        .unwrap_err();
        assert_eq!(keys(&err), vec!["auth.identity"]);
        // A header identity over mutual TLS: only the mesh proxies' connections may set it, so
        // they are named; a name no certificate carries, or mesh peers in another mode, refused.
        let mesh = |extra: &[(&'static str, &'static str)]| {
            let mut vars = vec![
                ("C2P_GRPC__TLS__CERT_FILE", cert.as_str()),
                ("C2P_GRPC__TLS__KEY_FILE", key.as_str()),
                ("C2P_GRPC__TLS__CLIENT_CA_FILE", ca.as_str()),
                ("C2P_AUTH__CALLERS__GW__IDENTITY", "gw"),
                ("C2P_AUTH__CALLERS__GW__RPCS", "NotificationIngest"),
            ];
            vars.extend_from_slice(extra);
            Settings::load(None, env(&vars))
        };
        let err = mesh(&[("C2P_AUTH__IDENTITY", "mesh_header")]).unwrap_err();
        assert_eq!(keys(&err), vec!["auth.mesh_peers"]);
        let err = mesh(&[
            ("C2P_AUTH__IDENTITY", "mesh_header"),
            (
                "C2P_AUTH__MESH_PEERS",
                "spiffe://bank/ns/istio/sa/ingress,*.mesh.local",
            ),
        ])
        .unwrap_err();
        assert_eq!(keys(&err), vec!["auth.mesh_peers"]);
        let s = mesh(&[
            ("C2P_AUTH__IDENTITY", "mesh_header"),
            (
                "C2P_AUTH__MESH_PEERS",
                "spiffe://bank/ns/istio/sa/ingress, proxy.mesh.local",
            ),
        ])
        .unwrap();
        assert_eq!(
            s.auth.mesh_peers.iter().collect::<Vec<_>>(),
            ["proxy.mesh.local", "spiffe://bank/ns/istio/sa/ingress"]
        );
        let err = mesh(&[("C2P_AUTH__MESH_PEERS", "proxy.mesh.local")]).unwrap_err();
        assert_eq!(keys(&err), vec!["auth.mesh_peers"]);
        let err = Settings::load(
            None,
            env(&[
                ("C2P_AUTH__IDENTITY", "mesh_header"),
                ("C2P_AUTH__MESH_PEERS", "proxy.mesh.local"),
                ("C2P_AUTH__CALLERS__GW__IDENTITY", "gw"),
                ("C2P_AUTH__CALLERS__GW__RPCS", "NotificationIngest"),
            ]),
        )
        .unwrap_err();
        assert_eq!(keys(&err), vec!["auth.mesh_peers"]);
        // Certificate identities that no certificate can carry, and a program that does not exist.
        let err = Settings::load(
            None,
            env(&[
                ("C2P_GRPC__TLS__CERT_FILE", &cert),
                ("C2P_GRPC__TLS__KEY_FILE", &key),
                ("C2P_GRPC__TLS__CLIENT_CA_FILE", &ca),
                ("C2P_AUTH__CALLERS__A__IDENTITY", "app backend"),
                ("C2P_AUTH__CALLERS__A__RPCS", "GetEnrollmentStatus"),
                ("C2P_AUTH__CALLERS__A__PROGRAMS", "defualt"),
            ]),
        )
        .unwrap_err();
        assert_eq!(
            keys(&err),
            vec!["auth.callers.a.identity", "auth.callers.a.programs"]
        );
    }

    #[test]
    fn settings_debug_hides_the_redis_password() {
        let s = Settings::load(
            None,
            env(&[("C2P_REDIS__URL", "redis://:hunter2@redis:6379/")]),
        )
        .unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn redis_url_problems_never_echo_the_url() {
        let err =
            Settings::load(None, env(&[("C2P_REDIS__URL", "http://:hunter2@h")])).unwrap_err();
        assert_eq!(keys(&err), vec!["redis.url"]);
        assert!(!err.to_string().contains("hunter2"));
    }
}
