//! Tokenization notifications (TAR, TCN, status changes) and how one merges into a record: a
//! join (commutative, associative, idempotent, with a total order on writes, see
//! `merge_tokens`), so that any order of arrival gives the same record. The Redis
//! store runs the same rules in a Lua script (`store/scripts.rs`); one test suite checks both.

use super::CardContractId;
use super::enrollment::{
    EnrollmentRecord, EnrollmentState, Token, TokenStatus, TokenizationDecision, Version,
};

/// The token requestor id of Click to Pay.
pub const CLICK_TO_PAY_TOKEN_REQUESTOR_ID: &str = "50123197928";
/// The wallet name of Click to Pay.
pub const CLICK_TO_PAY_WALLET_NAME: &str = "MDES for Merchants";

/// What a notification says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenEventKind {
    /// A TAR and its decision.
    Authorization(TokenizationDecision),
    /// A TCN: the token was created (and is active).
    Complete,
    /// A lifecycle change.
    StatusChanged(TokenStatus),
}

/// A validated notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenEvent {
    /// The dedup key.
    pub notification_id: String,
    /// When it happened upstream, Unix milliseconds.
    pub event_at_ms: i64,
    /// The card.
    pub card_contract_id: CardContractId,
    /// MDES token unique reference.
    pub token_unique_reference: String,
    /// Token requestor.
    pub token_requestor_id: String,
    /// Wallet.
    pub wallet_name: String,
    /// What happened.
    pub kind: TokenEventKind,
}

impl TokenEvent {
    /// Whether the token is Click to Pay's (others are ignored).
    pub fn is_click_to_pay(&self) -> bool {
        self.token_requestor_id == CLICK_TO_PAY_TOKEN_REQUESTOR_ID
            && self.wallet_name == CLICK_TO_PAY_WALLET_NAME
    }

    /// SHA-256 (hex) of what the service takes from the notification, in a versioned canonical
    /// form: the dedup marker keeps it, so that an id seen again with other content is told
    /// apart from a resend. Holds no card data (card id, times, token ids and the event only).
    pub fn content_hash(&self) -> String {
        use std::fmt::Write as _;
        // Two reused buffers, no string per field: every notification is hashed on the
        // ingest path (format! per field and hex's char iterator were ~7% of its CPU).
        let mut canonical = String::with_capacity(160);
        canonical.push_str("c2p-notification-v1");
        let mut value = String::with_capacity(48);
        let field = |canonical: &mut String, value: &str| {
            // Length-prefixed fields: no value can forge a separator.
            let _ = write!(canonical, "|{}:", value.len());
            canonical.push_str(value);
        };
        let _ = write!(value, "{}", self.card_contract_id.get());
        field(&mut canonical, &value);
        value.clear();
        let _ = write!(value, "{}", self.event_at_ms);
        field(&mut canonical, &value);
        value.clear();
        let _ = match self.kind {
            TokenEventKind::Authorization(d) => write!(value, "tar:{d:?}"),
            TokenEventKind::Complete => write!(value, "tcn"),
            TokenEventKind::StatusChanged(s) => write!(value, "status:{s:?}"),
        };
        field(&mut canonical, &value);
        field(&mut canonical, &self.token_unique_reference);
        field(&mut canonical, &self.token_requestor_id);
        field(&mut canonical, &self.wallet_name);
        crate::digest::sha256_hex(canonical.as_bytes())
    }

    /// The token as this event alone describes it.
    pub fn as_token(&self) -> Token {
        let version = Some(Version {
            at_ms: self.event_at_ms,
            by: self.notification_id.clone(),
        });
        let (status, status_version, decision, decision_version) = match self.kind {
            TokenEventKind::Authorization(d) => (None, None, Some(d), version),
            TokenEventKind::Complete => (Some(TokenStatus::Active), version, None, None),
            TokenEventKind::StatusChanged(s) => (Some(s), version, None, None),
        };
        Token {
            token_unique_reference: self.token_unique_reference.clone(),
            token_requestor_id: self.token_requestor_id.clone(),
            status,
            status_version,
            decision,
            decision_version,
            superseded: None,
        }
    }
}

/// The result of merging one (not duplicate) notification.
// Short-lived return value: the record is moved straight into the store.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Merge {
    /// The token changed; the record is now this (its times and revision not set yet: the
    /// store stamps it, see `EnrollmentRecord::stamped`).
    Applied(EnrollmentRecord),
    /// Older than what the record holds for the token: nothing changed, nothing is written.
    Stale,
}

/// Merges `event` into `existing`: the token by [`merge_tokens`] (a join: any order of arrival
/// gives the same token). A notification for a card with no record, or one recorded
/// NOT_ENROLLED, shows a Click to Pay token this service did not enroll: the record is then
/// TOKENIZED_ELSEWHERE. An ENROLLED record follows its token ([`follow_token`]: DEACTIVATED
/// makes it REMOVED). Other states are the enrollment flow's and stay. The Lua twin is
/// `apply_notification` in `store/scripts.rs`.
///
/// [`follow_token`]: super::follow_token
pub fn merge(existing: Option<&EnrollmentRecord>, event: &TokenEvent) -> Merge {
    let incoming = event.as_token();
    let Some(existing) = existing else {
        let mut r = EnrollmentRecord::new(
            event.card_contract_id,
            String::new(),
            EnrollmentState::TokenizedElsewhere,
            event.event_at_ms,
        );
        r.token = Some(incoming);
        return Merge::Applied(r);
    };
    // News about a token of an earlier enrollment of the card (the removal's deactivation,
    // arriving after the new enrollment began) changes nothing: it is not this enrollment's.
    if existing.retired(&event.token_unique_reference) {
        return Merge::Stale;
    }
    let mut record = existing.clone();
    record.token = Some(match record.token.take() {
        None => incoming,
        Some(current) => super::enrollment::merge_tokens(current, &incoming),
    });
    if record.token == existing.token {
        return Merge::Stale;
    }
    if record.state == EnrollmentState::NotEnrolled {
        record.state = EnrollmentState::TokenizedElsewhere;
    }
    // An enrolled card whose token is deactivated has left Click to Pay (and comes back only
    // when a later write of its token says otherwise): a function of the merged token.
    super::lifecycle::follow_token(&mut record);
    Merge::Applied(record)
}

#[cfg(test)]
mod tests;
