//! The secret key of the idempotency fingerprints (HMAC-SHA256), so that what the store keeps
//! of a request cannot be matched against guessed e-mail addresses and names.

use secrecy::ExposeSecret as _;
use std::path::Path;

/// The shortest key accepted: HMAC-SHA256's block-size-independent security needs 256 bits.
pub const MIN_KEY_BYTES: usize = 32;

/// An HMAC key, held as ring's precomputed inner and outer pads; its `Debug` shows nothing of
/// it. OpenSSL 3's EVP HMAC (a `PKey` and a `Signer` per call) fetched the algorithm and built
/// its contexts every time: 5.6 µs a 400-byte fingerprint against ring's 0.38 µs (`cargo bench
/// --bench crypto`), and 3% of EnrollCard's service CPU under load (perf).
#[derive(Clone)]
pub struct FingerprintKey(ring::hmac::Key);

impl std::fmt::Debug for FingerprintKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FingerprintKey(..)")
    }
}

impl FingerprintKey {
    /// A fresh random key (sandbox mode: fingerprints then hold for this process only).
    pub fn generate() -> Self {
        Self(hmac_key(&rand::random::<[u8; 32]>()))
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
        // Zeroed when dropped: only the key's pads stay in memory.
        let bytes = secrecy::SecretSlice::from(bytes);
        Ok(Self(hmac_key(bytes.expose_secret())))
    }

    /// Hex HMAC-SHA256 of `data`.
    pub fn fingerprint(&self, data: &[u8]) -> String {
        hex::encode(ring::hmac::sign(&self.0, data).as_ref())
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
    Ok(key.fingerprint(format!("c2p-consumer-v1|{identity}").as_bytes()))
}

fn hmac_key(key: &[u8]) -> ring::hmac::Key {
    ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4231_test_cases_2_and_6() {
        // RFC 4231 §4.3 uses the 4-byte key "Jefe"; the short-key guard is bypassed on purpose.
        let jefe = FingerprintKey(hmac_key(b"Jefe"));
        assert_eq!(
            jefe.fingerprint(b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // §4.7: a 131-byte key, longer than SHA-256's block, is hashed first.
        let long = FingerprintKey::from_bytes(vec![0xaa; 131]).unwrap();
        assert_eq!(
            long.fingerprint(b"Test Using Larger Than Block-Size Key - Hash Key First"),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    /// OpenSSL's EVP HMAC (what fingerprinted before ring did) as the oracle: fingerprints
    /// already in a store must keep matching the requests that made them.
    #[test]
    fn fingerprints_equal_openssl_hmac_sha256() {
        fn openssl_hmac(key: &[u8], data: &[u8]) -> String {
            let key = openssl::pkey::PKey::hmac(key).unwrap();
            let md = openssl::hash::MessageDigest::sha256();
            let mut signer = openssl::sign::Signer::new(md, &key).unwrap();
            signer.update(data).unwrap();
            hex::encode(signer.sign_to_vec().unwrap())
        }
        for key_len in [32, 63, 64, 65, 200] {
            let key: Vec<u8> = (0..key_len).map(|i| (i * 7 + 1) as u8).collect();
            let ours = FingerprintKey::from_bytes(key.clone()).unwrap();
            for data_len in [0, 1, 55, 56, 64, 1000] {
                let data: Vec<u8> = (0..data_len).map(|i| (i * 13) as u8).collect();
                assert_eq!(
                    ours.fingerprint(&data),
                    openssl_hmac(&key, &data),
                    "key {key_len} B, data {data_len} B"
                );
            }
        }
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
            a.fingerprint(b"jane@example.com"),
            b.fingerprint(b"jane@example.com")
        );
        assert_eq!(a.fingerprint(b"x"), a.fingerprint(b"x"));
        // Not the bare SHA-256 of the data.
        assert_ne!(a.fingerprint(b"x"), hex::encode(openssl::sha::sha256(b"x")));
        assert!(FingerprintKey::from_bytes(vec![0; 31]).is_err());
        assert_eq!(format!("{a:?}"), "FingerprintKey(..)");
    }
}
