//! The reconciler: enrollments left IN_PROGRESS (a client that gave up, a crash, an answer lost
//! while the breaker was open) are finished from Processing Digital's token list, so that no
//! card stays in limbo. One replica at a time runs it (a store lease); a card whose attempt is
//! still running (it holds the card lock) is left alone.

use super::{App, AppError};
use crate::domain::{CardContractId, EnrollmentState, Failure, now_ms, removed_by_token};
use std::time::Duration;

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// IN_PROGRESS cards looked at.
    pub checked: usize,
    /// Found tokenized: now ENROLLED.
    pub enrolled: usize,
    /// No Click to Pay token: now FAILED (retryable: a retry with the same key resumes).
    pub failed: usize,
    /// Left for the next pass: an attempt holds the card, its record changed while Mastercard
    /// was asked, or Mastercard did not answer.
    pub pending: usize,
    /// No longer IN_PROGRESS (finished meanwhile): dropped from the index.
    pub pruned: usize,
    /// ENROLLED cards looked up in Click to Pay (`enroll.lifecycle_check_interval`).
    pub lifecycle_checked: usize,
    /// Of those, cards Click to Pay no longer holds: now REMOVED (`NOT_IN_CLICK_TO_PAY`); and
    /// IN_PROGRESS cards found tokenized whose cardholder opted out meanwhile, taken out
    /// again (REMOVED, `CONSUMER_OPTED_OUT`), or whose token shows deactivated (REMOVED,
    /// `TOKEN_DEACTIVATED`).
    pub removed: usize,
    /// Of those, look-ups that failed: due again an interval later, except a card whose record
    /// lacks the Click to Pay ids to look it up by, which leaves the index.
    pub lookup_failed: usize,
}

impl App {
    /// One pass over at most `limit` cards IN_PROGRESS for longer than `older_than`.
    pub async fn reconcile_once(
        &self,
        older_than: Duration,
        limit: usize,
    ) -> Result<ReconcileReport, AppError> {
        let older_ms = i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX);
        let cutoff = now_ms().saturating_sub(older_ms);
        let mut report = ReconcileReport::default();
        for card in self.store.in_progress_before(cutoff, limit).await? {
            report.checked += 1;
            let outcome = self.reconcile_card(card).await;
            let name = match outcome {
                Ok(Outcome::Enrolled) => {
                    report.enrolled += 1;
                    "enrolled"
                }
                Ok(Outcome::Failed) => {
                    report.failed += 1;
                    "failed"
                }
                Ok(Outcome::OptedOut | Outcome::Removed) => {
                    report.removed += 1;
                    "removed"
                }
                Ok(Outcome::Pruned) => {
                    report.pruned += 1;
                    continue;
                }
                Ok(Outcome::Busy) => {
                    report.pending += 1;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(card = card.get(), reason = %e.parts().reason, "reconciler: card left for a later pass");
                    // To the back of the queue: cards that keep failing must not hold the head
                    // of the index and starve the others. One command that only moves a note
                    // (a removal and a new note were two: an error or an exit between them lost
                    // the note, and the IN_PROGRESS record with it).
                    if let Err(e) = self.store.requeue_in_progress(card, now_ms()).await {
                        tracing::debug!(error = %e, "reconciler: could not requeue the card");
                    }
                    report.pending += 1;
                    "error"
                }
            };
            crate::metrics::reconciled(name);
        }
        self.check_enrolled(limit, &mut report).await?;
        Ok(report)
    }

    /// The ENROLLED cards due for a look-up in Click to Pay (`lifecycle_check_interval` after
    /// their enrollment or last look-up): one Click to Pay no longer holds is REMOVED; the others
    /// are due again an interval later, also after a failed look-up.
    async fn check_enrolled(
        &self,
        limit: usize,
        report: &mut ReconcileReport,
    ) -> Result<(), AppError> {
        if self.settings.lifecycle_check_interval.is_none() {
            return Ok(());
        }
        let now = now_ms();
        for card in self.store.enrolled_due(now, limit).await? {
            let record = match self.store.get(card).await? {
                Some(record) if record.state == EnrollmentState::Enrolled => record,
                // Later news of its token can make it ENROLLED again (by a notification or a
                // refresh, whichever path): it stays in the index, due an interval later, until
                // its record expires, so that it is looked up again once it is back.
                Some(record) if removed_by_token(&record) => {
                    self.track_enrolled(card).await;
                    continue;
                }
                _ => {
                    self.untrack_enrolled_due(card, now).await;
                    continue;
                }
            };
            report.lifecycle_checked += 1;
            let deadline = tokio::time::Instant::now() + self.settings.lease / 2;
            match self.check_held(&record, Some(deadline)).await {
                Ok(super::lifecycle_check::Checked::Removed(_)) => {
                    report.removed += 1;
                    tracing::info!(
                        card = card.get(),
                        "reconciler: Click to Pay no longer holds the card; REMOVED"
                    );
                    crate::metrics::reconciled("removed");
                }
                Ok(_) => self.track_enrolled(card).await,
                Err(e) => {
                    report.lookup_failed += 1;
                    crate::metrics::reconciled("lookup_failed");
                    if matches!(e, AppError::ClickToPayIdsUnknown { .. }) {
                        // No later pass can look it up either (its token's news still can
                        // make it REMOVED): out of the index rather than failing every interval.
                        tracing::info!(card = card.get(), reason = %e.parts().reason, "reconciler: the record lacks the ids to look the card up in Click to Pay; no longer checked");
                        self.untrack_enrolled_due(card, now).await;
                    } else {
                        tracing::warn!(card = card.get(), reason = %e.parts().reason, "reconciler: could not look the card up in Click to Pay; due again later");
                        self.track_enrolled(card).await;
                    }
                }
            }
        }
        Ok(())
    }

    /// Forgets a card the lifecycle check found due at `due_before`, unless it was noted again
    /// since (a new enrollment of the card, due an interval later), best effort: without the
    /// card lock, the check's read of the record may be older than that note.
    async fn untrack_enrolled_due(&self, card: CardContractId, due_before: i64) {
        if let Err(e) = self.store.untrack_enrolled_due(card, due_before).await {
            tracing::debug!(error = %e, "reconciler: could not drop the card from the ENROLLED index");
        }
    }

    async fn reconcile_card(&self, card: CardContractId) -> Result<Outcome, AppError> {
        // A running attempt holds the card lock and finishes the enrollment itself. The lock is
        // taken before the record is read, also to prune: an attempt notes the card (keeping an
        // older note's time) under the lock before it writes IN_PROGRESS, so a note pruned
        // without it could be that attempt's, and the record it then writes would be in no
        // index if it crashed.
        let owner = format!("{}/reconciler", self.instance);
        match self
            .store
            .lock_card(card, &owner, self.settings.lease)
            .await
        {
            Ok(true) => {}
            Ok(false) => return Ok(Outcome::Busy),
            Err(e) => {
                self.give_back_lock(card, &owner).await;
                return Err(e.into());
            }
        }
        let result = async {
            match self.store.get(card).await? {
                Some(record) if record.state == EnrollmentState::InProgress => {
                    let deadline = tokio::time::Instant::now() + self.settings.lease / 2;
                    self.finish(card, record, deadline, &owner).await
                }
                Some(record)
                    if record.state == EnrollmentState::Enrolled
                        && self.opt_out_covering(&record).await?.is_some() =>
                {
                    // Finished ENROLLED while its cardholder had opted out, and not yet taken
                    // out again (that failed on the pass that finished it, or the call that
                    // enrolled it was not retried): taken out now.
                    self.take_out_held(card, record, &owner).await
                }
                other => {
                    // An ENROLLED card (or one REMOVED by its token, which that index keeps)
                    // may have lost its ENROLLED note with the attempt that wrote it (sent
                    // beside the record, it may not have landed): noted again before this note
                    // goes, so that it is never in neither index.
                    if other.is_some_and(|r| {
                        r.state == EnrollmentState::Enrolled || removed_by_token(&r)
                    }) {
                        self.track_enrolled(card).await;
                    }
                    if !self.untrack_held(card, &owner).await? {
                        return Ok(Outcome::Busy);
                    }
                    Ok(Outcome::Pruned)
                }
            }
        }
        .await;
        if let Err(e) = self.store.unlock_card(card, &owner).await {
            tracing::warn!(error = %e, "reconciler: could not release the card lock; it expires by itself");
        }
        result
    }

    /// Notes `card` in the ENROLLED index before its IN_PROGRESS note goes (never in neither),
    /// under `owner`'s lock: `false` when the lock was lost and the note stays.
    async fn move_to_enrolled_index(
        &self,
        card: CardContractId,
        owner: &str,
    ) -> Result<bool, AppError> {
        self.track_enrolled(card).await;
        Ok(self.untrack_held(card, owner).await?)
    }

    async fn finish(
        &self,
        card: CardContractId,
        record: crate::domain::EnrollmentRecord,
        deadline: tokio::time::Instant,
        owner: &str,
    ) -> Result<Outcome, AppError> {
        let (current, _) = match self.status_as(card, Some(deadline), Some(owner)).await {
            // The lock ran out during the token-list call and an attempt took the card, or the
            // record changed meanwhile (a notification): the next pass reads it again.
            Err(AppError::RequestInFlight { .. }) => return Ok(Outcome::Busy),
            answer => answer?,
        };
        if current.state == EnrollmentState::Enrolled {
            // Its cardholder may have opted out (through another card) since its POST /cards
            // went out: taken out again, as the enrollment itself would have
            // (`App::answer_enrolled`).
            if self.opt_out_covering(&current).await?.is_some() {
                return self.take_out_held(card, current, owner).await;
            }
            if !self.move_to_enrolled_index(card, owner).await? {
                return Ok(Outcome::Busy);
            }
            tracing::info!(
                card = card.get(),
                "reconciler: the card is tokenized; ENROLLED"
            );
            return Ok(Outcome::Enrolled);
        }
        if removed_by_token(&current) {
            // It went through and its token was deactivated since: REMOVED (written by the
            // look-up), and in the ENROLLED index, where news of its token can bring it back.
            if !self.move_to_enrolled_index(card, owner).await? {
                return Ok(Outcome::Busy);
            }
            tracing::info!(
                card = card.get(),
                "reconciler: the card was tokenized and its token deactivated since; REMOVED"
            );
            return Ok(Outcome::Removed);
        }
        let mut failed = record;
        failed.state = EnrollmentState::Failed;
        failed.failure = Some(Failure {
            reason: super::Reason::EnrollmentNotConfirmed.name().into(),
            message: "Mastercard's token list shows no Click to Pay token for this card; retry the enrollment with the same idempotency key".into(),
            retryable: true,
            metadata: std::collections::BTreeMap::from([(
                "cardContractId".to_owned(),
                card.get().to_string(),
            )]),
        });
        if self
            .store
            .put_enrollment_fenced(&failed, self.settings.enrollment_ttl, owner)
            .await?
            .is_none()
        {
            // The lock ran out during the token-list call and an attempt took the card.
            return Ok(Outcome::Busy);
        }
        if !self.untrack_held(card, owner).await? {
            return Ok(Outcome::Busy);
        }
        tracing::info!(
            card = card.get(),
            "reconciler: no Click to Pay token; FAILED (retryable)"
        );
        Ok(Outcome::Failed)
    }

    /// Takes an IN_PROGRESS-noted card found ENROLLED under an opt-out out of Click to Pay
    /// again, under the reconciler's lock (`owner`), with a deadline of its own. A failure for
    /// a time leaves the note (the next pass tries again); one Mastercard refuses (a record
    /// finished from the token list lacks the `srcConsumerId` a legacy-API program's deletion
    /// needs: `CLICK_TO_PAY_IDS_UNKNOWN`) drops it, logged: the card stays ENROLLED.
    async fn take_out_held(
        &self,
        card: CardContractId,
        record: crate::domain::EnrollmentRecord,
        owner: &str,
    ) -> Result<Outcome, AppError> {
        let deadline = tokio::time::Instant::now() + self.settings.lease / 2;
        match self.remove_for_opt_out(record, owner, Some(deadline)).await {
            Ok(_) => {}
            Err(AppError::RequestInFlight { .. }) => return Ok(Outcome::Busy),
            Err(e) if e.is_transient() => return Err(e),
            Err(e) => {
                tracing::error!(card = card.get(), reason = %e.parts().reason, "reconciler: the card is ENROLLED under its cardholder's opt-out and could not be taken out again");
                if !self.move_to_enrolled_index(card, owner).await? {
                    return Ok(Outcome::Busy);
                }
                return Ok(Outcome::Pruned);
            }
        }
        if !self.untrack_held(card, owner).await? {
            return Ok(Outcome::Busy);
        }
        tracing::info!(
            card = card.get(),
            "reconciler: the card is tokenized but its cardholder opted out; taken out again"
        );
        Ok(Outcome::OptedOut)
    }

    /// Runs [`App::reconcile_once`] every `interval` on whichever replica holds the lease,
    /// until `stop`.
    pub async fn reconcile_forever(
        self: std::sync::Arc<Self>,
        interval: Duration,
        older_than: Duration,
        stop: tokio_util::sync::CancellationToken,
    ) {
        // The first pass one interval after start: a starting replica has nothing to hurry.
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let owner = self.instance.clone();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            match self.store.lead("reconciler", &owner, interval * 3).await {
                Ok(true) => match self.reconcile_once(older_than, 100).await {
                    Ok(report) if report != ReconcileReport::default() => {
                        tracing::info!(?report, "reconciler pass");
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(reason = %e.parts().reason, "reconciler pass failed");
                    }
                },
                Ok(false) => {}
                Err(e) => tracing::debug!(error = %e, "reconciler: store unavailable"),
            }
            self.count_in_progress(older_than + interval * 2).await;
        }
    }

    /// Sets the gauges of the IN_PROGRESS index: every card in it, and those noted more than
    /// `overdue_after` ago. Every replica reads the same shared index (the gauges are equal on
    /// all of them), after the pass when it ran one. A card the reconciler could take is
    /// finished within `reconcile_after` plus one interval, so `reconcile_after` plus two
    /// intervals counts only cards it cannot finish (held by an attempt, more than a pass
    /// takes, or no reconciler running); a card whose pass failed is noted again at the back
    /// of the index and counted by `c2p_reconciled_total{result="error"}` instead.
    async fn count_in_progress(&self, overdue_after: Duration) {
        let after_ms = i64::try_from(overdue_after.as_millis()).unwrap_or(i64::MAX);
        match self
            .store
            .count_in_progress(now_ms().saturating_sub(after_ms))
            .await
        {
            Ok((total, overdue)) => crate::metrics::enrollments_in_progress(total, overdue),
            Err(e) => tracing::debug!(error = %e, "reconciler: cannot count IN_PROGRESS cards"),
        }
    }
}

enum Outcome {
    Enrolled,
    /// Found tokenized, its cardholder opted out meanwhile: taken out again (REMOVED).
    OptedOut,
    /// Found tokenized, its token deactivated since: REMOVED (`TOKEN_DEACTIVATED`).
    Removed,
    Failed,
    Busy,
    Pruned,
}
