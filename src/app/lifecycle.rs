//! What the use cases after an enrollment share: the card lock held for one call, the fenced
//! write, the record Click to Pay knows the card by, the opt-out check, and the index of
//! ENROLLED cards the reconciler checks against Click to Pay.

use super::enroll::{AbortOnDrop, map_upstream};
use super::ports::UpstreamFailure;
use super::{App, AppError, Step};
use crate::domain::{
    CardContractId, EnrollmentRecord, EnrollmentState, Removal, RemovalReason, card_subject,
    consumer_subject, now_ms,
};
use std::time::Duration;
use tokio::time::Instant;

/// The program a caller's access was checked against before a call after the enrollment: the
/// gRPC layer reads the card's program, checks the caller's grant, then runs the use case,
/// which acts only on a record of that program, read under the card's lock (so that an
/// enrollment of the card under another program that lands between the check and the lock
/// is not acted on by a caller granted the first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckedProgram {
    /// No access policy checked the call (in-process callers, tests).
    Unchecked,
    /// The card's program when the caller was checked; `None`: the card had no record.
    Was(Option<String>),
}

/// The error of a failed lifecycle call.
pub(super) fn lifecycle_error(
    card: CardContractId,
    failure: UpstreamFailure,
    deadline: Option<Instant>,
) -> AppError {
    map_upstream(Step::Lifecycle, card, failure, deadline)
}

/// The opt-out subjects of a record: its card, and the consumer references it holds.
pub(super) fn subjects_of(card: CardContractId, record: Option<&EnrollmentRecord>) -> Vec<String> {
    let mut subjects = vec![card_subject(card)];
    if let Some(r) = record {
        for reference in [&r.external_consumer_id, &r.consumer_ref]
            .into_iter()
            .flatten()
        {
            let subject = consumer_subject(reference);
            if !subjects.contains(&subject) {
                subjects.push(subject);
            }
        }
    }
    subjects
}

impl App {
    /// The program of the card's record, if it has one: what the caller's `programs` decide on
    /// before a call after the enrollment acts on the card.
    pub async fn program_of(&self, card: CardContractId) -> Result<Option<String>, AppError> {
        Ok(self.store.get(card).await?.map(|r| r.program))
    }

    /// When the opt-out covering `card` or the consumer `consumer_ref` was recorded, if any.
    pub(super) async fn opted_out(
        &self,
        card: CardContractId,
        consumer_ref: &str,
    ) -> Result<Option<i64>, AppError> {
        let subjects = [card_subject(card), consumer_subject(consumer_ref)];
        Ok(self.store.get_opt_out(&subjects).await?.map(|o| o.since_ms))
    }

    /// Notes the card ENROLLED for the reconciler's check against Click to Pay (best effort: a
    /// card missing from the index is only checked when someone asks, with `refresh`).
    pub(super) async fn track_enrolled(&self, card: CardContractId) {
        let Some(interval) = self.settings.lifecycle_check_interval else {
            return;
        };
        let due = now_ms().saturating_add(i64::try_from(interval.as_millis()).unwrap_or(i64::MAX));
        if let Err(e) = self.store.track_enrolled(card, due).await {
            tracing::debug!(error = %e, "could not note the card for the lifecycle check");
        }
    }

    /// Forgets the card in the index of ENROLLED cards (best effort: the reconciler prunes
    /// cards it finds not ENROLLED).
    pub(super) async fn untrack_enrolled(&self, card: CardContractId) {
        if let Err(e) = self.store.untrack_enrolled(card).await {
            tracing::debug!(error = %e, "could not drop the card from the ENROLLED index");
        }
    }

    /// Takes the card's lock for one call under a fresh owner: one change of a card at a time
    /// (an enrollment, a removal, an update). `CardBusy` while someone else holds it.
    pub(super) async fn hold_card(&self, card: CardContractId) -> Result<String, AppError> {
        let owner = self.lock_owner();
        self.hold_card_as(card, &owner).await?;
        Ok(owner)
    }

    /// Runs `work` while `owner` holds the card's lock (taken by [`App::hold_card`]), renewed
    /// every third of the lease: a call after the enrollment may wait on Mastercard longer than
    /// the lease (a safe call is tried three times), and another call must not take the card
    /// meanwhile. `work` runs to its end whatever happens to the lock (stopped halfway, it
    /// could leave an opt-out under some of its subjects only): when a renewal finds the lock
    /// gone (the store unreachable past the lease, the process stalled), the renewals stop and
    /// `work`'s fenced write is refused (ABORTED `REQUEST_IN_PROGRESS`, the record unchanged).
    pub(super) async fn under_lock<T>(
        &self,
        card: CardContractId,
        owner: &str,
        work: impl std::future::Future<Output = Result<T, AppError>>,
    ) -> Result<T, AppError> {
        let store = self.store.clone();
        let lease = self.settings.lease;
        let owner = owner.to_owned();
        let beat = AbortOnDrop(tokio::spawn(async move {
            loop {
                tokio::time::sleep(lease / 3).await;
                // A store error is retried on the next beat (the lease outlives two).
                if let Ok(false) = store.renew_card(card, &owner, lease).await {
                    tracing::warn!("the card lock was lost: this call's write will be refused");
                    return;
                }
            }
        }));
        let result = work.await;
        drop(beat);
        result
    }

    /// A fresh owner for [`App::hold_card_as`].
    pub(super) fn lock_owner(&self) -> String {
        format!("{}/lifecycle/{}", self.instance, uuid::Uuid::new_v4())
    }

    /// [`App::hold_card`] under `owner`, for a caller that arms its give-back before the lock.
    pub(super) async fn hold_card_as(
        &self,
        card: CardContractId,
        owner: &str,
    ) -> Result<(), AppError> {
        match self.store.lock_card(card, owner, self.settings.lease).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(AppError::CardBusy {
                card,
                retry_after: Duration::from_secs(1),
            }),
            Err(e) => {
                self.give_back_lock(card, owner).await;
                Err(e.into())
            }
        }
    }

    /// Gives back the card lock `owner` may hold after a lock script that failed: it may have
    /// run with its answer lost, and the lock it took would keep the card busy for a lease (a
    /// retry comes under a new owner). Owner-checked, so harmless when nothing was taken; best
    /// effort: the lock expires by itself otherwise.
    pub(super) async fn give_back_lock(&self, card: CardContractId, owner: &str) {
        if let Err(unlock) = self.store.unlock_card(card, owner).await {
            tracing::debug!(error = %unlock, "could not release the card lock; it expires by itself");
        }
    }

    /// Releases the card lock `owner` took ([`App::hold_card`], EnrollCard), best effort: it
    /// expires by itself otherwise. A lock that was no longer `owner`'s (or an unlock that
    /// failed, which may have run) means the call may have run past it, and a removal takes
    /// the card out of the ENROLLED index after its REMOVED record without renewing the lock
    /// first: meanwhile a new enrollment of the card may have noted it there, the note the
    /// removal took. So the card is noted again when its record is ENROLLED, or IN_PROGRESS
    /// (that enrollment's note may land before its record); the lifecycle check prunes a card
    /// it finds not ENROLLED when it comes due.
    pub(super) async fn release_card(&self, card: CardContractId, owner: &str) {
        match self.store.unlock_card(card, owner).await {
            Ok(true) => {}
            Ok(false) => self.note_again_after_lost_lock(card).await,
            Err(e) => {
                tracing::warn!(error = %e, "could not release the card lock; it expires by itself");
                self.note_again_after_lost_lock(card).await;
            }
        }
    }

    /// [`App::release_card`]'s repair after a lost lock, best effort. A plain note: one still
    /// there is due an interval later, once (this is the rare path).
    async fn note_again_after_lost_lock(&self, card: CardContractId) {
        if self.settings.lifecycle_check_interval.is_none() {
            return;
        }
        match self.store.get(card).await {
            Ok(Some(record))
                if matches!(
                    record.state,
                    EnrollmentState::Enrolled | EnrollmentState::InProgress
                ) =>
            {
                tracing::warn!(
                    card = card.get(),
                    state = ?record.state,
                    "the card lock was not this call's at its release: the card is noted again for the lifecycle check"
                );
                self.track_enrolled(card).await;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(card = card.get(), error = %e, "the card lock was not this call's at its release, and the card's record could not be read: the ENROLLED index may miss the card");
            }
        }
    }

    /// Writes `record` REMOVED for `reason` (now) under the card lock `owner` holds, then
    /// takes the card out of the ENROLLED index.
    pub(super) async fn write_removed(
        &self,
        mut record: EnrollmentRecord,
        reason: RemovalReason,
        owner: &str,
    ) -> Result<EnrollmentRecord, AppError> {
        let card = record.card_contract_id;
        record.state = EnrollmentState::Removed;
        record.removal = Some(Removal {
            reason,
            time_ms: now_ms(),
        });
        let stored = self.write_held(&record, owner).await?;
        self.untrack_enrolled(card).await;
        Ok(stored)
    }

    /// Writes `record` (merging the stored token) only while `owner` holds the card's lock.
    pub(super) async fn write_held(
        &self,
        record: &EnrollmentRecord,
        owner: &str,
    ) -> Result<EnrollmentRecord, AppError> {
        match self
            .store
            .put_enrollment_fenced(record, self.settings.enrollment_ttl, owner)
            .await?
        {
            Some(stored) => Ok(stored),
            None => {
                tracing::warn!("the card lock was lost: this call's write was refused");
                Err(AppError::RequestInFlight {
                    retry_after: Duration::from_secs(1),
                })
            }
        }
    }

    /// The record of a card enrolled in Click to Pay through this service (ENROLLED, or also
    /// REMOVED when `removed_too`): the one that holds the ids Click to Pay knows it by.
    /// `CardBusy` for an enrollment left IN_PROGRESS (the reconciler finishes it), else
    /// `CardNotEnrolled`.
    pub(super) async fn known_record(
        &self,
        card: CardContractId,
        removed_too: bool,
        checked: &CheckedProgram,
    ) -> Result<EnrollmentRecord, AppError> {
        let record = self.store.get(card).await?;
        if let CheckedProgram::Was(program) = checked
            && record.as_ref().map(|r| &r.program) != program.as_ref()
        {
            // Enrolled anew (or first) under another program since the caller was checked:
            // the retry checks the caller against it.
            return Err(AppError::CardChanged { card });
        }
        match record.as_ref().map(|r| r.state) {
            Some(EnrollmentState::Enrolled) => {}
            Some(EnrollmentState::Removed) if removed_too => {}
            Some(EnrollmentState::InProgress) => {
                return Err(AppError::CardBusy {
                    card,
                    retry_after: Duration::from_secs(1),
                });
            }
            state => return Err(AppError::CardNotEnrolled { card, state }),
        }
        record.ok_or(AppError::CardNotEnrolled { card, state: None })
    }
}
