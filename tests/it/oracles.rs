//! Independent oracles: Mastercard's own Python client libraries (`mastercard-oauth1-signer`,
//! `mastercard-client-encryption`, pinned in `scripts/tools mastercard-py`) judge what the adapter
//! signs and encrypts, and make requests and bodies the adapter and the simulator must accept.
//! The simulator verifies with the adapter's own OAuth and JWE code, so without these tests a
//! symmetric bug would pass both sides. The Python library checks neither the GCM tag nor the
//! `kid` when it decrypts: the OpenSSL-based tamper tests of `mastercard::jwe` stay.
//!
//! The driver is `tests/oracles/mastercard_oracle.py`. The first test that needs it installs the
//! libraries into `target/tools/mastercard-venv` (python3 with venv, PyPI); when that is not
//! possible the tests fail and say why, they never skip.

use crate::harness::{mastercard_enroll_request, shared_keys};
use crate::http_stub::{HttpStub, Reply};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use c2p_enroll::mastercard::breaker::BreakerConfig;
use c2p_enroll::mastercard::enroll::EnrollClient;
use c2p_enroll::mastercard::error::Api;
use c2p_enroll::mastercard::http::{ApiClient, ApiClientConfig, HttpPolicy, PayloadEncryption};
use c2p_enroll::mastercard::jwe::{JweDecryptor, JweEncryptor, JweError};
use c2p_enroll::mastercard::keys::{Certificate, SigningKey};
use c2p_enroll::mastercard::oauth1::{self, Credentials, SignatureMethod, SystemClock};
use c2p_enroll::mastercard::processing::ProcessingClient;
use c2p_enroll::mastercard::processing::types::{EncryptedCard, SynchronousRequest};
use c2p_enroll::sandbox::keys::{SandboxKeys, files};
use c2p_enroll::sandbox::requests::GatewayOutcome;
use c2p_enroll::sandbox::{Sandbox, SandboxConfig};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

const METHODS: [SignatureMethod; 2] = [SignatureMethod::RsaSha256, SignatureMethod::RsaPss];
/// Not ASCII, so that UTF-8 handling of the body hash and the JWE plaintext is judged too.
const CARDHOLDER: &str = "Zoë Ångström-Łukasiewicz";
const CARD_DATA: &str = "eyJhbGciOiJSU0EtT0FFUC0yNTYifQ.a.b.c.d";
const ENROLLED: &str = r#"{"srcCorrelationId":"0b9a3c2e-1f4d-4a6b-8c7d-9e0f1a2b3c4d","maskedCard":{"srcDigitalCardId":"dc-1","panLastFour":"9726","digitalCardData":{"status":"ACTIVE"}}}"#;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The venv's python, installed on first use by `scripts/tools mastercard-py`.
fn oracle_python() -> &'static Path {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let python = PYTHON.get_or_init(|| {
        let out = Command::new(repo().join("scripts/tools"))
            .arg("mastercard-py")
            .output()
            .map_err(|e| format!("cannot run scripts/tools: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "`scripts/tools mastercard-py` failed ({}):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let bin = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        Ok(PathBuf::from(bin).join("mastercard-python"))
    });
    match python {
        Ok(path) => path,
        Err(e) => panic!(
            "the oracle tests need Mastercard's Python client libraries in a venv under \
             target/tools, and could not install them. They need python3 with venv \
             (scripts/debian-deps python) and PyPI. {e}"
        ),
    }
}

/// Runs one oracle command with `input` on stdin; its JSON answer.
fn oracle(command: &str, input: &Value) -> Value {
    let mut child = Command::new(oracle_python())
        .arg(repo().join("tests/oracles/mastercard_oracle.py"))
        .arg(command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the oracle");
    serde_json::to_writer(child.stdin.take().unwrap(), input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "oracle {command} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the oracle answers JSON")
}

fn fixture_key(name: &str) -> PathBuf {
    repo().join("tests/fixtures/keys").join(name)
}

fn signing_key() -> SigningKey {
    SigningKey::load(&fixture_key("signing.key.pem"), None).unwrap()
}

/// The simulator's keys as PEM files (the Python side reads files), plus a certificate for the
/// issuer's payload key, which the simulator keeps only as a key.
struct KeyFiles {
    keys: SandboxKeys,
    dir: tempfile::TempDir,
}

impl KeyFiles {
    fn write() -> KeyFiles {
        let keys = shared_keys();
        let dir = tempfile::tempdir().unwrap();
        keys.write(dir.path()).unwrap();
        let cert = Certificate::self_signed(&keys.client_payload_key, "client payload", 1).unwrap();
        std::fs::write(
            dir.path().join("payload-client.cert.pem"),
            cert.to_pem().unwrap(),
        )
        .unwrap();
        KeyFiles { keys, dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

fn client(
    api: Api,
    base: url::Url,
    method: SignatureMethod,
    encryption: Option<PayloadEncryption>,
) -> ApiClient {
    ApiClient::new(ApiClientConfig {
        api,
        base_url: base,
        consumer_key: "oracle-consumer-key!0123456789abcdef".into(),
        signing_key: signing_key(),
        signature_method: method,
        policy: HttpPolicy {
            max_attempts: 1,
            ..HttpPolicy::default()
        },
        breaker: BreakerConfig::default(),
        encryption,
        extra_ca: None,
    })
    .unwrap()
}

fn search_body() -> SynchronousRequest {
    SynchronousRequest {
        cardholder_full_name: Some(CARDHOLDER.into()),
        billing_address: None,
    }
}

/// `{"method","url","body_b64","authorization"}` of a request the stub received.
fn as_signed(stub: &HttpStub, r: &crate::http_stub::Recorded) -> Value {
    json!({
        "method": r.method,
        "url": stub.url(&r.target).as_str(),
        "body_b64": B64.encode(&r.body),
        "authorization": r.header("authorization").expect("signed"),
    })
}

/// The adapter's own base string for a signed request, to compare with the library's.
fn our_base_string(request: &Value) -> String {
    let url = url::Url::parse(request["url"].as_str().unwrap()).unwrap();
    let mut params = oauth1::parse_header(request["authorization"].as_str().unwrap()).unwrap();
    params.remove("oauth_signature");
    let mut all = oauth1::query_params(&url);
    all.extend(params);
    oauth1::signature_base_string(
        request["method"].as_str().unwrap(),
        &oauth1::base_uri(&url),
        &oauth1::param_string(&all),
    )
}

/// The library's verdict on each of `requests`, signed with the fixture key.
fn verify_with_library(requests: &[Value]) -> Vec<Value> {
    let answer = oracle(
        "verify-oauth",
        &json!({
            "certificate": fixture_key("signing.cert.pem"),
            "private_key": fixture_key("signing.key.pem"),
            "requests": requests,
        }),
    );
    let results = answer["results"].as_array().unwrap().clone();
    assert_eq!(results.len(), requests.len());
    results
}

fn assert_library_accepts(requests: &[Value], method: SignatureMethod) {
    for (request, verdict) in requests.iter().zip(verify_with_library(requests)) {
        let what = format!("{method:?}: {} {}", request["method"], request["url"]);
        assert_eq!(verdict["problems"], json!([]), "{what}");
        assert_eq!(verdict["ok"], true, "{what}");
        assert_eq!(verdict["signature_method"], method.oauth_name(), "{what}");
        assert_eq!(
            verdict["base_string"].as_str().unwrap(),
            our_base_string(request),
            "{what}: the library's base string"
        );
    }
}

#[tokio::test]
async fn the_library_verifies_every_request_the_adapter_signs_rsa_sha256_and_rsa_pss() {
    let certificate = Certificate::load(&fixture_key("signing.cert.pem")).unwrap();
    for method in METHODS {
        let stub = HttpStub::start(vec![Reply::json(
            200,
            &json!({ "cardData": CARD_DATA }).to_string(),
        )])
        .await;
        let processing = ProcessingClient::new(client(
            Api::Processing,
            stub.url("/global-processing/digital"),
            method,
            None,
        ));
        let enroll = EnrollClient::new(client(
            Api::Enroll,
            stub.url("/src/api/digital/payments"),
            method,
            None,
        ));
        processing
            .search_card(70001, search_body(), &certificate, None)
            .await
            .unwrap();
        stub.script(vec![Reply::json(200, r#"{"clientTokens":[]}"#)]);
        // A status with a space: the query carries %-escapes, which changes the encoding rule.
        for status in [None, Some("Active"), Some("Not Active")] {
            processing.client_tokens(40000, status, None).await.unwrap();
        }
        processing.card_tokens(70001, None).await.unwrap();
        stub.script(vec![Reply::json(200, ENROLLED)]);
        let request = mastercard_enroll_request(
            "7f2b8a4e-5c1d-4e8f-9a3b-1c2d3e4f5a6b",
            "SRC_TEST_SERVICE",
            "0b9a3c2e-1f4d-4a6b-8c7d-9e0f1a2b3c4d",
            EncryptedCard::new("eyJ.x.y.z.w".into()),
        );
        enroll.enroll_card(&request, None).await.unwrap();

        let requests: Vec<Value> = stub
            .requests()
            .iter()
            .map(|r| as_signed(&stub, r))
            .collect();
        assert_eq!(requests.len(), 6);
        assert!(
            requests[3]["url"]
                .as_str()
                .unwrap()
                .ends_with("/tokens?status=Not%20Active")
        );
        assert_library_accepts(&requests, method);

        // The oracle is not vacuous: one changed body byte, one changed query, one changed
        // consumer key are each refused.
        let mut changed_body = requests[0].clone();
        let mut body = B64
            .decode(changed_body["body_b64"].as_str().unwrap())
            .unwrap();
        body[5] ^= 0x01;
        changed_body["body_b64"] = json!(B64.encode(&body));
        let mut changed_query = requests[2].clone();
        changed_query["url"] = json!(
            changed_query["url"]
                .as_str()
                .unwrap()
                .replace("Active", "Actives")
        );
        let mut changed_consumer = requests[5].clone();
        changed_consumer["authorization"] = json!(
            changed_consumer["authorization"]
                .as_str()
                .unwrap()
                .replace("oracle-consumer-key", "oracle-consumer-kez")
        );
        for verdict in verify_with_library(&[changed_body, changed_query, changed_consumer]) {
            assert_eq!(verdict["ok"], false, "{verdict}");
        }
    }
}

/// Every lifecycle request of both families, as the service's adapter (the app's port over
/// `Upstream`) sends them: DELETE and GET without a body, PUT with one, queries with and without
/// `%`-escapes (a service id with a space), ids escaped in the path.
#[tokio::test]
async fn the_library_verifies_every_lifecycle_request_of_both_families() {
    use c2p_enroll::app::ConsumerInput;
    use c2p_enroll::app::ports::{Address, ClickToPayKeys, ClickToPayLifecycle};
    use c2p_enroll::domain::CardContractId;
    use c2p_enroll::mastercard::settings::LifecycleFamily;
    use c2p_enroll::mastercard::setup::{Program, Upstream};
    let certificate = Certificate::load(&fixture_key("signing.cert.pem")).unwrap();
    for method in METHODS {
        let stub = HttpStub::start(vec![Reply::json(200, "{}")]).await;
        let legacy = Program {
            src_client_id: "7f2b8a4e-5c1d-4e8f-9a3b-1c2d3e4f5a6b".into(),
            service_id: "SRC TEST SERVICE".into(),
            enroll_certificate: certificate.clone(),
            privacy_uri: "https://example.com/privacy".into(),
            terms_uri: "https://example.com/terms".into(),
            lifecycle: LifecycleFamily::Legacy,
        };
        let directory = Program {
            lifecycle: LifecycleFamily::CredentialDirectory {
                directory_id: "dir-1".into(),
            },
            ..legacy.clone()
        };
        let upstream = Upstream {
            processing: ProcessingClient::new(client(
                Api::Processing,
                stub.url("/global-processing/digital"),
                method,
                None,
            )),
            enroll: EnrollClient::new(client(
                Api::Enroll,
                stub.url("/src/api/digital/payments"),
                method,
                None,
            )),
            programs: [
                ("default".to_owned(), legacy),
                ("directory".to_owned(), directory),
            ]
            .into(),
        };
        let consumer = ConsumerInput {
            email: Some("zoe@example.com".into()),
            mobile: Some(("44".into(), "7700900123".into())),
            first_name: Some("Zoë".into()),
            last_name: Some("Ångström".into()),
            country_code: "GB".into(),
            language_code: "en_GB".into(),
        };
        let address = Address {
            line1: Some("1 Rue de l'Église".into()),
            city: Some("Besançon".into()),
            zip: Some("25000".into()),
            country_code: Some("FR".into()),
            ..Address::default()
        };
        for program in ["", "directory"] {
            let keys = ClickToPayKeys {
                program: program.into(),
                card: CardContractId::new(70001).unwrap(),
                src_consumer_id: Some("consumer 1".into()),
                src_digital_card_id: Some("dc/1".into()),
                external_consumer_id: Some("a1b2c3".into()),
                external_credential_id: Some("70001".into()),
            };
            upstream.remove_card(&keys, None).await.unwrap();
            upstream.holds_card(&keys, None).await.unwrap();
            upstream.profile(&keys, None).await.unwrap();
            upstream
                .update_consumer(&keys, &consumer, None)
                .await
                .unwrap();
            upstream
                .update_billing_address(&keys, &address, None)
                .await
                .unwrap();
            upstream.delete_profile(&keys, None).await.unwrap();
        }
        let recorded = stub.requests();
        let requests: Vec<Value> = recorded.iter().map(|r| as_signed(&stub, r)).collect();
        let lines: Vec<String> = recorded
            .iter()
            .map(|r| format!("{} {}", r.method, r.target))
            .collect();
        assert_eq!(
            lines,
            [
                "DELETE /src/api/digital/payments/cards/dc%2F1?srcClientId=7f2b8a4e-5c1d-4e8f-9a3b-1c2d3e4f5a6b&serviceId=SRC%20TEST%20SERVICE",
                "GET /src/api/digital/payments/cards/dc%2F1",
                "GET /src/api/digital/payments/profiles/consumer%201",
                "PUT /src/api/digital/payments/profiles/consumer%201",
                "PUT /src/api/digital/payments/cards/dc%2F1",
                "DELETE /src/api/digital/payments/profiles?srcClientId=7f2b8a4e-5c1d-4e8f-9a3b-1c2d3e4f5a6b&serviceId=SRC%20TEST%20SERVICE&srcConsumerId=consumer%201",
                "DELETE /src/api/digital/payments/directories/dir-1/consumers/a1b2c3/credentials/70001",
                "GET /src/api/digital/payments/directories/dir-1/consumers/a1b2c3/credentials/70001",
                "GET /src/api/digital/payments/directories/dir-1/consumers/a1b2c3",
                "PUT /src/api/digital/payments/directories/dir-1/consumers/a1b2c3",
                "PUT /src/api/digital/payments/directories/dir-1/consumers/a1b2c3/credentials/70001",
                "DELETE /src/api/digital/payments/directories/dir-1/consumers/a1b2c3",
            ]
        );
        for r in &recorded {
            assert_eq!(r.header("x-openapi-clientid"), Some("oracle-consumer-key"));
            assert_eq!(
                r.body.is_empty(),
                r.method != "PUT",
                "{} {}",
                r.method,
                r.target
            );
        }
        assert_library_accepts(&requests, method);
    }
}

#[tokio::test]
async fn the_library_verifies_signatures_over_urls_its_base_string_rules_touch() {
    // Each URL exercises one rule of Mastercard's base string: host case, default ports, an
    // empty path, escapes in the path, a query with and without %-escapes, repeated keys, a key
    // without a value. The library sees the URL exactly as written here.
    let urls = [
        "https://Sandbox.API.Mastercard.com:443/global-processing/digital/clients/40000/tokens?status=ACTIVE",
        "http://127.0.0.1:80/global-processing/digital/cards/searches",
        "https://example.com",
        "https://example.com:8443/path/caf%C3%A9/a%20b/",
        "https://example.com/?param=token1%3Atoken2",
        "https://example.com/?param=token1:token2",
        "https://example.com/list?b=2&a=1&a=0&flag",
        "https://sandbox.api.mastercard.com/fraud/merchant/v1/termination-inquiry?Format=XML&PageOffset=0&PageLength=10",
        "https://example.com/tokens?status=Not%20Active&client=40000",
    ];
    let key = signing_key();
    for method in METHODS {
        let credentials = Credentials {
            consumer_key: "oracle-consumer-key!0123456789abcdef",
            key: &key,
            method,
        };
        let mut requests = Vec::new();
        for url in urls {
            let parsed = url::Url::parse(url).unwrap();
            for (http_method, body) in [("GET", &b""[..]), ("POST", r#"{"foõ":"bar"}"#.as_bytes())]
            {
                let authorization = oauth1::authorization_header(
                    http_method,
                    &parsed,
                    body,
                    &credentials,
                    &SystemClock,
                    &oauth1::RandomNonce,
                )
                .unwrap();
                requests.push(json!({
                    "method": http_method,
                    "url": url,
                    "body_b64": B64.encode(body),
                    "authorization": authorization,
                }));
            }
        }
        for (request, verdict) in requests.iter().zip(verify_with_library(&requests)) {
            assert_eq!(
                verdict["problems"],
                json!([]),
                "{method:?}: {} {}",
                request["method"],
                request["url"]
            );
            assert_eq!(verdict["signature_method"], method.oauth_name());
        }
    }
}

fn iv_len(jwe: &str) -> usize {
    B64URL.decode(jwe.split('.').nth(2).unwrap()).unwrap().len()
}

#[tokio::test]
async fn the_adapter_opens_what_the_library_encrypts_and_the_library_opens_what_it_sends() {
    let files = KeyFiles::write();
    let keys = &files.keys;
    let mastercard_public = keys.mastercard_payload_certificate.public_key().unwrap();
    // The answer, encrypted by the library for the issuer's key with its default 16-byte IV.
    let answer = oracle(
        "encrypt",
        &json!({
            "certificate": files.path("payload-client.cert.pem"),
            "payloads": [json!({ "cardData": CARD_DATA }).to_string()],
        }),
    );
    let sealed_answer = answer["results"][0]["body"].as_str().unwrap().to_owned();
    assert_eq!(
        iv_len(answer["results"][0]["jwe"].as_str().unwrap()),
        16,
        "the library's default IV"
    );

    let stub = HttpStub::start(vec![Reply::json(200, &sealed_answer)]).await;
    let mut decryptor = JweDecryptor::new();
    decryptor.add(&keys.client_payload_key).unwrap();
    let processing = ProcessingClient::new(client(
        Api::Processing,
        stub.url("/global-processing/digital"),
        SignatureMethod::RsaSha256,
        Some(PayloadEncryption {
            encryptor: JweEncryptor::new(&mastercard_public).unwrap(),
            decryptor,
        }),
    ));
    let found = processing
        .search_card(
            70001,
            search_body(),
            &keys.enroll_encryption_certificate,
            None,
        )
        .await
        .expect("the adapter opens the library's answer");
    assert!(
        found.card_data.expose() == CARD_DATA,
        "the adapter read another cardData"
    );

    // What the adapter sent: signed over the envelope, and the library opens the envelope.
    let requests = stub.requests();
    assert_eq!(requests.len(), 1);
    assert_library_accepts(
        &[as_signed(&stub, &requests[0])],
        SignatureMethod::RsaSha256,
    );
    let opened = oracle(
        "decrypt",
        &json!({
            "private_key": files.path(files::MASTERCARD_PAYLOAD_KEY),
            "bodies": [String::from_utf8(requests[0].body.clone()).unwrap()],
        }),
    );
    let result = &opened["results"][0];
    let payload: Value = serde_json::from_str(result["payload"].as_str().unwrap()).unwrap();
    assert_eq!(
        payload,
        json!({
            "enrollType": "SYNCHRONOUS",
            "synchronousRequest": { "cardholderFullName": CARDHOLDER },
            "cardContractId": 70001,
        })
    );
    // The header the library reads, and the kid it computes itself for that certificate.
    let library_kid = oracle(
        "encrypt",
        &json!({
            "certificate": files.path(files::MASTERCARD_PAYLOAD_CERT),
            "payloads": ["{}"],
        }),
    )["results"][0]["kid"]
        .clone();
    assert_eq!(
        result["header"],
        json!({"kid": library_kid, "cty": "application/json", "enc": "A256GCM", "alg": "RSA-OAEP-256"})
    );
}

#[test]
fn the_service_decryptor_opens_library_bodies_whatever_their_kid() {
    // Mastercard's libraries write the kid they are configured with, or none that we know.
    // Current key first, then the previous one, which the library encrypted for.
    let previous = signing_key();
    let mut decryptor = JweDecryptor::new();
    decryptor.add(&SigningKey::generate().unwrap()).unwrap();
    decryptor.add(&previous).unwrap();
    let payload = json!({ "cardholderFullName": CARDHOLDER, "cardContractId": 70001 });
    let mut jwes = Vec::new();
    for kid in [Value::Null, json!("a-key-id-of-mastercards-choosing")] {
        let answer = oracle(
            "encrypt",
            &json!({
                "certificate": fixture_key("signing.cert.pem"),
                "kid": kid,
                "payloads": [payload.to_string()],
            }),
        );
        let jwe = answer["results"][0]["jwe"].as_str().unwrap().to_owned();
        assert_eq!(iv_len(&jwe), 16);
        let plain = decryptor
            .decrypt(&jwe)
            .unwrap_or_else(|e| panic!("kid {kid}: {e}"));
        assert_eq!(serde_json::from_slice::<Value>(&plain).unwrap(), payload);
        jwes.push(jwe);
    }
    // The library does not check the GCM tag; the service does.
    let mut parts: Vec<String> = jwes[0].split('.').map(str::to_owned).collect();
    let mut tag = B64URL.decode(&parts[4]).unwrap();
    tag[0] ^= 0x01;
    parts[4] = B64URL.encode(tag);
    assert_eq!(
        decryptor.decrypt(&parts.join(".")),
        Err(JweError::DecryptFailed)
    );
}

/// Sends one request the way a client built on Mastercard's libraries does: signed by
/// `sign-oauth`, `Content-Type: application/json` as their generated clients send it.
async fn send_as_library_client(
    http: &reqwest::Client,
    method: &str,
    url: &str,
    body: &str,
    signing: (&str, &str, SignatureMethod),
    extra_headers: &[(&str, String)],
) -> (u16, String) {
    let (consumer_key, key_file, signature_method) = signing;
    let signed = oracle(
        "sign-oauth",
        &json!({
            "private_key": key_file,
            "consumer_key": consumer_key,
            "signature_method": signature_method.oauth_name(),
            "requests": [{ "method": method, "url": url, "body_b64": B64.encode(body) }],
        }),
    );
    let mut request = http
        .request(method.parse().unwrap(), url)
        .header("authorization", signed["headers"][0].as_str().unwrap());
    if !body.is_empty() {
        request = request
            .header("content-type", "application/json")
            .body(body.to_owned());
    }
    for (name, value) in extra_headers {
        request = request.header(*name, value);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test]
async fn requests_made_with_the_library_pass_the_simulator_and_its_answers_open_in_the_library() {
    let files = KeyFiles::write();
    let keys = &files.keys;
    let mut config = SandboxConfig::new("127.0.0.1:0".parse().unwrap(), keys.clone()).unwrap();
    config.payload_encryption = true;
    let sandbox = Sandbox::start(config).await.unwrap();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let enroll_cert = B64.encode(keys.enroll_encryption_certificate.to_der().unwrap());
    let processing_key = files.path(files::PROCESSING_SIGNING_KEY);
    let enroll_key = files.path(files::ENROLL_SIGNING_KEY);
    let decrypt = |private_key: &str, body: &str| -> Value {
        let opened = oracle(
            "decrypt",
            &json!({ "private_key": private_key, "bodies": [body] }),
        );
        serde_json::from_str(opened["results"][0]["payload"].as_str().unwrap()).unwrap()
    };

    for method in METHODS {
        // POST /cards/searches, its body encrypted by the library for Mastercard's key.
        let search = json!({
            "enrollType": "SYNCHRONOUS",
            "synchronousRequest": { "cardholderFullName": CARDHOLDER },
            "cardContractId": 70001,
        });
        let sealed = oracle(
            "encrypt",
            &json!({
                "certificate": files.path(files::MASTERCARD_PAYLOAD_CERT),
                "payloads": [search.to_string()],
            }),
        )["results"][0]["body"]
            .as_str()
            .unwrap()
            .to_owned();
        let url = format!("{}/cards/searches", sandbox.processing_base_url());
        let (status, answer) = send_as_library_client(
            &http,
            "POST",
            &url,
            &sealed,
            (&keys.processing_consumer_key, &processing_key, method),
            &[("Enroll-Client-Encryption-Key", enroll_cert.clone())],
        )
        .await;
        assert_eq!(status, 200, "{method:?} search: {answer}");
        // The simulator's sealed answer opens in the library, and so does the card object.
        let found = decrypt(&files.path(files::CLIENT_PAYLOAD_KEY), &answer);
        let card_data = found["cardData"].as_str().expect("cardData").to_owned();
        let card = decrypt(
            &files.path(files::ENROLL_ENCRYPTION_KEY),
            &json!({ "encryptedValue": card_data }).to_string(),
        );
        assert!(
            card["primaryAccountNumber"] == "5186001700009726"
                && card["panExpirationMonth"] == "12"
                && card["panExpirationYear"] == "2030",
            "the card object does not describe card 70001"
        );

        // GET with a query.
        let url = format!(
            "{}/clients/40000/tokens?status=Active",
            sandbox.processing_base_url()
        );
        let (status, answer) = send_as_library_client(
            &http,
            "GET",
            &url,
            "",
            (&keys.processing_consumer_key, &processing_key, method),
            &[],
        )
        .await;
        assert_eq!(status, 200, "{method:?} tokens: {answer}");
        decrypt(&files.path(files::CLIENT_PAYLOAD_KEY), &answer);

        // POST /cards with a card object the library encrypted (16-byte IV) for Click to Pay.
        let card = json!({
            "primaryAccountNumber": "5186001700009726",
            "panExpirationMonth": "12",
            "panExpirationYear": "2030",
            "cardholderFullName": CARDHOLDER,
        });
        let encrypted = oracle(
            "encrypt",
            &json!({
                "certificate": files.path(files::ENROLL_ENCRYPTION_CERT),
                "payloads": [card.to_string()],
            }),
        )["results"][0]["jwe"]
            .as_str()
            .unwrap()
            .to_owned();
        let program = &keys.program;
        let request = mastercard_enroll_request(
            &program.src_client_id,
            &program.service_id,
            &uuid::Uuid::new_v4().to_string(),
            EncryptedCard::new(encrypted),
        );
        let body = serde_json::to_string(&request).unwrap();
        let url = format!("{}/cards", sandbox.enroll_base_url());
        let client_id = keys.enroll_consumer_key[..48].to_owned();
        let (status, answer) = send_as_library_client(
            &http,
            "POST",
            &url,
            &body,
            (&keys.enroll_consumer_key, &enroll_key, method),
            &[("x-openapi-clientid", client_id)],
        )
        .await;
        assert_eq!(status, 200, "{method:?} enroll: {answer}");
        let enrolled: Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(enrolled["maskedCard"]["panLastFour"], "9726");
    }
    let outcomes = sandbox.gateway_outcomes();
    assert_eq!(outcomes.len(), 6);
    assert!(
        outcomes.iter().all(|o| *o == GatewayOutcome::Passed),
        "{outcomes:?}"
    );
}
