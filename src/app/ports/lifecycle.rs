//! What the use cases need from Click to Pay after an enrollment, in their own words: remove a
//! card, read, change or delete the cardholder's profile. One port; the Mastercard adapter
//! (`mastercard::lifecycle`) implements it with either of Mastercard's two families (the legacy
//! APIs keyed by Click to Pay's ids, the Credential Directory keyed by the issuer's), chosen per
//! program. A "not found" is an answer here, not a failure: a delete of what is gone is done.

use super::{Address, UpstreamContext, UpstreamFailure};
use crate::app::ConsumerInput;
use crate::domain::{CardContractId, EnrollmentRecord, MaskedCard};
use tokio::time::Instant;

/// The ids Click to Pay may know a card and its cardholder by: both sets, as the record keeps
/// them. Each family uses its own (the legacy `src*` ids, the Credential Directory's
/// `external*` ids and the program's directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClickToPayKeys {
    /// The program ("" = the default): the adapter knows its family and ids.
    pub program: String,
    /// The card.
    pub card: CardContractId,
    /// `srcConsumerId`.
    pub src_consumer_id: Option<String>,
    /// `srcDigitalCardId`.
    pub src_digital_card_id: Option<String>,
    /// `externalConsumerId`.
    pub external_consumer_id: Option<String>,
    /// `externalCredentialId`.
    pub external_credential_id: Option<String>,
}

impl ClickToPayKeys {
    /// The ids a record holds.
    pub fn of(record: &EnrollmentRecord) -> Self {
        Self {
            program: record.program.clone(),
            card: record.card_contract_id,
            src_consumer_id: record.src_consumer_id.clone(),
            src_digital_card_id: record.src_digital_card_id.clone(),
            external_consumer_id: record.external_consumer_id.clone(),
            external_credential_id: record.external_credential_id.clone(),
        }
    }
}

/// What a delete did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    /// Click to Pay deleted it now.
    Deleted,
    /// Click to Pay did not hold it (any more): nothing to delete, which is as good.
    AlreadyGone,
}

/// What an update did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Updated {
    /// Click to Pay changed it.
    Updated,
    /// Click to Pay does not hold it (any more); the call that said so.
    NotFound(UpstreamContext),
}

/// What a read found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found<T> {
    /// It.
    Found(T),
    /// Click to Pay does not hold it (any more); the call that said so.
    NotFound(UpstreamContext),
}

/// A billing address as Click to Pay shows it (masked).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MaskedAddress {
    /// First line, masked.
    pub line1: Option<String>,
    /// City.
    pub city: Option<String>,
    /// State or region.
    pub state: Option<String>,
    /// Postal code, masked.
    pub zip: Option<String>,
    /// ISO 3166-1 alpha-2.
    pub country_code: Option<String>,
}

/// One card of a profile.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProfileCard {
    /// `srcDigitalCardId`.
    pub src_digital_card_id: Option<String>,
    /// `externalCredentialId`.
    pub external_credential_id: Option<String>,
    /// The card, when the adapter can tell which one it is.
    pub card: Option<CardContractId>,
    /// Last four digits and expiry at most.
    pub masked_card: Option<MaskedCard>,
    /// The billing address, masked.
    pub masked_billing_address: Option<MaskedAddress>,
}

/// A consumer profile as Click to Pay shows it: masked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClickToPayProfile {
    /// `srcConsumerId`.
    pub src_consumer_id: Option<String>,
    /// `externalConsumerId`.
    pub external_consumer_id: Option<String>,
    /// The e-mail address, masked.
    pub masked_email: Option<String>,
    /// The mobile number, masked.
    pub masked_mobile_number: Option<String>,
    /// The name, masked.
    pub masked_full_name: Option<String>,
    /// ISO 3166-1 alpha-2.
    pub country_code: Option<String>,
    /// e.g. `en_US`.
    pub language_code: Option<String>,
    /// e.g. `ACTIVE`.
    pub status: Option<String>,
    /// The profile's cards.
    pub cards: Vec<ProfileCard>,
}

/// Click to Pay's lifecycle of enrolled cards and their profiles.
#[async_trait::async_trait]
pub trait ClickToPayLifecycle: Send + Sync {
    /// Deletes the card from Click to Pay.
    async fn remove_card(
        &self,
        keys: &ClickToPayKeys,
        deadline: Option<Instant>,
    ) -> Result<Deleted, UpstreamFailure>;

    /// Whether Click to Pay still holds the card.
    async fn holds_card(
        &self,
        keys: &ClickToPayKeys,
        deadline: Option<Instant>,
    ) -> Result<bool, UpstreamFailure>;

    /// The cardholder's profile.
    async fn profile(
        &self,
        keys: &ClickToPayKeys,
        deadline: Option<Instant>,
    ) -> Result<Found<ClickToPayProfile>, UpstreamFailure>;

    /// Replaces the consumer details of the cardholder's profile.
    async fn update_consumer(
        &self,
        keys: &ClickToPayKeys,
        consumer: &ConsumerInput,
        deadline: Option<Instant>,
    ) -> Result<Updated, UpstreamFailure>;

    /// Replaces the card's billing address.
    async fn update_billing_address(
        &self,
        keys: &ClickToPayKeys,
        address: &Address,
        deadline: Option<Instant>,
    ) -> Result<Updated, UpstreamFailure>;

    /// Deletes the cardholder's profile (every card in it).
    async fn delete_profile(
        &self,
        keys: &ClickToPayKeys,
        deadline: Option<Instant>,
    ) -> Result<Deleted, UpstreamFailure>;
}
