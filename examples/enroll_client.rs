//! A reference `EnrollCard` client for the issuer's internal callers (the mobile app's
//! backend): it enrolls a card with an idempotency key, retries exactly as the README's error
//! table says, then watches the enrollment until it is no longer IN_PROGRESS. Copy it; the parts
//! to replace are marked `INTEGRATE:`.
//!
//! ```sh
//! cargo run                                                   # the service, sandbox mode
//! cargo run --example enroll_client -- --card 70001 --key order-4711
//! cargo run --example enroll_client -- --card 70004 --key order-4712   # CARD_NOT_ELIGIBLE: no retry
//! ```
//!
//! # The rules it implements (README "Errors")
//!
//! - **One key per enrollment intent**, chosen before the first call and kept (INTEGRATE: store
//!   it with the cardholder's request, so that a restart of the caller reuses it). Every retry
//!   sends the same request with the same key: the service replays a finished call or resumes
//!   an interrupted one, and never enrolls twice.
//! - **Retry only `UNAVAILABLE`, `ABORTED` and `DEADLINE_EXCEEDED`** (Mastercard or Redis
//!   unavailable, a replica draining, a call with the same key or another enrollment of the card
//!   still running, the attempt's deadline passed): after the `RetryInfo` delay of the
//!   status's `google.rpc.Status` details (`grpc-status-details-bin`) when it has one, else
//!   after an exponential, jittered backoff. Every other code is an answer: never retried
//!   (`FAILED_PRECONDITION` `CARD_NOT_ELIGIBLE` needs a new key once the card is fixed,
//!   `INVALID_ARGUMENT` a fixed request, ...).
//! - **Two rows of the error table this client leaves to its caller** (it reports them and
//!   stops; the table is the contract): `INTERNAL` `UPSTREAM_INVALID_RESPONSE` with metadata
//!   `step` = `enroll` (Mastercard's answer to `POST /cards` was unreadable: the enrollment may
//!   have happened), and an enrollment the watch shows `FAILED` with `failure.reason`
//!   `ENROLLMENT_NOT_CONFIRMED` (the reconciler found no token for an attempt left IN_PROGRESS).
//!   The table says: EnrollCard again with the same key, which resumes and never enrolls twice.
//!   This client only prints them (the status, exiting 1; the FAILED state it watched); both
//!   are rare and not urgent, so the INTEGRATE: point is the caller's own later retry (e.g. a
//!   job that re-sends stored keys) rather than this loop, which retries only what a short wait
//!   can cure.
//! - **An OK answer whose enrollment is `REMOVED`**: the key's enrollment went through and the
//!   card left Click to Pay since (removed, an opt-out, its token deactivated); the key replays
//!   that for good. The client prints it and exits 1; INTEGRATE: a new key enrolls the card
//!   again, once the cardholder asks.
//! - Each attempt has its own deadline (65 s, what `integration/service-config.json` gives
//!   EnrollCard: the search's and `POST /cards`' upstream budgets).
//! - Then `WatchEnrollment` shows the card's record and each change; a stream that ends is
//!   resumed with `start_after_revision`, so no change is missed or seen twice.
//!
//! CI runs this file (`tests/integration/enroll_client.rs`) against the service binary whose
//! simulator answers the first card search 429 with `Retry-After: 2`: the first attempt gets
//! `UNAVAILABLE` `UPSTREAM_UNAVAILABLE` with a 2 s `RetryInfo`, the client waits at least that
//! long and the second attempt, with the same key, enrolls the card.

use c2p_enroll::proto::v1::enrollment_service_client::EnrollmentServiceClient;
use c2p_enroll::proto::v1::{
    Consumer, EnrollCardRequest, EnrollCardResponse, Enrollment, EnrollmentState,
    WatchEnrollmentRequest, watch_enrollment_response::Event,
};
use std::time::Duration;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tonic_types::StatusExt as _;

/// The longest `RetryInfo` delay obeyed: a larger one is not believed.
const RETRY_INFO_CAP: Duration = Duration::from_secs(60);

/// How the client behaves.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The service, e.g. `http://127.0.0.1:50051` (INTEGRATE: `https://…` with
    /// `Endpoint::tls_config` and the caller's client certificate).
    pub endpoint: String,
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// The deadline of one EnrollCard attempt (sent as `grpc-timeout`).
    pub attempt_timeout: Duration,
    /// The first delay when a retryable status carries no `RetryInfo`; doubled at each retry,
    /// jittered, at most `max_backoff`.
    pub initial_backoff: Duration,
    /// The largest such delay.
    pub max_backoff: Duration,
    /// How long the watch may take to see a final state.
    pub watch_timeout: Duration,
}

impl ClientConfig {
    /// Sensible defaults for `endpoint`.
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            max_attempts: 5,
            attempt_timeout: Duration::from_secs(65),
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            watch_timeout: Duration::from_secs(120),
        }
    }
}

/// What the README's error table says to do with a failed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send the same request, same key, after the delay.
    RetrySameKey,
    /// An answer: do not retry (a new key only for a new intent).
    GiveUp,
}

/// The verdict of a status code: only `UNAVAILABLE`, `ABORTED` and `DEADLINE_EXCEEDED` are
/// retried, with the same key.
pub fn verdict(code: Code) -> Verdict {
    match code {
        Code::Unavailable | Code::Aborted | Code::DeadlineExceeded => Verdict::RetrySameKey,
        _ => Verdict::GiveUp,
    }
}

/// The `RetryInfo` delay of a status's details, if it has one.
pub fn retry_info(status: &Status) -> Option<Duration> {
    status.get_details_retry_info().and_then(|r| r.retry_delay)
}

/// The `ErrorInfo` reason of a status's details ("" without one, e.g. a bare `UNAVAILABLE`
/// from a connection the server refused).
pub fn reason(status: &Status) -> String {
    status
        .get_details_error_info()
        .map(|i| i.reason)
        .unwrap_or_default()
}

/// One failed attempt, as the client saw it.
#[derive(Debug, Clone)]
pub struct Failure {
    /// Which attempt (1 = the first).
    pub attempt: u32,
    /// Its status code and `ErrorInfo` reason.
    pub code: Code,
    pub reason: String,
    /// The `RetryInfo` delay it carried.
    pub retry_info: Option<Duration>,
    /// The idempotency key it was sent with.
    pub idempotency_key: String,
    /// How long the client waited before the next attempt (measured); `None`: it gave up.
    pub waited: Option<Duration>,
}

/// The answer of [`enroll`], with the failed attempts before it.
#[derive(Debug)]
pub struct Enrolled {
    pub response: EnrollCardResponse,
    pub failures: Vec<Failure>,
}

/// A call that ended without an enrollment: the last status and every failed attempt.
#[derive(Debug)]
pub struct GaveUp {
    pub status: Status,
    pub failures: Vec<Failure>,
}

/// A channel to the service.
pub async fn connect(config: &ClientConfig) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(config.endpoint.clone())?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
}

/// EnrollCard with `request` (its idempotency key set by the caller), retried as the error
/// table says.
pub async fn enroll(
    client: &mut EnrollmentServiceClient<Channel>,
    config: &ClientConfig,
    request: EnrollCardRequest,
) -> Result<Enrolled, GaveUp> {
    let mut failures = Vec::new();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut call = tonic::Request::new(request.clone());
        call.set_timeout(config.attempt_timeout);
        let status = match client.enroll_card(call).await {
            Ok(response) => {
                return Ok(Enrolled {
                    response: response.into_inner(),
                    failures,
                });
            }
            Err(status) => status,
        };
        let mut failure = Failure {
            attempt,
            code: status.code(),
            reason: reason(&status),
            retry_info: retry_info(&status),
            idempotency_key: request.idempotency_key.clone(),
            waited: None,
        };
        if verdict(status.code()) == Verdict::GiveUp || attempt >= config.max_attempts {
            failures.push(failure);
            return Err(GaveUp { status, failures });
        }
        let delay = failure
            .retry_info
            .map(|d| d.min(RETRY_INFO_CAP))
            .unwrap_or_else(|| backoff(config, attempt));
        eprintln!(
            "enroll_client: attempt {attempt}: {:?} {} ({}); the same key again in {delay:?}{}",
            status.code(),
            failure.reason,
            status.message(),
            if failure.retry_info.is_some() {
                " (RetryInfo)"
            } else {
                ""
            }
        );
        let before = Instant::now();
        tokio::time::sleep(delay).await;
        failure.waited = Some(before.elapsed());
        failures.push(failure);
    }
}

/// The delay before retry number `n` (1 = the first) when no `RetryInfo` says otherwise.
fn backoff(config: &ClientConfig, n: u32) -> Duration {
    let exp = config
        .initial_backoff
        .saturating_mul(1u32 << n.saturating_sub(1).min(16))
        .min(config.max_backoff);
    exp / 2 + exp.mul_f64(rand::random::<f64>() / 2.0)
}

/// Whether the enrollment has left IN_PROGRESS.
pub fn is_final(enrollment: &Enrollment) -> bool {
    !matches!(
        enrollment.state(),
        EnrollmentState::InProgress | EnrollmentState::Unspecified
    )
}

/// Watches `card` until its enrollment is final: every enrollment message seen, the final one
/// last. A stream that ends is resumed after the last revision seen.
pub async fn watch_until_final(
    client: &mut EnrollmentServiceClient<Channel>,
    config: &ClientConfig,
    card: i64,
) -> Result<Vec<Enrollment>, Status> {
    let deadline = Instant::now() + config.watch_timeout;
    let mut seen: Vec<Enrollment> = Vec::new();
    let mut ends = 0;
    loop {
        let start_after_revision = seen.last().map(|e| e.revision).unwrap_or(0);
        let opened = tokio::time::timeout_at(
            deadline,
            client.watch_enrollment(WatchEnrollmentRequest {
                card_contract_id: card,
                start_after_revision,
            }),
        )
        .await
        .map_err(|_| Status::deadline_exceeded("the watch saw no final state in time"))?;
        let end = match opened {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                loop {
                    let next = tokio::time::timeout_at(deadline, stream.message())
                        .await
                        .map_err(|_| {
                            Status::deadline_exceeded("the watch saw no final state in time")
                        })?;
                    match next {
                        Ok(Some(message)) => {
                            if let Some(Event::Enrollment(enrollment)) = message.event {
                                let done = is_final(&enrollment);
                                seen.push(enrollment);
                                if done {
                                    return Ok(seen);
                                }
                            }
                            // A heartbeat: nothing changed, the stream is alive.
                        }
                        Ok(None) => break Status::unavailable("the watch ended"),
                        Err(status) => break status,
                    }
                }
            }
            Err(status) => status,
        };
        ends += 1;
        if verdict(end.code()) == Verdict::GiveUp || ends >= config.max_attempts {
            return Err(end);
        }
        let delay = retry_info(&end)
            .map(|d| d.min(RETRY_INFO_CAP))
            .unwrap_or_else(|| backoff(config, ends));
        tokio::time::sleep(delay).await;
    }
}

/// The request of the command line's cardholder (INTEGRATE: the app backend's own data).
pub fn request(key: &str, card: i64, email: &str) -> EnrollCardRequest {
    EnrollCardRequest {
        idempotency_key: key.into(),
        card_contract_id: card,
        program: String::new(),
        consumer: Some(Consumer {
            email: email.into(),
            mobile_number: None,
            first_name: "Jane".into(),
            last_name: "Doe".into(),
            country_code: "US".into(),
            language_code: "en_US".into(),
        }),
        cardholder_full_name: "Jane Doe".into(),
        billing_address: None,
        src_correlation_id: String::new(),
        validate_only: false,
    }
}

#[derive(clap::Parser, Debug)]
#[command(
    about = "Enrolls a card with c2p-enroll, retrying as its error table says, then watches it"
)]
struct Args {
    /// The service's gRPC URL.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    endpoint: String,
    /// The card's `card_contract_id` (the simulator's: 70001 enrolls, 70002-70004 are refused).
    #[arg(long)]
    card: i64,
    /// The idempotency key of this enrollment intent: keep it and give it again to retry later.
    /// Default: a new one, printed.
    #[arg(long)]
    key: Option<String>,
    /// The consumer's e-mail.
    #[arg(long, default_value = "jane.doe@example.com")]
    email: String,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    use clap::Parser as _;
    let args = Args::parse();
    let config = ClientConfig::new(args.endpoint);
    let key = args
        .key
        .unwrap_or_else(|| format!("enroll-{}-{}", args.card, uuid::Uuid::new_v4()));
    println!("idempotency key: {key}");
    let channel = match connect(&config).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("enroll_client: cannot connect to {}: {e}", config.endpoint);
            return std::process::ExitCode::FAILURE;
        }
    };
    let mut client = EnrollmentServiceClient::new(channel);
    match enroll(&mut client, &config, request(&key, args.card, &args.email)).await {
        Ok(enrolled) => {
            let state = enrolled
                .response
                .enrollment
                .as_ref()
                .map(|e| e.state().as_str_name())
                .unwrap_or("-");
            println!(
                "EnrollCard: {state} after {} attempt(s) (replayed: {})",
                enrolled.failures.len() + 1,
                enrolled.response.replayed
            );
            // This key's enrollment went through and the card left Click to Pay since (removed,
            // opted out, its token deactivated): the intent is not met, and this key will only
            // ever replay that. INTEGRATE: ask the cardholder, then enroll with a new key.
            if left_click_to_pay_since(&enrolled.response) {
                println!(
                    "EnrollCard: the card left Click to Pay since this key enrolled it; a new key enrolls it again"
                );
                return std::process::ExitCode::FAILURE;
            }
        }
        Err(gave_up) => {
            println!(
                "EnrollCard: {:?} {} after {} attempt(s), not retried: {}",
                gave_up.status.code(),
                reason(&gave_up.status),
                gave_up.failures.len(),
                gave_up.status.message()
            );
            return std::process::ExitCode::FAILURE;
        }
    }
    match watch_until_final(&mut client, &config, args.card).await {
        Ok(seen) => {
            for e in &seen {
                println!(
                    "WatchEnrollment: revision {} {} token {}",
                    e.revision,
                    e.state().as_str_name(),
                    e.token
                        .as_ref()
                        .map(|t| t.status().as_str_name())
                        .unwrap_or("-")
                );
            }
            std::process::ExitCode::SUCCESS
        }
        Err(status) => {
            println!("WatchEnrollment: {:?} {}", status.code(), status.message());
            std::process::ExitCode::FAILURE
        }
    }
}

/// Whether the key's answer is its enrollment that left Click to Pay since (`REMOVED`): OK, and
/// yet the card is not enrolled.
pub(crate) fn left_click_to_pay_since(response: &EnrollCardResponse) -> bool {
    response.enrollment.as_ref().map(|e| e.state()) == Some(EnrollmentState::Removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_removed_enrollment_is_not_an_enrolled_card() {
        let answer = |state: EnrollmentState| EnrollCardResponse {
            enrollment: Some(Enrollment {
                state: state as i32,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(left_click_to_pay_since(&answer(EnrollmentState::Removed)));
        assert!(!left_click_to_pay_since(&answer(EnrollmentState::Enrolled)));
        assert!(!left_click_to_pay_since(&answer(
            EnrollmentState::InProgress
        )));
        assert!(!left_click_to_pay_since(&EnrollCardResponse::default()));
    }

    #[test]
    fn only_unavailable_aborted_and_deadline_exceeded_are_retried() {
        let all = [
            Code::Ok,
            Code::Cancelled,
            Code::Unknown,
            Code::InvalidArgument,
            Code::DeadlineExceeded,
            Code::NotFound,
            Code::AlreadyExists,
            Code::PermissionDenied,
            Code::ResourceExhausted,
            Code::FailedPrecondition,
            Code::Aborted,
            Code::OutOfRange,
            Code::Unimplemented,
            Code::Internal,
            Code::Unavailable,
            Code::DataLoss,
            Code::Unauthenticated,
        ];
        let retried: Vec<Code> = all
            .into_iter()
            .filter(|c| verdict(*c) == Verdict::RetrySameKey)
            .collect();
        assert_eq!(
            retried,
            [Code::DeadlineExceeded, Code::Aborted, Code::Unavailable]
        );
    }

    #[test]
    fn the_backoff_doubles_within_its_bounds() {
        let config = ClientConfig::new("http://127.0.0.1:1");
        for (n, full) in [(1, 200), (2, 400), (3, 800), (6, 5_000), (30, 5_000)] {
            let full = Duration::from_millis(full);
            for _ in 0..20 {
                let d = backoff(&config, n);
                assert!(
                    d >= full / 2 && d <= full,
                    "retry {n}: {d:?} outside {full:?}/2..{full:?}"
                );
            }
        }
    }
}
