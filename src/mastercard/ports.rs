//! The app's Mastercard ports (`app::ports`) over the real APIs: requests built from the app's
//! types and the program settings, answers and failures translated into the app's closed types.
//! This translation is the one place that reads Mastercard's refusals (which 4xx is a decline,
//! which is an unknown card) and that decides whether a retry may succeed.

use super::enroll::types::{
    ComplianceResource, ComplianceSettings, Consumer, ConsumerIdentity, EnrollCardRequest,
    EnrollCardResponse, MobileNumber,
};
use super::error::{UpstreamError, UpstreamErrorKind};
use super::processing::types::{BillingAddress, SynchronousRequest};
use super::setup::{Program, Upstream};
use crate::app::ports::{
    Address, CardEnrollment, CardSearch, Cardholder, EncryptedCard, EnrolledCard,
    EnrollmentRequest, Mastercard, ObservedToken, TokenList, TokenObservation, UpstreamContext,
    UpstreamFailure,
};
use crate::domain::{CardContractId, DEFAULT_PROGRAM, MaskedCard, last_four};
use std::time::Duration;
use tokio::time::Instant;

/// How long a caller waits before retrying a failure that says nothing more precise.
const DEFAULT_RETRY: Duration = Duration::from_secs(1);
/// Retrying before the breaker lets a probe through only fails again; never sooner than this.
const MIN_BREAKER_RETRY: Duration = Duration::from_millis(100);

/// Which refusals the call can mean.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Call {
    /// Processing (searches, token lists).
    Processing,
    /// The Enroll API's `POST /cards`: a 400 `INVALID_STATE` on `encryptedCard` is a decline.
    Enroll,
    /// A lifecycle call (`mastercard::lifecycle`): its 404s were taken apart before.
    Lifecycle,
}

/// The app's failure of an error of Processing (searches, token lists).
pub fn processing_failure(e: UpstreamError) -> UpstreamFailure {
    translate(e, Call::Processing)
}

/// The app's failure of an error of the Enroll API's `POST /cards`.
pub fn enroll_failure(e: UpstreamError) -> UpstreamFailure {
    translate(e, Call::Enroll)
}

/// The app's failure of an error of a lifecycle call.
pub fn lifecycle_failure(e: UpstreamError) -> UpstreamFailure {
    translate(e, Call::Lifecycle)
}

/// What the app is told of a Mastercard call: codes, correlation id, a description without
/// bodies.
pub fn context_of(e: &UpstreamError) -> UpstreamContext {
    UpstreamContext {
        api: e.api.name(),
        reason_code: e.reason_code().map(str::to_owned),
        correlation_id: e.correlation.best().map(str::to_owned),
        description: e.to_string(),
    }
}

/// The app's failure of a Mastercard error; every kind is placed explicitly.
fn translate(e: UpstreamError, call: Call) -> UpstreamFailure {
    let context = context_of(&e);
    let unavailable = |retry_after: Duration, context| UpstreamFailure::Unavailable {
        retry_after,
        context,
    };
    match e.kind {
        UpstreamErrorKind::Rejected {
            status: 404,
            ref reason,
            ..
        } if reason.code.as_deref() == Some("CARD_CONTRACT_DOES_NOT_EXIST") => {
            UpstreamFailure::ContractNotFound(context)
        }
        UpstreamErrorKind::Rejected {
            status: 400,
            ref reason,
            ..
        } if call == Call::Enroll
            && reason.code.as_deref() == Some("INVALID_STATE")
            && reason.source.as_deref() == Some("encryptedCard") =>
        {
            UpstreamFailure::Declined {
                reason: reason
                    .detail
                    .clone()
                    .unwrap_or_else(|| "TOKENIZATION_DECLINED".into()),
                context,
            }
        }
        UpstreamErrorKind::Rejected {
            status: 429,
            retry_after,
            ..
        } => unavailable(retry_after.unwrap_or(DEFAULT_RETRY), context),
        UpstreamErrorKind::Rejected { .. } => UpstreamFailure::Rejected(context),
        UpstreamErrorKind::ServerError { .. }
        | UpstreamErrorKind::ConnectFailed
        | UpstreamErrorKind::SendFailed
        | UpstreamErrorKind::Timeout => unavailable(DEFAULT_RETRY, context),
        UpstreamErrorKind::CircuitOpen { closes_in } => {
            unavailable(closes_in.max(MIN_BREAKER_RETRY), context)
        }
        UpstreamErrorKind::Decode(_) | UpstreamErrorKind::Decrypt(_) => {
            UpstreamFailure::InvalidAnswer(context)
        }
        UpstreamErrorKind::Request(_) => UpstreamFailure::RequestNotBuilt(context),
    }
}

impl Upstream {
    /// The program of that name ("" = the default).
    pub(super) fn program(&self, name: &str) -> Result<&Program, UpstreamFailure> {
        let name = if name.is_empty() {
            DEFAULT_PROGRAM
        } else {
            name
        };
        self.programs.get(name).ok_or_else(|| {
            UpstreamFailure::RequestNotBuilt(UpstreamContext {
                api: "enroll",
                description: format!("program {name} is not configured"),
                ..Default::default()
            })
        })
    }
}

fn billing_address(a: &Address) -> BillingAddress {
    BillingAddress {
        line1: a.line1.clone(),
        line2: a.line2.clone(),
        line3: a.line3.clone(),
        city: a.city.clone(),
        state: a.state.clone(),
        zip: a.zip.clone(),
        country_code: a.country_code.clone(),
    }
}

#[async_trait::async_trait]
impl CardSearch for Upstream {
    async fn encrypted_card(
        &self,
        card: CardContractId,
        program: &str,
        cardholder: &Cardholder,
        deadline: Option<Instant>,
    ) -> Result<EncryptedCard, UpstreamFailure> {
        let program = self.program(program)?;
        let found = self
            .processing
            .search_card(
                card.get(),
                SynchronousRequest {
                    cardholder_full_name: cardholder.full_name.clone(),
                    billing_address: cardholder.billing_address.as_ref().map(billing_address),
                },
                &program.enroll_certificate,
                deadline,
            )
            .await
            .map_err(|e| translate(e, Call::Processing))?;
        Ok(EncryptedCard::new(found.card_data.expose().to_owned()))
    }
}

/// The Enroll API's consumer object of a consumer (also the legacy profile update's).
pub fn consumer_of(c: &crate::app::ConsumerInput) -> Consumer {
    let (identity_type, identity_value) = match (&c.email, &c.mobile) {
        (Some(email), _) => ("EMAIL_ADDRESS", email.clone()),
        (None, Some((cc, number))) => ("MOBILE_PHONE_NUMBER", format!("{cc}{number}")),
        (None, None) => ("EMAIL_ADDRESS", String::new()),
    };
    Consumer {
        consumer_identity: ConsumerIdentity {
            identity_type: identity_type.into(),
            identity_value,
        },
        mobile_number: c.mobile.as_ref().map(|(cc, n)| MobileNumber {
            country_code: cc.clone(),
            phone_number: n.clone(),
        }),
        country_code: c.country_code.clone(),
        language_code: c.language_code.clone(),
        first_name: c.first_name.clone(),
        last_name: c.last_name.clone(),
    }
}

fn enroll_request(program: &Program, request: &EnrollmentRequest<'_>) -> EnrollCardRequest {
    // The Credential Directory's ids go only to a program it manages (an assumption of
    // docs/lifecycle.md); a legacy program's request is the Enroll API's as documented.
    let directory_id = match &program.lifecycle {
        super::settings::LifecycleFamily::CredentialDirectory { directory_id } => {
            Some(directory_id.clone())
        }
        super::settings::LifecycleFamily::Legacy => None,
    };
    let (external_consumer_id, external_credential_id) = request.external_ids;
    EnrollCardRequest {
        src_client_id: program.src_client_id.clone(),
        service_id: program.service_id.clone(),
        src_correlation_id: request.src_correlation_id.to_owned(),
        encrypted_card: super::processing::types::EncryptedCard::new(
            request.card.expose().to_owned(),
        ),
        card_source: "ISSUER",
        consumer: consumer_of(request.consumer),
        compliance_settings: ComplianceSettings {
            privacy: ComplianceResource {
                latest_version_uri: program.privacy_uri.clone(),
            },
            tnc: ComplianceResource {
                latest_version_uri: program.terms_uri.clone(),
            },
        },
        external_consumer_id: directory_id
            .as_ref()
            .map(|_| external_consumer_id.to_owned()),
        external_credential_id: directory_id
            .as_ref()
            .map(|_| external_credential_id.to_owned()),
        directory_id,
    }
}

fn enrolled(response: EnrollCardResponse) -> EnrolledCard {
    let (src_digital_card_id, masked_card) = match response.masked_card {
        Some(card) => (
            card.src_digital_card_id.clone(),
            // Never more than the last four digits and the expiry.
            Some(MaskedCard {
                pan_last_four: last_four(&card.pan_last_four.unwrap_or_default()),
                pan_expiration_month: card.pan_expiration_month.unwrap_or_default(),
                pan_expiration_year: card.pan_expiration_year.unwrap_or_default(),
                payment_card_descriptor: card.payment_card_descriptor,
                payment_card_type: card.payment_card_type,
                digital_card_status: card.digital_card_data.and_then(|d| d.status),
            }),
        ),
        None => (None, None),
    };
    EnrolledCard {
        src_digital_card_id,
        src_consumer_id: response.masked_consumer.and_then(|c| c.src_consumer_id),
        masked_card,
    }
}

#[async_trait::async_trait]
impl CardEnrollment for Upstream {
    async fn enroll(
        &self,
        request: EnrollmentRequest<'_>,
        deadline: Option<Instant>,
    ) -> Result<EnrolledCard, UpstreamFailure> {
        let program = self.program(request.program)?;
        let body = enroll_request(program, &request);
        self.enroll
            .enroll_card(&body, deadline)
            .await
            .map(enrolled)
            .map_err(|e| translate(e, Call::Enroll))
    }
}

#[async_trait::async_trait]
impl TokenList for Upstream {
    async fn tokens(
        &self,
        card: CardContractId,
        deadline: Option<Instant>,
    ) -> Result<TokenObservation, UpstreamFailure> {
        let (tokens, observed_at_ms) = self
            .processing
            .card_tokens_observed(card.get(), deadline)
            .await
            .map_err(|e| translate(e, Call::Processing))?;
        Ok(TokenObservation {
            tokens: tokens
                .into_iter()
                .map(|t| ObservedToken {
                    status: t.status(),
                    token_unique_reference: t.token_unique_reference.unwrap_or_default(),
                    token_requestor_id: t.token_requestor_id.unwrap_or_default(),
                    wallet_name: t.wallet_name.unwrap_or_default(),
                    created: t.token_creation_date,
                })
                .collect(),
            observed_at_ms,
        })
    }
}

impl Mastercard for Upstream {
    fn has_program(&self, name: &str) -> bool {
        name.is_empty() || self.programs.contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mastercard::error::{Api, Correlation, parse_error_body};

    fn rejected(status: u16, body: &[u8]) -> UpstreamError {
        UpstreamError {
            api: Api::Enroll,
            operation: "putCard",
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
    fn a_decline_reads_the_same_in_both_enroll_error_shapes() {
        let spec = br#"{"code":400,"status":"INVALID_STATE","message":"m","details":[{"reason":"CARD_BLOCKED","source":"encryptedCard","sourceType":"BODY"}]}"#;
        let page = br#"{"status":400,"reason":"INVALID_STATE","message":"m","errordetail":[{"reason":"CARD_BLOCKED","source":"encryptedCard","sourceType":"BODY"}]}"#;
        for body in [&spec[..], &page[..]] {
            match enroll_failure(rejected(400, body)) {
                UpstreamFailure::Declined { reason, .. } => assert_eq!(reason, "CARD_BLOCKED"),
                other => panic!("{other:?}"),
            }
        }
    }
}
