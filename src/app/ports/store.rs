//! What the use cases need from a store, in their own words: the enrollment records,
//! idempotency records, dedup markers, card locks and change feed. The adapters (`store::`
//! Redis and in-memory) implement it with the same semantics.

use crate::domain::{
    Begin, CardContractId, EnrollmentRecord, IdempotencyRecord, OptOut, SharedRecord, TokenEvent,
};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// Why a store operation failed. Messages never carry record contents.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or did not answer in time; a retry may succeed.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A stored value could not be decoded.
    #[error("stored record is unreadable: {0}")]
    Corrupt(String),
    /// A value the store cannot keep exactly: a time at or past 5138-11-16T09:46:40Z (see
    /// [`crate::domain::STORE_INTEGER_LIMIT`]). Nothing was written; a retry does not help.
    #[error("not stored: {0}")]
    Refused(String),
    /// The store's settings cannot be used (a bad URL, an unreadable password or CA file).
    /// Messages name the setting, never a password.
    #[error("store settings: {0}")]
    Settings(String),
}

/// What applying a notification did.
// Short-lived return value, one per notification.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotificationResult {
    /// Merged; the record is now this.
    Applied(EnrollmentRecord),
    /// This notification id was seen before (within the dedup retention), with this content.
    Duplicate,
    /// This notification id was seen before with other content: nothing was written.
    Conflict,
    /// Older than what the record holds for the token: nothing changed, nothing was written.
    Stale,
}

impl NotificationResult {
    /// What was done, without the record.
    pub fn effect(&self) -> NotificationEffect {
        match self {
            NotificationResult::Applied(_) => NotificationEffect::Applied,
            NotificationResult::Duplicate => NotificationEffect::Duplicate,
            NotificationResult::Conflict => NotificationEffect::Conflict,
            NotificationResult::Stale => NotificationEffect::Stale,
        }
    }
}

/// What applying a notification did, as [`NotificationResult`] says it, without the record: the
/// answer of [`EnrollmentStore::apply_notifications`], whose caller only acknowledges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotificationEffect {
    /// Merged and written.
    Applied,
    /// This notification id was seen before (within the dedup retention), with this content.
    Duplicate,
    /// This notification id was seen before with other content: nothing was written.
    Conflict,
    /// Older than what the record holds for the token: nothing changed, nothing was written.
    Stale,
}

/// How `put_enrollment` treats an existing record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutMode {
    /// Write the enrollment fields, keeping (merging) the existing token.
    Merge,
    /// Write only when no record exists (cache fill); otherwise return the existing one.
    IfAbsent,
}

/// What [`EnrollmentStore::lock_and_read`] read under the card lock it took. Each read keeps its
/// own error: the lock is held either way, and the caller releases it.
#[derive(Debug, Clone)]
pub struct LockedCard {
    /// The card's record, as [`EnrollmentStore::get`] reads it (an unreadable one set aside).
    pub record: Result<Option<EnrollmentRecord>, StoreError>,
    /// The opt-out kept under the card's own subject, as [`EnrollmentStore::get_opt_out`] reads
    /// it.
    pub opt_out: Result<Option<OptOut>, StoreError>,
}

/// An opt-out as it was kept under one subject when read: its stored text (JSON as the service
/// wrote it), which [`EnrollmentStore::swap_opt_out`] compares with what is kept when it writes.
/// The same opt-out written again in the same words is the same opt-out. No card data (card
/// ids and keyed hashes only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptOutStamp(String);

impl OptOutStamp {
    /// The stamp of the stored text `stored`.
    pub fn of(stored: String) -> Self {
        Self(stored)
    }

    /// The stored text it was read as.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Changes of one card's record, as they are written (on any replica).
pub type ChangeStream = Pin<Box<dyn tokio_stream::Stream<Item = EnrollmentRecord> + Send>>;

/// Where enrollment records, idempotency records and dedup markers live.
#[async_trait::async_trait]
pub trait EnrollmentStore: Send + Sync + 'static {
    /// The record of `card`, if one is stored and not expired.
    async fn get(&self, card: CardContractId) -> Result<Option<EnrollmentRecord>, StoreError>;

    /// The record of `card` for a plain status read: [`get`](Self::get), or the version kept
    /// in process memory, shared as it is (no copy), which may lag a change made elsewhere by
    /// the store's documented bound (the Redis store's record cache). Never for a read that
    /// decides a write.
    async fn get_cached(
        &self,
        card: CardContractId,
    ) -> Result<Option<Arc<SharedRecord>>, StoreError> {
        Ok(self.get(card).await?.map(SharedRecord::new))
    }

    /// Writes `record` atomically with the existing one (see [`PutMode`]), keeps it for `ttl`,
    /// publishes the change, and returns what is stored now. The store sets the record's times
    /// and revision on its own clock (`EnrollmentRecord::stamped`); a write that would change
    /// nothing else is not made.
    async fn put_enrollment(
        &self,
        record: &EnrollmentRecord,
        mode: PutMode,
        ttl: Duration,
    ) -> Result<EnrollmentRecord, StoreError>;

    /// [`EnrollmentStore::put_enrollment`] (merge) only while `lock_owner` holds the card's
    /// lock: the fence of an enrollment attempt, so that one that stalled past its lock cannot
    /// write over the attempt that took over. `None` when fenced out (nothing written).
    async fn put_enrollment_fenced(
        &self,
        record: &EnrollmentRecord,
        ttl: Duration,
        lock_owner: &str,
    ) -> Result<Option<EnrollmentRecord>, StoreError>;

    /// [`EnrollmentStore::put_enrollment_fenced`] without keeping the stored token: the first
    /// write of a new enrollment of a card whose earlier enrollment left Click to Pay (REMOVED),
    /// so that the old, deactivated token does not stand for the new enrollment's.
    async fn put_fresh_enrollment_fenced(
        &self,
        record: &EnrollmentRecord,
        ttl: Duration,
        lock_owner: &str,
    ) -> Result<Option<EnrollmentRecord>, StoreError>;

    /// Atomically: dedup by notification id (and content hash), merge by event time, stamp,
    /// write, publish.
    async fn apply_notification(
        &self,
        event: &TokenEvent,
    ) -> Result<NotificationResult, StoreError>;

    /// [`EnrollmentStore::apply_notification`] for each of `events`, each on its own (one
    /// failing does not stop the others), those of one card in the order given; each result,
    /// in the order of `events`, only once its write returned. Without the records: an adapter
    /// can apply a batch in one round trip. The default applies them one by one.
    async fn apply_notifications(
        &self,
        events: &[TokenEvent],
    ) -> Vec<Result<NotificationEffect, StoreError>> {
        let mut results = Vec::with_capacity(events.len());
        for event in events {
            results.push(self.apply_notification(event).await.map(|r| r.effect()));
        }
        results
    }

    /// Starts (or resumes, or replays) the call with this idempotency `scope` (caller and key).
    async fn idempotency_begin(
        &self,
        scope: &str,
        proposal: &IdempotencyRecord,
        now_ms: i64,
    ) -> Result<Begin, StoreError>;

    /// Replaces the idempotency record, only if `record.owner` still holds it. `false` when
    /// another owner took over.
    async fn idempotency_update(
        &self,
        scope: &str,
        record: &IdempotencyRecord,
    ) -> Result<bool, StoreError>;

    /// Takes (or renews) the card's enrollment lock for `owner` for `ttl`: `false` when another
    /// owner holds it. One enrollment of a card runs at a time, whatever the idempotency key.
    async fn lock_card(
        &self,
        card: CardContractId,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError>;

    /// [`lock_card`](Self::lock_card), and when `owner` holds the lock, what EnrollCard reads
    /// under it: the card's record and the opt-out kept under the card's own subject. `None`
    /// when another owner holds the lock (nothing read). The Redis store does it in one script
    /// (the lock, the record and the card's opt-out share the card's hash slot): one round trip
    /// where the lock and the reads were two.
    async fn lock_and_read(
        &self,
        card: CardContractId,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<LockedCard>, StoreError> {
        if !self.lock_card(card, owner, ttl).await? {
            return Ok(None);
        }
        let subject = [crate::domain::card_subject(card)];
        let (record, opt_out) = tokio::join!(self.get(card), self.get_opt_out(&subject));
        Ok(Some(LockedCard { record, opt_out }))
    }

    /// Extends the card's lock for `ttl` only if `owner` still holds it: `false` once it was
    /// lost (expired or taken), never taking a free lock again. The heartbeat's call, so that
    /// an attempt that stalled past its lock cannot pick it up after another finished the card.
    async fn renew_card(
        &self,
        card: CardContractId,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError>;

    /// Releases the card's lock if `owner` holds it: `true` then; `false` when it was
    /// another's or had run out (nothing done), so that a holder learns it lost the lock
    /// before it let go.
    async fn unlock_card(&self, card: CardContractId, owner: &str) -> Result<bool, StoreError>;

    /// Every later change of `card`'s record, wherever it is written.
    async fn watch(&self, card: CardContractId) -> Result<ChangeStream, StoreError>;

    /// Succeeds when the store is reachable; drives the gRPC health status.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Notes that `card` has an IN_PROGRESS enrollment since `since_ms` (kept if already noted),
    /// for the reconciler.
    async fn track_in_progress(
        &self,
        card: CardContractId,
        since_ms: i64,
    ) -> Result<(), StoreError>;

    /// Moves `card`'s note in the IN_PROGRESS index to `since_ms` if the index holds it, in one
    /// step (never adds a note, never leaves none): the reconciler's requeue of a card whose
    /// pass failed.
    async fn requeue_in_progress(
        &self,
        card: CardContractId,
        since_ms: i64,
    ) -> Result<(), StoreError>;

    /// Forgets `card` in the IN_PROGRESS index (its enrollment ended).
    async fn untrack_in_progress(&self, card: CardContractId) -> Result<(), StoreError>;

    /// Up to `limit` cards noted IN_PROGRESS before `before_ms`, oldest first.
    async fn in_progress_before(
        &self,
        before_ms: i64,
        limit: usize,
    ) -> Result<Vec<CardContractId>, StoreError>;

    /// How many cards the IN_PROGRESS index holds, and how many of them were noted before
    /// `before_ms`: what the operator's gauges show (one round trip, no record read).
    async fn count_in_progress(&self, before_ms: i64) -> Result<(u64, u64), StoreError>;

    /// Notes that `card` is ENROLLED and is due for a check against Click to Pay at
    /// `check_at_ms` (replacing an earlier note), for the reconciler.
    async fn track_enrolled(
        &self,
        card: CardContractId,
        check_at_ms: i64,
    ) -> Result<(), StoreError>;

    /// Forgets `card` in the ENROLLED index (it is no longer enrolled).
    async fn untrack_enrolled(&self, card: CardContractId) -> Result<(), StoreError>;

    /// Forgets `card` in the ENROLLED index only while it is due before `before_ms`, in one step:
    /// the lifecycle check's removal of a card it found not ENROLLED, which must not take a
    /// note written again meanwhile (a new enrollment's, due an interval later). Whether it did.
    async fn untrack_enrolled_due(
        &self,
        card: CardContractId,
        before_ms: i64,
    ) -> Result<bool, StoreError>;

    /// Up to `limit` ENROLLED cards due for a check before `before_ms`, the most overdue first.
    async fn enrolled_due(
        &self,
        before_ms: i64,
        limit: usize,
    ) -> Result<Vec<CardContractId>, StoreError>;

    /// The opt-out kept under any of `subjects` (the first found), if any.
    async fn get_opt_out(&self, subjects: &[String]) -> Result<Option<OptOut>, StoreError>;

    /// The opt-out kept under `subject`, if any, with its stamp for [`EnrollmentStore::swap_opt_out`].
    async fn read_opt_out(
        &self,
        subject: &str,
    ) -> Result<Option<(OptOut, OptOutStamp)>, StoreError>;

    /// Under `subject`, replaces the opt-out read as `expected` (`None`: none was kept) with
    /// `new` (kept until withdrawn, no expiry; `None`: forgets it), only if what is kept there
    /// is still that one, in one atomic step; whether it was. Neither OptOut nor WithdrawOptOut
    /// holds a lock of the whole profile: a call of either for another card of the cardholder
    /// may change a subject they share between this call's read and its write.
    async fn swap_opt_out(
        &self,
        subject: &str,
        expected: Option<&OptOutStamp>,
        new: Option<&OptOut>,
    ) -> Result<bool, StoreError>;

    /// Takes or renews the lease `name` for `owner` for `ttl`: `false` while another owner holds
    /// it. One replica at a time runs the reconciler.
    async fn lead(&self, name: &str, owner: &str, ttl: Duration) -> Result<bool, StoreError>;

    /// A short name for logs: `memory` or `redis`.
    fn kind(&self) -> &'static str;
}
