//! JWE round trips between our encryptor and decryptor, and against a reference encryptor that
//! follows Mastercard's client-encryption-java algorithm step by step with plain OpenSSL calls
//! (16-byte IVs by default, header in their order).

use super::*;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use openssl::md::Md;
use openssl::pkey_ctx::PkeyCtx;
use openssl::rsa::Padding;
use openssl::symm::{Cipher, encrypt_aead};
use std::path::Path;

const PAYLOAD: &[u8] = br#"{"primaryAccountNumber":"5186001700009726","panExpirationMonth":"12","panExpirationYear":"2030"}"#;

fn fixture_key() -> SigningKey {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keys");
    SigningKey::load(&dir.join("signing.key.pem"), None).unwrap()
}

fn random(n: usize) -> Vec<u8> {
    let mut v = vec![0; n];
    openssl::rand::rand_bytes(&mut v).unwrap();
    v
}

/// Mastercard's algorithm: random CEK wrapped with RSA-OAEP-256 (SHA-256, MGF1-SHA-256), AES-GCM
/// with the base64url header as AAD, 128-bit tag.
fn reference_encrypt(
    public: &PublicKey,
    kid: &str,
    enc: &str,
    iv_len: usize,
    plaintext: &[u8],
) -> String {
    let header =
        format!(r#"{{"kid":"{kid}","cty":"application/json","enc":"{enc}","alg":"RSA-OAEP-256"}}"#);
    let h64 = B64URL.encode(header);
    let (cipher, key_len) = match enc {
        "A128GCM" => (Cipher::aes_128_gcm(), 16),
        "A192GCM" => (Cipher::aes_192_gcm(), 24),
        "A256GCM" => (Cipher::aes_256_gcm(), 32),
        other => panic!("{other}"),
    };
    let cek = random(key_len);
    let mut ctx = PkeyCtx::new(public.pkey()).unwrap();
    ctx.encrypt_init().unwrap();
    ctx.set_rsa_padding(Padding::PKCS1_OAEP).unwrap();
    ctx.set_rsa_oaep_md(Md::sha256()).unwrap();
    ctx.set_rsa_mgf1_md(Md::sha256()).unwrap();
    let mut wrapped = Vec::new();
    ctx.encrypt_to_vec(&cek, &mut wrapped).unwrap();
    let iv = random(iv_len);
    let mut tag = [0u8; 16];
    let ct = encrypt_aead(cipher, &cek, Some(&iv), h64.as_bytes(), plaintext, &mut tag).unwrap();
    format!(
        "{h64}.{}.{}.{}.{}",
        B64URL.encode(wrapped),
        B64URL.encode(iv),
        B64URL.encode(ct),
        B64URL.encode(tag)
    )
}

fn header_of(jwe: &str) -> serde_json::Value {
    serde_json::from_slice(&B64URL.decode(jwe.split('.').next().unwrap()).unwrap()).unwrap()
}

#[test]
fn our_encryption_has_mastercards_header_and_round_trips() {
    let key = fixture_key();
    let public = key.public_key().unwrap();
    let enc = JweEncryptor::new(&public).unwrap();
    let jwe = enc.encrypt(PAYLOAD).unwrap();
    let header = header_of(&jwe);
    assert_eq!(header["alg"], "RSA-OAEP-256");
    assert_eq!(header["enc"], "A256GCM");
    assert_eq!(header["cty"], "application/json");
    let expected_kid = include_str!("../../../tests/fixtures/keys/signing.spki.sha256").trim();
    assert_eq!(header["kid"], expected_kid);
    let mut dec = JweDecryptor::new();
    assert_eq!(dec.add(&key).unwrap(), expected_kid);
    assert_eq!(dec.decrypt(&jwe).unwrap(), PAYLOAD);
}

#[test]
fn decrypts_gcm_with_12_and_16_byte_ivs_and_all_key_sizes() {
    let key = fixture_key();
    let public = key.public_key().unwrap();
    let kid = public.fingerprint().unwrap();
    let mut dec = JweDecryptor::new();
    dec.add(&key).unwrap();
    for enc in ["A128GCM", "A192GCM", "A256GCM"] {
        for iv_len in [12, 16] {
            let jwe = reference_encrypt(&public, &kid, enc, iv_len, PAYLOAD);
            assert_eq!(
                B64URL.decode(jwe.split('.').nth(2).unwrap()).unwrap().len(),
                iv_len
            );
            assert_eq!(
                dec.decrypt(&jwe).unwrap(),
                PAYLOAD,
                "{enc} with a {iv_len}-byte IV"
            );
        }
    }
}

#[test]
fn decrypts_a128cbc_hs256() {
    let key = fixture_key();
    let public = key.public_key().unwrap();
    let encrypter = RSA_OAEP_256
        .encrypter_from_der(public.to_der().unwrap())
        .unwrap();
    let mut header = JweHeader::new();
    header.set_content_encryption("A128CBC-HS256");
    header.set_key_id(public.fingerprint().unwrap());
    let jwe = josekit::jwe::serialize_compact(PAYLOAD, &header, &encrypter).unwrap();
    let mut dec = JweDecryptor::new();
    dec.add(&key).unwrap();
    assert_eq!(dec.decrypt(&jwe).unwrap(), PAYLOAD);
}

#[test]
fn kid_picks_the_key_during_rotation() {
    let old = fixture_key();
    let new = SigningKey::generate().unwrap();
    let mut dec = JweDecryptor::new();
    dec.add(&old).unwrap();
    dec.add(&new).unwrap();
    for key in [&old, &new] {
        let jwe = JweEncryptor::new(&key.public_key().unwrap())
            .unwrap()
            .encrypt(PAYLOAD)
            .unwrap();
        assert_eq!(dec.decrypt(&jwe).unwrap(), PAYLOAD);
    }
    let stranger = SigningKey::generate().unwrap();
    let jwe = JweEncryptor::new(&stranger.public_key().unwrap())
        .unwrap()
        .encrypt(PAYLOAD)
        .unwrap();
    let kid = stranger.public_key().unwrap().fingerprint().unwrap();
    assert_eq!(dec.decrypt(&jwe), Err(JweError::UnknownKid(Some(kid))));
}

#[test]
fn a_jwe_without_kid_is_tried_with_every_key() {
    let key = fixture_key();
    let public = key.public_key().unwrap();
    let encrypter = RSA_OAEP_256
        .encrypter_from_der(public.to_der().unwrap())
        .unwrap();
    let mut header = JweHeader::new();
    header.set_content_encryption("A256GCM");
    let jwe = josekit::jwe::serialize_compact(PAYLOAD, &header, &encrypter).unwrap();
    let mut dec = JweDecryptor::new();
    dec.add(&key).unwrap();
    assert_eq!(dec.decrypt(&jwe).unwrap(), PAYLOAD);
    // The right key second (previous), after a current key that does not open it.
    let mut rotated = JweDecryptor::new();
    rotated.add(&SigningKey::generate().unwrap()).unwrap();
    rotated.add(&key).unwrap();
    assert_eq!(rotated.decrypt(&jwe).unwrap(), PAYLOAD);
    // No key opens it: the error names the missing kid.
    let mut strangers = JweDecryptor::new();
    strangers.add(&SigningKey::generate().unwrap()).unwrap();
    assert_eq!(strangers.decrypt(&jwe), Err(JweError::UnknownKid(None)));
}

#[test]
fn an_unknown_kid_falls_back_to_each_key_current_then_previous() {
    // Mastercard's own libraries ignore `kid`: an answer whose `kid` names no configured key
    // (a fingerprint computed differently, a key id of Mastercard's choosing) still opens.
    let previous = fixture_key();
    let current = SigningKey::generate().unwrap();
    let for_key = |key: &SigningKey| {
        JweEncryptor::with_kid(&key.public_key().unwrap(), "not-a-configured-kid".into())
            .unwrap()
            .encrypt(PAYLOAD)
            .unwrap()
    };
    let mut single = JweDecryptor::new();
    single.add(&previous).unwrap();
    assert_eq!(single.decrypt(&for_key(&previous)).unwrap(), PAYLOAD);

    let mut dec = JweDecryptor::new();
    let current_kid = dec.add(&current).unwrap();
    let previous_kid = dec.add(&previous).unwrap();
    assert_eq!(
        dec.kids().collect::<Vec<_>>(),
        vec![current_kid.as_str(), previous_kid.as_str()],
        "keys are tried in the order configured: current, then previous"
    );
    assert_eq!(dec.decrypt(&for_key(&current)).unwrap(), PAYLOAD);
    assert_eq!(dec.decrypt(&for_key(&previous)).unwrap(), PAYLOAD);

    // A known kid whose key does not open the JWE is an altered JWE, not a reason to try others.
    let jwe = JweEncryptor::with_kid(&previous.public_key().unwrap(), current_kid)
        .unwrap()
        .encrypt(PAYLOAD)
        .unwrap();
    assert_eq!(dec.decrypt(&jwe), Err(JweError::DecryptFailed));
}

#[test]
fn tampering_gives_typed_errors_without_the_payload() {
    let key = fixture_key();
    let public = key.public_key().unwrap();
    let mut dec = JweDecryptor::new();
    dec.add(&key).unwrap();
    let jwe = reference_encrypt(
        &public,
        &public.fingerprint().unwrap(),
        "A256GCM",
        16,
        PAYLOAD,
    );
    let parts: Vec<&str> = jwe.split('.').collect();

    let flip = |s: &str| {
        let mut bytes = B64URL.decode(s).unwrap();
        bytes[0] ^= 0x01;
        B64URL.encode(bytes)
    };
    // Tag, IV and ciphertext each altered.
    for i in [2, 3, 4] {
        let mut p = parts.clone();
        let altered = flip(p[i]);
        p[i] = &altered;
        let err = dec.decrypt(&p.join(".")).unwrap_err();
        assert_eq!(err, JweError::DecryptFailed, "part {i}");
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains("5186001700009726"), "{shown}");
    }
    // The header re-encoded with one more field: still valid JSON, but the AAD no longer matches.
    let mut header = header_of(&jwe);
    header["x"] = serde_json::json!(1);
    let altered = B64URL.encode(serde_json::to_vec(&header).unwrap());
    let mut p = parts.clone();
    p[0] = &altered;
    assert_eq!(dec.decrypt(&p.join(".")), Err(JweError::DecryptFailed));
    // Not a JWE at all.
    assert_eq!(dec.decrypt("a.b.c"), Err(JweError::Malformed));
}

#[test]
fn unsupported_algorithms_are_refused() {
    let key = fixture_key();
    let public = key.public_key().unwrap();
    let encrypter = RSA_OAEP_256
        .encrypter_from_der(public.to_der().unwrap())
        .unwrap();
    let mut header = JweHeader::new();
    header.set_content_encryption("A256CBC-HS512");
    let jwe = josekit::jwe::serialize_compact(PAYLOAD, &header, &encrypter).unwrap();
    let mut dec = JweDecryptor::new();
    dec.add(&key).unwrap();
    assert!(matches!(
        dec.decrypt(&jwe),
        Err(JweError::Unsupported { .. })
    ));
}

#[test]
fn envelope_seals_and_opens_the_whole_body() {
    let key = fixture_key();
    let enc = JweEncryptor::new(&key.public_key().unwrap()).unwrap();
    let mut dec = JweDecryptor::new();
    dec.add(&key).unwrap();
    let body = br#"{"cardContractId":70001}"#;
    let sealed = seal_envelope(&enc, body).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&sealed).unwrap();
    assert_eq!(json.as_object().unwrap().len(), 1);
    assert!(json["encryptedValue"].as_str().unwrap().split('.').count() == 5);
    assert_eq!(open_envelope(&dec, &sealed).unwrap(), body);
    assert_eq!(
        open_envelope(&dec, b"{\"other\":1}"),
        Err(JweError::Malformed)
    );
}
