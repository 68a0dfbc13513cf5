//! The simulator's key material: generated at start (embedded mode) or kept in a directory that a
//! separately started service in mastercard mode is configured with (standalone mode).

use crate::mastercard::keys::{Certificate, KeyError, KeyProblem, SigningKey};
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Everything both sides need. The issuer side: the signing keys, the Enroll client encryption
/// certificate and the client payload key. The Mastercard side: their public halves, the
/// Enroll encryption private key and Mastercard's payload key.
#[derive(Debug, Clone)]
pub struct SandboxKeys {
    /// Processing Digital consumer key.
    pub processing_consumer_key: String,
    /// Processing Digital signing key (issuer side).
    pub processing_signing_key: SigningKey,
    /// Enroll API consumer key.
    pub enroll_consumer_key: String,
    /// Enroll API signing key (issuer side).
    pub enroll_signing_key: SigningKey,
    /// Click to Pay's private key for the card object (Mastercard side).
    pub enroll_encryption_key: SigningKey,
    /// Its certificate: what the issuer sends in `Enroll-Client-Encryption-Key`.
    pub enroll_encryption_certificate: Certificate,
    /// Mastercard's payload-encryption key (requests are encrypted for it).
    pub mastercard_payload_key: SigningKey,
    /// Its certificate (issuer side).
    pub mastercard_payload_certificate: Certificate,
    /// The issuer's payload-decryption key (responses are encrypted for it).
    pub client_payload_key: SigningKey,
    /// The registered program.
    pub program: SandboxProgram,
}

/// The Click to Pay program registered in the simulator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxProgram {
    /// `srcClientId` (UUID).
    pub src_client_id: String,
    /// `serviceId`.
    pub service_id: String,
}

#[derive(Serialize, Deserialize)]
struct Manifest {
    processing_consumer_key: String,
    enroll_consumer_key: String,
    program: SandboxProgram,
}

/// File names in a key directory.
pub mod files {
    /// Consumer keys and the program.
    pub const MANIFEST: &str = "sandbox.toml";
    /// Processing signing key (PKCS#8 PEM).
    pub const PROCESSING_SIGNING_KEY: &str = "processing-signing.key.pem";
    /// Enroll signing key.
    pub const ENROLL_SIGNING_KEY: &str = "enroll-signing.key.pem";
    /// Enroll client encryption certificate (the service sends it).
    pub const ENROLL_ENCRYPTION_CERT: &str = "enroll-client-encryption.cert.pem";
    /// Its private key (the simulator's Click to Pay side).
    pub const ENROLL_ENCRYPTION_KEY: &str = "enroll-client-encryption.key.pem";
    /// Mastercard's payload certificate (the service encrypts requests for it).
    pub const MASTERCARD_PAYLOAD_CERT: &str = "payload-mastercard.cert.pem";
    /// Mastercard's payload key (the simulator).
    pub const MASTERCARD_PAYLOAD_KEY: &str = "payload-mastercard.key.pem";
    /// The issuer's payload key (the service decrypts responses with it).
    pub const CLIENT_PAYLOAD_KEY: &str = "payload-client.key.pem";
    /// The service's idempotency fingerprint key (32 random bytes).
    pub const FINGERPRINT_KEY: &str = "fingerprint.key";
    /// `C2P_*` settings for a service in mastercard mode.
    pub const SERVICE_ENV: &str = "service.env";
}

fn generated(what: &str, e: KeyProblem) -> KeyError {
    KeyError {
        file: PathBuf::from(format!("<generated {what}>")),
        problem: e,
    }
}

/// A Mastercard-style consumer key: 48 characters, `!`, 32 hex digits.
fn consumer_key() -> String {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = rand::rng();
    let head: String = (0..48)
        .map(|_| char::from(CHARS[rng.random_range(0..CHARS.len())]))
        .collect();
    let tail: String = (0..16)
        .map(|_| format!("{:02x}", rng.random::<u8>()))
        .collect();
    format!("{head}!{tail}")
}

impl SandboxKeys {
    /// Fresh keys and a fresh program.
    pub fn generate() -> Result<Self, KeyError> {
        let key = |what| SigningKey::generate().map_err(|e| generated(what, e));
        let enroll_encryption_key = key("enroll encryption key")?;
        let mastercard_payload_key = key("payload key")?;
        let cert = |k: &SigningKey, cn: &str| {
            Certificate::self_signed(k, cn, 825).map_err(|e| generated(cn, e))
        };
        Ok(Self {
            processing_consumer_key: consumer_key(),
            processing_signing_key: key("processing signing key")?,
            enroll_consumer_key: consumer_key(),
            enroll_signing_key: key("enroll signing key")?,
            enroll_encryption_certificate: cert(
                &enroll_encryption_key,
                "c2p-enroll simulator card encryption (not Mastercard)",
            )?,
            enroll_encryption_key,
            mastercard_payload_certificate: cert(
                &mastercard_payload_key,
                "c2p-enroll simulator payload encryption (not Mastercard)",
            )?,
            mastercard_payload_key,
            client_payload_key: key("client payload key")?,
            program: SandboxProgram {
                src_client_id: uuid::Uuid::new_v4().to_string(),
                service_id: "C2P_SANDBOX_SERVICE".into(),
            },
        })
    }

    /// The keys in `dir`, or fresh ones written there when it holds none.
    pub fn load_or_create(dir: &Path) -> Result<Self, KeyError> {
        if dir.join(files::MANIFEST).is_file() {
            return Self::load(dir);
        }
        let keys = Self::generate()?;
        keys.write(dir)?;
        Ok(keys)
    }

    /// Reads the keys written by [`SandboxKeys::write`].
    pub fn load(dir: &Path) -> Result<Self, KeyError> {
        let manifest_path = dir.join(files::MANIFEST);
        let text = std::fs::read_to_string(&manifest_path).map_err(|e| KeyError {
            file: manifest_path.clone(),
            problem: KeyProblem::Unreadable(e.to_string()),
        })?;
        let manifest: Manifest = toml::from_str(&text).map_err(|e| KeyError {
            file: manifest_path.clone(),
            problem: KeyProblem::Malformed(e.message().to_owned()),
        })?;
        let key = |name: &str| SigningKey::load(&dir.join(name), None);
        let cert = |name: &str| Certificate::load(&dir.join(name));
        Ok(Self {
            processing_consumer_key: manifest.processing_consumer_key,
            processing_signing_key: key(files::PROCESSING_SIGNING_KEY)?,
            enroll_consumer_key: manifest.enroll_consumer_key,
            enroll_signing_key: key(files::ENROLL_SIGNING_KEY)?,
            enroll_encryption_key: key(files::ENROLL_ENCRYPTION_KEY)?,
            enroll_encryption_certificate: cert(files::ENROLL_ENCRYPTION_CERT)?,
            mastercard_payload_key: key(files::MASTERCARD_PAYLOAD_KEY)?,
            mastercard_payload_certificate: cert(files::MASTERCARD_PAYLOAD_CERT)?,
            client_payload_key: key(files::CLIENT_PAYLOAD_KEY)?,
            program: manifest.program,
        })
    }

    /// Writes every key (private keys with mode 0600) and the manifest into `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), KeyError> {
        let io = |file: &Path, e: std::io::Error| KeyError {
            file: file.to_owned(),
            problem: KeyProblem::Unreadable(e.to_string()),
        };
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let write_key = |name: &str, key: &SigningKey| -> Result<(), KeyError> {
            let path = dir.join(name);
            let pem = key.to_pkcs8_pem().map_err(|e| KeyError {
                file: path.clone(),
                problem: e,
            })?;
            write_private(&path, secrecy::ExposeSecret::expose_secret(&pem).as_bytes())
                .map_err(|e| io(&path, e))
        };
        let write_cert = |name: &str, cert: &Certificate| -> Result<(), KeyError> {
            let path = dir.join(name);
            let pem = cert.to_pem().map_err(|e| KeyError {
                file: path.clone(),
                problem: e,
            })?;
            std::fs::write(&path, pem).map_err(|e| io(&path, e))
        };
        write_key(files::PROCESSING_SIGNING_KEY, &self.processing_signing_key)?;
        write_key(files::ENROLL_SIGNING_KEY, &self.enroll_signing_key)?;
        write_key(files::ENROLL_ENCRYPTION_KEY, &self.enroll_encryption_key)?;
        write_cert(
            files::ENROLL_ENCRYPTION_CERT,
            &self.enroll_encryption_certificate,
        )?;
        write_key(files::MASTERCARD_PAYLOAD_KEY, &self.mastercard_payload_key)?;
        write_cert(
            files::MASTERCARD_PAYLOAD_CERT,
            &self.mastercard_payload_certificate,
        )?;
        write_key(files::CLIENT_PAYLOAD_KEY, &self.client_payload_key)?;
        let manifest = Manifest {
            processing_consumer_key: self.processing_consumer_key.clone(),
            enroll_consumer_key: self.enroll_consumer_key.clone(),
            program: self.program.clone(),
        };
        let path = dir.join(files::MANIFEST);
        let text = toml::to_string(&manifest).map_err(|e| KeyError {
            file: path.clone(),
            problem: KeyProblem::Malformed(e.to_string()),
        })?;
        std::fs::write(&path, text).map_err(|e| io(&path, e))
    }
}

use crate::secret_file::write_private;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_written_to_a_directory_read_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let written = SandboxKeys::load_or_create(dir.path()).unwrap();
        let read = SandboxKeys::load_or_create(dir.path()).unwrap();
        assert_eq!(
            written.processing_consumer_key,
            read.processing_consumer_key
        );
        assert_eq!(written.program, read.program);
        let spki = |k: &SigningKey| k.public_key().unwrap().to_der().unwrap();
        assert_eq!(
            spki(&written.enroll_signing_key),
            spki(&read.enroll_signing_key)
        );
        assert_eq!(
            written.enroll_encryption_certificate.to_der().unwrap(),
            read.enroll_encryption_certificate.to_der().unwrap()
        );
        assert!(
            written
                .processing_consumer_key
                .split('!')
                .next()
                .unwrap()
                .len()
                == 48
        );
    }
}
