//! The error table: for every `AppError`, the reason, the metadata keys and the retry advice of
//! `parts()` (the gRPC code is the gRPC layer's, not checked here); which errors are transient;
//! how every upstream failure maps; and a stored failure replayed as it was.

use super::fakes::{card, context};
use crate::app::enroll::map_upstream;
use crate::app::ports::{UpstreamContext, UpstreamFailure};
use crate::app::{AppError, FieldViolation, Step};
use crate::domain::{EnrollmentRecord, EnrollmentState, StoredOutcome};
use std::time::Duration;
use tokio::time::Instant;

const UPSTREAM_KEYS: [&str; 4] = ["api", "mastercardCorrelationId", "step", "upstreamReason"];

fn enrolled() -> EnrollmentRecord {
    EnrollmentRecord::new(card(3001), String::new(), EnrollmentState::Enrolled, 0)
}

/// Every variant (both kinds of replay), with its expected reason, metadata keys (sorted) and
/// retry advice.
fn table() -> Vec<(AppError, &'static str, Vec<&'static str>, Option<Duration>)> {
    let stored = AppError::CardNotEligible {
        reason: "CARD_BLOCKED".into(),
        card: card(3001),
        upstream: context("enroll"),
    }
    .to_stored();
    vec![
        (
            AppError::InvalidArgument(vec![FieldViolation {
                field: "consumer.email".into(),
                description: "not an e-mail address".into(),
            }]),
            "INVALID_REQUEST",
            vec![],
            None,
        ),
        (
            AppError::IdempotencyKeyReused {
                card: card(3001),
                key: "k1".into(),
            },
            "IDEMPOTENCY_KEY_REUSED",
            vec!["cardContractId", "idempotencyKey"],
            None,
        ),
        (
            AppError::RequestInFlight {
                retry_after: Duration::from_millis(700),
            },
            "REQUEST_IN_PROGRESS",
            vec![],
            Some(Duration::from_millis(700)),
        ),
        (
            AppError::CardBusy {
                card: card(3001),
                retry_after: Duration::from_secs(1),
            },
            "ENROLLMENT_IN_PROGRESS",
            vec!["cardContractId"],
            Some(Duration::from_secs(1)),
        ),
        (
            AppError::CardAlreadyEnrolled(Box::new(enrolled())),
            "CARD_ALREADY_ENROLLED",
            vec!["cardContractId"],
            None,
        ),
        (
            AppError::CardContractNotFound {
                step: Step::Tokens,
                card: card(3001),
                upstream: context("processing"),
            },
            "CARD_CONTRACT_NOT_FOUND",
            {
                let mut keys = UPSTREAM_KEYS.to_vec();
                keys.push("cardContractId");
                keys.sort();
                keys
            },
            None,
        ),
        (
            AppError::CardNotEligible {
                reason: "CARD_BLOCKED".into(),
                card: card(3001),
                upstream: context("enroll"),
            },
            "CARD_NOT_ELIGIBLE",
            vec![
                "api",
                "cardContractId",
                "declineReason",
                "mastercardCorrelationId",
                "step",
                "upstreamReason",
            ],
            None,
        ),
        (
            AppError::UpstreamRejected(Step::Enroll, context("enroll")),
            "UPSTREAM_REJECTED",
            UPSTREAM_KEYS.to_vec(),
            None,
        ),
        (
            AppError::UpstreamUnavailable {
                step: Step::Search,
                context: context("processing"),
                retry_after: Duration::from_secs(4),
            },
            "UPSTREAM_UNAVAILABLE",
            UPSTREAM_KEYS.to_vec(),
            Some(Duration::from_secs(4)),
        ),
        (
            AppError::UpstreamInvalid(Step::Tokens, context("processing")),
            "UPSTREAM_INVALID_RESPONSE",
            UPSTREAM_KEYS.to_vec(),
            None,
        ),
        (
            AppError::DeadlineExceeded(Step::Enroll),
            "DEADLINE_EXCEEDED",
            vec!["step"],
            None,
        ),
        (
            AppError::StoreUnavailable("connection refused".into()),
            "STORE_UNAVAILABLE",
            vec![],
            Some(Duration::from_secs(1)),
        ),
        (
            AppError::Replayed(stored),
            "CARD_NOT_ELIGIBLE",
            vec![
                "api",
                "cardContractId",
                "declineReason",
                "mastercardCorrelationId",
                "replayed",
                "step",
                "upstreamReason",
            ],
            None,
        ),
        (
            AppError::Replayed(StoredOutcome::Success {
                enrollment: enrolled(),
            }),
            "INTERNAL",
            vec![],
            None,
        ),
        (AppError::Internal("a bug".into()), "INTERNAL", vec![], None),
        (
            AppError::ClickToPayIdsUnknown {
                card: card(3001),
                missing: "srcDigitalCardId",
            },
            "CLICK_TO_PAY_IDS_UNKNOWN",
            vec!["cardContractId", "missingId", "step"],
            None,
        ),
    ]
}

#[test]
fn every_error_has_its_reason_metadata_and_retry_advice() {
    for (error, reason, keys, retry_after) in table() {
        let p = error.parts();
        assert_eq!(p.reason, reason, "{error:?}");
        assert_eq!(
            p.metadata.keys().map(String::as_str).collect::<Vec<_>>(),
            keys,
            "{error:?}"
        );
        assert_eq!(p.retry_after, retry_after, "{error:?}");
        assert!(!p.message.is_empty(), "{error:?}");
        for key in p.metadata.keys() {
            assert!(
                key.starts_with(|c: char| c.is_ascii_lowercase())
                    && key.chars().all(|c| c.is_ascii_alphanumeric()),
                "{key} is not lowerCamelCase"
            );
        }
    }
}

#[test]
fn metadata_values_say_what_happened() {
    let p = AppError::IdempotencyKeyReused {
        card: card(3001),
        key: "k1".into(),
    }
    .parts();
    assert_eq!(p.metadata["cardContractId"], "3001");
    assert_eq!(p.metadata["idempotencyKey"], "k1");

    let p = AppError::CardNotEligible {
        reason: "CARD_BLOCKED".into(),
        card: card(3001),
        upstream: context("enroll"),
    }
    .parts();
    assert_eq!(p.metadata["declineReason"], "CARD_BLOCKED");
    assert_eq!(p.metadata["step"], "enroll");
    assert_eq!(p.metadata["api"], "enroll");
    assert_eq!(p.metadata["upstreamReason"], "SOME_REASON");
    assert_eq!(p.metadata["mastercardCorrelationId"], "mc-correlation-1");
    assert!(p.message.contains("CARD_BLOCKED"));

    for step in [Step::Search, Step::Enroll, Step::Tokens] {
        let p = AppError::UpstreamRejected(step, context("processing")).parts();
        assert_eq!(p.metadata["step"], step.name());
        // An unknown card is found by a search or by a token list: the step says which.
        let p = AppError::CardContractNotFound {
            step,
            card: card(3001),
            upstream: context("processing"),
        }
        .parts();
        assert_eq!(p.metadata["step"], step.name());
        assert_eq!(
            AppError::DeadlineExceeded(step).parts().metadata["step"],
            step.name()
        );
    }
    assert_eq!(
        [Step::Search, Step::Enroll, Step::Tokens].map(Step::name),
        ["search", "enroll", "tokens"]
    );

    let p = AppError::CardAlreadyEnrolled(Box::new(enrolled())).parts();
    assert_eq!(p.enrollment, Some(enrolled()));
    let p = AppError::InvalidArgument(vec![FieldViolation {
        field: "program".into(),
        description: "unknown".into(),
    }])
    .parts();
    assert_eq!(p.violations.len(), 1);
    assert_eq!(p.violations[0].field, "program");
}

#[test]
fn what_mastercard_did_not_say_is_left_out_of_the_metadata() {
    let bare = UpstreamContext {
        api: "processing",
        reason_code: None,
        correlation_id: None,
        description: "timed out".into(),
    };
    let p = AppError::UpstreamUnavailable {
        step: Step::Search,
        context: bare,
        retry_after: Duration::from_secs(1),
    }
    .parts();
    assert_eq!(
        p.metadata.keys().map(String::as_str).collect::<Vec<_>>(),
        ["api", "step"]
    );
}

#[test]
fn a_long_idempotency_key_is_bounded_in_the_metadata() {
    let p = AppError::IdempotencyKeyReused {
        card: card(3001),
        key: "k".repeat(1_000),
    }
    .parts();
    assert_eq!(
        p.metadata["idempotencyKey"],
        format!("{}…", "k".repeat(255))
    );
}

#[test]
fn only_errors_a_retry_may_get_past_are_transient() {
    let transient: Vec<&str> = table()
        .into_iter()
        .filter(|(e, ..)| e.is_transient())
        .map(|(_, reason, ..)| reason)
        .collect();
    assert_eq!(
        transient,
        [
            "REQUEST_IN_PROGRESS",
            "ENROLLMENT_IN_PROGRESS",
            "UPSTREAM_UNAVAILABLE",
            "DEADLINE_EXCEEDED",
            "STORE_UNAVAILABLE",
        ]
    );
    // An unreadable answer is transient only after POST /cards (it may hide an enrollment).
    assert!(AppError::UpstreamInvalid(Step::Enroll, context("enroll")).is_transient());
    assert!(!AppError::UpstreamInvalid(Step::Search, context("processing")).is_transient());
    assert!(!AppError::UpstreamInvalid(Step::Tokens, context("processing")).is_transient());
}

#[test]
fn a_keyed_call_stores_every_failure_but_the_transient_ones_and_the_refusals_that_pass() {
    let unstored: Vec<&str> = table()
        .into_iter()
        .filter(|(e, ..)| !e.is_key_answer())
        .map(|(_, reason, ..)| reason)
        .collect();
    assert_eq!(
        unstored,
        [
            "REQUEST_IN_PROGRESS",
            "ENROLLMENT_IN_PROGRESS",
            "UPSTREAM_UNAVAILABLE",
            "DEADLINE_EXCEEDED",
            "STORE_UNAVAILABLE",
            "CLICK_TO_PAY_IDS_UNKNOWN",
        ]
    );
    let opted_out = AppError::ConsumerOptedOut {
        card: card(3001),
        since_ms: 0,
    };
    assert!(!opted_out.is_key_answer());
}

#[test]
fn a_stored_failure_replays_its_parts_and_says_it_is_a_replay() {
    for (error, ..) in table()
        .into_iter()
        .filter(|(e, ..)| !e.is_transient() && !matches!(e, AppError::Replayed(_)))
    {
        let original = error.parts();
        let StoredOutcome::Failure { .. } = error.to_stored() else {
            panic!("a failure is stored as a failure: {error:?}")
        };
        let replayed = AppError::Replayed(error.to_stored()).parts();
        let mut metadata = original.metadata.clone();
        metadata.insert("replayed".into(), "true".into());
        assert_eq!(replayed.reason, original.reason, "{error:?}");
        assert_eq!(replayed.message, original.message, "{error:?}");
        assert_eq!(replayed.metadata, metadata, "{error:?}");
        assert_eq!(replayed.enrollment, original.enrollment, "{error:?}");
        assert_eq!(replayed.retry_after, None);
    }
}

#[test]
fn every_upstream_failure_maps_to_one_error() {
    let ctx = || context("enroll");
    for step in [Step::Search, Step::Enroll, Step::Tokens] {
        let cases = [
            (
                UpstreamFailure::ContractNotFound(ctx()),
                "CARD_CONTRACT_NOT_FOUND",
            ),
            (
                UpstreamFailure::Declined {
                    reason: "CARD_BLOCKED".into(),
                    context: ctx(),
                },
                "CARD_NOT_ELIGIBLE",
            ),
            (UpstreamFailure::Rejected(ctx()), "UPSTREAM_REJECTED"),
            (
                UpstreamFailure::Unavailable {
                    retry_after: Duration::from_secs(6),
                    context: ctx(),
                },
                "UPSTREAM_UNAVAILABLE",
            ),
            (
                UpstreamFailure::InvalidAnswer(ctx()),
                "UPSTREAM_INVALID_RESPONSE",
            ),
            (UpstreamFailure::RequestNotBuilt(ctx()), "INTERNAL"),
            (
                UpstreamFailure::IdsUnknown {
                    missing: "srcConsumerId",
                    context: ctx(),
                },
                "CLICK_TO_PAY_IDS_UNKNOWN",
            ),
        ];
        for (failure, reason) in cases {
            let e = map_upstream(step, card(3001), failure.clone(), None);
            assert_eq!(e.parts().reason, reason, "{step:?} {failure:?}");
            // With the caller's deadline gone, only an outage becomes DEADLINE_EXCEEDED.
            let late = map_upstream(step, card(3001), failure.clone(), Some(Instant::now()));
            match failure {
                UpstreamFailure::Unavailable { .. } => {
                    assert!(matches!(late, AppError::DeadlineExceeded(s) if s == step));
                }
                _ => assert_eq!(late.parts().reason, reason),
            }
        }
        let e = map_upstream(
            step,
            card(3001),
            UpstreamFailure::Unavailable {
                retry_after: Duration::from_secs(6),
                context: ctx(),
            },
            Some(Instant::now() + Duration::from_secs(60)),
        );
        assert!(
            matches!(e, AppError::UpstreamUnavailable { step: s, retry_after, .. } if s == step && retry_after == Duration::from_secs(6)),
            "{e:?}"
        );
        let e = map_upstream(
            step,
            card(3001),
            UpstreamFailure::RequestNotBuilt(ctx()),
            None,
        );
        assert!(matches!(e, AppError::Internal(ref m) if m == "enroll said no"));
    }
}
