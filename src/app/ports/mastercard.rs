//! What the use cases need from Mastercard, in their own words: the ports. The Mastercard
//! adapter (`mastercard::ports`) implements them over the real APIs and translates every
//! answer into these closed types; the app matches them exhaustively, so a new kind of refusal
//! is a compile error here, not a silent `UPSTREAM_REJECTED`. Tests implement them with fakes.

use crate::app::ConsumerInput;
use crate::domain::{CardContractId, MaskedCard, TokenStatus};
use secrecy::{ExposeSecret as _, SecretString};
use std::time::Duration;
use tokio::time::Instant;

/// A postal address as the caller gave it (validated).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Address {
    /// First line.
    pub line1: Option<String>,
    /// Second line.
    pub line2: Option<String>,
    /// Third line.
    pub line3: Option<String>,
    /// City.
    pub city: Option<String>,
    /// State, province or region.
    pub state: Option<String>,
    /// Postal code.
    pub zip: Option<String>,
    /// ISO 3166-1 alpha-2.
    pub country_code: Option<String>,
}

/// What Processing puts in the card object besides the card: the cardholder as the caller gave it.
#[derive(Debug, Clone, Default)]
pub struct Cardholder {
    /// The full name to show in Click to Pay.
    pub full_name: Option<String>,
    /// The billing address.
    pub billing_address: Option<Address>,
}

/// The card object encrypted for Click to Pay (a compact JWE): passed from the search to the
/// enrollment as it is, never read, never logged (its `Debug` shows nothing of it).
pub struct EncryptedCard(SecretString);

impl EncryptedCard {
    /// Wraps the JWE.
    pub fn new(jwe: String) -> Self {
        Self(SecretString::from(jwe))
    }

    /// The JWE, for the adapter that forwards it.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl std::fmt::Debug for EncryptedCard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EncryptedCard(..)")
    }
}

/// One enrollment to send to Click to Pay.
#[derive(Debug)]
pub struct EnrollmentRequest<'a> {
    /// The program's name ("" = the default): the adapter knows its ids, keys and URIs.
    pub program: &'a str,
    /// The `srcCorrelationId`; the same on every attempt of one enrollment.
    pub src_correlation_id: &'a str,
    /// The consumer.
    pub consumer: &'a ConsumerInput,
    /// The card object from [`CardSearch::encrypted_card`].
    pub card: EncryptedCard,
    /// The Credential Directory's ids the service assigned (`externalConsumerId`,
    /// `externalCredentialId`): sent only for a program that uses the Credential Directory.
    pub external_ids: (&'a str, &'a str),
}

/// What Click to Pay answered to an enrollment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnrolledCard {
    /// `srcDigitalCardId`.
    pub src_digital_card_id: Option<String>,
    /// `srcConsumerId`.
    pub src_consumer_id: Option<String>,
    /// The masked card (never more than the last four digits and the expiry).
    pub masked_card: Option<MaskedCard>,
}

/// One token of a card, as Processing's token list shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedToken {
    /// `tokenUniqueReference`.
    pub token_unique_reference: String,
    /// `tokenRequestorId`.
    pub token_requestor_id: String,
    /// `walletName`.
    pub wallet_name: String,
    /// The status, when it is one the service knows.
    pub status: Option<TokenStatus>,
    /// When the token was created (text that sorts in time order), when given.
    pub created: Option<String>,
}

impl ObservedToken {
    /// Whether it is a Click to Pay token.
    pub fn is_click_to_pay(&self) -> bool {
        self.token_requestor_id == crate::domain::CLICK_TO_PAY_TOKEN_REQUESTOR_ID
            && self.wallet_name == crate::domain::CLICK_TO_PAY_WALLET_NAME
    }
}

/// A card's tokens and when Mastercard answered (its `Date`, Unix ms, when it sent one).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenObservation {
    /// The tokens.
    pub tokens: Vec<ObservedToken>,
    /// Mastercard's time of the answer.
    pub observed_at_ms: Option<i64>,
}

/// What is known of a failed Mastercard call, for the error's metadata and message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamContext {
    /// `processing` or `enroll`.
    pub api: &'static str,
    /// Mastercard's reason code, when it gave one.
    pub reason_code: Option<String>,
    /// Mastercard's correlation id of the last answer, when there was one.
    pub correlation_id: Option<String>,
    /// What happened, for the message (never card data).
    pub description: String,
}

/// Why a Mastercard call failed. Closed: the adapter decides which one every answer is, and
/// "may a retry succeed" is decided there and only there (`Unavailable`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// Processing knows no such card contract.
    ContractNotFound(UpstreamContext),
    /// The tokenization was declined; `reason` is Mastercard's (CARD_BLOCKED, ...).
    Declined {
        /// Mastercard's decline reason.
        reason: String,
        /// The call.
        context: UpstreamContext,
    },
    /// Mastercard refused the request for another reason (a configuration problem, mostly).
    Rejected(UpstreamContext),
    /// Mastercard could not be reached, timed out, is overloaded, or its breaker is open: a
    /// retry may succeed, not before `retry_after`.
    Unavailable {
        /// When a retry makes sense.
        retry_after: Duration,
        /// The call.
        context: UpstreamContext,
    },
    /// An answer that could not be read (decoded or decrypted). After an enrollment was sent,
    /// it may hide a done enrollment.
    InvalidAnswer(UpstreamContext),
    /// The request could not be built (e.g. signing failed); nothing was sent.
    RequestNotBuilt(UpstreamContext),
    /// The card's record lacks the Click to Pay id (`missing`, e.g. `srcDigitalCardId`) that
    /// the lifecycle API of its program addresses it by; nothing was sent.
    IdsUnknown {
        /// The id's name, as Mastercard's API calls it.
        missing: &'static str,
        /// The call.
        context: UpstreamContext,
    },
}

impl UpstreamFailure {
    /// What is known of the call.
    pub fn context(&self) -> &UpstreamContext {
        match self {
            UpstreamFailure::ContractNotFound(c)
            | UpstreamFailure::Rejected(c)
            | UpstreamFailure::InvalidAnswer(c)
            | UpstreamFailure::RequestNotBuilt(c)
            | UpstreamFailure::Declined { context: c, .. }
            | UpstreamFailure::Unavailable { context: c, .. }
            | UpstreamFailure::IdsUnknown { context: c, .. } => c,
        }
    }
}

/// Processing Digital's card search: the card object encrypted for Click to Pay.
#[async_trait::async_trait]
pub trait CardSearch: Send + Sync {
    /// `card`'s card object, encrypted for `program`'s Click to Pay key, with `cardholder`.
    async fn encrypted_card(
        &self,
        card: CardContractId,
        program: &str,
        cardholder: &Cardholder,
        deadline: Option<Instant>,
    ) -> Result<EncryptedCard, UpstreamFailure>;
}

/// The Click to Pay Enroll API.
#[async_trait::async_trait]
pub trait CardEnrollment: Send + Sync {
    /// Enrolls the card; the same `src_correlation_id` sent again is the same enrollment.
    async fn enroll(
        &self,
        request: EnrollmentRequest<'_>,
        deadline: Option<Instant>,
    ) -> Result<EnrolledCard, UpstreamFailure>;
}

/// Processing Digital's token list of a card.
#[async_trait::async_trait]
pub trait TokenList: Send + Sync {
    /// `card`'s tokens.
    async fn tokens(
        &self,
        card: CardContractId,
        deadline: Option<Instant>,
    ) -> Result<TokenObservation, UpstreamFailure>;
}

/// Everything the use cases need from Mastercard, and which programs it serves.
pub trait Mastercard: CardSearch + CardEnrollment + TokenList + super::ClickToPayLifecycle {
    /// Whether `name` is a configured program ("" = the default).
    fn has_program(&self, name: &str) -> bool;
}
