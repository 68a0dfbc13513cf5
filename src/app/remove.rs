//! `RemoveCard`: idempotent by key like EnrollCard (the same key replays, a crashed call
//! resumes), one change of the card at a time (its lock), then the card's delete in Click to
//! Pay (gone already counts as done) and the REMOVED record.

use super::enroll::{AbortOnDrop, Attempt, lease_ms};
use super::lifecycle::{CheckedProgram, lifecycle_error};
use super::ports::{ClickToPayKeys, Deleted, UpstreamFailure};
use super::{App, AppError};
use crate::domain::{
    Begin, CardContractId, EnrollmentRecord, EnrollmentState, IdempotencyRecord, Phase,
    RemovalReason, StoredOutcome, now_ms,
};
use serde::Serialize;
use std::time::Duration;
use tokio::time::Instant;

/// A validated `RemoveCard` request.
#[derive(Debug, Clone)]
pub struct RemoveCommand {
    /// Who calls (idempotency keys are scoped per caller).
    pub caller: String,
    /// The key.
    pub idempotency_key: String,
    /// The card.
    pub card_contract_id: CardContractId,
    /// Why (one of the reasons a caller gives).
    pub reason: RemovalReason,
    /// The program the caller was checked against (not part of the request's fingerprint).
    pub checked: CheckedProgram,
}

/// The canonical form of a RemoveCard request, version 1: what its fingerprint is computed
/// from. The RPC's name is part of it, so that a key used for an EnrollCard is
/// `IDEMPOTENCY_KEY_REUSED` here (one key space per caller).
#[derive(Serialize)]
struct CanonicalV1 {
    version: u32,
    rpc: &'static str,
    card_contract_id: i64,
    reason: RemovalReason,
}

impl RemoveCommand {
    fn scope(&self) -> String {
        format!("{}\u{0}{}", self.caller, self.idempotency_key)
    }

    fn fingerprint(&self, key: &super::FingerprintKey) -> Result<String, String> {
        let form = CanonicalV1 {
            version: 1,
            rpc: "RemoveCard",
            card_contract_id: self.card_contract_id.get(),
            reason: self.reason,
        };
        let bytes = serde_json::to_vec(&form).map_err(|e| format!("request fingerprint: {e}"))?;
        Ok(key.fingerprint(&bytes))
    }
}

/// The answer of `RemoveCard`.
#[derive(Debug, Clone)]
pub struct CardRemoved {
    /// The enrollment, REMOVED.
    pub record: EnrollmentRecord,
    /// Whether it is the stored answer of an earlier call with the key (nothing was done now).
    pub replayed: bool,
}

impl App {
    /// Runs `RemoveCard`.
    pub async fn remove_card(
        &self,
        cmd: RemoveCommand,
        deadline: Option<Instant>,
    ) -> Result<CardRemoved, AppError> {
        let now = now_ms();
        let card = cmd.card_contract_id;
        let proposal = IdempotencyRecord {
            fingerprint: cmd
                .fingerprint(&self.settings.fingerprint_key)
                .map_err(AppError::Internal)?,
            phase: Phase::Started,
            // Unused by a removal.
            src_correlation_id: String::new(),
            adopted: false,
            owner: format!("{}/{}", self.instance, uuid::Uuid::new_v4()),
            lease_until_ms: now + lease_ms(self),
            outcome: None,
        };
        let scope = cmd.scope();
        let record = match self.store.idempotency_begin(&scope, &proposal, now).await? {
            Begin::Reused => {
                return Err(AppError::IdempotencyKeyReused {
                    card,
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
                    Some(StoredOutcome::Success { enrollment }) => Ok(CardRemoved {
                        record: enrollment,
                        replayed: true,
                    }),
                    Some(failure) => Err(AppError::Replayed(failure)),
                    None => Err(AppError::Internal("replayed record without outcome".into())),
                };
            }
            Begin::New(r) | Begin::Resume(r) => r,
        };
        let owner = record.owner.clone();
        let attempt = Attempt {
            app: self,
            scope,
            record: std::sync::Arc::new(tokio::sync::Mutex::new(record)),
        };
        // Busy, or the lock's answer lost (its lock given back): the key is given back too.
        if let Err(e) = self.hold_card_as(card, &owner).await {
            attempt.release().await;
            return Err(e);
        }
        let lost = tokio_util::sync::CancellationToken::new();
        let heartbeat = AbortOnDrop(self.heartbeat(
            attempt.scope.clone(),
            attempt.record.clone(),
            card,
            lost.clone(),
        ));
        let result = tokio::select! {
            result = self.run_remove(&cmd, &owner, deadline) => result,
            _ = lost.cancelled() => {
                tracing::warn!("the lease or the card lock was lost: this removal stops");
                Err(AppError::RequestInFlight { retry_after: Duration::from_secs(1) })
            }
        };
        drop(heartbeat);
        self.release_card(card, &owner).await;
        let record = attempt.settle(result).await?;
        Ok(CardRemoved {
            record,
            replayed: false,
        })
    }

    async fn run_remove(
        &self,
        cmd: &RemoveCommand,
        owner: &str,
        deadline: Option<Instant>,
    ) -> Result<EnrollmentRecord, AppError> {
        let card = cmd.card_contract_id;
        let record = self.known_record(card, true, &cmd.checked).await?;
        let removed_before = record.state == EnrollmentState::Removed;
        if removed_before
            && record
                .removal
                .as_ref()
                .is_some_and(|r| r.reason.is_requested())
        {
            // An earlier RemoveCard (under another key) removed it: nothing left to do.
            return Ok(record);
        }
        match self
            .upstream
            .remove_card(&ClickToPayKeys::of(&record), deadline)
            .await
        {
            Ok(Deleted::Deleted) => tracing::info!("Click to Pay deleted the card"),
            Ok(Deleted::AlreadyGone) => tracing::info!("Click to Pay no longer held the card"),
            // Gone already (its token deactivated) and nothing on record to address it by:
            // there is nothing Click to Pay could be asked to delete.
            Err(UpstreamFailure::IdsUnknown { .. }) if removed_before => {}
            Err(e) => return Err(lifecycle_error(card, e, deadline)),
        }
        self.write_removed(record, cmd.reason, owner).await
    }
}
