//! The wire shapes both lifecycle families are **assumed** to share (`docs/lifecycle.md`): the
//! SRC masked objects Click to Pay answers with (as in the Enroll API's answer) and the EMVCo
//! SRC billing address. Tolerant on the way in: every field optional, unknown fields ignored.

use serde::{Deserialize, Serialize};

/// A billing address sent to Click to Pay: the EMVCo SRC address shape (**assumed**).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Address {
    /// Line 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line1: Option<String>,
    /// Line 2.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line2: Option<String>,
    /// Line 3.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line3: Option<String>,
    /// City.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    /// State.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Postal code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zip: Option<String>,
    /// ISO 3166-1 alpha-2.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub country_code: Option<String>,
}

/// `maskedConsumer`: the consumer as Click to Pay shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MaskedConsumer {
    /// Click to Pay's id of the profile.
    pub src_consumer_id: Option<String>,
    /// The e-mail address, masked.
    pub masked_email_address: Option<String>,
    /// The primary identity, masked (when no e-mail address is given apart).
    pub masked_consumer_identity: Option<MaskedConsumerIdentity>,
    /// The mobile number, masked.
    pub masked_mobile_number: Option<MaskedPhoneNumber>,
    /// The name, masked.
    pub masked_full_name: Option<String>,
    /// ISO 3166-1 alpha-2.
    pub country_code: Option<String>,
    /// e.g. `en_US`.
    pub language_code: Option<String>,
    /// e.g. `ACTIVE`.
    pub status: Option<String>,
}

/// `maskedConsumerIdentity`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MaskedConsumerIdentity {
    /// `EMAIL_ADDRESS`, `MOBILE_PHONE_NUMBER`, ...
    pub identity_type: Option<String>,
    /// The value, masked.
    pub masked_identity_value: Option<String>,
}

/// `maskedMobileNumber`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MaskedPhoneNumber {
    /// Country calling code.
    pub country_code: Option<String>,
    /// The number, masked.
    pub phone_number: Option<String>,
}

/// `maskedCard`: last four digits and expiry at most.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
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
    /// The billing address, masked.
    pub masked_billing_address: Option<MaskedBillingAddress>,
}

/// `digitalCardData`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DigitalCardData {
    /// e.g. ACTIVE.
    pub status: Option<String>,
}

/// `maskedBillingAddress`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MaskedBillingAddress {
    /// Line 1, masked.
    pub line1: Option<String>,
    /// City.
    pub city: Option<String>,
    /// State.
    pub state: Option<String>,
    /// Postal code, masked.
    pub zip: Option<String>,
    /// ISO 3166-1 alpha-2.
    pub country_code: Option<String>,
}
