//! The settings that decide who can reach the service and what one client can make it hold:
//! `grpc.*` (TLS, limits, reflection), `health.listen` and `auth.*`.

use super::checker::Checker;
use super::{
    AuthSettings, CallerPolicy, GrpcLimits, GrpcSettings, IdentitySource, Mode, Rpc, TlsSettings,
    raw::{RawAuth, RawSettings, Scalar},
};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

pub(super) mod defaults {
    pub const GRPC_LISTEN: &str = "127.0.0.1:50051";
    pub const TLS_RELOAD_INTERVAL: &str = "10s";
    pub const MAX_MESSAGE_BYTES: usize = 16 * 1024;
    pub const MAX_CONCURRENT_STREAMS: u32 = 100;
    pub const MAX_WATCH_STREAMS: usize = 1_000;
    pub const MAX_INGEST_STREAMS: usize = 64;
    pub const HANDSHAKE_TIMEOUT: &str = "10s";
    pub const KEEPALIVE_INTERVAL: &str = "30s";
    pub const KEEPALIVE_TIMEOUT: &str = "10s";
    pub const DEFAULT_DEADLINE: &str = "30s";
    pub const WATCH_HEARTBEAT_INTERVAL: &str = "15s";
    pub const MAX_CONNECTIONS: usize = 1_024;
    pub const MAX_CONNECTION_AGE_GRACE: &str = "30s";
    pub const MESH_HEADER: &str = "x-c2p-caller";
}

/// The value of a socket-address setting that is off when empty (or unset without a default).
pub(super) fn optional_addr(
    c: &mut Checker,
    key: &str,
    value: &Option<Scalar>,
    default: Option<&str>,
) -> Option<SocketAddr> {
    let text = match value {
        Some(Scalar(text)) if text.trim().is_empty() => return None,
        Some(Scalar(text)) => text.trim().to_owned(),
        None => default?.to_owned(),
    };
    match text.parse::<SocketAddr>() {
        Ok(addr) => Some(addr),
        Err(_) => {
            c.problem(
                key,
                format!(
                    "{text:?} is not a socket address such as \"0.0.0.0:8086\" (empty turns it off)"
                ),
            );
            None
        }
    }
}

pub(super) fn validate_grpc(c: &mut Checker, raw: &RawSettings, mode: Mode) -> GrpcSettings {
    c.unknown("grpc.tls", &raw.grpc.tls.unknown);
    c.unknown("grpc.limits", &raw.grpc.limits.unknown);
    let listen_text = Checker::text(&raw.grpc.listen, defaults::GRPC_LISTEN);
    let listen = listen_text.parse::<SocketAddr>().unwrap_or_else(|_| {
        c.problem(
            "grpc.listen",
            format!("{listen_text:?} is not a socket address such as \"0.0.0.0:50051\""),
        );
        SocketAddr::from(([127, 0, 0, 1], 0))
    });
    let reflection = c.boolean(
        "grpc.reflection",
        &raw.grpc.reflection,
        mode == Mode::Sandbox,
    );
    let t = &raw.grpc.tls;
    let cert = c.readable_file("grpc.tls.cert_file", &t.cert_file);
    let key = c.readable_file("grpc.tls.key_file", &t.key_file);
    let client_ca = c.readable_file("grpc.tls.client_ca_file", &t.client_ca_file);
    let reload_interval = c.duration(
        "grpc.tls.reload_interval",
        &t.reload_interval,
        defaults::TLS_RELOAD_INTERVAL,
    );
    let tls = match (cert, key) {
        (Some(cert_file), Some(key_file)) => Some(TlsSettings {
            cert_file,
            key_file,
            client_ca_file: client_ca,
            reload_interval,
        }),
        (None, None) => {
            if client_ca.is_some() {
                c.problem(
                    "grpc.tls.client_ca_file",
                    "needs grpc.tls.cert_file and grpc.tls.key_file (mutual TLS is TLS first)",
                );
            }
            None
        }
        (Some(_), None) => {
            c.problem("grpc.tls.key_file", "required with grpc.tls.cert_file");
            None
        }
        (None, Some(_)) => {
            c.problem("grpc.tls.cert_file", "required with grpc.tls.key_file");
            None
        }
    };
    let l = &raw.grpc.limits;
    let limits = GrpcLimits {
        max_message_bytes: c.number(
            "grpc.limits.max_message_bytes",
            &l.max_message_bytes,
            defaults::MAX_MESSAGE_BYTES,
            1024..=4 * 1024 * 1024,
        ),
        max_concurrent_streams: c.number(
            "grpc.limits.max_concurrent_streams",
            &l.max_concurrent_streams,
            defaults::MAX_CONCURRENT_STREAMS,
            1..=10_000,
        ),
        max_watch_streams: c.number(
            "grpc.limits.max_watch_streams",
            &l.max_watch_streams,
            defaults::MAX_WATCH_STREAMS,
            1..=1_000_000,
        ),
        max_ingest_streams: c.number(
            "grpc.limits.max_ingest_streams",
            &l.max_ingest_streams,
            defaults::MAX_INGEST_STREAMS,
            1..=10_000,
        ),
        handshake_timeout: c.duration(
            "grpc.limits.handshake_timeout",
            &l.handshake_timeout,
            defaults::HANDSHAKE_TIMEOUT,
        ),
        keepalive_interval: c.duration(
            "grpc.limits.keepalive_interval",
            &l.keepalive_interval,
            defaults::KEEPALIVE_INTERVAL,
        ),
        keepalive_timeout: c.duration(
            "grpc.limits.keepalive_timeout",
            &l.keepalive_timeout,
            defaults::KEEPALIVE_TIMEOUT,
        ),
        default_deadline: c.duration(
            "grpc.limits.default_deadline",
            &l.default_deadline,
            defaults::DEFAULT_DEADLINE,
        ),
        watch_heartbeat_interval: {
            let d = c.duration(
                "grpc.limits.watch_heartbeat_interval",
                &l.watch_heartbeat_interval,
                defaults::WATCH_HEARTBEAT_INTERVAL,
            );
            if d < Duration::from_secs(1) {
                c.problem(
                    "grpc.limits.watch_heartbeat_interval",
                    "must be at least 1s",
                );
            }
            d
        },
        max_connections: c.number(
            "grpc.limits.max_connections",
            &l.max_connections,
            defaults::MAX_CONNECTIONS,
            1..=1_000_000,
        ),
        max_connection_age: Checker::optional(&l.max_connection_age)
            .map(|_| c.duration("grpc.limits.max_connection_age", &l.max_connection_age, "")),
        max_connection_age_grace: c.duration(
            "grpc.limits.max_connection_age_grace",
            &l.max_connection_age_grace,
            defaults::MAX_CONNECTION_AGE_GRACE,
        ),
    };
    GrpcSettings {
        listen,
        reflection,
        tls,
        limits,
    }
}

pub(super) fn validate_auth(
    c: &mut Checker,
    raw: &RawAuth,
    mode: Mode,
    grpc: &GrpcSettings,
) -> AuthSettings {
    c.unknown("auth", &raw.unknown);
    let mutual_tls = grpc
        .tls
        .as_ref()
        .is_some_and(|t| t.client_ca_file.is_some());
    let identity = match Checker::optional(&raw.identity).as_deref() {
        None if mutual_tls => IdentitySource::Certificate,
        None => IdentitySource::None,
        Some("none") => IdentitySource::None,
        Some("certificate") => IdentitySource::Certificate,
        Some("mesh_header") => IdentitySource::MeshHeader,
        Some(other) => {
            c.problem(
                "auth.identity",
                format!(
                    "{:?} is not an identity source; use \"certificate\", \"mesh_header\" or \"none\"",
                    super::super::text::excerpt(other)
                ),
            );
            IdentitySource::None
        }
    };
    if identity == IdentitySource::Certificate && !mutual_tls {
        c.problem(
            "auth.identity",
            "\"certificate\" needs mutual TLS: set grpc.tls.cert_file, grpc.tls.key_file and grpc.tls.client_ca_file",
        );
    }
    // A port reachable from other hosts is only acceptable with identified callers: mutual TLS,
    // or a mesh that terminated it. Loopback (a sidecar, a developer's machine) is the exception.
    let loopback = grpc.listen.ip().is_loopback();
    if mode == Mode::Mastercard
        && grpc.tls.is_some()
        && !loopback
        && identity == IdentitySource::None
    {
        c.problem(
            "auth.identity",
            "mastercard mode on a non-loopback address needs authenticated callers: set grpc.tls.client_ca_file (mutual TLS), or auth.identity = \"mesh_header\" when a service mesh terminates mutual TLS",
        );
    }
    // A header is only trustworthy when the mesh is the only way in: a port that terminates
    // TLS for anyone (no client CA) lets anyone set it.
    if identity == IdentitySource::MeshHeader && grpc.tls.is_some() && !mutual_tls && !loopback {
        c.problem(
            "auth.identity",
            "\"mesh_header\" with server-only TLS on a non-loopback address lets any client set the header: add grpc.tls.client_ca_file and auth.mesh_peers so only the mesh's certificates are believed, or serve plaintext to the mesh sidecar",
        );
    }
    let mesh_peers = validate_mesh_peers(c, raw, identity, mutual_tls);
    if mode == Mode::Mastercard
        && grpc.tls.is_none()
        && !loopback
        && identity != IdentitySource::MeshHeader
    {
        c.problem(
            "grpc.listen",
            "a plaintext listener on a non-loopback address is refused in mastercard mode: set grpc.tls.cert_file and grpc.tls.key_file (and client_ca_file), or auth.identity = \"mesh_header\" when a service mesh terminates mutual TLS in front of it",
        );
    }
    let mesh_header = Checker::text(&raw.mesh_header, defaults::MESH_HEADER).to_ascii_lowercase();
    // gRPC metadata names are HTTP/2 header names; `-bin` ones hold bytes, not an identity.
    if http::HeaderName::from_bytes(mesh_header.as_bytes()).is_err()
        || mesh_header.ends_with("-bin")
    {
        c.problem("auth.mesh_header", "is not a valid gRPC metadata name");
    }
    let callers = validate_callers(c, raw, identity);
    match identity {
        IdentitySource::None if !callers.is_empty() => c.problem(
            "auth.callers",
            "a policy needs identified callers: set auth.identity to \"certificate\" or \"mesh_header\"",
        ),
        IdentitySource::Certificate | IdentitySource::MeshHeader if callers.is_empty() => c
            .problem(
                "auth.callers",
                "no caller may call anything: add at least one [auth.callers.<name>] with identity and rpcs",
            ),
        _ => {}
    }
    AuthSettings {
        identity,
        mesh_header,
        mesh_peers,
        callers,
    }
}

/// `auth.mesh_peers`: required with `mesh_header` over mutual TLS. The client CA a mesh's
/// proxies present certificates of usually signs every workload of the mesh too: any of them
/// could reach the port directly and name itself any caller in the header.
fn validate_mesh_peers(
    c: &mut Checker,
    raw: &RawAuth,
    identity: IdentitySource,
    mutual_tls: bool,
) -> BTreeSet<String> {
    let listed = raw
        .mesh_peers
        .as_ref()
        .map(|l| l.0.as_slice())
        .unwrap_or(&[]);
    let mut peers = BTreeSet::new();
    for peer in listed {
        if certificate_identity(peer) && !peer.contains('*') {
            peers.insert(peer.clone());
        } else {
            c.problem(
                "auth.mesh_peers",
                format!(
                    "{:?} is not a certificate identity (a SPIFFE id, or a DNS name without wildcards)",
                    super::super::text::excerpt(peer)
                ),
            );
        }
    }
    match identity {
        IdentitySource::MeshHeader if mutual_tls && listed.is_empty() => c.problem(
            "auth.mesh_peers",
            "required with \"mesh_header\" and grpc.tls.client_ca_file: the identities (SPIFFE id or DNS name) of the mesh proxies' certificates, the only connections whose header is believed (every other client the CA signed could name itself any caller)",
        ),
        IdentitySource::MeshHeader if !mutual_tls && !listed.is_empty() => c.problem(
            "auth.mesh_peers",
            "needs mutual TLS (grpc.tls.client_ca_file): without it no connection has a certificate identity",
        ),
        IdentitySource::None | IdentitySource::Certificate if !listed.is_empty() => c.problem(
            "auth.mesh_peers",
            "only read with auth.identity = \"mesh_header\"",
        ),
        _ => {}
    }
    peers
}

/// Whether a policy identity can ever match a certificate: a SPIFFE id or a DNS name.
fn certificate_identity(identity: &str) -> bool {
    identity.starts_with("spiffe://")
        || (!identity.is_empty()
            && identity
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '*')))
}

fn validate_callers(
    c: &mut Checker,
    raw: &RawAuth,
    source: IdentitySource,
) -> BTreeMap<String, CallerPolicy> {
    let mut callers = BTreeMap::new();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for (name, caller) in &raw.callers {
        let key = |leaf: &str| format!("auth.callers.{name}.{leaf}");
        c.unknown(&format!("auth.callers.{name}"), &caller.unknown);
        let identity = Checker::optional(&caller.identity).unwrap_or_default();
        if identity.is_empty() {
            c.problem(&key("identity"), "required");
        } else if source == IdentitySource::Certificate && !certificate_identity(&identity) {
            c.problem(
                &key("identity"),
                "a certificate names a caller by a SPIFFE id (spiffe://...) or a DNS name; this can never match",
            );
        } else if let Some(other) = seen.insert(identity.clone(), name.clone()) {
            c.problem(
                &key("identity"),
                format!("the same identity is already given to auth.callers.{other}"),
            );
        }
        let mut rpcs = BTreeSet::new();
        for text in caller.rpcs.as_ref().map(|l| l.0.as_slice()).unwrap_or(&[]) {
            match Rpc::from_name(text) {
                Some(rpc) => {
                    rpcs.insert(rpc);
                }
                None => c.problem(
                    &key("rpcs"),
                    format!(
                        "{:?} is not an RPC; use {}",
                        super::super::text::excerpt(text),
                        Rpc::ALL.map(Rpc::name).join(", ")
                    ),
                ),
            }
        }
        if caller.rpcs.as_ref().is_none_or(|l| l.0.is_empty()) {
            c.problem(&key("rpcs"), "required: the RPCs this caller may call");
        }
        let programs = match caller.programs.as_ref().map(|l| &l.0) {
            Some(list) if list.iter().any(|p| p == "*") => None,
            Some(list) => Some(list.iter().cloned().collect::<BTreeSet<_>>()),
            None => Some(BTreeSet::new()),
        };
        let uses_programs = rpcs.iter().any(|r| r.uses_programs());
        if uses_programs && programs.as_ref().is_some_and(BTreeSet::is_empty) {
            c.problem(
                &key("programs"),
                "required with every RPC but NotificationIngest: the programs whose cards it may enroll, see and change (\"*\" for any)",
            );
        }
        callers.insert(
            name.clone(),
            CallerPolicy {
                identity,
                rpcs,
                programs,
            },
        );
    }
    callers
}

/// Every program a caller names must exist: a typo would otherwise refuse everything silently.
/// In sandbox mode the simulator's programs are `default` and `directory`.
pub(super) fn check_caller_programs(
    c: &mut Checker,
    auth: &AuthSettings,
    programs: &BTreeMap<String, super::ProgramSettings>,
    mode: Mode,
) {
    for (name, caller) in &auth.callers {
        for program in caller.programs.iter().flatten() {
            let known = match mode {
                Mode::Sandbox => {
                    program == super::DEFAULT_PROGRAM || program == super::SANDBOX_DIRECTORY_PROGRAM
                }
                Mode::Mastercard => programs.contains_key(program),
            };
            if !known {
                c.problem(
                    &format!("auth.callers.{name}.programs"),
                    format!(
                        "\"{}\" is not a configured program",
                        crate::text::excerpt(program)
                    ),
                );
            }
        }
    }
}
