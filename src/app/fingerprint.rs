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

/// The consumer reference of a consumer: the keyed hash (HMAC-SHA256, hex) of the identity
/// Click to Pay files the profile under, the e-mail address (trimmed, lower case) or, without
/// one, the mobile number (country code and number). The same cardholder gives the same
/// reference on every card; nothing of the identity can be read back from it. It is the
/// Credential Directory `externalConsumerId` the service assigns and an opt-out subject.
pub fn consumer_ref(
    key: &FingerprintKey,
    consumer: &super::ConsumerInput,
) -> Result<String, String> {
    let identity = match (&consumer.email, &consumer.mobile) {
        (Some(email), _) => format!("email:{}", email.trim().to_lowercase()),
        (None, Some((cc, number))) => format!("mobile:{cc}:{number}"),
        (None, None) => return Err("a consumer without e-mail address or mobile number".into()),
    };
    key.fingerprint(format!("c2p-consumer-v1|{identity}").as_bytes())
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
    fn a_consumer_ref_names_the_identity_click_to_pay_files_the_profile_under() {
        let key = FingerprintKey::from_bytes(vec![3; 32]).unwrap();
        let consumer =
            |email: Option<&str>, mobile: Option<(&str, &str)>| super::super::ConsumerInput {
                email: email.map(str::to_owned),
                mobile: mobile.map(|(c, n)| (c.to_owned(), n.to_owned())),
                first_name: None,
                last_name: None,
                country_code: "US".into(),
                language_code: "en".into(),
            };
        let jane = consumer_ref(&key, &consumer(Some("Jane@Example.com"), None)).unwrap();
        // The e-mail address decides (case aside), whatever the mobile number.
        assert_eq!(
            jane,
            consumer_ref(
                &key,
                &consumer(Some("jane@example.com"), Some(("1", "555")))
            )
            .unwrap()
        );
        let mobile = consumer_ref(&key, &consumer(None, Some(("1", "5551234567")))).unwrap();
        assert_ne!(jane, mobile);
        assert_ne!(
            mobile,
            consumer_ref(&key, &consumer(None, Some(("15", "551234567")))).unwrap()
        );
        assert!(!jane.contains("jane") && jane.len() == 64);
        assert!(consumer_ref(&key, &consumer(None, None)).is_err());
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
