//! The Processing Digital client: `POST /cards/searches`, `GET /cards/{id}/tokens`,
//! `GET /clients/{id}/tokens`.

pub mod types;

use super::error::{Api, UpstreamError, UpstreamErrorKind};
use super::http::{ApiClient, CallSpec, Idempotency, UpstreamResponse};
use super::keys::Certificate;
use base64::Engine as _;
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use types::{CardSearchRequest, CardSearchResponse, SynchronousRequest, TokenInfo, TokenList};

/// The header carrying the Enroll client encryption certificate.
pub const ENROLL_KEY_HEADER: &str = "Enroll-Client-Encryption-Key";

/// The Processing Digital API.
#[derive(Debug)]
pub struct ProcessingClient {
    http: ApiClient,
}

impl ProcessingClient {
    /// Over a client built for [`Api::Processing`].
    pub fn new(http: ApiClient) -> Self {
        debug_assert_eq!(http.api(), Api::Processing);
        Self { http }
    }

    /// The underlying HTTP client (breaker state).
    pub fn http(&self) -> &ApiClient {
        &self.http
    }

    /// `POST /cards/searches` with `enrollType=SYNCHRONOUS`: the card object encrypted with
    /// `enroll_certificate` (sent as base64 DER on one line in `Enroll-Client-Encryption-Key`).
    pub async fn search_card(
        &self,
        card_contract_id: i64,
        synchronous_request: SynchronousRequest,
        enroll_certificate: &Certificate,
        deadline: Option<Instant>,
    ) -> Result<CardSearchResponse, UpstreamError> {
        const OP: &str = "searchCard";
        let der = enroll_certificate.to_der().map_err(|e| {
            self.http.error(
                OP,
                UpstreamErrorKind::Request(e.to_string()),
                Default::default(),
                0,
            )
        })?;
        let body = CardSearchRequest {
            enroll_type: "SYNCHRONOUS",
            synchronous_request,
            card_contract_id,
        };
        let body = self.http.json_body(OP, &body)?;
        let response = self
            .http
            .call(
                CallSpec {
                    operation: OP,
                    method: reqwest::Method::POST,
                    path: "/cards/searches".into(),
                    body: Some(body),
                    headers: vec![(
                        ENROLL_KEY_HEADER,
                        base64::engine::general_purpose::STANDARD.encode(der),
                    )],
                    // A search changes nothing upstream, so retrying it is safe.
                    idempotency: Idempotency::Safe,
                    absent_is_answer: false,
                },
                deadline,
            )
            .await?;
        self.decode(OP, response)
    }

    /// `GET /cards/{cardContractId}/tokens`.
    pub async fn card_tokens(
        &self,
        card_contract_id: i64,
        deadline: Option<Instant>,
    ) -> Result<Vec<TokenInfo>, UpstreamError> {
        Ok(self
            .card_tokens_observed(card_contract_id, deadline)
            .await?
            .0)
    }

    /// `GET /cards/{cardContractId}/tokens`, and when Mastercard answered (its `Date` header,
    /// Unix ms): the time that orders this observation against notifications, which carry
    /// Mastercard's times too.
    pub async fn card_tokens_observed(
        &self,
        card_contract_id: i64,
        deadline: Option<Instant>,
    ) -> Result<(Vec<TokenInfo>, Option<i64>), UpstreamError> {
        self.tokens(
            "getTokensByCard",
            format!("/cards/{card_contract_id}/tokens"),
            deadline,
        )
        .await
    }

    /// `GET /clients/{clientId}/tokens`, optionally filtered by `status`.
    pub async fn client_tokens(
        &self,
        client_id: i64,
        status: Option<&str>,
        deadline: Option<Instant>,
    ) -> Result<Vec<TokenInfo>, UpstreamError> {
        let mut path = format!("/clients/{client_id}/tokens");
        if let Some(status) = status {
            path.push_str("?status=");
            path.push_str(&super::oauth1::pct(status));
        }
        Ok(self.tokens("getTokensByClient", path, deadline).await?.0)
    }

    async fn tokens(
        &self,
        op: &'static str,
        path: String,
        deadline: Option<Instant>,
    ) -> Result<(Vec<TokenInfo>, Option<i64>), UpstreamError> {
        let response = self
            .http
            .call(
                CallSpec {
                    operation: op,
                    method: reqwest::Method::GET,
                    path,
                    body: None,
                    headers: Vec::new(),
                    idempotency: Idempotency::Safe,
                    absent_is_answer: false,
                },
                deadline,
            )
            .await?;
        let date_ms = response.date_ms;
        let list: TokenList = self.decode(op, response)?;
        Ok((list.tokens, date_ms))
    }

    fn decode<T: DeserializeOwned>(
        &self,
        op: &'static str,
        response: UpstreamResponse,
    ) -> Result<T, UpstreamError> {
        decode_json(&self.http, op, response)
    }
}

/// Parses a 2xx body; the error names the JSON problem (category and position), not the body.
pub(crate) fn decode_json<T: DeserializeOwned>(
    http: &ApiClient,
    op: &'static str,
    response: UpstreamResponse,
) -> Result<T, UpstreamError> {
    match serde_json::from_slice(&response.body) {
        Ok(value) => {
            http.record_answer(op, &response, "ok");
            Ok(value)
        }
        Err(e) => {
            http.record_answer(op, &response, "decode");
            let error = http.error(
                op,
                UpstreamErrorKind::Decode(format!(
                    "{:?} error at line {} column {}",
                    e.classify(),
                    e.line(),
                    e.column()
                )),
                response.correlation.clone(),
                response.attempts,
            );
            super::http::log_failure(&error);
            Err(error)
        }
    }
}
