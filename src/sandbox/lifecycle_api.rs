//! Click to Pay's lifecycle APIs, simulated in both families as the service assumes them
//! (`docs/lifecycle.md`): the legacy routes keyed by Click to Pay's ids, the Credential
//! Directory's keyed by the issuer's within the simulator's directory. A delete deactivates the
//! card's token in the token lists and sends the TokenStatusChanged (DEACTIVATED) it causes,
//! when the notification faults say (before the answer by default). 404s come in the two error
//! shapes Mastercard is known to use: the legacy routes answer `{status, reason, message}` (as a
//! third-party SRC client saw a card delete answer), the Credential Directory the `Errors`
//! array of the issuer-enrollment error page, so that the service's tolerant parsing is
//! exercised on both.

use super::enroll_api::{Detail, enroll_error, send, timestamp};
use super::faults::{NotificationTiming, Route};
use super::notifier::Notification;
use super::profiles::{
    CardKey, ProfileKey, SimCard, SimConsumer, SimProfile, masked_card, masked_consumer,
};
use super::state::{Answer, Incoming, State};
use super::{AxumState, Path, Request, incoming};
use crate::mastercard::processing::types::{
    CLICK_TO_PAY_TOKEN_REQUESTOR_ID, CLICK_TO_PAY_WALLET_NAME,
};
use crate::proto::v1::{
    NotificationIngestRequest, TokenStatus, TokenStatusChanged, notification_ingest_request::Event,
};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{delete, get};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// The lifecycle routes, under the Enroll API's base path.
pub fn routes() -> axum::Router<Arc<State>> {
    let base = super::ENROLL_PATH;
    type S = AxumState<Arc<State>>;
    axum::Router::new()
        .route(
            &format!("{base}/cards/{{id}}"),
            get(|AxumState(s): S, Path(id): Path<String>, r: Request| async move {
                get_card(s, incoming(r).await, id).await
            })
            .put(|AxumState(s): S, Path(id): Path<String>, r: Request| async move {
                update_card(s, incoming(r).await, id).await
            })
            .delete(|AxumState(s): S, Path(id): Path<String>, r: Request| async move {
                delete_card(s, incoming(r).await, id).await
            }),
        )
        .route(
            &format!("{base}/profiles/{{id}}"),
            get(|AxumState(s): S, Path(id): Path<String>, r: Request| async move {
                get_profile(s, incoming(r).await, id).await
            })
            .put(|AxumState(s): S, Path(id): Path<String>, r: Request| async move {
                update_profile(s, incoming(r).await, id).await
            }),
        )
        .route(
            &format!("{base}/profiles"),
            delete(|AxumState(s): S, r: Request| async move {
                delete_profile(s, incoming(r).await).await
            }),
        )
        .route(
            &format!("{base}/directories/{{directory}}/consumers/{{consumer}}"),
            get(
                |AxumState(s): S, Path((d, c)): Path<(String, String)>, r: Request| async move {
                    directory_consumer(s, incoming(r).await, d, c).await
                },
            )
            .put(
                |AxumState(s): S, Path((d, c)): Path<(String, String)>, r: Request| async move {
                    directory_consumer(s, incoming(r).await, d, c).await
                },
            )
            .delete(
                |AxumState(s): S, Path((d, c)): Path<(String, String)>, r: Request| async move {
                    directory_consumer(s, incoming(r).await, d, c).await
                },
            ),
        )
        .route(
            &format!(
                "{base}/directories/{{directory}}/consumers/{{consumer}}/credentials/{{credential}}"
            ),
            get(
                |AxumState(s): S,
                 Path((d, c, id)): Path<(String, String, String)>,
                 r: Request| async move {
                    directory_credential(s, incoming(r).await, d, c, id).await
                },
            )
            .put(
                |AxumState(s): S,
                 Path((d, c, id)): Path<(String, String, String)>,
                 r: Request| async move {
                    directory_credential(s, incoming(r).await, d, c, id).await
                },
            )
            .delete(
                |AxumState(s): S,
                 Path((d, c, id)): Path<(String, String, String)>,
                 r: Request| async move {
                    directory_credential(s, incoming(r).await, d, c, id).await
                },
            ),
        )
}

fn not_found_legacy(what: &str) -> Answer {
    Answer {
        status: StatusCode::NOT_FOUND,
        body: json!({"status": 404, "reason": "NOT_FOUND", "message": format!("{what} not found")}),
        src_correlation_id: None,
    }
}

fn not_found_directory(what: &str) -> Answer {
    Answer {
        status: StatusCode::NOT_FOUND,
        body: json!({"Errors": [{"Error": {
            "Source": "CREDENTIAL_DIRECTORY",
            "ReasonCode": "NOT_FOUND",
            "Description": format!("{what} not found"),
            "Recoverable": false,
            "Details": null
        }}]}),
        src_correlation_id: None,
    }
}

fn query(req: &Incoming) -> HashMap<String, String> {
    url::form_urlencoded::parse(req.uri.query().unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

/// The Enroll API's refusal of missing (`INVALID_ARGUMENT`) or unregistered (`INVALID_STATE`)
/// program ids, if any.
fn program_problem(
    state: &State,
    src_client_id: Option<&str>,
    service_id: Option<&str>,
) -> Option<Answer> {
    let (Some(client), Some(service)) = (src_client_id, service_id) else {
        let detail = Detail {
            reason: "CANNOT_BE_NULL",
            source: "srcClientId",
            message: "srcClientId and serviceId are required".into(),
        };
        return Some(enroll_error("INVALID_ARGUMENT", vec![detail], None));
    };
    let program = &state.keys.program;
    if client != program.src_client_id || service != program.service_id {
        let detail = Detail {
            reason: "INVALID_VALUE",
            source: "srcClientId",
            message: "srcClientId or serviceId is not registered".into(),
        };
        return Some(enroll_error("INVALID_STATE", vec![detail], None));
    }
    None
}

fn body_json(body: &[u8]) -> Result<Value, Answer> {
    serde_json::from_slice(body).map_err(|_| {
        let detail = Detail {
            reason: "INVALID_FORMAT",
            source: "body",
            message: "body is not JSON".into(),
        };
        enroll_error("INVALID_ARGUMENT", vec![detail], None)
    })
}

fn field<'a>(v: &'a Value, name: &str) -> Option<&'a str> {
    v.get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// The checks of a consumer update: an identity, an alpha-2 country, a language.
fn consumer_problem(consumer: &SimConsumer) -> Option<Answer> {
    let country_ok = consumer.country_code.len() == 2
        && consumer
            .country_code
            .chars()
            .all(|c| c.is_ascii_uppercase());
    if consumer.identity().is_some() && country_ok && !consumer.language_code.is_empty() {
        return None;
    }
    let detail = Detail {
        reason: "INVALID_VALUE",
        source: "consumer",
        message: "the consumer needs an e-mail address or mobile number, a country and a language"
            .into(),
    };
    Some(enroll_error("INVALID_ARGUMENT", vec![detail], None))
}

/// The TokenStatusChanged (DEACTIVATED) a deleted card causes.
fn deactivation(card: &SimCard) -> Notification {
    Notification {
        kind: "TokenStatusChanged",
        request: NotificationIngestRequest {
            notification_id: uuid::Uuid::new_v4().to_string(),
            sequence: 0,
            event_time: Some(timestamp(time::OffsetDateTime::now_utc())),
            event: Some(Event::TokenStatusChanged(TokenStatusChanged {
                card_contract_id: card.card_contract_id,
                token_unique_reference: card.token_unique_reference.clone(),
                token_requestor_id: CLICK_TO_PAY_TOKEN_REQUESTOR_ID.into(),
                wallet_name: CLICK_TO_PAY_WALLET_NAME.into(),
                status: TokenStatus::Deactivated as i32,
                reason: "STATUS_UPDATE".into(),
            })),
        },
    }
}

/// Deactivates the deleted cards' tokens in the token lists and, with `notify`, sends their
/// TokenStatusChanged as the notification faults say (before the answer by default).
async fn deactivate(state: &Arc<State>, cards: Vec<SimCard>, notify: bool) {
    {
        let mut registry = state.registry.lock().unwrap_or_else(|p| p.into_inner());
        for card in &cards {
            registry.set_status(&card.token_unique_reference, "Deactivated");
        }
    }
    if !notify {
        return;
    }
    let notifications: Vec<Notification> = cards.iter().map(deactivation).collect();
    let faults = state
        .faults
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .notifications
        .clone();
    match faults.timing {
        NotificationTiming::BeforeResponse => send(state, notifications, &faults).await,
        NotificationTiming::AfterResponse => {
            let state = state.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                send(&state, notifications, &faults).await;
            });
        }
    }
}

/// Deletes a card by its card contract id (the cardholder removing it at Click to Pay).
pub async fn delete_card_of(
    state: &Arc<State>,
    card_contract_id: i64,
    how: super::CardDeletion,
) -> bool {
    let removed = {
        let mut profiles = state.profiles.lock().unwrap_or_else(|p| p.into_inner());
        let id = profiles.all().iter().find_map(|p| {
            p.cards
                .iter()
                .find(|c| c.card_contract_id == card_contract_id)
                .map(|c| c.src_digital_card_id.clone())
        });
        id.and_then(|id| profiles.delete_card(CardKey::Digital(&id)))
    };
    match (removed, how) {
        (Some(_), super::CardDeletion::TokenKept) => true,
        (Some(card), how) => {
            deactivate(state, vec![card], how == super::CardDeletion::Notified).await;
            true
        }
        (None, _) => false,
    }
}

fn profiles(state: &State) -> std::sync::MutexGuard<'_, super::profiles::Profiles> {
    state.profiles.lock().unwrap_or_else(|p| p.into_inner())
}

async fn get_card(state: Arc<State>, req: Incoming, id: String) -> Response {
    let route = Route::LifecycleCards;
    if let Err(r) = state.prelude(route, &req, false).await {
        return r;
    }
    let card = profiles(&state).card(CardKey::Digital(&id)).cloned();
    let answer = match card {
        Some(card) => Answer::ok(json!({ "maskedCard": masked_card(&card) })),
        None => not_found_legacy("Card"),
    };
    state.respond(route, answer, false)
}

async fn update_card(state: Arc<State>, req: Incoming, id: String) -> Response {
    let route = Route::LifecycleCards;
    let body = match state.prelude(route, &req, false).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let answer = match body_json(&body) {
        Err(answer) => answer,
        Ok(body) => match program_problem(
            &state,
            field(&body, "srcClientId"),
            field(&body, "serviceId"),
        ) {
            Some(problem) => problem,
            None => match body
                .get("billingAddress")
                .filter(|a| field(a, "countryCode").is_some())
            {
                None => enroll_error(
                    "INVALID_ARGUMENT",
                    vec![Detail {
                        reason: "CANNOT_BE_NULL",
                        source: "billingAddress.countryCode",
                        message: "billingAddress.countryCode is required".into(),
                    }],
                    None,
                ),
                Some(address) => {
                    if profiles(&state).set_billing_address(CardKey::Digital(&id), address.clone())
                    {
                        Answer::ok(json!({ "srcCorrelationId": field(&body, "srcCorrelationId") }))
                    } else {
                        not_found_legacy("Card")
                    }
                }
            },
        },
    };
    state.respond_or_drop(route, answer, false).await
}

async fn delete_card(state: Arc<State>, req: Incoming, id: String) -> Response {
    let route = Route::LifecycleCards;
    if let Err(r) = state.prelude(route, &req, false).await {
        return r;
    }
    let q = query(&req);
    if let Some(problem) = program_problem(
        &state,
        q.get("srcClientId").map(String::as_str),
        q.get("serviceId").map(String::as_str),
    ) {
        return state.respond(route, problem, false);
    }
    let removed = profiles(&state).delete_card(CardKey::Digital(&id));
    let answer = match removed {
        Some(card) => {
            deactivate(&state, vec![card], true).await;
            Answer::ok(json!({ "srcCorrelationId": uuid::Uuid::new_v4().to_string() }))
        }
        None => not_found_legacy("Card"),
    };
    state.respond_or_drop(route, answer, false).await
}

fn legacy_profile(p: &SimProfile) -> Value {
    json!({
        "maskedConsumer": masked_consumer(p),
        "maskedCards": p.cards.iter().map(masked_card).collect::<Vec<_>>(),
    })
}

async fn get_profile(state: Arc<State>, req: Incoming, id: String) -> Response {
    let route = Route::LifecycleProfiles;
    if let Err(r) = state.prelude(route, &req, false).await {
        return r;
    }
    let profile = profiles(&state).profile(ProfileKey::Consumer(&id)).cloned();
    let answer = match profile {
        Some(p) => Answer::ok(legacy_profile(&p)),
        None => not_found_legacy("Consumer"),
    };
    state.respond(route, answer, false)
}

async fn update_profile(state: Arc<State>, req: Incoming, id: String) -> Response {
    let route = Route::LifecycleProfiles;
    let body = match state.prelude(route, &req, false).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let answer = match body_json(&body) {
        Err(answer) => answer,
        Ok(body) => match program_problem(
            &state,
            field(&body, "srcClientId"),
            field(&body, "serviceId"),
        ) {
            Some(problem) => problem,
            None => {
                let consumer =
                    SimConsumer::from_enroll(body.get("consumer").unwrap_or(&Value::Null));
                match consumer_problem(&consumer) {
                    Some(problem) => problem,
                    None if profiles(&state)
                        .update_consumer(ProfileKey::Consumer(&id), consumer) =>
                    {
                        Answer::ok(json!({ "srcCorrelationId": field(&body, "srcCorrelationId") }))
                    }
                    None => not_found_legacy("Consumer"),
                }
            }
        },
    };
    state.respond_or_drop(route, answer, false).await
}

async fn delete_profile(state: Arc<State>, req: Incoming) -> Response {
    let route = Route::LifecycleProfiles;
    if let Err(r) = state.prelude(route, &req, false).await {
        return r;
    }
    let q = query(&req);
    if let Some(problem) = program_problem(
        &state,
        q.get("srcClientId").map(String::as_str),
        q.get("serviceId").map(String::as_str),
    ) {
        return state.respond(route, problem, false);
    }
    let Some(consumer) = q.get("srcConsumerId") else {
        let detail = Detail {
            reason: "CANNOT_BE_NULL",
            source: "srcConsumerId",
            message: "srcConsumerId is required".into(),
        };
        return state.respond(
            route,
            enroll_error("INVALID_ARGUMENT", vec![detail], None),
            false,
        );
    };
    let removed = profiles(&state).delete(ProfileKey::Consumer(consumer));
    let answer = match removed {
        Some(profile) => {
            deactivate(&state, profile.cards, true).await;
            Answer::ok(json!({ "srcCorrelationId": uuid::Uuid::new_v4().to_string() }))
        }
        None => not_found_legacy("Consumer"),
    };
    state.respond_or_drop(route, answer, false).await
}

/// `GET`, `PUT` and `DELETE …/directories/{d}/consumers/{c}`.
async fn directory_consumer(
    state: Arc<State>,
    req: Incoming,
    directory: String,
    consumer: String,
) -> Response {
    let route = Route::DirectoryConsumers;
    let body = match state.prelude(route, &req, false).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let key = ProfileKey::Directory(&directory, &consumer);
    let answer = if directory != super::DIRECTORY_ID {
        not_found_directory("Directory")
    } else if req.method == axum::http::Method::GET {
        match profiles(&state).profile(key).cloned() {
            Some(p) => Answer::ok(json!({
                "externalConsumerId": consumer,
                "maskedConsumer": masked_consumer(&p),
                "credentials": p.cards.iter().map(|c| json!({
                    "externalCredentialId": c.external_credential_id,
                    "maskedCard": masked_card(c),
                })).collect::<Vec<_>>(),
            })),
            None => not_found_directory("Consumer"),
        }
    } else if req.method == axum::http::Method::PUT {
        match body_json(&body) {
            Err(answer) => answer,
            Ok(body) => {
                let update =
                    SimConsumer::from_directory(body.get("consumer").unwrap_or(&Value::Null));
                match consumer_problem(&update) {
                    Some(problem) => problem,
                    None if profiles(&state).update_consumer(key, update) => Answer::ok(json!({})),
                    None => not_found_directory("Consumer"),
                }
            }
        }
    } else {
        let removed = profiles(&state).delete(key);
        match removed {
            Some(profile) => {
                deactivate(&state, profile.cards, true).await;
                Answer::ok(json!({}))
            }
            None => not_found_directory("Consumer"),
        }
    };
    state.respond_or_drop(route, answer, false).await
}

/// `GET`, `PUT` and `DELETE …/consumers/{c}/credentials/{id}`.
async fn directory_credential(
    state: Arc<State>,
    req: Incoming,
    directory: String,
    consumer: String,
    credential: String,
) -> Response {
    let route = Route::DirectoryCredentials;
    let body = match state.prelude(route, &req, false).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let key = CardKey::Credential(&directory, &consumer, &credential);
    let answer = if directory != super::DIRECTORY_ID {
        not_found_directory("Directory")
    } else if req.method == axum::http::Method::GET {
        match profiles(&state).card(key).cloned() {
            Some(card) => Answer::ok(json!({
                "externalCredentialId": credential,
                "maskedCard": masked_card(&card),
            })),
            None => not_found_directory("Credential"),
        }
    } else if req.method == axum::http::Method::PUT {
        match body_json(&body) {
            Err(answer) => answer,
            Ok(body) => match body
                .get("billingAddress")
                .filter(|a| field(a, "countryCode").is_some())
            {
                None => enroll_error(
                    "INVALID_ARGUMENT",
                    vec![Detail {
                        reason: "CANNOT_BE_NULL",
                        source: "billingAddress.countryCode",
                        message: "billingAddress.countryCode is required".into(),
                    }],
                    None,
                ),
                Some(address) if profiles(&state).set_billing_address(key, address.clone()) => {
                    Answer::ok(json!({}))
                }
                Some(_) => not_found_directory("Credential"),
            },
        }
    } else {
        let removed = profiles(&state).delete_card(key);
        match removed {
            Some(card) => {
                deactivate(&state, vec![card], true).await;
                Answer::ok(json!({}))
            }
            None => not_found_directory("Credential"),
        }
    };
    state.respond_or_drop(route, answer, false).await
}
