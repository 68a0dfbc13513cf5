//! The Click to Pay Enroll API client: `POST /cards` (operation `putCard`).

pub mod types;

use super::error::{Api, UpstreamError};
use super::http::{ApiClient, CallSpec, Idempotency};
use super::processing::decode_json;
use tokio::time::Instant;
use types::{EnrollCardRequest, EnrollCardResponse};

/// The header naming the client: the consumer key's part before `!`, at most 48 characters.
pub const CLIENT_ID_HEADER: &str = "x-openapi-clientid";

/// `x-openapi-clientid` for a consumer key.
pub fn openapi_client_id(consumer_key: &str) -> String {
    let before_bang = consumer_key.split('!').next().unwrap_or(consumer_key);
    before_bang.chars().take(48).collect()
}

/// The Enroll API.
#[derive(Debug)]
pub struct EnrollClient {
    http: ApiClient,
    client_id: String,
}

impl EnrollClient {
    /// Over a client built for [`Api::Enroll`].
    pub fn new(http: ApiClient) -> Self {
        debug_assert_eq!(http.api(), Api::Enroll);
        let client_id = openapi_client_id(http.consumer_key());
        Self { http, client_id }
    }

    /// The underlying HTTP client (breaker state; the lifecycle calls share it).
    pub fn http(&self) -> &ApiClient {
        &self.http
    }

    /// `x-openapi-clientid`.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// `POST /cards`. Not retried once it may have reached Mastercard: the enrollment flow
    /// resumes it with the same `srcCorrelationId` instead.
    pub async fn enroll_card(
        &self,
        request: &EnrollCardRequest,
        deadline: Option<Instant>,
    ) -> Result<EnrollCardResponse, UpstreamError> {
        const OP: &str = "putCard";
        let body = self.http.json_body(OP, request)?;
        let response = self
            .http
            .call(
                CallSpec {
                    operation: OP,
                    method: reqwest::Method::POST,
                    path: "/cards".into(),
                    body: Some(body),
                    headers: vec![(CLIENT_ID_HEADER, self.client_id.clone())],
                    idempotency: Idempotency::Unsafe,
                    absent_is_answer: false,
                },
                deadline,
            )
            .await?;
        decode_json(&self.http, OP, response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_id_is_the_consumer_key_before_the_bang_at_most_48_chars() {
        let long = "A".repeat(60);
        assert_eq!(openapi_client_id(&format!("{long}!1234")), "A".repeat(48));
        assert_eq!(openapi_client_id("short!abc"), "short");
        assert_eq!(openapi_client_id("nobang"), "nobang");
    }
}
