//! The secret key of the idempotency fingerprints (HMAC-SHA256), so that what the store keeps
//! of a request cannot be matched against guessed e-mail addresses and names.

use secrecy::{ExposeSecret as _, SecretSlice};
use std::path::Path;

/// The shortest key accepted: HMAC-SHA256's block-size-independent security needs 256 bits.
pub const MIN_KEY_BYTES: usize = 32;

/// An HMAC key; its `Debug` shows nothing of it.
#[derive(Clone)]
pub struct FingerprintKey(SecretSlice<u8>);

impl std::fmt::Debug for FingerprintKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FingerprintKey(..)")
    }
}

impl FingerprintKey {
    /// A fresh random key (sandbox mode: fingerprints then hold for this process only).
    pub fn generate() -> Self {
        Self(SecretSlice::from(rand::random::<[u8; 32]>().to_vec()))
    }

    /// The key in `path` (its bytes as they are); at least 32 bytes.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let bytes =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::from_bytes(bytes).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// A key of these bytes; at least 32 of them.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, String> {
        if bytes.len() < MIN_KEY_BYTES {
            return Err(format!(
                "holds {} bytes; a fingerprint key needs at least {MIN_KEY_BYTES} (e.g. `openssl rand -out FILE 32`)",
                bytes.len()
            ));
        }
        Ok(Self(SecretSlice::from(bytes)))
    }

    /// Hex HMAC-SHA256 of `data`. An OpenSSL failure is an error, never an empty fingerprint
    /// (which would make every request look like every other).
    pub fn fingerprint(&self, data: &[u8]) -> Result<String, String> {
        hmac_sha256(self.0.expose_secret(), data)
            .map(hex::encode)
            .map_err(|e| format!("HMAC-SHA256 failed: {e}"))
    }
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Result<Vec<u8>, openssl::error::ErrorStack> {
    let key = openssl::pkey::PKey::hmac(key)?;
    let mut signer = openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), &key)?;
    signer.update(data)?;
    signer.sign_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4231_test_case_2() {
        // RFC 4231 §4.3 uses the 4-byte key "Jefe"; the short-key guard is bypassed on purpose.
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?").unwrap();
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn keys_change_fingerprints_and_short_keys_are_refused() {
        let a = FingerprintKey::from_bytes(vec![1; 32]).unwrap();
        let b = FingerprintKey::from_bytes(vec![2; 32]).unwrap();
        assert_ne!(
            a.fingerprint(b"jane@example.com").unwrap(),
            b.fingerprint(b"jane@example.com").unwrap()
        );
        assert_eq!(a.fingerprint(b"x"), a.fingerprint(b"x"));
        // Not the bare SHA-256 of the data.
        assert_ne!(
            a.fingerprint(b"x").unwrap(),
            hex::encode(openssl::sha::sha256(b"x"))
        );
        assert!(FingerprintKey::from_bytes(vec![0; 31]).is_err());
        assert_eq!(format!("{a:?}"), "FingerprintKey(..)");
    }
}
