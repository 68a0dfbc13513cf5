//! The raw settings layer: every leaf is an optional scalar kept as text, so that loading never
//! stops at the first bad value and validation can report them all.

use super::{ConfigError, ENV_PREFIX, Problem};
use figment::{
    Figment,
    providers::{Format, Serialized, Toml},
    value::{Dict, Tag, Value},
};
use serde::{Deserialize, Deserializer};
use std::{collections::BTreeMap, path::Path};

/// A scalar setting as written (TOML value or environment text), kept as a string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Scalar(pub String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_owned()))
            }
            fn visit_bool<E>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// Keys present in the sources that no setting has: reported as unknown (typos, old names).
pub(super) type Unknown = BTreeMap<String, Value>;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawSettings {
    pub mode: Option<Scalar>,
    pub grpc: RawGrpc,
    pub redis: RawRedis,
    pub store: RawStore,
    pub enroll: RawEnroll,
    pub health: RawHealth,
    pub metrics: RawMetrics,
    pub shutdown: RawShutdown,
    pub log: RawLog,
    pub auth: RawAuth,
    pub notifications: RawNotifications,
    pub mastercard: RawMastercard,
    pub programs: BTreeMap<String, RawProgram>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawProgram {
    pub src_client_id: Option<Scalar>,
    pub service_id: Option<Scalar>,
    pub enroll_encryption_certificate_file: Option<Scalar>,
    pub privacy_uri: Option<Scalar>,
    pub terms_uri: Option<Scalar>,
    pub lifecycle: Option<Scalar>,
    pub directory_id: Option<Scalar>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawGrpc {
    pub listen: Option<Scalar>,
    pub reflection: Option<Scalar>,
    pub tls: RawTls,
    pub limits: RawLimits,
    #[serde(flatten)]
    pub unknown: Unknown,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawTls {
    pub cert_file: Option<Scalar>,
    pub key_file: Option<Scalar>,
    pub client_ca_file: Option<Scalar>,
    pub reload_interval: Option<Scalar>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawLimits {
    pub max_message_bytes: Option<Scalar>,
    pub max_concurrent_streams: Option<Scalar>,
    pub max_watch_streams: Option<Scalar>,
    pub max_ingest_streams: Option<Scalar>,
    pub handshake_timeout: Option<Scalar>,
    pub keepalive_interval: Option<Scalar>,
    pub keepalive_timeout: Option<Scalar>,
    pub default_deadline: Option<Scalar>,
    pub watch_heartbeat_interval: Option<Scalar>,
    pub max_connections: Option<Scalar>,
    pub max_connection_age: Option<Scalar>,
    pub max_connection_age_grace: Option<Scalar>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawNotifications {
    pub max_future_skew: Option<Scalar>,
    pub max_age: Option<Scalar>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawAuth {
    pub identity: Option<Scalar>,
    pub mesh_header: Option<Scalar>,
    pub mesh_peers: Option<List>,
    pub callers: BTreeMap<String, RawCaller>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawCaller {
    pub identity: Option<Scalar>,
    pub rpcs: Option<List>,
    pub programs: Option<List>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

/// A list setting: a TOML array, or comma-separated text (as environment variables give it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct List(pub Vec<String>);

impl<'de> Deserialize<'de> for List {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Many(Vec<Scalar>),
            One(Scalar),
        }
        let items = match Either::deserialize(d)? {
            Either::Many(items) => items.into_iter().map(|s| s.0).collect(),
            Either::One(Scalar(text)) => text.split(',').map(str::to_owned).collect::<Vec<_>>(),
        };
        Ok(List(
            items
                .into_iter()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
        ))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawRedis {
    pub url: Option<Scalar>,
    pub username: Option<Scalar>,
    pub password_file: Option<Scalar>,
    pub ca_file: Option<Scalar>,
    pub key_prefix: Option<Scalar>,
    pub connect_timeout: Option<Scalar>,
    pub response_timeout: Option<Scalar>,
    pub cluster: Option<Scalar>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawStore {
    pub enrollment_ttl: Option<Scalar>,
    pub not_enrolled_ttl: Option<Scalar>,
    pub memory_max_entries: Option<Scalar>,
    pub notification_dedup_ttl: Option<Scalar>,
    pub idempotency_ttl: Option<Scalar>,
    pub cache_size: Option<Scalar>,
    pub cache_max_age: Option<Scalar>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawEnroll {
    pub lease: Option<Scalar>,
    pub fingerprint_key_file: Option<Scalar>,
    pub reconcile_interval: Option<Scalar>,
    pub reconcile_after: Option<Scalar>,
    pub lifecycle_check_interval: Option<Scalar>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawMetrics {
    pub listen: Option<Scalar>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawHealth {
    pub listen: Option<Scalar>,
    pub check_interval: Option<Scalar>,
    pub check_timeout: Option<Scalar>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawShutdown {
    pub grace_period: Option<Scalar>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawLog {
    pub filter: Option<Scalar>,
    pub format: Option<Scalar>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawMastercard {
    pub processing: RawApi,
    pub enroll: RawApi,
    #[serde(flatten)]
    pub unknown: Unknown,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawApi {
    pub base_url: Option<Scalar>,
    pub consumer_key: Option<Scalar>,
    pub signing_key_file: Option<Scalar>,
    pub signing_key_password_file: Option<Scalar>,
    pub signature_method: Option<Scalar>,
    pub attempt_timeout: Option<Scalar>,
    pub connect_timeout: Option<Scalar>,
    pub budget: Option<Scalar>,
    pub max_attempts: Option<Scalar>,
    pub initial_backoff: Option<Scalar>,
    pub max_backoff: Option<Scalar>,
    pub extra_ca_file: Option<Scalar>,
    pub breaker: RawBreaker,
    pub payload_encryption: RawPayloadEncryption,
    #[serde(flatten)]
    pub unknown: Unknown,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawBreaker {
    pub failure_rate_threshold: Option<Scalar>,
    pub window_size: Option<Scalar>,
    pub minimum_calls: Option<Scalar>,
    pub open_duration: Option<Scalar>,
    pub half_open_calls: Option<Scalar>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawPayloadEncryption {
    pub enabled: Option<Scalar>,
    pub encryption_certificate_file: Option<Scalar>,
    pub decryption_key_file: Option<Scalar>,
    pub decryption_key_password_file: Option<Scalar>,
    pub previous_decryption_key_file: Option<Scalar>,
    pub previous_decryption_key_password_file: Option<Scalar>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

impl RawSettings {
    pub(super) fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<RawSettings, ConfigError> {
        let mut figment = Figment::new();
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError {
                    problems: vec![Problem {
                        key: "--config".into(),
                        message: format!("{} is not a readable file", path.display()),
                    }],
                });
            }
            figment = figment.merge(Toml::file(path));
        }
        figment = figment.merge(Serialized::globals(env_dict(env)));
        figment.extract().map_err(|e| ConfigError {
            problems: e
                .into_iter()
                .map(|e| Problem {
                    key: if e.path.is_empty() {
                        "--config".into()
                    } else {
                        e.path.join(".")
                    },
                    message: e.kind.to_string(),
                })
                .collect(),
        })
    }
}

/// The process environment's `C2P_` variables, for [`super::Settings::load`].
pub fn env_pairs() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect()
}

/// Whether `name` has the shape of a Kubernetes service-link variable (`<SVC>_SERVICE_HOST`,
/// `<SVC>_SERVICE_PORT[_<NAME>]`, `<SVC>_PORT[_<N>_<PROTO>[_PROTO|_PORT|_ADDR]]`), which a
/// kubelet injects for every Service of the namespace: a Service named `c2p-…` makes `C2P_…`
/// names. No setting ends that way, so they are skipped whatever the Service is called.
pub(super) fn is_service_link(name: &str) -> bool {
    // The Service's part: a Service name ends with a letter or a digit, never `-`, so a name
    // whose part before the suffix ends with `_` (`C2P_HEALTH__PORT`) is no service link but a
    // setting's name (a mistyped one is then refused, not skipped).
    let ends_like_a_service = |prefix: &str| prefix.ends_with(|c: char| c.is_ascii_alphanumeric());
    let service_part_before = |suffix_len: usize| {
        name.len()
            .checked_sub(suffix_len)
            .and_then(|end| name.get(..end))
            .is_some_and(ends_like_a_service)
    };
    for suffix in ["_SERVICE_HOST", "_SERVICE_PORT", "_PORT"] {
        if name.ends_with(suffix) && service_part_before(suffix.len()) {
            return true;
        }
    }
    if let Some(at) = name.find("_SERVICE_PORT_")
        && ends_like_a_service(&name[..at])
    {
        return true;
    }
    let parts: Vec<&str> = name.rsplit('_').collect();
    // parts are reversed: [PROTO, N, "PORT", ...] or [PROTO|PORT|ADDR, PROTO, N, "PORT", ...]
    let is_proto = |p: &str| matches!(p, "TCP" | "UDP" | "SCTP");
    let is_number = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    match parts.as_slice() {
        [proto, n, "PORT", ..] if is_proto(proto) && is_number(n) => {
            service_part_before(proto.len() + n.len() + "_PORT__".len())
        }
        [last, proto, n, "PORT", ..]
            if matches!(*last, "PROTO" | "PORT" | "ADDR") && is_proto(proto) && is_number(n) =>
        {
            service_part_before(last.len() + proto.len() + n.len() + "_PORT___".len())
        }
        _ => false,
    }
}

/// Nests `C2P_A__B=v` as `{a: {b: "v"}}`; variables without the prefix, and service links, are
/// skipped.
fn env_dict(env: impl IntoIterator<Item = (String, String)>) -> Dict {
    let mut root = Dict::new();
    for (key, value) in env {
        if is_service_link(&key) {
            continue;
        }
        let Some(rest) = key.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let path: Vec<String> = rest.split("__").map(str::to_lowercase).collect();
        insert(&mut root, &path, value);
    }
    root
}

fn insert(dict: &mut Dict, path: &[String], value: String) {
    match path {
        [] => {}
        [leaf] => {
            dict.insert(leaf.clone(), Value::from(value));
        }
        [head, rest @ ..] => {
            let entry = dict
                .entry(head.clone())
                .or_insert_with(|| Value::Dict(Tag::Default, Dict::new()));
            if !matches!(entry, Value::Dict(..)) {
                *entry = Value::Dict(Tag::Default, Dict::new());
            }
            if let Value::Dict(_, inner) = entry {
                insert(inner, rest, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a kubelet injects for a Service `name` with a port 50051 named `grpc` (TCP).
    fn service_links(name: &str) -> Vec<String> {
        let svc = name.to_uppercase().replace('-', "_");
        [
            "_SERVICE_HOST",
            "_SERVICE_PORT",
            "_SERVICE_PORT_GRPC",
            "_PORT",
            "_PORT_50051_TCP",
            "_PORT_50051_TCP_PROTO",
            "_PORT_50051_TCP_PORT",
            "_PORT_50051_TCP_ADDR",
        ]
        .iter()
        .map(|suffix| format!("{svc}{suffix}"))
        .collect()
    }

    #[test]
    fn service_links_of_any_service_name_are_skipped() {
        // The chart's own Service, a Redis beside it, and names built to look like settings.
        for service in [
            "c2p-enroll",
            "c2p-redis",
            "c2p--grpc",
            "c2p-grpc--listen",
            "c2p-mode",
        ] {
            for name in service_links(service) {
                assert!(is_service_link(&name), "{name}");
                assert!(
                    env_dict([(name.clone(), "10.0.0.1".to_owned())]).is_empty(),
                    "{name}"
                );
            }
        }
        // Settings, and names a mistyped setting could have: no Service makes them.
        for setting in [
            "C2P_MODE",
            "C2P_GRPC__LISTEN",
            "C2P_HEALTH__LISTEN",
            "C2P_REDIS__URL",
            "C2P_HEALTH__PORT",
            "C2P_METRICS__PORT",
            "C2P_GRPC__PORT_50051_TCP",
            "C2P_GRPC__PORT_50051_TCP_ADDR",
        ] {
            assert!(!is_service_link(setting), "{setting}");
        }
        // No Service part at all: not one, and no panic.
        assert!(!is_service_link("PORT_1_TCP"));
    }
}
