//! The legacy lifecycle APIs, keyed by Click to Pay's ids (`srcConsumerId`,
//! `srcDigitalCardId`): their paths and bodies as `docs/lifecycle.md` states them, which of it
//! is seen and which assumed. Same host, keys and `x-openapi-clientid` as the Enroll API.

use super::types::{Address, MaskedCard, MaskedConsumer};
use super::{Answer, put_json, send};
use crate::mastercard::enroll::types::Consumer;
use crate::mastercard::error::UpstreamError;
use crate::mastercard::http::ApiClient;
use crate::mastercard::oauth1::pct;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// `PUT /profiles/{srcConsumerId}` body. **Assumed**: the program's ids, a fresh
/// `srcCorrelationId` and the consumer object of `POST /cards`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateProfileRequest {
    /// The program's `srcClientId`.
    pub src_client_id: String,
    /// The program's `serviceId`.
    pub service_id: String,
    /// A new UUID per call.
    pub src_correlation_id: String,
    /// The consumer details that replace the profile's.
    pub consumer: Consumer,
}

/// `PUT /cards/{srcDigitalCardId}` body. **Assumed**: the program's ids, a fresh
/// `srcCorrelationId` and the EMVCo SRC address.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateCardRequest {
    /// The program's `srcClientId`.
    pub src_client_id: String,
    /// The program's `serviceId`.
    pub service_id: String,
    /// A new UUID per call.
    pub src_correlation_id: String,
    /// The billing address that replaces the card's.
    pub billing_address: Address,
}

/// `GET /profiles/{srcConsumerId}` 200 body. **Assumed**: the masked consumer and its masked
/// cards.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    /// The consumer.
    pub masked_consumer: Option<MaskedConsumer>,
    /// Its cards.
    #[serde(default)]
    pub masked_cards: Vec<MaskedCard>,
}

/// The query naming the program (`srcClientId`, `serviceId`) and more, `%`-encoded.
fn query(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", pct(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// `DELETE /cards/{srcDigitalCardId}?srcClientId&serviceId` (the path and answers seen in a
/// third-party SRC client: 200 `{srcCorrelationId}`, 404 when gone).
pub async fn delete_card(
    http: &ApiClient,
    client_id: &str,
    (src_client_id, service_id): (&str, &str),
    src_digital_card_id: &str,
    deadline: Option<Instant>,
) -> Result<Answer, UpstreamError> {
    let path = format!(
        "/cards/{}?{}",
        pct(src_digital_card_id),
        query(&[("srcClientId", src_client_id), ("serviceId", service_id)])
    );
    send(
        http,
        client_id,
        "deleteCard",
        reqwest::Method::DELETE,
        path,
        None,
        deadline,
    )
    .await
}

/// `GET /cards/{srcDigitalCardId}` (seen).
pub async fn get_card(
    http: &ApiClient,
    client_id: &str,
    src_digital_card_id: &str,
    deadline: Option<Instant>,
) -> Result<Answer, UpstreamError> {
    let path = format!("/cards/{}", pct(src_digital_card_id));
    send(
        http,
        client_id,
        "getCard",
        reqwest::Method::GET,
        path,
        None,
        deadline,
    )
    .await
}

/// `PUT /cards/{srcDigitalCardId}` (seen, with its slash missing in the source).
pub async fn update_card(
    http: &ApiClient,
    client_id: &str,
    src_digital_card_id: &str,
    body: &UpdateCardRequest,
    deadline: Option<Instant>,
) -> Result<Answer, UpstreamError> {
    let path = format!("/cards/{}", pct(src_digital_card_id));
    put_json(http, client_id, "updateCard", path, body, deadline).await
}

/// `GET /profiles/{srcConsumerId}` (seen).
pub async fn get_profile(
    http: &ApiClient,
    client_id: &str,
    src_consumer_id: &str,
    deadline: Option<Instant>,
) -> Result<Answer, UpstreamError> {
    let path = format!("/profiles/{}", pct(src_consumer_id));
    send(
        http,
        client_id,
        "getProfile",
        reqwest::Method::GET,
        path,
        None,
        deadline,
    )
    .await
}

/// `PUT /profiles/{srcConsumerId}` (seen).
pub async fn update_profile(
    http: &ApiClient,
    client_id: &str,
    src_consumer_id: &str,
    body: &UpdateProfileRequest,
    deadline: Option<Instant>,
) -> Result<Answer, UpstreamError> {
    let path = format!("/profiles/{}", pct(src_consumer_id));
    put_json(http, client_id, "updateProfile", path, body, deadline).await
}

/// `DELETE /profiles` (seen, without its parameters). **Assumed**: the ids in the query, as
/// the card delete takes its own: `srcClientId`, `serviceId`, `srcConsumerId`.
pub async fn delete_profile(
    http: &ApiClient,
    client_id: &str,
    (src_client_id, service_id): (&str, &str),
    src_consumer_id: &str,
    deadline: Option<Instant>,
) -> Result<Answer, UpstreamError> {
    let path = format!(
        "/profiles?{}",
        query(&[
            ("srcClientId", src_client_id),
            ("serviceId", service_id),
            ("srcConsumerId", src_consumer_id),
        ])
    );
    send(
        http,
        client_id,
        "deleteProfile",
        reqwest::Method::DELETE,
        path,
        None,
        deadline,
    )
    .await
}
