//! `EnrollCard`: idempotency (per caller and key, with a lease and resumable phases), then
//! `/cards/searches`, `POST /cards` and the enrollment record.

use super::ports::{
    Address, Cardholder, EnrolledCard, EnrollmentRequest, StoreError, UpstreamFailure,
};
use super::{App, AppError, Step, past};
use crate::domain::{
    Begin, CardContractId, EnrollmentRecord, EnrollmentState, Failure, IdempotencyRecord, OptOut,
    Phase, StoredOutcome, consumer_subject, now_ms,
};
use crate::metrics::{EnrollStage, enroll_stage};
use std::time::Duration;
use tokio::time::Instant;

/// The consumer, validated.
#[derive(Debug, Clone)]
pub struct ConsumerInput {
    /// E-mail address.
    pub email: Option<String>,
    /// (country calling code, subscriber number).
    pub mobile: Option<(String, String)>,
    /// First name.
    pub first_name: Option<String>,
    /// Last name.
    pub last_name: Option<String>,
    /// ISO 3166-1 alpha-2.
    pub country_code: String,
    /// `en` or `en_US`.
    pub language_code: String,
}

/// A validated `EnrollCard` request.
#[derive(Debug, Clone)]
pub struct EnrollCommand {
    /// Who calls (idempotency keys are scoped per caller).
    pub caller: String,
    /// The key.
    pub idempotency_key: String,
    /// The card.
    pub card_contract_id: CardContractId,
    /// Program name; empty = default.
    pub program: String,
    /// The consumer.
    pub consumer: ConsumerInput,
    /// Cardholder name.
    pub cardholder_full_name: Option<String>,
    /// Billing address.
    pub billing_address: Option<Address>,
    /// Caller-chosen `srcCorrelationId`.
    pub src_correlation_id: Option<String>,
}

impl EnrollCommand {
    fn scope(&self) -> String {
        format!("{}\u{0}{}", self.caller, self.idempotency_key)
    }

    /// HMAC-SHA256 of the request's canonical form (see `canonical`): the record holds
    /// e-mail and address, and a bare hash of them could be reversed by a dictionary.
    fn fingerprint(&self, key: &super::FingerprintKey) -> Result<String, String> {
        Ok(key.fingerprint(&super::canonical::canonical_bytes(self)?))
    }
}

/// One running call: the idempotency record it owns, shared with its lease heartbeat. Every
/// save happens under the lock, so a heartbeat can never write back an older phase.
pub(super) struct Attempt<'a> {
    pub(super) app: &'a App,
    pub(super) scope: String,
    pub(super) record: std::sync::Arc<tokio::sync::Mutex<IdempotencyRecord>>,
}

impl Attempt<'_> {
    async fn phase(&self) -> Phase {
        self.record.lock().await.phase
    }

    /// Saves the key's record with `change` made and the lease renewed; the record is kept as
    /// it was when the save fails, so that a later save (the release) does not store what was
    /// never stored: "enroll sent" when nothing was sent, an adopted id taken for the key's own.
    async fn save_changed(
        &self,
        change: impl FnOnce(&mut IdempotencyRecord),
    ) -> Result<(), AppError> {
        let mut record = self.record.lock().await;
        let mut next = record.clone();
        change(&mut next);
        // A lease end read back from Redis is on Redis' clock: restate it on ours.
        next.lease_until_ms = now_ms() + lease_ms(self.app);
        save(self.app, &self.scope, &next).await?;
        *record = next;
        Ok(())
    }

    /// Uses another attempt's `srcCorrelationId` (`adopted`) or a new one of its own from now on
    /// (and on every resume).
    async fn use_correlation(&self, correlation: String, adopted: bool) -> Result<(), AppError> {
        self.save_changed(|r| {
            r.src_correlation_id = correlation;
            r.adopted = adopted;
        })
        .await
    }

    async fn advance(&self, phase: Phase) -> Result<(), AppError> {
        self.save_changed(|r| r.phase = phase).await
    }

    /// Stores the final answer.
    async fn finish(&self, outcome: StoredOutcome) -> Result<(), AppError> {
        let mut record = self.record.lock().await;
        record.phase = Phase::Done;
        record.outcome = Some(outcome);
        record.lease_until_ms = 0;
        save(self.app, &self.scope, &record).await
    }

    /// [`Attempt::finish`]; when the answer could not be stored, the key is given back (a
    /// second save of the finished record, lease 0) rather than held until its lease runs out:
    /// the error is transient, and a retry then replays the answer or, if this save failed too
    /// and the lease ran out, resumes and finds the enrollment by its srcCorrelationId.
    pub(super) async fn finish_or_release(&self, outcome: StoredOutcome) -> Result<(), AppError> {
        let finished = self.finish(outcome).await;
        if finished.is_err() {
            self.release().await;
        }
        finished
    }

    /// Settles the key with the call's result: a record or an error that is the key's answer is
    /// stored as it ([`Attempt::finish_or_release`]), any other error gives the key back so that a
    /// retry with it runs again. Returns the result.
    pub(super) async fn settle(
        &self,
        result: Result<EnrollmentRecord, AppError>,
    ) -> Result<EnrollmentRecord, AppError> {
        match result {
            Ok(record) => {
                self.finish_or_release(StoredOutcome::Success {
                    enrollment: record.clone(),
                })
                .await?;
                Ok(record)
            }
            Err(e) if !e.is_key_answer() => {
                self.release().await;
                Err(e)
            }
            Err(e) => {
                self.finish_or_release(e.to_stored()).await?;
                Err(e)
            }
        }
    }

    /// Starts the key over: phase "started", with `correlation` (the caller's) or a new
    /// srcCorrelationId, saved at once (best effort: the release saves it again).
    async fn restart(&self, correlation: Option<String>) {
        let mut record = self.record.lock().await;
        record.phase = Phase::Started;
        record.src_correlation_id = correlation.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        record.adopted = false;
        if let Err(e) = save(self.app, &self.scope, &record).await {
            tracing::warn!(error = ?e, "could not save the key started over; its release saves it again");
        }
    }

    /// Gives the key back without an answer: the next call with it resumes from the phase reached.
    pub(super) async fn release(&self) {
        let mut record = self.record.lock().await;
        record.lease_until_ms = 0;
        if let Err(e) = save(self.app, &self.scope, &record).await {
            tracing::warn!(error = ?e, "could not release the idempotency lease; it expires by itself");
        }
    }
}

async fn save(app: &App, scope: &str, record: &IdempotencyRecord) -> Result<(), AppError> {
    if app.store.idempotency_update(scope, record).await? {
        Ok(())
    } else {
        // Another call took the key over (our lease ran out): stop rather than race it.
        Err(AppError::RequestInFlight {
            retry_after: Duration::from_secs(1),
        })
    }
}

pub(super) struct AbortOnDrop(pub(super) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(super) fn lease_ms(app: &App) -> i64 {
    i64::try_from(app.settings.lease.as_millis()).unwrap_or(i64::MAX)
}

/// The answer of `EnrollCard`.
#[derive(Debug, Clone)]
pub struct Enrolled {
    /// The enrollment.
    pub record: EnrollmentRecord,
    /// Whether it is the stored answer of an earlier call with the key (nothing was done now).
    pub replayed: bool,
}

impl App {
    /// Runs `EnrollCard`.
    pub async fn enroll(
        &self,
        cmd: EnrollCommand,
        deadline: Option<Instant>,
    ) -> Result<Enrolled, AppError> {
        let now = now_ms();
        let proposal = IdempotencyRecord {
            fingerprint: cmd
                .fingerprint(&self.settings.fingerprint_key)
                .map_err(AppError::Internal)?,
            phase: Phase::Started,
            src_correlation_id: cmd
                .src_correlation_id
                .clone()
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            adopted: false,
            owner: format!("{}/{}", self.instance, uuid::Uuid::new_v4()),
            lease_until_ms: now + lease_ms(self),
            outcome: None,
        };
        let scope = cmd.scope();
        let card = cmd.card_contract_id;
        // A cardholder who opted out is not enrolled. Checked on every new or resumed call and
        // never stored as the key's answer: once the opt-out is withdrawn, the key works. This
        // early check spares the lock to a call that would be refused anyway (the decisive one
        // comes with the card lock, below); it is read beside the key's lease, in the same
        // round trip, and its answer is dropped when the key replays or is busy.
        let consumer_ref =
            super::fingerprint::consumer_ref(&self.settings.fingerprint_key, &cmd.consumer)
                .map_err(AppError::Internal);
        let (begun, early) = enroll_stage(EnrollStage::Begin, async {
            tokio::join!(
                self.store.idempotency_begin(&scope, &proposal, now),
                self.refuse_opted_out(card, &consumer_ref)
            )
        })
        .await;
        let (record, resumed) = match begun? {
            Begin::Reused => {
                return Err(AppError::IdempotencyKeyReused {
                    card: cmd.card_contract_id,
                    key: cmd.idempotency_key.clone(),
                });
            }
            Begin::InFlight(ms) => {
                return Err(AppError::RequestInFlight {
                    retry_after: Duration::from_millis(
                        u64::try_from(ms.clamp(50, 5_000)).unwrap_or(1_000),
                    ),
                });
            }
            Begin::Replay(r) => {
                return match r.outcome {
                    Some(StoredOutcome::Success { enrollment }) => Ok(Enrolled {
                        record: enrollment,
                        replayed: true,
                    }),
                    Some(failure) => Err(AppError::Replayed(failure)),
                    None => Err(AppError::Internal("replayed record without outcome".into())),
                };
            }
            Begin::New(r) => (r, false),
            Begin::Resume(r) => (r, true),
        };
        if resumed {
            tracing::info!(phase = ?record.phase, "resuming an interrupted enrollment");
        }
        // A resumed call whose POST /cards may have gone out is not refused for an opt-out
        // before it has looked: it goes on to the lock to finish what it sent (a card found
        // enrolled is taken out again), and sends nothing new.
        let sent_before = resumed && record.phase >= Phase::EnrollSent;
        let correlation = record.src_correlation_id.clone();
        let owner = record.owner.clone();
        let attempt = Attempt {
            app: self,
            scope,
            record: std::sync::Arc::new(tokio::sync::Mutex::new(record)),
        };
        if let Err(e) = early
            && !(sent_before && matches!(e, AppError::ConsumerOptedOut { .. }))
        {
            attempt.release().await;
            return Err(e);
        }
        // One enrollment of a card at a time, whatever its key: two keys must not send two
        // POST /cards with different srcCorrelationIds. The card's record and the opt-out kept
        // under the card are read under the lock as it is taken (one round trip: `run` starts
        // from the record); the opt-out kept under the consumer reference is read beside it.
        let (locked, by_consumer) = enroll_stage(EnrollStage::Lock, async {
            tokio::join!(
                self.store.lock_and_read(card, &owner, self.settings.lease),
                self.consumer_opt_out(&consumer_ref)
            )
        })
        .await;
        let locked = match locked {
            Ok(Some(locked)) => locked,
            Ok(None) => {
                attempt.release().await;
                return Err(AppError::CardBusy {
                    card,
                    retry_after: Duration::from_secs(1),
                });
            }
            Err(e) => {
                // Transient, as every store error: the key is given back like on every other
                // transient failure, so that a retry resumes rather than meet REQUEST_IN_PROGRESS
                // until the lease runs out; and the lock its script may have taken.
                self.give_back_lock(card, &owner).await;
                attempt.release().await;
                return Err(e.into());
            }
        };
        // The decisive opt-out check. OptOut of this card records the opt-out under the card
        // while it holds this lock, so one that completed between the early check and the lock
        // is read by the lock's own script, before anything is sent. An opt-out under the
        // consumer reference alone comes from another card's OptOut, which never held this
        // card's lock: read beside the lock, it is as current as it was under it.
        let refused = match refusal(card, locked.opt_out, by_consumer) {
            Some(e @ AppError::ConsumerOptedOut { .. }) if sent_before => Some(e),
            Some(e) => {
                self.release_card(card, &owner).await;
                attempt.release().await;
                return Err(e);
            }
            None => None,
        };
        let existing = locked.record;
        // Aborted on drop too: a cancelled call must stop renewing its lease.
        let lost = tokio_util::sync::CancellationToken::new();
        let heartbeat = AbortOnDrop(self.heartbeat(
            attempt.scope.clone(),
            attempt.record.clone(),
            card,
            lost.clone(),
        ));
        let refused_since = match &refused {
            Some(AppError::ConsumerOptedOut { since_ms, .. }) => Some(*since_ms),
            _ => None,
        };
        let steps = async {
            let found = self
                .run(
                    &attempt,
                    &cmd,
                    existing,
                    correlation,
                    &consumer_ref,
                    refused,
                    deadline,
                )
                .await?;
            self.answer_enrolled(&attempt, &cmd, found, refused_since, deadline)
                .await
        };
        // The moment the lease or the card lock is lost, another attempt may own the card:
        // stop here (as a crash would) rather than write over what it writes.
        let result = tokio::select! {
            result = steps => result,
            _ = lost.cancelled() => {
                tracing::warn!("the lease or the card lock was lost: this attempt stops");
                Err(AppError::RequestInFlight {
                    retry_after: Duration::from_secs(1),
                })
            }
        };
        drop(heartbeat);
        match &result {
            Ok(record) => tracing::debug!(state = ?record.state, "enrollment finished"),
            Err(e) => tracing::debug!(reason = %e.parts().reason, "enrollment failed"),
        }
        // The card lock and the key's answer are two keys, and either order is safe after a
        // crash (a lock left behind expires; a key left unanswered resumes): both at once. An
        // enrollment that ended ENROLLED takes its IN_PROGRESS note out first, before the lock
        // is released (later attempts note the card under the lock); the removal is not
        // fenced, so a release that finds the lock lost notes the card again
        // (`release_noted`). A crash before it leaves the note for the reconciler to prune.
        let enrolled = matches!(&result, Ok(record) if record.state == EnrollmentState::Enrolled);
        let release = async {
            if enrolled {
                self.untrack_in_progress(card).await;
                self.release_noted(card, &owner).await;
            } else {
                self.release_card(card, &owner).await;
            }
        };
        let ((), settled) = enroll_stage(EnrollStage::Settle, async {
            tokio::join!(release, attempt.settle(result))
        })
        .await;
        let record = settled?;
        Ok(Enrolled {
            record,
            replayed: false,
        })
    }

    /// `ConsumerOptedOut` when an opt-out covers `card` or the consumer reference (a store
    /// error, or the reference's, as such).
    async fn refuse_opted_out(
        &self,
        card: CardContractId,
        consumer_ref: &Result<String, AppError>,
    ) -> Result<(), AppError> {
        let reference = consumer_ref.as_ref().map_err(Clone::clone)?;
        match self.opted_out(card, reference).await? {
            None => Ok(()),
            Some(since_ms) => Err(AppError::ConsumerOptedOut { card, since_ms }),
        }
    }

    /// Takes this attempt's IN_PROGRESS note of `card` back ([`App::untrack_held`]). Best
    /// effort: a note left behind is the reconciler's to prune.
    async fn take_back_note(&self, attempt: &Attempt<'_>, card: CardContractId) {
        let owner = attempt.record.lock().await.owner.clone();
        match self.untrack_held(card, &owner).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!(
                    "the card lock is no longer this attempt's: its note stays for the reconciler"
                );
            }
            Err(e) => {
                tracing::debug!(error = %e, "could not take the note back; it stays for the reconciler");
            }
        }
    }

    /// Takes the card's note out of the IN_PROGRESS index only while `owner` still holds the
    /// card lock (renewed first, so that it holds for a lease): notes are written under the
    /// lock (`ZADD NX`), and once the lock is lost (an unreachable Redis, a paused process) the
    /// note may be the next holder's. `false`: the lock is another's; the note stays.
    pub(super) async fn untrack_held(
        &self,
        card: CardContractId,
        owner: &str,
    ) -> Result<bool, StoreError> {
        if !self
            .store
            .renew_card(card, owner, self.settings.lease)
            .await?
        {
            return Ok(false);
        }
        self.store.untrack_in_progress(card).await?;
        Ok(true)
    }

    /// Releases the card lock after this attempt took its IN_PROGRESS note out. The removal
    /// was unconditional (a renewal before it would cost every enrollment a round trip), so
    /// when the lock turns out not to have been this attempt's any more (run out, or taken
    /// by the next attempt, whose note the removal may have taken), or the unlock fails (it
    /// may have run), the card is noted again (`ZADD NX`: a note there stays): a note too
    /// many is the reconciler's to prune; a card in neither index would be nobody's.
    async fn release_noted(&self, card: CardContractId, owner: &str) {
        match self.store.unlock_card(card, owner).await {
            Ok(true) => return,
            Ok(false) => {
                tracing::warn!(
                    "the enrollment is ENROLLED, but the card lock was no longer this attempt's at its release: the card is noted again for the reconciler"
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "the enrollment is ENROLLED, but the card lock could not be released: it expires by itself, and the card is noted again for the reconciler");
            }
        }
        if let Err(e) = self.store.track_in_progress(card, now_ms()).await {
            tracing::warn!(error = %e, "could not note the card again: an unfinished enrollment of this card by another attempt may be missed by the reconciler");
        }
    }

    /// Drops the card from the IN_PROGRESS index, best effort: the reconciler prunes it when
    /// it finds the record finished.
    async fn untrack_in_progress(&self, card: CardContractId) {
        if let Err(e) = self.store.untrack_in_progress(card).await {
            tracing::debug!(error = %e, "could not drop the card from the IN_PROGRESS index");
        }
    }

    /// The opt-out kept under the consumer reference, if any (the reference's error as such).
    async fn consumer_opt_out(
        &self,
        consumer_ref: &Result<String, AppError>,
    ) -> Result<Option<OptOut>, AppError> {
        let reference = consumer_ref.as_ref().map_err(Clone::clone)?;
        Ok(self
            .store
            .get_opt_out(&[consumer_subject(reference)])
            .await?)
    }

    /// Renews the lease while the call runs (a crashed process stops renewing it); cancels
    /// `lost` when the lease or the card lock turns out to be someone else's.
    pub(super) fn heartbeat(
        &self,
        scope: String,
        record: std::sync::Arc<tokio::sync::Mutex<IdempotencyRecord>>,
        card: CardContractId,
        lost: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let store = self.store.clone();
        let lease = self.settings.lease;
        let lease_ms = lease_ms(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(lease / 3).await;
                let mut current = record.lock().await;
                current.lease_until_ms = now_ms() + lease_ms;
                // A store error is retried on the next beat (the lease outlives two of them);
                // only a lost lease or lock ends the heartbeat.
                if let Ok(false) = store.idempotency_update(&scope, &current).await {
                    lost.cancel();
                    return;
                }
                if let Ok(false) = store.renew_card(card, &current.owner, lease).await {
                    lost.cancel();
                    return;
                }
            }
        })
    }

    /// Answers what the steps found, unless it is ENROLLED and an opt-out covers its card or
    /// cardholder: the opt-outs as read beside the record's write (`opt_out`), else read now
    /// (after the card was found enrolled); `refused_since`, the opt-out that refused a
    /// resumed call (it covers the command's consumer, which an adopted attempt's record may
    /// not name), decides when there is one. An OptOut through another card of the profile
    /// never holds this card's lock, and one stored after this call's checks may have deleted
    /// the profile before this call's POST /cards made it again. Read after the POST /cards
    /// returned, each opt-out is either seen here or stored after it, and so deletes the
    /// profile after this card joined it: an OptOut stores its opt-out before it deletes.
    /// A card under an opt-out is taken out again, under this attempt's lock
    /// ([`App::remove_for_opt_out`]), and the answer is `CONSUMER_OPTED_OUT`, not the key's:
    /// the key starts over (phase "started", the caller's srcCorrelationId or a new one), so
    /// that once the opt-out is withdrawn it enrolls the card anew rather than take this
    /// enrollment's token for proof. When the taking out fails for a time (Mastercard or the
    /// store unavailable, the deadline), that error is the answer and the key is given back
    /// at its phase: a retry with it resumes here. When it fails for good (Mastercard refused
    /// the deletion), the record stays ENROLLED and the answer is `CONSUMER_OPTED_OUT`.
    async fn answer_enrolled(
        &self,
        attempt: &Attempt<'_>,
        cmd: &EnrollCommand,
        (record, opt_out): (EnrollmentRecord, Option<Option<OptOut>>),
        refused_since: Option<i64>,
        deadline: Option<Instant>,
    ) -> Result<EnrollmentRecord, AppError> {
        if record.state != EnrollmentState::Enrolled {
            return Ok(record);
        }
        let since_ms = match (refused_since, opt_out) {
            (Some(since_ms), _) => Some(since_ms),
            (None, Some(read)) => read.map(|o| o.since_ms),
            (None, None) => self.opt_out_covering(&record).await?.map(|o| o.since_ms),
        };
        let Some(since_ms) = since_ms else {
            return Ok(record);
        };
        let card = record.card_contract_id;
        let opted_out = AppError::ConsumerOptedOut { card, since_ms };
        tracing::warn!(
            "the cardholder opted out while the card was enrolled: it is taken out of Click to Pay again"
        );
        let owner = attempt.record.lock().await.owner.clone();
        match self.remove_for_opt_out(record, &owner, deadline).await {
            Ok(_) => {}
            Err(e) if e.is_transient() => return Err(e),
            Err(e) => {
                tracing::error!(reason = %e.parts().reason, "the card could not be taken out of Click to Pay again: its record stays ENROLLED under the opt-out");
                return Err(opted_out);
            }
        }
        attempt.restart(cmd.src_correlation_id.clone()).await;
        self.take_back_note(attempt, card).await;
        Err(opted_out)
    }

    /// The enrollment's steps; with the record, the opt-outs when they were read beside its
    /// write. `refused`: the opt-out that refuses a resumed call, which only finishes what it
    /// sent.
    #[allow(clippy::too_many_arguments)]
    async fn run(
        &self,
        attempt: &Attempt<'_>,
        cmd: &EnrollCommand,
        existing: Result<Option<EnrollmentRecord>, StoreError>,
        correlation: String,
        consumer_ref: &Result<String, AppError>,
        refused: Option<AppError>,
        deadline: Option<Instant>,
    ) -> Result<(EnrollmentRecord, Option<Option<OptOut>>), AppError> {
        if !self.upstream.has_program(&cmd.program) {
            return Err(AppError::Internal(format!(
                "program {} vanished",
                crate::text::excerpt(&cmd.program)
            )));
        }
        // Read under the card lock, beside the decisive opt-out check.
        let existing = existing?;
        // A card whose earlier enrollment left Click to Pay: a new enrollment, whose first write
        // does not carry the old (deactivated) token over.
        let mut after_removal = existing
            .as_ref()
            .is_some_and(|r| r.state == EnrollmentState::Removed);
        // An earlier attempt's IN_PROGRESS record: its note for the reconciler must stay.
        let was_in_progress = existing
            .as_ref()
            .is_some_and(|r| r.state == EnrollmentState::InProgress);
        if let Some(existing) = existing
            .as_ref()
            .filter(|r| r.state == EnrollmentState::Enrolled)
        {
            // Our own earlier attempt got this far before the process stopped: its answer (and
            // the ENROLLED index, which the stop may have come before).
            if same_correlation(existing.src_correlation_id.as_deref(), &correlation) {
                self.track_enrolled(cmd.card_contract_id).await;
                return Ok((existing.clone(), None));
            }
            // Under an opt-out, a resumed call's answer is the refusal (not stored as the key's),
            // not this one (stored for good).
            if let Some(refused) = refused {
                return Err(refused);
            }
            return Err(AppError::CardAlreadyEnrolled(Box::new(existing.clone())));
        }
        // An attempt under another key may have sent POST /cards and stopped (a transient error,
        // a crash): continue it with its srcCorrelationId, so that Click to Pay sees the same
        // enrollment again rather than a second one.
        // Taken over by an earlier attempt of this key, which stopped before it sent it.
        let mut adopted = attempt.record.lock().await.adopted;
        // This key sent its own srcCorrelationId before, and the card's record retired it since:
        // its enrollment was replaced by a later one of the card. A removal found below is its
        // answer too, even when it takes the later one over (found removed, that one left as
        // well): it enrolls the card again no more than when that removal was already recorded.
        let replaced = !adopted
            && existing
                .as_ref()
                .is_some_and(|r| r.retired_correlation(&correlation))
            && attempt.phase().await >= Phase::EnrollSent;
        let mut correlation = match existing
            .as_ref()
            .filter(|r| r.state == EnrollmentState::InProgress)
            .and_then(|r| r.src_correlation_id.clone())
        {
            // Byte for byte: another spelling of the same id is taken over as stored, and the
            // token list asked first, as for another id.
            Some(earlier) if earlier != correlation => {
                tracing::info!(
                    "continuing the unfinished enrollment of this card with its srcCorrelationId"
                );
                // A key whose own enrollment this one replaced takes it over as its own: it
                // stands in for the key's, and its removal is the key's answer on every retry
                // (the key's own id is not kept beside it).
                attempt.use_correlation(earlier.clone(), !replaced).await?;
                adopted = !replaced;
                earlier
            }
            _ => correlation,
        };

        // A POST /cards was sent and its answer lost (a crash, a timeout): the card may be
        // tokenized already. Ask the token list before sending it again, and finish from it.
        // The card's record as the token list shows it, when it was asked.
        let mut looked_up = None;
        let mut finished_removed = None;
        if adopted || attempt.phase().await >= Phase::EnrollSent {
            let owner = attempt.record.lock().await.owner.clone();
            let (record, _) = enroll_stage(
                EnrollStage::Recover,
                self.status_as(cmd.card_contract_id, deadline, Some(&owner)),
            )
            .await
            .map_err(outcome_unknown)?;
            if record.state == EnrollmentState::Enrolled {
                tracing::info!(
                    "finished from the token list: the interrupted attempt's POST /cards went through"
                );
                self.track_enrolled(cmd.card_contract_id).await;
                return Ok((record, None));
            }
            if record.state == EnrollmentState::Removed
                && (replaced || !adopted && left_click_to_pay(&record, &correlation))
            {
                // What this key sent went through and the card left Click to Pay since
                // (removed, or its token deactivated: then the look-up wrote REMOVED; or
                // enrolled again and removed once more since). That is the key's answer:
                // sending its srcCorrelationId again would be answered as the removed
                // enrollment, and a new one would enroll again a card someone took out (a new
                // key does that, on purpose).
                finished_removed = Some(record);
            } else {
                // Another key's enrollment, adopted, that went through and left since: this
                // key's is a new one, as on any card that left.
                after_removal |= record.state == EnrollmentState::Removed;
                looked_up = Some(record);
            }
        }
        // Under an opt-out, a resumed call finishes what it sent and sends nothing new.
        if let Some(refused) = refused {
            return Err(refused);
        }
        if let Some(record) = finished_removed {
            tracing::info!(
                "finished from the token list: the interrupted attempt's POST /cards went through, and the card left Click to Pay since"
            );
            // Finished: its IN_PROGRESS note goes, as when it ends ENROLLED.
            self.take_back_note(attempt, cmd.card_contract_id).await;
            return Ok((record, None));
        }
        // A new enrollment under a srcCorrelationId of its own: a removed enrollment's (sent
        // again by a caller, or kept by a key started over after an opt-out) would be answered
        // as that enrollment again (the same srcCorrelationId is the same enrollment).
        let left = |id: &str| {
            [existing.as_ref(), looked_up.as_ref()]
                .into_iter()
                .flatten()
                .any(|r| left_click_to_pay(r, id))
        };
        if left(&correlation) {
            let fresh = cmd
                .src_correlation_id
                .clone()
                .filter(|asked| !left(asked))
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
            attempt.use_correlation(fresh.clone(), false).await?;
            correlation = fresh;
            adopted = false;
        }

        // The card object is never stored, so a resumed call searches again (it changes nothing).
        // The card is noted for the reconciler while the search runs, before the record says
        // IN_PROGRESS: a crash between the two must not leave a card it never looks at (it
        // prunes, under the lock, cards that are not IN_PROGRESS).
        let cardholder = Cardholder {
            full_name: cmd.cardholder_full_name.clone(),
            billing_address: cmd.billing_address.clone(),
        };
        let (card, tracked) = enroll_stage(EnrollStage::Search, async {
            tokio::join!(
                self.upstream.encrypted_card(
                    cmd.card_contract_id,
                    &cmd.program,
                    &cardholder,
                    deadline
                ),
                self.store.track_in_progress(cmd.card_contract_id, now_ms())
            )
        })
        .await;
        let card = match card {
            Ok(card) => card,
            Err(e) => {
                // Nothing of this call says IN_PROGRESS: its note goes with it (a failed search
                // would otherwise leave one note per call for the reconciler to prune: during
                // a Mastercard outage, thousands).
                if !was_in_progress {
                    self.take_back_note(attempt, cmd.card_contract_id).await;
                }
                return Err(map_upstream(
                    Step::Search,
                    cmd.card_contract_id,
                    e,
                    deadline,
                ));
            }
        };
        tracked?;
        let mut in_progress = EnrollmentRecord::new(
            cmd.card_contract_id,
            cmd.program.clone(),
            EnrollmentState::InProgress,
            now_ms(),
        );
        in_progress.src_correlation_id = Some(correlation.clone());
        // Both id sets, for either lifecycle family: the Credential Directory's are the issuer's
        // own (the card id, the consumer reference), assigned here.
        let consumer_ref = consumer_ref.clone()?;
        let credential_id = cmd.card_contract_id.get().to_string();
        in_progress.external_consumer_id = Some(consumer_ref.clone());
        in_progress.external_credential_id = Some(credential_id.clone());
        in_progress.consumer_ref = Some(consumer_ref.clone());
        // The record IN_PROGRESS and the phase "enroll sent" together: two keys, and nothing is
        // sent before both landed. A crash between them leaves the record with the phase
        // "started" (a resumed call searches again) or the phase without the record (a resumed
        // call asks the token list first, then writes it and sends): no POST /cards went out.
        // From the phase on, a retry re-sends with the same srcCorrelationId.
        let write = async {
            if after_removal {
                self.write_fresh(attempt, &in_progress).await
            } else {
                self.write_fenced(attempt, &in_progress).await
            }
        };
        // Polled in this order: the write reads the owner under the attempt's lock, which
        // `advance` then holds through its save; the other way round they would not overlap.
        let (written, sent) = enroll_stage(EnrollStage::Write, async {
            tokio::join!(biased; write, attempt.advance(Phase::EnrollSent))
        })
        .await;
        written?;
        sent?;
        // This key's own send from now on: an adopted enrollment becomes as much its own (its
        // removal is the key's answer). Only once its IN_PROGRESS write landed, so that a key
        // whose write failed, or that stopped before it, still knows the id is another's.
        if adopted {
            enroll_stage(
                EnrollStage::Write,
                attempt.use_correlation(correlation.clone(), false),
            )
            .await?;
        }
        let request = EnrollmentRequest {
            program: &cmd.program,
            src_correlation_id: &correlation,
            consumer: &cmd.consumer,
            card,
            external_ids: (consumer_ref.as_str(), credential_id.as_str()),
        };
        match enroll_stage(EnrollStage::Enroll, self.upstream.enroll(request, deadline)).await {
            Ok(enrolled) => {
                let record = enrolled_record(in_progress, enrolled);
                // The ENROLLED index beside the record, before the IN_PROGRESS note goes (when
                // the call settles): a crash between them leaves the card in one index or both,
                // never in neither. Written first, it is harmless: the lifecycle check drops a
                // card whose record is not ENROLLED by its due time.
                // The opt-outs are read again beside them ([`App::answer_enrolled`]).
                let (stored, (), opt_out) = enroll_stage(EnrollStage::Record, async {
                    tokio::join!(
                        self.write_fenced(attempt, &record),
                        self.track_enrolled(cmd.card_contract_id),
                        self.opt_out_covering(&record)
                    )
                })
                .await;
                Ok((stored?, Some(opt_out?)))
            }
            Err(e) => {
                let error = map_upstream(Step::Enroll, cmd.card_contract_id, e, deadline);
                if !error.is_transient() {
                    let mut failed = in_progress;
                    failed.state = EnrollmentState::Failed;
                    let parts = error.parts();
                    failed.failure = Some(Failure {
                        reason: parts.reason.name().to_owned(),
                        message: parts.message,
                        retryable: false,
                        metadata: parts.metadata,
                    });
                    enroll_stage(EnrollStage::Record, self.write_fenced(attempt, &failed)).await?;
                    // The record is final: its note goes now rather than wait for the
                    // reconciler, but only while the lock is still this attempt's (renewed
                    // first): a FAILED record does not stop a later attempt, which keeps the
                    // note there as its own once the lock is lost.
                    self.take_back_note(attempt, cmd.card_contract_id).await;
                }
                Err(error)
            }
        }
    }
}

impl App {
    /// Writes the attempt's record only while the attempt holds the card lock: one that
    /// stalled past it (a paused process) must not write over the attempt that took over.
    async fn write_fenced(
        &self,
        attempt: &Attempt<'_>,
        record: &EnrollmentRecord,
    ) -> Result<EnrollmentRecord, AppError> {
        let owner = attempt.record.lock().await.owner.clone();
        match self
            .store
            .put_enrollment_fenced(record, self.settings.enrollment_ttl, &owner)
            .await?
        {
            Some(stored) => Ok(stored),
            None => {
                tracing::warn!("the card lock is someone else's: this attempt's write was refused");
                Err(AppError::RequestInFlight {
                    retry_after: Duration::from_secs(1),
                })
            }
        }
    }
}

impl App {
    /// [`App::write_fenced`] of the first record of a new enrollment after a removal: the old
    /// token is not kept.
    async fn write_fresh(
        &self,
        attempt: &Attempt<'_>,
        record: &EnrollmentRecord,
    ) -> Result<EnrollmentRecord, AppError> {
        let owner = attempt.record.lock().await.owner.clone();
        match self
            .store
            .put_fresh_enrollment_fenced(record, self.settings.enrollment_ttl, &owner)
            .await?
        {
            Some(stored) => Ok(stored),
            None => Err(AppError::RequestInFlight {
                retry_after: Duration::from_secs(1),
            }),
        }
    }
}

/// Whether two srcCorrelationIds name one enrollment: UUIDs, compared as such, whatever the
/// case of their hex digits (the fingerprint compares them so too).
fn same_correlation(a: Option<&str>, b: &str) -> bool {
    a.is_some_and(|a| a.eq_ignore_ascii_case(b))
}

/// Whether `id` is the srcCorrelationId of an enrollment of the card that left Click to Pay, as
/// the card's `record` knows: its own, REMOVED, or an earlier one that a new one replaced.
fn left_click_to_pay(record: &EnrollmentRecord, id: &str) -> bool {
    record.retired_correlation(id)
        || (record.state == EnrollmentState::Removed
            && same_correlation(record.src_correlation_id.as_deref(), id))
}

/// `ConsumerOptedOut` when an opt-out is kept under the card or the consumer reference, the
/// card's first (as [`App::opted_out`] reads them); a read's error as such, in the same order.
/// `None`: nothing refuses the enrollment.
fn refusal(
    card: CardContractId,
    by_card: Result<Option<OptOut>, StoreError>,
    by_consumer: Result<Option<OptOut>, AppError>,
) -> Option<AppError> {
    let opt_out = match (by_card, by_consumer) {
        (Err(e), _) => return Some(e.into()),
        (Ok(Some(opt_out)), _) | (Ok(None), Ok(Some(opt_out))) => opt_out,
        (Ok(None), Err(e)) => return Some(e),
        (Ok(None), Ok(None)) => return None,
    };
    Some(AppError::ConsumerOptedOut {
        card,
        since_ms: opt_out.since_ms,
    })
}

fn enrolled_record(mut record: EnrollmentRecord, enrolled: EnrolledCard) -> EnrollmentRecord {
    record.state = EnrollmentState::Enrolled;
    record.failure = None;
    record.src_digital_card_id = enrolled.src_digital_card_id;
    record.masked_card = enrolled.masked_card;
    record.src_consumer_id = enrolled.src_consumer_id;
    record
}

/// The one mapping of upstream failures of the flows to application errors: exhaustive, so a
/// new kind of failure must be placed here.
pub(super) fn map_upstream(
    step: Step,
    card: CardContractId,
    failure: UpstreamFailure,
    deadline: Option<Instant>,
) -> AppError {
    match failure {
        UpstreamFailure::Unavailable { .. } if past(deadline) => AppError::DeadlineExceeded(step),
        UpstreamFailure::Unavailable {
            retry_after,
            context,
        } => AppError::UpstreamUnavailable {
            step,
            context,
            retry_after,
        },
        UpstreamFailure::ContractNotFound(upstream) => AppError::CardContractNotFound {
            step,
            card,
            upstream,
        },
        UpstreamFailure::Declined { reason, context } => AppError::CardNotEligible {
            reason,
            card,
            upstream: context,
        },
        UpstreamFailure::Rejected(context) => AppError::UpstreamRejected(step, context),
        UpstreamFailure::InvalidAnswer(context) => AppError::UpstreamInvalid(step, context),
        UpstreamFailure::RequestNotBuilt(context) => AppError::Internal(context.description),
        UpstreamFailure::IdsUnknown { missing, .. } => {
            AppError::ClickToPayIdsUnknown { card, missing }
        }
    }
}

/// A failure of the look-up that decides an enrollment whose POST /cards may have gone out: its
/// outcome stays unknown, so the key resumes. Stored as the key's answer (a token list refused
/// or unreadable for a moment), it was replayed as final while the enrollment may have gone
/// through (and the reconciler may finish it ENROLLED).
fn outcome_unknown(e: AppError) -> AppError {
    match e {
        AppError::UpstreamRejected(step, context) | AppError::UpstreamInvalid(step, context) => {
            AppError::UpstreamUnavailable {
                step,
                context,
                retry_after: Duration::from_secs(1),
            }
        }
        other => other,
    }
}
