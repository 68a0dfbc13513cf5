//! `AppError`: every way a use case fails, and its stable parts (gRPC code, reason, metadata,
//! retry advice) so that a failure can be stored and replayed byte for byte.

use super::ports::UpstreamContext;
use crate::domain::{CardContractId, EnrollmentRecord, EnrollmentState, StoredOutcome};
use std::collections::BTreeMap;
use std::time::Duration;

/// One invalid request field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The field path, e.g. `consumer.email`.
    pub field: String,
    /// What is wrong.
    pub description: String,
}

/// The step of the flow that failed, for `ErrorInfo` metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// `POST /cards/searches`.
    Search,
    /// `POST /cards`.
    Enroll,
    /// The token lists.
    Tokens,
    /// A lifecycle call to Click to Pay (remove, profile, updates, opt-out).
    Lifecycle,
}

impl Step {
    /// `search`, `enroll` or `tokens`.
    pub fn name(self) -> &'static str {
        match self {
            Step::Search => "search",
            Step::Enroll => "enroll",
            Step::Tokens => "tokens",
            Step::Lifecycle => "lifecycle",
        }
    }
}

/// Why a use case failed.
// Returned once per call on the error path; boxing every variant would only add noise.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum AppError {
    /// Invalid request fields, all of them.
    InvalidArgument(Vec<FieldViolation>),
    /// The idempotency key was used for a different request.
    IdempotencyKeyReused {
        /// This request's card.
        card: CardContractId,
        /// The key (the caller's own).
        key: String,
    },
    /// A call with this idempotency key is running.
    RequestInFlight {
        /// When to try again.
        retry_after: Duration,
    },
    /// Another enrollment of this card (under another key) is running.
    CardBusy {
        /// The card.
        card: CardContractId,
        /// When to try again.
        retry_after: Duration,
    },
    /// An OptOut whose every pass found the cardholder's opt-outs changed by other calls (of
    /// their other cards) between its read and its write.
    OptOutsContended {
        /// The card.
        card: CardContractId,
        /// When to try again.
        retry_after: Duration,
    },
    /// The card's record is not of the program the caller was checked against before the
    /// call (an enrollment under another program landed since): nothing was done.
    CardChanged {
        /// The card.
        card: CardContractId,
    },
    /// The card is enrolled already.
    CardAlreadyEnrolled(Box<EnrollmentRecord>),
    /// Mastercard Processing knows no such card contract.
    CardContractNotFound {
        /// The call that found it unknown (a search, or a token list).
        step: Step,
        /// The card.
        card: CardContractId,
        /// The upstream call.
        upstream: UpstreamContext,
    },
    /// Tokenization was declined; `reason` is Mastercard's (CARD_BLOCKED, ...).
    CardNotEligible {
        /// Mastercard's reason.
        reason: String,
        /// The card.
        card: CardContractId,
        /// The upstream call.
        upstream: UpstreamContext,
    },
    /// Mastercard refused the request for another reason (a configuration problem, mostly).
    UpstreamRejected(Step, UpstreamContext),
    /// Mastercard could not be reached or is overloaded; a retry may succeed.
    UpstreamUnavailable {
        /// The step.
        step: Step,
        /// The upstream call.
        context: UpstreamContext,
        /// When a retry makes sense.
        retry_after: Duration,
    },
    /// Mastercard answered something the service cannot read.
    UpstreamInvalid(Step, UpstreamContext),
    /// The caller's deadline passed.
    DeadlineExceeded(Step),
    /// The store is unreachable.
    StoreUnavailable(String),
    /// The cardholder opted out of Click to Pay.
    ConsumerOptedOut {
        /// The card.
        card: CardContractId,
        /// When the opt-out was recorded, Unix ms.
        since_ms: i64,
    },
    /// The card has no Click to Pay enrollment to act on.
    CardNotEnrolled {
        /// The card.
        card: CardContractId,
        /// Its record's state (`None`: no record).
        state: Option<EnrollmentState>,
    },
    /// Click to Pay no longer holds the card or its profile.
    NotInClickToPay {
        /// The card.
        card: CardContractId,
        /// The call that found it gone.
        upstream: UpstreamContext,
    },
    /// The card's record lacks the Click to Pay id a lifecycle call needs; nothing was sent.
    ClickToPayIdsUnknown {
        /// The card.
        card: CardContractId,
        /// The id's name, e.g. `srcDigitalCardId`.
        missing: &'static str,
    },
    /// A stored failure, replayed as it was.
    Replayed(StoredOutcome),
    /// A bug.
    Internal(String),
}

/// Why a use case failed, in the app's words: the reasons of the contract's `ErrorReason` that
/// the app can give (the gRPC layer adds its own: access, limits, drain, malformed requests).
/// `grpc/status.rs` is the one place that picks a gRPC code for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// Invalid fields.
    InvalidRequest,
    /// The idempotency key belongs to another request.
    IdempotencyKeyReused,
    /// A call with the key is running.
    RequestInProgress,
    /// Another enrollment of the card is running.
    EnrollmentInProgress,
    /// The card is enrolled.
    CardAlreadyEnrolled,
    /// Processing knows no such card contract.
    CardContractNotFound,
    /// The tokenization was declined.
    CardNotEligible,
    /// Mastercard refused the request otherwise.
    UpstreamRejected,
    /// Mastercard is unavailable.
    UpstreamUnavailable,
    /// Mastercard's answer could not be read.
    UpstreamInvalidResponse,
    /// The caller's deadline passed.
    DeadlineExceeded,
    /// The store is unavailable.
    StoreUnavailable,
    /// The reconciler found no token for an enrollment left IN_PROGRESS (a record's failure).
    EnrollmentNotConfirmed,
    /// A bug.
    Internal,
    /// The cardholder opted out.
    ConsumerOptedOut,
    /// No Click to Pay enrollment to act on.
    CardNotEnrolled,
    /// Click to Pay no longer holds the card or its profile.
    NotInClickToPay,
    /// The record lacks the Click to Pay id a lifecycle call needs.
    ClickToPayIdsUnknown,
}

impl Reason {
    /// Every reason.
    pub const ALL: [Reason; 18] = [
        Reason::InvalidRequest,
        Reason::IdempotencyKeyReused,
        Reason::RequestInProgress,
        Reason::EnrollmentInProgress,
        Reason::CardAlreadyEnrolled,
        Reason::CardContractNotFound,
        Reason::CardNotEligible,
        Reason::UpstreamRejected,
        Reason::UpstreamUnavailable,
        Reason::UpstreamInvalidResponse,
        Reason::DeadlineExceeded,
        Reason::StoreUnavailable,
        Reason::EnrollmentNotConfirmed,
        Reason::Internal,
        Reason::ConsumerOptedOut,
        Reason::CardNotEnrolled,
        Reason::NotInClickToPay,
        Reason::ClickToPayIdsUnknown,
    ];

    /// The `ErrorInfo.reason` string (the `ErrorReason` value's name).
    pub fn name(self) -> &'static str {
        match self {
            Reason::InvalidRequest => "INVALID_REQUEST",
            Reason::IdempotencyKeyReused => "IDEMPOTENCY_KEY_REUSED",
            Reason::RequestInProgress => "REQUEST_IN_PROGRESS",
            Reason::EnrollmentInProgress => "ENROLLMENT_IN_PROGRESS",
            Reason::CardAlreadyEnrolled => "CARD_ALREADY_ENROLLED",
            Reason::CardContractNotFound => "CARD_CONTRACT_NOT_FOUND",
            Reason::CardNotEligible => "CARD_NOT_ELIGIBLE",
            Reason::UpstreamRejected => "UPSTREAM_REJECTED",
            Reason::UpstreamUnavailable => "UPSTREAM_UNAVAILABLE",
            Reason::UpstreamInvalidResponse => "UPSTREAM_INVALID_RESPONSE",
            Reason::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Reason::StoreUnavailable => "STORE_UNAVAILABLE",
            Reason::EnrollmentNotConfirmed => "ENROLLMENT_NOT_CONFIRMED",
            Reason::Internal => "INTERNAL",
            Reason::ConsumerOptedOut => "CONSUMER_OPTED_OUT",
            Reason::CardNotEnrolled => "CARD_NOT_ENROLLED",
            Reason::NotInClickToPay => "NOT_IN_CLICK_TO_PAY",
            Reason::ClickToPayIdsUnknown => "CLICK_TO_PAY_IDS_UNKNOWN",
        }
    }

    /// The reason of a name (as stored in a failure); `None` for one the app does not give.
    pub fn from_name(name: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.name() == name)
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

// A reason compares with its name, so that tests and logs can write the contract's strings.
impl PartialEq<&str> for Reason {
    fn eq(&self, other: &&str) -> bool {
        self.name() == *other
    }
}

impl PartialEq<Reason> for String {
    fn eq(&self, other: &Reason) -> bool {
        self == other.name()
    }
}

/// The parts of an error that the gRPC layer turns into a status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorParts {
    /// Stable `ErrorInfo.reason`.
    pub reason: Reason,
    /// Human-readable message (no card data).
    pub message: String,
    /// `ErrorInfo.metadata`.
    pub metadata: BTreeMap<String, String>,
    /// `RetryInfo.retry_delay`, when a retry may succeed.
    pub retry_after: Option<Duration>,
    /// `BadRequest.field_violations`.
    pub violations: Vec<FieldViolation>,
    /// The enrollment carried in the details.
    pub enrollment: Option<EnrollmentRecord>,
}

fn upstream_metadata(step: Option<Step>, e: &UpstreamContext) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    if let Some(step) = step {
        m.insert("step".into(), step.name().into());
    }
    m.insert("api".into(), e.api.into());
    if let Some(code) = &e.reason_code {
        m.insert("upstreamReason".into(), code.clone());
    }
    if let Some(id) = &e.correlation_id {
        m.insert("mastercardCorrelationId".into(), id.clone());
    }
    m
}

/// A state's name as the contract writes it (without the enum's prefix).
fn state_name(state: EnrollmentState) -> &'static str {
    match state {
        EnrollmentState::NotEnrolled => "NOT_ENROLLED",
        EnrollmentState::InProgress => "IN_PROGRESS",
        EnrollmentState::Enrolled => "ENROLLED",
        EnrollmentState::Failed => "FAILED",
        EnrollmentState::TokenizedElsewhere => "TOKENIZED_ELSEWHERE",
        EnrollmentState::Removed => "REMOVED",
    }
}

/// Unix ms as RFC 3339 UTC with milliseconds, e.g. `2026-11-27T11:21:52.364Z`.
fn rfc3339(ms: i64) -> String {
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    at.format(&format).unwrap_or_default()
}

fn card_metadata(card: CardContractId) -> BTreeMap<String, String> {
    BTreeMap::from([("cardContractId".to_owned(), card.get().to_string())])
}

impl AppError {
    /// The stable parts; one exhaustive match decides every reason.
    pub fn parts(&self) -> ErrorParts {
        let plain = |reason: Reason, message: String| ErrorParts {
            reason,
            message,
            metadata: BTreeMap::new(),
            retry_after: None,
            violations: Vec::new(),
            enrollment: None,
        };
        match self {
            AppError::InvalidArgument(violations) => ErrorParts {
                violations: violations.clone(),
                ..plain(
                    Reason::InvalidRequest,
                    format!("{} invalid field(s)", violations.len()),
                )
            },
            AppError::IdempotencyKeyReused { card, key } => {
                let mut metadata = card_metadata(*card);
                metadata.insert("idempotencyKey".into(), crate::text::bounded(key, 255));
                ErrorParts {
                    metadata,
                    ..plain(
                        Reason::IdempotencyKeyReused,
                        "the idempotency key was used for a different request".into(),
                    )
                }
            }
            AppError::RequestInFlight { retry_after } => ErrorParts {
                retry_after: Some(*retry_after),
                ..plain(
                    Reason::RequestInProgress,
                    "a call with this idempotency key is in progress".into(),
                )
            },
            AppError::CardBusy { card, retry_after } => ErrorParts {
                retry_after: Some(*retry_after),
                metadata: card_metadata(*card),
                ..plain(
                    Reason::EnrollmentInProgress,
                    "another enrollment of this card is in progress".into(),
                )
            },
            AppError::OptOutsContended { card, retry_after } => ErrorParts {
                retry_after: Some(*retry_after),
                metadata: card_metadata(*card),
                ..plain(
                    Reason::EnrollmentInProgress,
                    "other calls kept changing the cardholder's opt-outs meanwhile; retry".into(),
                )
            },
            AppError::CardChanged { card } => ErrorParts {
                retry_after: Some(Duration::from_millis(100)),
                metadata: card_metadata(*card),
                ..plain(
                    Reason::EnrollmentInProgress,
                    "the card was enrolled anew while the call was checked; nothing was done, retry".into(),
                )
            },
            AppError::CardAlreadyEnrolled(record) => ErrorParts {
                enrollment: Some((**record).clone()),
                metadata: card_metadata(record.card_contract_id),
                ..plain(
                    Reason::CardAlreadyEnrolled,
                    "the card is already enrolled in Click to Pay".into(),
                )
            },
            AppError::CardContractNotFound {
                step,
                card,
                upstream,
            } => ErrorParts {
                metadata: {
                    let mut m = upstream_metadata(Some(*step), upstream);
                    m.extend(card_metadata(*card));
                    m
                },
                ..plain(
                    Reason::CardContractNotFound,
                    "Mastercard Processing has no such card contract".into(),
                )
            },
            AppError::CardNotEligible {
                reason,
                card,
                upstream,
            } => {
                let mut metadata = upstream_metadata(Some(Step::Enroll), upstream);
                metadata.insert("declineReason".into(), reason.clone());
                metadata.extend(card_metadata(*card));
                ErrorParts {
                    metadata,
                    ..plain(
                        Reason::CardNotEligible,
                        format!("tokenization declined: {reason}"),
                    )
                }
            }
            AppError::UpstreamRejected(step, e) => ErrorParts {
                metadata: upstream_metadata(Some(*step), e),
                ..plain(
                    Reason::UpstreamRejected,
                    format!("Mastercard refused the request: {}", e.description),
                )
            },
            AppError::UpstreamUnavailable {
                step,
                context,
                retry_after,
            } => ErrorParts {
                metadata: upstream_metadata(Some(*step), context),
                retry_after: Some(*retry_after),
                ..plain(
                    Reason::UpstreamUnavailable,
                    format!("Mastercard is not available: {}", context.description),
                )
            },
            AppError::UpstreamInvalid(step, e) => ErrorParts {
                metadata: upstream_metadata(Some(*step), e),
                ..plain(
                    Reason::UpstreamInvalidResponse,
                    format!("Mastercard's answer could not be read: {}", e.description),
                )
            },
            AppError::DeadlineExceeded(step) => {
                let mut p = plain(
                    Reason::DeadlineExceeded,
                    "the caller's deadline passed".into(),
                );
                p.metadata.insert("step".into(), step.name().into());
                p
            }
            AppError::StoreUnavailable(why) => ErrorParts {
                retry_after: Some(Duration::from_secs(1)),
                ..plain(
                    Reason::StoreUnavailable,
                    format!("the enrollment store is unavailable: {why}"),
                )
            },
            AppError::ConsumerOptedOut { card, since_ms } => {
                let mut metadata = card_metadata(*card);
                metadata.insert("optOutTime".into(), rfc3339(*since_ms));
                ErrorParts {
                    metadata,
                    ..plain(
                        Reason::ConsumerOptedOut,
                        "the cardholder opted out of Click to Pay; EnrollCard is refused until the opt-out is withdrawn".into(),
                    )
                }
            }
            AppError::CardNotEnrolled { card, state } => {
                let mut metadata = card_metadata(*card);
                let state = state.map_or("NONE", state_name);
                metadata.insert("state".into(), state.into());
                ErrorParts {
                    metadata,
                    ..plain(
                        Reason::CardNotEnrolled,
                        format!(
                            "the card has no Click to Pay enrollment to act on (state {state})"
                        ),
                    )
                }
            }
            AppError::NotInClickToPay { card, upstream } => ErrorParts {
                metadata: {
                    let mut m = upstream_metadata(Some(Step::Lifecycle), upstream);
                    m.extend(card_metadata(*card));
                    m
                },
                ..plain(
                    Reason::NotInClickToPay,
                    "Click to Pay no longer holds the card or its consumer profile".into(),
                )
            },
            AppError::ClickToPayIdsUnknown { card, missing } => {
                let mut metadata = card_metadata(*card);
                metadata.insert("step".into(), Step::Lifecycle.name().into());
                metadata.insert("missingId".into(), (*missing).into());
                ErrorParts {
                    metadata,
                    ..plain(
                        Reason::ClickToPayIdsUnknown,
                        format!(
                            "the enrollment record holds no {missing}, which Click to Pay's lifecycle API of the card's program needs; nothing was sent (see the manual procedure in the runbook)"
                        ),
                    )
                }
            }
            AppError::Replayed(StoredOutcome::Failure {
                reason,
                message,
                metadata,
                enrollment,
            }) => ErrorParts {
                reason: Reason::from_name(reason).unwrap_or(Reason::Internal),
                message: message.clone(),
                // The stored answer of an earlier call: said so, so that a client can tell.
                metadata: {
                    let mut m = metadata.clone();
                    m.insert("replayed".into(), "true".into());
                    m
                },
                retry_after: None,
                violations: Vec::new(),
                enrollment: enrollment.clone(),
            },
            AppError::Replayed(StoredOutcome::Success { .. }) => {
                plain(Reason::Internal, "replay of a success as an error".into())
            }
            AppError::Internal(why) => plain(Reason::Internal, why.clone()),
        }
    }

    /// Whether the same idempotency key may resume later (not stored as the final answer).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            AppError::UpstreamUnavailable { .. }
                // An unreadable answer to POST /cards may hide a done enrollment: resume, with
                // the same srcCorrelationId, rather than record a failure.
                | AppError::UpstreamInvalid(Step::Enroll, _)
                | AppError::DeadlineExceeded(_)
                | AppError::StoreUnavailable(_)
                | AppError::RequestInFlight { .. }
                | AppError::CardBusy { .. }
                | AppError::OptOutsContended { .. }
                | AppError::CardChanged { .. }
        )
    }

    /// Whether a failure of a call with an idempotency key (EnrollCard, RemoveCard) is stored as
    /// the key's answer and replayed: not a transient one (the key resumes), nor a refusal that
    /// holds only until something outside the call changes (an opt-out withdrawn, the Click to
    /// Pay ids of a card set right by hand): the same key then works.
    pub fn is_key_answer(&self) -> bool {
        !self.is_transient()
            && !matches!(
                self,
                AppError::ConsumerOptedOut { .. } | AppError::ClickToPayIdsUnknown { .. }
            )
    }

    /// The stored form of a terminal failure.
    pub fn to_stored(&self) -> StoredOutcome {
        let p = self.parts();
        StoredOutcome::Failure {
            reason: p.reason.name().to_owned(),
            message: p.message,
            metadata: p.metadata,
            enrollment: p.enrollment,
        }
    }
}

impl From<super::ports::StoreError> for AppError {
    fn from(e: super::ports::StoreError) -> Self {
        AppError::StoreUnavailable(e.to_string())
    }
}
