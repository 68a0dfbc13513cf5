//! A batch of notifications (two or more: one alone goes to the script, in one round trip
//! instead of two) merged in Rust for the Redis store's ingest path: each
//! notification's record is read first, merged here (`domain::merge`, the original the Lua
//! `apply_notification` twins), and written by `scripts::WRITE_MERGED` only if the stored
//! record is still, byte for byte, the one it was merged onto (compare and set). Merging here
//! instead of in Lua takes the JSON decode/encode and the merge off Redis' one thread, which was
//! ~80% of its time per notification.
//!
//! What cannot be planned here (a record that does not parse, a notification id repeated within
//! the batch, a card missing from the read, a merged record holding a number cjson would round) goes to the Lua script, as does every write whose
//! compare failed (another writer came between) and, after it, every later notification of that
//! card: the script applies them in the batch's order, so each card's notifications still apply
//! in the order given.
//!
//! The record is rewritten from `EnrollmentRecord`: a field a newer version added to the stored
//! JSON is not kept (the Lua merge kept it), as the enrollment flow's own writes do not keep it.
//! A rolling upgrade that adds a record field must tolerate its loss until every replica runs
//! the new version.

use crate::domain::{CardContractId, EnrollmentRecord, Merge, TokenEvent, merge};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// One planned write: the notification at `index` of the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Entry {
    pub index: usize,
    /// The stored record it was merged onto, as read ("" for none). Shared, not copied: the
    /// same JSON is the next entry's `expected` and the card's `raw`.
    pub expected: Arc<str>,
    /// The record to write ("" when the notification changes nothing: stale).
    pub new: Arc<str>,
}

/// The writes to try, and the notifications (by index) left to the Lua script.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Plan {
    pub entries: Vec<Entry>,
    pub to_script: Vec<usize>,
}

// Lives only while one batch is planned, one per card: the size does not matter.
#[allow(clippy::large_enum_variant)]
enum Card {
    /// As read (or as this batch's planned writes left it).
    Known {
        raw: Option<Arc<str>>,
        record: Option<EnrollmentRecord>,
    },
    /// Its notifications from here on go to the script.
    Script,
}

/// Plans `events` (in order) over the records read for their cards (`stored`: the JSON, or
/// `None` for no record) with the store's clock at `now_ms`.
pub(super) fn plan(
    events: &[&TokenEvent],
    stored: HashMap<CardContractId, Option<String>>,
    now_ms: i64,
) -> Plan {
    let mut cards: HashMap<CardContractId, Card> = stored
        .into_iter()
        .map(|(card, raw)| {
            let state = match raw {
                None => Card::Known {
                    raw: None,
                    record: None,
                },
                Some(json) => match serde_json::from_str::<EnrollmentRecord>(&json) {
                    Ok(record) => Card::Known {
                        raw: Some(json.into()),
                        record: Some(record),
                    },
                    // The script sets an unreadable record aside (`settle`).
                    Err(_) => Card::Script,
                },
            };
            (card, state)
        })
        .collect();
    let mut seen: HashSet<(CardContractId, &str)> = HashSet::with_capacity(events.len());
    let mut plan = Plan::default();
    for (index, event) in events.iter().enumerate() {
        let card = event.card_contract_id;
        let state = cards.entry(card).or_insert(Card::Script);
        // A repeat within the batch is the marker's business: the script decides it.
        if !seen.insert((card, event.notification_id.as_str())) {
            *state = Card::Script;
        }
        let Card::Known { raw, record } = state else {
            plan.to_script.push(index);
            continue;
        };
        let expected = raw.clone().unwrap_or_else(|| Arc::from(""));
        match merge(record.as_ref(), event) {
            Merge::Stale => plan.entries.push(Entry {
                index,
                expected,
                new: Arc::from(""),
            }),
            Merge::Applied(merged) => {
                let merged = merged.stamped(record.as_ref(), now_ms);
                // A number the Lua scripts would round when they next read the record: the
                // script refuses it (its guard, with its message).
                let json = match merged.unstorable_time() {
                    None => serde_json::to_string(&merged).ok().map(Arc::<str>::from),
                    Some(_) => None,
                };
                match json {
                    Some(json) => {
                        plan.entries.push(Entry {
                            index,
                            expected,
                            new: json.clone(),
                        });
                        *raw = Some(json);
                        *record = Some(merged);
                    }
                    None => {
                        *state = Card::Script;
                        plan.to_script.push(index);
                    }
                }
            }
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{TokenEventKind, TokenStatus};

    fn card(id: i64) -> CardContractId {
        CardContractId::new(id).unwrap()
    }

    fn event(id: &str, c: i64, at_ms: i64, status: TokenStatus) -> TokenEvent {
        TokenEvent {
            notification_id: id.into(),
            event_at_ms: at_ms,
            card_contract_id: card(c),
            token_unique_reference: format!("DM4MMC{c:014}"),
            token_requestor_id: crate::domain::CLICK_TO_PAY_TOKEN_REQUESTOR_ID.into(),
            wallet_name: crate::domain::CLICK_TO_PAY_WALLET_NAME.into(),
            kind: TokenEventKind::StatusChanged(status),
        }
    }

    #[test]
    fn a_new_card_is_written_over_nothing_and_its_next_notification_over_that() {
        let a = event("n1", 7, 1_000, TokenStatus::Active);
        let b = event("n2", 7, 2_000, TokenStatus::Suspended);
        let plan = plan(&[&a, &b], HashMap::from([(card(7), None)]), 5_000);
        assert!(plan.to_script.is_empty());
        assert_eq!(plan.entries.len(), 2);
        assert_eq!(&*plan.entries[0].expected, "");
        // The second is merged onto what the first writes, in the batch's order.
        assert_eq!(plan.entries[1].expected, plan.entries[0].new);
        let second: EnrollmentRecord = serde_json::from_str(&plan.entries[1].new).unwrap();
        assert_eq!(second.token.unwrap().status, Some(TokenStatus::Suspended));
        assert_eq!(second.create_time_ms, 5_000);
        assert_eq!(second.revision, 5_001);
    }

    #[test]
    fn an_older_notification_is_planned_as_stale_over_the_same_record() {
        let a = event("n1", 7, 2_000, TokenStatus::Active);
        let b = event("n2", 7, 1_000, TokenStatus::Suspended);
        let plan = plan(&[&a, &b], HashMap::from([(card(7), None)]), 5_000);
        assert_eq!(&*plan.entries[1].new, "");
        assert_eq!(plan.entries[1].expected, plan.entries[0].new);
    }

    #[test]
    fn unreadable_records_repeated_ids_and_unread_cards_go_to_the_script() {
        let a = event("n1", 7, 1_000, TokenStatus::Active);
        let again = event("n1", 7, 1_000, TokenStatus::Active);
        let after = event("n3", 7, 3_000, TokenStatus::Active);
        let broken = event("n4", 8, 1_000, TokenStatus::Active);
        let unread = event("n5", 9, 1_000, TokenStatus::Active);
        let stored = HashMap::from([(card(7), None), (card(8), Some("{not json".to_string()))]);
        let plan = plan(&[&a, &again, &broken, &after, &unread], stored, 5_000);
        assert_eq!(
            plan.entries.iter().map(|e| e.index).collect::<Vec<_>>(),
            [0]
        );
        // After the repeat, the rest of card 7 follows it to the script, in order.
        assert_eq!(plan.to_script, [1, 2, 3, 4]);
    }
}
