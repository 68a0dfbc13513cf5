//! The enrollment record of one card: what the store keeps and the RPCs return.
//!
//! It never holds more card data than Click to Pay's masked card (last four digits, expiry).
//! Times are Unix milliseconds so that the Redis scripts can compare them.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Every integer a record holds (card ids, times in Unix milliseconds) is below this: Redis's Lua
/// JSON (cjson) writes numbers with 14 significant digits, so 10^14 and above would come back
/// rounded (`1e+14`) and the record would no longer read. As a time: 5138-11-16T09:46:40Z.
pub const STORE_INTEGER_LIMIT: i64 = 100_000_000_000_000;

/// Whether the store keeps the time `ms` exactly: from the Unix epoch to
/// 5138-11-16T09:46:39.999Z (see [`STORE_INTEGER_LIMIT`]).
pub fn is_storable_time(ms: i64) -> bool {
    (0..STORE_INTEGER_LIMIT).contains(&ms)
}

/// A card's technical id in the Mastercard Processing CMS (`cardContractId`); always > 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct CardContractId(i64);

impl CardContractId {
    /// Ids at or above this are refused: Redis's Lua JSON keeps 14 significant digits, so larger
    /// numbers would not survive a script.
    pub const LIMIT: i64 = STORE_INTEGER_LIMIT;

    /// The id, if it is a valid card contract id (1 to 10^14 - 1).
    pub fn new(id: i64) -> Option<Self> {
        (id > 0 && id < Self::LIMIT).then_some(Self(id))
    }

    /// The numeric id.
    pub fn get(self) -> i64 {
        self.0
    }
}

impl TryFrom<i64> for CardContractId {
    type Error = String;
    fn try_from(id: i64) -> Result<Self, String> {
        Self::new(id).ok_or_else(|| format!("card contract id must be > 0, got {id}"))
    }
}

impl From<CardContractId> for i64 {
    fn from(id: CardContractId) -> i64 {
        id.0
    }
}

impl fmt::Display for CardContractId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Where a card's enrollment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EnrollmentState {
    /// Not enrolled in Click to Pay.
    NotEnrolled,
    /// Started, not finished.
    InProgress,
    /// Accepted by Click to Pay.
    Enrolled,
    /// Failed; the record's `failure` says why.
    Failed,
}

/// A token's lifecycle status (MDES statuses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TokenStatus {
    /// Created, not active yet.
    Pending,
    /// Usable.
    Active,
    /// Temporarily suspended.
    Suspended,
    /// Permanently deactivated.
    Deactivated,
    /// Inactive.
    Inactive,
}

/// The decision on a Tokenization Authorization Request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TokenizationDecision {
    /// Approved.
    Approved,
    /// Declined.
    Declined,
    /// Needs additional cardholder authentication.
    RequireAdditionalAuthentication,
}

/// Which write a register holds: the event time, and the notification id as tie-breaker, so that
/// merging is the same whatever the order of arrival (last writer wins by `(at_ms, by)`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Version {
    /// Event time, Unix milliseconds.
    pub at_ms: i64,
    /// The notification id (or `upstream:<...>` for a read of the token list).
    pub by: String,
}

/// The last four characters of a card number (all of it when shorter).
pub fn last_four(number: &str) -> String {
    let chars: Vec<char> = number.chars().collect();
    chars[chars.len().saturating_sub(4)..].iter().collect()
}

/// The card as Click to Pay shows it: last four digits and expiry, nothing more.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaskedCard {
    /// Last four PAN digits.
    pub pan_last_four: String,
    /// Expiry month, "MM".
    pub pan_expiration_month: String,
    /// Expiry year, "YYYY".
    pub pan_expiration_year: String,
    /// Click to Pay's card descriptor.
    pub payment_card_descriptor: Option<String>,
    /// CREDIT, DEBIT, PREPAID, ...
    pub payment_card_type: Option<String>,
    /// The digital card's status in Click to Pay.
    pub digital_card_status: Option<String>,
}

/// The card's Click to Pay token: two registers (status, decision), each last-writer-wins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// MDES `tokenUniqueReference`.
    pub token_unique_reference: String,
    /// The token requestor id.
    pub token_requestor_id: String,
    /// Last known status.
    pub status: Option<TokenStatus>,
    /// The write that set `status`.
    pub status_version: Option<Version>,
    /// The TAR decision, when a TAR was seen.
    pub decision: Option<TokenizationDecision>,
    /// The write that set `decision`.
    pub decision_version: Option<Version>,
}

impl Token {
    /// The event time of the latest change, Unix milliseconds.
    pub fn updated_at_ms(&self) -> Option<i64> {
        [&self.status_version, &self.decision_version]
            .into_iter()
            .flatten()
            .map(|v| v.at_ms)
            .max()
    }
}

/// Why an enrollment failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// Stable upper snake case reason, as in the gRPC `ErrorInfo`.
    pub reason: String,
    /// Human-readable explanation; never card data.
    pub message: String,
    /// Whether a new attempt may succeed.
    pub retryable: bool,
}

/// One card's enrollment record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollmentRecord {
    /// The card.
    pub card_contract_id: CardContractId,
    /// The Click to Pay program; empty for the default.
    pub program: String,
    /// Where the enrollment stands.
    pub state: EnrollmentState,
    /// Click to Pay's `srcDigitalCardId`.
    pub src_digital_card_id: Option<String>,
    /// Click to Pay's `srcConsumerId`.
    pub src_consumer_id: Option<String>,
    /// The `srcCorrelationId` sent to the Enroll API.
    pub src_correlation_id: Option<String>,
    /// The masked card, once enrolled.
    pub masked_card: Option<MaskedCard>,
    /// The Click to Pay token, once known.
    pub token: Option<Token>,
    /// Why it failed, when `state` is `Failed`.
    pub failure: Option<Failure>,
    /// First written, Unix milliseconds.
    pub created_at_ms: i64,
    /// Last changed, Unix milliseconds.
    pub updated_at_ms: i64,
}

impl EnrollmentRecord {
    /// The first time this record holds that the store could not keep exactly (see
    /// [`STORE_INTEGER_LIMIT`]), if any.
    pub fn unstorable_time(&self) -> Option<i64> {
        let token_times = self.token.iter().flat_map(|t| {
            [&t.status_version, &t.decision_version]
                .into_iter()
                .flatten()
                .map(|v| v.at_ms)
        });
        [self.created_at_ms, self.updated_at_ms]
            .into_iter()
            .chain(token_times)
            .find(|ms| !is_storable_time(*ms))
    }

    /// A new record in `state`, with nothing else known yet.
    pub fn new(
        card_contract_id: CardContractId,
        program: String,
        state: EnrollmentState,
        now_ms: i64,
    ) -> Self {
        Self {
            card_contract_id,
            program,
            state,
            src_digital_card_id: None,
            src_consumer_id: None,
            src_correlation_id: None,
            masked_card: None,
            token: None,
            failure: None,
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
        }
    }

    /// This record's enrollment fields (state, ids, masked card, failure) with `existing`'s token:
    /// what the enrollment flow writes, keeping whatever notifications merged meanwhile.
    pub fn with_token_of(mut self, existing: Option<&EnrollmentRecord>) -> Self {
        if let Some(existing) = existing {
            self.created_at_ms = existing.created_at_ms.min(self.created_at_ms);
            if let Some(token) = &existing.token {
                self.token = Some(match self.token.take() {
                    Some(mine) => merge_tokens(token.clone(), &mine),
                    None => token.clone(),
                });
            }
        }
        self
    }
}

/// Merges two views of the card's token register by register (last writer wins). A different
/// token reference replaces the token when its newest write is newer.
pub fn merge_tokens(base: Token, other: &Token) -> Token {
    if base.token_unique_reference != other.token_unique_reference {
        return if other.updated_at_ms() > base.updated_at_ms() {
            other.clone()
        } else {
            base
        };
    }
    let mut merged = base;
    if other.status_version > merged.status_version {
        merged.status = other.status;
        merged.status_version = other.status_version.clone();
    }
    if other.decision_version > merged.decision_version {
        merged.decision = other.decision;
        merged.decision_version = other.decision_version.clone();
    }
    merged
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    let now = time::OffsetDateTime::now_utc();
    i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_contract_ids_are_positive() {
        assert!(CardContractId::new(0).is_none());
        assert!(CardContractId::new(-5).is_none());
        assert_eq!(
            CardContractId::new(70001).map(CardContractId::get),
            Some(70001)
        );
        assert!(serde_json::from_str::<CardContractId>("0").is_err());
        assert!(CardContractId::new(99_999_999_999_999).is_some());
        assert!(CardContractId::new(100_000_000_000_000).is_none());
    }

    fn token(
        status: Option<(TokenStatus, i64, &str)>,
        decision: Option<(TokenizationDecision, i64, &str)>,
    ) -> Token {
        Token {
            token_unique_reference: "DM1".into(),
            token_requestor_id: "50123197928".into(),
            status: status.map(|s| s.0),
            status_version: status.map(|s| Version {
                at_ms: s.1,
                by: s.2.into(),
            }),
            decision: decision.map(|d| d.0),
            decision_version: decision.map(|d| Version {
                at_ms: d.1,
                by: d.2.into(),
            }),
        }
    }

    #[test]
    fn token_merge_is_last_writer_wins_per_register_in_any_order() {
        let a = token(Some((TokenStatus::Active, 10, "n2")), None);
        let b = token(
            Some((TokenStatus::Suspended, 20, "n3")),
            Some((TokenizationDecision::Approved, 5, "n1")),
        );
        let ab = merge_tokens(a.clone(), &b);
        let ba = merge_tokens(b.clone(), &a);
        assert_eq!(ab, ba);
        assert_eq!(ab.status, Some(TokenStatus::Suspended));
        assert_eq!(ab.decision, Some(TokenizationDecision::Approved));
        assert_eq!(merge_tokens(ab.clone(), &ab), ab);
        assert_eq!(ab.updated_at_ms(), Some(20));
    }

    #[test]
    fn records_round_trip_through_json() {
        let mut r = EnrollmentRecord::new(
            CardContractId::new(70001).unwrap(),
            String::new(),
            EnrollmentState::Enrolled,
            1_800_000_000_123,
        );
        r.token = Some(token(
            Some((TokenStatus::Active, 1_800_000_000_456, "n1")),
            None,
        ));
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains("\"state\":\"ENROLLED\""), "{json}");
        assert_eq!(serde_json::from_str::<EnrollmentRecord>(&json).unwrap(), r);
    }
}
