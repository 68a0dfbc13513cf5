//! The app's lifecycle port (`app::ports::ClickToPayLifecycle`) over Mastercard's two
//! families of Click to Pay lifecycle APIs, chosen per program (`programs.<name>.lifecycle`):
//! the legacy APIs keyed by Click to Pay's ids and the Credential Directory keyed by the
//! issuer's. Both go through the Enroll API's client (same host, OAuth keys, breaker and
//! payload-encryption setting, `x-openapi-clientid`; **assumed**, `docs/lifecycle.md`), are
//! idempotent (retried like reads) and read a 404 as "Click to Pay does not hold it": a delete
//! of what is gone is done. A 404 the gateway gives (its own body, `Source` `Gateway`: a path
//! it does not route) is a refusal, never "gone".

pub mod directory;
pub mod legacy;
pub mod types;

use super::enroll::CLIENT_ID_HEADER;
use super::error::UpstreamError;
use super::http::{ApiClient, CallSpec, Idempotency, UpstreamResponse};
use super::ports::{context_of, lifecycle_failure};
use super::processing::decode_json;
use super::settings::LifecycleFamily;
use super::setup::{Program, Upstream};
use crate::app::ConsumerInput;
use crate::app::ports::{
    Address, ClickToPayKeys, ClickToPayLifecycle, ClickToPayProfile, Deleted, Found, MaskedAddress,
    ProfileCard, Updated, UpstreamContext, UpstreamFailure,
};
use crate::domain::{MaskedCard, last_four};
use bytes::Bytes;
use tokio::time::Instant;

/// A lifecycle call's answer.
#[derive(Debug)]
pub enum Answer {
    /// 2xx.
    Done(UpstreamResponse),
    /// 404 from the API: Click to Pay does not hold it. The error, for its correlation id.
    NotFound(UpstreamError),
}

/// Sends one lifecycle call; a 404 that is not the gateway's is [`Answer::NotFound`].
pub async fn send(
    http: &ApiClient,
    client_id: &str,
    operation: &'static str,
    method: reqwest::Method,
    path: String,
    body: Option<Bytes>,
    deadline: Option<Instant>,
) -> Result<Answer, UpstreamError> {
    let spec = CallSpec {
        operation,
        method,
        path,
        body,
        headers: vec![(CLIENT_ID_HEADER, client_id.to_owned())],
        // PUT and DELETE replace or remove: repeating one changes nothing more.
        idempotency: Idempotency::Safe,
        // Counted `not_found`, not `rejected`: "already gone" is no failure of the API.
        absent_is_answer: true,
    };
    match http.call(spec, deadline).await {
        Ok(response) => Ok(Answer::Done(response)),
        Err(e) if is_not_found(&e) => Ok(Answer::NotFound(e)),
        Err(e) => Err(e),
    }
}

/// [`send`] of a `PUT` with `body` as JSON (the update calls of both families).
pub async fn put_json<T: serde::Serialize>(
    http: &ApiClient,
    client_id: &str,
    operation: &'static str,
    path: String,
    body: &T,
    deadline: Option<Instant>,
) -> Result<Answer, UpstreamError> {
    let body = http.json_body(operation, body)?;
    send(
        http,
        client_id,
        operation,
        reqwest::Method::PUT,
        path,
        Some(body),
        deadline,
    )
    .await
}

/// A 404 of the API itself (an error body of Mastercard's): not one the gateway answered for
/// a path it does not route, nor one without such a body (a proxy's, an ingress's).
fn is_not_found(e: &UpstreamError) -> bool {
    e.kind.is_api_not_found()
}

/// Counts a 2xx whose body is not needed as `ok`, checking only that a non-empty body is JSON.
fn done(
    http: &ApiClient,
    operation: &'static str,
    response: UpstreamResponse,
) -> Result<(), UpstreamError> {
    if response.body.is_empty() {
        http.record_answer(operation, &response, "ok");
        return Ok(());
    }
    decode_json::<serde_json::Value>(http, operation, response).map(|_| ())
}

/// The record lacks an id the call addresses the card or profile by: nothing can be sent (a
/// stable answer about the record, not a failure of the request's making).
fn missing(what: &'static str) -> UpstreamFailure {
    UpstreamFailure::IdsUnknown {
        missing: what,
        context: UpstreamContext {
            api: "enroll",
            description: format!("the enrollment record holds no {what}"),
            ..Default::default()
        },
    }
}

fn require<'a>(value: &'a Option<String>, what: &'static str) -> Result<&'a str, UpstreamFailure> {
    value.as_deref().ok_or_else(|| missing(what))
}

/// The masked card of a lifecycle answer: never more than the last four digits and the expiry.
fn masked_card(card: &types::MaskedCard) -> MaskedCard {
    MaskedCard {
        pan_last_four: last_four(card.pan_last_four.as_deref().unwrap_or_default()),
        pan_expiration_month: card.pan_expiration_month.clone().unwrap_or_default(),
        pan_expiration_year: card.pan_expiration_year.clone().unwrap_or_default(),
        payment_card_descriptor: card.payment_card_descriptor.clone(),
        payment_card_type: card.payment_card_type.clone(),
        digital_card_status: card
            .digital_card_data
            .as_ref()
            .and_then(|d| d.status.clone()),
    }
}

fn masked_address(a: &types::MaskedBillingAddress) -> MaskedAddress {
    MaskedAddress {
        line1: a.line1.clone(),
        city: a.city.clone(),
        state: a.state.clone(),
        zip: a.zip.clone(),
        country_code: a.country_code.clone(),
    }
}

fn profile_card(card: &types::MaskedCard, external_credential_id: Option<String>) -> ProfileCard {
    ProfileCard {
        src_digital_card_id: card.src_digital_card_id.clone(),
        external_credential_id,
        card: None,
        masked_card: Some(masked_card(card)),
        masked_billing_address: card.masked_billing_address.as_ref().map(masked_address),
    }
}

fn profile_of(consumer: Option<&types::MaskedConsumer>) -> ClickToPayProfile {
    let Some(c) = consumer else {
        return ClickToPayProfile::default();
    };
    let email = c.masked_email_address.clone().or_else(|| {
        c.masked_consumer_identity
            .as_ref()
            .filter(|i| i.identity_type.as_deref() == Some("EMAIL_ADDRESS"))
            .and_then(|i| i.masked_identity_value.clone())
    });
    ClickToPayProfile {
        src_consumer_id: c.src_consumer_id.clone(),
        external_consumer_id: None,
        masked_email: email,
        masked_mobile_number: c.masked_mobile_number.as_ref().map(|m| {
            format!(
                "+{} {}",
                m.country_code.as_deref().unwrap_or_default(),
                m.phone_number.as_deref().unwrap_or_default()
            )
        }),
        masked_full_name: c.masked_full_name.clone(),
        country_code: c.country_code.clone(),
        language_code: c.language_code.clone(),
        status: c.status.clone(),
        cards: Vec::new(),
    }
}

fn address(a: &Address) -> types::Address {
    types::Address {
        line1: a.line1.clone(),
        line2: a.line2.clone(),
        line3: a.line3.clone(),
        city: a.city.clone(),
        state: a.state.clone(),
        zip: a.zip.clone(),
        country_code: a.country_code.clone(),
    }
}

fn directory_consumer(c: &ConsumerInput) -> directory::DirectoryConsumer {
    directory::DirectoryConsumer {
        email_address: c.email.clone(),
        mobile_number: c.mobile.as_ref().map(|(cc, n)| directory::MobileNumber {
            country_code: cc.clone(),
            phone_number: n.clone(),
        }),
        first_name: c.first_name.clone(),
        last_name: c.last_name.clone(),
        country_code: c.country_code.clone(),
        language_code: c.language_code.clone(),
    }
}

/// The family of a program's cards, and its program.
enum Family<'a> {
    Legacy(&'a Program),
    Directory(directory::Place<'a>),
}

impl Upstream {
    fn family<'a>(&'a self, keys: &'a ClickToPayKeys) -> Result<Family<'a>, UpstreamFailure> {
        let program = self.program(&keys.program)?;
        Ok(match &program.lifecycle {
            LifecycleFamily::Legacy => Family::Legacy(program),
            LifecycleFamily::CredentialDirectory { directory_id } => {
                Family::Directory(directory::Place {
                    directory_id,
                    external_consumer_id: require(
                        &keys.external_consumer_id,
                        "externalConsumerId",
                    )?,
                })
            }
        })
    }

    fn lifecycle_http(&self) -> (&ApiClient, &str) {
        (self.enroll.http(), self.enroll.client_id())
    }
}

fn failed(e: UpstreamError) -> UpstreamFailure {
    lifecycle_failure(e)
}

/// A delete's answer: done, or already gone (a 404 of the API itself).
fn deleted(
    http: &ApiClient,
    op: &'static str,
    answer: Result<Answer, UpstreamError>,
) -> Result<Deleted, UpstreamFailure> {
    match answer.map_err(failed)? {
        Answer::Done(response) => done(http, op, response)
            .map(|()| Deleted::Deleted)
            .map_err(failed),
        Answer::NotFound(_) => Ok(Deleted::AlreadyGone),
    }
}

/// An update's answer: done, or not held by Click to Pay (a 404 of the API itself).
fn updated(
    http: &ApiClient,
    op: &'static str,
    answer: Result<Answer, UpstreamError>,
) -> Result<Updated, UpstreamFailure> {
    match answer.map_err(failed)? {
        Answer::Done(response) => done(http, op, response)
            .map(|()| Updated::Updated)
            .map_err(failed),
        Answer::NotFound(e) => Ok(Updated::NotFound(context_of(&e))),
    }
}

#[async_trait::async_trait]
impl ClickToPayLifecycle for Upstream {
    async fn remove_card(
        &self,
        keys: &ClickToPayKeys,
        deadline: Option<Instant>,
    ) -> Result<Deleted, UpstreamFailure> {
        let (http, client_id) = self.lifecycle_http();
        let (op, answer) = match self.family(keys)? {
            Family::Legacy(program) => {
                let card = require(&keys.src_digital_card_id, "srcDigitalCardId")?;
                let ids = (program.src_client_id.as_str(), program.service_id.as_str());
                (
                    "deleteCard",
                    legacy::delete_card(http, client_id, ids, card, deadline).await,
                )
            }
            Family::Directory(place) => {
                let credential = require(&keys.external_credential_id, "externalCredentialId")?;
                (
                    "deleteCredential",
                    directory::delete_credential(http, client_id, &place, credential, deadline)
                        .await,
                )
            }
        };
        deleted(http, op, answer)
    }

    async fn holds_card(
        &self,
        keys: &ClickToPayKeys,
        deadline: Option<Instant>,
    ) -> Result<bool, UpstreamFailure> {
        let (http, client_id) = self.lifecycle_http();
        let (op, answer) = match self.family(keys)? {
            Family::Legacy(_) => {
                let card = require(&keys.src_digital_card_id, "srcDigitalCardId")?;
                (
                    "getCard",
                    legacy::get_card(http, client_id, card, deadline).await,
                )
            }
            Family::Directory(place) => {
                let credential = require(&keys.external_credential_id, "externalCredentialId")?;
                (
                    "getCredential",
                    directory::get_credential(http, client_id, &place, credential, deadline).await,
                )
            }
        };
        match answer.map_err(failed)? {
            Answer::Done(response) => done(http, op, response).map(|()| true).map_err(failed),
            Answer::NotFound(_) => Ok(false),
        }
    }

    async fn profile(
        &self,
        keys: &ClickToPayKeys,
        deadline: Option<Instant>,
    ) -> Result<Found<ClickToPayProfile>, UpstreamFailure> {
        let (http, client_id) = self.lifecycle_http();
        match self.family(keys)? {
            Family::Legacy(_) => {
                let consumer = require(&keys.src_consumer_id, "srcConsumerId")?;
                const OP: &str = "getProfile";
                match legacy::get_profile(http, client_id, consumer, deadline)
                    .await
                    .map_err(failed)?
                {
                    Answer::NotFound(e) => Ok(Found::NotFound(context_of(&e))),
                    Answer::Done(response) => {
                        let wire: legacy::Profile =
                            decode_json(http, OP, response).map_err(failed)?;
                        let mut profile = profile_of(wire.masked_consumer.as_ref());
                        profile.src_consumer_id = profile
                            .src_consumer_id
                            .or_else(|| Some(consumer.to_owned()));
                        profile.cards = wire
                            .masked_cards
                            .iter()
                            .map(|c| profile_card(c, None))
                            .collect();
                        Ok(Found::Found(profile))
                    }
                }
            }
            Family::Directory(place) => {
                const OP: &str = "getConsumer";
                match directory::get_consumer(http, client_id, &place, deadline)
                    .await
                    .map_err(failed)?
                {
                    Answer::NotFound(e) => Ok(Found::NotFound(context_of(&e))),
                    Answer::Done(response) => {
                        let wire: directory::Profile =
                            decode_json(http, OP, response).map_err(failed)?;
                        let mut profile = profile_of(wire.masked_consumer.as_ref());
                        profile.external_consumer_id = wire
                            .external_consumer_id
                            .or_else(|| Some(place.external_consumer_id.to_owned()));
                        profile.cards = wire
                            .credentials
                            .iter()
                            .map(|c| {
                                let card = c.masked_card.clone().unwrap_or_default();
                                profile_card(&card, c.external_credential_id.clone())
                            })
                            .collect();
                        Ok(Found::Found(profile))
                    }
                }
            }
        }
    }

    async fn update_consumer(
        &self,
        keys: &ClickToPayKeys,
        consumer: &ConsumerInput,
        deadline: Option<Instant>,
    ) -> Result<Updated, UpstreamFailure> {
        let (http, client_id) = self.lifecycle_http();
        let (op, answer) = match self.family(keys)? {
            Family::Legacy(program) => {
                let id = require(&keys.src_consumer_id, "srcConsumerId")?;
                let body = legacy::UpdateProfileRequest {
                    src_client_id: program.src_client_id.clone(),
                    service_id: program.service_id.clone(),
                    src_correlation_id: uuid::Uuid::new_v4().to_string(),
                    consumer: super::ports::consumer_of(consumer),
                };
                (
                    "updateProfile",
                    legacy::update_profile(http, client_id, id, &body, deadline).await,
                )
            }
            Family::Directory(place) => {
                let body = directory::UpdateConsumerRequest {
                    consumer: directory_consumer(consumer),
                };
                (
                    "updateConsumer",
                    directory::update_consumer(http, client_id, &place, &body, deadline).await,
                )
            }
        };
        updated(http, op, answer)
    }

    async fn update_billing_address(
        &self,
        keys: &ClickToPayKeys,
        billing_address: &Address,
        deadline: Option<Instant>,
    ) -> Result<Updated, UpstreamFailure> {
        let (http, client_id) = self.lifecycle_http();
        let (op, answer) = match self.family(keys)? {
            Family::Legacy(program) => {
                let card = require(&keys.src_digital_card_id, "srcDigitalCardId")?;
                let body = legacy::UpdateCardRequest {
                    src_client_id: program.src_client_id.clone(),
                    service_id: program.service_id.clone(),
                    src_correlation_id: uuid::Uuid::new_v4().to_string(),
                    billing_address: address(billing_address),
                };
                (
                    "updateCard",
                    legacy::update_card(http, client_id, card, &body, deadline).await,
                )
            }
            Family::Directory(place) => {
                let credential = require(&keys.external_credential_id, "externalCredentialId")?;
                let body = directory::UpdateCredentialRequest {
                    billing_address: address(billing_address),
                };
                (
                    "updateCredential",
                    directory::update_credential(
                        http, client_id, &place, credential, &body, deadline,
                    )
                    .await,
                )
            }
        };
        updated(http, op, answer)
    }

    async fn delete_profile(
        &self,
        keys: &ClickToPayKeys,
        deadline: Option<Instant>,
    ) -> Result<Deleted, UpstreamFailure> {
        let (http, client_id) = self.lifecycle_http();
        let (op, answer) = match self.family(keys)? {
            Family::Legacy(program) => {
                let id = require(&keys.src_consumer_id, "srcConsumerId")?;
                let ids = (program.src_client_id.as_str(), program.service_id.as_str());
                (
                    "deleteProfile",
                    legacy::delete_profile(http, client_id, ids, id, deadline).await,
                )
            }
            Family::Directory(place) => (
                "deleteConsumer",
                directory::delete_consumer(http, client_id, &place, deadline).await,
            ),
        };
        deleted(http, op, answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mastercard::error::{Api, Correlation, UpstreamErrorKind, parse_error_body};

    fn answered(status: u16, body: &[u8]) -> UpstreamError {
        UpstreamError {
            api: Api::Enroll,
            operation: "deleteCard",
            kind: UpstreamErrorKind::Rejected {
                status,
                reason: parse_error_body(body),
                retry_after: None,
            },
            correlation: Correlation::default(),
            attempts: 1,
            budget_exhausted: false,
        }
    }

    #[test]
    fn a_404_is_gone_only_with_an_apis_error_body() {
        let api = [
            &br#"{"status":404,"reason":"NOT_FOUND","message":"Card not found"}"#[..],
            br#"{"Errors":[{"Error":{"Source":"CREDENTIAL_DIRECTORY","ReasonCode":"NOT_FOUND"}}]}"#,
        ];
        for body in api {
            assert!(is_not_found(&answered(404, body)), "{body:?}");
        }
        // The gateway routes no such path; no Mastercard body at all (a proxy's, an ingress's).
        let gateway = br#"{"Errors":{"Error":[{"Source":"Gateway","ReasonCode":"RESOURCE_NOT_FOUND","Recoverable":false}]}}"#;
        for body in [
            &gateway[..],
            b"",
            b"<html>404</html>",
            br#"{"message":"no"}"#,
        ] {
            assert!(!is_not_found(&answered(404, body)), "{body:?}");
        }
        assert!(!is_not_found(&answered(400, api[0])));
    }
}
