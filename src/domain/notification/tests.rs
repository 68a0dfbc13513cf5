//! The dedup hash is stored in the markers (Redis keeps them 72 h): its bytes must not change
//! from one version to the next, or a resend across an upgrade would read as a conflict.

use super::*;
use proptest::prelude::*;

/// The first implementation, kept as the oracle of the faster one.
fn content_hash_v1(e: &TokenEvent) -> String {
    let kind = match e.kind {
        TokenEventKind::Authorization(d) => format!("tar:{d:?}"),
        TokenEventKind::Complete => "tcn".to_owned(),
        TokenEventKind::StatusChanged(s) => format!("status:{s:?}"),
    };
    let mut canonical = String::from("c2p-notification-v1");
    for field in [
        e.card_contract_id.get().to_string(),
        e.event_at_ms.to_string(),
        kind,
        e.token_unique_reference.clone(),
        e.token_requestor_id.clone(),
        e.wallet_name.clone(),
    ] {
        canonical.push_str(&format!("|{}:{field}", field.len()));
    }
    hex::encode(openssl::sha::sha256(canonical.as_bytes()))
}

fn event(
    card: i64,
    at: i64,
    kind: TokenEventKind,
    tur: &str,
    trid: &str,
    wallet: &str,
) -> TokenEvent {
    TokenEvent {
        notification_id: "n-1".into(),
        event_at_ms: at,
        card_contract_id: CardContractId::new(card).expect("a valid card id"),
        token_unique_reference: tur.into(),
        token_requestor_id: trid.into(),
        wallet_name: wallet.into(),
        kind,
    }
}

#[test]
fn the_hash_of_a_known_event_is_the_one_stored_by_earlier_versions() {
    let e = event(
        70001,
        1_767_225_600_123,
        TokenEventKind::StatusChanged(TokenStatus::Suspended),
        "DM4MMC0000000000000000000001",
        CLICK_TO_PAY_TOKEN_REQUESTOR_ID,
        CLICK_TO_PAY_WALLET_NAME,
    );
    assert_eq!(e.content_hash(), content_hash_v1(&e));
    // By coreutils, of the canonical form written out (one line):
    // printf %s 'c2p-notification-v1|5:70001|13:1767225600123|16:status:Suspended|
    //   28:DM4MMC0000000000000000000001|11:50123197928|18:MDES for Merchants' | sha256sum
    assert_eq!(e.content_hash(), GOLDEN);
}

const GOLDEN: &str = "c389dbd7f158c3f08635fa5d27df1c4c427744ac18b63d375c704ca3ca9bea21";

fn kinds() -> impl Strategy<Value = TokenEventKind> {
    prop_oneof![
        Just(TokenEventKind::Complete),
        prop_oneof![
            Just(TokenizationDecision::Approved),
            Just(TokenizationDecision::Declined),
            Just(TokenizationDecision::RequireAdditionalAuthentication),
        ]
        .prop_map(TokenEventKind::Authorization),
        prop_oneof![
            Just(TokenStatus::Pending),
            Just(TokenStatus::Active),
            Just(TokenStatus::Suspended),
            Just(TokenStatus::Deactivated),
            Just(TokenStatus::Inactive),
        ]
        .prop_map(TokenEventKind::StatusChanged),
    ]
}

proptest! {
    #[test]
    fn the_hash_is_the_first_implementations_for_any_event(
        card in 1i64..=999_999_999_999,
        at in any::<i64>(),
        kind in kinds(),
        tur in ".{0,40}",
        trid in "[0-9|:]{0,12}",
        wallet in ".{0,24}",
    ) {
        let e = event(card, at, kind, &tur, &trid, &wallet);
        prop_assert_eq!(e.content_hash(), content_hash_v1(&e));
    }
}
