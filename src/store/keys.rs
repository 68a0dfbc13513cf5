//! Redis key layout. Every key of a card carries the hash tag `{card:<id>}`, so that all of a
//! card's keys live in one Redis Cluster slot and one script can update them together.

use crate::domain::CardContractId;

/// Builds the keys of one deployment (one prefix).
#[derive(Debug, Clone)]
pub struct KeySpace {
    prefix: String,
}

impl KeySpace {
    /// Keys under `prefix` (e.g. `c2p:`), which must not contain braces.
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// `<prefix>{card:<id>}:enrollment`: the enrollment record of a card.
    pub fn enrollment(&self, card: CardContractId) -> String {
        format!("{}{{card:{card}}}:enrollment", self.prefix)
    }

    /// `<prefix>{card:<id>}:notification:<id>`: a notification's dedup marker.
    pub fn notification(&self, card: CardContractId, notification_id: &str) -> String {
        format!(
            "{}{{card:{card}}}:notification:{notification_id}",
            self.prefix
        )
    }

    /// `<prefix>{card:<id>}:lock`: the card's enrollment lock.
    pub fn lock(&self, card: CardContractId) -> String {
        format!("{}{{card:{card}}}:lock", self.prefix)
    }

    /// `<prefix>changes:{card:<id>}`: the pub/sub channel of a card's changes.
    pub fn changes(&self, card: CardContractId) -> String {
        format!("{}changes:{{card:{card}}}", self.prefix)
    }

    /// `<prefix>idempotency:{<sha256 of scope>}`: an idempotency record. The scope (caller and
    /// key) is hashed: it is caller input and may hold braces.
    pub fn idempotency(&self, scope: &str) -> String {
        format!(
            "{}idempotency:{{{}}}",
            self.prefix,
            crate::digest::sha256_hex(scope.as_bytes())
        )
    }

    /// `<prefix>in_progress`: the sorted set of cards with an IN_PROGRESS enrollment (score: since
    /// when, ms), read by the reconciler.
    pub fn in_progress(&self) -> String {
        format!("{}in_progress", self.prefix)
    }

    /// `<prefix>enrolled`: the sorted set of ENROLLED cards (score: when each is due for a check
    /// against Click to Pay, ms), read by the reconciler.
    pub fn enrolled(&self) -> String {
        format!("{}enrolled", self.prefix)
    }

    /// `<prefix>optout:{<subject>}`: an opt-out kept under one subject (`card:<id>` shares the
    /// card's hash tag; `consumer:<ref>` is a keyed hash in hex). Subjects are the service's own
    /// text, never caller input.
    pub fn opt_out(&self, subject: &str) -> String {
        format!("{}optout:{{{subject}}}", self.prefix)
    }

    /// `<prefix>lease:<name>`: a lease that one replica holds at a time.
    pub fn lease(&self, name: &str) -> String {
        format!("{}lease:{name}", self.prefix)
    }

    /// The card of a change channel name.
    pub fn card_of_channel(&self, channel: &str) -> Option<CardContractId> {
        let rest = channel
            .strip_prefix(&self.prefix)?
            .strip_prefix("changes:{card:")?;
        CardContractId::new(rest.strip_suffix('}')?.parse().ok()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_prefix_and_card_hash_tag() {
        let k = KeySpace::new("c2p:");
        let card = CardContractId::new(70001).unwrap();
        assert_eq!(k.enrollment(card), "c2p:{card:70001}:enrollment");
        assert_eq!(
            k.notification(card, "n-1"),
            "c2p:{card:70001}:notification:n-1"
        );
        assert_eq!(k.changes(card), "c2p:changes:{card:70001}");
        assert_eq!(k.card_of_channel(&k.changes(card)), Some(card));
        assert_eq!(
            k.opt_out(&crate::domain::card_subject(card)),
            "c2p:optout:{card:70001}"
        );
        assert!(
            k.idempotency("caller\u{0}key{}")
                .starts_with("c2p:idempotency:{")
        );
    }
}
