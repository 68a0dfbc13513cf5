//! The in-memory store: the embedded default. Same semantics as Redis (merging, dedup, leases,
//! TTLs, change events); state is lost when the process exits and is not shared between replicas.

use super::bounded::Bounded;
use super::{
    ChangeStream, EnrollmentStore, NotificationResult, OptOutStamp, PutMode, Retention, StoreError,
};
use crate::domain::{
    Begin, CardContractId, EnrollmentRecord, IdempotencyRecord, Merge, OptOut, SharedRecord,
    TokenEvent, merge,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_stream::StreamExt as _;

/// Expired entries are swept every this many writes, so that the maps do not grow for ever.
const SWEEP_EVERY: u64 = 1024;

/// The default of `store.memory_max_entries`.
pub const DEFAULT_MAX_ENTRIES: usize = 100_000;

struct Maps {
    writes: u64,
    /// Each version shared with the status reads that hit it (no copy per read).
    records: Bounded<CardContractId, (Arc<SharedRecord>, Instant)>,
    /// (card, notification id) → (content hash, expiry).
    dedup: Bounded<(CardContractId, String), (String, Instant)>,
    idempotency: Bounded<String, (IdempotencyRecord, Instant)>,
    locks: HashMap<CardContractId, (String, Instant)>,
    in_progress: HashMap<CardContractId, i64>,
    /// ENROLLED cards and when each is due for a check against Click to Pay (bounded like the
    /// records: an evicted card is only no longer checked by the reconciler).
    enrolled: Bounded<CardContractId, i64>,
    /// Opt-outs by subject: never evicted (few, and forgetting one would enroll a cardholder
    /// who said no).
    opt_outs: HashMap<String, OptOut>,
}

impl Maps {
    fn new(max_entries: usize) -> Self {
        Self {
            writes: 0,
            records: Bounded::new(max_entries),
            dedup: Bounded::new(max_entries),
            idempotency: Bounded::new(max_entries),
            locks: HashMap::new(),
            in_progress: HashMap::new(),
            enrolled: Bounded::new(max_entries),
            opt_outs: HashMap::new(),
        }
    }
}

/// Everything in maps behind one lock (each operation is one critical section: atomic).
pub struct MemoryStore {
    retention: Retention,
    // Shared with the watch streams, which re-read a record after they lagged.
    maps: Arc<Mutex<Maps>>,
    /// Every change of every card (watchers pick their card's): each behind an `Arc`, so that a
    /// slot of the channel is a pointer and a watcher clones only its own card's records.
    changes: broadcast::Sender<Arc<EnrollmentRecord>>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// An empty store holding at most [`DEFAULT_MAX_ENTRIES`] of each kind of entry.
    pub fn new(retention: Retention) -> Self {
        Self::with_capacity(retention, DEFAULT_MAX_ENTRIES)
    }

    /// An empty store holding at most `max_entries` records, as many dedup markers and as many
    /// idempotency records: past that the oldest are evicted (a development store; evicting a
    /// dedup marker forgets that notification id early).
    pub fn with_capacity(retention: Retention, max_entries: usize) -> Self {
        Self {
            retention,
            maps: Arc::new(Mutex::new(Maps::new(max_entries))),
            changes: broadcast::channel(1024).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Maps> {
        // Every critical section leaves the maps consistent (single inserts), so a poisoned
        // lock is still usable.
        self.maps.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a write; every `SWEEP_EVERY` writes, drops whatever has expired.
    fn sweep(maps: &mut Maps) {
        maps.writes += 1;
        if !maps.writes.is_multiple_of(SWEEP_EVERY) {
            return;
        }
        let now = Instant::now();
        maps.records.retain(|_, (_, expires)| *expires > now);
        maps.dedup.retain(|_, (_, expires)| *expires > now);
        maps.idempotency.retain(|_, (_, expires)| *expires > now);
        maps.locks.retain(|_, (_, expires)| *expires > now);
    }

    fn live_record(maps: &mut Maps, card: CardContractId) -> Option<EnrollmentRecord> {
        Self::live_shared(maps, card).map(|shared| shared.record().clone())
    }

    fn live_shared(maps: &mut Maps, card: CardContractId) -> Option<Arc<SharedRecord>> {
        match maps.records.get(&card) {
            Some((r, expires)) if *expires > Instant::now() => Some(r.clone()),
            Some(_) => {
                maps.records.remove(&card);
                None
            }
            None => None,
        }
    }

    fn publish(&self, record: &EnrollmentRecord) {
        // No receivers is fine: nobody watches.
        let _ = self.changes.send(Arc::new(record.clone()));
    }
}

impl MemoryStore {
    /// The write of `put_enrollment`; with `fence`, only while that owner holds the card's
    /// (unexpired) lock, else `None`; `keep_token`: merge the stored token (else replace it, its references retired).
    fn put(
        &self,
        record: &EnrollmentRecord,
        mode: PutMode,
        ttl: std::time::Duration,
        fence: Option<&str>,
        keep_token: bool,
    ) -> Result<Option<EnrollmentRecord>, StoreError> {
        super::check_record(record)?;
        let stored = {
            let mut maps = self.lock();
            if let Some(owner) = fence {
                let holds = maps
                    .locks
                    .get(&record.card_contract_id)
                    .is_some_and(|(holder, expires)| holder == owner && *expires > Instant::now());
                if !holds {
                    return Ok(None);
                }
            }
            Self::sweep(&mut maps);
            let shared = Self::live_shared(&mut maps, record.card_contract_id);
            let existing = shared.as_ref().map(|s| s.record());
            if let (PutMode::IfAbsent, Some(existing)) = (mode, existing) {
                return Ok(Some(existing.clone()));
            }
            let stored = if keep_token {
                record.clone().with_token_of(existing)
            } else {
                record.clone().retiring_tokens_of(existing)
            };
            if let Some(same) = shared.as_ref().filter(|s| s.record().same_content(&stored)) {
                // Nothing but times would change: no write, the TTL renewed.
                maps.records.insert(
                    record.card_contract_id,
                    (same.clone(), Instant::now() + ttl),
                );
                return Ok(Some(same.record().clone()));
            }
            let stored = stored.stamped(existing, crate::domain::now_ms());
            maps.records.insert(
                record.card_contract_id,
                (SharedRecord::new(stored.clone()), Instant::now() + ttl),
            );
            stored
        };
        self.publish(&stored);
        Ok(Some(stored))
    }
}

/// Up to `limit` cards of an index (card -> time) whose time is before `before_ms`, the earliest
/// first: the memory twin of the Redis indexes' `ZRANGE ... BYSCORE LIMIT`.
fn earliest_before<'a>(
    index: impl Iterator<Item = (&'a CardContractId, &'a i64)>,
    before_ms: i64,
    limit: usize,
) -> Vec<CardContractId> {
    let mut cards: Vec<(i64, CardContractId)> = index
        .filter(|(_, at)| **at < before_ms)
        .map(|(card, at)| (*at, *card))
        .collect();
    cards.sort();
    cards.into_iter().take(limit).map(|(_, c)| c).collect()
}

#[async_trait::async_trait]
impl EnrollmentStore for MemoryStore {
    async fn get(&self, card: CardContractId) -> Result<Option<EnrollmentRecord>, StoreError> {
        Ok(Self::live_record(&mut self.lock(), card))
    }

    async fn get_cached(
        &self,
        card: CardContractId,
    ) -> Result<Option<Arc<SharedRecord>>, StoreError> {
        Ok(Self::live_shared(&mut self.lock(), card))
    }

    async fn put_enrollment(
        &self,
        record: &EnrollmentRecord,
        mode: PutMode,
        ttl: std::time::Duration,
    ) -> Result<EnrollmentRecord, StoreError> {
        self.put(record, mode, ttl, None, true)
            .map(|stored| stored.unwrap_or_else(|| record.clone()))
    }

    async fn put_enrollment_fenced(
        &self,
        record: &EnrollmentRecord,
        ttl: std::time::Duration,
        lock_owner: &str,
    ) -> Result<Option<EnrollmentRecord>, StoreError> {
        self.put(record, PutMode::Merge, ttl, Some(lock_owner), true)
    }

    async fn put_fresh_enrollment_fenced(
        &self,
        record: &EnrollmentRecord,
        ttl: std::time::Duration,
        lock_owner: &str,
    ) -> Result<Option<EnrollmentRecord>, StoreError> {
        self.put(record, PutMode::Merge, ttl, Some(lock_owner), false)
    }

    async fn apply_notification(
        &self,
        event: &TokenEvent,
    ) -> Result<NotificationResult, StoreError> {
        super::check_event(event)?;
        let applied = {
            let mut maps = self.lock();
            Self::sweep(&mut maps);
            let now = Instant::now();
            let dedup_key = (event.card_contract_id, event.notification_id.clone());
            let hash = event.content_hash();
            if let Some((seen, _)) = maps
                .dedup
                .get(&dedup_key)
                .filter(|(_, expires)| *expires > now)
            {
                return Ok(if *seen == hash {
                    NotificationResult::Duplicate
                } else {
                    NotificationResult::Conflict
                });
            }
            let existing = Self::live_record(&mut maps, event.card_contract_id);
            maps.dedup
                .insert(dedup_key, (hash, now + self.retention.notification_dedup));
            let record = match merge(existing.as_ref(), event) {
                Merge::Stale => return Ok(NotificationResult::Stale),
                Merge::Applied(record) => {
                    record.stamped(existing.as_ref(), crate::domain::now_ms())
                }
            };
            maps.records.insert(
                record.card_contract_id,
                (
                    SharedRecord::new(record.clone()),
                    now + self.retention.enrollment,
                ),
            );
            (record.clone(), NotificationResult::Applied(record))
        };
        self.publish(&applied.0);
        Ok(applied.1)
    }

    async fn idempotency_begin(
        &self,
        scope: &str,
        proposal: &IdempotencyRecord,
        now_ms: i64,
    ) -> Result<Begin, StoreError> {
        let mut maps = self.lock();
        Self::sweep(&mut maps);
        let now = Instant::now();
        let current = maps
            .idempotency
            .get(scope)
            .filter(|(_, expires)| *expires > now)
            .map(|(r, _)| r.clone());
        let begin = match current {
            None => Begin::New(proposal.clone()),
            Some(r) if r.fingerprint != proposal.fingerprint => return Ok(Begin::Reused),
            Some(r) if r.outcome.is_some() => return Ok(Begin::Replay(r)),
            Some(r) if r.lease_until_ms > now_ms => {
                return Ok(Begin::InFlight(r.lease_until_ms - now_ms));
            }
            Some(mut r) => {
                r.owner = proposal.owner.clone();
                r.lease_until_ms = proposal.lease_until_ms;
                Begin::Resume(r)
            }
        };
        let (Begin::New(r) | Begin::Resume(r)) = &begin else {
            return Ok(begin);
        };
        maps.idempotency.insert(
            scope.to_owned(),
            (r.clone(), now + self.retention.idempotency),
        );
        Ok(begin)
    }

    async fn idempotency_update(
        &self,
        scope: &str,
        record: &IdempotencyRecord,
    ) -> Result<bool, StoreError> {
        let mut maps = self.lock();
        match maps.idempotency.get(scope) {
            Some((current, _)) if current.owner != record.owner => Ok(false),
            _ => {
                maps.idempotency.insert(
                    scope.to_owned(),
                    (record.clone(), Instant::now() + self.retention.idempotency),
                );
                Ok(true)
            }
        }
    }

    async fn lock_card(
        &self,
        card: CardContractId,
        owner: &str,
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError> {
        let mut maps = self.lock();
        let now = Instant::now();
        match maps.locks.get(&card) {
            Some((holder, expires)) if *expires > now && holder != owner => Ok(false),
            _ => {
                maps.locks.insert(card, (owner.to_owned(), now + ttl));
                Ok(true)
            }
        }
    }

    async fn renew_card(
        &self,
        card: CardContractId,
        owner: &str,
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError> {
        let mut maps = self.lock();
        let now = Instant::now();
        match maps.locks.get_mut(&card) {
            Some((holder, expires)) if holder == owner && *expires > now => {
                *expires = now + ttl;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn unlock_card(&self, card: CardContractId, owner: &str) -> Result<bool, StoreError> {
        let mut maps = self.lock();
        let Some((holder, expires)) = maps.locks.get(&card) else {
            return Ok(false);
        };
        if holder != owner {
            return Ok(false);
        }
        // An owner's lock that ran out is gone on Redis: cleared here too, and not released.
        let held = *expires > Instant::now();
        maps.locks.remove(&card);
        Ok(held)
    }

    async fn watch(&self, card: CardContractId) -> Result<ChangeStream, StoreError> {
        let changes = tokio_stream::wrappers::BroadcastStream::new(self.changes.subscribe());
        let maps = self.maps.clone();
        Ok(Box::pin(changes.filter_map(move |r| match r {
            Ok(record) if record.card_contract_id == card => Some(Arc::unwrap_or_clone(record)),
            Ok(_) => None,
            // A watcher too slow for the channel missed changes, perhaps the card's last one:
            // it gets the record as it is now (the watch sends it if its revision is newer).
            Err(_lagged) => {
                Self::live_record(&mut maps.lock().unwrap_or_else(|p| p.into_inner()), card)
            }
        })))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn track_in_progress(
        &self,
        card: CardContractId,
        since_ms: i64,
    ) -> Result<(), StoreError> {
        self.lock().in_progress.entry(card).or_insert(since_ms);
        Ok(())
    }

    async fn requeue_in_progress(
        &self,
        card: CardContractId,
        since_ms: i64,
    ) -> Result<(), StoreError> {
        if let Some(since) = self.lock().in_progress.get_mut(&card) {
            *since = since_ms;
        }
        Ok(())
    }

    async fn untrack_in_progress(&self, card: CardContractId) -> Result<(), StoreError> {
        self.lock().in_progress.remove(&card);
        Ok(())
    }

    async fn in_progress_before(
        &self,
        before_ms: i64,
        limit: usize,
    ) -> Result<Vec<CardContractId>, StoreError> {
        Ok(earliest_before(
            self.lock().in_progress.iter(),
            before_ms,
            limit,
        ))
    }

    async fn count_in_progress(&self, before_ms: i64) -> Result<(u64, u64), StoreError> {
        let maps = self.lock();
        let before = maps
            .in_progress
            .values()
            .filter(|since| **since < before_ms)
            .count();
        Ok((maps.in_progress.len() as u64, before as u64))
    }

    async fn track_enrolled(
        &self,
        card: CardContractId,
        check_at_ms: i64,
    ) -> Result<(), StoreError> {
        self.lock().enrolled.insert(card, check_at_ms);
        Ok(())
    }

    async fn untrack_enrolled(&self, card: CardContractId) -> Result<(), StoreError> {
        self.lock().enrolled.remove(&card);
        Ok(())
    }

    async fn untrack_enrolled_due(
        &self,
        card: CardContractId,
        before_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut maps = self.lock();
        if maps.enrolled.get(&card).is_some_and(|at| *at < before_ms) {
            maps.enrolled.remove(&card);
            return Ok(true);
        }
        Ok(false)
    }

    async fn enrolled_due(
        &self,
        before_ms: i64,
        limit: usize,
    ) -> Result<Vec<CardContractId>, StoreError> {
        Ok(earliest_before(
            self.lock().enrolled.iter(),
            before_ms,
            limit,
        ))
    }

    async fn get_opt_out(&self, subjects: &[String]) -> Result<Option<OptOut>, StoreError> {
        let maps = self.lock();
        Ok(subjects.iter().find_map(|s| maps.opt_outs.get(s).cloned()))
    }

    async fn read_opt_out(
        &self,
        subject: &str,
    ) -> Result<Option<(OptOut, OptOutStamp)>, StoreError> {
        let maps = self.lock();
        maps.opt_outs
            .get(subject)
            .map(|opt_out| Ok((opt_out.clone(), opt_out_stamp(opt_out)?)))
            .transpose()
    }

    async fn swap_opt_out(
        &self,
        subject: &str,
        expected: Option<&OptOutStamp>,
        new: Option<&OptOut>,
    ) -> Result<bool, StoreError> {
        let mut maps = self.lock();
        // Compared as Redis compares them: the text the service writes for each.
        let kept = maps.opt_outs.get(subject).map(opt_out_stamp).transpose()?;
        if kept.as_ref() != expected {
            return Ok(false);
        }
        match new {
            Some(opt_out) => maps.opt_outs.insert(subject.to_owned(), opt_out.clone()),
            None => maps.opt_outs.remove(subject),
        };
        Ok(true)
    }

    async fn lead(
        &self,
        _name: &str,
        _owner: &str,
        _ttl: std::time::Duration,
    ) -> Result<bool, StoreError> {
        // One process holds the whole store: it always leads.
        Ok(true)
    }
}

/// The stamp of an opt-out as the Redis store would read it: the text the service writes for it.
fn opt_out_stamp(opt_out: &OptOut) -> Result<OptOutStamp, StoreError> {
    serde_json::to_string(opt_out)
        .map(OptOutStamp::of)
        .map_err(|e| StoreError::Corrupt(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{EnrollmentState, TokenEventKind};
    use std::time::Duration;

    fn retention() -> Retention {
        let day = Duration::from_secs(86_400);
        Retention {
            enrollment: day,
            notification_dedup: day,
            idempotency: day,
        }
    }

    fn tcn(id: &str, card: i64, at_ms: i64) -> TokenEvent {
        TokenEvent {
            notification_id: id.into(),
            event_at_ms: at_ms,
            card_contract_id: CardContractId::new(card).unwrap(),
            token_unique_reference: format!("DM{card}"),
            token_requestor_id: crate::domain::CLICK_TO_PAY_TOKEN_REQUESTOR_ID.into(),
            wallet_name: crate::domain::CLICK_TO_PAY_WALLET_NAME.into(),
            kind: TokenEventKind::Complete,
        }
    }

    #[tokio::test]
    async fn a_watcher_that_lagged_gets_its_cards_latest_record() {
        let store = MemoryStore::new(retention());
        let card = CardContractId::new(70001).unwrap();
        let mut changes = store.watch(card).await.unwrap();
        store
            .put_enrollment(
                &EnrollmentRecord::new(card, String::new(), EnrollmentState::Enrolled, 0),
                PutMode::Merge,
                Duration::from_secs(60),
            )
            .await
            .unwrap();
        let NotificationResult::Applied(last) = store
            .apply_notification(&tcn("n-last", 70001, 1_800_000_000_000))
            .await
            .unwrap()
        else {
            panic!("applied")
        };
        // More changes of other cards than the channel holds: the card's own are pushed out.
        for i in 0..2_000 {
            store
                .apply_notification(&tcn(&format!("o-{i}"), 80_000 + i, 1_800_000_000_000))
                .await
                .unwrap();
        }
        let seen = tokio::time::timeout(Duration::from_secs(5), changes.next())
            .await
            .expect("a record, not silence")
            .unwrap();
        assert_eq!(seen, last);
    }

    #[tokio::test]
    async fn the_store_stays_within_its_capacity() {
        let store = MemoryStore::with_capacity(retention(), 1_000);
        for i in 0..5_000 {
            store
                .apply_notification(&tcn(&format!("n-{i}"), 90_000 + i, 1_800_000_000_000))
                .await
                .unwrap();
        }
        for i in 0..5_000 {
            let card = CardContractId::new(90_000 + i).unwrap();
            store.track_enrolled(card, i).await.unwrap();
        }
        // The index of ENROLLED cards too: the newest 1,000, the most overdue first.
        let due = store.enrolled_due(i64::MAX, 10_000).await.unwrap();
        assert_eq!(due.len(), 1_000);
        assert_eq!(due[0], CardContractId::new(94_000).unwrap());
        let maps = store.lock();
        assert_eq!((maps.records.len(), maps.dedup.len()), (1_000, 1_000));
        assert_eq!(
            (maps.records.evicted(), maps.dedup.evicted()),
            (4_000, 4_000)
        );
        // The newest are kept.
        assert!(
            maps.records
                .get(&CardContractId::new(94_999).unwrap())
                .is_some()
        );
    }
}
