//! Click to Pay's consumer profiles, simulated: the cards the simulated Enroll API enrolled,
//! grouped by the consumer identity they were enrolled for (one profile per e-mail address, or
//! mobile number without one, so that a cardholder's cards share a profile and its
//! `srcConsumerId`), and, for a program of the Credential Directory, also by the issuer's
//! `directoryId` and `externalConsumerId`. The lifecycle routes (`lifecycle_api.rs`) read,
//! change and delete them. Answers are masked as Click to Pay masks (never more than the last
//! four digits; the rest of an identity starred out).

use serde_json::{Value, json};
use std::collections::HashMap;

/// A consumer's details as the simulator keeps them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimConsumer {
    /// E-mail address.
    pub email: Option<String>,
    /// (country calling code, number).
    pub mobile: Option<(String, String)>,
    /// First name.
    pub first_name: Option<String>,
    /// Last name.
    pub last_name: Option<String>,
    /// ISO 3166-1 alpha-2.
    pub country_code: String,
    /// e.g. `en_US`.
    pub language_code: String,
}

fn text(v: &Value, path: &[&str]) -> Option<String> {
    path.iter()
        .try_fold(v, |v, k| v.get(k))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

impl SimConsumer {
    /// From the Enroll API's `consumer` object (also the legacy profile update's).
    pub fn from_enroll(consumer: &Value) -> Self {
        let identity_type = text(consumer, &["consumerIdentity", "identityType"]);
        let identity_value = text(consumer, &["consumerIdentity", "identityValue"]);
        let mobile = match (
            text(consumer, &["mobileNumber", "countryCode"]),
            text(consumer, &["mobileNumber", "phoneNumber"]),
        ) {
            (Some(cc), Some(n)) => Some((cc, n)),
            _ => None,
        };
        Self {
            email: identity_value.filter(|_| identity_type.as_deref() == Some("EMAIL_ADDRESS")),
            mobile,
            first_name: text(consumer, &["firstName"]),
            last_name: text(consumer, &["lastName"]),
            country_code: text(consumer, &["countryCode"]).unwrap_or_default(),
            language_code: text(consumer, &["languageCode"]).unwrap_or_default(),
        }
    }

    /// From the Credential Directory's update body's `consumer` object (as the service assumes it).
    pub fn from_directory(consumer: &Value) -> Self {
        let mobile = match (
            text(consumer, &["mobileNumber", "countryCode"]),
            text(consumer, &["mobileNumber", "phoneNumber"]),
        ) {
            (Some(cc), Some(n)) => Some((cc, n)),
            _ => None,
        };
        Self {
            email: text(consumer, &["emailAddress"]),
            mobile,
            first_name: text(consumer, &["firstName"]),
            last_name: text(consumer, &["lastName"]),
            country_code: text(consumer, &["countryCode"]).unwrap_or_default(),
            language_code: text(consumer, &["languageCode"]).unwrap_or_default(),
        }
    }

    /// The identity Click to Pay files the profile under, when there is one.
    pub fn identity(&self) -> Option<String> {
        match (&self.email, &self.mobile) {
            (Some(email), _) => Some(format!("email:{}", email.to_lowercase())),
            (None, Some((cc, n))) => Some(format!("mobile:{cc}{n}")),
            (None, None) => None,
        }
    }
}

/// One card of a profile.
#[derive(Debug, Clone)]
pub struct SimCard {
    /// Click to Pay's id.
    pub src_digital_card_id: String,
    /// The issuer's id (Credential Directory programs).
    pub external_credential_id: Option<String>,
    /// The card.
    pub card_contract_id: i64,
    /// Its Click to Pay token.
    pub token_unique_reference: String,
    /// Last four digits.
    pub last_four: String,
    /// `MM`.
    pub expiry_month: String,
    /// `YYYY`.
    pub expiry_year: String,
    /// CREDIT, DEBIT, ...
    pub card_type: String,
    /// The billing address as last set (the request's object).
    pub billing_address: Option<Value>,
}

/// One consumer profile.
#[derive(Debug, Clone)]
pub struct SimProfile {
    /// Click to Pay's id.
    pub src_consumer_id: String,
    /// `(directoryId, externalConsumerId)` for a Credential Directory profile.
    pub directory: Option<(String, String)>,
    /// The consumer.
    pub consumer: SimConsumer,
    /// Its cards.
    pub cards: Vec<SimCard>,
}

/// Every profile.
#[derive(Debug, Default)]
pub struct Profiles {
    profiles: Vec<SimProfile>,
    /// Where [`Profiles::enroll`] finds a profile without a walk over all of them (once per
    /// enrollment: the walk made the simulator's CPU per enrollment grow with every consumer it
    /// had enrolled): the first profile of each directory key, and of each identity among the
    /// profiles without one, by position. Kept by `enroll`; rebuilt after what moves or re-keys
    /// profiles (a deletion, a consumer's update), which is rare.
    by_directory: HashMap<(String, String), usize>,
    by_identity: HashMap<Option<String>, usize>,
}

/// Where a profile is looked up.
#[derive(Debug, Clone, Copy)]
pub enum ProfileKey<'a> {
    /// By `srcConsumerId`.
    Consumer(&'a str),
    /// By `(directoryId, externalConsumerId)`.
    Directory(&'a str, &'a str),
}

impl Profiles {
    fn position(&self, key: ProfileKey<'_>) -> Option<usize> {
        self.profiles.iter().position(|p| match key {
            ProfileKey::Consumer(id) => p.src_consumer_id == id,
            ProfileKey::Directory(d, c) => p
                .directory
                .as_ref()
                .is_some_and(|(pd, pc)| pd == d && pc == c),
        })
    }

    /// Adds an enrolled card to its consumer's profile (by the directory's ids when given, else
    /// by identity), made when missing; the profile's `srcConsumerId`.
    pub fn enroll(
        &mut self,
        consumer: SimConsumer,
        directory: Option<(String, String)>,
        card: SimCard,
    ) -> String {
        let identity = consumer.identity();
        let found = match &directory {
            Some(key) => self.by_directory.get(key).copied(),
            None => self.by_identity.get(&identity).copied(),
        };
        match found {
            Some(i) => {
                let profile = &mut self.profiles[i];
                profile
                    .cards
                    .retain(|c| c.card_contract_id != card.card_contract_id);
                profile.cards.push(card);
                profile.src_consumer_id.clone()
            }
            None => {
                let id = uuid::Uuid::new_v4().to_string();
                self.profiles.push(SimProfile {
                    src_consumer_id: id.clone(),
                    directory,
                    consumer,
                    cards: vec![card],
                });
                self.index(self.profiles.len() - 1);
                id
            }
        }
    }

    /// The profile at `key`.
    pub fn profile(&self, key: ProfileKey<'_>) -> Option<&SimProfile> {
        self.position(key).map(|i| &self.profiles[i])
    }

    /// Replaces the consumer details of the profile at `key`; whether there was one.
    pub fn update_consumer(&mut self, key: ProfileKey<'_>, consumer: SimConsumer) -> bool {
        match self.position(key) {
            Some(i) => {
                self.profiles[i].consumer = consumer;
                self.reindex();
                true
            }
            None => false,
        }
    }

    /// Enters the profile at `at` in the look-ups of `enroll`, unless one before it holds its
    /// key (the first one is the one found).
    fn index(&mut self, at: usize) {
        let p = &self.profiles[at];
        match &p.directory {
            Some(key) => self.by_directory.entry(key.clone()).or_insert(at),
            None => self.by_identity.entry(p.consumer.identity()).or_insert(at),
        };
    }

    /// The look-ups of `enroll`, made again from the profiles as they are.
    fn reindex(&mut self) {
        self.by_directory.clear();
        self.by_identity.clear();
        for at in 0..self.profiles.len() {
            self.index(at);
        }
    }

    /// Deletes the profile at `key`, with its cards.
    pub fn delete(&mut self, key: ProfileKey<'_>) -> Option<SimProfile> {
        let removed = self.position(key).map(|i| self.profiles.remove(i));
        if removed.is_some() {
            self.reindex();
        }
        removed
    }

    fn card_position(&self, card: CardKey<'_>) -> Option<(usize, usize)> {
        self.profiles.iter().enumerate().find_map(|(i, p)| {
            let in_profile = match card {
                CardKey::Digital(_) => true,
                CardKey::Credential(d, c, _) => p
                    .directory
                    .as_ref()
                    .is_some_and(|(pd, pc)| pd == d && pc == c),
            };
            if !in_profile {
                return None;
            }
            p.cards
                .iter()
                .position(|c| match card {
                    CardKey::Digital(id) => c.src_digital_card_id == id,
                    CardKey::Credential(_, _, id) => {
                        c.external_credential_id.as_deref() == Some(id)
                    }
                })
                .map(|j| (i, j))
        })
    }

    /// The card at `key`.
    pub fn card(&self, key: CardKey<'_>) -> Option<&SimCard> {
        self.card_position(key)
            .map(|(i, j)| &self.profiles[i].cards[j])
    }

    /// Sets the billing address of the card at `key`; whether there was one.
    pub fn set_billing_address(&mut self, key: CardKey<'_>, address: Value) -> bool {
        match self.card_position(key) {
            Some((i, j)) => {
                self.profiles[i].cards[j].billing_address = Some(address);
                true
            }
            None => false,
        }
    }

    /// Deletes the card at `key` from its profile (the profile stays, as Click to Pay keeps it).
    pub fn delete_card(&mut self, key: CardKey<'_>) -> Option<SimCard> {
        self.card_position(key)
            .map(|(i, j)| self.profiles[i].cards.remove(j))
    }

    /// Every profile (tests).
    pub fn all(&self) -> &[SimProfile] {
        &self.profiles
    }
}

/// Where a card is looked up.
#[derive(Debug, Clone, Copy)]
pub enum CardKey<'a> {
    /// By `srcDigitalCardId`.
    Digital(&'a str),
    /// By `(directoryId, externalConsumerId, externalCredentialId)`.
    Credential(&'a str, &'a str, &'a str),
}

/// `j***@e***.com`.
pub fn mask_email(email: &str) -> String {
    let (local, domain) = email.split_once('@').unwrap_or((email, ""));
    let (host, tld) = domain.rsplit_once('.').unwrap_or((domain, ""));
    let first = |s: &str| s.chars().next().map(String::from).unwrap_or_default();
    format!("{}***@{}***.{tld}", first(local), first(host))
}

fn mask_tail(value: &str, keep: usize) -> String {
    let chars: Vec<char> = value.chars().collect();
    let shown = chars.len().saturating_sub(keep);
    chars
        .iter()
        .enumerate()
        .map(|(i, c)| if i < shown { '*' } else { *c })
        .collect()
}

fn mask_head(value: &str, keep: usize) -> String {
    let head: String = value.chars().take(keep).collect();
    format!("{head}***")
}

/// The masked consumer of a profile (the SRC `maskedConsumer` shape).
pub fn masked_consumer(p: &SimProfile) -> Value {
    let c = &p.consumer;
    let full_name = [&c.first_name, &c.last_name]
        .into_iter()
        .flatten()
        .map(|n| mask_head(n, 1))
        .collect::<Vec<_>>()
        .join(" ");
    let (identity_type, identity) = match (&c.email, &c.mobile) {
        (Some(e), _) => ("EMAIL_ADDRESS", mask_email(e)),
        (None, Some((cc, n))) => ("MOBILE_PHONE_NUMBER", format!("{cc}{}", mask_tail(n, 2))),
        (None, None) => ("EMAIL_ADDRESS", String::new()),
    };
    json!({
        "srcConsumerId": p.src_consumer_id,
        "maskedConsumerIdentity": {"identityType": identity_type, "maskedIdentityValue": identity},
        "maskedEmailAddress": c.email.as_deref().map(mask_email),
        "maskedMobileNumber": c.mobile.as_ref().map(|(cc, n)| json!({"countryCode": cc, "phoneNumber": mask_tail(n, 2)})),
        "maskedFullName": (!full_name.is_empty()).then_some(full_name),
        "countryCode": c.country_code,
        "languageCode": c.language_code,
        "status": "ACTIVE",
    })
}

/// The masked card (the SRC `maskedCard` shape, with its masked billing address).
pub fn masked_card(c: &SimCard) -> Value {
    let address = c.billing_address.as_ref().map(|a| {
        json!({
            "line1": text(a, &["line1"]).map(|l| mask_head(&l, 3)),
            "city": text(a, &["city"]),
            "state": text(a, &["state"]),
            "zip": text(a, &["zip"]).map(|z| mask_head(&z, 2)),
            "countryCode": text(a, &["countryCode"]),
        })
    });
    json!({
        "srcDigitalCardId": c.src_digital_card_id,
        "panLastFour": c.last_four,
        "panExpirationMonth": c.expiry_month,
        "panExpirationYear": c.expiry_year,
        "paymentCardDescriptor": "Mastercard",
        "paymentCardType": c.card_type,
        "digitalCardData": {"status": "ACTIVE", "descriptorName": "Mastercard"},
        "maskedBillingAddress": address,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_show_no_more_than_click_to_pay_shows() {
        assert_eq!(mask_email("jane.doe@example.com"), "j***@e***.com");
        assert_eq!(mask_tail("5551234567", 2), "********67");
        assert_eq!(mask_head("1 Main St", 3), "1 M***");
    }

    /// A card of the profiles' tests: its ids all made from `id`.
    fn sim_card(id: i64) -> SimCard {
        SimCard {
            src_digital_card_id: format!("d{id}"),
            external_credential_id: Some(id.to_string()),
            card_contract_id: id,
            token_unique_reference: format!("T{id}"),
            last_four: "9726".into(),
            expiry_month: "12".into(),
            expiry_year: "2030".into(),
            card_type: "CREDIT".into(),
            billing_address: None,
        }
    }

    // The index `enroll` uses must find what a walk over the profiles finds, also after a
    // deletion moved the profiles and an update changed an identity.
    #[test]
    fn enroll_finds_the_profile_of_an_identity_after_deletions_and_updates() {
        let mut profiles = Profiles::default();
        let person = |email: &str| SimConsumer {
            email: Some(email.into()),
            country_code: "US".into(),
            language_code: "en".into(),
            ..SimConsumer::default()
        };
        let ann = profiles.enroll(person("ann@example.com"), None, sim_card(1));
        let bob = profiles.enroll(person("bob@example.com"), None, sim_card(2));
        let dir = Some(("dir".to_owned(), "ext-9".to_owned()));
        let credential = profiles.enroll(person("cy@example.com"), dir.clone(), sim_card(3));
        assert!(profiles.delete(ProfileKey::Consumer(&ann)).is_some());
        // Bob's and the directory's profiles moved down a place: still found.
        assert_eq!(
            profiles.enroll(person("bob@example.com"), None, sim_card(4)),
            bob
        );
        assert_eq!(
            profiles.enroll(person("cy@example.com"), dir, sim_card(5)),
            credential
        );
        // Bob becomes Dot: Dot's next card joins that profile, Bob's makes a new one.
        assert!(profiles.update_consumer(ProfileKey::Consumer(&bob), person("dot@example.com")));
        assert_eq!(
            profiles.enroll(person("dot@example.com"), None, sim_card(6)),
            bob
        );
        let new_bob = profiles.enroll(person("bob@example.com"), None, sim_card(7));
        assert_ne!(new_bob, bob);
        // And Ann, deleted, starts again.
        let new_ann = profiles.enroll(person("ann@example.com"), None, sim_card(8));
        assert_ne!(new_ann, ann);
        assert_eq!(profiles.all().len(), 4);
        let cards = |id: &str| {
            let mut ids: Vec<i64> = profiles
                .profile(ProfileKey::Consumer(id))
                .unwrap()
                .cards
                .iter()
                .map(|c| c.card_contract_id)
                .collect();
            ids.sort_unstable();
            ids
        };
        assert_eq!(cards(&bob), [2, 4, 6]);
        assert_eq!(cards(&credential), [3, 5]);
        assert_eq!(cards(&new_bob), [7]);
        assert_eq!(cards(&new_ann), [8]);
    }

    #[test]
    fn cards_of_one_identity_share_a_profile_and_the_directory_keeps_its_own() {
        let mut profiles = Profiles::default();
        let jane = SimConsumer {
            email: Some("Jane@Example.com".into()),
            country_code: "US".into(),
            language_code: "en".into(),
            ..SimConsumer::default()
        };
        let first = profiles.enroll(jane.clone(), None, sim_card(1));
        let mut lower = jane.clone();
        lower.email = Some("jane@example.com".into());
        assert_eq!(profiles.enroll(lower, None, sim_card(2)), first);
        let directory = Some(("dir".to_owned(), "ext-1".to_owned()));
        let other = profiles.enroll(jane, directory, sim_card(3));
        assert_ne!(other, first);
        assert_eq!(
            profiles
                .profile(ProfileKey::Consumer(&first))
                .unwrap()
                .cards
                .len(),
            2
        );
        assert!(
            profiles
                .card(CardKey::Credential("dir", "ext-1", "3"))
                .is_some()
        );
        assert!(
            profiles
                .card(CardKey::Credential("dir", "ext-1", "1"))
                .is_none()
        );
        assert_eq!(
            profiles
                .delete_card(CardKey::Digital("d2"))
                .unwrap()
                .card_contract_id,
            2
        );
        assert!(profiles.card(CardKey::Digital("d2")).is_none());
        assert_eq!(
            profiles
                .delete(ProfileKey::Consumer(&first))
                .unwrap()
                .cards
                .len(),
            1
        );
    }
}
