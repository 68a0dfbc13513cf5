//! The error vocabulary kept in one piece (issue 12): the proto's `ErrorReason` enum (read from
//! the compiled descriptor, comments included), the README's error table, and the reasons the
//! code produces must name the same reasons with the same gRPC codes.

use super::auth::Denied;
use super::envelope::fallback_reason;
use super::policy::Rpc;
use super::status::{self, ERROR_DOMAIN};
use super::streams::StreamLimits;
use crate::app::ports::UpstreamContext;
use crate::app::{AppError, FieldViolation, Step};
use crate::domain::{CardContractId, EnrollmentRecord, EnrollmentState, StoredOutcome};
use crate::proto::v1::ErrorReason;
use prost::Message as _;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tonic::Code;
use tonic_types::StatusExt as _;

/// gRPC code names by number, as the proto comments and the README write them.
const CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

fn code_name(code: Code) -> &'static str {
    CODES[code as usize]
}

/// Each `ErrorReason` value (but UNSPECIFIED) and the gRPC code its comment starts with
/// (`None`: the comment names none, e.g. a reason that is never an RPC error).
fn enum_codes() -> BTreeMap<String, Option<String>> {
    let set = prost_types::FileDescriptorSet::decode(crate::proto::FILE_DESCRIPTOR_SET).unwrap();
    let (file, index, values) = set
        .file
        .iter()
        .find_map(|f| {
            let (i, e) = f
                .enum_type
                .iter()
                .enumerate()
                .find(|(_, e)| e.name() == "ErrorReason")?;
            (f.package() == "c2p.enrollment.v1").then_some((f, i, &e.value))
        })
        .expect("ErrorReason in the descriptor");
    let locations = &file.source_code_info.as_ref().unwrap().location;
    values
        .iter()
        .enumerate()
        .filter(|(_, v)| v.number() != 0)
        .map(|(j, v)| {
            // FileDescriptorProto.enum_type = 5, EnumDescriptorProto.value = 2.
            let path = [5, index as i32, 2, j as i32];
            let comment = locations
                .iter()
                .find(|l| l.path == path)
                .and_then(|l| l.leading_comments.clone())
                .unwrap_or_default();
            let first = comment.trim_start().split('.').next().unwrap_or_default();
            let code = CODES.contains(&first).then(|| first.to_owned());
            (v.name().to_owned(), code)
        })
        .collect()
}

/// The README's error table: (code, reason) per row; the code is `None` for `—`.
fn readme_rows() -> Vec<(Option<String>, String)> {
    let readme = include_str!("../../README.md");
    let section = readme
        .split("\n## Errors\n")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("a README section '## Errors'");
    let cell = |c: &str| {
        let c = c.trim();
        (c != "—").then(|| c.trim_matches('`').to_owned())
    };
    section
        .lines()
        .skip_while(|l| !l.starts_with("| gRPC code"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').collect();
            let reason = cell(cells[2]).unwrap_or_default();
            assert!(
                !reason.contains(['`', ' ', '/']),
                "one reason per row of the README's error table: {l}"
            );
            (cell(cells[1]), reason)
        })
        .collect()
}

#[test]
fn the_readme_error_table_is_the_error_reason_enum() {
    let values = enum_codes();
    let rows = readme_rows();
    assert!(rows.len() >= 20, "the table was not found: {rows:?}");
    let mut seen = BTreeSet::new();
    for (code, reason) in &rows {
        assert!(seen.insert(reason), "{reason} has two rows in the README");
        let Some(documented) = values.get(reason) else {
            panic!("the README names {reason}, which is not an ErrorReason value");
        };
        assert_eq!(
            code, documented,
            "{reason}: the README's code differs from the enum comment's"
        );
    }
    let missing: Vec<_> = values.keys().filter(|v| !seen.contains(v)).collect();
    assert!(missing.is_empty(), "not in the README's table: {missing:?}");
    // Every value's comment names its code, except the one that is never an RPC error.
    let codeless: Vec<_> = values.iter().filter(|(_, c)| c.is_none()).collect();
    assert_eq!(codeless.len(), 1, "{codeless:?}");
}

fn upstream() -> UpstreamContext {
    UpstreamContext {
        api: "enroll",
        reason_code: Some("INVALID_STATE".into()),
        correlation_id: Some("mc-1".into()),
        description: "HTTP 400".into(),
    }
}

/// The index of a variant. Fails to compile when `AppError` gains one: give it a sample below.
fn variant(e: &AppError) -> usize {
    match e {
        AppError::InvalidArgument(_) => 0,
        AppError::IdempotencyKeyReused { .. } => 1,
        AppError::RequestInFlight { .. } => 2,
        AppError::CardBusy { .. } => 3,
        AppError::CardAlreadyEnrolled(_) => 4,
        AppError::CardContractNotFound { .. } => 5,
        AppError::CardNotEligible { .. } => 6,
        AppError::UpstreamRejected(..) => 7,
        AppError::UpstreamUnavailable { .. } => 8,
        AppError::UpstreamInvalid(..) => 9,
        AppError::DeadlineExceeded(_) => 10,
        AppError::StoreUnavailable(_) => 11,
        AppError::Replayed(_) => 12,
        AppError::Internal(_) => 13,
        AppError::ConsumerOptedOut { .. } => 14,
        AppError::CardNotEnrolled { .. } => 15,
        AppError::NotInClickToPay { .. } => 16,
        AppError::ClickToPayIdsUnknown { .. } => 17,
        AppError::OptOutsContended { .. } => 18,
        AppError::CardChanged { .. } => 19,
    }
}
const VARIANTS: usize = 20;

fn sample_app_errors() -> Vec<AppError> {
    let card = CardContractId::new(70001).unwrap();
    let record = EnrollmentRecord::new(card, String::new(), EnrollmentState::Enrolled, 0);
    let declined = AppError::CardNotEligible {
        reason: "CARD_BLOCKED".into(),
        card,
        upstream: upstream(),
    };
    let samples = vec![
        AppError::InvalidArgument(vec![FieldViolation {
            field: "card_contract_id".into(),
            description: "must be positive".into(),
        }]),
        AppError::IdempotencyKeyReused {
            card,
            key: "k".into(),
        },
        AppError::RequestInFlight {
            retry_after: Duration::from_secs(1),
        },
        AppError::CardBusy {
            card,
            retry_after: Duration::from_secs(1),
        },
        AppError::OptOutsContended {
            card,
            retry_after: Duration::from_secs(1),
        },
        AppError::CardChanged { card },
        AppError::CardAlreadyEnrolled(Box::new(record.clone())),
        AppError::CardContractNotFound {
            step: Step::Search,
            card,
            upstream: upstream(),
        },
        AppError::UpstreamRejected(Step::Search, upstream()),
        AppError::UpstreamUnavailable {
            step: Step::Tokens,
            context: upstream(),
            retry_after: Duration::from_secs(1),
        },
        AppError::UpstreamInvalid(Step::Enroll, upstream()),
        AppError::DeadlineExceeded(Step::Enroll),
        AppError::StoreUnavailable("down".into()),
        // A stored failure replays what an earlier call answered.
        AppError::Replayed(declined.to_stored()),
        AppError::Replayed(StoredOutcome::Success { enrollment: record }),
        AppError::Internal("bug".into()),
        AppError::ConsumerOptedOut {
            card,
            since_ms: 1_800_000_000_000,
        },
        AppError::CardNotEnrolled {
            card,
            state: Some(EnrollmentState::Failed),
        },
        AppError::CardNotEnrolled { card, state: None },
        AppError::NotInClickToPay {
            card,
            upstream: upstream(),
        },
        AppError::ClickToPayIdsUnknown {
            card,
            missing: "srcDigitalCardId",
        },
        declined,
    ];
    let covered: BTreeSet<usize> = samples.iter().map(variant).collect();
    assert_eq!(covered.len(), VARIANTS, "an AppError variant has no sample");
    samples
}

/// Every status the service itself makes: app errors, auth refusals, stream limits, drain,
/// malformed requests, deadlines.
fn produced_statuses() -> Vec<tonic::Status> {
    let mut statuses: Vec<tonic::Status> =
        sample_app_errors().iter().map(status::to_status).collect();
    for rpc in Rpc::ALL {
        for denied in [
            Denied::Unauthenticated,
            Denied::RpcNotAllowed,
            Denied::ProgramNotAllowed,
        ] {
            statuses.push(denied.status(rpc));
        }
    }
    let none = StreamLimits::new(0, 0);
    statuses.extend([none.watch().unwrap_err(), none.ingest().unwrap_err()]);
    statuses.extend([
        status::draining(),
        status::malformed("bad"),
        status::deadline_passed(),
    ]);
    statuses
}

fn is_lower_camel_case(key: &str) -> bool {
    key.starts_with(|c: char| c.is_ascii_lowercase())
        && key.chars().all(|c| c.is_ascii_alphanumeric())
}

#[test]
fn every_reason_the_service_makes_is_an_error_reason_with_its_documented_code() {
    let documented = enum_codes();
    for status in produced_statuses() {
        let info = status.get_error_details().error_info().cloned();
        let info = info.unwrap_or_else(|| panic!("no ErrorInfo: {status:?}"));
        assert_eq!(info.domain, ERROR_DOMAIN, "{status:?}");
        let reason = ErrorReason::from_str_name(&info.reason);
        assert!(
            reason.is_some_and(|r| r != ErrorReason::Unspecified),
            "{} is not an ErrorReason value",
            info.reason
        );
        assert_eq!(
            documented[&info.reason].as_deref(),
            Some(code_name(status.code())),
            "{}: answered with another code than its comment names",
            info.reason
        );
        for key in info.metadata.keys() {
            assert!(
                is_lower_camel_case(key),
                "{}: metadata key {key}",
                info.reason
            );
        }
    }
}

#[test]
fn every_app_reason_is_an_error_reason_and_gets_its_documented_code() {
    let documented = enum_codes();
    for reason in crate::app::Reason::ALL {
        assert!(
            ErrorReason::from_str_name(reason.name()).is_some(),
            "{reason} is not an ErrorReason value"
        );
        // ENROLLMENT_NOT_CONFIRMED is a record's failure, never an RPC error: no code documented.
        if let Some(code) = documented[reason.name()].as_deref() {
            assert_eq!(code, code_name(status::code_of(reason)), "{reason}");
        }
    }
}

#[test]
fn reasons_added_to_tonics_errors_are_error_reasons_with_their_codes() {
    let documented = enum_codes();
    for number in 1..=16 {
        let code = Code::from_i32(number);
        let reason = fallback_reason(code);
        assert_ne!(reason, ErrorReason::Unspecified);
        let named = documented[reason.as_str_name()].as_deref();
        // INTERNAL also stands for codes that no reason describes (documented in the enum).
        if reason != ErrorReason::Internal {
            assert_eq!(named, Some(code_name(code)), "{code:?} → {reason:?}");
        }
    }
    assert_eq!(
        fallback_reason(Code::OutOfRange),
        ErrorReason::RequestTooLarge
    );
}
