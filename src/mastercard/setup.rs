//! Builds the two API clients from settings at startup: every key and certificate is read once,
//! and every unreadable one is reported (file and problem) before the service refuses to start.

use super::enroll::EnrollClient;
use super::error::Api;
use super::http::{ApiClient, ApiClientConfig, PayloadEncryption};
use super::jwe::{JweDecryptor, JweEncryptor};
use super::keys::{Certificate, KeyError, KeyProblem, SigningKey};
use super::processing::ProcessingClient;
use super::settings::{ApiSettings, KeyFile, LifecycleFamily, MastercardSettings, ProgramSettings};
use crate::domain::DEFAULT_PROGRAM;
use std::collections::BTreeMap;

/// Certificates expiring within this window are warned about at startup.
const EXPIRY_WARNING: time::Duration = time::Duration::days(30);

/// Why the clients could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// Key or certificate files that could not be loaded.
    #[error("cannot load Mastercard keys:{}", .0.iter().map(|e| format!("\n  - {e}")).collect::<String>())]
    Keys(Vec<KeyError>),
    /// A setting the clients need is missing (a bug in the caller's mode handling).
    #[error("{0}")]
    Missing(String),
    /// The HTTP client could not be built.
    #[error("cannot build the {api} HTTP client: {reason}")]
    Client {
        /// The API.
        api: Api,
        /// Why.
        reason: String,
    },
}

/// The clients of both Mastercard APIs and the Click to Pay programs they serve.
#[derive(Debug)]
pub struct Upstream {
    /// Processing Digital.
    pub processing: ProcessingClient,
    /// The Enroll API.
    pub enroll: EnrollClient,
    /// The programs by name; `default` is always present.
    pub programs: BTreeMap<String, Program>,
}

/// A Click to Pay program, its certificate read.
#[derive(Debug, Clone)]
pub struct Program {
    /// `srcClientId`.
    pub src_client_id: String,
    /// `serviceId`.
    pub service_id: String,
    /// Sent as base64 DER in `Enroll-Client-Encryption-Key`.
    pub enroll_certificate: Certificate,
    /// `complianceSettings.privacy.latestVersionUri`.
    pub privacy_uri: String,
    /// `complianceSettings.tnc.latestVersionUri`.
    pub terms_uri: String,
    /// The family of lifecycle APIs that manages its cards.
    pub lifecycle: LifecycleFamily,
}

/// What a client needs besides its settings: where and as whom.
pub struct Endpoint {
    /// Base URL.
    pub base_url: url::Url,
    /// OAuth consumer key.
    pub consumer_key: String,
    /// OAuth signing key.
    pub signing_key: SigningKey,
}

impl Upstream {
    /// Both clients from mastercard-mode settings (credentials present).
    pub fn from_settings(
        settings: &MastercardSettings,
        program_settings: &BTreeMap<String, ProgramSettings>,
    ) -> Result<Self, SetupError> {
        let mut errors = Vec::new();
        let processing = load_api(Api::Processing, &settings.processing, &mut errors);
        let enroll = load_api(Api::Enroll, &settings.enroll, &mut errors);
        let mut programs = BTreeMap::new();
        for (name, p) in program_settings {
            if let Some(certificate) = load_certificate(
                &p.enroll_encryption_certificate_file,
                "Enroll client encryption certificate",
                &mut errors,
            ) {
                programs.insert(
                    name.clone(),
                    Program {
                        src_client_id: p.src_client_id.clone(),
                        service_id: p.service_id.clone(),
                        enroll_certificate: certificate,
                        privacy_uri: p.privacy_uri.to_string(),
                        terms_uri: p.terms_uri.to_string(),
                        lifecycle: p.lifecycle.clone(),
                    },
                );
            }
        }
        if !errors.is_empty() {
            return Err(SetupError::Keys(errors));
        }
        let (Some(processing), Some(enroll)) = (processing, enroll) else {
            return Err(SetupError::Missing(
                "mastercard credentials are not configured".into(),
            ));
        };
        if !programs.contains_key(DEFAULT_PROGRAM) {
            return Err(SetupError::Missing(
                "programs.default is not configured".into(),
            ));
        }
        Ok(Self {
            processing: ProcessingClient::new(processing?),
            enroll: EnrollClient::new(enroll?),
            programs,
        })
    }
}

type Loaded = Option<Result<ApiClient, SetupError>>;

fn load_api(api: Api, settings: &ApiSettings, errors: &mut Vec<KeyError>) -> Loaded {
    let credentials = settings.credentials.as_ref()?;
    let signing_key = SigningKey::load(
        &credentials.signing_key_file,
        credentials.signing_key_password_file.as_deref(),
    )
    .map_err(|e| errors.push(e))
    .ok();
    let encryption = settings.payload_encryption.as_ref().and_then(|files| {
        let certificate = load_certificate(
            &files.encryption_certificate_file,
            "payload encryption certificate",
            errors,
        )?;
        let mut decryptor = JweDecryptor::new();
        let keys =
            std::iter::once(&files.decryption_key).chain(files.previous_decryption_key.as_ref());
        for key in keys {
            let loaded = load_key(key, errors)?;
            if let Err(e) = decryptor.add(&loaded) {
                errors.push(key_error(&key.file, e.to_string()));
            }
        }
        let public = certificate
            .public_key()
            .map_err(|e| {
                errors.push(KeyError {
                    file: files.encryption_certificate_file.clone(),
                    problem: e,
                })
            })
            .ok()?;
        let encryptor = JweEncryptor::new(&public)
            .map_err(|e| errors.push(key_error(&files.encryption_certificate_file, e.to_string())))
            .ok()?;
        Some(PayloadEncryption {
            encryptor,
            decryptor,
        })
    });
    let extra_ca = settings
        .extra_ca_file
        .as_ref()
        .and_then(|path| load_certificate(path, "extra CA", errors));
    let signing_key = signing_key?;
    if settings.payload_encryption.is_some() && encryption.is_none() {
        return None;
    }
    Some(build_client(
        api,
        settings,
        Endpoint {
            base_url: credentials.base_url.clone(),
            consumer_key: credentials.consumer_key.clone(),
            signing_key,
        },
        encryption,
        extra_ca,
    ))
}

/// One API client from its settings and endpoint (also used by sandbox mode).
pub fn build_client(
    api: Api,
    settings: &ApiSettings,
    endpoint: Endpoint,
    encryption: Option<PayloadEncryption>,
    extra_ca: Option<Certificate>,
) -> Result<ApiClient, SetupError> {
    ApiClient::new(ApiClientConfig {
        api,
        base_url: endpoint.base_url,
        consumer_key: endpoint.consumer_key,
        signing_key: endpoint.signing_key,
        signature_method: settings.signature_method,
        policy: settings.policy.clone(),
        breaker: settings.breaker.clone(),
        encryption,
        extra_ca,
    })
    .map_err(|reason| SetupError::Client { api, reason })
}

fn load_key(key: &KeyFile, errors: &mut Vec<KeyError>) -> Option<SigningKey> {
    SigningKey::load(&key.file, key.password_file.as_deref())
        .map_err(|e| errors.push(e))
        .ok()
}

fn load_certificate(
    path: &std::path::Path,
    what: &str,
    errors: &mut Vec<KeyError>,
) -> Option<Certificate> {
    let certificate = Certificate::load(path).map_err(|e| errors.push(e)).ok()?;
    certificate.warn_if_expiring(what, path, EXPIRY_WARNING);
    Some(certificate)
}

fn key_error(path: &std::path::Path, reason: String) -> KeyError {
    KeyError {
        file: path.to_owned(),
        problem: KeyProblem::Malformed(reason),
    }
}
