//! proto ⇄ domain: request validation (every bad field named at once) and the `Enrollment`
//! message.

use crate::app::ports::ClickToPayProfile;
use crate::app::{
    CheckedProgram, ConsumerInput, EnrollCommand, FieldViolation, RemoveCommand, Source,
};
use crate::domain::{
    CardContractId, EnrollmentRecord, EnrollmentState, RemovalReason, STORE_INTEGER_LIMIT,
    SharedRecord, TokenEvent, TokenEventKind, TokenStatus, TokenizationDecision,
};
use crate::proto::v1 as pb;
use prost::Message as _;
use std::sync::Arc;

const MAX_TEXT: usize = 255;
/// Program names are configuration keys: short, no spaces.
const MAX_PROGRAM: usize = 64;
/// MDES token requestor ids are 11 digits; wallet names are short labels.
const MAX_TOKEN_REQUESTOR_ID: usize = 11;
const MAX_WALLET_NAME: usize = 64;
const MAX_TOKEN_REFERENCE: usize = 64;
/// Event times must be before this second (5138-11-16T09:46:40Z): the store keeps times up to
/// `STORE_INTEGER_LIMIT` ms exactly (Redis's Lua JSON writes 14 significant digits).
const EVENT_TIME_LIMIT_SECONDS: i64 = STORE_INTEGER_LIMIT / 1000;

#[derive(Default)]
struct Violations(Vec<FieldViolation>);

impl Violations {
    fn add(&mut self, field: &str, description: impl Into<String>) {
        self.0.push(FieldViolation {
            field: field.into(),
            description: description.into(),
        });
    }

    /// Free text (names, address lines): bounded, and no control characters.
    fn max_len(&mut self, field: &str, value: &str, max: usize) {
        if value.chars().count() > max {
            self.add(field, format!("must be at most {max} characters"));
        } else if crate::text::has_control(value) {
            self.add(field, "must not contain control characters");
        }
    }
}

fn is_program_name(s: &str) -> bool {
    s.len() <= MAX_PROGRAM
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn non_empty(s: &str) -> Option<String> {
    let t = s.trim();
    (!t.is_empty()).then(|| t.to_owned())
}

fn is_country(s: &str) -> bool {
    s.len() == 2 && s.chars().all(|c| c.is_ascii_uppercase())
}

fn is_language(s: &str) -> bool {
    let b = s.as_bytes();
    match b.len() {
        2 => b.iter().all(u8::is_ascii_lowercase),
        5 => {
            b[..2].iter().all(u8::is_ascii_lowercase)
                && b[2] == b'_'
                && b[3..].iter().all(u8::is_ascii_uppercase)
        }
        _ => false,
    }
}

fn digits(s: &str, min: usize, max: usize) -> bool {
    (min..=max).contains(&s.len()) && s.chars().all(|c| c.is_ascii_digit())
}

fn is_email(s: &str) -> bool {
    match s.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !s.contains(char::is_whitespace)
        }
        None => false,
    }
}

/// An idempotency key: 1 to 255 characters without control characters.
fn idempotency_key(v: &mut Violations, key: &str) {
    let len = key.chars().count();
    if len == 0 || len > MAX_TEXT || crate::text::has_control(key) {
        v.add(
            "idempotency_key",
            "required, 1 to 255 characters without control characters",
        );
    }
}

/// Validates a `RemoveCardRequest`.
pub fn remove_command(
    req: pb::RemoveCardRequest,
    caller: String,
) -> Result<RemoveCommand, Vec<FieldViolation>> {
    let mut v = Violations::default();
    idempotency_key(&mut v, &req.idempotency_key);
    let card = CardContractId::new(req.card_contract_id);
    if card.is_none() {
        v.add("card_contract_id", "required, from 1 to 99999999999999");
    }
    use pb::RemovalReason as R;
    let reason = match R::try_from(req.reason) {
        Ok(R::CardClosed) => Some(RemovalReason::CardClosed),
        Ok(R::CardReplaced) => Some(RemovalReason::CardReplaced),
        Ok(R::Fraud) => Some(RemovalReason::Fraud),
        Ok(R::CardholderRequest) => Some(RemovalReason::CardholderRequest),
        Ok(R::Other) => Some(RemovalReason::Other),
        Ok(R::Unspecified | R::TokenDeactivated | R::ConsumerOptedOut | R::NotInClickToPay)
        | Err(_) => None,
    };
    if reason.is_none() {
        v.add(
            "reason",
            "required: CARD_CLOSED, CARD_REPLACED, FRAUD, CARDHOLDER_REQUEST or OTHER",
        );
    }
    match (v.0.is_empty(), card, reason) {
        (true, Some(card_contract_id), Some(reason)) => Ok(RemoveCommand {
            caller,
            idempotency_key: req.idempotency_key,
            card_contract_id,
            reason,
            // Set by the caller's access check, once it is made.
            checked: CheckedProgram::Unchecked,
        }),
        _ => Err(v.0),
    }
}

/// Validates an `UpdateConsumerRequest`.
pub fn update_consumer_request(
    req: pb::UpdateConsumerRequest,
) -> Result<(CardContractId, ConsumerInput), Vec<FieldViolation>> {
    let mut v = Violations::default();
    let card = CardContractId::new(req.card_contract_id);
    if card.is_none() {
        v.add("card_contract_id", "required, from 1 to 99999999999999");
    }
    let consumer = match req.consumer {
        None => {
            v.add("consumer", "required");
            None
        }
        Some(c) => Some(consumer(&mut v, c)),
    };
    match (v.0.is_empty(), card, consumer) {
        (true, Some(card), Some(consumer)) => Ok((card, consumer)),
        _ => Err(v.0),
    }
}

/// Validates an `UpdateBillingAddressRequest`.
pub fn update_billing_address_request(
    req: pb::UpdateBillingAddressRequest,
) -> Result<(CardContractId, crate::app::ports::Address), Vec<FieldViolation>> {
    let mut v = Violations::default();
    let card = CardContractId::new(req.card_contract_id);
    if card.is_none() {
        v.add("card_contract_id", "required, from 1 to 99999999999999");
    }
    let billing_address = match req.billing_address {
        None => {
            v.add("billing_address", "required");
            None
        }
        Some(a) => Some(address(&mut v, a)),
    };
    match (v.0.is_empty(), card, billing_address) {
        (true, Some(card), Some(address)) => Ok((card, address)),
        _ => Err(v.0),
    }
}

/// Validates an `EnrollCardRequest`; `has_program` says which program names are configured.
pub fn enroll_command(
    req: pb::EnrollCardRequest,
    caller: String,
    has_program: impl Fn(&str) -> bool,
) -> Result<EnrollCommand, Vec<FieldViolation>> {
    let mut v = Violations::default();
    idempotency_key(&mut v, &req.idempotency_key);
    let card = CardContractId::new(req.card_contract_id);
    if card.is_none() {
        v.add("card_contract_id", "required, from 1 to 99999999999999");
    }
    if !is_program_name(&req.program) {
        v.add(
            "program",
            "must be a program name: at most 64 letters, digits, '_', '-' or '.'",
        );
    } else if !has_program(&req.program) {
        v.add(
            "program",
            format!(
                "\"{}\" is not a configured program",
                crate::text::excerpt(&req.program)
            ),
        );
    }
    let consumer = match req.consumer {
        None => {
            v.add("consumer", "required");
            None
        }
        Some(c) => Some(consumer(&mut v, c)),
    };
    v.max_len("cardholder_full_name", &req.cardholder_full_name, MAX_TEXT);
    let billing_address = req.billing_address.map(|a| address(&mut v, a));
    // Only the hyphenated 36-character form: it goes to Mastercard as given, and the braced,
    // URN and simple forms that the parser also takes are not what Mastercard expects. Checked
    // as sent, untrimmed, as its `buf.validate` annotation says (`string.uuid`).
    let id = &req.src_correlation_id;
    if !id.is_empty() && (id.len() != 36 || uuid::Uuid::try_parse(id).is_err()) {
        v.add(
            "src_correlation_id",
            "must be a UUID in its hyphenated 36-character form",
        );
    }
    let src_correlation_id = non_empty(id);
    match (v.0.is_empty(), card, consumer) {
        (true, Some(card_contract_id), Some(consumer)) => Ok(EnrollCommand {
            caller,
            idempotency_key: req.idempotency_key,
            card_contract_id,
            // One name for the default program, in the record and in the fingerprint.
            program: if req.program == crate::domain::DEFAULT_PROGRAM {
                String::new()
            } else {
                req.program
            },
            consumer,
            cardholder_full_name: non_empty(&req.cardholder_full_name),
            billing_address,
            src_correlation_id,
        }),
        _ => Err(v.0),
    }
}

fn consumer(v: &mut Violations, c: pb::Consumer) -> ConsumerInput {
    // Checked as sent, untrimmed, as its `buf.validate` annotation says: an e-mail address has
    // no spaces, so only the empty one is absent.
    let e = &c.email;
    if !e.is_empty() && (!is_email(e) || e.len() > MAX_TEXT || crate::text::has_control(e)) {
        v.add(
            "consumer.email",
            "must be an e-mail address of at most 255 bytes",
        );
    }
    let mobile = c.mobile_number.map(|m| {
        if !digits(&m.country_code, 1, 4) || m.country_code.starts_with('0') {
            v.add(
                "consumer.mobile_number.country_code",
                "must be 1 to 4 digits without a leading zero",
            );
        }
        if !digits(&m.phone_number, 4, 14) {
            v.add(
                "consumer.mobile_number.phone_number",
                "must be 4 to 14 digits",
            );
        }
        (m.country_code, m.phone_number)
    });
    let email = non_empty(&c.email);
    if c.email.is_empty() && mobile.is_none() {
        v.add(
            "consumer.email",
            "consumer.email or consumer.mobile_number is required",
        );
    }
    v.max_len("consumer.first_name", &c.first_name, MAX_TEXT);
    v.max_len("consumer.last_name", &c.last_name, MAX_TEXT);
    if !is_country(&c.country_code) {
        v.add(
            "consumer.country_code",
            "required, ISO 3166-1 alpha-2 in upper case (e.g. US)",
        );
    }
    if !is_language(&c.language_code) {
        v.add(
            "consumer.language_code",
            "required, e.g. \"en\" or \"en_US\"",
        );
    }
    ConsumerInput {
        email,
        mobile,
        first_name: non_empty(&c.first_name),
        last_name: non_empty(&c.last_name),
        country_code: c.country_code,
        language_code: c.language_code,
    }
}

fn address(v: &mut Violations, a: pb::Address) -> crate::app::ports::Address {
    for (field, value) in [
        ("billing_address.line1", &a.line1),
        ("billing_address.line2", &a.line2),
        ("billing_address.line3", &a.line3),
        ("billing_address.city", &a.city),
        ("billing_address.state", &a.state),
    ] {
        v.max_len(field, value, MAX_TEXT);
    }
    v.max_len("billing_address.zip", &a.zip, 16);
    if !is_country(&a.country_code) {
        v.add(
            "billing_address.country_code",
            "required with an address, ISO 3166-1 alpha-2 in upper case",
        );
    }
    crate::app::ports::Address {
        line1: non_empty(&a.line1),
        line2: non_empty(&a.line2),
        line3: non_empty(&a.line3),
        city: non_empty(&a.city),
        state: non_empty(&a.state),
        zip: non_empty(&a.zip),
        country_code: non_empty(&a.country_code),
    }
}

/// A validated card id, or the violation.
pub fn card_id(id: i64) -> Result<CardContractId, Vec<FieldViolation>> {
    CardContractId::new(id).ok_or_else(|| {
        vec![FieldViolation {
            field: "card_contract_id".into(),
            description: "required, from 1 to 99999999999999".into(),
        }]
    })
}

/// A validated `WatchEnrollmentRequest`: the card and `start_after_revision`, or the violations.
pub fn watch_request(
    req: &pb::WatchEnrollmentRequest,
) -> Result<(CardContractId, i64), Vec<FieldViolation>> {
    let card = card_id(req.card_contract_id);
    let start_after = req.start_after_revision;
    match (card, start_after >= 0) {
        (Ok(card), true) => Ok((card, start_after)),
        (card, start_ok) => {
            let mut violations = card.err().unwrap_or_default();
            if !start_ok {
                violations.push(FieldViolation {
                    field: "start_after_revision".into(),
                    description: "must be 0 or a revision received before".into(),
                });
            }
            Err(violations)
        }
    }
}

/// How far from now a notification's `event_time` may be: a time far in the future would win
/// every later merge (and once poisoned records), one far in the past is older than anything kept.
#[derive(Debug, Clone, Copy)]
pub struct EventTimeBounds {
    /// `notifications.max_future_skew`.
    pub max_future: std::time::Duration,
    /// `notifications.max_age`.
    pub max_age: std::time::Duration,
}

/// Why an event time is out of bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeBound {
    /// Further ahead than `max_future`.
    Future,
    /// Further back than `max_age`.
    Past,
}

impl EventTimeBounds {
    fn check(&self, event_at_ms: i64, now_ms: i64) -> Result<(), (TimeBound, String)> {
        let ms = |d: std::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        if event_at_ms > now_ms.saturating_add(ms(self.max_future)) {
            return Err((
                TimeBound::Future,
                format!(
                    "more than {} in the future",
                    humantime::format_duration(self.max_future)
                ),
            ));
        }
        if event_at_ms < now_ms.saturating_sub(ms(self.max_age)) {
            return Err((
                TimeBound::Past,
                format!(
                    "more than {} in the past",
                    humantime::format_duration(self.max_age)
                ),
            ));
        }
        Ok(())
    }
}

/// Why a notification is REJECTED before it reaches the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The reason code.
    pub reason: pb::NotificationRejectReason,
    /// Each invalid field (none for UNSUPPORTED_EVENT).
    pub violations: Vec<FieldViolation>,
}

impl Rejection {
    /// The human-readable message: the violations, joined.
    pub fn message(&self) -> String {
        if self.violations.is_empty() {
            return "no event this server knows is set (a newer gateway?): not applied, not remembered; resend it once the service is upgraded".into();
        }
        self.violations
            .iter()
            .map(|v| format!("{}: {}", v.field, v.description))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// A notification, validated; `Err` says why it is REJECTED. Every invalid field is named;
/// the reason is INVALID_FIELD unless the event time's bound is the only problem.
pub fn token_event(
    n: &pb::NotificationIngestRequest,
    bounds: EventTimeBounds,
) -> Result<TokenEvent, Rejection> {
    use pb::NotificationRejectReason as Reason;
    let mut v = Violations::default();
    if n.notification_id.trim().is_empty()
        || n.notification_id.chars().count() > MAX_TEXT
        || crate::text::has_control(&n.notification_id)
    {
        v.add(
            "notification_id",
            "required, 1 to 255 characters without control characters",
        );
    }
    let mut bound = None;
    let event_at_ms = match &n.event_time {
        Some(t)
            if t.seconds > 0
                && t.seconds < EVENT_TIME_LIMIT_SECONDS
                && (0..1_000_000_000).contains(&t.nanos) =>
        {
            t.seconds * 1000 + i64::from(t.nanos / 1_000_000)
        }
        Some(_) => {
            v.add(
                "event_time",
                "must be a valid timestamp after 1970 and before 5138-11-16T09:46:40Z",
            );
            0
        }
        None => {
            v.add("event_time", "required");
            0
        }
    };
    if event_at_ms > 0
        && let Err((which, why)) = bounds.check(event_at_ms, crate::domain::now_ms())
    {
        bound = Some((which, why));
    }
    use pb::notification_ingest_request::Event;
    let (prefix, card, tur, trid, wallet, kind) = match &n.event {
        None => {
            return Err(Rejection {
                reason: Reason::UnsupportedEvent,
                violations: Vec::new(),
            });
        }
        Some(Event::TokenizationAuthorization(e)) => {
            let kind = match e.decision() {
                pb::TokenizationDecision::Approved => Some(TokenizationDecision::Approved),
                pb::TokenizationDecision::Declined => Some(TokenizationDecision::Declined),
                pb::TokenizationDecision::RequireAdditionalAuthentication => {
                    Some(TokenizationDecision::RequireAdditionalAuthentication)
                }
                pb::TokenizationDecision::Unspecified => None,
            };
            if kind.is_none() {
                v.add("tokenization_authorization.decision", "required");
            }
            (
                "tokenization_authorization",
                e.card_contract_id,
                &e.token_unique_reference,
                &e.token_requestor_id,
                &e.wallet_name,
                kind.map(TokenEventKind::Authorization),
            )
        }
        Some(Event::TokenizationComplete(e)) => (
            "tokenization_complete",
            e.card_contract_id,
            &e.token_unique_reference,
            &e.token_requestor_id,
            &e.wallet_name,
            Some(TokenEventKind::Complete),
        ),
        Some(Event::TokenStatusChanged(e)) => {
            let status = match e.status() {
                pb::TokenStatus::Pending => Some(TokenStatus::Pending),
                pb::TokenStatus::Active => Some(TokenStatus::Active),
                pb::TokenStatus::Suspended => Some(TokenStatus::Suspended),
                pb::TokenStatus::Deactivated => Some(TokenStatus::Deactivated),
                pb::TokenStatus::Inactive => Some(TokenStatus::Inactive),
                pb::TokenStatus::Unspecified => None,
            };
            if status.is_none() {
                v.add("token_status_changed.status", "required");
            }
            if e.reason.chars().count() > MAX_TEXT || crate::text::has_control(&e.reason) {
                v.add(
                    "token_status_changed.reason",
                    "at most 255 characters without control characters",
                );
            }
            (
                "token_status_changed",
                e.card_contract_id,
                &e.token_unique_reference,
                &e.token_requestor_id,
                &e.wallet_name,
                status.map(TokenEventKind::StatusChanged),
            )
        }
    };
    let card = CardContractId::new(card);
    if card.is_none() {
        v.add(
            &format!("{prefix}.card_contract_id"),
            "required, from 1 to 99999999999999",
        );
    }
    let reference_ok = |s: &str| {
        s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
    };
    if tur.trim().is_empty() || tur.len() > MAX_TOKEN_REFERENCE || !reference_ok(tur) {
        v.add(
            &format!("{prefix}.token_unique_reference"),
            "required, at most 64 letters, digits, '_' or '-'",
        );
    }
    if trid.is_empty()
        || trid.len() > MAX_TOKEN_REQUESTOR_ID
        || !trid.chars().all(|c| c.is_ascii_digit())
    {
        v.add(
            &format!("{prefix}.token_requestor_id"),
            "required, at most 11 digits",
        );
    }
    if wallet.trim().is_empty()
        || wallet.chars().count() > MAX_WALLET_NAME
        || crate::text::has_control(wallet)
    {
        v.add(
            &format!("{prefix}.wallet_name"),
            "required, at most 64 characters without control characters",
        );
    }
    let only_bound = v.0.is_empty();
    if let Some((which, why)) = bound {
        v.add("event_time", why);
        if only_bound {
            return Err(Rejection {
                reason: match which {
                    TimeBound::Future => Reason::EventTimeInFuture,
                    TimeBound::Past => Reason::EventTimeTooOld,
                },
                violations: v.0,
            });
        }
    }
    match (v.0.is_empty(), card, kind) {
        (true, Some(card_contract_id), Some(kind)) => Ok(TokenEvent {
            notification_id: n.notification_id.clone(),
            event_at_ms,
            card_contract_id,
            token_unique_reference: tur.clone(),
            token_requestor_id: trid.clone(),
            wallet_name: wallet.clone(),
            kind,
        }),
        _ => Err(Rejection {
            reason: Reason::InvalidField,
            violations: v.0,
        }),
    }
}

/// A protobuf timestamp of Unix milliseconds.
pub fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

/// The `Enrollment` message of a record.
pub fn enrollment(r: &EnrollmentRecord, source: Source) -> pb::Enrollment {
    into_enrollment(r.clone(), source)
}

/// The answer to `GetEnrollmentStatus` about `shared`. A record served as stored is the same
/// answer on every call until the record changes: its encoding is made once, kept with that
/// version of the record ([`SharedRecord::memo`]), and sent as those bytes by every later hit.
pub fn status_answer(shared: Arc<SharedRecord>, source: Source) -> pb::GetEnrollmentStatusResponse {
    match source {
        Source::Store => pb::GetEnrollmentStatusResponse::pre_encoded(shared.memo(|record| {
            pb::GetEnrollmentStatusResponse::of(enrollment(record, Source::Store))
                .encode_to_vec()
                .into()
        })),
        // Built on this call, for this call only.
        Source::Upstream => {
            pb::GetEnrollmentStatusResponse::of(into_enrollment(shared.into_record(), source))
        }
    }
}

/// [`enrollment`] of a record the caller no longer needs: its strings move into the message.
pub fn into_enrollment(r: EnrollmentRecord, source: Source) -> pb::Enrollment {
    let state = match r.state {
        EnrollmentState::NotEnrolled => pb::EnrollmentState::NotEnrolled,
        EnrollmentState::InProgress => pb::EnrollmentState::InProgress,
        EnrollmentState::Enrolled => pb::EnrollmentState::Enrolled,
        EnrollmentState::Failed => pb::EnrollmentState::Failed,
        EnrollmentState::TokenizedElsewhere => pb::EnrollmentState::TokenizedElsewhere,
        EnrollmentState::Removed => pb::EnrollmentState::Removed,
    };
    pb::Enrollment {
        card_contract_id: r.card_contract_id.get(),
        program: r.program,
        state: state as i32,
        src_digital_card_id: r.src_digital_card_id.unwrap_or_default(),
        src_consumer_id: r.src_consumer_id.unwrap_or_default(),
        src_correlation_id: r.src_correlation_id.unwrap_or_default(),
        masked_card: r.masked_card.map(|m| pb::MaskedCard {
            pan_last_four: m.pan_last_four,
            pan_expiration_month: m.pan_expiration_month,
            pan_expiration_year: m.pan_expiration_year,
            payment_card_descriptor: m.payment_card_descriptor.unwrap_or_default(),
            payment_card_type: m.payment_card_type.unwrap_or_default(),
            digital_card_status: m.digital_card_status.unwrap_or_default(),
        }),
        token: r.token.map(|t| pb::Token {
            event_time: t.event_time_ms().map(timestamp),
            status: t.status.map_or(pb::TokenStatus::Unspecified, |s| match s {
                TokenStatus::Pending => pb::TokenStatus::Pending,
                TokenStatus::Active => pb::TokenStatus::Active,
                TokenStatus::Suspended => pb::TokenStatus::Suspended,
                TokenStatus::Deactivated => pb::TokenStatus::Deactivated,
                TokenStatus::Inactive => pb::TokenStatus::Inactive,
            }) as i32,
            decision: t
                .decision
                .map_or(pb::TokenizationDecision::Unspecified, |d| match d {
                    TokenizationDecision::Approved => pb::TokenizationDecision::Approved,
                    TokenizationDecision::Declined => pb::TokenizationDecision::Declined,
                    TokenizationDecision::RequireAdditionalAuthentication => {
                        pb::TokenizationDecision::RequireAdditionalAuthentication
                    }
                }) as i32,
            token_unique_reference: t.token_unique_reference,
            token_requestor_id: t.token_requestor_id,
        }),
        failure: r.failure.map(|f| pb::Failure {
            reason: pb::ErrorReason::from_str_name(&f.reason)
                .unwrap_or(pb::ErrorReason::Unspecified) as i32,
            message: f.message,
            retryable: f.retryable,
            metadata: f.metadata.into_iter().collect(),
        }),
        create_time: Some(timestamp(r.create_time_ms)),
        update_time: Some(timestamp(r.update_time_ms)),
        revision: r.revision,
        source: match source {
            Source::Store => pb::EnrollmentSource::Store,
            Source::Upstream => pb::EnrollmentSource::Upstream,
        } as i32,
        removal: r.removal.map(|removal| pb::Removal {
            reason: removal_reason(removal.reason) as i32,
            remove_time: Some(timestamp(removal.time_ms)),
        }),
        consumer_update_time: r.consumer_update_time_ms.map(timestamp),
        billing_address_update_time: r.billing_address_update_time_ms.map(timestamp),
        external_consumer_id: r.external_consumer_id.unwrap_or_default(),
        external_credential_id: r.external_credential_id.unwrap_or_default(),
    }
}

/// The contract's value of a removal reason.
pub fn removal_reason(reason: RemovalReason) -> pb::RemovalReason {
    match reason {
        RemovalReason::CardClosed => pb::RemovalReason::CardClosed,
        RemovalReason::CardReplaced => pb::RemovalReason::CardReplaced,
        RemovalReason::Fraud => pb::RemovalReason::Fraud,
        RemovalReason::CardholderRequest => pb::RemovalReason::CardholderRequest,
        RemovalReason::Other => pb::RemovalReason::Other,
        RemovalReason::TokenDeactivated => pb::RemovalReason::TokenDeactivated,
        RemovalReason::ConsumerOptedOut => pb::RemovalReason::ConsumerOptedOut,
        RemovalReason::NotInClickToPay => pb::RemovalReason::NotInClickToPay,
    }
}

/// The `ClickToPayProfile` message of a profile.
pub fn profile(p: ClickToPayProfile) -> pb::ClickToPayProfile {
    pb::ClickToPayProfile {
        src_consumer_id: p.src_consumer_id.unwrap_or_default(),
        external_consumer_id: p.external_consumer_id.unwrap_or_default(),
        masked_email: p.masked_email.unwrap_or_default(),
        masked_mobile_number: p.masked_mobile_number.unwrap_or_default(),
        masked_full_name: p.masked_full_name.unwrap_or_default(),
        country_code: p.country_code.unwrap_or_default(),
        language_code: p.language_code.unwrap_or_default(),
        status: p.status.unwrap_or_default(),
        cards: p
            .cards
            .into_iter()
            .map(|c| pb::ProfileCard {
                src_digital_card_id: c.src_digital_card_id.unwrap_or_default(),
                external_credential_id: c.external_credential_id.unwrap_or_default(),
                card_contract_id: c.card.map_or(0, CardContractId::get),
                masked_card: c.masked_card.map(|m| pb::MaskedCard {
                    pan_last_four: m.pan_last_four,
                    pan_expiration_month: m.pan_expiration_month,
                    pan_expiration_year: m.pan_expiration_year,
                    payment_card_descriptor: m.payment_card_descriptor.unwrap_or_default(),
                    payment_card_type: m.payment_card_type.unwrap_or_default(),
                    digital_card_status: m.digital_card_status.unwrap_or_default(),
                }),
                masked_billing_address: c.masked_billing_address.map(|a| pb::MaskedAddress {
                    line1: a.line1.unwrap_or_default(),
                    city: a.city.unwrap_or_default(),
                    state: a.state.unwrap_or_default(),
                    zip: a.zip.unwrap_or_default(),
                    country_code: a.country_code.unwrap_or_default(),
                }),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcn_at(seconds: i64, nanos: i32) -> pb::NotificationIngestRequest {
        use pb::notification_ingest_request::Event;
        pb::NotificationIngestRequest {
            notification_id: "n-1".into(),
            event_time: Some(prost_types::Timestamp { seconds, nanos }),
            sequence: 7,
            event: Some(Event::TokenizationComplete(pb::TokenizationComplete {
                card_contract_id: 70001,
                token_unique_reference: "DM4MMC0000000001".into(),
                token_requestor_id: "50123197928".into(),
                wallet_name: "MDES for Merchants".into(),
            })),
        }
    }

    /// Bounds so wide that only the store's own limit applies.
    const ANY_TIME: EventTimeBounds = EventTimeBounds {
        max_future: std::time::Duration::from_secs(1 << 40),
        max_age: std::time::Duration::from_secs(1 << 40),
    };

    #[test]
    fn event_times_are_bounded_by_what_the_store_keeps_exactly() {
        // The last millisecond the store keeps: 5138-11-16T09:46:39.999Z.
        let last = token_event(&tcn_at(99_999_999_999, 999_999_999), ANY_TIME).unwrap();
        assert_eq!(last.event_at_ms, STORE_INTEGER_LIMIT - 1);
        for (seconds, nanos) in [
            (100_000_000_000, 0),
            (200_000_000_000, 0),
            (253_402_300_799, 0),
            (i64::MAX, 0),
            (0, 0),
            (-1, 0),
            (1_800_000_000, 1_000_000_000),
        ] {
            let err = token_event(&tcn_at(seconds, nanos), ANY_TIME).unwrap_err();
            assert_eq!(err.reason, pb::NotificationRejectReason::InvalidField);
            assert_eq!(err.violations[0].field, "event_time");
            assert!(
                err.message().contains("5138-11-16T09:46:40Z"),
                "{seconds}: {err:?}"
            );
        }
    }
}

#[cfg(test)]
mod bounds_tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn event_times_must_be_near_now() {
        let bounds = EventTimeBounds {
            max_future: Duration::from_secs(300),
            max_age: Duration::from_secs(30 * 86_400),
        };
        let now = 1_800_000_000_000;
        assert!(bounds.check(now, now).is_ok());
        assert!(bounds.check(now + 299_000, now).is_ok());
        assert!(bounds.check(now + 301_000, now).unwrap_err().0 == TimeBound::Future);
        assert!(bounds.check(now - 31 * 86_400_000, now).unwrap_err().0 == TimeBound::Past);
        assert!(bounds.check(i64::MAX, now).is_err());
    }
}
