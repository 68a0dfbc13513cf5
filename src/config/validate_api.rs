//! `mastercard.processing.*` and `mastercard.enroll.*`: credentials, key files, timeouts,
//! retries, breaker and payload encryption of one API.

use super::checker::Checker;
use super::raw::{RawApi, RawProgram, Scalar};
use super::{
    ApiCredentials, ApiSettings, DEFAULT_PRIVACY_URI, DEFAULT_PROGRAM, DEFAULT_TERMS_URI, KeyFile,
    Mode, PayloadEncryptionFiles, ProgramSettings,
};
use crate::mastercard::breaker::BreakerConfig;
use crate::mastercard::http::HttpPolicy;
use crate::mastercard::keys::is_pkcs12;
use crate::mastercard::oauth1::SignatureMethod;
use crate::mastercard::settings::LifecycleFamily;
use std::collections::BTreeMap;

/// Defaults of every API's tuning, one place for the README table.
pub(super) mod defaults {
    pub const SIGNATURE_METHOD: &str = "rsa-sha256";
    pub const ATTEMPT_TIMEOUT: &str = "10s";
    pub const CONNECT_TIMEOUT: &str = "3s";
    pub const BUDGET: &str = "30s";
    pub const MAX_ATTEMPTS: u32 = 3;
    pub const INITIAL_BACKOFF: &str = "200ms";
    pub const MAX_BACKOFF: &str = "2s";
    // Resilience4j's defaults.
    pub const BREAKER_FAILURE_RATE_THRESHOLD: f64 = 50.0;
    pub const BREAKER_WINDOW_SIZE: usize = 100;
    pub const BREAKER_MINIMUM_CALLS: usize = 100;
    pub const BREAKER_OPEN_DURATION: &str = "60s";
    pub const BREAKER_HALF_OPEN_CALLS: usize = 10;
}

pub(super) fn validate_api(
    c: &mut Checker,
    section: &str,
    raw: &RawApi,
    mode: Mode,
) -> ApiSettings {
    let key = |name: &str| format!("{section}.{name}");
    c.unknown(section, &raw.unknown);
    c.unknown(&key("breaker"), &raw.breaker.unknown);
    c.unknown(&key("payload_encryption"), &raw.payload_encryption.unknown);

    let signature_method = match Checker::text(&raw.signature_method, defaults::SIGNATURE_METHOD)
        .to_ascii_lowercase()
        .as_str()
    {
        "rsa-sha256" => SignatureMethod::RsaSha256,
        "rsa-pss" => SignatureMethod::RsaPss,
        other => {
            c.problem(
                &key("signature_method"),
                format!("{other:?} is not a signature method; use \"rsa-sha256\" or \"rsa-pss\""),
            );
            SignatureMethod::RsaSha256
        }
    };
    let policy = HttpPolicy {
        attempt_timeout: c.duration(
            &key("attempt_timeout"),
            &raw.attempt_timeout,
            defaults::ATTEMPT_TIMEOUT,
        ),
        connect_timeout: c.duration(
            &key("connect_timeout"),
            &raw.connect_timeout,
            defaults::CONNECT_TIMEOUT,
        ),
        budget: c.duration(&key("budget"), &raw.budget, defaults::BUDGET),
        max_attempts: c.number(
            &key("max_attempts"),
            &raw.max_attempts,
            defaults::MAX_ATTEMPTS,
            1..=10,
        ),
        initial_backoff: c.duration(
            &key("initial_backoff"),
            &raw.initial_backoff,
            defaults::INITIAL_BACKOFF,
        ),
        max_backoff: c.duration(&key("max_backoff"), &raw.max_backoff, defaults::MAX_BACKOFF),
    };
    let b = &raw.breaker;
    let breaker = BreakerConfig {
        failure_rate_threshold: c.number(
            &key("breaker.failure_rate_threshold"),
            &b.failure_rate_threshold,
            defaults::BREAKER_FAILURE_RATE_THRESHOLD,
            1.0..=100.0,
        ),
        window_size: c.number(
            &key("breaker.window_size"),
            &b.window_size,
            defaults::BREAKER_WINDOW_SIZE,
            1..=10_000,
        ),
        minimum_calls: c.number(
            &key("breaker.minimum_calls"),
            &b.minimum_calls,
            defaults::BREAKER_MINIMUM_CALLS,
            1..=10_000,
        ),
        open_duration: c.duration(
            &key("breaker.open_duration"),
            &b.open_duration,
            defaults::BREAKER_OPEN_DURATION,
        ),
        half_open_calls: c.number(
            &key("breaker.half_open_calls"),
            &b.half_open_calls,
            defaults::BREAKER_HALF_OPEN_CALLS,
            1..=1_000,
        ),
    };
    let payload_encryption_enabled = c.boolean(
        &key("payload_encryption.enabled"),
        &raw.payload_encryption.enabled,
        false,
    );
    let extra_ca_file = c.readable_file(&key("extra_ca_file"), &raw.extra_ca_file);

    let (credentials, payload_encryption) = match mode {
        Mode::Sandbox => (None, None),
        Mode::Mastercard => {
            let credentials = validate_credentials(c, section, raw);
            let files = payload_encryption_enabled
                .then(|| validate_payload_encryption(c, section, raw))
                .flatten();
            (credentials, files)
        }
    };
    ApiSettings {
        credentials,
        signature_method,
        policy,
        breaker,
        payload_encryption_enabled,
        payload_encryption,
        extra_ca_file,
    }
}

fn validate_credentials(c: &mut Checker, section: &str, raw: &RawApi) -> Option<ApiCredentials> {
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
    let signing_key = required_key_file(
        c,
        &key("signing_key_file"),
        &raw.signing_key_file,
        &key("signing_key_password_file"),
        &raw.signing_key_password_file,
    );

    if c.problems.len() > before {
        return None;
    }
    let signing_key = signing_key?;
    Some(ApiCredentials {
        base_url: base_url?,
        consumer_key: consumer_key?,
        signing_key_file: signing_key.file,
        signing_key_password_file: signing_key.password_file,
    })
}

fn validate_payload_encryption(
    c: &mut Checker,
    section: &str,
    raw: &RawApi,
) -> Option<PayloadEncryptionFiles> {
    let before = c.problems.len();
    let key = |name: &str| format!("{section}.payload_encryption.{name}");
    let p = &raw.payload_encryption;
    let certificate = c.readable_file(
        &key("encryption_certificate_file"),
        &p.encryption_certificate_file,
    );
    if certificate.is_none() {
        c.problem(
            &key("encryption_certificate_file"),
            "required when payload encryption is enabled",
        );
    }
    let decryption_key = required_key_file(
        c,
        &key("decryption_key_file"),
        &p.decryption_key_file,
        &key("decryption_key_password_file"),
        &p.decryption_key_password_file,
    );
    let previous = Checker::optional(&p.previous_decryption_key_file).and_then(|_| {
        required_key_file(
            c,
            &key("previous_decryption_key_file"),
            &p.previous_decryption_key_file,
            &key("previous_decryption_key_password_file"),
            &p.previous_decryption_key_password_file,
        )
    });
    if c.problems.len() > before {
        return None;
    }
    Some(PayloadEncryptionFiles {
        encryption_certificate_file: certificate?,
        decryption_key: decryption_key?,
        previous_decryption_key: previous,
    })
}

/// A key file that must be set and readable, with a password file required for PKCS#12.
fn required_key_file(
    c: &mut Checker,
    file_key: &str,
    file: &Option<Scalar>,
    password_key: &str,
    password: &Option<Scalar>,
) -> Option<KeyFile> {
    let path = c.readable_file(file_key, file);
    if path.is_none() {
        c.problem(file_key, "required in mastercard mode");
    }
    let password_file = c.readable_file(password_key, password);
    if password_file.is_none() && path.as_deref().is_some_and(is_pkcs12) {
        c.problem(password_key, "required when the key is a PKCS#12 file");
    }
    Some(KeyFile {
        file: path?,
        password_file,
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

/// `programs.<name>.*`; mastercard mode needs at least `programs.default`. In sandbox mode the
/// simulator registers its own default program and these settings are ignored.
pub(super) fn validate_programs(
    c: &mut Checker,
    raw: &BTreeMap<String, RawProgram>,
    mode: Mode,
) -> BTreeMap<String, ProgramSettings> {
    let mut programs = BTreeMap::new();
    if mode == Mode::Sandbox {
        return programs;
    }
    if !raw.contains_key(DEFAULT_PROGRAM) {
        c.problem(
            "programs.default.src_client_id",
            "required in mastercard mode (the program used when a request names none)",
        );
    }
    for (name, p) in raw {
        let key = |field: &str| format!("programs.{name}.{field}");
        c.unknown(&format!("programs.{name}"), &p.unknown);
        let before = c.problems.len();
        let src_client_id = Checker::optional(&p.src_client_id);
        match &src_client_id {
            None => c.problem(&key("src_client_id"), "required"),
            Some(id) if uuid::Uuid::parse_str(id).is_err() => {
                c.problem(&key("src_client_id"), format!("{id:?} is not a UUID"))
            }
            Some(_) => {}
        }
        let service_id = Checker::optional(&p.service_id);
        if service_id.is_none() {
            c.problem(&key("service_id"), "required");
        }
        let certificate = c.readable_file(
            &key("enroll_encryption_certificate_file"),
            &p.enroll_encryption_certificate_file,
        );
        if certificate.is_none() {
            c.problem(&key("enroll_encryption_certificate_file"), "required");
        }
        let mut uri = |field: &str, value: &Option<Scalar>, default: &str| {
            let text = Checker::text(value, default);
            match url::Url::parse(&text) {
                Ok(u) if u.scheme() == "https" => Some(u),
                _ => {
                    c.problem(&key(field), format!("{text:?} is not an https URL"));
                    None
                }
            }
        };
        let privacy_uri = uri("privacy_uri", &p.privacy_uri, DEFAULT_PRIVACY_URI);
        let terms_uri = uri("terms_uri", &p.terms_uri, DEFAULT_TERMS_URI);
        let directory_id = Checker::optional(&p.directory_id);
        let lifecycle = match Checker::text(&p.lifecycle, "legacy").as_str() {
            "legacy" => {
                if directory_id.is_some() {
                    c.problem(
                        &key("directory_id"),
                        "only with lifecycle = \"credential_directory\"",
                    );
                }
                LifecycleFamily::Legacy
            }
            "credential_directory" => match directory_id {
                Some(directory_id) => LifecycleFamily::CredentialDirectory { directory_id },
                None => {
                    c.problem(
                        &key("directory_id"),
                        "required with lifecycle = \"credential_directory\" (the issuer's directory from onboarding)",
                    );
                    LifecycleFamily::Legacy
                }
            },
            other => {
                c.problem(
                    &key("lifecycle"),
                    format!(
                        "{:?} is not a lifecycle family; use \"legacy\" or \"credential_directory\"",
                        crate::text::excerpt(other)
                    ),
                );
                LifecycleFamily::Legacy
            }
        };
        if c.problems.len() > before {
            continue;
        }
        if let (
            Some(src_client_id),
            Some(service_id),
            Some(certificate),
            Some(privacy_uri),
            Some(terms_uri),
        ) = (
            src_client_id,
            service_id,
            certificate,
            privacy_uri,
            terms_uri,
        ) {
            programs.insert(
                name.clone(),
                ProgramSettings {
                    src_client_id,
                    service_id,
                    enroll_encryption_certificate_file: certificate,
                    privacy_uri,
                    terms_uri,
                    lifecycle,
                },
            );
        }
    }
    programs
}
