//! Gateway checks like Mastercard's, on the verifying side of the adapter's own OAuth code:
//! content type, a registered consumer key, body hash against the bytes received, signature,
//! timestamp window, nonce replay. Refusals get Mastercard-shaped bodies.

use super::requests::GatewayOutcome;
use crate::mastercard::keys::PublicKey;
use crate::mastercard::oauth1::{self, VerifyError};
use axum::http::{HeaderMap, StatusCode, header};
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Mutex;
use std::time::Duration;

/// The timestamp of each (consumer key, nonce) seen.
type Nonces = HashMap<(String, String), u64>;

/// The registered consumers and the replay cache.
pub struct Gateway {
    consumers: HashMap<String, PublicKey>,
    window: Duration,
    /// Nonces seen (with their timestamps), and the second they were last swept.
    nonces: Mutex<(Nonces, u64)>,
}

impl Gateway {
    /// A gateway accepting `consumers`, with timestamps at most `window` away from now.
    pub fn new(consumers: HashMap<String, PublicKey>, window: Duration) -> Self {
        Self {
            consumers,
            window,
            nonces: Mutex::new((HashMap::new(), 0)),
        }
    }

    /// Runs every check; `Err` names the first that failed.
    pub fn check(
        &self,
        method: &str,
        url: &url::Url,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<(), GatewayOutcome> {
        if !body.is_empty() {
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok());
            if !content_type.is_some_and(is_json_utf8) {
                return Err(GatewayOutcome::BadContentType);
            }
        }
        let authorization = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or(GatewayOutcome::MissingAuthorization)?;
        let consumer_key = oauth1::consumer_key_of(authorization)
            .map_err(|_| GatewayOutcome::MissingAuthorization)?;
        let public_key = self
            .consumers
            .get(&consumer_key)
            .ok_or(GatewayOutcome::UnknownConsumerKey)?;
        let signed =
            oauth1::verify(method, url, body, authorization, public_key).map_err(|e| match e {
                VerifyError::BodyHashMismatch => GatewayOutcome::BodyHashMismatch,
                VerifyError::BadSignature | VerifyError::UnsupportedMethod => {
                    GatewayOutcome::BadSignature
                }
                VerifyError::Malformed(_) | VerifyError::Missing(_) => {
                    GatewayOutcome::MissingAuthorization
                }
            })?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if now.abs_diff(signed.timestamp) > self.window.as_secs() {
            return Err(GatewayOutcome::TimestampOutOfWindow);
        }
        // Nonces are remembered only for signed requests, and only as long as the window. The
        // expired ones are swept once a second, not on every request (that was a walk over
        // every nonce of the window per request: quadratic under load).
        let mut guard = self.nonces.lock().unwrap_or_else(|p| p.into_inner());
        let (nonces, swept_at) = &mut *guard;
        let window = self.window.as_secs();
        if *swept_at != now {
            nonces.retain(|_, ts| now.abs_diff(*ts) <= window);
            *swept_at = now;
        }
        match nonces.entry((signed.consumer_key, signed.nonce)) {
            Entry::Occupied(seen) if now.abs_diff(*seen.get()) <= window => {
                Err(GatewayOutcome::NonceReplayed)
            }
            Entry::Occupied(mut expired) => {
                expired.insert(signed.timestamp);
                Ok(())
            }
            Entry::Vacant(new) => {
                new.insert(signed.timestamp);
                Ok(())
            }
        }
    }
}

/// `application/json`, with no charset (JSON is UTF-8, and Mastercard's generated clients send it
/// bare) or `charset=utf-8`; names and values in any case, spaces around `;` ignored.
fn is_json_utf8(content_type: &str) -> bool {
    let mut parts = content_type.split(';').map(str::trim);
    if !parts
        .next()
        .is_some_and(|media| media.eq_ignore_ascii_case("application/json"))
    {
        return false;
    }
    parts.filter(|p| !p.is_empty()).all(|param| {
        match param.split_once('=') {
            Some((name, value)) if name.trim().eq_ignore_ascii_case("charset") => {
                value.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
            }
            // Other parameters say nothing about the encoding.
            Some(_) => true,
            None => false,
        }
    })
}

/// The Mastercard-shaped refusal of a failed check.
pub fn refusal(outcome: GatewayOutcome) -> (StatusCode, serde_json::Value) {
    let (status, code, description) = match outcome {
        GatewayOutcome::BadContentType => (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
            "Content-Type must be application/json (charset utf-8)",
        ),
        GatewayOutcome::MissingAuthorization => (
            StatusCode::UNAUTHORIZED,
            "MISSING_AUTHORIZATION",
            "OAuth Authorization header missing or malformed",
        ),
        GatewayOutcome::UnknownConsumerKey => (
            StatusCode::UNAUTHORIZED,
            "INVALID_CLIENT_ID",
            "Unknown consumer key",
        ),
        GatewayOutcome::BodyHashMismatch => (
            StatusCode::UNAUTHORIZED,
            "INVALID_BODY_HASH",
            "oauth_body_hash does not match the body",
        ),
        GatewayOutcome::BadSignature => (
            StatusCode::UNAUTHORIZED,
            "INVALID_SIGNATURE",
            "OAuth signature does not verify",
        ),
        GatewayOutcome::TimestampOutOfWindow => (
            StatusCode::UNAUTHORIZED,
            "INVALID_TIMESTAMP",
            "oauth_timestamp outside the allowed window",
        ),
        GatewayOutcome::NonceReplayed => (
            StatusCode::UNAUTHORIZED,
            "NONCE_ALREADY_USED",
            "oauth_nonce was used before",
        ),
        GatewayOutcome::BadEnvelope => (
            StatusCode::BAD_REQUEST,
            "DECRYPTION_ERROR",
            "The encrypted payload could not be decrypted",
        ),
        GatewayOutcome::Passed | GatewayOutcome::Skipped => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "SYSTEM_ERROR",
            "unexpected",
        ),
    };
    (
        status,
        mastercard_error("Gateway", code, description, false),
    )
}

/// `{"Errors":{"Error":[{...}]}}`.
pub fn mastercard_error(
    source: &str,
    reason_code: &str,
    description: &str,
    recoverable: bool,
) -> serde_json::Value {
    serde_json::json!({"Errors": {"Error": [{
        "Source": source,
        "ReasonCode": reason_code,
        "Description": description,
        "Recoverable": recoverable,
        "Details": null
    }]}})
}
