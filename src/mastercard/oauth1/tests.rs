//! The vectors of Mastercard's OAuthTest.java (`docs/mastercard.md#oauth-signing`), plus
//! sign/verify round trips.

use super::*;
use std::path::Path;

struct FixedClock(u64);
impl Clock for FixedClock {
    fn unix_seconds(&self) -> u64 {
        self.0
    }
}
struct FixedNonce(&'static str);
impl NonceSource for FixedNonce {
    fn nonce(&self) -> String {
        self.0.to_owned()
    }
}

fn key() -> SigningKey {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keys");
    SigningKey::load(&dir.join("signing.key.pem"), None).unwrap()
}

fn url(s: &str) -> url::Url {
    url::Url::parse(s).unwrap()
}

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn body_hash_of_empty_and_utf8_bodies() {
    assert_eq!(
        body_hash(b""),
        "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
    );
    assert_eq!(
        body_hash("{\"foõ\":\"bar\"}".as_bytes()),
        "+Z+PWW2TJDnPvRcTgol+nKO3LT7xm8smnsg+//XMIyI="
    );
}

#[test]
fn query_with_percent_escapes_is_encoded_again_in_the_base_string() {
    let q = query_params(&url("https://example.com/?param=token1%3Atoken2"));
    assert_eq!(
        signature_base_string("GET", "https://example.com", &param_string(&q)),
        "GET&https%3A%2F%2Fexample.com&param%3Dtoken1%253Atoken2"
    );
}

#[test]
fn query_without_escapes_is_used_as_is() {
    let q = query_params(&url("https://example.com/?param=token1:token2"));
    assert_eq!(
        signature_base_string("GET", "https://example.com", &param_string(&q)),
        "GET&https%3A%2F%2Fexample.com&param%3Dtoken1%3Atoken2"
    );
}

#[test]
fn query_params_keep_repeated_keys_and_empty_values() {
    let q = query_params(&url(
        "https://sandbox.api.mastercard.com/audiences/v1/getcountries?offset=0&offset=1&length=10&empty&odd=",
    ));
    assert_eq!(
        q,
        pairs(&[
            ("offset", "0"),
            ("offset", "1"),
            ("length", "10"),
            ("empty", ""),
            ("odd", "")
        ])
    );
}

#[test]
fn query_params_rfc5849_example() {
    let q = query_params(&url(
        "https://example.com/request?b5=%3D%253D&a3=a&c%40=&a2=r%20b",
    ));
    assert_eq!(
        q,
        pairs(&[
            ("b5", "%3D%253D"),
            ("a3", "a"),
            ("c%40", ""),
            ("a2", "r%20b")
        ])
    );
}

#[test]
fn query_params_encode_only_when_the_raw_query_had_escapes() {
    let plain = query_params(&url("https://example.com/request?colon=:&plus=+&comma=,"));
    assert_eq!(
        plain,
        pairs(&[("colon", ":"), ("plus", "+"), ("comma", ",")])
    );
    let escaped = query_params(&url(
        "https://example.com/request?colon=%3A&plus=%2B&comma=%2C",
    ));
    assert_eq!(
        escaped,
        pairs(&[("colon", "%3A"), ("plus", "%2B"), ("comma", "%2C")])
    );
}

#[test]
fn param_string_rfc5849_example() {
    let params = pairs(&[
        ("b5", "%3D%253D"),
        ("a3", "a"),
        ("a3", "2%20q"),
        ("c%40", ""),
        ("a2", "r%20b"),
        ("c2", ""),
        ("oauth_consumer_key", "9djdj82h48djs9d2"),
        ("oauth_token", "kkk9d7dh3k39sjv7"),
        ("oauth_signature_method", "HMAC-SHA1"),
        ("oauth_timestamp", "137131201"),
        ("oauth_nonce", "7d8f3e4a"),
    ]);
    assert_eq!(
        param_string(&params),
        "a2=r%20b&a3=2%20q&a3=a&b5=%3D%253D&c%40=&c2=&oauth_consumer_key=9djdj82h48djs9d2&oauth_nonce=7d8f3e4a&oauth_signature_method=HMAC-SHA1&oauth_timestamp=137131201&oauth_token=kkk9d7dh3k39sjv7"
    );
}

#[test]
fn param_string_sorts_keys_and_repeated_values_by_byte_value() {
    let params = pairs(&[
        ("b", "b"),
        ("A", "a"),
        ("A", "A"),
        ("B", "B"),
        ("a", "A"),
        ("a", "a"),
        ("0", "0"),
    ]);
    assert_eq!(param_string(&params), "0=0&A=A&A=a&B=B&a=A&a=a&b=b");
}

#[test]
fn base_uri_rules() {
    for (input, expected) in [
        (
            "https://www.example.net:8080",
            "https://www.example.net:8080/",
        ),
        (
            "http://EXAMPLE.COM:80/r%20v/X?id=123",
            "http://example.com/r%20v/X",
        ),
        (
            "HTTPS://API.Mastercard.com:443/test?query=param",
            "https://api.mastercard.com/test",
        ),
        (
            "http://api.mastercard.com:80/test",
            "http://api.mastercard.com/test",
        ),
        (
            "https://api.mastercard.com:17443/test?query=param",
            "https://api.mastercard.com:17443/test",
        ),
        (
            "https://api.mastercard.com/test?query=param#fragment",
            "https://api.mastercard.com/test",
        ),
        ("https://api.mastercard.com", "https://api.mastercard.com/"),
        (
            "https://api.mastercard.com/TEST",
            "https://api.mastercard.com/TEST",
        ),
        (
            "https://www.example.com/api/test%40test",
            "https://www.example.com/api/test%40test",
        ),
        (
            "http://example.com/r%2540v/X?id=123",
            "http://example.com/r%2540v/X",
        ),
        (
            "https://www.example.net:8080/foo@bar/test?query=test",
            "https://www.example.net:8080/foo@bar/test",
        ),
        (
            "https://www.example.net:8080/foo&bar/test?query=test",
            "https://www.example.net:8080/foo&bar/test",
        ),
        (
            "https://www.example.net:8080/foo(bar/test?query=test",
            "https://www.example.net:8080/foo(bar/test",
        ),
        (
            "https://www.example.net:8080/foo=bar/test?query=test",
            "https://www.example.net:8080/foo=bar/test",
        ),
    ] {
        assert_eq!(base_uri(&url(input)), expected, "{input}");
    }
}

#[test]
fn nominal_signature_base_string() {
    let params = pairs(&[
        ("param2", "hello"),
        ("first_param", "value"),
        ("first_param", "othervalue"),
        ("oauth_nonce", "randomnonce"),
        ("oauth_body_hash", "body/hash"),
    ]);
    assert_eq!(
        signature_base_string("POST", "https://api.mastercard.com", &param_string(&params)),
        "POST&https%3A%2F%2Fapi.mastercard.com&first_param%3Dothervalue%26first_param%3Dvalue%26oauth_body_hash%3Dbody%2Fhash%26oauth_nonce%3Drandomnonce%26param2%3Dhello"
    );
}

/// Verifies a header's signature against a base string written out by hand.
fn signature_covers(header: &str, expected_sbs: &str, method: SignatureMethod) -> bool {
    let sig = parse_header(header)
        .unwrap()
        .remove("oauth_signature")
        .unwrap();
    let raw = B64.decode(sig).unwrap();
    let public = key().public_key().unwrap();
    let mut v = Verifier::new(MessageDigest::sha256(), public.pkey()).unwrap();
    if method == SignatureMethod::RsaPss {
        v.set_rsa_padding(Padding::PKCS1_PSS).unwrap();
        v.set_rsa_mgf1_md(MessageDigest::sha256()).unwrap();
        v.set_rsa_pss_saltlen(RsaPssSaltlen::custom(32)).unwrap();
    }
    v.update(expected_sbs.as_bytes()).unwrap();
    v.verify(&raw).unwrap()
}

#[test]
fn header_signs_the_termination_inquiry_base_string() {
    let key = key();
    let body = b"<xml/>";
    let creds = Credentials {
        consumer_key: "ck-123!abc",
        key: &key,
        method: SignatureMethod::RsaSha256,
    };
    let header = authorization_header(
        "post",
        &url("https://sandbox.api.mastercard.com/fraud/merchant/v1/termination-inquiry?Format=XML&PageOffset=0&PageLength=10"),
        body,
        &creds,
        &FixedClock(1_700_000_000),
        &FixedNonce("aB3dE5gH7jK9mN1p"),
    )
    .unwrap();
    let hash = pct(&body_hash(body));
    let expected = format!(
        "POST&https%3A%2F%2Fsandbox.api.mastercard.com%2Ffraud%2Fmerchant%2Fv1%2Ftermination-inquiry&Format%3DXML%26PageLength%3D10%26PageOffset%3D0%26oauth_body_hash%3D{hash}%26oauth_consumer_key%3Dck-123%21abc%26oauth_nonce%3DaB3dE5gH7jK9mN1p%26oauth_signature_method%3DRSA-SHA256%26oauth_timestamp%3D1700000000%26oauth_version%3D1.0"
    );
    assert!(
        signature_covers(&header, &expected, SignatureMethod::RsaSha256),
        "{header}"
    );
}

#[test]
fn header_format_is_mastercards() {
    let key = key();
    let creds = Credentials {
        consumer_key: "ck!1",
        key: &key,
        method: SignatureMethod::RsaSha256,
    };
    let header = authorization_header(
        "GET",
        &url("https://api.mastercard.com/x"),
        b"",
        &creds,
        &FixedClock(42),
        &FixedNonce("n"),
    )
    .unwrap();
    assert!(
        header
            .starts_with("OAuth oauth_body_hash=\"47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\","),
        "{header}"
    );
    assert!(header.contains(",oauth_consumer_key=\"ck!1\","), "{header}");
    assert!(
        header.contains(",oauth_signature_method=\"RSA-SHA256\","),
        "{header}"
    );
    assert!(header.contains(",oauth_timestamp=\"42\","), "{header}");
    assert!(header.contains(",oauth_version=\"1.0\","), "{header}");
    assert!(
        !header.contains(", "),
        "no spaces between parameters: {header}"
    );
    let sig = header
        .split("oauth_signature=\"")
        .nth(1)
        .unwrap()
        .trim_end_matches('"');
    assert!(
        !sig.contains(['+', '/', '=']),
        "signature must be percent-encoded: {sig}"
    );
}

#[test]
fn signature_matches_the_openssl_cli_golden_value() {
    let expected = include_str!("../../../tests/fixtures/keys/baseString.sig.b64").trim();
    assert_eq!(
        sign("baseString", &key(), SignatureMethod::RsaSha256).unwrap(),
        expected
    );
}

#[test]
fn signatures_verify_with_the_public_key_for_both_methods() {
    let key = key();
    let public = key.public_key().unwrap();
    for method in [SignatureMethod::RsaSha256, SignatureMethod::RsaPss] {
        let uri = url(
            "https://sandbox.api.mastercard.com/global-processing/digital/cards/searches?x=%2F1",
        );
        let body = br#"{"cardContractId":70001}"#;
        let creds = Credentials {
            consumer_key: "ck",
            key: &key,
            method,
        };
        let header =
            authorization_header("POST", &uri, body, &creds, &SystemClock, &RandomNonce).unwrap();
        let signed = verify("POST", &uri, body, &header, &public).unwrap();
        assert_eq!(signed.consumer_key, "ck");
        assert_eq!(signed.nonce.len(), 16);
        assert!(signed.nonce.chars().all(|c| c.is_ascii_alphanumeric()));
    }
}

#[test]
fn one_changed_byte_is_refused() {
    let key = key();
    let public = key.public_key().unwrap();
    let uri = url("https://h.example/cards/searches?a=1");
    let body = br#"{"cardContractId":70001}"#;
    let creds = Credentials {
        consumer_key: "ck",
        key: &key,
        method: SignatureMethod::RsaSha256,
    };
    let header = authorization_header(
        "POST",
        &uri,
        body,
        &creds,
        &FixedClock(1000),
        &FixedNonce("n1"),
    )
    .unwrap();

    let other_body = br#"{"cardContractId":70002}"#;
    assert_eq!(
        verify("POST", &uri, other_body, &header, &public),
        Err(VerifyError::BodyHashMismatch)
    );
    let other_query = url("https://h.example/cards/searches?a=2");
    assert_eq!(
        verify("POST", &other_query, body, &header, &public),
        Err(VerifyError::BadSignature)
    );
    let other_path = url("https://h.example/cards/searchez?a=1");
    assert_eq!(
        verify("POST", &other_path, body, &header, &public),
        Err(VerifyError::BadSignature)
    );
    assert_eq!(
        verify("PUT", &uri, body, &header, &public),
        Err(VerifyError::BadSignature)
    );
    let other_time = header.replace("oauth_timestamp=\"1000\"", "oauth_timestamp=\"1001\"");
    assert_eq!(
        verify("POST", &uri, body, &other_time, &public),
        Err(VerifyError::BadSignature)
    );
    let other_key = header.replace("oauth_consumer_key=\"ck\"", "oauth_consumer_key=\"cl\"");
    assert_eq!(
        verify("POST", &uri, body, &other_key, &public),
        Err(VerifyError::BadSignature)
    );
    let sig_start = header.find("oauth_signature=\"").unwrap() + "oauth_signature=\"".len();
    let mut tampered = header.clone().into_bytes();
    tampered[sig_start + 3] = if tampered[sig_start + 3] == b'A' {
        b'B'
    } else {
        b'A'
    };
    let tampered = String::from_utf8(tampered).unwrap();
    assert_eq!(
        verify("POST", &uri, body, &tampered, &public),
        Err(VerifyError::BadSignature)
    );
}
