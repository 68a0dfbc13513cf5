//! The enrollment record of one card: what the store keeps and the RPCs return.
//!
//! It never holds more card data than Click to Pay's masked card (last four digits, expiry).
//! Times are Unix milliseconds so that the Redis scripts can compare them.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Every integer a record holds (card ids, times in Unix milliseconds) is below this: Redis's Lua
/// JSON (cjson) writes numbers with 14 significant digits, so 10^14 and above would come back
/// rounded (`1e+14`) and the record would no longer read. As a time: 5138-11-16T09:46:40Z.
pub const STORE_INTEGER_LIMIT: i64 = 100_000_000_000_000;

/// Whether the store keeps the time `ms` exactly: from the Unix epoch to
/// 5138-11-16T09:46:39.999Z (see [`STORE_INTEGER_LIMIT`]).
pub fn is_storable_time(ms: i64) -> bool {
    (0..STORE_INTEGER_LIMIT).contains(&ms)
}

/// A card's technical id in the Mastercard Processing CMS (`cardContractId`); always > 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct CardContractId(i64);

impl CardContractId {
    /// Ids at or above this are refused: Redis's Lua JSON keeps 14 significant digits, so larger
    /// numbers would not survive a script.
    pub const LIMIT: i64 = STORE_INTEGER_LIMIT;

    /// The id, if it is a valid card contract id (1 to 10^14 - 1).
    pub fn new(id: i64) -> Option<Self> {
        (id > 0 && id < Self::LIMIT).then_some(Self(id))
    }

    /// The numeric id.
    pub fn get(self) -> i64 {
        self.0
    }
}

impl TryFrom<i64> for CardContractId {
    type Error = String;
    fn try_from(id: i64) -> Result<Self, String> {
        Self::new(id).ok_or_else(|| format!("card contract id must be > 0, got {id}"))
    }
}

impl From<CardContractId> for i64 {
    fn from(id: CardContractId) -> i64 {
        id.0
    }
}

impl fmt::Display for CardContractId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Where a card's enrollment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EnrollmentState {
    /// Not enrolled in Click to Pay.
    NotEnrolled,
    /// Started, not finished.
    InProgress,
    /// Accepted by Click to Pay.
    Enrolled,
    /// Failed; the record's `failure` says why.
    Failed,
    /// Not enrolled through this service, but Click to Pay has a token for the card (or a
    /// tokenization was attempted): a notification or the token list named one.
    TokenizedElsewhere,
    /// Enrolled, and left Click to Pay since; the record's `removal` says why and when.
    Removed,
}

/// A token's lifecycle status (MDES statuses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TokenStatus {
    /// Created, not active yet.
    Pending,
    /// Usable.
    Active,
    /// Temporarily suspended.
    Suspended,
    /// Permanently deactivated.
    Deactivated,
    /// Inactive.
    Inactive,
}

impl TokenStatus {
    /// Ties between writes of one token at the same millisecond go to the higher rank: further
    /// along the lifecycle, and the more restrictive (PENDING 0, INACTIVE 1, ACTIVE 2,
    /// SUSPENDED 3, DEACTIVATED 4). The Lua twin has the same table (`store/scripts.rs`).
    pub fn rank(self) -> i8 {
        match self {
            TokenStatus::Pending => 0,
            TokenStatus::Inactive => 1,
            TokenStatus::Active => 2,
            TokenStatus::Suspended => 3,
            TokenStatus::Deactivated => 4,
        }
    }
}

/// The decision on a Tokenization Authorization Request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TokenizationDecision {
    /// Approved.
    Approved,
    /// Declined.
    Declined,
    /// Needs additional cardholder authentication.
    RequireAdditionalAuthentication,
}

impl TokenizationDecision {
    /// Ties go to the more restrictive decision (APPROVED 0, REQUIRE_ADDITIONAL_AUTHENTICATION 1,
    /// DECLINED 2), as for [`TokenStatus::rank`].
    pub fn rank(self) -> i8 {
        match self {
            TokenizationDecision::Approved => 0,
            TokenizationDecision::RequireAdditionalAuthentication => 1,
            TokenizationDecision::Declined => 2,
        }
    }
}

/// Which write a register holds: the event time and the notification that wrote it. Writes are
/// ordered by more than this (see [`merge_tokens`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Version {
    /// Event time, Unix milliseconds.
    pub at_ms: i64,
    /// The notification id (or `upstream:<...>` for a read of the token list).
    pub by: String,
}

/// The last four characters of a card number (all of it when shorter).
pub fn last_four(number: &str) -> String {
    let chars: Vec<char> = number.chars().collect();
    chars[chars.len().saturating_sub(4)..].iter().collect()
}

/// The card as Click to Pay shows it: last four digits and expiry, nothing more.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaskedCard {
    /// Last four PAN digits.
    pub pan_last_four: String,
    /// Expiry month, "MM".
    pub pan_expiration_month: String,
    /// Expiry year, "YYYY".
    pub pan_expiration_year: String,
    /// Click to Pay's card descriptor.
    pub payment_card_descriptor: Option<String>,
    /// CREDIT, DEBIT, PREPAID, ...
    pub payment_card_type: Option<String>,
    /// The digital card's status in Click to Pay.
    pub digital_card_status: Option<String>,
}

/// The card's Click to Pay token: two registers (status, decision), each last-writer-wins over
/// every token of the card (see [`merge_tokens`]). The token shown is the one of the latest
/// write; the registers shown are that token's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// MDES `tokenUniqueReference`.
    pub token_unique_reference: String,
    /// The token requestor id.
    pub token_requestor_id: String,
    /// Last known status.
    pub status: Option<TokenStatus>,
    /// The write that set `status`.
    pub status_version: Option<Version>,
    /// The TAR decision, when a TAR was seen.
    pub decision: Option<TokenizationDecision>,
    /// The write that set `decision`.
    pub decision_version: Option<Version>,
    /// The latest write of the other register when it was about another token (one this token
    /// superseded): not shown, but kept, so that merging stays order-free. Never nested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded: Option<Box<Token>>,
}

impl Token {
    /// The upstream event time of the latest write of a register, Unix milliseconds.
    pub fn event_time_ms(&self) -> Option<i64> {
        [&self.status_version, &self.decision_version]
            .into_iter()
            .flatten()
            .map(|v| v.at_ms)
            .max()
    }
}

/// Why an enrollment failed: the error of the call that failed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// Stable upper snake case reason, as in the gRPC `ErrorInfo` (an `ErrorReason` name).
    pub reason: String,
    /// Human-readable explanation; never card data.
    pub message: String,
    /// Whether a new attempt may succeed.
    pub retryable: bool,
    /// The `ErrorInfo` metadata (lowerCamelCase keys), e.g. `declineReason`.
    #[serde(default)]
    pub metadata: std::collections::BTreeMap<String, String>,
}

/// One card's enrollment record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollmentRecord {
    /// The card.
    pub card_contract_id: CardContractId,
    /// The Click to Pay program; empty for the default.
    pub program: String,
    /// Where the enrollment stands.
    pub state: EnrollmentState,
    /// Click to Pay's `srcDigitalCardId`.
    pub src_digital_card_id: Option<String>,
    /// Click to Pay's `srcConsumerId`.
    pub src_consumer_id: Option<String>,
    /// The `srcCorrelationId` sent to the Enroll API.
    pub src_correlation_id: Option<String>,
    /// The masked card, once enrolled.
    pub masked_card: Option<MaskedCard>,
    /// The Click to Pay token, once known.
    pub token: Option<Token>,
    /// Why it failed, when `state` is `Failed`.
    pub failure: Option<Failure>,
    /// When the store first wrote the record, Unix milliseconds on the store's clock; set by
    /// the store, never changed while the record exists.
    pub create_time_ms: i64,
    /// When the store last changed the record, Unix milliseconds on the store's clock; set by
    /// the store.
    pub update_time_ms: i64,
    /// Grows with every change of the record (see [`next_revision`]); set by the store. 0 for a
    /// record never stored.
    #[serde(default)]
    pub revision: i64,
    /// Why and when the card left Click to Pay, when `state` is `Removed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removal: Option<super::Removal>,
    /// The Credential Directory's `externalConsumerId` the service assigned (a keyed hash of the
    /// consumer identity at enrollment); also an opt-out subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_consumer_id: Option<String>,
    /// The Credential Directory's `externalCredentialId` the service assigned (the card id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_credential_id: Option<String>,
    /// The keyed hash of the consumer identity the profile holds now (changed by
    /// UpdateConsumer); an opt-out subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_ref: Option<String>,
    /// When UpdateConsumer last changed the profile, Unix milliseconds (the replica's clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_update_time_ms: Option<i64>,
    /// When UpdateBillingAddress last changed the card, Unix milliseconds (the replica's clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billing_address_update_time_ms: Option<i64>,
    /// The token references of the card's earlier enrollments, dropped by a new one (the most
    /// recent last, at most [`RETIRED_TOKENS`]): news about them arrives late (the removal's
    /// own deactivation among it) and no longer changes this record.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired_tokens: Vec<String>,
    /// The `srcCorrelationId`s of the card's earlier enrollments, replaced by a new one (the
    /// most recent last, at most [`RETIRED_TOKENS`]): Click to Pay would answer one sent again
    /// as that enrollment, so a new enrollment never sends one, and a late retry of a key that
    /// sent one answers the card's removal rather than send it again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired_correlations: Vec<String>,
}

/// How many retired token references a record keeps (and as many srcCorrelationIds).
pub const RETIRED_TOKENS: usize = 8;

/// `kept` with `old` added when a write of a record with the srcCorrelationId `new` replaces
/// one with `old` (both present and different UUIDs: another spelling of the same one is the
/// same enrollment, still live), the most recent [`RETIRED_TOKENS`] kept. The Lua twin is
/// `retire_correlation` in `store/scripts.rs`.
fn retire_correlation(kept: &[String], old: Option<&String>, new: Option<&String>) -> Vec<String> {
    let mut ids = kept.to_vec();
    let old = old.filter(|o| !o.is_empty());
    let new = new.filter(|n| !n.is_empty());
    if let (Some(old), Some(new)) = (old, new)
        && !old.eq_ignore_ascii_case(new)
        && !ids.contains(old)
    {
        ids.push(old.clone());
    }
    let excess = ids.len().saturating_sub(RETIRED_TOKENS);
    ids.drain(..excess);
    ids
}

impl EnrollmentRecord {
    /// The first time this record holds that the store could not keep exactly (see
    /// [`STORE_INTEGER_LIMIT`]), if any.
    pub fn unstorable_time(&self) -> Option<i64> {
        let tokens = self
            .token
            .iter()
            .flat_map(|t| std::iter::once(t).chain(t.superseded.as_deref()));
        let token_times = tokens.flat_map(|t| {
            [&t.status_version, &t.decision_version]
                .into_iter()
                .flatten()
                .map(|v| v.at_ms)
        });
        [self.create_time_ms, self.update_time_ms, self.revision]
            .into_iter()
            .chain(token_times)
            .find(|ms| !is_storable_time(*ms))
    }

    /// A new record in `state`, with nothing else known yet; the store sets its times and
    /// revision when it writes it (`now_ms` stands for them until then).
    pub fn new(
        card_contract_id: CardContractId,
        program: String,
        state: EnrollmentState,
        now_ms: i64,
    ) -> Self {
        Self {
            card_contract_id,
            program,
            state,
            src_digital_card_id: None,
            src_consumer_id: None,
            src_correlation_id: None,
            masked_card: None,
            token: None,
            failure: None,
            create_time_ms: now_ms,
            update_time_ms: now_ms,
            revision: 0,
            removal: None,
            external_consumer_id: None,
            external_credential_id: None,
            consumer_ref: None,
            consumer_update_time_ms: None,
            billing_address_update_time_ms: None,
            retired_tokens: Vec::new(),
            retired_correlations: Vec::new(),
        }
    }

    /// This record as a new enrollment of the card writes it over `existing`: without
    /// `existing`'s token, whose references (and those it retired before) are kept retired, and
    /// with `existing`'s `srcCorrelationId` retired too. The Lua twin is the `fresh` branch of
    /// `put_enrollment` in `store/scripts.rs`.
    pub fn retiring_tokens_of(mut self, existing: Option<&EnrollmentRecord>) -> Self {
        let Some(existing) = existing else {
            return self;
        };
        self.retired_correlations = retire_correlation(
            &existing.retired_correlations,
            existing.src_correlation_id.as_ref(),
            self.src_correlation_id.as_ref(),
        );
        let mut retired = existing.retired_tokens.clone();
        let dropped = existing
            .token
            .iter()
            .flat_map(|t| std::iter::once(t).chain(t.superseded.as_deref()));
        for token in dropped {
            let reference = &token.token_unique_reference;
            if !reference.is_empty() && !retired.contains(reference) {
                retired.push(reference.clone());
            }
        }
        let excess = retired.len().saturating_sub(RETIRED_TOKENS);
        retired.drain(..excess);
        self.retired_tokens = retired;
        self
    }

    /// Whether `reference` is a token of an earlier enrollment of the card.
    pub fn retired(&self, reference: &str) -> bool {
        self.retired_tokens.iter().any(|r| r == reference)
    }

    /// Whether `id` is the `srcCorrelationId` of an earlier enrollment of the card, whatever the
    /// case of its hex digits.
    pub fn retired_correlation(&self, id: &str) -> bool {
        self.retired_correlations
            .iter()
            .any(|r| r.eq_ignore_ascii_case(id))
    }

    /// This record's enrollment fields (state, ids, masked card, failure) with `existing`'s token
    /// (and the tokens it retired): what the enrollment flow writes, keeping whatever
    /// notifications merged meanwhile. The
    /// times and revision are not set here (see [`EnrollmentRecord::stamped`]).
    pub fn with_token_of(mut self, existing: Option<&EnrollmentRecord>) -> Self {
        // What the card's new enrollment retired stays retired.
        if let Some(existing) = existing.filter(|e| !e.retired_tokens.is_empty()) {
            self.retired_tokens = existing.retired_tokens.clone();
        }
        // And so does an earlier enrollment's srcCorrelationId that this one replaces (a new
        // enrollment written over a FAILED one).
        if let Some(existing) = existing {
            let kept = if existing.retired_correlations.is_empty() {
                &self.retired_correlations
            } else {
                &existing.retired_correlations
            };
            self.retired_correlations = retire_correlation(
                kept,
                existing.src_correlation_id.as_ref(),
                self.src_correlation_id.as_ref(),
            );
        }
        if let Some(token) = existing.and_then(|e| e.token.as_ref()) {
            match self.token.take() {
                Some(mine) => {
                    self.token = Some(merge_tokens(token.clone(), &mine));
                    // A writer that read the record with a token (an update, a look-up) wrote
                    // the state it saw beside it; a notification merged since may have moved the
                    // token on (deactivated, active again, a newer token): the state follows the
                    // merged token, as that notification made it. Not for a writer without one
                    // (an enrollment's own writes).
                    super::follow_token(&mut self);
                }
                None => self.token = Some(token.clone()),
            }
        }
        self
    }

    /// Whether `other` says the same as this record, times and revision aside: a write that
    /// would change nothing else is not made (and no revision is spent on it).
    pub fn same_content(&self, other: &EnrollmentRecord) -> bool {
        let bare = |r: &EnrollmentRecord| EnrollmentRecord {
            create_time_ms: 0,
            update_time_ms: 0,
            revision: 0,
            ..r.clone()
        };
        bare(self) == bare(other)
    }

    /// This record as the store writes it over `existing` at `now_ms` (the store's clock): the
    /// creation time kept (or `now_ms` for a new record), the update time `now_ms`, the next
    /// revision. The Lua twin is `stamp` in `store/scripts.rs`.
    pub fn stamped(mut self, existing: Option<&EnrollmentRecord>, now_ms: i64) -> Self {
        self.create_time_ms = existing.map_or(now_ms, |e| e.create_time_ms);
        self.update_time_ms = now_ms;
        self.revision = next_revision(existing.map(|e| e.revision), now_ms);
        self
    }
}

/// The revision of a card's record after a change at `now_ms` (the store's clock, Unix
/// milliseconds): one more than `previous`, and at least `now_ms`, so that revisions keep
/// growing when a record expired and is written anew (its previous revision then is gone).
/// Below [`STORE_INTEGER_LIMIT`] until the year 5138.
pub fn next_revision(previous: Option<i64>, now_ms: i64) -> i64 {
    previous.map_or(0, |p| p.saturating_add(1)).max(now_ms)
}

/// One write of a register: which token it was about, its value, its version.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Write<V> {
    token_unique_reference: String,
    token_requestor_id: String,
    value: Option<V>,
    version: Version,
}

impl<V: Copy> Write<V> {
    /// The write's token and time: `(at_ms, token reference bytes, token requestor bytes)`.
    fn identity_key(&self) -> (i64, &[u8], &[u8]) {
        (
            self.version.at_ms,
            self.token_unique_reference.as_bytes(),
            self.token_requestor_id.as_bytes(),
        )
    }

    /// The total order of writes (see [`merge_tokens`]); `rank` is the value's (-1: none).
    fn key(&self, rank: impl Fn(V) -> i8) -> (i64, &[u8], &[u8], i8, &[u8]) {
        let (at_ms, reference, requestor) = self.identity_key();
        let rank = self.value.map_or(-1, rank);
        (
            at_ms,
            reference,
            requestor,
            rank,
            self.version.by.as_bytes(),
        )
    }

    fn is_about(&self, reference: &str, requestor: &str) -> bool {
        self.token_unique_reference == reference && self.token_requestor_id == requestor
    }
}

/// The greatest writes of each register seen so far, and the greatest bare token (one with no
/// write yet: it shows only while no register has a write).
#[derive(Default)]
struct Registers {
    status: Option<Write<TokenStatus>>,
    decision: Option<Write<TokenizationDecision>>,
    bare: Option<(String, String)>,
}

/// Keeps the greater of `current` and `offered` (the current one on a tie: equal keys are
/// equal writes).
fn keep_greater<V: Copy>(current: &mut Option<Write<V>>, offered: Write<V>, rank: fn(V) -> i8) {
    let greater = match current {
        None => true,
        Some(c) => offered.key(rank) > c.key(rank),
    };
    if greater {
        *current = Some(offered);
    }
}

impl Registers {
    /// Adds the writes `token` holds (its own and its superseded token's).
    fn add(&mut self, token: &Token) {
        fn write<V>(token: &Token, value: Option<V>, version: &Version) -> Write<V> {
            Write {
                token_unique_reference: token.token_unique_reference.clone(),
                token_requestor_id: token.token_requestor_id.clone(),
                value,
                version: version.clone(),
            }
        }
        if let Some(version) = &token.status_version {
            let offered = write(token, token.status, version);
            keep_greater(&mut self.status, offered, TokenStatus::rank);
        }
        if let Some(version) = &token.decision_version {
            let offered = write(token, token.decision, version);
            keep_greater(&mut self.decision, offered, TokenizationDecision::rank);
        }
        if token.status_version.is_none() && token.decision_version.is_none() {
            let bare = (
                token.token_unique_reference.clone(),
                token.token_requestor_id.clone(),
            );
            let greater = self.bare.as_ref().is_none_or(|b| {
                (bare.0.as_bytes(), bare.1.as_bytes()) > (b.0.as_bytes(), b.1.as_bytes())
            });
            if greater {
                self.bare = Some(bare);
            }
        }
        if let Some(superseded) = &token.superseded {
            self.add(superseded);
        }
    }

    /// The token these writes show: the latest write's token with its registers, the other
    /// register's write kept aside when it is about another token.
    fn token(self) -> Token {
        let empty = |reference: String, requestor: String| Token {
            token_unique_reference: reference,
            token_requestor_id: requestor,
            status: None,
            status_version: None,
            decision: None,
            decision_version: None,
            superseded: None,
        };
        let (reference, requestor) = match (&self.status, &self.decision) {
            (Some(s), Some(d)) if d.identity_key() > s.identity_key() => (
                d.token_unique_reference.clone(),
                d.token_requestor_id.clone(),
            ),
            (Some(s), _) => (
                s.token_unique_reference.clone(),
                s.token_requestor_id.clone(),
            ),
            (None, Some(d)) => (
                d.token_unique_reference.clone(),
                d.token_requestor_id.clone(),
            ),
            (None, None) => {
                let (reference, requestor) = self.bare.unwrap_or_default();
                return empty(reference, requestor);
            }
        };
        let mut shown = empty(reference.clone(), requestor.clone());
        let mut aside: Option<Token> = None;
        if let Some(s) = self.status {
            let holder = if s.is_about(&reference, &requestor) {
                &mut shown
            } else {
                aside.insert(empty(s.token_unique_reference, s.token_requestor_id))
            };
            holder.status = s.value;
            holder.status_version = Some(s.version);
        }
        if let Some(d) = self.decision {
            let holder = if d.is_about(&reference, &requestor) {
                &mut shown
            } else {
                aside.insert(empty(d.token_unique_reference, d.token_requestor_id))
            };
            holder.decision = d.value;
            holder.decision_version = Some(d.version);
        }
        shown.superseded = aside.map(Box::new);
        shown
    }
}

/// Merges two views of the card's token: a join (commutative, associative, idempotent), so
/// that any order of arrival, with any duplicates, gives the same token.
///
/// Each register (status, decision) keeps its greatest write over every token of the card, in
/// this total order (the Lua twin in `store/scripts.rs` is the same):
/// 1. the event time (`at_ms`);
/// 2. the token unique reference, compared byte by byte;
/// 3. the token requestor id, byte by byte;
/// 4. the value's rank ([`TokenStatus::rank`], [`TokenizationDecision::rank`]: ties go to the
///    more restrictive);
/// 5. the notification id (`by`), byte by byte.
///
/// The token shown is the one of the greater of the two registers' writes by (1, 2, 3); the
/// other register shows when its write is about the same token, and is kept in `superseded`
/// otherwise. A token without any write shows only while no register has one (the greatest by
/// 2 then 3).
pub fn merge_tokens(base: Token, other: &Token) -> Token {
    let mut registers = Registers::default();
    registers.add(&base);
    registers.add(other);
    registers.token()
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    let now = time::OffsetDateTime::now_utc();
    i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_contract_ids_are_positive() {
        assert!(CardContractId::new(0).is_none());
        assert!(CardContractId::new(-5).is_none());
        assert_eq!(
            CardContractId::new(70001).map(CardContractId::get),
            Some(70001)
        );
        assert!(serde_json::from_str::<CardContractId>("0").is_err());
        assert!(CardContractId::new(99_999_999_999_999).is_some());
        assert!(CardContractId::new(100_000_000_000_000).is_none());
    }

    fn token(
        status: Option<(TokenStatus, i64, &str)>,
        decision: Option<(TokenizationDecision, i64, &str)>,
    ) -> Token {
        Token {
            token_unique_reference: "DM1".into(),
            token_requestor_id: "50123197928".into(),
            status: status.map(|s| s.0),
            status_version: status.map(|s| Version {
                at_ms: s.1,
                by: s.2.into(),
            }),
            decision: decision.map(|d| d.0),
            decision_version: decision.map(|d| Version {
                at_ms: d.1,
                by: d.2.into(),
            }),
            superseded: None,
        }
    }

    #[test]
    fn token_merge_is_last_writer_wins_per_register_in_any_order() {
        let a = token(Some((TokenStatus::Active, 10, "n2")), None);
        let b = token(
            Some((TokenStatus::Suspended, 20, "n3")),
            Some((TokenizationDecision::Approved, 5, "n1")),
        );
        let ab = merge_tokens(a.clone(), &b);
        let ba = merge_tokens(b.clone(), &a);
        assert_eq!(ab, ba);
        assert_eq!(ab.status, Some(TokenStatus::Suspended));
        assert_eq!(ab.decision, Some(TokenizationDecision::Approved));
        assert_eq!(merge_tokens(ab.clone(), &ab), ab);
        assert_eq!(ab.event_time_ms(), Some(20));
    }

    /// Single writes over a small domain full of ties: two times, references that sort
    /// differently as bytes and as words, two requestors, every status and decision, two ids.
    fn single_writes() -> Vec<Token> {
        let mut out = Vec::new();
        for at in [10, 20] {
            for reference in ["DMa", "DMB"] {
                for requestor in ["50123197928", "4"] {
                    for by in ["n-a", "n-B"] {
                        let base = Token {
                            token_unique_reference: reference.into(),
                            token_requestor_id: requestor.into(),
                            status: None,
                            status_version: None,
                            decision: None,
                            decision_version: None,
                            superseded: None,
                        };
                        let version = Version {
                            at_ms: at,
                            by: by.into(),
                        };
                        for status in [
                            TokenStatus::Pending,
                            TokenStatus::Active,
                            TokenStatus::Suspended,
                            TokenStatus::Deactivated,
                            TokenStatus::Inactive,
                        ] {
                            out.push(Token {
                                status: Some(status),
                                status_version: Some(version.clone()),
                                ..base.clone()
                            });
                        }
                        for decision in [
                            TokenizationDecision::Approved,
                            TokenizationDecision::Declined,
                            TokenizationDecision::RequireAdditionalAuthentication,
                        ] {
                            out.push(Token {
                                decision: Some(decision),
                                decision_version: Some(version.clone()),
                                ..base.clone()
                            });
                        }
                    }
                }
                // A token seen without any write (e.g. a token list without a status).
                out.push(Token {
                    token_unique_reference: reference.into(),
                    token_requestor_id: "50123197928".into(),
                    status: None,
                    status_version: None,
                    decision: None,
                    decision_version: None,
                    superseded: None,
                });
            }
        }
        out
    }

    fn fold(tokens: &[&Token]) -> Token {
        let (first, rest) = tokens.split_first().unwrap();
        rest.iter()
            .fold((*first).clone(), |acc, t| merge_tokens(acc, t))
    }

    #[test]
    fn token_merge_is_a_join_with_a_total_tie_break() {
        let writes = single_writes();
        // Inputs: single writes and merges of pairs (tokens with a superseded write among them).
        let mut inputs: Vec<Token> = writes.clone();
        for (i, a) in writes.iter().enumerate().step_by(7) {
            for b in writes.iter().skip(i % 5).step_by(11) {
                inputs.push(merge_tokens(a.clone(), b));
            }
        }
        assert!(inputs.iter().any(|t| t.superseded.is_some()));
        for a in inputs.iter().step_by(3) {
            assert_eq!(&merge_tokens(a.clone(), a), a, "idempotent");
            for b in inputs.iter().step_by(5) {
                let ab = merge_tokens(a.clone(), b);
                assert_eq!(ab, merge_tokens(b.clone(), a), "commutative: {a:?} {b:?}");
                for c in inputs.iter().step_by(97) {
                    assert_eq!(
                        merge_tokens(ab.clone(), c),
                        merge_tokens(a.clone(), &merge_tokens(b.clone(), c)),
                        "associative: {a:?} {b:?} {c:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn ties_go_by_reference_requestor_rank_then_id_as_bytes() {
        let at = |reference: &str, requestor: &str, status, by: &str| Token {
            token_unique_reference: reference.into(),
            token_requestor_id: requestor.into(),
            status: Some(status),
            status_version: Some(Version {
                at_ms: 10,
                by: by.into(),
            }),
            decision: None,
            decision_version: None,
            superseded: None,
        };
        let active = TokenStatus::Active;
        // Bytes: "DMa" > "DMB" (a word collation says otherwise).
        let a = at("DMa", "1", active, "n-1");
        let b = at("DMB", "1", TokenStatus::Deactivated, "n-2");
        assert_eq!(fold(&[&a, &b]), a);
        assert_eq!(fold(&[&b, &a]), a);
        // Same token: the requestor, then the more restrictive status, then the id.
        let r = at("DMa", "2", TokenStatus::Pending, "n-0");
        assert_eq!(fold(&[&a, &r]), r);
        let s = at("DMa", "1", TokenStatus::Suspended, "n-0");
        assert_eq!(fold(&[&s, &a]), s);
        let later_id = at("DMa", "1", active, "n-a");
        let earlier_id = at("DMa", "1", active, "n-B");
        assert_eq!(fold(&[&later_id, &earlier_id]), later_id);
        assert_eq!(fold(&[&earlier_id, &later_id]), later_id);
    }

    #[test]
    fn a_superseded_write_comes_back_with_its_token() {
        // A's status at 10, B's decision at 20, A's decision at 30: A shows both, whatever the
        // order (the old merge dropped A's status when B came between).
        let a10 = token(Some((TokenStatus::Active, 10, "n1")), None);
        let mut b20 = token(None, Some((TokenizationDecision::Approved, 20, "n2")));
        b20.token_unique_reference = "DM2".into();
        let a30 = token(None, Some((TokenizationDecision::Declined, 30, "n3")));
        let expected = token(
            Some((TokenStatus::Active, 10, "n1")),
            Some((TokenizationDecision::Declined, 30, "n3")),
        );
        for order in [
            [&a10, &b20, &a30],
            [&a10, &a30, &b20],
            [&b20, &a10, &a30],
            [&b20, &a30, &a10],
            [&a30, &a10, &b20],
            [&a30, &b20, &a10],
        ] {
            assert_eq!(fold(&order), expected);
        }
        // Between, B shows with its decision; A's status is kept aside, not shown.
        let between = fold(&[&a10, &b20]);
        assert_eq!(between.token_unique_reference, "DM2");
        assert_eq!(
            (between.status, between.decision),
            (None, Some(TokenizationDecision::Approved))
        );
        assert_eq!(between.superseded.as_deref(), Some(&a10));
        assert_eq!(between.event_time_ms(), Some(20));
        let json = serde_json::to_string(&between).unwrap();
        assert_eq!(serde_json::from_str::<Token>(&json).unwrap(), between);
        assert!(!serde_json::to_string(&a10).unwrap().contains("superseded"));
    }

    #[test]
    fn records_round_trip_through_json() {
        let mut r = EnrollmentRecord::new(
            CardContractId::new(70001).unwrap(),
            String::new(),
            EnrollmentState::Enrolled,
            1_800_000_000_123,
        );
        r.token = Some(token(
            Some((TokenStatus::Active, 1_800_000_000_456, "n1")),
            None,
        ));
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains("\"state\":\"ENROLLED\""), "{json}");
        assert_eq!(serde_json::from_str::<EnrollmentRecord>(&json).unwrap(), r);
    }
}
