//! The simulator's CMS: card contracts loaded from a TOML file (the sample `cms.toml` by default).

use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use time::OffsetDateTime;

/// The sample CMS shipped with the repository.
pub const SAMPLE: &str = include_str!("cms.toml");

/// A card's status in the CMS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CardStatus {
    /// Usable.
    Active,
    /// Blocked by the issuer.
    Blocked,
}

/// One card contract. Holds a PAN: simulator-only test data, never logged.
#[derive(Clone, Deserialize)]
pub struct CardContract {
    /// `cardContractId`.
    pub card_contract_id: i64,
    /// The issuer client the card belongs to.
    pub client_id: i64,
    /// The PAN (test data).
    pub pan: String,
    /// "MM".
    pub expiry_month: String,
    /// "YYYY".
    pub expiry_year: String,
    /// ACTIVE or BLOCKED.
    pub status: CardStatus,
    /// Product name.
    pub product: String,
    /// CREDIT, DEBIT, PREPAID.
    pub card_type: String,
    /// Whether the product may be tokenized.
    pub tokenization_eligible: bool,
}

impl std::fmt::Debug for CardContract {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CardContract")
            .field("card_contract_id", &self.card_contract_id)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// Why tokenization of a card is declined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ineligibility {
    /// The card is blocked.
    Blocked,
    /// The card has expired.
    Expired,
    /// The product may not be tokenized.
    ProductNotEligible,
}

impl Ineligibility {
    /// A stable code, used in the Enroll API error the simulator returns.
    pub fn code(self) -> &'static str {
        match self {
            Ineligibility::Blocked => "CARD_BLOCKED",
            Ineligibility::Expired => "CARD_EXPIRED",
            Ineligibility::ProductNotEligible => "CARD_PRODUCT_NOT_ELIGIBLE",
        }
    }
}

impl CardContract {
    /// `535585______6188`-style masked number.
    pub fn masked_number(&self) -> String {
        let n = self.pan.len();
        if n < 10 {
            return "*".repeat(n);
        }
        format!(
            "{}{}{}",
            &self.pan[..6],
            "_".repeat(n - 10),
            &self.pan[n - 4..]
        )
    }

    /// The last four digits.
    pub fn last_four(&self) -> String {
        crate::domain::last_four(&self.pan)
    }

    /// The TAR decision's input: why the card cannot be tokenized at `now`, if it cannot.
    pub fn ineligibility(&self, now: OffsetDateTime) -> Option<Ineligibility> {
        if self.status == CardStatus::Blocked {
            return Some(Ineligibility::Blocked);
        }
        let (year, month) = (
            self.expiry_year.parse::<i32>().unwrap_or(0),
            self.expiry_month.parse::<u8>().unwrap_or(0),
        );
        // A card is valid through the last day of its expiry month.
        if (year, month) < (now.year(), u8::from(now.month())) {
            return Some(Ineligibility::Expired);
        }
        if !self.tokenization_eligible {
            return Some(Ineligibility::ProductNotEligible);
        }
        None
    }
}

#[derive(Deserialize)]
struct CmsFile {
    card: Vec<CardContract>,
}

/// The card contracts by id.
#[derive(Debug, Clone)]
pub struct Cms {
    cards: BTreeMap<i64, CardContract>,
    /// Each PAN's first card by id (what a walk in id order would find): `POST /cards` looks a
    /// card up by PAN once per call, and a walk was as long as the CMS (45,000 cards in the
    /// benchmark, the simulator's CPU per enrollment growing with the card ids enrolled).
    by_pan: HashMap<String, i64>,
}

impl Cms {
    /// Parses a CMS file's text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: CmsFile = toml::from_str(text).map_err(|e| e.message().to_owned())?;
        for card in &file.card {
            if !(12..=19).contains(&card.pan.len()) || !card.pan.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(format!(
                    "card {}: pan must be 12 to 19 digits",
                    card.card_contract_id
                ));
            }
            if crate::domain::CardContractId::new(card.card_contract_id).is_none() {
                return Err(format!(
                    "card {}: card_contract_id out of range",
                    card.card_contract_id
                ));
            }
        }
        let cards: BTreeMap<i64, CardContract> = file
            .card
            .into_iter()
            .map(|c| (c.card_contract_id, c))
            .collect();
        let mut by_pan = HashMap::new();
        for card in cards.values() {
            by_pan
                .entry(card.pan.clone())
                .or_insert(card.card_contract_id);
        }
        Ok(Self { cards, by_pan })
    }

    /// The sample CMS.
    pub fn sample() -> Result<Self, String> {
        Self::parse(SAMPLE)
    }

    /// A card contract.
    pub fn get(&self, id: i64) -> Option<&CardContract> {
        self.cards.get(&id)
    }

    /// The card with this PAN (the Enroll side knows cards only by their encrypted PAN).
    pub fn by_pan(&self, pan: &str) -> Option<&CardContract> {
        self.by_pan.get(pan).and_then(|id| self.cards.get(id))
    }

    /// Every card of a client.
    pub fn of_client(&self, client_id: i64) -> impl Iterator<Item = &CardContract> {
        self.cards
            .values()
            .filter(move |c| c.client_id == client_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_has_the_documented_cards() {
        let cms = Cms::sample().unwrap();
        let now = OffsetDateTime::now_utc();
        let card = |id| cms.get(id).unwrap();
        assert_eq!(card(70001).pan, "5186001700009726");
        assert_eq!(card(70001).ineligibility(now), None);
        assert_eq!(card(70002).ineligibility(now), Some(Ineligibility::Blocked));
        assert_eq!(card(70003).ineligibility(now), Some(Ineligibility::Expired));
        assert_eq!(
            card(70004).ineligibility(now),
            Some(Ineligibility::ProductNotEligible)
        );
        assert_eq!(card(70005).ineligibility(now), None);
        assert!(cms.get(70006).is_none());
        assert_eq!(cms.of_client(40000).count(), 5);
        assert_eq!(card(70001).masked_number(), "518600______9726");
        assert_eq!(card(70001).last_four(), "9726");
        assert!(!format!("{:?}", card(70001)).contains("5186001700009726"));
    }

    #[test]
    fn a_pan_finds_its_first_card_by_id_as_a_walk_would() {
        let card = |id: i64, pan: &str| {
            format!(
                "[[card]]\ncard_contract_id = {id}\nclient_id = 1\npan = \"{pan}\"\n\
                 expiry_month = \"12\"\nexpiry_year = \"2035\"\nstatus = \"ACTIVE\"\n\
                 product = \"MCW\"\ncard_type = \"CREDIT\"\ntokenization_eligible = true\n"
            )
        };
        // Written out of order, one PAN twice.
        let text = [
            card(90, "5186001700000090"),
            card(12, "5186001700000012"),
            card(30, "5186001700000012"),
        ]
        .concat();
        let cms = Cms::parse(&text).unwrap();
        let walk = |pan: &str| {
            cms.cards
                .values()
                .find(|c| c.pan == pan)
                .map(|c| c.card_contract_id)
        };
        for pan in ["5186001700000090", "5186001700000012", "5186001700000099"] {
            assert_eq!(
                cms.by_pan(pan).map(|c| c.card_contract_id),
                walk(pan),
                "{pan}"
            );
        }
        assert_eq!(cms.by_pan("5186001700000012").unwrap().card_contract_id, 12);
    }
}
