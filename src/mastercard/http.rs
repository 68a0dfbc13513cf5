//! One pooled HTTP client per Mastercard API: signing, optional payload encryption, per-attempt
//! timeout, an overall budget bounded by the caller's deadline, retries only where safe, and the
//! API's circuit breaker. Signing and payload encryption run off the async workers
//! ([`offload`](super::offload)).

use super::breaker::{BreakerConfig, BreakerState, CircuitBreaker};
use super::error::{
    Api, Correlation, UpstreamError, UpstreamErrorKind, UpstreamReason, parse_error_body,
};
use super::jwe::{JweDecryptor, JweEncryptor, JweError, open_envelope, seal_envelope};
use super::keys::{Certificate, SigningKey};
use super::oauth1::{
    Clock, Credentials, NonceSource, RandomNonce, SignatureMethod, SystemClock,
    authorization_header,
};
use super::offload;
use backon::BackoffBuilder as _;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tracing::Instrument as _;

mod observe;

use observe::AttemptObserver;
pub(crate) use observe::log_failure;

/// Mastercard Processing requires exactly this content type.
pub const CONTENT_TYPE: &str = "application/json;charset=utf-8";

/// Timeouts, budget and retries of one API.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpPolicy {
    /// Bound on one attempt once signed (connect, send, complete answer): Mastercard's time.
    pub attempt_timeout: Duration,
    /// Bound on establishing a connection.
    pub connect_timeout: Duration,
    /// Bound on a whole call with its retries (further bounded by the caller's deadline).
    pub budget: Duration,
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// First backoff delay (before jitter).
    pub initial_backoff: Duration,
    /// Largest backoff delay.
    pub max_backoff: Duration,
}

impl Default for HttpPolicy {
    fn default() -> Self {
        Self {
            attempt_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
            budget: Duration::from_secs(30),
            max_attempts: 3,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(2),
        }
    }
}

/// Payload encryption of one API: requests sealed as `{"encryptedValue": JWE}`, responses opened.
#[derive(Debug)]
pub struct PayloadEncryption {
    /// Encrypts request bodies for Mastercard.
    pub encryptor: JweEncryptor,
    /// Decrypts response bodies (several keys during rotation).
    pub decryptor: JweDecryptor,
}

/// Everything one API client is made of.
pub struct ApiClientConfig {
    /// Which API.
    pub api: Api,
    /// Base URL; call paths are appended to it.
    pub base_url: url::Url,
    /// OAuth consumer key.
    pub consumer_key: String,
    /// OAuth signing key.
    pub signing_key: SigningKey,
    /// RSA-SHA256 or RSA-PSS.
    pub signature_method: SignatureMethod,
    /// Timeouts and retries.
    pub policy: HttpPolicy,
    /// Breaker settings.
    pub breaker: BreakerConfig,
    /// Payload encryption, when switched on.
    pub encryption: Option<PayloadEncryption>,
    /// An extra trusted CA (tests, private gateways).
    pub extra_ca: Option<Certificate>,
}

/// Whether a call may be repeated after it may have reached Mastercard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idempotency {
    /// Changes nothing upstream (GETs, `/cards/searches`): retried on timeouts, resets and 502-504.
    Safe,
    /// Changes state (`POST /cards`): retried only when it surely did not arrive (connect
    /// failure, 429).
    Unsafe,
}

/// One call.
pub struct CallSpec {
    /// Operation name for errors and spans, e.g. `searchCard`.
    pub operation: &'static str,
    /// HTTP method.
    pub method: reqwest::Method,
    /// Path (and query) below the base URL, starting with `/`.
    pub path: String,
    /// The JSON body, serialised once by the caller; these bytes are signed and sent.
    pub body: Option<Bytes>,
    /// Extra headers.
    pub headers: Vec<(&'static str, String)>,
    /// Retry safety.
    pub idempotency: Idempotency,
    /// A 404 of the API itself ([`UpstreamErrorKind::is_api_not_found`]) is an answer, not a
    /// failure: the lifecycle calls read it as "Click to Pay does not hold it". Such an attempt
    /// counts `outcome="not_found"` (not `rejected`, which the error-ratio alert counts) and
    /// logs no `mastercard call failed` line; the caller still gets the error to read.
    pub absent_is_answer: bool,
}

/// A 2xx answer.
#[derive(Debug)]
pub struct UpstreamResponse {
    /// HTTP status.
    pub status: u16,
    /// The body, decrypted when payload encryption is on.
    pub body: Bytes,
    /// Mastercard's correlation ids.
    pub correlation: Correlation,
    /// Attempts made.
    pub attempts: u32,
    /// When the successful attempt started: its metric is recorded once the answer was opened
    /// and decoded, so that an undecodable 2xx counts as `decrypt` or `decode`, not `ok`.
    pub(crate) started: std::time::Instant,
    /// The answer's `Date` header (Mastercard's clock, whole seconds), Unix ms.
    pub date_ms: Option<i64>,
}

/// The client of one Mastercard API.
pub struct ApiClient {
    api: Api,
    base_url: url::Url,
    consumer_key: String,
    signing_key: SigningKey,
    signature_method: SignatureMethod,
    policy: HttpPolicy,
    breaker: Arc<CircuitBreaker>,
    encryption: Option<Arc<PayloadEncryption>>,
    http: reqwest::Client,
    clock: Arc<dyn Clock>,
    nonces: Arc<dyn NonceSource>,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("api", &self.api)
            .field("base_url", &self.base_url.as_str())
            .finish_non_exhaustive()
    }
}

/// The outcome of one attempt, before the retry decision.
struct AttemptFailure {
    kind: UpstreamErrorKind,
    correlation: Correlation,
}

impl ApiClient {
    /// Builds the pooled client.
    pub fn new(config: ApiClientConfig) -> Result<Self, String> {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(config.policy.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            // Mastercard's APIs answer where they are asked. Followed, a 302 turned POST /cards
            // into a GET whose 200 read as an enrollment, and a 307 sent the consumer's data
            // (and the card's JWE) wherever it pointed: a 3xx is an answer, a failed one.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("c2p-enroll/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &config.extra_ca {
            let pem = ca.to_pem().map_err(|e| e.to_string())?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| e.to_string())?;
            builder = builder.add_root_certificate(cert);
        }
        let http = builder.build().map_err(|e| e.to_string())?;
        Ok(Self {
            api: config.api,
            base_url: config.base_url,
            consumer_key: config.consumer_key,
            signing_key: config.signing_key,
            signature_method: config.signature_method,
            policy: config.policy,
            breaker: CircuitBreaker::new(config.breaker),
            encryption: config.encryption.map(Arc::new),
            http,
            clock: Arc::new(SystemClock),
            nonces: Arc::new(RandomNonce),
        })
    }

    /// Replaces the clock and nonce source (golden tests).
    pub fn with_clock_and_nonces(
        mut self,
        clock: Arc<dyn Clock>,
        nonces: Arc<dyn NonceSource>,
    ) -> Self {
        self.clock = clock;
        self.nonces = nonces;
        self
    }

    /// The API.
    pub fn api(&self) -> Api {
        self.api
    }

    /// The consumer key (the Enroll API derives `x-openapi-clientid` from it).
    pub fn consumer_key(&self) -> &str {
        &self.consumer_key
    }

    /// The breaker's state now.
    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// An error of this API for `operation`.
    pub fn error(
        &self,
        operation: &'static str,
        kind: UpstreamErrorKind,
        correlation: Correlation,
        attempts: u32,
    ) -> UpstreamError {
        UpstreamError {
            api: self.api,
            operation,
            kind,
            correlation,
            attempts,
            budget_exhausted: false,
        }
    }

    /// `body` serialised once as the JSON body of a call to `operation`.
    pub fn json_body<T: serde::Serialize>(
        &self,
        operation: &'static str,
        body: &T,
    ) -> Result<Bytes, UpstreamError> {
        serde_json::to_vec(body).map(Bytes::from).map_err(|e| {
            self.error(
                operation,
                UpstreamErrorKind::Request(e.to_string()),
                Correlation::default(),
                0,
            )
        })
    }

    /// Runs `spec` with retries; `deadline` is the caller's (gRPC) deadline, if any. A failed
    /// call is logged once (warn): operation, error type, Mastercard's reason code and
    /// correlation id, attempts; never a body.
    pub async fn call(
        &self,
        spec: CallSpec,
        deadline: Option<Instant>,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let absent_is_answer = spec.absent_is_answer;
        let result = self.call_with_retries(spec, deadline).await;
        if let Err(e) = &result
            && !(absent_is_answer && e.kind.is_api_not_found())
        {
            log_failure(e);
        }
        result
    }

    /// Records the metric of a 2xx answer once it was decoded (`ok`) or found undecodable
    /// (`decode`).
    pub(crate) fn record_answer(
        &self,
        operation: &'static str,
        response: &UpstreamResponse,
        outcome: &'static str,
    ) {
        observe::answered(self.api, operation, response, outcome);
    }

    async fn call_with_retries(
        &self,
        spec: CallSpec,
        deadline: Option<Instant>,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let budget_end = Instant::now() + self.policy.budget;
        // Whether the caller's deadline, not the call's own budget, is what ends it.
        let callers = deadline.is_some_and(|d| d < budget_end);
        let deadline = deadline.map_or(budget_end, |d| d.min(budget_end));
        let url = self.url(&spec)?;
        // Serialise (and seal) once: these bytes are hashed, signed and sent on every attempt.
        let body: Bytes = match (&spec.body, &self.encryption) {
            (Some(plain), Some(enc)) => {
                let (enc, plain) = (enc.clone(), plain.clone());
                // Sealing waits for the signing pool too: bounded by the deadline as well.
                let sealing = offload::run(move || seal_envelope(&enc.encryptor, &plain));
                let Ok(sealed) = tokio::time::timeout_at(deadline, sealing).await else {
                    return Err(self.out_of_time(spec.operation, 0));
                };
                sealed
                    .map_err(|e| e.to_string())
                    .and_then(|sealed| sealed.map_err(|e| e.to_string()))
                    .map(Bytes::from)
                    .map_err(|e| {
                        self.error(
                            spec.operation,
                            UpstreamErrorKind::Request(e),
                            Correlation::default(),
                            0,
                        )
                    })?
            }
            (Some(plain), None) => plain.clone(),
            (None, _) => Bytes::new(),
        };
        let mut backoff = backon::ExponentialBuilder::default()
            .with_min_delay(self.policy.initial_backoff)
            .with_max_delay(self.policy.max_backoff)
            .with_jitter()
            .without_max_times()
            .build();

        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let Some(permit) = self.breaker.try_acquire() else {
                return Err(self.error(
                    spec.operation,
                    UpstreamErrorKind::CircuitOpen {
                        closes_in: self.breaker.closes_in(),
                    },
                    Correlation::default(),
                    attempt - 1,
                ));
            };
            if Instant::now() >= deadline {
                drop(permit);
                return Err(self.out_of_time(spec.operation, attempt - 1));
            }
            let observer =
                AttemptObserver::start(self.api, &spec, &url, attempt, self.breaker.state());
            // The signature waits for the signing pool: bounded by the deadline, so that a queue
            // there cannot carry the call past it. Cut there, nothing was sent and the queue is
            // ours, not Mastercard's: no attempt's outcome, nothing against the breaker (the
            // permit goes back unrecorded), the call ended as the check above ends it.
            let signing = self.authorization(&spec.method, &url, &body);
            let signed = tokio::time::timeout_at(deadline, signing)
                .instrument(observer.span().clone())
                .await;
            let now = Instant::now();
            let authorization = match signed {
                Ok(authorization) if now < deadline => authorization,
                _ => {
                    observer.span().record("error.type", "timeout");
                    drop(permit);
                    return Err(self.out_of_time(spec.operation, attempt - 1));
                }
            };
            // The attempt's own time, Mastercard's, starts once signed.
            let left = deadline - now;
            // An attempt the caller gave less than half the attempt timeout: its running out is
            // no evidence against Mastercard. Longer ones count (deadlines of 5 s against a
            // Mastercard that never answers must open the breaker), and so do the budget's cuts.
            let cut_by_caller = callers && left < self.policy.attempt_timeout / 2;
            let until = now + self.policy.attempt_timeout.min(left);
            let outcome = self
                .attempt(&spec, &url, &body, authorization, until)
                .instrument(observer.span().clone())
                .await;
            let outcome = observer.finished(outcome);
            match &outcome {
                // Cut short by the caller's short deadline, not by the attempt timeout: no
                // evidence against Mastercard. Counted, one caller's short deadlines opened the
                // breaker for every caller while Mastercard answered in time.
                Err(f) if cut_by_caller && f.kind == UpstreamErrorKind::Timeout => drop(permit),
                Ok(_) => permit.record(false),
                Err(f) => permit.record(counts_against_api(&f.kind)),
            }
            observer.breaker_state(self.breaker.state());
            let failure = match outcome {
                Ok(response) => {
                    return self.open_response(spec.operation, response, attempt).await;
                }
                Err(f) => f,
            };

            let mut error = self.error(spec.operation, failure.kind, failure.correlation, attempt);
            if !retryable(&error.kind, spec.idempotency) || attempt >= self.policy.max_attempts {
                return Err(error);
            }
            let delay = match &error.kind {
                UpstreamErrorKind::Rejected {
                    retry_after: Some(after),
                    ..
                } => *after,
                _ => backoff.next().unwrap_or(self.policy.max_backoff),
            };
            // A `Retry-After` past what the clock can hold is past the deadline too.
            if Instant::now()
                .checked_add(delay)
                .is_none_or(|retry_at| retry_at >= deadline)
            {
                error.budget_exhausted = true;
                return Err(error);
            }
            observer.retrying(delay);
            // Waiting to ask Mastercard again is Mastercard's time in the call's account.
            let _waiting = WaitForUpstream(std::time::Instant::now());
            tokio::time::sleep(delay).await;
        }
    }

    /// The call's end when the deadline (or budget) left no time for another attempt to be
    /// sent: `attempts` were.
    fn out_of_time(&self, operation: &'static str, attempts: u32) -> UpstreamError {
        let mut e = self.error(
            operation,
            UpstreamErrorKind::Timeout,
            Correlation::default(),
            attempts,
        );
        e.budget_exhausted = true;
        e
    }

    fn url(&self, spec: &CallSpec) -> Result<url::Url, UpstreamError> {
        let joined = format!(
            "{}{}",
            self.base_url.as_str().trim_end_matches('/'),
            spec.path
        );
        url::Url::parse(&joined).map_err(|e| {
            self.error(
                spec.operation,
                UpstreamErrorKind::Request(format!("bad URL: {e}")),
                Correlation::default(),
                0,
            )
        })
    }

    async fn attempt(
        &self,
        spec: &CallSpec,
        url: &url::Url,
        body: &Bytes,
        authorization: Result<String, String>,
        until: Instant,
    ) -> Result<UpstreamResponse, AttemptFailure> {
        let no_correlation = |kind| AttemptFailure {
            kind,
            correlation: Correlation::default(),
        };
        let authorization =
            authorization.map_err(|e| no_correlation(UpstreamErrorKind::Request(e)))?;
        let mut request = self
            .http
            .request(spec.method.clone(), url.clone())
            .header(reqwest::header::AUTHORIZATION, authorization)
            .header(reqwest::header::ACCEPT, "application/json");
        if spec.body.is_some() {
            request = request
                .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
                .body(body.clone());
        }
        for (name, value) in &spec.headers {
            request = request.header(*name, value);
        }

        let exchange = async {
            // Waiting for Mastercard starts here (signing is done) and ends with the body; the
            // connection's checkout or set-up is in it too (reqwest does not time it apart).
            let _waiting = WaitForUpstream(std::time::Instant::now());
            let response = request
                .send()
                .await
                .map_err(|e| no_correlation(classify(&e)))?;
            let status = response.status().as_u16();
            let correlation = Correlation::from_headers(response.headers());
            let retry_after = retry_after(response.headers());
            let date_ms = date_ms(response.headers());
            let bytes =
                read_capped(response, MAX_ANSWER_BYTES)
                    .await
                    .map_err(|_| AttemptFailure {
                        kind: UpstreamErrorKind::SendFailed,
                        correlation: correlation.clone(),
                    })?;
            Ok((status, correlation, retry_after, date_ms, bytes))
        };
        let (status, correlation, retry_after, date_ms, bytes) =
            tokio::time::timeout_at(until, exchange)
                .await
                .map_err(|_| no_correlation(UpstreamErrorKind::Timeout))??;
        // An answer past the cap is not held: a 2xx is undecodable, an error keeps no reason.
        let Some(bytes) = bytes else {
            return Err(AttemptFailure {
                kind: match status {
                    200..=299 => UpstreamErrorKind::Decode(format!(
                        "an answer of more than {MAX_ANSWER_BYTES} bytes"
                    )),
                    400..=499 => UpstreamErrorKind::Rejected {
                        status,
                        reason: UpstreamReason::default(),
                        retry_after: if status == 429 { retry_after } else { None },
                    },
                    _ => UpstreamErrorKind::ServerError {
                        status,
                        reason: UpstreamReason::default(),
                    },
                },
                correlation,
            });
        };
        match status {
            200..=299 => Ok(UpstreamResponse {
                status,
                body: bytes,
                correlation,
                attempts: 0,
                started: std::time::Instant::now(),
                date_ms,
            }),
            400..=499 => Err(AttemptFailure {
                kind: UpstreamErrorKind::Rejected {
                    status,
                    reason: parse_error_body(&bytes),
                    retry_after: if status == 429 { retry_after } else { None },
                },
                correlation,
            }),
            _ => Err(AttemptFailure {
                kind: UpstreamErrorKind::ServerError {
                    status,
                    reason: parse_error_body(&bytes),
                },
                correlation,
            }),
        }
    }

    /// The `Authorization` header of one attempt, signed on the signing pool: the same bytes
    /// as [`authorization_header`] on the caller's thread, without holding an async worker.
    async fn authorization(
        &self,
        method: &reqwest::Method,
        url: &url::Url,
        body: &Bytes,
    ) -> Result<String, String> {
        let (method, url, body) = (method.clone(), url.clone(), body.clone());
        let (consumer_key, key, signature_method) = (
            self.consumer_key.clone(),
            self.signing_key.clone(),
            self.signature_method,
        );
        let (clock, nonces) = (self.clock.clone(), self.nonces.clone());
        offload::run(move || {
            let credentials = Credentials {
                consumer_key: &consumer_key,
                key: &key,
                method: signature_method,
            };
            authorization_header(
                method.as_str(),
                &url,
                &body,
                &credentials,
                clock.as_ref(),
                nonces.as_ref(),
            )
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
    }

    async fn open_response(
        &self,
        operation: &'static str,
        mut response: UpstreamResponse,
        attempts: u32,
    ) -> Result<UpstreamResponse, UpstreamError> {
        response.attempts = attempts;
        if let Some(enc) = self
            .encryption
            .as_ref()
            .filter(|_| !response.body.is_empty())
        {
            let (enc, body) = (enc.clone(), response.body.clone());
            let opened = offload::run(move || open_envelope(&enc.decryptor, &body))
                .await
                .unwrap_or(Err(JweError::DecryptFailed));
            let plain = opened.map_err(|e| {
                self.record_answer(operation, &response, "decrypt");
                let error = self.error(
                    operation,
                    UpstreamErrorKind::Decrypt(e),
                    response.correlation.clone(),
                    attempts,
                );
                log_failure(&error);
                error
            })?;
            response.body = Bytes::from(plain);
        }
        Ok(response)
    }
}

/// The most of an answer read. Mastercard's largest (a token list, an encrypted card) are a
/// few kilobytes; read whole, an answer of any size was held in memory on every call in flight.
const MAX_ANSWER_BYTES: usize = 1 << 20;

/// The body of `response`, or `None` when it is longer than `cap` (then read no further).
async fn read_capped(
    mut response: reqwest::Response,
    cap: usize,
) -> Result<Option<Bytes>, reqwest::Error> {
    if response
        .content_length()
        .is_some_and(|n| n > u64::try_from(cap).unwrap_or(u64::MAX))
    {
        return Ok(None);
    }
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > cap {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body.freeze()))
}

/// Connect failures happened before anything was sent; anything else after sending began.
fn classify(e: &reqwest::Error) -> UpstreamErrorKind {
    if e.is_connect() {
        UpstreamErrorKind::ConnectFailed
    } else if e.is_timeout() {
        UpstreamErrorKind::Timeout
    } else if e.is_builder() {
        UpstreamErrorKind::Request("invalid request".into())
    } else {
        UpstreamErrorKind::SendFailed
    }
}

/// Whether another attempt is safe and may help.
fn retryable(kind: &UpstreamErrorKind, idempotency: Idempotency) -> bool {
    match kind {
        // Nothing reached Mastercard; a 429 was refused before any processing.
        UpstreamErrorKind::ConnectFailed => true,
        UpstreamErrorKind::Rejected { status: 429, .. } => true,
        UpstreamErrorKind::SendFailed | UpstreamErrorKind::Timeout => {
            idempotency == Idempotency::Safe
        }
        UpstreamErrorKind::ServerError { status, .. } => {
            idempotency == Idempotency::Safe && matches!(status, 502..=504)
        }
        UpstreamErrorKind::Rejected { .. }
        | UpstreamErrorKind::Decode(_)
        | UpstreamErrorKind::Decrypt(_)
        | UpstreamErrorKind::CircuitOpen { .. }
        | UpstreamErrorKind::Request(_) => false,
    }
}

/// Whether the outcome counts as a failure of the API for its breaker: trouble reaching it or
/// an overloaded or broken server, not a business refusal.
fn counts_against_api(kind: &UpstreamErrorKind) -> bool {
    matches!(
        kind,
        UpstreamErrorKind::ConnectFailed
            | UpstreamErrorKind::SendFailed
            | UpstreamErrorKind::Timeout
            | UpstreamErrorKind::ServerError { .. }
            | UpstreamErrorKind::Rejected { status: 429, .. }
    )
}

/// The `Date` header, Unix ms: when Mastercard answered, by Mastercard's clock.
fn date_ms(headers: &reqwest::header::HeaderMap) -> Option<i64> {
    let value = headers.get(reqwest::header::DATE)?.to_str().ok()?;
    let at = httpdate::parse_http_date(value).ok()?;
    let since = at.duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(since.as_millis()).ok()
}

/// `Retry-After` as delta-seconds or an HTTP date.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// Adds the time from its making to its drop to the call's Mastercard waits: a drop counts the
/// exchanges that failed or timed out too, and a wait before a retry.
struct WaitForUpstream(std::time::Instant);

impl Drop for WaitForUpstream {
    fn drop(&mut self) {
        crate::metrics::upstream_waited(self.0.elapsed());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_rules() {
        use Idempotency::{Safe, Unsafe};
        let rejected = |status| UpstreamErrorKind::Rejected {
            status,
            reason: Default::default(),
            retry_after: None,
        };
        let server = |status| UpstreamErrorKind::ServerError {
            status,
            reason: Default::default(),
        };
        for idem in [Safe, Unsafe] {
            assert!(retryable(&UpstreamErrorKind::ConnectFailed, idem));
            assert!(retryable(&rejected(429), idem));
            assert!(!retryable(&rejected(400), idem));
            assert!(!retryable(&rejected(401), idem));
            assert!(!retryable(&server(500), idem));
            assert!(!retryable(&UpstreamErrorKind::Decode("x".into()), idem));
        }
        for status in [502, 503, 504] {
            assert!(retryable(&server(status), Safe));
            assert!(
                !retryable(&server(status), Unsafe),
                "a POST /cards that may have arrived"
            );
        }
        assert!(retryable(&UpstreamErrorKind::Timeout, Safe));
        assert!(!retryable(&UpstreamErrorKind::Timeout, Unsafe));
        assert!(retryable(&UpstreamErrorKind::SendFailed, Safe));
        assert!(!retryable(&UpstreamErrorKind::SendFailed, Unsafe));
    }

    /// The caller's deadline holds while the signature (or the sealing of the body) waits for
    /// the signing pool: with every pool thread busy past it, the call ends at the deadline
    /// with a timeout, nothing sent, no attempt counted and nothing against the breaker (our
    /// queue, not Mastercard). The attempt's time ran only once the request was signed
    /// before, and sealing had no bound, so a queue on the pool carried a call (a POST /cards
    /// too) past its caller's deadline.
    #[tokio::test]
    async fn the_callers_deadline_holds_while_the_signature_waits_for_the_pool() {
        let keys = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keys");
        let signing_key = SigningKey::load(&keys.join("signing.key.pem"), None).unwrap();
        let sealed = PayloadEncryption {
            encryptor: JweEncryptor::new(&signing_key.public_key().unwrap()).unwrap(),
            decryptor: JweDecryptor::new(),
        };
        // Signed only, then sealed.
        for encryption in [None, Some(sealed)] {
            // Every pool thread held until the call has returned (5 s at most).
            let held = offload::HeldPool::hold().await;
            // Nothing listens there: a request that went out would fail to connect.
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let client = ApiClient::new(ApiClientConfig {
                api: Api::Processing,
                base_url: format!("http://127.0.0.1:{port}/").parse().unwrap(),
                consumer_key: "test-consumer-key!0123456789abcdef".into(),
                signing_key: signing_key.clone(),
                signature_method: SignatureMethod::RsaSha256,
                policy: HttpPolicy {
                    attempt_timeout: Duration::from_secs(2),
                    connect_timeout: Duration::from_secs(2),
                    budget: Duration::from_secs(10),
                    max_attempts: 3,
                    initial_backoff: Duration::from_millis(10),
                    max_backoff: Duration::from_millis(40),
                },
                // One failure counted would open it.
                breaker: BreakerConfig {
                    minimum_calls: 1,
                    window_size: 1,
                    ..BreakerConfig::default()
                },
                encryption,
                extra_ca: None,
            })
            .unwrap();
            let spec = CallSpec {
                operation: "searchCard",
                method: reqwest::Method::POST,
                path: "/cards/searches".into(),
                body: Some(Bytes::from_static(b"{}")),
                headers: Vec::new(),
                idempotency: Idempotency::Safe,
                absent_is_answer: false,
            };
            let deadline = Instant::now() + Duration::from_millis(200);
            let err = client.call(spec, Some(deadline)).await.unwrap_err();
            assert!(
                held.release(),
                "the call waited for the pool to be free: {err:?}"
            );
            assert_eq!(err.kind, UpstreamErrorKind::Timeout, "{err:?}");
            assert!(err.budget_exhausted, "{err:?}");
            assert_eq!(err.attempts, 0, "{err:?}");
            assert_eq!(client.breaker_state(), BreakerState::Closed);
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(reqwest::header::RETRY_AFTER, "2".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        let later = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(30));
        h.insert(reqwest::header::RETRY_AFTER, later.parse().unwrap());
        let d = retry_after(&h).unwrap();
        assert!(
            d > Duration::from_secs(25) && d <= Duration::from_secs(30),
            "{d:?}"
        );
    }
}
