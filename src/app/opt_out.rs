//! `OptOut` and `WithdrawOptOut`: a cardholder leaves Click to Pay (their profile deleted, the
//! opt-out remembered under the card and the consumer references, so that EnrollCard refuses
//! their cards), and comes back (the opt-out forgotten). Both are idempotent by nature.

use super::lifecycle::{lifecycle_error, subjects_of};
use super::ports::{ClickToPayKeys, Deleted};
use super::{App, AppError};
use crate::domain::{
    CardContractId, EnrollmentRecord, EnrollmentState, OptOut, Removal, RemovalReason, now_ms,
};
use tokio::time::Instant;

/// The answer of `OptOut`.
#[derive(Debug, Clone)]
pub struct OptedOut {
    /// The card's enrollment after the call (REMOVED).
    pub record: EnrollmentRecord,
    /// When the opt-out was first recorded, Unix ms.
    pub since_ms: i64,
}

impl App {
    /// Runs `OptOut`. The opt-out is stored before the profile is deleted: the cardholder's
    /// wish holds even when the deletion fails (the error says so; a retry finishes it).
    pub async fn opt_out(
        &self,
        card: CardContractId,
        deadline: Option<Instant>,
    ) -> Result<OptedOut, AppError> {
        let owner = self.hold_card(card).await?;
        let result = async {
            let record = self.known_record(card, true).await?;
            let subjects = subjects_of(card, Some(&record));
            let since_ms = match self.store.get_opt_out(&subjects).await? {
                Some(earlier) => earlier.since_ms,
                None => now_ms(),
            };
            self.store
                .put_opt_out(&OptOut {
                    since_ms,
                    subjects,
                    program: Some(record.program.clone()),
                })
                .await?;
            match self
                .upstream
                .delete_profile(&ClickToPayKeys::of(&record), deadline)
                .await
            {
                Ok(Deleted::Deleted) => tracing::info!("Click to Pay deleted the profile"),
                Ok(Deleted::AlreadyGone) => {
                    tracing::info!("Click to Pay no longer held the profile")
                }
                Err(e) => return Err(lifecycle_error(card, e, deadline)),
            }
            let record = if record.state == EnrollmentState::Enrolled {
                let mut removed = record;
                removed.state = EnrollmentState::Removed;
                removed.removal = Some(Removal {
                    reason: RemovalReason::ConsumerOptedOut,
                    time_ms: now_ms(),
                });
                let stored = self.write_held(&removed, &owner).await?;
                self.untrack_enrolled(card).await;
                stored
            } else {
                record
            };
            Ok(OptedOut { record, since_ms })
        }
        .await;
        self.release_card(card, &owner).await;
        result
    }

    /// The programs a caller must be granted to withdraw the card's opt-out: the card's
    /// record's, and the program of the card the opt-out was given through (it outlives that
    /// card's record, and it may have been given through another card of the profile, of
    /// another program, which the withdrawal lifts too). Empty: neither is known (no record, and
    /// no opt-out or one written before opt-outs kept their program).
    pub async fn withdrawal_programs(&self, card: CardContractId) -> Result<Vec<String>, AppError> {
        let record = self.store.get(card).await?;
        let subjects = subjects_of(card, record.as_ref());
        let opt_out = self.store.get_opt_out(&subjects).await?;
        let mut programs: Vec<String> = record.map(|r| r.program).into_iter().collect();
        if let Some(program) = opt_out.and_then(|o| o.program)
            && !programs.contains(&program)
        {
            programs.push(program);
        }
        Ok(programs)
    }

    /// Runs `WithdrawOptOut`: whether an opt-out was forgotten.
    pub async fn withdraw_opt_out(&self, card: CardContractId) -> Result<bool, AppError> {
        let record = self.store.get(card).await?;
        let mut subjects = subjects_of(card, record.as_ref());
        // The opt-out may have been given through another card of the profile: forget it under
        // every subject it was kept under.
        if let Some(opt_out) = self.store.get_opt_out(&subjects).await? {
            for subject in opt_out.subjects {
                if !subjects.contains(&subject) {
                    subjects.push(subject);
                }
            }
        }
        Ok(self.store.delete_opt_out(&subjects).await?)
    }
}
