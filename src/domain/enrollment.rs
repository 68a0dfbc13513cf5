//! The enrollment record of one card: what the store keeps and the RPCs return.
//!
//! It never holds more card data than Click to Pay's masked card (last four digits, expiry).

use serde::{Deserialize, Serialize};
use std::fmt;
use time::OffsetDateTime;

/// A card's technical id in the Mastercard Processing CMS (`cardContractId`); always > 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct CardContractId(i64);

impl CardContractId {
    /// The id, if it is a valid (positive) card contract id.
    pub fn new(id: i64) -> Option<Self> {
        (id > 0).then_some(Self(id))
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

/// The card's Click to Pay token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// MDES `tokenUniqueReference`.
    pub token_unique_reference: String,
    /// Last known status.
    pub status: Option<TokenStatus>,
    /// The TAR decision, when a TAR was seen.
    pub decision: Option<TokenizationDecision>,
    /// The token requestor id.
    pub token_requestor_id: String,
    /// Event time of the last change applied to the token.
    #[serde(with = "time::serde::rfc3339::option")]
    pub updated_at: Option<OffsetDateTime>,
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
    /// First written.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Last changed.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl EnrollmentRecord {
    /// A new record in `state`, with nothing else known yet.
    pub fn new(
        card_contract_id: CardContractId,
        program: String,
        state: EnrollmentState,
        now: OffsetDateTime,
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
            created_at: now,
            updated_at: now,
        }
    }
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
    }

    #[test]
    fn records_round_trip_through_json() {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let mut r = EnrollmentRecord::new(
            CardContractId::new(70001).unwrap(),
            String::new(),
            EnrollmentState::Enrolled,
            now,
        );
        r.token = Some(Token {
            token_unique_reference: "DM4MMC0000000001".into(),
            status: Some(TokenStatus::Active),
            decision: Some(TokenizationDecision::Approved),
            token_requestor_id: "50123197928".into(),
            updated_at: Some(now),
        });
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains("\"state\":\"ENROLLED\""), "{json}");
        assert_eq!(serde_json::from_str::<EnrollmentRecord>(&json).unwrap(), r);
    }
}
