//! Processing Digital, simulated: `POST /cards/searches` builds the card object from the CMS and
//! encrypts it with the certificate sent in `Enroll-Client-Encryption-Key`; the token lists.

use super::faults::Route;
use super::gateway::mastercard_error;
use super::state::{Answer, Incoming, State};
use crate::mastercard::jwe::JweEncryptor;
use crate::mastercard::keys::Certificate;
use crate::mastercard::processing::ENROLL_KEY_HEADER;
use axum::http::StatusCode;
use axum::response::Response;
use base64::Engine as _;
use serde::Deserialize;
use std::sync::Arc;

fn processing_error(status: StatusCode, code: &str, description: &str) -> Answer {
    Answer {
        status,
        body: mastercard_error("MASTERCARD PROCESSING", code, description, false),
        src_correlation_id: None,
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SearchBody {
    enroll_type: Option<String>,
    #[serde(default)]
    synchronous_request: serde_json::Map<String, serde_json::Value>,
    card_contract_id: Option<i64>,
}

/// `POST /cards/searches`.
pub async fn search(state: &State, req: Incoming) -> Response {
    let body = match state.prelude(Route::Searches, &req, true).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let answer = search_answer(state, &req, &body);
    state.respond(Route::Searches, answer, true)
}

fn search_answer(state: &State, req: &Incoming, body: &[u8]) -> Answer {
    let Ok(search) = serde_json::from_slice::<SearchBody>(body) else {
        return processing_error(
            StatusCode::BAD_REQUEST,
            "REQUEST_VALIDATION",
            "Request body is not a valid card search",
        );
    };
    if search.enroll_type.as_deref() != Some("SYNCHRONOUS") {
        return processing_error(
            StatusCode::BAD_REQUEST,
            "REQUEST_VALIDATION",
            "Invalid field enrollType: the simulator supports SYNCHRONOUS",
        );
    }
    let Some(card_contract_id) = search.card_contract_id else {
        return processing_error(
            StatusCode::BAD_REQUEST,
            "REQUEST_VALIDATION",
            "Invalid field cardContractId: must not be null",
        );
    };
    let der = req
        .headers
        .get(ENROLL_KEY_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|b64| {
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .ok()
        });
    let certificate = der.as_deref().and_then(|der| {
        let known = state
            .card_encryptors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(der)
            .cloned();
        match known {
            Some(encryptor) => Some(Ok(encryptor)),
            None => Certificate::from_pem_or_der(der).ok().map(Err),
        }
    });
    let Some(certificate) = certificate else {
        return processing_error(
            StatusCode::BAD_REQUEST,
            "REQUEST_VALIDATION",
            "Header Enroll-Client-Encryption-Key must be a base64 DER certificate",
        );
    };
    // As the use case says, the card's status is not checked here: that happens at tokenization.
    let Some(card) = state.cms.get(card_contract_id) else {
        return processing_error(
            StatusCode::NOT_FOUND,
            "CARD_CONTRACT_DOES_NOT_EXIST",
            "Card contract does not exist",
        );
    };
    let mut object = serde_json::Map::new();
    object.insert("primaryAccountNumber".into(), card.pan.clone().into());
    object.insert(
        "panExpirationMonth".into(),
        card.expiry_month.clone().into(),
    );
    object.insert("panExpirationYear".into(), card.expiry_year.clone().into());
    for field in ["cardholderFullName", "billingAddress"] {
        if let Some(value) = search.synchronous_request.get(field) {
            object.insert(field.into(), value.clone());
        }
    }
    let encryptor = match certificate {
        Ok(known) => Some(known),
        Err(certificate) => certificate
            .public_key()
            .ok()
            .and_then(|k| JweEncryptor::new(&k).ok())
            .map(|e| {
                let e = Arc::new(e.a128gcm());
                let mut cache = state
                    .card_encryptors
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                if cache.len() >= 16 {
                    cache.clear();
                }
                if let Some(der) = der {
                    cache.insert(der, e.clone());
                }
                e
            }),
    };
    let encrypted = encryptor.and_then(|e| {
        serde_json::to_vec(&object)
            .ok()
            .and_then(|plain| e.encrypt(&plain).ok())
    });
    match encrypted {
        Some(card_data) => Answer::ok(serde_json::json!({ "cardData": card_data })),
        None => processing_error(
            StatusCode::BAD_REQUEST,
            "REQUEST_VALIDATION",
            "The Enroll-Client-Encryption-Key certificate has no usable RSA key",
        ),
    }
}

/// `GET /cards/{cardContractId}/tokens`.
pub async fn card_tokens(state: &State, req: Incoming, card_contract_id: String) -> Response {
    if let Err(r) = state.prelude(Route::CardTokens, &req, true).await {
        return r;
    }
    let answer = match card_contract_id
        .parse::<i64>()
        .ok()
        .filter(|id| state.cms.get(*id).is_some())
    {
        None => processing_error(
            StatusCode::NOT_FOUND,
            "CARD_CONTRACT_DOES_NOT_EXIST",
            "Card contract does not exist",
        ),
        Some(id) => {
            let tokens = state
                .registry
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .of_card(id);
            Answer::ok(
                serde_json::json!({ "cardTokens": tokens.iter().map(|t| t.to_json()).collect::<Vec<_>>() }),
            )
        }
    };
    state.respond(Route::CardTokens, answer, true)
}

/// `GET /clients/{clientId}/tokens[?status=…]`.
pub async fn client_tokens(state: &State, req: Incoming, client_id: String) -> Response {
    if let Err(r) = state.prelude(Route::ClientTokens, &req, true).await {
        return r;
    }
    let status = req.uri.query().and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "status")
            .map(|(_, v)| v.into_owned())
    });
    let answer = match client_id
        .parse::<i64>()
        .ok()
        .filter(|id| state.cms.of_client(*id).next().is_some())
    {
        None => processing_error(
            StatusCode::NOT_FOUND,
            "CLIENT_DOES_NOT_EXIST",
            "Client does not exist",
        ),
        Some(id) => {
            let tokens = state
                .registry
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .of_client(id, status.as_deref());
            Answer::ok(
                serde_json::json!({ "clientTokens": tokens.iter().map(|t| t.to_json()).collect::<Vec<_>>() }),
            )
        }
    };
    state.respond(Route::ClientTokens, answer, true)
}
