//! The Credential Directory lifecycle APIs, keyed by the issuer's ids (`externalConsumerId`,
//! `externalCredentialId`) within the issuer's `directoryId`. Their operations are seen;
//! **their paths and bodies are not** (`docs/lifecycle.md`): everything here is assumed, and
//! this module (with `types.rs`) is the one place that says so in code.

use super::types::{Address, MaskedCard, MaskedConsumer};
use super::{Answer, put_json, send};
use crate::mastercard::error::UpstreamError;
use crate::mastercard::http::ApiClient;
use crate::mastercard::oauth1::pct;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// The consumer of an update. **Assumed**: the fields of the batch enablement's items (e-mail,
/// mobile with country code, first and last name, country and language).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DirectoryConsumer {
    /// E-mail address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email_address: Option<String>,
    /// Mobile number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mobile_number: Option<MobileNumber>,
    /// First name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_name: Option<String>,
    /// Last name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_name: Option<String>,
    /// ISO 3166-1 alpha-2.
    pub country_code: String,
    /// e.g. `en_US`.
    pub language_code: String,
}

/// `mobileNumber`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MobileNumber {
    /// Country calling code.
    pub country_code: String,
    /// Subscriber number.
    pub phone_number: String,
}

/// `PUT …/consumers/{externalConsumerId}` body (**assumed**).
#[derive(Debug, Clone, Serialize)]
pub struct UpdateConsumerRequest {
    /// The consumer details that replace the profile's.
    pub consumer: DirectoryConsumer,
}

/// `PUT …/credentials/{externalCredentialId}` body (**assumed**).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateCredentialRequest {
    /// The billing address that replaces the credential's.
    pub billing_address: Address,
}

/// `GET …/consumers/{externalConsumerId}` 200 body (**assumed**): the masked consumer and its
/// credentials, each with the masked card.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    /// The issuer's id of the profile.
    pub external_consumer_id: Option<String>,
    /// The consumer.
    pub masked_consumer: Option<MaskedConsumer>,
    /// Its credentials.
    #[serde(default)]
    pub credentials: Vec<Credential>,
}

/// One credential of a profile (**assumed**).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Credential {
    /// The issuer's id of the credential.
    pub external_credential_id: Option<String>,
    /// The card.
    pub masked_card: Option<MaskedCard>,
}

/// Where a profile and a credential live (**assumed**):
/// `/directories/{directoryId}/consumers/{externalConsumerId}[/credentials/{externalCredentialId}]`.
pub struct Place<'a> {
    /// The issuer's directory.
    pub directory_id: &'a str,
    /// The profile.
    pub external_consumer_id: &'a str,
}

impl Place<'_> {
    fn consumer(&self) -> String {
        format!(
            "/directories/{}/consumers/{}",
            pct(self.directory_id),
            pct(self.external_consumer_id)
        )
    }

    fn credential(&self, external_credential_id: &str) -> String {
        format!(
            "{}/credentials/{}",
            self.consumer(),
            pct(external_credential_id)
        )
    }
}

/// Delete credential.
pub async fn delete_credential(
    http: &ApiClient,
    client_id: &str,
    place: &Place<'_>,
    external_credential_id: &str,
    deadline: Option<Instant>,
) -> Result<Answer, UpstreamError> {
    let path = place.credential(external_credential_id);
    send(
        http,
        client_id,
        "deleteCredential",
        reqwest::Method::DELETE,
        path,
        None,
        deadline,
    )
    .await
}

/// Retrieve credential.
pub async fn get_credential(
    http: &ApiClient,
    client_id: &str,
    place: &Place<'_>,
    external_credential_id: &str,
    deadline: Option<Instant>,
) -> Result<Answer, UpstreamError> {
    let path = place.credential(external_credential_id);
    send(
        http,
        client_id,
        "getCredential",
        reqwest::Method::GET,
        path,
        None,
        deadline,
    )
    .await
}

/// Update credential (the billing address).
pub async fn update_credential(
    http: &ApiClient,
    client_id: &str,
    place: &Place<'_>,
    external_credential_id: &str,
    body: &UpdateCredentialRequest,
    deadline: Option<Instant>,
) -> Result<Answer, UpstreamError> {
    let path = place.credential(external_credential_id);
    put_json(http, client_id, "updateCredential", path, body, deadline).await
}

/// Retrieve consumer profile.
pub async fn get_consumer(
    http: &ApiClient,
    client_id: &str,
    place: &Place<'_>,
    deadline: Option<Instant>,
) -> Result<Answer, UpstreamError> {
    send(
        http,
        client_id,
        "getConsumer",
        reqwest::Method::GET,
        place.consumer(),
        None,
        deadline,
    )
    .await
}

/// Update consumer profile.
pub async fn update_consumer(
    http: &ApiClient,
    client_id: &str,
    place: &Place<'_>,
    body: &UpdateConsumerRequest,
    deadline: Option<Instant>,
) -> Result<Answer, UpstreamError> {
    put_json(
        http,
        client_id,
        "updateConsumer",
        place.consumer(),
        body,
        deadline,
    )
    .await
}

/// Delete consumer profile.
pub async fn delete_consumer(
    http: &ApiClient,
    client_id: &str,
    place: &Place<'_>,
    deadline: Option<Instant>,
) -> Result<Answer, UpstreamError> {
    send(
        http,
        client_id,
        "deleteConsumer",
        reqwest::Method::DELETE,
        place.consumer(),
        None,
        deadline,
    )
    .await
}
