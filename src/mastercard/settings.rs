//! The settings of the Mastercard adapter, in its own words: the config layer fills them in
//! (from files and the environment) and the adapter never reads the configuration itself.

use super::breaker::BreakerConfig;
use super::http::HttpPolicy;
use super::oauth1::SignatureMethod;
use std::path::PathBuf;

/// `mastercard.*`: the two upstream APIs.
#[derive(Debug, Clone)]
pub struct MastercardSettings {
    /// `mastercard.processing.*`: Mastercard Processing Digital.
    pub processing: ApiSettings,
    /// `mastercard.enroll.*`: the Click to Pay Enroll API.
    pub enroll: ApiSettings,
}

/// `programs.<name>.*`: one Click to Pay program from onboarding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramSettings {
    /// `src_client_id`: the program's `srcClientId` (UUID).
    pub src_client_id: String,
    /// `service_id`: the program's `serviceId`.
    pub service_id: String,
    /// `enroll_encryption_certificate_file`: the Enroll client encryption certificate (PEM or
    /// DER), sent to Processing in `Enroll-Client-Encryption-Key`.
    pub enroll_encryption_certificate_file: PathBuf,
    /// `privacy_uri`: `complianceSettings.privacy.latestVersionUri`.
    pub privacy_uri: url::Url,
    /// `terms_uri`: `complianceSettings.tnc.latestVersionUri`.
    pub terms_uri: url::Url,
    /// `lifecycle` (+ `directory_id`): which of Click to Pay's lifecycle API families manages
    /// the program's enrolled cards.
    pub lifecycle: LifecycleFamily,
}

/// Which family of Click to Pay's lifecycle APIs manages a program's cards
/// (`docs/lifecycle.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LifecycleFamily {
    /// `legacy`: the APIs keyed by Click to Pay's ids (`srcConsumerId`, `srcDigitalCardId`).
    Legacy,
    /// `credential_directory`: the Credential Directory, keyed by the issuer's ids
    /// (`externalConsumerId`, `externalCredentialId`) within the issuer's directory.
    CredentialDirectory {
        /// `directory_id`: the issuer's directory, from onboarding.
        directory_id: String,
    },
}

/// The settings of one Mastercard API.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// Where and as whom to call: required in mastercard mode, `None` in sandbox mode (the
    /// simulator provides them).
    pub credentials: Option<ApiCredentials>,
    /// `signature_method`: `rsa-sha256` (default) or `rsa-pss`.
    pub signature_method: SignatureMethod,
    /// `attempt_timeout`, `connect_timeout`, `budget`, `max_attempts`, `initial_backoff`,
    /// `max_backoff`.
    pub policy: HttpPolicy,
    /// `breaker.*`.
    pub breaker: BreakerConfig,
    /// `payload_encryption.enabled`: seal requests / open responses as `{"encryptedValue":…}`.
    pub payload_encryption_enabled: bool,
    /// `payload_encryption.*` files (mastercard mode, when enabled).
    pub payload_encryption: Option<PayloadEncryptionFiles>,
    /// `extra_ca_file`: an extra trusted CA certificate (PEM or DER).
    pub extra_ca_file: Option<PathBuf>,
}

/// Base URL and OAuth credentials of one API. Secrets are paths to files, never values.
#[derive(Debug, Clone)]
pub struct ApiCredentials {
    /// `base_url`: the API's base URL (https, or http on a loopback host for the simulator).
    pub base_url: url::Url,
    /// `consumer_key`: the OAuth 1.0a consumer key from Mastercard Developers.
    pub consumer_key: String,
    /// `signing_key_file`: the signing key, PKCS#12 (`.p12`/`.pfx`) or PEM.
    pub signing_key_file: PathBuf,
    /// `signing_key_password_file`: a file holding the signing key's password.
    pub signing_key_password_file: Option<PathBuf>,
}

/// `payload_encryption.*`: the files of Mastercard payload encryption.
#[derive(Debug, Clone)]
pub struct PayloadEncryptionFiles {
    /// `encryption_certificate_file`: Mastercard's certificate that requests are encrypted for.
    pub encryption_certificate_file: PathBuf,
    /// `decryption_key_file` (+ `decryption_key_password_file`): the key responses are
    /// encrypted for.
    pub decryption_key: KeyFile,
    /// `previous_decryption_key_file` (+ password): the key being rotated out, still accepted.
    pub previous_decryption_key: Option<KeyFile>,
}

/// A private key file and its optional password file.
#[derive(Debug, Clone)]
pub struct KeyFile {
    /// The key (PKCS#12 or PEM).
    pub file: PathBuf,
    /// Its password.
    pub password_file: Option<PathBuf>,
}
