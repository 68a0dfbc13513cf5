//! The Enroll API's wire types (`docs/mastercard.md#enroll-api`), tolerant on the way in.

use super::super::processing::types::EncryptedCard;
use serde::{Deserialize, Serialize, Serializer};

/// `POST /cards` body.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EnrollCardRequest {
    /// Issued at onboarding (UUID).
    pub src_client_id: String,
    /// Program id from onboarding.
    pub service_id: String,
    /// Tracking UUID; the same on every retry of one enrollment.
    pub src_correlation_id: String,
    /// `cardData` from Processing, forwarded unchanged.
    #[serde(serialize_with = "expose_card")]
    pub encrypted_card: EncryptedCard,
    /// `ISSUER`.
    pub card_source: &'static str,
    /// The consumer.
    pub consumer: Consumer,
    /// Privacy notice and terms URIs.
    pub compliance_settings: ComplianceSettings,
    /// Only for a program whose cards the Credential Directory manages: the issuer's directory.
    /// **Assumed** (`docs/lifecycle.md`): that Enroll API-Synchronous takes the Credential
    /// Directory's ids this way; never sent for a legacy program.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub directory_id: Option<String>,
    /// With `directory_id`: the issuer's id of the cardholder's profile.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_consumer_id: Option<String>,
    /// With `directory_id`: the issuer's id of the card.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_credential_id: Option<String>,
}

fn expose_card<S: Serializer>(card: &EncryptedCard, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(card.expose())
}

/// The consumer profile.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Consumer {
    /// The primary identity.
    pub consumer_identity: ConsumerIdentity,
    /// Mobile number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mobile_number: Option<MobileNumber>,
    /// ISO 3166-1 alpha-2.
    pub country_code: String,
    /// e.g. `en` or `en_US`.
    pub language_code: String,
    /// First name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_name: Option<String>,
    /// Last name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_name: Option<String>,
}

/// `consumerIdentity`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerIdentity {
    /// `EMAIL_ADDRESS` or `MOBILE_PHONE_NUMBER`.
    pub identity_type: String,
    /// The e-mail address or phone number.
    pub identity_value: String,
}

/// `mobileNumber`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MobileNumber {
    /// Country calling code.
    pub country_code: String,
    /// Subscriber number.
    pub phone_number: String,
}

/// `complianceSettings`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ComplianceSettings {
    /// `privacy.latestVersionUri`.
    pub privacy: ComplianceResource,
    /// `tnc.latestVersionUri`.
    pub tnc: ComplianceResource,
}

/// One compliance document.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ComplianceResource {
    /// Its URI.
    pub latest_version_uri: String,
}

/// `POST /cards` 200 body (only what the service uses; the rest is ignored).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EnrollCardResponse {
    /// Echo of the tracking id.
    pub src_correlation_id: Option<String>,
    /// The masked card.
    pub masked_card: Option<MaskedCard>,
    /// The masked consumer.
    pub masked_consumer: Option<MaskedConsumer>,
}

/// `maskedCard`: last four and expiry at most.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MaskedCard {
    /// Click to Pay's id of the digital card.
    pub src_digital_card_id: Option<String>,
    /// Last four PAN digits.
    pub pan_last_four: Option<String>,
    /// `MM`.
    pub pan_expiration_month: Option<String>,
    /// `YYYY`.
    pub pan_expiration_year: Option<String>,
    /// Card descriptor.
    pub payment_card_descriptor: Option<String>,
    /// CREDIT, DEBIT, ...
    pub payment_card_type: Option<String>,
    /// Digital card data.
    pub digital_card_data: Option<DigitalCardData>,
}

/// `digitalCardData`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DigitalCardData {
    /// e.g. ACTIVE.
    pub status: Option<String>,
}

/// `maskedConsumer`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MaskedConsumer {
    /// Click to Pay's id of the consumer.
    pub src_consumer_id: Option<String>,
}
