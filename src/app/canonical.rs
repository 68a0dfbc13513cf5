//! The canonical form of an `EnrollCard` request that its idempotency fingerprint is computed
//! from: explicit, versioned, and independent of any wire type, so that a refactor (or a
//! change of Mastercard's types) cannot change the fingerprints of stored keys unnoticed.
//!
//! Version 1: the JSON of [`CanonicalV1`] (fields in declaration order) after these rules:
//! the program "default" is the empty program; text fields are trimmed and an empty one is
//! absent (the validation already did both); the e-mail and the `srcCorrelationId` are in lower
//! case; caller, idempotency key and `validate_only` are not part of it. A new version changes
//! `version` and is documented here and in the proto's `EnrollCardRequest` comment.

use super::EnrollCommand;
use crate::domain::DEFAULT_PROGRAM;
use serde::Serialize;

/// The version of the canonical form, part of the fingerprinted bytes.
pub const CANONICAL_VERSION: u32 = 1;

#[derive(Serialize)]
struct CanonicalV1<'a> {
    version: u32,
    card_contract_id: i64,
    program: &'a str,
    email: Option<String>,
    mobile_country_code: Option<&'a str>,
    mobile_number: Option<&'a str>,
    first_name: Option<&'a str>,
    last_name: Option<&'a str>,
    country_code: &'a str,
    language_code: &'a str,
    cardholder_full_name: Option<&'a str>,
    address: Option<[Option<&'a str>; 7]>,
    src_correlation_id: Option<String>,
}

/// The bytes the fingerprint of `cmd` is computed from.
pub fn canonical_bytes(cmd: &EnrollCommand) -> Result<Vec<u8>, String> {
    let c = &cmd.consumer;
    let text = |s: &'_ Option<String>| -> Option<String> {
        s.as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let program = if cmd.program == DEFAULT_PROGRAM {
        ""
    } else {
        cmd.program.as_str()
    };
    let form = CanonicalV1 {
        version: CANONICAL_VERSION,
        card_contract_id: cmd.card_contract_id.get(),
        program,
        email: text(&c.email).map(|e| e.to_lowercase()),
        mobile_country_code: c.mobile.as_ref().map(|(cc, _)| cc.as_str()),
        mobile_number: c.mobile.as_ref().map(|(_, n)| n.as_str()),
        first_name: c.first_name.as_deref(),
        last_name: c.last_name.as_deref(),
        country_code: &c.country_code,
        language_code: &c.language_code,
        cardholder_full_name: cmd.cardholder_full_name.as_deref(),
        address: cmd.billing_address.as_ref().map(|a| {
            [
                a.line1.as_deref(),
                a.line2.as_deref(),
                a.line3.as_deref(),
                a.city.as_deref(),
                a.state.as_deref(),
                a.zip.as_deref(),
                a.country_code.as_deref(),
            ]
        }),
        src_correlation_id: text(&cmd.src_correlation_id).map(|id| id.to_lowercase()),
    };
    serde_json::to_vec(&form).map_err(|e| format!("request fingerprint: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::ports::Address as BillingAddress;
    use crate::app::{ConsumerInput, FingerprintKey};
    use crate::domain::CardContractId;

    fn command() -> EnrollCommand {
        EnrollCommand {
            caller: "spiffe://bank.example/ns/payments/sa/app".into(),
            idempotency_key: "key-1".into(),
            card_contract_id: CardContractId::new(70001).unwrap(),
            program: String::new(),
            consumer: ConsumerInput {
                email: Some("Jane.Doe@Example.com".into()),
                mobile: Some(("1".into(), "5551234567".into())),
                first_name: Some("Jane".into()),
                last_name: Some("Doe".into()),
                country_code: "US".into(),
                language_code: "en_US".into(),
            },
            cardholder_full_name: Some("Jane Doe".into()),
            billing_address: Some(BillingAddress {
                line1: Some("1 Main St".into()),
                line2: None,
                line3: None,
                city: Some("Springfield".into()),
                state: Some("IL".into()),
                zip: Some("62701".into()),
                country_code: Some("US".into()),
            }),
            src_correlation_id: Some("D03D5F0D-4AC1-46DE-946A-82AD388A30E9".into()),
        }
    }

    #[test]
    fn the_canonical_form_and_fingerprint_of_a_fixed_request_are_pinned() {
        let bytes = canonical_bytes(&command()).unwrap();
        assert_eq!(
            String::from_utf8(bytes.clone()).unwrap(),
            r#"{"version":1,"card_contract_id":70001,"program":"","email":"jane.doe@example.com","mobile_country_code":"1","mobile_number":"5551234567","first_name":"Jane","last_name":"Doe","country_code":"US","language_code":"en_US","cardholder_full_name":"Jane Doe","address":["1 Main St",null,null,"Springfield","IL","62701","US"],"src_correlation_id":"d03d5f0d-4ac1-46de-946a-82ad388a30e9"}"#
        );
        // HMAC-SHA256 under a fixed key, checked with `openssl dgst -sha256 -mac HMAC -macopt hexkey:07…07`: a change
        // here breaks the replay of every stored key, so it must be a new version.
        let key = FingerprintKey::from_bytes(vec![7; 32]).unwrap();
        assert_eq!(
            key.fingerprint(&bytes),
            "2b3580b3f8f42a2fced0a549fa5c551e6cda59694cdd6753e2f7f2caad5cb5e2"
        );
    }

    #[test]
    fn equal_requests_after_normalisation_share_a_fingerprint() {
        let a = command();
        let mut b = command();
        b.program = DEFAULT_PROGRAM.into();
        b.consumer.email = Some("jane.doe@EXAMPLE.COM".into());
        b.src_correlation_id = Some("d03d5f0d-4ac1-46de-946a-82ad388a30e9".into());
        b.caller = "someone else".into();
        b.idempotency_key = "another key".into();
        assert_eq!(canonical_bytes(&a), canonical_bytes(&b));
        let mut c = command();
        c.consumer.first_name = Some("Janet".into());
        assert_ne!(canonical_bytes(&a), canonical_bytes(&c));
    }
}
