//! The Redis store's process-local cache of enrollment records, for `GetEnrollmentStatus` hits
//! without a round trip to Redis ([`EnrollmentStore::get_cached`](super::EnrollmentStore)).
//!
//! Coherence comes from the change feed (`feed.rs`): a card is cached only while the process is
//! subscribed to its channel, and every write of a record (each script publishes the record it
//! wrote) reaches every replica's cache through it. The rules:
//!
//! - A card's first read subscribes its channel (in the background) and is answered from Redis;
//!   only a read that *starts after* the subscription is confirmed may fill the cache, so every
//!   write after that read is published to a channel the process listens to.
//! - A published record replaces the cached one (a higher or equal revision: revisions only
//!   grow), and cancels reads in flight, whose answer may be older. A published NOT_ENROLLED
//!   record is dropped instead: its key lives `store.not_enrolled_ttl`, not in the message, and
//!   the next read takes it from Redis with its TTL.
//! - A write made by this process forgets the card's cached record when it returns (reads on this
//!   replica see their own writes at once, whatever the feed's delay).
//! - When the feed's connection is lost (closed, or a command unanswered) every record is dropped
//!   and nothing is cached until the channels are subscribed again on a new connection.
//! - What no script publishes (a record expiring, `FLUSHALL`, `DEL` or an edit by hand, a
//!   message lost between cluster nodes) is bounded by age: a record is served at most
//!   `store.cache_max_age` after it was read from Redis or refreshed by the feed, and never past
//!   the key's own TTL as read.
//!
//! So a change is visible on every replica at most `store.cache_max_age` after it is made, and
//! within the feed's delivery time (milliseconds) when the service made it.
//!
//! The cache holds at most `store.cache_size` cards (one subscribed channel each), evicting by
//! CLOCK (second chance: a card read since the last pass stays).

use crate::domain::{CardContractId, EnrollmentRecord, EnrollmentState, SharedRecord};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// `store.cache_size` and `store.cache_max_age`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordCacheSettings {
    /// Cards cached at most; 0 turns the cache off.
    pub capacity: usize,
    /// How long a record is served without news of it (the staleness bound).
    pub max_age: Duration,
}

impl Default for RecordCacheSettings {
    fn default() -> Self {
        Self {
            capacity: 10_000,
            max_age: Duration::from_secs(2),
        }
    }
}

/// Permission to fill a card's slot with what a read returns, unless something newer came first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Ticket {
    card: CardContractId,
    slot: u64,
    token: u64,
}

/// What [`RecordCache::lookup`] says to do.
#[derive(Debug)]
pub(super) enum Lookup {
    /// The cached record (the cache's own version: a pointer, not a copy).
    Hit(Arc<SharedRecord>),
    /// Read Redis and [`RecordCache::fill`] the answer.
    Load(Ticket),
    /// Read Redis, answer, do not cache (not subscribed yet). `track`: subscribe the card's
    /// channel for this slot; `evicted`: unsubscribe that card's slot.
    Bypass {
        track: Option<u64>,
        evicted: Option<(CardContractId, u64)>,
    },
}

struct Cached {
    record: Arc<SharedRecord>,
    fresh_until: Instant,
}

struct Slot {
    /// Which slot of the card this is (a card evicted and cached again gets a new one).
    id: u64,
    /// The channel's subscription is confirmed on the feed's current connection.
    subscribed: bool,
    value: Option<Cached>,
    /// The read allowed to fill the slot (0: none).
    loading: u64,
    /// Read since the eviction hand last passed.
    referenced: bool,
}

struct State {
    slots: HashMap<CardContractId, Slot>,
    /// The eviction order (each cached card once).
    clock: VecDeque<CardContractId>,
    next_id: u64,
}

/// The cache; shared by the store (reads, writes) and its feed (subscriptions, published
/// records, lost connections).
pub(super) struct RecordCache {
    settings: RecordCacheSettings,
    state: Mutex<State>,
}

impl std::fmt::Debug for RecordCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordCache")
            .field("settings", &self.settings)
            .field("cards", &self.lock().slots.len())
            .finish()
    }
}

impl RecordCache {
    /// An empty cache, or `None` when `settings` turn it off.
    pub(super) fn new(settings: RecordCacheSettings) -> Option<Self> {
        (settings.capacity > 0).then(|| Self {
            settings,
            state: Mutex::new(State {
                slots: HashMap::new(),
                clock: VecDeque::new(),
                next_id: 1,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What to do to read `card`.
    pub(super) fn lookup(&self, card: CardContractId) -> Lookup {
        let now = Instant::now();
        let mut state = self.lock();
        let state = &mut *state;
        if let Some(slot) = state.slots.get_mut(&card) {
            slot.referenced = true;
            if !slot.subscribed {
                return Lookup::Bypass {
                    track: None,
                    evicted: None,
                };
            }
            if let Some(cached) = slot.value.as_ref().filter(|c| now < c.fresh_until) {
                return Lookup::Hit(cached.record.clone());
            }
            state.next_id += 1;
            let token = state.next_id;
            slot.value = None;
            slot.loading = token;
            return Lookup::Load(Ticket {
                card,
                slot: slot.id,
                token,
            });
        }
        state.next_id += 1;
        let token = state.next_id;
        state.slots.insert(
            card,
            Slot {
                id: token,
                subscribed: false,
                value: None,
                loading: 0,
                referenced: true,
            },
        );
        state.clock.push_back(card);
        let evicted = if state.slots.len() > self.settings.capacity {
            evict_one(state)
        } else {
            None
        };
        Lookup::Bypass {
            track: Some(token),
            evicted,
        }
    }

    /// Caches what the read of `ticket` returned (`ttl`: the key's TTL as read, if any), unless
    /// the slot changed hands, lost its subscription, or news of the card came meanwhile.
    pub(super) fn fill(&self, ticket: Ticket, record: &Arc<SharedRecord>, ttl: Option<Duration>) {
        let max_age = ttl.map_or(self.settings.max_age, |t| t.min(self.settings.max_age));
        let mut state = self.lock();
        let Some(slot) = state.slots.get_mut(&ticket.card) else {
            return;
        };
        if slot.id != ticket.slot || !slot.subscribed || slot.loading != ticket.token {
            return;
        }
        slot.loading = 0;
        slot.value = Some(Cached {
            record: record.clone(),
            fresh_until: Instant::now() + max_age,
        });
    }

    /// The feed confirmed the subscription of `slot`'s channel on its current connection.
    pub(super) fn subscribed(&self, card: CardContractId, slot: u64) {
        if let Some(s) = self.lock().slots.get_mut(&card).filter(|s| s.id == slot) {
            s.subscribed = true;
        }
    }

    /// A record the feed delivered: the newest written state of its card.
    pub(super) fn published(&self, record: &EnrollmentRecord) {
        let mut state = self.lock();
        let Some(slot) = state.slots.get_mut(&record.card_contract_id) else {
            return;
        };
        if !slot.subscribed {
            return;
        }
        // A read in flight may have read an older state.
        slot.loading = 0;
        let newer = slot
            .value
            .as_ref()
            .is_none_or(|c| record.revision >= c.record.record().revision);
        if newer {
            // The message carries no TTL, and a NOT_ENROLLED record (a status miss's answer)
            // lives only `store.not_enrolled_ttl`, which may be shorter than the bound: the
            // next read takes it from Redis with its TTL, which then caps its age.
            slot.value = (record.state != EnrollmentState::NotEnrolled).then(|| Cached {
                record: SharedRecord::new(record.clone()),
                fresh_until: Instant::now() + self.settings.max_age,
            });
        }
    }

    /// This process wrote `card`'s record: the next read goes to Redis.
    pub(super) fn forget(&self, card: CardContractId) {
        if let Some(slot) = self.lock().slots.get_mut(&card) {
            slot.value = None;
            slot.loading = 0;
        }
    }

    /// The feed's connection is gone: changes may be missed from now on.
    pub(super) fn disconnected(&self) {
        for slot in self.lock().slots.values_mut() {
            slot.subscribed = false;
            slot.value = None;
            slot.loading = 0;
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().slots.len()
    }
}

/// Removes one card by CLOCK: cards read since the hand's last pass get a second chance.
fn evict_one(state: &mut State) -> Option<(CardContractId, u64)> {
    // Two passes at most: the first clears every mark.
    for _ in 0..2 * state.clock.len() {
        let card = state.clock.pop_front()?;
        let Some(slot) = state.slots.get_mut(&card) else {
            continue;
        };
        if slot.referenced {
            slot.referenced = false;
            state.clock.push_back(card);
            continue;
        }
        let id = slot.id;
        state.slots.remove(&card);
        return Some((card, id));
    }
    None
}

/// Forgets a card's cached record when dropped: held across a write, so that the card is
/// forgotten once the write returned, whatever its outcome.
pub(super) struct ForgetOnDrop<'a> {
    cache: Option<&'a RecordCache>,
    card: CardContractId,
}

impl<'a> ForgetOnDrop<'a> {
    pub(super) fn new(cache: Option<&'a RecordCache>, card: CardContractId) -> Self {
        Self { cache, card }
    }
}

impl Drop for ForgetOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(cache) = self.cache {
            cache.forget(self.card);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn card(id: i64) -> CardContractId {
        CardContractId::new(id).unwrap()
    }

    fn record(id: i64, revision: i64) -> EnrollmentRecord {
        let mut r = EnrollmentRecord::new(
            card(id),
            "default".into(),
            EnrollmentState::Enrolled,
            1_800_000_000_000,
        );
        r.revision = revision;
        r
    }

    fn cache(capacity: usize) -> RecordCache {
        RecordCache::new(RecordCacheSettings {
            capacity,
            max_age: Duration::from_secs(60),
        })
        .unwrap()
    }

    /// First read: bypass and track; once subscribed: a load; filled: hits.
    fn cached(cache: &RecordCache, id: i64, revision: i64) {
        let Lookup::Bypass {
            track: Some(slot), ..
        } = cache.lookup(card(id))
        else {
            panic!("the first read subscribes")
        };
        cache.subscribed(card(id), slot);
        let Lookup::Load(ticket) = cache.lookup(card(id)) else {
            panic!("a subscribed card loads")
        };
        cache.fill(ticket, &SharedRecord::new(record(id, revision)), None);
        assert!(matches!(cache.lookup(card(id)), Lookup::Hit(r) if r.revision == revision));
    }

    #[test]
    fn a_published_not_enrolled_record_is_read_again_with_its_ttl() {
        let cache = cache(10);
        cached(&cache, 1, 1);
        let mut answer = record(1, 2);
        answer.state = EnrollmentState::NotEnrolled;
        cache.published(&answer);
        // Its key may expire before the bound: the next read loads it, TTL and all.
        let Lookup::Load(ticket) = cache.lookup(card(1)) else {
            panic!("a NOT_ENROLLED record the feed delivered is served from the cache")
        };
        cache.fill(
            ticket,
            &SharedRecord::new(answer.clone()),
            Some(Duration::from_millis(1)),
        );
        std::thread::sleep(Duration::from_millis(5));
        assert!(matches!(cache.lookup(card(1)), Lookup::Load(_)));
        // Any other state is served until the bound.
        answer.state = EnrollmentState::Enrolled;
        answer.revision = 3;
        cache.published(&answer);
        assert!(matches!(cache.lookup(card(1)), Lookup::Hit(r) if r.revision == 3));
    }

    #[test]
    fn size_zero_turns_the_cache_off() {
        assert!(
            RecordCache::new(RecordCacheSettings {
                capacity: 0,
                max_age: Duration::from_secs(1)
            })
            .is_none()
        );
    }

    #[test]
    fn nothing_is_cached_before_the_subscription_is_confirmed() {
        let cache = cache(10);
        let Lookup::Bypass {
            track: Some(slot), ..
        } = cache.lookup(card(1))
        else {
            panic!()
        };
        // Still unconfirmed: bypass, and no second subscription.
        assert!(matches!(
            cache.lookup(card(1)),
            Lookup::Bypass { track: None, .. }
        ));
        // A confirmation for another slot of the card does not count.
        cache.subscribed(card(1), slot + 1000);
        assert!(matches!(cache.lookup(card(1)), Lookup::Bypass { .. }));
        cache.subscribed(card(1), slot);
        assert!(matches!(cache.lookup(card(1)), Lookup::Load(_)));
    }

    #[test]
    fn news_during_a_read_wins_over_the_read() {
        let cache = cache(10);
        cached(&cache, 1, 5);
        cache.forget(card(1));
        let Lookup::Load(ticket) = cache.lookup(card(1)) else {
            panic!()
        };
        // The feed delivers revision 7 while the read (which saw 6) is in flight.
        cache.published(&record(1, 7));
        cache.fill(ticket, &SharedRecord::new(record(1, 6)), None);
        assert!(matches!(cache.lookup(card(1)), Lookup::Hit(r) if r.revision == 7));
        // An older message never replaces a newer record.
        cache.published(&record(1, 6));
        assert!(matches!(cache.lookup(card(1)), Lookup::Hit(r) if r.revision == 7));
        // A local write forgets; a read that started before it cannot fill.
        cache.forget(card(1));
        let Lookup::Load(ticket) = cache.lookup(card(1)) else {
            panic!()
        };
        cache.forget(card(1));
        cache.fill(ticket, &SharedRecord::new(record(1, 7)), None);
        assert!(matches!(cache.lookup(card(1)), Lookup::Load(_)));
    }

    #[test]
    fn a_lost_connection_drops_everything_until_subscribed_again() {
        let cache = cache(10);
        cached(&cache, 1, 5);
        cache.forget(card(1));
        let Lookup::Load(ticket) = cache.lookup(card(1)) else {
            panic!()
        };
        cache.disconnected();
        cache.fill(ticket, &SharedRecord::new(record(1, 5)), None);
        cache.published(&record(1, 6));
        assert!(matches!(
            cache.lookup(card(1)),
            Lookup::Bypass { track: None, .. }
        ));
    }

    #[test]
    fn records_age_out_and_never_outlive_the_key_ttl() {
        let cache = RecordCache::new(RecordCacheSettings {
            capacity: 10,
            // Long enough that a loaded machine does not age the record out between its fill
            // and the hit `cached` checks right after.
            max_age: Duration::from_millis(300),
        })
        .unwrap();
        let Lookup::Bypass {
            track: Some(slot), ..
        } = cache.lookup(card(1))
        else {
            panic!()
        };
        cache.subscribed(card(1), slot);
        let Lookup::Load(ticket) = cache.lookup(card(1)) else {
            panic!()
        };
        cache.fill(
            ticket,
            &SharedRecord::new(record(1, 1)),
            Some(Duration::ZERO),
        );
        assert!(
            matches!(cache.lookup(card(1)), Lookup::Load(_)),
            "a key about to expire is not cached"
        );
        cached(&cache, 2, 1);
        std::thread::sleep(Duration::from_millis(400));
        assert!(matches!(cache.lookup(card(2)), Lookup::Load(_)));
    }

    #[test]
    fn the_size_is_bounded_and_recently_read_cards_stay() {
        let cache = cache(3);
        for id in 1..=3 {
            cached(&cache, id, 1);
        }
        // All three were read: the hand clears their marks and takes the oldest.
        let Lookup::Bypass { evicted, .. } = cache.lookup(card(4)) else {
            panic!()
        };
        assert_eq!(evicted.map(|(c, _)| c), Some(card(1)));
        assert_eq!(cache.len(), 3);
        // Card 2 read again: card 3 goes next.
        assert!(matches!(cache.lookup(card(2)), Lookup::Hit(_)));
        let Lookup::Bypass { evicted, .. } = cache.lookup(card(5)) else {
            panic!()
        };
        assert_eq!(evicted.map(|(c, _)| c), Some(card(3)));
        assert_eq!(cache.len(), 3);
    }
}
