//! `UpstreamError`: every way a Mastercard call can fail, kept apart because each maps to its own
//! gRPC code and retry decision. It carries Mastercard's reason code, source and correlation ids,
//! never a request or response body. The error body shapes: `docs/mastercard.md#error-bodies`.

use super::jwe::JweError;
use serde::Deserialize;
use std::fmt;
use std::time::Duration;

/// Which Mastercard API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Api {
    /// Mastercard Processing Digital.
    Processing,
    /// The Click to Pay Enroll API.
    Enroll,
}

impl Api {
    /// `processing` or `enroll` (settings section, metric label).
    pub fn name(self) -> &'static str {
        match self {
            Api::Processing => "processing",
            Api::Enroll => "enroll",
        }
    }
}

impl fmt::Display for Api {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Mastercard's correlation ids from the response headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Correlation {
    /// `X-MC-Correlation-ID`.
    pub mc_correlation_id: Option<String>,
    /// `correlation-id`.
    pub correlation_id: Option<String>,
}

impl Correlation {
    /// Reads the correlation headers.
    pub fn from_headers(headers: &reqwest::header::HeaderMap) -> Self {
        let get = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|s| s.chars().take(128).collect())
        };
        Self {
            mc_correlation_id: get("x-mc-correlation-id"),
            correlation_id: get("correlation-id"),
        }
    }

    /// The most specific id present.
    pub fn best(&self) -> Option<&str> {
        self.mc_correlation_id
            .as_deref()
            .or(self.correlation_id.as_deref())
    }
}

/// Mastercard's structured reason for a refusal, from either error body shape.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamReason {
    /// Processing `ReasonCode` (e.g. `CARD_CONTRACT_DOES_NOT_EXIST`), Enroll `status` (e.g.
    /// `INVALID_STATE`).
    pub code: Option<String>,
    /// Enroll `details[].reason` (e.g. `INVALID_VALUE`).
    pub detail: Option<String>,
    /// Processing `Source` (e.g. `Gateway`), Enroll `details[].source` (a field name).
    pub source: Option<String>,
    /// Processing `Recoverable`.
    pub recoverable: Option<bool>,
}

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    /// No request left this process: DNS, connect or TLS failed. Always safe to retry.
    ConnectFailed,
    /// The connection failed after the request was (possibly) sent: Mastercard may have acted.
    SendFailed,
    /// No complete answer within the attempt's timeout (the request may have been acted on);
    /// or, with `budget_exhausted`, the deadline ran out before the next attempt was sent
    /// (waiting to retry, or for its signature on the signing pool).
    Timeout,
    /// A 4xx answer, with Mastercard's reason. 429 carries `retry_after`.
    Rejected {
        /// HTTP status.
        status: u16,
        /// Mastercard's reason, when the body parsed.
        reason: UpstreamReason,
        /// `Retry-After`, when present.
        retry_after: Option<Duration>,
    },
    /// A 5xx answer.
    ServerError {
        /// HTTP status.
        status: u16,
        /// Mastercard's reason, when the body parsed.
        reason: UpstreamReason,
    },
    /// A 2xx answer whose body is not what the API promises.
    Decode(String),
    /// The encrypted response could not be decrypted.
    Decrypt(JweError),
    /// The API's circuit breaker is open; no request was sent. It lets a probe through in
    /// `closes_in` (the caller's RetryInfo).
    CircuitOpen {
        /// Until the breaker lets a probe call through.
        closes_in: std::time::Duration,
    },
    /// The request could not be built (e.g. signing failed); nothing was sent.
    Request(String),
}

impl UpstreamErrorKind {
    /// A 404 of the API itself: an error body of one of Mastercard's shapes with a reason
    /// (`NOT_FOUND`, ...), and not one the gateway answered (its own body, `Source` `Gateway`)
    /// for a path it does not route. For the lifecycle calls this is the answer "Click to Pay
    /// does not hold it" (`CallSpec::absent_is_answer`). A 404 without such a body (empty,
    /// HTML: a proxy's, an ingress's, a wrong base URL's) is no evidence of that, and stays a
    /// refusal: a delete it answered must not pass for done.
    pub fn is_api_not_found(&self) -> bool {
        match self {
            UpstreamErrorKind::Rejected {
                status: 404,
                reason,
                ..
            } => {
                reason.code.is_some()
                    && !reason
                        .source
                        .as_deref()
                        .is_some_and(|s| s.eq_ignore_ascii_case("gateway"))
            }
            _ => false,
        }
    }
}

/// A failed Mastercard call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamError {
    /// The API.
    pub api: Api,
    /// The operation, e.g. `searchCard`.
    pub operation: &'static str,
    /// What went wrong on the last attempt.
    pub kind: UpstreamErrorKind,
    /// Mastercard's correlation ids of the last answer, when there was one.
    pub correlation: Correlation,
    /// How many attempts were made (0 when the breaker refused the first).
    pub attempts: u32,
    /// True when retries stopped because the deadline or budget left no time for another.
    pub budget_exhausted: bool,
}

impl UpstreamError {
    /// Whether another attempt (later, e.g. by the caller) may succeed.
    pub fn is_transient(&self) -> bool {
        match &self.kind {
            UpstreamErrorKind::ConnectFailed
            | UpstreamErrorKind::SendFailed
            | UpstreamErrorKind::Timeout
            | UpstreamErrorKind::CircuitOpen { .. }
            | UpstreamErrorKind::ServerError { .. } => true,
            UpstreamErrorKind::Rejected { status, .. } => *status == 429,
            UpstreamErrorKind::Decode(_)
            | UpstreamErrorKind::Decrypt(_)
            | UpstreamErrorKind::Request(_) => false,
        }
    }

    /// Mastercard's reason code, when it gave one.
    pub fn reason_code(&self) -> Option<&str> {
        match &self.kind {
            UpstreamErrorKind::Rejected { reason, .. }
            | UpstreamErrorKind::ServerError { reason, .. } => reason.code.as_deref(),
            _ => None,
        }
    }
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: ", self.api, self.operation)?;
        match &self.kind {
            UpstreamErrorKind::ConnectFailed => write!(f, "could not connect")?,
            UpstreamErrorKind::SendFailed => {
                write!(f, "connection failed after the request was sent")?
            }
            UpstreamErrorKind::Timeout => write!(f, "timed out")?,
            UpstreamErrorKind::Rejected { status, reason, .. } => {
                write!(f, "rejected with HTTP {status}")?;
                write_reason(f, reason)?;
            }
            UpstreamErrorKind::ServerError { status, reason } => {
                write!(f, "server error HTTP {status}")?;
                write_reason(f, reason)?;
            }
            UpstreamErrorKind::Decode(what) => write!(f, "undecodable answer ({what})")?,
            UpstreamErrorKind::Decrypt(e) => write!(f, "{e}")?,
            UpstreamErrorKind::CircuitOpen { closes_in } => write!(
                f,
                "circuit breaker open for another {} ms",
                closes_in.as_millis()
            )?,
            UpstreamErrorKind::Request(what) => write!(f, "request not sent ({what})")?,
        }
        write!(f, " after {} attempt(s)", self.attempts)?;
        if let Some(id) = self.correlation.best() {
            write!(f, ", correlation id {id}")?;
        }
        Ok(())
    }
}

fn write_reason(f: &mut fmt::Formatter<'_>, r: &UpstreamReason) -> fmt::Result {
    if let Some(code) = &r.code {
        write!(f, " {code}")?;
    }
    if let Some(detail) = &r.detail {
        write!(f, "/{detail}")?;
    }
    if let Some(source) = &r.source {
        write!(f, " (source {source})")?;
    }
    Ok(())
}

impl std::error::Error for UpstreamError {}

// The error bodies, parsed tolerantly. Only codes and sources are kept: descriptions and
// messages may echo request values, so they are dropped here.

#[derive(Deserialize)]
struct ProcessingWrapper {
    #[serde(rename = "Errors")]
    errors: ProcessingErrors,
}

/// `Errors` as Processing and most Mastercard pages print it (`{"Error": [...]}` or one
/// object), or as the issuer-enrollment "Error Handling" page prints it (an array of
/// `{"Error": {...}}`).
#[derive(Deserialize)]
#[serde(untagged)]
enum ProcessingErrors {
    Wrapped {
        #[serde(rename = "Error")]
        error: OneOrMany<ProcessingError>,
    },
    Listed(Vec<ListedError>),
}

#[derive(Deserialize)]
struct ListedError {
    #[serde(rename = "Error")]
    error: ProcessingError,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany<T> {
    Many(Vec<T>),
    One(T),
}

#[derive(Deserialize)]
struct ProcessingError {
    #[serde(rename = "Source")]
    source: Option<String>,
    #[serde(rename = "ReasonCode")]
    reason_code: Option<String>,
    #[serde(rename = "Recoverable")]
    recoverable: Option<bool>,
}

/// The Enroll API's and SRC's application errors: `status` is the category (`INVALID_STATE`)
/// in the spec's example, the HTTP status (`400`, `404`) on the "Code and Formats" page and in
/// SRC answers, where `reason` is then the category (`NOT_FOUND`); some APIs name it
/// `errorCode`.
#[derive(Deserialize)]
struct EnrollErrorBody {
    status: Option<StatusField>,
    reason: Option<String>,
    #[serde(alias = "ErrorCode")]
    #[serde(rename = "errorCode")]
    error_code: Option<String>,
    #[serde(alias = "errordetail", alias = "errorDetails")]
    details: Option<Vec<EnrollErrorDetail>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StatusField {
    Text(String),
    // The HTTP status: its type alone tells the shapes apart; its value is the answer's own.
    Number(#[allow(dead_code)] serde_json::Number),
}

#[derive(Deserialize)]
struct EnrollErrorDetail {
    reason: Option<String>,
    source: Option<String>,
}

/// Mastercard's reason from an error body of either shape; empty when it is neither. Each part
/// is kept only if it looks like a code (at most [`MAX_REASON_CHARS`] letters, digits, spaces
/// and `_.-:[]/`): they go into the caller's error details, stored answers and metric labels,
/// and an answer could put anything there (an echoed request value among it).
pub fn parse_error_body(body: &[u8]) -> UpstreamReason {
    let r = parse_reason(body);
    UpstreamReason {
        // A code that does not look like one is still the API's own answer (what tells a 404
        // of the API from a proxy's): kept as a placeholder, its text dropped.
        code: r
            .code
            .map(|c| if code_like(&c) { c } else { NOT_A_CODE.into() }),
        detail: r.detail.filter(|c| code_like(c)),
        source: r.source.filter(|c| code_like(c)),
        recoverable: r.recoverable,
    }
}

/// The code of an error body whose code does not look like one.
pub const NOT_A_CODE: &str = "UNREADABLE_REASON";

/// The longest reason part kept (Mastercard's are well under it).
pub const MAX_REASON_CHARS: usize = 64;

fn code_like(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= MAX_REASON_CHARS
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || " _.-:[]/$".contains(c))
}

fn parse_reason(body: &[u8]) -> UpstreamReason {
    if let Ok(w) = serde_json::from_slice::<ProcessingWrapper>(body) {
        let first = match w.errors {
            ProcessingErrors::Wrapped {
                error: OneOrMany::Many(v),
            } => v.into_iter().next(),
            ProcessingErrors::Wrapped {
                error: OneOrMany::One(e),
            } => Some(e),
            ProcessingErrors::Listed(v) => v.into_iter().next().map(|l| l.error),
        };
        if let Some(e) = first {
            return UpstreamReason {
                code: e.reason_code,
                detail: None,
                source: e.source,
                recoverable: e.recoverable,
            };
        }
    }
    if let Ok(e) = serde_json::from_slice::<EnrollErrorBody>(body) {
        let first = e.details.and_then(|d| d.into_iter().next());
        // A text `status` is the category, with the top-level reason as a detail; a numeric
        // one is the HTTP status, and the category is `reason` (or `errorCode`).
        let (code, top_reason) = match (e.status, e.reason, e.error_code) {
            (Some(StatusField::Text(status)), reason, code) => (Some(status), reason.or(code)),
            (Some(StatusField::Number(_)) | None, reason, code) => (reason.or(code), None),
        };
        // A detail that is no code gives way to the top-level reason, not hides it.
        let top_reason = top_reason.filter(|r| code_like(r));
        let (detail, source) = match first {
            Some(d) => (d.reason.filter(|r| code_like(r)).or(top_reason), d.source),
            None => (top_reason, None),
        };
        return UpstreamReason {
            code,
            detail,
            source,
            recoverable: None,
        };
    }
    UpstreamReason::default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_parts_that_are_not_codes_are_dropped() {
        let long = "A".repeat(MAX_REASON_CHARS + 1);
        let body = format!(
            r#"{{"Errors":{{"Error":[{{"Source":"MASTERCARD PROCESSING","ReasonCode":"{long}"}}]}}}}"#
        );
        let r = parse_error_body(body.as_bytes());
        assert_eq!(
            r.code.as_deref(),
            Some(NOT_A_CODE),
            "the API's answer, its text dropped"
        );
        assert_eq!(r.source.as_deref(), Some("MASTERCARD PROCESSING"));
        let r = parse_error_body(
            br#"{"status":400,"reason":"INVALID_ARGUMENT","errordetail":[{"reason":"bad value jane@example.com\n","source":"consumer.emailAddress"}]}"#,
        );
        assert_eq!(r.code.as_deref(), Some("INVALID_ARGUMENT"));
        assert_eq!(r.detail, None, "an echoed value is no code");
        assert_eq!(r.source.as_deref(), Some("consumer.emailAddress"));
        // A 404 of the API whose reason is prose is still the API's 404.
        let r = parse_error_body(br#"{"status":404,"reason":"Card doesn't exist"}"#);
        assert_eq!(r.code.as_deref(), Some(NOT_A_CODE));
    }

    #[test]
    fn processing_error_body_including_gateway_errors() {
        let body = br#"{"Errors":{"Error":[{"Source":"MASTERCARD PROCESSING","ReasonCode":"CARD_CONTRACT_DOES_NOT_EXIST","Description":"Card contract 99 does not exist","Recoverable":false,"Details":null}]}}"#;
        let r = parse_error_body(body);
        assert_eq!(r.code.as_deref(), Some("CARD_CONTRACT_DOES_NOT_EXIST"));
        assert_eq!(r.source.as_deref(), Some("MASTERCARD PROCESSING"));
        assert_eq!(r.recoverable, Some(false));

        let gateway = br#"{"Errors":{"Error":{"Source":"Gateway","ReasonCode":"AUTHENTICATION_FAILED","Description":"OAuth signature invalid","Recoverable":false,"Details":null}}}"#;
        let r = parse_error_body(gateway);
        assert_eq!(r.code.as_deref(), Some("AUTHENTICATION_FAILED"));
        assert_eq!(r.source.as_deref(), Some("Gateway"));
    }

    #[test]
    fn enroll_error_bodies_of_both_shapes() {
        let one = br#"{"code":400,"status":"INVALID_ARGUMENT","message":"srcClientId bad","details":[{"reason":"CANNOT_BE_NULL","source":"correlation-id","message":"x","sourceType":"BODY"}]}"#;
        let r = parse_error_body(one);
        assert_eq!(r.code.as_deref(), Some("INVALID_ARGUMENT"));
        assert_eq!(r.detail.as_deref(), Some("CANNOT_BE_NULL"));
        assert_eq!(r.source.as_deref(), Some("correlation-id"));

        let two = br#"{"status":"INVALID_STATE","reason":"INVALID_VALUE","message":"serviceId unknown","errordetail":[{"reason":"INVALID_VALUE","sourceType":"BODY","message":"m","source":"serviceId"}]}"#;
        let r = parse_error_body(two);
        assert_eq!(r.code.as_deref(), Some("INVALID_STATE"));
        assert_eq!(r.detail.as_deref(), Some("INVALID_VALUE"));
        assert_eq!(r.source.as_deref(), Some("serviceId"));
    }

    #[test]
    fn the_error_handling_pages_errors_array_and_numeric_statuses_parse_too() {
        // The issuer-enrollment "Error Handling" page: `Errors` is an array of `{"Error": {}}`.
        let listed = br#"{"Errors":[{"Error":{"Source":"Gateway","ReasonCode":"INVALID_CLIENT_ID","Description":"d","Recoverable":false,"Details":null}}]}"#;
        let r = parse_error_body(listed);
        assert_eq!(r.code.as_deref(), Some("INVALID_CLIENT_ID"));
        assert_eq!(r.source.as_deref(), Some("Gateway"));
        // The "Code and Formats" page and SRC: `status` is the HTTP status, `reason` the
        // category, the first detail's reason the detail.
        let coded = br#"{"status":400,"reason":"INVALID_ARGUMENT","message":"m","errordetail":[{"reason":"CANNOT_BE_NULL","sourceType":"BODY","source":"srcClientId","message":"x"}]}"#;
        let r = parse_error_body(coded);
        assert_eq!(r.code.as_deref(), Some("INVALID_ARGUMENT"));
        assert_eq!(r.detail.as_deref(), Some("CANNOT_BE_NULL"));
        assert_eq!(r.source.as_deref(), Some("srcClientId"));
        // A card already deleted, as a third-party SRC client saw it.
        let gone = br#"{"status":404,"reason":"NOT_FOUND","message":"Card not found"}"#;
        assert_eq!(parse_error_body(gone).code.as_deref(), Some("NOT_FOUND"));
        let error_code = br#"{"status":404,"errorCode":"NOT_FOUND"}"#;
        assert_eq!(
            parse_error_body(error_code).code.as_deref(),
            Some("NOT_FOUND")
        );
    }

    #[test]
    fn unknown_bodies_give_an_empty_reason() {
        assert_eq!(
            parse_error_body(b"<html>bad gateway</html>"),
            UpstreamReason::default()
        );
        assert_eq!(parse_error_body(b""), UpstreamReason::default());
    }

    #[test]
    fn display_carries_codes_and_correlation_but_no_description() {
        let e = UpstreamError {
            api: Api::Processing,
            operation: "searchCard",
            kind: UpstreamErrorKind::Rejected {
                status: 404,
                reason: parse_error_body(br#"{"Errors":{"Error":[{"Source":"S","ReasonCode":"CARD_CONTRACT_DOES_NOT_EXIST","Description":"secret-ish text","Recoverable":false}]}}"#),
                retry_after: None,
            },
            correlation: Correlation {
                mc_correlation_id: Some("abc-1".into()),
                correlation_id: None,
            },
            attempts: 1,
            budget_exhausted: false,
        };
        let s = e.to_string();
        assert!(
            s.contains("CARD_CONTRACT_DOES_NOT_EXIST") && s.contains("abc-1"),
            "{s}"
        );
        assert!(!s.contains("secret-ish"), "{s}");
    }
}
