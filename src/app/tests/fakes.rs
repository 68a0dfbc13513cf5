//! The fakes: [`FakeMastercard`] answers from a queue of outcomes per operation (a success by
//! default) and logs every call; [`FaultyStore`] is the real [`MemoryStore`] with chosen calls
//! failing, refused or preceded by a stolen card lock, and a spy on the idempotency records.

use crate::app::canonical::canonical_bytes;
use crate::app::ports::{
    Address, CardEnrollment, CardSearch, Cardholder, ClickToPayKeys, ClickToPayLifecycle,
    ClickToPayProfile, Deleted, EncryptedCard, EnrolledCard, EnrollmentRequest, Found, Mastercard,
    ObservedToken, OptOutStamp, TokenList, TokenObservation, Updated, UpstreamContext,
    UpstreamFailure,
};
use crate::app::{App, AppSettings, ConsumerInput, EnrollCommand, FingerprintKey};
use crate::domain::{
    Begin, CLICK_TO_PAY_TOKEN_REQUESTOR_ID, CLICK_TO_PAY_WALLET_NAME, CardContractId,
    EnrollmentRecord, IdempotencyRecord, MaskedCard, OptOut, Phase, TokenEvent, TokenStatus,
    now_ms,
};
use crate::store::{
    ChangeStream, EnrollmentStore, MemoryStore, NotificationResult, PutMode, Retention, StoreError,
};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

// ---------------------------------------------------------------------------------------------
// Mastercard

/// Holds a scripted call until the test opens it.
#[derive(Clone, Default)]
pub struct Gate {
    entered: Arc<Notify>,
    release: Arc<Notify>,
}

impl Gate {
    /// Waits until the call reached the gate.
    pub async fn entered(&self) {
        self.entered.notified().await;
    }

    /// Lets the call answer.
    pub fn open(&self) {
        self.release.notify_one();
    }
}

struct Scripted<T> {
    gate: Option<Gate>,
    outcome: Result<T, UpstreamFailure>,
}

/// One `encrypted_card` call.
#[derive(Debug, Clone)]
pub struct SearchCall {
    pub card: CardContractId,
    pub program: String,
    pub cardholder_full_name: Option<String>,
}

/// One `enroll` call.
#[derive(Debug, Clone)]
pub struct EnrollCall {
    pub program: String,
    pub src_correlation_id: String,
    /// The JWE it forwarded (the search's).
    pub card: String,
    pub email: Option<String>,
}

/// One lifecycle call: its operation and the ids it was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleCall {
    pub operation: &'static str,
    pub keys: ClickToPayKeys,
}

/// Every call the fake answered.
#[derive(Debug, Clone, Default)]
pub struct Calls {
    pub searches: Vec<SearchCall>,
    pub enrolls: Vec<EnrollCall>,
    pub token_lists: Vec<CardContractId>,
    pub lifecycle: Vec<LifecycleCall>,
}

impl Calls {
    /// (searches, enrolls, token lists).
    pub fn counts(&self) -> (usize, usize, usize) {
        (
            self.searches.len(),
            self.enrolls.len(),
            self.token_lists.len(),
        )
    }

    /// The `srcCorrelationId` of every enroll, in order.
    pub fn correlations(&self) -> Vec<String> {
        self.enrolls
            .iter()
            .map(|e| e.src_correlation_id.clone())
            .collect()
    }
}

/// A Mastercard that answers from scripts: a queue per operation; an empty queue answers a
/// success (a card object, an enrollment, no tokens).
#[derive(Default)]
pub struct FakeMastercard {
    searches: Mutex<VecDeque<Scripted<()>>>,
    enrolls: Mutex<VecDeque<Scripted<EnrolledCard>>>,
    token_lists: Mutex<VecDeque<Scripted<TokenObservation>>>,
    removals: Mutex<VecDeque<Scripted<Deleted>>>,
    holds: Mutex<VecDeque<Scripted<bool>>>,
    profile_deletions: Mutex<VecDeque<Scripted<Deleted>>>,
    updates: Mutex<VecDeque<Scripted<Updated>>>,
    calls: Mutex<Calls>,
}

impl FakeMastercard {
    /// The next search answers `outcome` (`Ok(())`: a card object).
    pub fn search(&self, outcome: Result<(), UpstreamFailure>) {
        push(&self.searches, None, outcome);
    }

    /// The next enroll answers `outcome`.
    pub fn enroll(&self, outcome: Result<EnrolledCard, UpstreamFailure>) {
        push(&self.enrolls, None, outcome);
    }

    /// The next enroll waits at the returned gate, then answers `outcome`.
    pub fn gated_enroll(&self, outcome: Result<EnrolledCard, UpstreamFailure>) -> Gate {
        let gate = Gate::default();
        push(&self.enrolls, Some(gate.clone()), outcome);
        gate
    }

    /// The next token list answers `outcome`.
    pub fn tokens(&self, outcome: Result<TokenObservation, UpstreamFailure>) {
        push(&self.token_lists, None, outcome);
    }

    /// The next card removal answers `outcome`.
    pub fn remove(&self, outcome: Result<Deleted, UpstreamFailure>) {
        push(&self.removals, None, outcome);
    }

    /// The next "does Click to Pay hold the card" answers `outcome`.
    pub fn holds(&self, outcome: Result<bool, UpstreamFailure>) {
        push(&self.holds, None, outcome);
    }

    /// The next profile deletion answers `outcome`.
    pub fn delete_profile(&self, outcome: Result<Deleted, UpstreamFailure>) {
        push(&self.profile_deletions, None, outcome);
    }

    /// The next update (consumer or billing address) answers `outcome`.
    pub fn update(&self, outcome: Result<Updated, UpstreamFailure>) {
        push(&self.updates, None, outcome);
    }

    /// The next update waits at the returned gate, then answers `outcome`.
    pub fn gated_update(&self, outcome: Result<Updated, UpstreamFailure>) -> Gate {
        let gate = Gate::default();
        push(&self.updates, Some(gate.clone()), outcome);
        gate
    }

    fn log_lifecycle(&self, operation: &'static str, keys: &ClickToPayKeys) {
        self.calls.lock().unwrap().lifecycle.push(LifecycleCall {
            operation,
            keys: keys.clone(),
        });
    }

    /// What was called so far.
    pub fn calls(&self) -> Calls {
        self.calls.lock().unwrap().clone()
    }
}

fn push<T>(
    queue: &Mutex<VecDeque<Scripted<T>>>,
    gate: Option<Gate>,
    outcome: Result<T, UpstreamFailure>,
) {
    queue.lock().unwrap().push_back(Scripted { gate, outcome });
}

async fn play<T>(
    queue: &Mutex<VecDeque<Scripted<T>>>,
    default: impl FnOnce() -> T,
) -> Result<T, UpstreamFailure> {
    let next = queue.lock().unwrap().pop_front();
    match next {
        None => Ok(default()),
        Some(Scripted { gate, outcome }) => {
            if let Some(gate) = gate {
                gate.entered.notify_one();
                gate.release.notified().await;
            }
            outcome
        }
    }
}

/// The card object the fake's search returns for `card`.
pub fn jwe_of(card: CardContractId) -> String {
    format!("eyJ.card-object-of-{card}")
}

#[async_trait::async_trait]
impl CardSearch for FakeMastercard {
    async fn encrypted_card(
        &self,
        card: CardContractId,
        program: &str,
        cardholder: &Cardholder,
        _deadline: Option<Instant>,
    ) -> Result<EncryptedCard, UpstreamFailure> {
        self.calls.lock().unwrap().searches.push(SearchCall {
            card,
            program: program.to_owned(),
            cardholder_full_name: cardholder.full_name.clone(),
        });
        play(&self.searches, || ())
            .await
            .map(|()| EncryptedCard::new(jwe_of(card)))
    }
}

#[async_trait::async_trait]
impl CardEnrollment for FakeMastercard {
    async fn enroll(
        &self,
        request: EnrollmentRequest<'_>,
        _deadline: Option<Instant>,
    ) -> Result<EnrolledCard, UpstreamFailure> {
        self.calls.lock().unwrap().enrolls.push(EnrollCall {
            program: request.program.to_owned(),
            src_correlation_id: request.src_correlation_id.to_owned(),
            card: request.card.expose().to_owned(),
            email: request.consumer.email.clone(),
        });
        play(&self.enrolls, enrolled_card).await
    }
}

#[async_trait::async_trait]
impl TokenList for FakeMastercard {
    async fn tokens(
        &self,
        card: CardContractId,
        _deadline: Option<Instant>,
    ) -> Result<TokenObservation, UpstreamFailure> {
        self.calls.lock().unwrap().token_lists.push(card);
        play(&self.token_lists, TokenObservation::default).await
    }
}

#[async_trait::async_trait]
impl ClickToPayLifecycle for FakeMastercard {
    async fn remove_card(
        &self,
        keys: &ClickToPayKeys,
        _deadline: Option<Instant>,
    ) -> Result<Deleted, UpstreamFailure> {
        self.log_lifecycle("remove_card", keys);
        play(&self.removals, || Deleted::Deleted).await
    }

    async fn holds_card(
        &self,
        keys: &ClickToPayKeys,
        _deadline: Option<Instant>,
    ) -> Result<bool, UpstreamFailure> {
        self.log_lifecycle("holds_card", keys);
        play(&self.holds, || true).await
    }

    async fn profile(
        &self,
        keys: &ClickToPayKeys,
        _deadline: Option<Instant>,
    ) -> Result<Found<ClickToPayProfile>, UpstreamFailure> {
        self.log_lifecycle("profile", keys);
        Ok(Found::Found(ClickToPayProfile {
            src_consumer_id: keys.src_consumer_id.clone(),
            ..ClickToPayProfile::default()
        }))
    }

    async fn update_consumer(
        &self,
        keys: &ClickToPayKeys,
        _consumer: &ConsumerInput,
        _deadline: Option<Instant>,
    ) -> Result<Updated, UpstreamFailure> {
        self.log_lifecycle("update_consumer", keys);
        play(&self.updates, || Updated::Updated).await
    }

    async fn update_billing_address(
        &self,
        keys: &ClickToPayKeys,
        _address: &Address,
        _deadline: Option<Instant>,
    ) -> Result<Updated, UpstreamFailure> {
        self.log_lifecycle("update_billing_address", keys);
        play(&self.updates, || Updated::Updated).await
    }

    async fn delete_profile(
        &self,
        keys: &ClickToPayKeys,
        _deadline: Option<Instant>,
    ) -> Result<Deleted, UpstreamFailure> {
        self.log_lifecycle("delete_profile", keys);
        play(&self.profile_deletions, || Deleted::Deleted).await
    }
}

impl Mastercard for FakeMastercard {
    fn has_program(&self, name: &str) -> bool {
        matches!(name, "" | "default" | "premium")
    }
}

// ---------------------------------------------------------------------------------------------
// Store

/// A store operation, for [`FaultyStore::fault`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Get,
    PutEnrollment,
    PutFenced,
    ApplyNotification,
    IdempotencyBegin,
    IdempotencyUpdate,
    LockCard,
    RenewCard,
    UnlockCard,
    TrackInProgress,
    UntrackInProgress,
    RequeueInProgress,
    UntrackEnrolled,
    UntrackEnrolledDue,
    SwapOptOut,
}

/// What happens to a chosen call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `StoreError::Unavailable`, nothing done.
    Unavailable,
    /// The answer of a lost lease or lock: `idempotency_update`, `lock_card` and `renew_card`
    /// answer `false`, `put_enrollment_fenced` `None`; nothing done.
    Refused,
    /// Another owner ("thief") takes the card's lock just before the call runs.
    StealLock,
    /// The call runs, then its answer is lost: `StoreError::Unavailable` (a connection that
    /// dropped after Redis ran the script). `lock_card` only.
    AnswerLost,
}

/// What a call does once [`FaultyStore::enter_call`] applied its fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entered {
    /// Runs as asked.
    Run,
    /// Answers as refused, nothing done.
    Refuse,
    /// Runs, then answers `StoreError::Unavailable`.
    LoseAnswer,
}

/// The owner a stolen card lock goes to.
pub const THIEF: &str = "another-replica/attempt";

/// [`MemoryStore`] with faults on chosen calls and a spy on the idempotency records.
pub struct FaultyStore {
    pub inner: MemoryStore,
    calls: Mutex<HashMap<Op, usize>>,
    faults: Mutex<HashMap<(Op, usize), Fault>>,
    /// The last owner that took each card's lock.
    lock_owners: Mutex<HashMap<CardContractId, String>>,
    /// The idempotency records as last written, by scope.
    keys: Mutex<HashMap<String, IdempotencyRecord>>,
    /// Calls held at a gate before they run, by (operation, call number).
    pauses: Mutex<HashMap<(Op, usize), Gate>>,
}

impl FaultyStore {
    /// Keeps `opt_out` under each of its subjects, whatever they held (a test's setup).
    pub async fn put_opt_out(&self, opt_out: &OptOut) -> Result<(), StoreError> {
        for subject in &opt_out.subjects {
            let kept = self
                .inner
                .read_opt_out(subject)
                .await?
                .map(|(_, stamp)| stamp);
            assert!(
                self.inner
                    .swap_opt_out(subject, kept.as_ref(), Some(opt_out))
                    .await?
            );
        }
        Ok(())
    }

    pub fn new() -> Self {
        let day = Duration::from_secs(86_400);
        Self {
            inner: MemoryStore::new(Retention {
                enrollment: day,
                notification_dedup: 3 * day,
                idempotency: day,
            }),
            calls: Mutex::default(),
            faults: Mutex::default(),
            lock_owners: Mutex::default(),
            keys: Mutex::default(),
            pauses: Mutex::default(),
        }
    }

    /// The `nth` call of `op` from now on (1 = the next one) waits at the returned gate before
    /// it runs (and before any fault of it applies).
    pub fn pause(&self, op: Op, nth: usize) -> Gate {
        let gate = Gate::default();
        let done = self.calls(op);
        self.pauses
            .lock()
            .unwrap()
            .insert((op, done + nth), gate.clone());
        gate
    }

    /// The `nth` call of `op` from now on (1 = the next one) meets `fault`.
    pub fn fault(&self, op: Op, nth: usize, fault: Fault) {
        assert!(
            fault != Fault::AnswerLost || op == Op::LockCard,
            "AnswerLost is modelled for lock_card only"
        );
        let done = self.calls(op);
        self.faults.lock().unwrap().insert((op, done + nth), fault);
    }

    /// The owner that last took `card`'s lock through this store.
    pub fn holder(&self, card: CardContractId) -> Option<String> {
        self.lock_owners.lock().unwrap().get(&card).cloned()
    }

    /// How many calls of `op` were made.
    pub fn calls(&self, op: Op) -> usize {
        self.calls.lock().unwrap().get(&op).copied().unwrap_or(0)
    }

    /// The idempotency record of `scope` as last written through this store.
    pub fn key(&self, scope: &str) -> Option<IdempotencyRecord> {
        self.keys.lock().unwrap().get(scope).cloned()
    }

    /// Counts the call; applies its fault. `Ok(true)`: answer as refused.
    async fn enter(&self, op: Op, card: Option<CardContractId>) -> Result<bool, StoreError> {
        Ok(self.enter_call(op, card).await? == Entered::Refuse)
    }

    /// [`FaultyStore::enter`], telling a call that loses its answer apart.
    async fn enter_call(
        &self,
        op: Op,
        card: Option<CardContractId>,
    ) -> Result<Entered, StoreError> {
        let n = {
            let mut calls = self.calls.lock().unwrap();
            let n = calls.entry(op).or_insert(0);
            *n += 1;
            *n
        };
        let gate = self.pauses.lock().unwrap().remove(&(op, n));
        if let Some(gate) = gate {
            gate.entered.notify_one();
            gate.release.notified().await;
        }
        let fault = self.faults.lock().unwrap().remove(&(op, n));
        match fault {
            None => Ok(Entered::Run),
            Some(Fault::Unavailable) => Err(StoreError::Unavailable(format!(
                "injected: {op:?} call {n}"
            ))),
            Some(Fault::Refused) => Ok(Entered::Refuse),
            Some(Fault::AnswerLost) => Ok(Entered::LoseAnswer),
            Some(Fault::StealLock) => {
                let card = card.unwrap_or_else(|| panic!("{op:?} has no card to steal"));
                let owner = self.lock_owners.lock().unwrap().get(&card).cloned();
                if let Some(owner) = owner {
                    self.inner.unlock_card(card, &owner).await?;
                }
                assert!(
                    self.inner
                        .lock_card(card, THIEF, Duration::from_secs(3600))
                        .await?
                );
                Ok(Entered::Run)
            }
        }
    }
}

#[async_trait::async_trait]
impl EnrollmentStore for FaultyStore {
    async fn get(&self, card: CardContractId) -> Result<Option<EnrollmentRecord>, StoreError> {
        self.enter(Op::Get, Some(card)).await?;
        self.inner.get(card).await
    }

    async fn put_enrollment(
        &self,
        record: &EnrollmentRecord,
        mode: PutMode,
        ttl: Duration,
    ) -> Result<EnrollmentRecord, StoreError> {
        self.enter(Op::PutEnrollment, Some(record.card_contract_id))
            .await?;
        self.inner.put_enrollment(record, mode, ttl).await
    }

    async fn put_enrollment_fenced(
        &self,
        record: &EnrollmentRecord,
        ttl: Duration,
        lock_owner: &str,
    ) -> Result<Option<EnrollmentRecord>, StoreError> {
        if self
            .enter(Op::PutFenced, Some(record.card_contract_id))
            .await?
        {
            return Ok(None);
        }
        self.inner
            .put_enrollment_fenced(record, ttl, lock_owner)
            .await
    }

    async fn put_fresh_enrollment_fenced(
        &self,
        record: &EnrollmentRecord,
        ttl: Duration,
        lock_owner: &str,
    ) -> Result<Option<EnrollmentRecord>, StoreError> {
        if self
            .enter(Op::PutFenced, Some(record.card_contract_id))
            .await?
        {
            return Ok(None);
        }
        self.inner
            .put_fresh_enrollment_fenced(record, ttl, lock_owner)
            .await
    }

    async fn apply_notification(
        &self,
        event: &TokenEvent,
    ) -> Result<NotificationResult, StoreError> {
        self.enter(Op::ApplyNotification, Some(event.card_contract_id))
            .await?;
        self.inner.apply_notification(event).await
    }

    async fn idempotency_begin(
        &self,
        scope: &str,
        proposal: &IdempotencyRecord,
        now_ms: i64,
    ) -> Result<Begin, StoreError> {
        self.enter(Op::IdempotencyBegin, None).await?;
        let begin = self
            .inner
            .idempotency_begin(scope, proposal, now_ms)
            .await?;
        if let Begin::New(r) | Begin::Resume(r) = &begin {
            self.keys
                .lock()
                .unwrap()
                .insert(scope.to_owned(), r.clone());
        }
        Ok(begin)
    }

    async fn idempotency_update(
        &self,
        scope: &str,
        record: &IdempotencyRecord,
    ) -> Result<bool, StoreError> {
        if self.enter(Op::IdempotencyUpdate, None).await? {
            return Ok(false);
        }
        let updated = self.inner.idempotency_update(scope, record).await?;
        if updated {
            self.keys
                .lock()
                .unwrap()
                .insert(scope.to_owned(), record.clone());
        }
        Ok(updated)
    }

    async fn lock_card(
        &self,
        card: CardContractId,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let entered = self.enter_call(Op::LockCard, Some(card)).await?;
        if entered == Entered::Refuse {
            return Ok(false);
        }
        let locked = self.inner.lock_card(card, owner, ttl).await?;
        if locked {
            self.lock_owners
                .lock()
                .unwrap()
                .insert(card, owner.to_owned());
        }
        if entered == Entered::LoseAnswer {
            return Err(StoreError::Unavailable(
                "injected: lock_card ran, its answer was lost".into(),
            ));
        }
        Ok(locked)
    }

    async fn renew_card(
        &self,
        card: CardContractId,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        if self.enter(Op::RenewCard, Some(card)).await? {
            return Ok(false);
        }
        self.inner.renew_card(card, owner, ttl).await
    }

    async fn unlock_card(&self, card: CardContractId, owner: &str) -> Result<bool, StoreError> {
        self.enter(Op::UnlockCard, Some(card)).await?;
        self.inner.unlock_card(card, owner).await
    }

    async fn watch(&self, card: CardContractId) -> Result<ChangeStream, StoreError> {
        self.inner.watch(card).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }

    async fn track_in_progress(
        &self,
        card: CardContractId,
        since_ms: i64,
    ) -> Result<(), StoreError> {
        self.enter(Op::TrackInProgress, Some(card)).await?;
        self.inner.track_in_progress(card, since_ms).await
    }

    async fn requeue_in_progress(
        &self,
        card: CardContractId,
        since_ms: i64,
    ) -> Result<(), StoreError> {
        self.enter(Op::RequeueInProgress, Some(card)).await?;
        self.inner.requeue_in_progress(card, since_ms).await
    }

    async fn untrack_in_progress(&self, card: CardContractId) -> Result<(), StoreError> {
        self.enter(Op::UntrackInProgress, Some(card)).await?;
        self.inner.untrack_in_progress(card).await
    }

    async fn in_progress_before(
        &self,
        before_ms: i64,
        limit: usize,
    ) -> Result<Vec<CardContractId>, StoreError> {
        self.inner.in_progress_before(before_ms, limit).await
    }

    async fn count_in_progress(&self, before_ms: i64) -> Result<(u64, u64), StoreError> {
        self.inner.count_in_progress(before_ms).await
    }

    async fn track_enrolled(
        &self,
        card: CardContractId,
        check_at_ms: i64,
    ) -> Result<(), StoreError> {
        self.inner.track_enrolled(card, check_at_ms).await
    }

    async fn untrack_enrolled(&self, card: CardContractId) -> Result<(), StoreError> {
        self.enter(Op::UntrackEnrolled, Some(card)).await?;
        self.inner.untrack_enrolled(card).await
    }

    async fn untrack_enrolled_due(
        &self,
        card: CardContractId,
        before_ms: i64,
    ) -> Result<bool, StoreError> {
        self.enter(Op::UntrackEnrolledDue, Some(card)).await?;
        self.inner.untrack_enrolled_due(card, before_ms).await
    }

    async fn enrolled_due(
        &self,
        before_ms: i64,
        limit: usize,
    ) -> Result<Vec<CardContractId>, StoreError> {
        self.inner.enrolled_due(before_ms, limit).await
    }

    async fn get_opt_out(&self, subjects: &[String]) -> Result<Option<OptOut>, StoreError> {
        self.inner.get_opt_out(subjects).await
    }

    async fn read_opt_out(
        &self,
        subject: &str,
    ) -> Result<Option<(OptOut, OptOutStamp)>, StoreError> {
        self.inner.read_opt_out(subject).await
    }

    async fn swap_opt_out(
        &self,
        subject: &str,
        expected: Option<&OptOutStamp>,
        new: Option<&OptOut>,
    ) -> Result<bool, StoreError> {
        self.enter(Op::SwapOptOut, None).await?;
        self.inner.swap_opt_out(subject, expected, new).await
    }

    async fn lead(&self, name: &str, owner: &str, ttl: Duration) -> Result<bool, StoreError> {
        self.inner.lead(name, owner, ttl).await
    }

    fn kind(&self) -> &'static str {
        "faulty-memory"
    }
}

// ---------------------------------------------------------------------------------------------
// The app over both, and test data

/// The app, its store and its Mastercard.
pub struct World {
    pub app: Arc<App>,
    pub store: Arc<FaultyStore>,
    pub mc: Arc<FakeMastercard>,
    key: FingerprintKey,
}

/// The lease of [`world`].
pub const LEASE: Duration = Duration::from_secs(30);

/// A fresh app over an empty store and a Mastercard that says yes to everything.
pub fn world() -> World {
    world_with_lease(LEASE)
}

/// [`world`] with this idempotency lease (and card lock time).
pub fn world_with_lease(lease: Duration) -> World {
    let store = Arc::new(FaultyStore::new());
    let mc = Arc::new(FakeMastercard::default());
    let key = FingerprintKey::from_bytes(vec![7; 32]).unwrap();
    let app = App::new(
        store.clone(),
        mc.clone(),
        AppSettings {
            enrollment_ttl: Duration::from_secs(86_400),
            not_enrolled_ttl: Duration::from_secs(3_600),
            lease,
            fingerprint_key: key.clone(),
            lifecycle_check_interval: Some(Duration::from_secs(3_600)),
        },
    );
    World {
        app: Arc::new(app),
        store,
        mc,
        key,
    }
}

/// The owner of the idempotency records and card locks seeded as a crashed attempt's.
pub const CRASHED: &str = "crashed-replica/attempt";

impl World {
    /// The idempotency scope of `cmd` (the app's: caller, NUL, key).
    pub fn scope(cmd: &EnrollCommand) -> String {
        format!("{}\u{0}{}", cmd.caller, cmd.idempotency_key)
    }

    /// Whether another attempt ([`THIEF`]) could take `card_id`'s lock for [`LEASE`] (and now
    /// holds it): the lock was free.
    pub async fn thief_locks(&self, card_id: i64) -> bool {
        self.store
            .inner
            .lock_card(card(card_id), THIEF, LEASE)
            .await
            .unwrap()
    }

    /// The idempotency record of `cmd`'s key as last written.
    pub fn key_of(&self, cmd: &EnrollCommand) -> Option<IdempotencyRecord> {
        self.store.key(&Self::scope(cmd))
    }

    /// Stores an unfinished idempotency record for `cmd` at `phase` with `correlation`, held by
    /// another attempt until `lease_until_ms` (a past time: it crashed).
    pub async fn seed_key(
        &self,
        cmd: &EnrollCommand,
        phase: Phase,
        correlation: &str,
        lease_until_ms: i64,
    ) {
        let record = IdempotencyRecord {
            fingerprint: self.key.fingerprint(&canonical_bytes(cmd).unwrap()),
            phase,
            src_correlation_id: correlation.to_owned(),
            adopted: false,
            owner: CRASHED.to_owned(),
            lease_until_ms,
            outcome: None,
        };
        let begin = self
            .store
            .idempotency_begin(&Self::scope(cmd), &record, now_ms())
            .await
            .unwrap();
        assert!(matches!(begin, Begin::New(_)), "{begin:?}");
    }

    /// [`World::seed_key`] of an attempt that stopped a second ago.
    pub async fn seed_crashed_key(&self, cmd: &EnrollCommand, phase: Phase, correlation: &str) {
        self.seed_key(cmd, phase, correlation, now_ms() - 1_000)
            .await;
    }

    /// Writes `record` as it is (merge, no fence).
    pub async fn seed_record(&self, record: &EnrollmentRecord) -> EnrollmentRecord {
        self.store
            .inner
            .put_enrollment(record, PutMode::Merge, Duration::from_secs(86_400))
            .await
            .unwrap()
    }

    /// The stored record of `card`.
    pub async fn record(&self, card: CardContractId) -> Option<EnrollmentRecord> {
        self.store.inner.get(card).await.unwrap()
    }

    /// The cards in the IN_PROGRESS index.
    pub async fn in_progress(&self) -> Vec<CardContractId> {
        self.store
            .inner
            .in_progress_before(i64::MAX, 100)
            .await
            .unwrap()
    }
}

pub fn card(id: i64) -> CardContractId {
    CardContractId::new(id).unwrap()
}

/// A valid command for `card` under `key`.
pub fn command(key: &str, card_id: i64) -> EnrollCommand {
    EnrollCommand {
        caller: "spiffe://bank.example/ns/payments/sa/app".into(),
        idempotency_key: key.into(),
        card_contract_id: card(card_id),
        program: String::new(),
        consumer: ConsumerInput {
            email: Some("jane.doe@example.com".into()),
            mobile: Some(("1".into(), "5551234567".into())),
            first_name: Some("Jane".into()),
            last_name: Some("Doe".into()),
            country_code: "US".into(),
            language_code: "en_US".into(),
        },
        cardholder_full_name: Some("Jane Doe".into()),
        billing_address: None,
        src_correlation_id: None,
    }
}

pub fn masked_card() -> MaskedCard {
    MaskedCard {
        pan_last_four: "0004".into(),
        pan_expiration_month: "12".into(),
        pan_expiration_year: "2031".into(),
        payment_card_descriptor: Some("Mastercard".into()),
        payment_card_type: Some("CREDIT".into()),
        digital_card_status: Some("ACTIVE".into()),
    }
}

/// What the fake's enroll answers by default.
pub fn enrolled_card() -> EnrolledCard {
    EnrolledCard {
        src_digital_card_id: Some("src-digital-card-1".into()),
        src_consumer_id: Some("src-consumer-1".into()),
        masked_card: Some(masked_card()),
    }
}

/// A Click to Pay token.
pub fn c2p_token(tur: &str, status: TokenStatus, created: &str) -> ObservedToken {
    ObservedToken {
        token_unique_reference: tur.into(),
        token_requestor_id: CLICK_TO_PAY_TOKEN_REQUESTOR_ID.into(),
        wallet_name: CLICK_TO_PAY_WALLET_NAME.into(),
        status: Some(status),
        created: Some(created.into()),
    }
}

/// Another wallet's token.
pub fn wallet_token(tur: &str) -> ObservedToken {
    ObservedToken {
        token_unique_reference: tur.into(),
        token_requestor_id: "50110030273".into(),
        wallet_name: "Some Pay".into(),
        status: Some(TokenStatus::Active),
        created: Some("2030-01-01T00:00:00Z".into()),
    }
}

/// A token list of `tokens`, answered now.
pub fn observed(tokens: Vec<ObservedToken>) -> TokenObservation {
    TokenObservation {
        tokens,
        observed_at_ms: Some(now_ms()),
    }
}

/// What Mastercard said of a failed call of `api`.
pub fn context(api: &'static str) -> UpstreamContext {
    UpstreamContext {
        api,
        reason_code: Some("SOME_REASON".into()),
        correlation_id: Some("mc-correlation-1".into()),
        description: format!("{api} said no"),
    }
}
