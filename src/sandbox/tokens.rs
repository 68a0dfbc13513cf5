//! Tokens the simulated tokenization created, and enrollments by `srcCorrelationId` (the same id
//! twice gives the same enrollment and no second token).

use std::collections::HashMap;

/// A token as the token-list endpoints show it.
#[derive(Debug, Clone)]
pub struct SimToken {
    /// The card.
    pub card_contract_id: i64,
    /// The card's client.
    pub client_id: i64,
    /// Masked PAN.
    pub card_contract_number: String,
    /// MDES token unique reference.
    pub token_unique_reference: String,
    /// `Active`, `Suspended`, ...
    pub status: String,
    /// Token requestor.
    pub token_requestor_id: String,
    /// Wallet.
    pub wallet_name: String,
    /// ISO-8601.
    pub created: String,
}

impl SimToken {
    /// The token-list JSON of this token.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "cardContractId": self.card_contract_id,
            "cardContractNumber": self.card_contract_number,
            "clientId": self.client_id,
            "clientShortName": "SANDBOX",
            "deviceName": "Click to Pay",
            "deviceType": "21",
            "panUniqueReference": format!("FM4MMC{}", &self.token_unique_reference[6..]),
            "tokenCreationDate": self.created,
            "tokenExpiryDate": "3012",
            "tokenNumber": "5204730000000000",
            "tokenRequestorId": self.token_requestor_id,
            "tokenStatus": self.status,
            "tokenType": "C",
            "tokenUniqueReference": self.token_unique_reference,
            "walletName": self.wallet_name,
        })
    }
}

/// A finished `POST /cards`, replayed for the same `srcCorrelationId`.
#[derive(Debug, Clone)]
pub struct StoredEnrollment {
    /// HTTP status answered.
    pub status: u16,
    /// The body answered.
    pub body: serde_json::Value,
}

/// Tokens and enrollments.
#[derive(Debug, Default)]
pub struct Registry {
    tokens: Vec<SimToken>,
    enrollments: HashMap<String, StoredEnrollment>,
}

impl Registry {
    /// The answer given before for `src_correlation_id`.
    pub fn enrollment(&self, src_correlation_id: &str) -> Option<StoredEnrollment> {
        self.enrollments.get(src_correlation_id).cloned()
    }

    /// Remembers the answer for `src_correlation_id`.
    pub fn remember(&mut self, src_correlation_id: String, answer: StoredEnrollment) {
        self.enrollments.insert(src_correlation_id, answer);
    }

    /// Adds a token.
    pub fn add_token(&mut self, token: SimToken) {
        self.tokens.push(token);
    }

    /// Tokens of a card.
    pub fn of_card(&self, card_contract_id: i64) -> Vec<SimToken> {
        self.tokens
            .iter()
            .filter(|t| t.card_contract_id == card_contract_id)
            .cloned()
            .collect()
    }

    /// Tokens of a client, optionally only those with `status` (any case).
    pub fn of_client(&self, client_id: i64, status: Option<&str>) -> Vec<SimToken> {
        self.tokens
            .iter()
            .filter(|t| t.client_id == client_id)
            .filter(|t| status.is_none_or(|s| t.status.eq_ignore_ascii_case(s)))
            .cloned()
            .collect()
    }

    /// Sets the status of a token (tests of lifecycle changes).
    pub fn set_status(&mut self, token_unique_reference: &str, status: &str) -> bool {
        match self
            .tokens
            .iter_mut()
            .find(|t| t.token_unique_reference == token_unique_reference)
        {
            Some(t) => {
                t.status = status.to_owned();
                true
            }
            None => false,
        }
    }
}
