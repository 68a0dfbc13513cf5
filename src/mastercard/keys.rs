//! Key material, loaded once at startup: RSA signing keys from PKCS#12 (including the legacy
//! RC2-40/3DES encryption of Mastercard's downloaded `.p12` files) or PEM, and certificates from
//! PEM or DER. Errors name the file and the problem; types print no key material.

use openssl::pkcs12::Pkcs12;
use openssl::pkey::{PKey, Private, Public};
use openssl::x509::X509;
use secrecy::{ExposeSecret, SecretString};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use time::OffsetDateTime;

/// What is wrong with a key or certificate file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyProblem {
    /// The file could not be read.
    #[error("cannot read it: {0}")]
    Unreadable(String),
    /// The password does not open it.
    #[error("wrong password")]
    WrongPassword,
    /// It opened, but holds no private key.
    #[error("it holds no private key")]
    NoPrivateKey,
    /// It holds no certificate.
    #[error("it holds no certificate")]
    NoCertificate,
    /// The key is not RSA.
    #[error("the key is not an RSA key")]
    NotRsa,
    /// It is not in a format we read.
    #[error("not a PKCS#12, PEM or DER file we can read ({0})")]
    Malformed(String),
    /// A PKCS#12 file needs a password and none was configured.
    #[error("a PKCS#12 file needs a password file")]
    PasswordMissing,
}

/// A key or certificate file that could not be loaded, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {problem}", file.display())]
pub struct KeyError {
    /// The file.
    pub file: PathBuf,
    /// The problem.
    pub problem: KeyProblem,
}

/// Whether a key file is PKCS#12, by its extension (`.p12`, `.pfx`).
pub fn is_pkcs12(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("p12") || e.eq_ignore_ascii_case("pfx"))
}

/// Loads OpenSSL 3's legacy provider once (RC2-40 and 3DES live there), keeping the default
/// provider as fallback. The handle must stay alive for the provider to stay loaded.
fn ensure_legacy_provider() {
    static LEGACY: OnceLock<Option<openssl::provider::Provider>> = OnceLock::new();
    LEGACY.get_or_init(|| openssl::provider::Provider::try_load(None, "legacy", true).ok());
}

fn openssl_reason(e: &openssl::error::ErrorStack) -> String {
    e.errors()
        .iter()
        .filter_map(|e| e.reason())
        .collect::<Vec<_>>()
        .join("; ")
}

/// An RSA private key used for OAuth 1.0a request signing (or, in the simulator, decryption).
#[derive(Clone)]
pub struct SigningKey {
    key: PKey<Private>,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey(RSA-{}, redacted)", self.key.bits())
    }
}

impl SigningKey {
    /// Reads `path` (PKCS#12 by extension `.p12`/`.pfx`, otherwise PEM), with the password read
    /// from `password_file` when given (trailing newlines are not part of the password).
    pub fn load(path: &Path, password_file: Option<&Path>) -> Result<Self, KeyError> {
        let err = |problem| KeyError {
            file: path.to_owned(),
            problem,
        };
        let password = password_file.map(read_password).transpose()?;
        let bytes = std::fs::read(path).map_err(|e| err(KeyProblem::Unreadable(e.to_string())))?;
        if is_pkcs12(path) {
            let password = password.ok_or_else(|| err(KeyProblem::PasswordMissing))?;
            Self::from_pkcs12(&bytes, &password).map_err(err)
        } else {
            Self::from_pem(&bytes, password.as_ref()).map_err(err)
        }
    }

    /// A key from PKCS#12 bytes.
    pub fn from_pkcs12(bytes: &[u8], password: &SecretString) -> Result<Self, KeyProblem> {
        ensure_legacy_provider();
        let p12 = Pkcs12::from_der(bytes).map_err(|e| KeyProblem::Malformed(openssl_reason(&e)))?;
        let parsed = p12.parse2(password.expose_secret()).map_err(|e| {
            let reason = openssl_reason(&e);
            if reason.contains("mac verify failure") || reason.contains("bad decrypt") {
                KeyProblem::WrongPassword
            } else {
                KeyProblem::Malformed(reason)
            }
        })?;
        let key = parsed.pkey.ok_or(KeyProblem::NoPrivateKey)?;
        Self::from_pkey(key)
    }

    /// A key from PEM bytes (PKCS#1 or PKCS#8, encrypted when `password` is given).
    pub fn from_pem(bytes: &[u8], password: Option<&SecretString>) -> Result<Self, KeyProblem> {
        let text = String::from_utf8_lossy(bytes);
        if !text.contains("PRIVATE KEY-----") {
            return Err(KeyProblem::NoPrivateKey);
        }
        let key = match password {
            Some(p) => PKey::private_key_from_pem_passphrase(bytes, p.expose_secret().as_bytes()),
            None => PKey::private_key_from_pem(bytes),
        }
        .map_err(|e| {
            let reason = openssl_reason(&e);
            if reason.contains("bad decrypt") || reason.contains("bad password") {
                KeyProblem::WrongPassword
            } else {
                KeyProblem::Malformed(reason)
            }
        })?;
        Self::from_pkey(key)
    }

    /// A fresh RSA-2048 key (the simulator's keys, generated at start).
    pub fn generate() -> Result<Self, KeyProblem> {
        let rsa = openssl::rsa::Rsa::generate(2048)
            .map_err(|e| KeyProblem::Malformed(openssl_reason(&e)))?;
        let key = PKey::from_rsa(rsa).map_err(|e| KeyProblem::Malformed(openssl_reason(&e)))?;
        Ok(Self { key })
    }

    fn from_pkey(key: PKey<Private>) -> Result<Self, KeyProblem> {
        if key.rsa().is_err() {
            return Err(KeyProblem::NotRsa);
        }
        Ok(Self { key })
    }

    /// The matching public key.
    pub fn public_key(&self) -> Result<PublicKey, KeyProblem> {
        let der = self
            .key
            .public_key_to_der()
            .map_err(|e| KeyProblem::Malformed(openssl_reason(&e)))?;
        PublicKey::from_der(&der)
    }

    /// The key as PKCS#8 PEM (the simulator writes its generated keys this way).
    pub fn to_pkcs8_pem(&self) -> Result<SecretString, KeyProblem> {
        let pem = self
            .key
            .private_key_to_pem_pkcs8()
            .map_err(|e| KeyProblem::Malformed(openssl_reason(&e)))?;
        Ok(SecretString::from(
            String::from_utf8_lossy(&pem).into_owned(),
        ))
    }

    pub(crate) fn pkey(&self) -> &PKey<Private> {
        &self.key
    }
}

/// An RSA public key (signature verification, JWE encryption).
#[derive(Clone)]
pub struct PublicKey {
    key: PKey<Public>,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey(RSA-{})", self.key.bits())
    }
}

impl PublicKey {
    /// From DER SubjectPublicKeyInfo.
    pub fn from_der(der: &[u8]) -> Result<Self, KeyProblem> {
        let key = PKey::public_key_from_der(der)
            .map_err(|e| KeyProblem::Malformed(openssl_reason(&e)))?;
        if key.rsa().is_err() {
            return Err(KeyProblem::NotRsa);
        }
        Ok(Self { key })
    }

    /// The DER SubjectPublicKeyInfo.
    pub fn to_der(&self) -> Result<Vec<u8>, KeyProblem> {
        self.key
            .public_key_to_der()
            .map_err(|e| KeyProblem::Malformed(openssl_reason(&e)))
    }

    /// Lowercase hex SHA-256 of the DER SubjectPublicKeyInfo: Mastercard's default JWE `kid`.
    pub fn fingerprint(&self) -> Result<String, KeyProblem> {
        Ok(crate::digest::sha256_hex(&self.to_der()?))
    }

    pub(crate) fn pkey(&self) -> &PKey<Public> {
        &self.key
    }
}

/// An X.509 certificate (the Enroll client encryption certificate, a signing key's certificate).
#[derive(Clone)]
pub struct Certificate {
    x509: X509,
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Certificate(not_after={})", self.x509.not_after())
    }
}

/// How a certificate's validity looks at a given time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Validity {
    /// Valid, and for longer than the warning window.
    Valid,
    /// Valid, but expiring within the warning window.
    ExpiresSoon(OffsetDateTime),
    /// Already expired.
    Expired(OffsetDateTime),
}

impl Certificate {
    /// Reads a PEM or DER certificate from `path`.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let err = |problem| KeyError {
            file: path.to_owned(),
            problem,
        };
        let bytes = std::fs::read(path).map_err(|e| err(KeyProblem::Unreadable(e.to_string())))?;
        Self::from_pem_or_der(&bytes).map_err(err)
    }

    /// A certificate from PEM or DER bytes.
    pub fn from_pem_or_der(bytes: &[u8]) -> Result<Self, KeyProblem> {
        let parsed = if bytes.starts_with(b"-----")
            || String::from_utf8_lossy(bytes).contains("-----BEGIN")
        {
            if !String::from_utf8_lossy(bytes).contains("BEGIN CERTIFICATE") {
                return Err(KeyProblem::NoCertificate);
            }
            X509::from_pem(bytes)
        } else {
            X509::from_der(bytes)
        };
        parsed
            .map(|x509| Self { x509 })
            .map_err(|e| KeyProblem::Malformed(openssl_reason(&e)))
    }

    /// A self-signed certificate for `key` (the simulator's generated certificates).
    pub fn self_signed(key: &SigningKey, common_name: &str, days: u32) -> Result<Self, KeyProblem> {
        use openssl::asn1::Asn1Time;
        use openssl::x509::{X509Builder, X509NameBuilder};
        let malformed = |e: openssl::error::ErrorStack| KeyProblem::Malformed(openssl_reason(&e));
        let mut name = X509NameBuilder::new().map_err(malformed)?;
        name.append_entry_by_text("CN", common_name)
            .map_err(malformed)?;
        let name = name.build();
        let mut builder = X509Builder::new().map_err(malformed)?;
        builder.set_version(2).map_err(malformed)?;
        let serial = openssl::bn::BigNum::from_u32(rand::random::<u32>() >> 1)
            .and_then(|n| n.to_asn1_integer())
            .map_err(malformed)?;
        builder.set_serial_number(&serial).map_err(malformed)?;
        builder.set_subject_name(&name).map_err(malformed)?;
        builder.set_issuer_name(&name).map_err(malformed)?;
        builder.set_pubkey(key.pkey()).map_err(malformed)?;
        let not_before = Asn1Time::days_from_now(0).map_err(malformed)?;
        let not_after = Asn1Time::days_from_now(days).map_err(malformed)?;
        builder.set_not_before(&not_before).map_err(malformed)?;
        builder.set_not_after(&not_after).map_err(malformed)?;
        builder
            .sign(key.pkey(), openssl::hash::MessageDigest::sha256())
            .map_err(malformed)?;
        Ok(Self {
            x509: builder.build(),
        })
    }

    /// The DER encoding.
    pub fn to_der(&self) -> Result<Vec<u8>, KeyProblem> {
        self.x509
            .to_der()
            .map_err(|e| KeyProblem::Malformed(openssl_reason(&e)))
    }

    /// The PEM encoding.
    pub fn to_pem(&self) -> Result<Vec<u8>, KeyProblem> {
        self.x509
            .to_pem()
            .map_err(|e| KeyProblem::Malformed(openssl_reason(&e)))
    }

    /// The certificate's public key.
    pub fn public_key(&self) -> Result<PublicKey, KeyProblem> {
        let key = self
            .x509
            .public_key()
            .map_err(|e| KeyProblem::Malformed(openssl_reason(&e)))?;
        let der = key
            .public_key_to_der()
            .map_err(|e| KeyProblem::Malformed(openssl_reason(&e)))?;
        PublicKey::from_der(&der)
    }

    /// The end of the validity period.
    pub fn not_after(&self) -> Result<OffsetDateTime, KeyProblem> {
        asn1_to_datetime(self.x509.not_after())
    }

    /// The validity at `now`, warning `warn_within` before the end.
    pub fn validity(
        &self,
        now: OffsetDateTime,
        warn_within: time::Duration,
    ) -> Result<Validity, KeyProblem> {
        let end = self.not_after()?;
        Ok(if end <= now {
            Validity::Expired(end)
        } else if end - now <= warn_within {
            Validity::ExpiresSoon(end)
        } else {
            Validity::Valid
        })
    }

    /// Logs a warning when the certificate is expired or expires within `warn_within`; a
    /// certificate's expiry is the operator's to fix, not a reason to refuse to start.
    pub fn warn_if_expiring(&self, what: &str, file: &Path, warn_within: time::Duration) {
        match self.validity(OffsetDateTime::now_utc(), warn_within) {
            Ok(Validity::Valid) => {}
            Ok(Validity::ExpiresSoon(end)) => {
                tracing::warn!(what, file = %file.display(), not_after = %end, "certificate expires soon")
            }
            Ok(Validity::Expired(end)) => {
                tracing::warn!(what, file = %file.display(), not_after = %end, "certificate has expired")
            }
            Err(e) => {
                tracing::warn!(what, file = %file.display(), error = %e, "cannot read the certificate's validity")
            }
        }
    }
}

fn asn1_to_datetime(t: &openssl::asn1::Asn1TimeRef) -> Result<OffsetDateTime, KeyProblem> {
    let epoch = openssl::asn1::Asn1Time::from_unix(0)
        .map_err(|e| KeyProblem::Malformed(openssl_reason(&e)))?;
    let diff = epoch
        .diff(t)
        .map_err(|e| KeyProblem::Malformed(openssl_reason(&e)))?;
    let secs = i64::from(diff.days) * 86_400 + i64::from(diff.secs);
    OffsetDateTime::from_unix_timestamp(secs).map_err(|e| KeyProblem::Malformed(e.to_string()))
}

/// Reads a password file; one trailing line break is not part of the password.
pub fn read_password(path: &Path) -> Result<SecretString, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|e| KeyError {
        file: path.to_owned(),
        problem: KeyProblem::Unreadable(e.to_string()),
    })?;
    let trimmed = text.strip_suffix('\n').unwrap_or(&text);
    let trimmed = trimmed.strip_suffix('\r').unwrap_or(trimmed);
    Ok(SecretString::from(trimmed.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/keys")
            .join(name)
    }

    fn same_key(a: &SigningKey, b: &SigningKey) -> bool {
        a.public_key().unwrap().to_der().unwrap() == b.public_key().unwrap().to_der().unwrap()
    }

    #[test]
    fn legacy_and_modern_pkcs12_and_pem_give_the_same_key() {
        let pem = SigningKey::load(&fixture("signing.key.pem"), None).unwrap();
        let pw = Some(fixture("signing.password"));
        let legacy = SigningKey::load(&fixture("signing-legacy.p12"), pw.as_deref()).unwrap();
        let modern = SigningKey::load(&fixture("signing-modern.p12"), pw.as_deref()).unwrap();
        let encrypted =
            SigningKey::load(&fixture("signing.key.encrypted.pem"), pw.as_deref()).unwrap();
        assert!(same_key(&pem, &legacy));
        assert!(same_key(&pem, &modern));
        assert!(same_key(&pem, &encrypted));
    }

    #[test]
    fn errors_name_the_file_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let wrong = dir.path().join("wrong");
        std::fs::write(&wrong, "not-the-password\n").unwrap();

        let e = SigningKey::load(&fixture("signing-legacy.p12"), Some(&wrong)).unwrap_err();
        assert_eq!(e.problem, KeyProblem::WrongPassword);
        assert!(
            e.to_string().contains("signing-legacy.p12: wrong password"),
            "{e}"
        );

        let e = SigningKey::load(&fixture("signing.key.encrypted.pem"), Some(&wrong)).unwrap_err();
        assert_eq!(e.problem, KeyProblem::WrongPassword);

        let pw = fixture("signing.password");
        let e = SigningKey::load(&fixture("cert-only.p12"), Some(&pw)).unwrap_err();
        assert_eq!(e.problem, KeyProblem::NoPrivateKey);

        let e = SigningKey::load(&fixture("signing.cert.pem"), None).unwrap_err();
        assert_eq!(e.problem, KeyProblem::NoPrivateKey);

        let e = SigningKey::load(&dir.path().join("absent.pem"), None).unwrap_err();
        assert!(matches!(e.problem, KeyProblem::Unreadable(_)), "{e}");
        assert!(e.to_string().contains("absent.pem"));

        let e = SigningKey::load(&fixture("signing-legacy.p12"), None).unwrap_err();
        assert_eq!(e.problem, KeyProblem::PasswordMissing);
    }

    #[test]
    fn debug_prints_no_key_material() {
        let key = SigningKey::load(&fixture("signing.key.pem"), None).unwrap();
        assert_eq!(format!("{key:?}"), "SigningKey(RSA-2048, redacted)");
    }

    #[test]
    fn certificates_load_from_pem_and_der_with_the_signing_keys_public_key() {
        let key = SigningKey::load(&fixture("signing.key.pem"), None).unwrap();
        let pem = Certificate::load(&fixture("signing.cert.pem")).unwrap();
        let der = Certificate::load(&fixture("signing.cert.der")).unwrap();
        assert_eq!(pem.to_der().unwrap(), der.to_der().unwrap());
        assert_eq!(
            pem.public_key().unwrap().to_der().unwrap(),
            key.public_key().unwrap().to_der().unwrap()
        );
        let e = Certificate::load(&fixture("signing.key.pem")).unwrap_err();
        assert_eq!(e.problem, KeyProblem::NoCertificate);
    }

    #[test]
    fn validity_reports_expired_and_expiring_soon() {
        let cert = Certificate::load(&fixture("signing.cert.pem")).unwrap();
        let end = cert.not_after().unwrap();
        let month = time::Duration::days(30);
        assert_eq!(
            cert.validity(end - time::Duration::days(365), month)
                .unwrap(),
            Validity::Valid
        );
        assert_eq!(
            cert.validity(end - time::Duration::days(3), month).unwrap(),
            Validity::ExpiresSoon(end)
        );
        assert_eq!(
            cert.validity(end + time::Duration::days(1), month).unwrap(),
            Validity::Expired(end)
        );
    }

    #[test]
    fn fingerprint_is_lowercase_hex_sha256_of_the_spki() {
        let cert = Certificate::load(&fixture("signing.cert.pem")).unwrap();
        let public = cert.public_key().unwrap();
        let fp = public.fingerprint().unwrap();
        assert_eq!(fp.len(), 64);
        assert!(
            fp.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        // The same value the openssl CLI gives: openssl x509 -pubkey | openssl pkey -pubin -outform DER | sha256sum
        let expected = include_str!("../../tests/fixtures/keys/signing.spki.sha256").trim();
        assert_eq!(fp, expected);
    }
}
