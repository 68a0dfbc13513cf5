//! `GetEnrollmentStatus`: the store first; on a miss (or `refresh`), Processing Digital's token
//! list for the card, the Click to Pay token picked out, the record rebuilt and cached.

use super::enroll::map_upstream;
use super::lock_guard::UnlockOnDrop;
use super::ports::{NotificationResult, PutMode};
use super::{App, AppError, Step};
use crate::domain::{
    CardContractId, EnrollmentRecord, EnrollmentState, SharedRecord, Token, TokenEvent,
    TokenEventKind, TokenStatus, Version, follow_token, latest_status, merge_tokens, now_ms,
    removed_by_token,
};
use std::sync::Arc;
use tokio::time::Instant;

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The stored record as it is (Mastercard, when asked, had nothing to change).
    Store,
    /// Built or corrected on this call from Mastercard's token list.
    Upstream,
}

impl App {
    /// Runs `GetEnrollmentStatus`. With `refresh`, an ENROLLED card is also looked up in Click
    /// to Pay, and one it no longer holds is REMOVED; that look-up is an extra: when it cannot be
    /// made (Click to Pay unavailable, the card busy), the token list's answer stands. It is
    /// made only for a card whose program `may_use` allows (the caller's; the gRPC layer then
    /// refuses a card of another program): a caller asks Click to Pay about no other program's
    /// card, nor removes one.
    pub async fn status(
        &self,
        card: CardContractId,
        refresh: bool,
        may_use: &(dyn Fn(&str) -> bool + Sync),
        deadline: Option<Instant>,
    ) -> Result<(Arc<SharedRecord>, Source), AppError> {
        if !refresh {
            // A plain read may come from the store's cache: the hit is the store's own version,
            // shared as it is (no copy).
            if let Some(hit) = self.store.get_cached(card).await? {
                return Ok((hit, Source::Store));
            }
            // Nothing cached is ever absent: this read went to the store. The paths that go
            // to Mastercard are boxed: inline, their state (~7 KB) made every hit's future that
            // large, allocated and copied per call.
            let (record, source) = Box::pin(self.observe(card, None, deadline, None)).await?;
            return Ok((SharedRecord::new(record), source));
        }
        Box::pin(self.refreshed(card, may_use, deadline)).await
    }

    /// [`App::status`] with `refresh`.
    async fn refreshed(
        &self,
        card: CardContractId,
        may_use: &(dyn Fn(&str) -> bool + Sync),
        deadline: Option<Instant>,
    ) -> Result<(Arc<SharedRecord>, Source), AppError> {
        let (record, source) = self.status_as(card, deadline, None).await?;
        if record.state != EnrollmentState::Enrolled || !may_use(&record.program) {
            return Ok((SharedRecord::new(record), source));
        }
        let (record, source) = match self.check_held(&record, deadline).await {
            Ok(super::lifecycle_check::Checked::Removed(removed)) => (removed, Source::Upstream),
            Ok(_) => (record, source),
            Err(e) => {
                tracing::warn!(reason = %e.parts().reason, "refresh: could not ask Click to Pay whether it holds the card; the token list's answer stands");
                (record, source)
            }
        };
        Ok((SharedRecord::new(record), source))
    }

    /// A refreshed status ([`App::status`] with `refresh`, less the Click to Pay look-up) for a
    /// caller that may already hold the card lock as `lock_owner` (a resuming attempt, the
    /// reconciler): its write is fenced by that lock.
    pub(super) async fn status_as(
        &self,
        card: CardContractId,
        deadline: Option<Instant>,
        lock_owner: Option<&str>,
    ) -> Result<(EnrollmentRecord, Source), AppError> {
        // The store itself, not its cache: what it reads decides a write.
        let stored = self.store.get(card).await?;
        self.observe(card, stored, deadline, lock_owner).await
    }

    /// The card's record as Mastercard's token list shows it, built on `cached` (the stored
    /// record, `None` when there is none) and written when it changed.
    pub(super) async fn observe(
        &self,
        card: CardContractId,
        cached: Option<EnrollmentRecord>,
        deadline: Option<Instant>,
        lock_owner: Option<&str>,
    ) -> Result<(EnrollmentRecord, Source), AppError> {
        let observation = self
            .upstream
            .tokens(card, deadline)
            .await
            .map_err(|e| map_upstream(Step::Tokens, card, e, deadline))?;
        let observed_at = observation.observed_at_ms;
        // The newest Click to Pay token, if the card has any.
        let token = observation
            .tokens
            .iter()
            .filter(|t| t.is_click_to_pay())
            // A token of an earlier enrollment of the card is not this record's: a removed
            // card's old token stays in the list (deactivated, or not yet), and would pass a new
            // enrollment whose POST /cards failed for ENROLLED, never sent again.
            .filter(|t| {
                cached
                    .as_ref()
                    .is_none_or(|r| !r.retired(&t.token_unique_reference))
            })
            // Nor, for an enrollment not finished, a deactivated token it has never heard of (by
            // its notifications): one of an enrollment whose record expired, not proof that this
            // one went through and left; without it the key re-sends its srcCorrelationId.
            .filter(|t| {
                t.status != Some(TokenStatus::Deactivated)
                    || cached.as_ref().is_none_or(|r| {
                        !matches!(
                            r.state,
                            EnrollmentState::InProgress | EnrollmentState::Failed
                        ) || r.token.as_ref().is_some_and(|known| {
                            known.token_unique_reference == t.token_unique_reference
                        })
                    })
            })
            .max_by(|a, b| a.created.cmp(&b.created));
        let now = now_ms();
        // The observation is ordered by Mastercard's clock (its Date header, whole seconds,
        // so a notification of the same second wins), like the notifications it competes with;
        // the replica's clock only when Mastercard sent no date.
        // A date far from ours (a proxy rewriting it, a clock gone wrong) would win or lose
        // every merge for the record's lifetime: ours then.
        let observed_at = observed_at
            .filter(|at| (at - now).abs() <= DATE_SKEW_LIMIT_MS)
            .unwrap_or(now);
        let Some(token) = token else {
            // No token to add: the stored record (whatever it says) is the answer.
            if let Some(record) = cached {
                return Ok((record, Source::Store));
            }
            let record =
                EnrollmentRecord::new(card, String::new(), EnrollmentState::NotEnrolled, now);
            let stored = self
                .store
                .put_enrollment(&record, PutMode::IfAbsent, self.settings.not_enrolled_ttl)
                .await?;
            // Another writer may have been first: then its record is the answer.
            let source = if stored.same_content(&record) {
                Source::Upstream
            } else {
                Source::Store
            };
            return Ok((stored, source));
        };
        // An enrolled card's record is only corrected in its token, by the same atomic merge
        // as a notification: a full rewrite could undo a concurrent write of the enrollment.
        // A REMOVED record too: its token's news may bring it back (a removal that followed the
        // token) or only update the token (a removal someone asked for).
        if let (Some(record), Some(status)) = (
            cached.as_ref().filter(|r| {
                matches!(
                    r.state,
                    EnrollmentState::Enrolled | EnrollmentState::Removed
                )
            }),
            token.status,
        ) {
            let tur = token.token_unique_reference.clone();
            // The stored token's latest status write (it may be kept aside, behind a later
            // decision about another token), which the observation is compared with.
            let stored = record.token.as_ref().and_then(latest_status);
            // Nothing to correct: no write, and no dedup marker per call.
            if stored.is_some_and(|t| t.token_unique_reference == tur && t.status == Some(status)) {
                return Ok((record.clone(), Source::Store));
            }
            // One marker per observed transition (from the stored status version), not per
            // refresh: callers cannot grow the store by refreshing.
            let since = stored
                .and_then(|t| t.status_version.as_ref())
                .map_or(0, |v| v.at_ms);
            let event = TokenEvent {
                notification_id: format!("upstream:token-list:{tur}:{status:?}:{since}"),
                event_at_ms: observed_at,
                card_contract_id: card,
                token_unique_reference: token.token_unique_reference.clone(),
                token_requestor_id: token.token_requestor_id.clone(),
                wallet_name: token.wallet_name.clone(),
                kind: TokenEventKind::StatusChanged(status),
            };
            return Ok(match self.store.apply_notification(&event).await? {
                NotificationResult::Applied(r) => (r, Source::Upstream),
                NotificationResult::Duplicate
                | NotificationResult::Conflict
                | NotificationResult::Stale => (record.clone(), Source::Store),
            });
        }
        let observed = Token {
            token_unique_reference: token.token_unique_reference.clone(),
            token_requestor_id: token.token_requestor_id.clone(),
            status: token.status,
            status_version: token.status.map(|_| Version {
                at_ms: observed_at,
                by: "upstream:token-list".into(),
            }),
            decision: None,
            decision_version: None,
            superseded: None,
        };
        let snapshot = cached.clone();
        let mut record = cached.unwrap_or_else(|| {
            EnrollmentRecord::new(card, String::new(), EnrollmentState::NotEnrolled, now)
        });
        // A Click to Pay token exists: an enrollment this service started went through; a card
        // it never enrolled was tokenized elsewhere.
        record.state = match record.state {
            EnrollmentState::InProgress | EnrollmentState::Failed | EnrollmentState::Enrolled => {
                EnrollmentState::Enrolled
            }
            EnrollmentState::NotEnrolled | EnrollmentState::TokenizedElsewhere => {
                EnrollmentState::TokenizedElsewhere
            }
            // Not reached (a REMOVED record with a token status takes the merge above); a token
            // without a status does not bring a removed card back.
            EnrollmentState::Removed => EnrollmentState::Removed,
        };
        if record.state == EnrollmentState::Enrolled {
            record.failure = None;
        }
        record.token = Some(match record.token.take() {
            Some(known) => merge_tokens(known, &observed),
            None => observed,
        });
        // This enrollment's token, deactivated since: it went through and the card left Click
        // to Pay (REMOVED, as a notification of the deactivation makes an ENROLLED record).
        follow_token(&mut record);
        self.write_observed(&record, snapshot, lock_owner).await
    }

    /// Writes a record rebuilt from the token list over `snapshot` (what it was built from),
    /// under the card lock, so that it never overwrites what a running enrollment wrote: with
    /// the lock held by someone else, or the record changed since `snapshot`, nothing is written
    /// and the changed record (or, with the lock held elsewhere, the rebuilt one, unstored) is
    /// answered. A caller that holds the lock itself (`lock_owner`) is never answered with an
    /// unstored record nor one it did not read: it gets `RequestInFlight` when its lock was lost
    /// or the record changed or vanished meanwhile.
    /// A record that became ENROLLED (or REMOVED by its token: [`removed_by_token`]) joins the
    /// ENROLLED index.
    async fn write_observed(
        &self,
        record: &EnrollmentRecord,
        snapshot: Option<EnrollmentRecord>,
        lock_owner: Option<&str>,
    ) -> Result<(EnrollmentRecord, Source), AppError> {
        let card = record.card_contract_id;
        let ttl = self.settings.enrollment_ttl;
        let temporary = format!("{}/status/{}", self.instance, uuid::Uuid::new_v4());
        // The caller may go away while this takes or holds the lock, or the lock's answer may
        // be lost: the lock is given back then too (owner-checked, so harmless if not taken).
        let mut unlock_guard = lock_owner
            .is_none()
            .then(|| UnlockOnDrop::new(&self.store, card, &temporary));
        let owner = match lock_owner {
            Some(owner) => owner,
            None => {
                if !self
                    .store
                    .lock_card(card, &temporary, self.settings.lease)
                    .await?
                {
                    // Another's lock: nothing to give back.
                    if let Some(unlock_guard) = unlock_guard.take() {
                        unlock_guard.disarm();
                    }
                    return Ok((record.clone(), Source::Upstream));
                }
                &temporary
            }
        };
        let result = async {
            let fresh = self.store.get(card).await?;
            if fresh != snapshot {
                return match fresh {
                    // A caller that holds the lock decides from what the token list showed over
                    // what it had read (the reconciler writes FAILED when no token is found):
                    // a record changed meanwhile (a notification) or gone is read again on its
                    // next try rather than answered as if the token list had shown it.
                    _ if lock_owner.is_some() => Err(AppError::RequestInFlight {
                        retry_after: std::time::Duration::from_secs(1),
                    }),
                    Some(fresh) => Ok((fresh, Source::Store)),
                    None => Ok((record.clone(), Source::Upstream)),
                };
            }
            let before = snapshot.as_ref().map_or(0, |s| s.revision);
            Ok(
                match self.store.put_enrollment_fenced(record, ttl, owner).await? {
                    // Written, or nothing to change (the revision tells).
                    Some(stored) if stored.revision != before => {
                        let indexed = |r: &EnrollmentRecord| {
                            r.state == EnrollmentState::Enrolled || removed_by_token(r)
                        };
                        if indexed(&stored) && !snapshot.as_ref().is_some_and(indexed) {
                            self.track_enrolled(card).await;
                        }
                        (stored, Source::Upstream)
                    }
                    Some(stored) => (stored, Source::Store),
                    // A caller that held the lock lost it (the reconciler, an enrollment's
                    // recover step): the record it would go on from was not stored, so it must
                    // stop as on any lost lock rather than take it as the card's state.
                    None if lock_owner.is_some() => {
                        return Err(AppError::RequestInFlight {
                            retry_after: std::time::Duration::from_secs(1),
                        });
                    }
                    None => (record.clone(), Source::Upstream),
                },
            )
        }
        .await;
        if let Some(unlock_guard) = unlock_guard {
            // Disarmed once released (an unlock of a lock no longer ours changes nothing).
            let _ = self.store.unlock_card(card, &temporary).await;
            unlock_guard.disarm();
        }
        result
    }
}

/// How far the token list's `Date` may be from this replica's clock before it is not trusted.
const DATE_SKEW_LIMIT_MS: i64 = 5 * 60 * 1000;
