//! Redis key layout. Every key of a card carries the hash tag `{card:<id>}`, so that all of a
//! card's keys live in one Redis Cluster slot and one script or transaction can update them.

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
        format!("{}{}:enrollment", self.prefix, Self::card_tag(card))
    }

    /// `{card:<id>}`: the hash tag shared by all keys of a card.
    pub fn card_tag(card: CardContractId) -> String {
        format!("{{card:{card}}}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enrollment_key_has_prefix_and_card_hash_tag() {
        let k = KeySpace::new("c2p:");
        let card = CardContractId::new(70001).unwrap();
        assert_eq!(k.enrollment(card), "c2p:{card:70001}:enrollment");
    }
}
