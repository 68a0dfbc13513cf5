//! Processing Digital's wire types (`docs/mastercard.md#card-search` and `#token-lists`).
//! Responses are tolerant: unknown fields are ignored, optional fields are optional, statuses
//! match without regard to case.

use crate::domain::TokenStatus;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize};

/// `POST /cards/searches` body for the Click to Pay enroll use case.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CardSearchRequest {
    /// Always `SYNCHRONOUS` here: the card object is built for the synchronous Enroll API.
    pub enroll_type: &'static str,
    /// Everything the encrypted card object needs besides PAN, expiry and CVC.
    pub synchronous_request: SynchronousRequest,
    /// The CMS card id.
    pub card_contract_id: i64,
}

/// `synchronousRequest`: empty strings are omitted (a mock rejects empty names).
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SynchronousRequest {
    /// The cardholder's full name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cardholder_full_name: Option<String>,
    /// The billing address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub billing_address: Option<BillingAddress>,
}

/// EMVCo SRC address shape (unverified for this API: `docs/mastercard.md#card-search`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BillingAddress {
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

/// The encrypted card object (`cardData`): a JWE only Click to Pay can open. Opaque here, and
/// never printed.
#[derive(Clone)]
pub struct EncryptedCard(SecretString);

impl EncryptedCard {
    /// Wraps a compact JWE.
    pub fn new(jwe: String) -> Self {
        Self(SecretString::from(jwe))
    }

    /// The JWE, for the one place that forwards it (the Enroll API body).
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl std::fmt::Debug for EncryptedCard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EncryptedCard(redacted)")
    }
}

impl<'de> Deserialize<'de> for EncryptedCard {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(EncryptedCard::new)
    }
}

/// `POST /cards/searches` 200 body.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CardSearchResponse {
    /// The card object encrypted for the Enroll API.
    pub card_data: EncryptedCard,
}

/// A token as the token-list endpoints return it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TokenInfo {
    /// CMS card id.
    pub card_contract_id: Option<i64>,
    /// Masked PAN, e.g. `535585______6188`.
    pub card_contract_number: Option<String>,
    /// Issuer client id.
    pub client_id: Option<i64>,
    /// MDES token unique reference.
    pub token_unique_reference: Option<String>,
    /// Token requestor id (a string; Click to Pay is `50123197928`).
    #[serde(default, deserialize_with = "string_or_number")]
    pub token_requestor_id: Option<String>,
    /// Wallet name (Click to Pay is `MDES for Merchants`).
    pub wallet_name: Option<String>,
    /// Status as sent (`Active`, ...).
    pub token_status: Option<String>,
    /// Creation time, ISO-8601.
    pub token_creation_date: Option<String>,
    /// `YYMM`.
    pub token_expiry_date: Option<String>,
    /// Token type, e.g. `C`.
    pub token_type: Option<String>,
}

/// The requestor id and wallet name of a Click to Pay token.
pub const CLICK_TO_PAY_TOKEN_REQUESTOR_ID: &str = "50123197928";
/// The wallet name of a Click to Pay token.
pub const CLICK_TO_PAY_WALLET_NAME: &str = "MDES for Merchants";

impl TokenInfo {
    /// The status, matched without regard to case; `None` when absent or unknown.
    pub fn status(&self) -> Option<TokenStatus> {
        parse_token_status(self.token_status.as_deref()?)
    }

    /// Whether this is a Click to Pay token.
    pub fn is_click_to_pay(&self) -> bool {
        self.token_requestor_id.as_deref() == Some(CLICK_TO_PAY_TOKEN_REQUESTOR_ID)
            && self.wallet_name.as_deref() == Some(CLICK_TO_PAY_WALLET_NAME)
    }
}

/// MDES / Processing token statuses, any case, `_` or space separated.
pub fn parse_token_status(s: &str) -> Option<TokenStatus> {
    let norm: String = s
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        .to_ascii_uppercase();
    match norm.as_str() {
        "ACTIVE" => Some(TokenStatus::Active),
        "SUSPENDED" => Some(TokenStatus::Suspended),
        "DEACTIVATED" => Some(TokenStatus::Deactivated),
        "INACTIVE" => Some(TokenStatus::Inactive),
        "PENDING" | "PENDINGACTIVATION" => Some(TokenStatus::Pending),
        _ => None,
    }
}

fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum V {
        S(String),
        N(i64),
    }
    Ok(Option::<V>::deserialize(d)?.map(|v| match v {
        V::S(s) => s,
        V::N(n) => n.to_string(),
    }))
}

/// The token-list bodies: `{"clientTokens": [...]}` (and the same list under other names for
/// the card and token variants, whose wrapper name the public material does not show).
#[derive(Debug, Deserialize)]
pub struct TokenList {
    /// The tokens.
    #[serde(alias = "clientTokens", alias = "cardTokens", alias = "tokens")]
    pub tokens: Vec<TokenInfo>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_list_parses_the_sandbox_sample_and_ignores_unknown_fields() {
        let body = br#"{"clientTokens":[{"cardContractId":70001,"cardContractNumber":"535585______6188","clientId":40000,"clientShortName":"X","deviceName":"d","deviceType":"21","panUniqueReference":"p","tokenCreationDate":"2023-01-01T00:00:00Z","tokenExpiryDate":"2402","tokenNumber":"t","tokenRequestorId":"50123197928","tokenStatus":"Active","tokenType":"C","tokenUniqueReference":"DM4MMC1","walletName":"MDES for Merchants","brandNew":true}]}"#;
        let list: TokenList = serde_json::from_slice(body).unwrap();
        assert_eq!(list.tokens.len(), 1);
        assert!(list.tokens[0].is_click_to_pay());
        assert_eq!(list.tokens[0].status(), Some(TokenStatus::Active));
    }

    #[test]
    fn statuses_match_without_regard_to_case() {
        for (s, want) in [
            ("Active", TokenStatus::Active),
            ("ACTIVE", TokenStatus::Active),
            ("suspended", TokenStatus::Suspended),
            ("Deactivated", TokenStatus::Deactivated),
            ("INACTIVE", TokenStatus::Inactive),
            ("Pending_Activation", TokenStatus::Pending),
        ] {
            assert_eq!(parse_token_status(s), Some(want), "{s}");
        }
        assert_eq!(parse_token_status("weird"), None);
    }

    #[test]
    fn search_body_omits_empty_optionals_and_card_data_never_prints() {
        let req = CardSearchRequest {
            enroll_type: "SYNCHRONOUS",
            synchronous_request: SynchronousRequest::default(),
            card_contract_id: 70001,
        };
        assert_eq!(
            serde_json::to_string(&req).unwrap(),
            r#"{"enrollType":"SYNCHRONOUS","synchronousRequest":{},"cardContractId":70001}"#
        );
        let resp: CardSearchResponse =
            serde_json::from_str(r#"{"cardData":"eyJ.secret.x.y.z","other":1}"#).unwrap();
        assert_eq!(
            format!("{resp:?}"),
            "CardSearchResponse { card_data: EncryptedCard(redacted) }"
        );
    }
}
