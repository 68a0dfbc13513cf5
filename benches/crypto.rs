//! The hot crypto of one enrollment: an OAuth 1.0a RSA-SHA256 signature (two per enrollment),
//! a JWE encrypt and a JWE decrypt (payload encryption, the simulator's card object), and the
//! HMAC-SHA256 fingerprints (the idempotency fingerprint and the consumer reference).

// A benchmark fails loudly on broken fixtures; it is test code.
#![allow(clippy::expect_used)]

use c2p_enroll::mastercard::jwe::{JweDecryptor, JweEncryptor};
use c2p_enroll::mastercard::keys::SigningKey;
use c2p_enroll::mastercard::oauth1::{
    Credentials, RandomNonce, SignatureMethod, SystemClock, authorization_header,
};
use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use std::path::Path;

fn key() -> SigningKey {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keys/signing.key.pem");
    SigningKey::load(&path, None).expect("fixture key")
}

const BODY: &[u8] = br#"{"enrollType":"SYNCHRONOUS","synchronousRequest":{"cardholderFullName":"Jane Q. Cardholder"},"cardContractId":70001}"#;

fn signing(c: &mut Criterion) {
    let key = key();
    let uri =
        url::Url::parse("https://api.mastercard.com/global-processing/digital/cards/searches")
            .expect("url");
    for (name, method) in [
        (
            "oauth1_authorization_header_rsa_sha256",
            SignatureMethod::RsaSha256,
        ),
        (
            "oauth1_authorization_header_rsa_pss",
            SignatureMethod::RsaPss,
        ),
    ] {
        let creds = Credentials {
            consumer_key: "consumer-key!0123456789",
            key: &key,
            method,
        };
        c.bench_function(name, |b| {
            b.iter(|| {
                authorization_header(
                    "POST",
                    &uri,
                    black_box(BODY),
                    &creds,
                    &SystemClock,
                    &RandomNonce,
                )
                .expect("sign")
            })
        });
    }
}

fn jwe(c: &mut Criterion) {
    let key = key();
    let encryptor = JweEncryptor::new(&key.public_key().expect("public")).expect("encryptor");
    let mut decryptor = JweDecryptor::new();
    decryptor.add(&key).expect("decryptor");
    let jwe = encryptor.encrypt(BODY).expect("encrypt");
    c.bench_function("jwe_encrypt_rsa_oaep_256_a256gcm", |b| {
        b.iter(|| encryptor.encrypt(black_box(BODY)).expect("encrypt"))
    });
    c.bench_function("jwe_decrypt_rsa_oaep_256_a256gcm", |b| {
        b.iter(|| decryptor.decrypt(black_box(&jwe)).expect("decrypt"))
    });
}

/// The idempotency fingerprint and the consumer reference: two HMAC-SHA256 per EnrollCard.
fn fingerprint(c: &mut Criterion) {
    let key = c2p_enroll::app::FingerprintKey::from_bytes(vec![7; 32]).expect("key");
    let request = [b'x'; 400]; // about a canonical EnrollCard request's size
    c.bench_function("idempotency_fingerprint_hmac_sha256_400b", |b| {
        b.iter(|| key.fingerprint(black_box(&request)))
    });
}

criterion_group!(benches, signing, jwe, fingerprint);
criterion_main!(benches);
