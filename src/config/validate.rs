//! Raw settings → typed [`Settings`], collecting every problem rather than stopping at the first.

use super::{
    ApiSettings, ConfigError, GrpcSettings, HealthSettings, LogFormat, LogSettings,
    MastercardSettings, Mode, Problem, RedisSettings, Settings, ShutdownSettings, StoreSettings,
    raw::{RawApi, RawSettings, Scalar, Unknown},
};
use std::{net::SocketAddr, path::PathBuf, time::Duration};

/// The built-in defaults, in one place so the README table can be checked against them.
pub(super) mod defaults {
    pub const MODE: &str = "sandbox";
    pub const GRPC_LISTEN: &str = "127.0.0.1:50051";
    pub const REDIS_KEY_PREFIX: &str = "c2p:";
    pub const REDIS_CONNECT_TIMEOUT: &str = "2s";
    pub const REDIS_RESPONSE_TIMEOUT: &str = "1s";
    pub const STORE_ENROLLMENT_TTL: &str = "30d";
    pub const HEALTH_CHECK_INTERVAL: &str = "1s";
    pub const HEALTH_CHECK_TIMEOUT: &str = "1s";
    pub const SHUTDOWN_GRACE_PERIOD: &str = "10s";
    pub const LOG_FILTER: &str = "info";
    pub const LOG_FORMAT: &str = "auto";
}

#[derive(Default)]
struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    fn problem(&mut self, key: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            key: key.to_owned(),
            message: message.into(),
        });
    }

    fn unknown(&mut self, section: &str, unknown: &Unknown) {
        for name in unknown.keys() {
            let key = if section.is_empty() {
                name.clone()
            } else {
                format!("{section}.{name}")
            };
            self.problem(&key, "unknown setting");
        }
    }

    /// The value, or the default when unset; empty text counts as unset.
    fn text(value: &Option<Scalar>, default: &str) -> String {
        match value {
            Some(Scalar(s)) if !s.trim().is_empty() => s.trim().to_owned(),
            _ => default.to_owned(),
        }
    }

    fn optional(value: &Option<Scalar>) -> Option<String> {
        match value {
            Some(Scalar(s)) if !s.trim().is_empty() => Some(s.trim().to_owned()),
            _ => None,
        }
    }

    fn duration(&mut self, key: &str, value: &Option<Scalar>, default: &str) -> Duration {
        let text = Self::text(value, default);
        match humantime::parse_duration(&text) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                self.problem(key, "must be greater than zero");
                Duration::from_secs(1)
            }
            Err(e) => {
                self.problem(
                    key,
                    format!(
                        "{text:?} is not a duration ({e}); write e.g. \"500ms\", \"10s\", \"24h\""
                    ),
                );
                Duration::from_secs(1)
            }
        }
    }
}

pub(super) fn validate(raw: RawSettings) -> Result<Settings, ConfigError> {
    let mut c = Checker::default();
    c.unknown("", &raw.unknown);
    c.unknown("grpc", &raw.grpc.unknown);
    c.unknown("redis", &raw.redis.unknown);
    c.unknown("store", &raw.store.unknown);
    c.unknown("health", &raw.health.unknown);
    c.unknown("shutdown", &raw.shutdown.unknown);
    c.unknown("log", &raw.log.unknown);
    c.unknown("mastercard", &raw.mastercard.unknown);

    let mode = match Checker::text(&raw.mode, defaults::MODE).as_str() {
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

    let listen_text = Checker::text(&raw.grpc.listen, defaults::GRPC_LISTEN);
    let listen = listen_text.parse::<SocketAddr>().unwrap_or_else(|_| {
        c.problem(
            "grpc.listen",
            format!("{listen_text:?} is not a socket address such as \"0.0.0.0:50051\""),
        );
        SocketAddr::from(([127, 0, 0, 1], 0))
    });

    let redis = validate_redis(&mut c, &raw);
    let store = StoreSettings {
        enrollment_ttl: c.duration(
            "store.enrollment_ttl",
            &raw.store.enrollment_ttl,
            defaults::STORE_ENROLLMENT_TTL,
        ),
    };
    let health = HealthSettings {
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

    // The upstream settings matter only in mastercard mode: sandbox mode points the clients at the
    // simulator, so settings left in a file for the other mode are not an error there.
    let mastercard = match mode {
        Mode::Mastercard => {
            c.unknown("mastercard.processing", &raw.mastercard.processing.unknown);
            c.unknown("mastercard.enroll", &raw.mastercard.enroll.unknown);
            let processing =
                validate_api(&mut c, "mastercard.processing", &raw.mastercard.processing);
            let enroll = validate_api(&mut c, "mastercard.enroll", &raw.mastercard.enroll);
            processing
                .zip(enroll)
                .map(|(processing, enroll)| MastercardSettings { processing, enroll })
        }
        Mode::Sandbox => None,
    };

    if !c.problems.is_empty() {
        return Err(ConfigError {
            problems: c.problems,
        });
    }
    Ok(Settings {
        mode,
        grpc: GrpcSettings { listen },
        redis,
        store,
        health,
        shutdown,
        log,
        mastercard,
    })
}

fn validate_redis(c: &mut Checker, raw: &RawSettings) -> RedisSettings {
    let url = Checker::optional(&raw.redis.url);
    if let Some(text) = &url {
        match url::Url::parse(text) {
            Ok(u) if matches!(u.scheme(), "redis" | "rediss") && u.host_str().is_some() => {}
            // The URL may hold a password: name the problem, never echo the value.
            Ok(_) => c.problem(
                "redis.url",
                "must be a redis:// or rediss:// URL with a host (empty selects the in-memory store)",
            ),
            Err(e) => c.problem("redis.url", format!("is not a URL ({e})")),
        }
    }
    let key_prefix = Checker::text(&raw.redis.key_prefix, defaults::REDIS_KEY_PREFIX);
    if key_prefix.contains(['{', '}']) {
        // Braces would move the Redis Cluster hash tag away from the card id.
        c.problem("redis.key_prefix", "must not contain '{' or '}'");
    }
    RedisSettings {
        url,
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

fn validate_api(c: &mut Checker, section: &str, raw: &RawApi) -> Option<ApiSettings> {
    let before = c.problems.len();
    let key = |name: &str| format!("{section}.{name}");

    let base_url = match Checker::optional(&raw.base_url) {
        None => {
            c.problem(&key("base_url"), "required in mastercard mode");
            None
        }
        Some(text) => match url::Url::parse(&text) {
            Ok(u) if u.scheme() == "https" => Some(u),
            // Plain http only towards this machine: the standalone simulator.
            Ok(u) if u.scheme() == "http" && is_loopback(&u) => Some(u),
            Ok(_) => {
                c.problem(
                    &key("base_url"),
                    format!("{text:?} must be an https URL (http only on a loopback host)"),
                );
                None
            }
            Err(e) => {
                c.problem(&key("base_url"), format!("{text:?} is not a URL ({e})"));
                None
            }
        },
    };

    let consumer_key = Checker::optional(&raw.consumer_key);
    if consumer_key.is_none() {
        c.problem(&key("consumer_key"), "required in mastercard mode");
    }

    let signing_key_file = Checker::optional(&raw.signing_key_file).map(PathBuf::from);
    match &signing_key_file {
        None => c.problem(&key("signing_key_file"), "required in mastercard mode"),
        Some(path) => check_readable(c, &key("signing_key_file"), path),
    }

    let signing_key_password_file =
        Checker::optional(&raw.signing_key_password_file).map(PathBuf::from);
    match &signing_key_password_file {
        Some(path) => check_readable(c, &key("signing_key_password_file"), path),
        None if signing_key_file.as_deref().is_some_and(is_pkcs12) => c.problem(
            &key("signing_key_password_file"),
            "required when the signing key is a PKCS#12 file",
        ),
        None => {}
    }

    if c.problems.len() > before {
        return None;
    }
    Some(ApiSettings {
        base_url: base_url?,
        consumer_key: consumer_key?,
        signing_key_file: signing_key_file?,
        signing_key_password_file,
    })
}

fn is_loopback(u: &url::Url) -> bool {
    match u.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    }
}

fn is_pkcs12(path: &std::path::Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("p12") || e.eq_ignore_ascii_case("pfx"))
}

fn check_readable(c: &mut Checker, key: &str, path: &std::path::Path) {
    if let Err(e) = std::fs::File::open(path) {
        c.problem(key, format!("cannot read {}: {e}", path.display()));
    }
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
        assert_eq!(s.redis.url, None);
        assert_eq!(s.redis.key_prefix, "c2p:");
        assert_eq!(s.shutdown.grace_period, Duration::from_secs(10));
        assert_eq!(s.log.format, LogFormat::Text);
        assert!(s.mastercard.is_none());
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

    #[test]
    fn complete_mastercard_settings_validate() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("signing.pem");
        std::fs::write(&key, "placeholder").unwrap();
        let mut pairs = vec![("C2P_MODE".to_string(), "mastercard".to_string())];
        for api in ["PROCESSING", "ENROLL"] {
            pairs.push((
                format!("C2P_MASTERCARD__{api}__BASE_URL"),
                "https://sandbox.api.mastercard.com/x".into(),
            ));
            pairs.push((
                format!("C2P_MASTERCARD__{api}__CONSUMER_KEY"),
                "ck!abc".into(),
            ));
            pairs.push((
                format!("C2P_MASTERCARD__{api}__SIGNING_KEY_FILE"),
                key.display().to_string(),
            ));
        }
        let s = Settings::load(None, pairs).unwrap();
        assert_eq!(s.log.format, LogFormat::Json);
        let mc = s.mastercard.unwrap();
        assert_eq!(mc.enroll.consumer_key, "ck!abc");
        assert_eq!(mc.processing.signing_key_password_file, None);
    }

    #[test]
    fn redis_url_problems_never_echo_the_url() {
        let err =
            Settings::load(None, env(&[("C2P_REDIS__URL", "http://:hunter2@h")])).unwrap_err();
        assert_eq!(keys(&err), vec!["redis.url"]);
        assert!(!err.to_string().contains("hunter2"));
    }
}
