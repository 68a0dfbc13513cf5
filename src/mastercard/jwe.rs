//! Mastercard "client-encryption" JWE (`docs/mastercard.md#payload-encryption`) with josekit:
//! encryption RSA-OAEP-256 + A256GCM with `kid` = lowercase hex SHA-256 of the public key's DER
//! SubjectPublicKeyInfo and `cty: application/json`; decryption of A128GCM, A192GCM, A256GCM and
//! A128CBC-HS256 with 12- or 16-byte IVs. A known `kid` picks its key; an unknown or absent one
//! (Mastercard's own libraries ignore `kid`) makes every configured key try in turn, current
//! first, then previous (rotation). Errors never carry the payload.

use super::keys::{KeyProblem, PublicKey, SigningKey};
use josekit::jwe::alg::rsaes::{RsaesJweDecrypter, RsaesJweEncrypter};
use josekit::jwe::{JweDecrypter, JweHeader, RSA_OAEP_256};

/// The only key-management algorithm Mastercard uses.
const ALG: &str = "RSA-OAEP-256";
/// Content encryptions accepted when decrypting.
const ACCEPTED_ENC: [&str; 4] = ["A128GCM", "A192GCM", "A256GCM", "A128CBC-HS256"];

/// Why a JWE could not be made or opened. No variant carries plaintext or ciphertext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JweError {
    /// Not a compact JWE (five base64url parts with a JSON header).
    #[error("not a compact JWE")]
    Malformed,
    /// The header names an algorithm or encryption we do not accept.
    #[error("unsupported JWE algorithm {alg:?} / encryption {enc:?}")]
    Unsupported {
        /// `alg` from the header.
        alg: Option<String>,
        /// `enc` from the header.
        enc: Option<String>,
    },
    /// The `kid` is absent or matches none of the configured decryption keys, and none of them
    /// opens the JWE.
    #[error("no decryption key for kid {0:?}")]
    UnknownKid(Option<String>),
    /// The key does not unwrap the CEK, or the tag, IV, header or ciphertext was altered.
    #[error("JWE decryption failed (wrong key or altered JWE)")]
    DecryptFailed,
    /// Encryption failed (key unusable).
    #[error("JWE encryption failed")]
    EncryptFailed,
    /// A key could not be used for JWE.
    #[error("key unusable for JWE: {0}")]
    Key(#[from] KeyProblem),
}

/// Encrypts for one recipient public key.
pub struct JweEncryptor {
    encrypter: RsaesJweEncrypter,
    kid: String,
    enc: &'static str,
}

impl std::fmt::Debug for JweEncryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JweEncryptor(kid={})", self.kid)
    }
}

impl JweEncryptor {
    /// An encryptor for `public_key`, whose `kid` is its SPKI fingerprint.
    pub fn new(public_key: &PublicKey) -> Result<Self, JweError> {
        let kid = public_key.fingerprint()?;
        Self::with_kid(public_key, kid)
    }

    /// An encryptor with an explicit `kid` (a fingerprint supplied by Mastercard).
    pub fn with_kid(public_key: &PublicKey, kid: String) -> Result<Self, JweError> {
        let encrypter = RSA_OAEP_256
            .encrypter_from_der(public_key.to_der()?)
            .map_err(|_| JweError::EncryptFailed)?;
        Ok(Self {
            encrypter,
            kid,
            enc: "A256GCM",
        })
    }

    /// Uses A128GCM instead of A256GCM (as SRC card encryption does).
    pub fn a128gcm(mut self) -> Self {
        self.enc = "A128GCM";
        self
    }

    /// The `kid` written in the header.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Compact JWE of `plaintext` (a JSON document): RSA-OAEP-256, A256GCM by default.
    pub fn encrypt(&self, plaintext: &[u8]) -> Result<String, JweError> {
        let mut header = JweHeader::new();
        header.set_key_id(self.kid.clone());
        header.set_content_type("application/json");
        header.set_content_encryption(self.enc);
        josekit::jwe::serialize_compact(plaintext, &header, &self.encrypter)
            .map_err(|_| JweError::EncryptFailed)
    }
}

/// Decrypts with one of several private keys: the one the header's `kid` names, or else each in
/// the order added.
#[derive(Default)]
pub struct JweDecryptor {
    /// `(kid, key)` in the order added: the current key first, then the previous one.
    keys: Vec<(String, RsaesJweDecrypter)>,
}

impl std::fmt::Debug for JweDecryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JweDecryptor")
            .field("kids", &self.kids().collect::<Vec<_>>())
            .finish()
    }
}

impl JweDecryptor {
    /// No keys yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `key` under its SPKI fingerprint as `kid`. Add the current key first: keys are tried
    /// in the order added when a JWE's `kid` names none of them.
    pub fn add(&mut self, key: &SigningKey) -> Result<String, JweError> {
        let kid = key.public_key()?.fingerprint()?;
        self.add_with_kid(key, kid.clone())?;
        Ok(kid)
    }

    /// Adds `key` under an explicit `kid` (replacing a key added under the same `kid`).
    pub fn add_with_kid(&mut self, key: &SigningKey, kid: String) -> Result<(), JweError> {
        let der = key
            .pkey()
            .private_key_to_pkcs8()
            .map_err(|e| JweError::Key(KeyProblem::Malformed(e.to_string())))?;
        let decrypter = RSA_OAEP_256
            .decrypter_from_der(der)
            .map_err(|_| JweError::Key(KeyProblem::NotRsa))?;
        match self.keys.iter_mut().find(|(k, _)| *k == kid) {
            Some(slot) => slot.1 = decrypter,
            None => self.keys.push((kid, decrypter)),
        }
        Ok(())
    }

    /// The configured `kid`s, in the order the keys are tried.
    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|(kid, _)| kid.as_str())
    }

    /// The plaintext of a compact JWE. A known `kid` picks its key, and only that key; an
    /// unknown or absent `kid` makes each key try in turn (current first).
    pub fn decrypt(&self, compact: &str) -> Result<Vec<u8>, JweError> {
        let header = peek_header(compact)?;
        let alg = header.algorithm().map(str::to_owned);
        let enc = header.content_encryption().map(str::to_owned);
        if alg.as_deref() != Some(ALG) || !enc.as_deref().is_some_and(|e| ACCEPTED_ENC.contains(&e))
        {
            return Err(JweError::Unsupported { alg, enc });
        }
        let kid = header.key_id().map(str::to_owned);
        let named = kid
            .as_deref()
            .and_then(|kid| self.keys.iter().find(|(k, _)| k == kid));
        if let Some((_, decrypter)) = named {
            return open_with(compact, decrypter);
        }
        self.keys
            .iter()
            .find_map(|(_, decrypter)| open_with(compact, decrypter).ok())
            .ok_or(JweError::UnknownKid(kid))
    }
}

fn open_with(compact: &str, decrypter: &RsaesJweDecrypter) -> Result<Vec<u8>, JweError> {
    let (plaintext, _) = josekit::jwe::deserialize_compact_with_selector(compact, |_| {
        Ok(Some(decrypter as &dyn JweDecrypter))
    })
    .map_err(|_| JweError::DecryptFailed)?;
    Ok(plaintext)
}

/// The protected header of a compact JWE, without decrypting it.
fn peek_header(compact: &str) -> Result<JweHeader, JweError> {
    use base64::Engine as _;
    let parts: Vec<&str> = compact.split('.').collect();
    if parts.len() != 5 {
        return Err(JweError::Malformed);
    }
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(parts[0])
        .map_err(|_| JweError::Malformed)?;
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&json).map_err(|_| JweError::Malformed)?;
    JweHeader::from_map(map).map_err(|_| JweError::Malformed)
}

/// The JSON field of Mastercard's payload-encryption envelope.
pub const ENVELOPE_FIELD: &str = "encryptedValue";

/// `{"encryptedValue":"<JWE of body>"}`: the whole body encrypted (encryption path `$`).
pub fn seal_envelope(encryptor: &JweEncryptor, body: &[u8]) -> Result<Vec<u8>, JweError> {
    let jwe = encryptor.encrypt(body)?;
    serde_json::to_vec(&serde_json::json!({ ENVELOPE_FIELD: jwe }))
        .map_err(|_| JweError::EncryptFailed)
}

/// The body inside `{"encryptedValue":"<JWE>"}` (decryption path `$.encryptedValue` → `$`).
pub fn open_envelope(decryptor: &JweDecryptor, body: &[u8]) -> Result<Vec<u8>, JweError> {
    #[derive(serde::Deserialize)]
    struct Envelope {
        #[serde(rename = "encryptedValue")]
        encrypted_value: String,
    }
    let envelope: Envelope = serde_json::from_slice(body).map_err(|_| JweError::Malformed)?;
    decryptor.decrypt(&envelope.encrypted_value)
}

#[cfg(test)]
mod tests;
