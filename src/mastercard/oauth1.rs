//! Mastercard's OAuth 1.0a with body hash, byte for byte as Mastercard's signer libraries do it
//! (`docs/mastercard.md#oauth-signing`), as pure functions with the clock and the nonce
//! injected, plus the verifying side the simulator's gateway uses.

use super::keys::{PublicKey, SigningKey};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use openssl::hash::MessageDigest;
use openssl::rsa::Padding;
use openssl::sign::{RsaPssSaltlen, Signer, Verifier};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use rand::Rng as _;
use std::collections::BTreeMap;

/// RFC 3986 encoding: everything but `A-Z a-z 0-9 - . _ ~` as uppercase `%XX` of UTF-8 bytes.
const RFC3986: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// RFC 3986 percent-encoding as Mastercard's `Util.percentEncode`.
pub fn pct(s: &str) -> String {
    utf8_percent_encode(s, RFC3986).to_string()
}

/// The signature algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SignatureMethod {
    /// RSASSA-PKCS1-v1_5 with SHA-256 (`RSA-SHA256`), the default.
    #[default]
    RsaSha256,
    /// RSASSA-PSS with SHA-256, MGF1-SHA-256, 32-byte salt (`RSA-PSS`).
    RsaPss,
}

impl SignatureMethod {
    /// The `oauth_signature_method` value.
    pub fn oauth_name(self) -> &'static str {
        match self {
            SignatureMethod::RsaSha256 => "RSA-SHA256",
            SignatureMethod::RsaPss => "RSA-PSS",
        }
    }

    fn from_oauth_name(name: &str) -> Option<Self> {
        match name {
            "RSA-SHA256" => Some(SignatureMethod::RsaSha256),
            "RSA-PSS" => Some(SignatureMethod::RsaPss),
            _ => None,
        }
    }
}

/// The source of `oauth_timestamp`.
pub trait Clock: Send + Sync {
    /// Seconds since the Unix epoch.
    fn unix_seconds(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn unix_seconds(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }
}

/// The source of `oauth_nonce`.
pub trait NonceSource: Send + Sync {
    /// A fresh nonce.
    fn nonce(&self) -> String;
}

/// 16 random characters from `[0-9A-Za-z]`, as Mastercard's libraries make them.
#[derive(Debug, Default, Clone, Copy)]
pub struct RandomNonce;

impl NonceSource for RandomNonce {
    fn nonce(&self) -> String {
        const CHARS: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        let mut rng = rand::rng();
        (0..16)
            .map(|_| char::from(CHARS[rng.random_range(0..CHARS.len())]))
            .collect()
    }
}

/// Why a request could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The URI is not absolute.
    #[error("cannot sign {0}: not an absolute http(s) URI")]
    BadUri(String),
    /// OpenSSL refused to sign.
    #[error("signing failed: {0}")]
    Crypto(String),
}

/// `oauth_body_hash`: standard Base64 (padded) of SHA-256 of the body bytes.
pub fn body_hash(body: &[u8]) -> String {
    B64.encode(crate::digest::sha256(body))
}

/// The query parameters of `url` for the base string: taken from the decoded query, and
/// percent-encoded only when the raw query held `%`-escapes (decoded differs from raw).
pub fn query_params(url: &url::Url) -> Vec<(String, String)> {
    let Some(raw) = url.query().filter(|q| !q.is_empty()) else {
        return Vec::new();
    };
    let decoded = percent_decode_str(raw).decode_utf8_lossy().into_owned();
    let must_encode = decoded != raw;
    decoded
        .split('&')
        .map(|pair| {
            // A key without `=` (or starting with it) takes the whole pair and an empty value.
            let (key, value) = match pair.find('=') {
                Some(idx) if idx > 0 => (&pair[..idx], &pair[idx + 1..]),
                _ => (pair, ""),
            };
            if must_encode {
                (pct(key), pct(value))
            } else {
                (key.to_owned(), value.to_owned())
            }
        })
        .collect()
}

/// Scheme and host in lower case, default port dropped, raw path (`/` when empty), no query or
/// fragment.
pub fn base_uri(url: &url::Url) -> String {
    // `url` already lower-cases scheme and host and drops the scheme's default port.
    let mut out = format!("{}://", url.scheme());
    if let Some(host) = url.host_str() {
        out.push_str(&host.to_lowercase());
    }
    if let Some(port) = url.port() {
        out.push_str(&format!(":{port}"));
    }
    let path = url.path();
    out.push_str(if path.is_empty() { "/" } else { path });
    out
}

/// `k=v` pairs sorted by key, then value, in byte order, joined with `&`.
pub fn param_string(params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort_by(|a, b| {
        a.0.as_bytes()
            .cmp(b.0.as_bytes())
            .then(a.1.as_bytes().cmp(b.1.as_bytes()))
    });
    sorted
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// `METHOD&pct(base uri)&pct(param string)`.
pub fn signature_base_string(method: &str, base_uri: &str, param_string: &str) -> String {
    format!(
        "{}&{}&{}",
        method.to_uppercase(),
        pct(base_uri),
        pct(param_string)
    )
}

/// Standard Base64 of the signature of the UTF-8 base string.
pub fn sign(
    base_string: &str,
    key: &SigningKey,
    method: SignatureMethod,
) -> Result<String, SignError> {
    let crypto = |e: openssl::error::ErrorStack| SignError::Crypto(e.to_string());
    let mut signer = Signer::new(MessageDigest::sha256(), key.pkey()).map_err(crypto)?;
    if method == SignatureMethod::RsaPss {
        signer.set_rsa_padding(Padding::PKCS1_PSS).map_err(crypto)?;
        signer
            .set_rsa_mgf1_md(MessageDigest::sha256())
            .map_err(crypto)?;
        signer
            .set_rsa_pss_saltlen(RsaPssSaltlen::custom(32))
            .map_err(crypto)?;
    }
    signer.update(base_string.as_bytes()).map_err(crypto)?;
    Ok(B64.encode(signer.sign_to_vec().map_err(crypto)?))
}

/// What one signature is made of, besides the request.
pub struct Credentials<'a> {
    /// `oauth_consumer_key`.
    pub consumer_key: &'a str,
    /// The private key.
    pub key: &'a SigningKey,
    /// RSA-SHA256 or RSA-PSS.
    pub method: SignatureMethod,
}

/// The `Authorization` header value for `method uri` with `body` (the exact bytes sent).
pub fn authorization_header(
    http_method: &str,
    uri: &url::Url,
    body: &[u8],
    credentials: &Credentials<'_>,
    clock: &dyn Clock,
    nonces: &dyn NonceSource,
) -> Result<String, SignError> {
    if !matches!(uri.scheme(), "http" | "https") || uri.host_str().is_none() {
        return Err(SignError::BadUri(base_uri(uri)));
    }
    let oauth: Vec<(String, String)> = vec![
        ("oauth_body_hash".into(), body_hash(body)),
        (
            "oauth_consumer_key".into(),
            credentials.consumer_key.to_owned(),
        ),
        ("oauth_nonce".into(), nonces.nonce()),
        (
            "oauth_signature_method".into(),
            credentials.method.oauth_name().into(),
        ),
        ("oauth_timestamp".into(), clock.unix_seconds().to_string()),
        ("oauth_version".into(), "1.0".into()),
    ];
    let mut all = query_params(uri);
    all.extend(oauth.iter().cloned());
    let sbs = signature_base_string(http_method, &base_uri(uri), &param_string(&all));
    let signature = sign(&sbs, credentials.key, credentials.method)?;
    let mut parts: Vec<String> = oauth.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    parts.push(format!("oauth_signature=\"{}\"", pct(&signature)));
    Ok(format!("OAuth {}", parts.join(",")))
}

/// Why a signed request was refused (the simulator's gateway checks).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// No `Authorization: OAuth ...` header, or one that does not parse.
    #[error("malformed OAuth header: {0}")]
    Malformed(String),
    /// A required `oauth_*` parameter is missing.
    #[error("missing {0}")]
    Missing(&'static str),
    /// The signature method is not RSA-SHA256 or RSA-PSS.
    #[error("unsupported signature method")]
    UnsupportedMethod,
    /// `oauth_body_hash` does not match the bytes received.
    #[error("body hash does not match the body")]
    BodyHashMismatch,
    /// The signature does not verify with the consumer key's public key.
    #[error("signature does not verify")]
    BadSignature,
}

/// The `oauth_*` parameters of a request that passed [`verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedParams {
    /// `oauth_consumer_key`.
    pub consumer_key: String,
    /// `oauth_timestamp`.
    pub timestamp: u64,
    /// `oauth_nonce`.
    pub nonce: String,
}

/// The `oauth_*` parameters of an `Authorization` header, signature percent-decoded.
pub fn parse_header(header: &str) -> Result<BTreeMap<String, String>, VerifyError> {
    let rest = header
        .strip_prefix("OAuth ")
        .ok_or_else(|| VerifyError::Malformed("not an OAuth header".into()))?;
    let mut params = BTreeMap::new();
    for part in rest.split(',') {
        let part = part.trim();
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| VerifyError::Malformed("a parameter without '='".into()))?;
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .ok_or_else(|| VerifyError::Malformed("an unquoted value".into()))?;
        let v = if k == "oauth_signature" {
            percent_decode_str(v).decode_utf8_lossy().into_owned()
        } else {
            v.to_owned()
        };
        params.insert(k.to_owned(), v);
    }
    Ok(params)
}

/// The consumer key named in an `Authorization` header, so the verifier can look up its key.
pub fn consumer_key_of(header: &str) -> Result<String, VerifyError> {
    parse_header(header)?
        .remove("oauth_consumer_key")
        .ok_or(VerifyError::Missing("oauth_consumer_key"))
}

/// Checks an incoming request the way Mastercard's gateway does: body hash against the bytes
/// received, then the signature over the rebuilt base string with `public_key`. Timestamp window
/// and nonce replay are the caller's (stateful) checks.
pub fn verify(
    http_method: &str,
    uri: &url::Url,
    body: &[u8],
    header: &str,
    public_key: &PublicKey,
) -> Result<SignedParams, VerifyError> {
    let mut params = parse_header(header)?;
    let signature = params
        .remove("oauth_signature")
        .ok_or(VerifyError::Missing("oauth_signature"))?;
    let get = |k: &'static str| params.get(k).cloned().ok_or(VerifyError::Missing(k));
    let method = SignatureMethod::from_oauth_name(&get("oauth_signature_method")?)
        .ok_or(VerifyError::UnsupportedMethod)?;
    if get("oauth_body_hash")? != body_hash(body) {
        return Err(VerifyError::BodyHashMismatch);
    }
    let consumer_key = get("oauth_consumer_key")?;
    let nonce = get("oauth_nonce")?;
    let timestamp = get("oauth_timestamp")?
        .parse::<u64>()
        .map_err(|_| VerifyError::Malformed("oauth_timestamp is not a number".into()))?;

    let mut all = query_params(uri);
    all.extend(params);
    let sbs = signature_base_string(http_method, &base_uri(uri), &param_string(&all));
    let raw_signature = B64
        .decode(signature.as_bytes())
        .map_err(|_| VerifyError::BadSignature)?;
    let ok = (|| -> Result<bool, openssl::error::ErrorStack> {
        let mut verifier = Verifier::new(MessageDigest::sha256(), public_key.pkey())?;
        if method == SignatureMethod::RsaPss {
            verifier.set_rsa_padding(Padding::PKCS1_PSS)?;
            verifier.set_rsa_mgf1_md(MessageDigest::sha256())?;
            verifier.set_rsa_pss_saltlen(RsaPssSaltlen::custom(32))?;
        }
        verifier.update(sbs.as_bytes())?;
        verifier.verify(&raw_signature)
    })()
    .unwrap_or(false);
    if !ok {
        return Err(VerifyError::BadSignature);
    }
    Ok(SignedParams {
        consumer_key,
        timestamp,
        nonce,
    })
}

#[cfg(test)]
mod tests;
