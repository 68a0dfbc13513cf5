//! The Click to Pay Enroll API, simulated: `POST /cards` opens `encryptedCard`, validates the
//! request like Mastercard (INVALID_ARGUMENT / INVALID_STATE), tokenizes with a TAR decision from
//! the CMS, sends TAR and TCN notifications, and answers with the masked card.

use super::cms::CardContract;
use super::faults::{NotificationFaults, NotificationTiming, Route};
use super::notifier::Notification;
use super::profiles::{SimCard, SimConsumer};
use super::state::{Answer, Incoming, State};
use super::tokens::{SimToken, StoredEnrollment};
use crate::mastercard::processing::types::{
    CLICK_TO_PAY_TOKEN_REQUESTOR_ID, CLICK_TO_PAY_WALLET_NAME,
};
use crate::proto::v1::{
    NotificationIngestRequest, TokenizationAuthorization, TokenizationComplete,
    TokenizationDecision, notification_ingest_request::Event,
};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;

/// One problem found in a request: `details[]` of the error body.
pub(super) struct Detail {
    pub(super) reason: &'static str,
    pub(super) source: &'static str,
    pub(super) message: String,
}

/// A 400 in the Enroll API's error shape (`code`, `status`, `message`, `details[]`).
pub(super) fn enroll_error(
    status: &str,
    details: Vec<Detail>,
    src_correlation_id: Option<String>,
) -> Answer {
    let message = details
        .first()
        .map(|d| d.message.clone())
        .unwrap_or_default();
    Answer {
        status: StatusCode::BAD_REQUEST,
        body: json!({
            "code": 400,
            "status": status,
            "message": message,
            "details": details.iter().map(|d| json!({
                "reason": d.reason, "source": d.source, "message": d.message, "sourceType": "BODY"
            })).collect::<Vec<_>>(),
        }),
        src_correlation_id,
    }
}

fn str_field<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter()
        .try_fold(v, |v, k| v.get(k))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// The `INVALID_ARGUMENT` details of a request, all at once.
fn argument_problems(body: &Value) -> Vec<Detail> {
    let mut problems = Vec::new();
    let mut need = |ok: bool, reason, source, message: &str| {
        if !ok {
            problems.push(Detail {
                reason,
                source,
                message: message.to_owned(),
            });
        }
    };
    match str_field(body, &["srcClientId"]) {
        None => need(
            false,
            "CANNOT_BE_NULL",
            "srcClientId",
            "srcClientId is required",
        ),
        Some(v) => need(
            uuid::Uuid::parse_str(v).is_ok(),
            "INVALID_FORMAT",
            "srcClientId",
            "srcClientId must be a UUID",
        ),
    }
    need(
        str_field(body, &["serviceId"]).is_some(),
        "CANNOT_BE_NULL",
        "serviceId",
        "serviceId is required",
    );
    if let Some(v) = str_field(body, &["srcCorrelationId"]) {
        need(
            uuid::Uuid::parse_str(v).is_ok(),
            "INVALID_FORMAT",
            "srcCorrelationId",
            "srcCorrelationId must be a UUID",
        );
    }
    need(
        str_field(body, &["encryptedCard"]).is_some(),
        "CANNOT_BE_NULL",
        "encryptedCard",
        "encryptedCard is required",
    );
    let identity_type = str_field(body, &["consumer", "consumerIdentity", "identityType"]);
    need(
        matches!(identity_type, Some("EMAIL_ADDRESS" | "MOBILE_PHONE_NUMBER")),
        "INVALID_VALUE",
        "consumer.consumerIdentity.identityType",
        "identityType must be EMAIL_ADDRESS or MOBILE_PHONE_NUMBER",
    );
    need(
        str_field(body, &["consumer", "consumerIdentity", "identityValue"]).is_some(),
        "CANNOT_BE_NULL",
        "consumer.consumerIdentity.identityValue",
        "identityValue is required",
    );
    let country = str_field(body, &["consumer", "countryCode"]);
    need(
        country.is_some_and(|c| c.len() == 2 && c.chars().all(|ch| ch.is_ascii_uppercase())),
        "INVALID_FORMAT",
        "consumer.countryCode",
        "countryCode must be ISO 3166-1 alpha-2",
    );
    need(
        str_field(body, &["consumer", "languageCode"]).is_some(),
        "CANNOT_BE_NULL",
        "consumer.languageCode",
        "languageCode is required",
    );
    problems
}

/// `POST /cards`.
pub async fn enroll(state: Arc<State>, req: Incoming) -> Response {
    let body = match state.prelude(Route::EnrollCards, &req, false).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        let answer = enroll_error(
            "INVALID_ARGUMENT",
            vec![Detail {
                reason: "INVALID_FORMAT",
                source: "body",
                message: "body is not JSON".into(),
            }],
            None,
        );
        return state.respond(Route::EnrollCards, answer, false);
    };
    let src_correlation_id = str_field(&body, &["srcCorrelationId"]).map(str::to_owned);
    let problems = argument_problems(&body);
    if !problems.is_empty() {
        return state.respond(
            Route::EnrollCards,
            enroll_error("INVALID_ARGUMENT", problems, src_correlation_id),
            false,
        );
    }
    let program = &state.keys.program;
    let mut unknown = Vec::new();
    if str_field(&body, &["srcClientId"]) != Some(program.src_client_id.as_str()) {
        unknown.push(Detail {
            reason: "INVALID_VALUE",
            source: "srcClientId",
            message: "srcClientId is not registered".into(),
        });
    }
    if str_field(&body, &["serviceId"]) != Some(program.service_id.as_str()) {
        unknown.push(Detail {
            reason: "INVALID_VALUE",
            source: "serviceId",
            message: "serviceId is not registered".into(),
        });
    }
    // The Credential Directory's ids, as the service assumes Enroll takes them: all or none,
    // in the simulator's directory.
    let directory = ["directoryId", "externalConsumerId", "externalCredentialId"]
        .map(|f| str_field(&body, &[f]));
    if directory.iter().any(Option::is_some)
        && (directory.iter().any(Option::is_none) || directory[0] != Some(super::DIRECTORY_ID))
    {
        unknown.push(Detail {
            reason: "INVALID_VALUE",
            source: "directoryId",
            message: "directoryId, externalConsumerId and externalCredentialId go together, in a registered directory".into(),
        });
    }
    if !unknown.is_empty() {
        return state.respond(
            Route::EnrollCards,
            enroll_error("INVALID_STATE", unknown, src_correlation_id),
            false,
        );
    }

    // The same srcCorrelationId again: the same enrollment, no second token.
    let correlation = src_correlation_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let replay = state
        .registry
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .enrollment(&correlation);
    if let Some(stored) = replay {
        let answer = Answer {
            status: StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK),
            body: stored.body,
            src_correlation_id: Some(correlation),
        };
        return state.respond(Route::EnrollCards, answer, false);
    }

    let card = str_field(&body, &["encryptedCard"])
        .and_then(|jwe| state.card_decryptor.decrypt(jwe).ok())
        .and_then(|plain| serde_json::from_slice::<Value>(&plain).ok())
        .and_then(|object| {
            str_field(&object, &["primaryAccountNumber"])
                .and_then(|pan| state.cms.by_pan(pan))
                .cloned()
        });
    let Some(card) = card else {
        let detail = Detail {
            reason: "INVALID_VALUE",
            source: "encryptedCard",
            message: "encryptedCard cannot be decrypted or names no known card".into(),
        };
        return state.respond(
            Route::EnrollCards,
            enroll_error("INVALID_ARGUMENT", vec![detail], Some(correlation)),
            false,
        );
    };

    let (answer, notifications) = tokenize(&state, &body, &card, &correlation);
    state
        .registry
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remember(
            correlation.clone(),
            StoredEnrollment {
                status: answer.status.as_u16(),
                body: answer.body.clone(),
            },
        );
    let faults = state
        .faults
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .notifications
        .clone();
    match faults.timing {
        NotificationTiming::BeforeResponse => send(&state, notifications, &faults).await,
        NotificationTiming::AfterResponse => {
            let state = state.clone();
            tokio::spawn(async move {
                // After the 200 has gone out.
                tokio::time::sleep(Duration::from_millis(100)).await;
                send(&state, notifications, &faults).await;
            });
        }
    }
    state
        .respond_or_drop(Route::EnrollCards, answer, false)
        .await
}

/// Delivers `notifications` as the notification faults say (delay, reorder, duplicates).
pub(super) async fn send(
    state: &State,
    mut notifications: Vec<Notification>,
    faults: &NotificationFaults,
) {
    if let Some(delay) = faults.delay {
        tokio::time::sleep(delay).await;
    }
    if faults.reorder {
        notifications.reverse();
    }
    if faults.duplicate {
        notifications = notifications
            .into_iter()
            .flat_map(|n| [n.clone(), n])
            .collect();
    }
    state.notifier.deliver_all(notifications).await;
}

pub(super) fn timestamp(t: OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.unix_timestamp(),
        nanos: i32::try_from(t.nanosecond()).unwrap_or(0),
    }
}

/// The TAR decision, the token, the notifications and the answer.
fn tokenize(
    state: &State,
    body: &Value,
    card: &CardContract,
    correlation: &str,
) -> (Answer, Vec<Notification>) {
    let now = OffsetDateTime::now_utc();
    let declined_by_fault = state
        .faults
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .decline_tar;
    let ineligible = card.ineligibility(now);
    let tur = format!(
        "DM4MMC{}",
        uuid::Uuid::new_v4().simple().to_string()[..24].to_uppercase()
    );
    let decision = if declined_by_fault || ineligible.is_some() {
        TokenizationDecision::Declined
    } else {
        TokenizationDecision::Approved
    };
    let mut notifications = vec![Notification {
        kind: "TAR",
        request: NotificationIngestRequest {
            notification_id: uuid::Uuid::new_v4().to_string(),
            sequence: 0,
            event_time: Some(timestamp(now)),
            event: Some(Event::TokenizationAuthorization(
                TokenizationAuthorization {
                    card_contract_id: card.card_contract_id,
                    token_unique_reference: tur.clone(),
                    token_requestor_id: CLICK_TO_PAY_TOKEN_REQUESTOR_ID.into(),
                    wallet_name: CLICK_TO_PAY_WALLET_NAME.into(),
                    decision: decision as i32,
                },
            )),
        },
    }];
    if decision == TokenizationDecision::Declined {
        let reason = ineligible.map_or("TOKENIZATION_DECLINED", |i| i.code());
        let detail = Detail {
            reason,
            source: "encryptedCard",
            message: format!("tokenization declined: {reason}"),
        };
        return (
            enroll_error("INVALID_STATE", vec![detail], Some(correlation.to_owned())),
            notifications,
        );
    }

    state
        .registry
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .add_token(SimToken {
            card_contract_id: card.card_contract_id,
            client_id: card.client_id,
            card_contract_number: card.masked_number(),
            token_unique_reference: tur.clone(),
            status: "Active".into(),
            token_requestor_id: CLICK_TO_PAY_TOKEN_REQUESTOR_ID.into(),
            wallet_name: CLICK_TO_PAY_WALLET_NAME.into(),
            created: now
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
        });
    let tur_of_card = tur.clone();
    notifications.push(Notification {
        kind: "TCN",
        request: NotificationIngestRequest {
            notification_id: uuid::Uuid::new_v4().to_string(),
            sequence: 0,
            event_time: Some(timestamp(now + Duration::from_millis(1))),
            event: Some(Event::TokenizationComplete(TokenizationComplete {
                card_contract_id: card.card_contract_id,
                token_unique_reference: tur,
                token_requestor_id: CLICK_TO_PAY_TOKEN_REQUESTOR_ID.into(),
                wallet_name: CLICK_TO_PAY_WALLET_NAME.into(),
            })),
        },
    });
    let identity_type = str_field(body, &["consumer", "consumerIdentity", "identityType"])
        .unwrap_or("EMAIL_ADDRESS");
    // The card joins its consumer's profile (one per identity, or per directory id).
    let src_digital_card_id = uuid::Uuid::new_v4().to_string();
    let directory = match (
        str_field(body, &["directoryId"]),
        str_field(body, &["externalConsumerId"]),
    ) {
        (Some(d), Some(c)) => Some((d.to_owned(), c.to_owned())),
        _ => None,
    };
    let src_consumer_id = state
        .profiles
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .enroll(
            SimConsumer::from_enroll(body.get("consumer").unwrap_or(&Value::Null)),
            directory,
            SimCard {
                src_digital_card_id: src_digital_card_id.clone(),
                external_credential_id: str_field(body, &["externalCredentialId"])
                    .map(str::to_owned),
                card_contract_id: card.card_contract_id,
                token_unique_reference: tur_of_card.clone(),
                last_four: card.last_four(),
                expiry_month: card.expiry_month.clone(),
                expiry_year: card.expiry_year.clone(),
                card_type: card.card_type.clone(),
                billing_address: None,
            },
        );
    let answer = Answer {
        status: StatusCode::OK,
        body: json!({
            "srcCorrelationId": correlation,
            "maskedCard": {
                "srcDigitalCardId": src_digital_card_id,
                "panBin": &card.pan[..6.min(card.pan.len())],
                "panLastFour": card.last_four(),
                "panExpirationMonth": card.expiry_month,
                "panExpirationYear": card.expiry_year,
                "paymentCardDescriptor": "Mastercard",
                "paymentCardType": card.card_type,
                "serviceId": state.keys.program.service_id,
                "dateOfCardCreated": now.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
                "digitalCardData": { "status": "ACTIVE", "descriptorName": "Mastercard", "artUri": "https://sandbox.invalid/card-art.png" }
            },
            "maskedConsumer": {
                "srcConsumerId": src_consumer_id,
                "maskedConsumerIdentity": { "identityType": identity_type, "maskedIdentityValue": "j***@e***.com" },
                "status": "ACTIVE"
            }
        }),
        src_correlation_id: Some(correlation.to_owned()),
    };
    (answer, notifications)
}
