//! `OptOut` and `WithdrawOptOut`: a cardholder leaves Click to Pay (their profile deleted, the
//! opt-out remembered under the card and the consumer references, so that EnrollCard refuses
//! their cards), and comes back (the opt-out forgotten). Both are idempotent by nature.

use super::lifecycle::{lifecycle_error, subjects_of};
use super::ports::{ClickToPayKeys, Deleted};
use super::{App, AppError};
use crate::domain::{
    CardContractId, EnrollmentRecord, EnrollmentState, OptOut, RemovalReason, now_ms,
};
use tokio::time::Instant;

/// What a `WithdrawOptOut` forgets ([`App::plan_withdrawal`]).
#[derive(Debug, Clone)]
pub struct Withdrawal {
    /// The subjects whose opt-outs it deletes.
    subjects: Vec<String>,
    /// The programs a caller must be granted for it (the card's first, when it has a record).
    pub programs: Vec<String>,
}

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
            self.opt_out_held(record, &owner, deadline).await
        }
        .await;
        self.release_card(card, &owner).await;
        result
    }

    /// [`App::opt_out`] of the card of `record` (read under its lock), whose lock `owner`
    /// holds: the opt-out stored under the card and its consumer references, then the card
    /// taken out of Click to Pay ([`App::remove_for_opt_out`]).
    async fn opt_out_held(
        &self,
        record: EnrollmentRecord,
        owner: &str,
        deadline: Option<Instant>,
    ) -> Result<OptedOut, AppError> {
        let card = record.card_contract_id;
        let subjects = subjects_of(card, Some(&record));
        // Each subject on its own: this card's earlier opt-out (a retry) and one given through
        // another card of the profile (under the consumer's subject) may both be there.
        let mut since_ms = None::<i64>;
        let mut linked: Vec<String> = Vec::new();
        for subject in &subjects {
            if let Some(earlier) = self
                .store
                .get_opt_out(std::slice::from_ref(subject))
                .await?
            {
                since_ms = Some(since_ms.map_or(earlier.since_ms, |s| s.min(earlier.since_ms)));
                linked.extend(earlier.subjects.into_iter().chain(earlier.linked));
            }
        }
        let since_ms = since_ms.unwrap_or_else(now_ms);
        // An earlier opt-out given through another card of the profile is replaced under the
        // subject they share (the consumer's) and kept under its own card: linked, so that a
        // withdrawal through this card reaches it too.
        linked.retain(|s| !subjects.contains(s));
        linked.sort_unstable();
        linked.dedup();
        self.store
            .put_opt_out(&OptOut {
                since_ms,
                subjects,
                program: Some(record.program.clone()),
                linked,
            })
            .await?;
        let record = self.remove_for_opt_out(record, owner, deadline).await?;
        Ok(OptedOut { record, since_ms })
    }

    /// Takes the card of `record` (read under its lock, which `owner` holds) out of Click to
    /// Pay because its cardholder opted out: the profile deleted (one already gone counts),
    /// then an ENROLLED record REMOVED (`CONSUMER_OPTED_OUT`) and out of the ENROLLED index.
    /// Stores no opt-out: the caller found or stored it.
    pub(super) async fn remove_for_opt_out(
        &self,
        record: EnrollmentRecord,
        owner: &str,
        deadline: Option<Instant>,
    ) -> Result<EnrollmentRecord, AppError> {
        let card = record.card_contract_id;
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
        if record.state != EnrollmentState::Enrolled {
            return Ok(record);
        }
        self.write_removed(record, RemovalReason::ConsumerOptedOut, owner)
            .await
    }

    /// The opt-out covering the card of `record` or a consumer reference it holds, if any:
    /// what an enrollment found ENROLLED is checked against before it is answered.
    pub(super) async fn opt_out_covering(
        &self,
        record: &EnrollmentRecord,
    ) -> Result<Option<OptOut>, AppError> {
        let subjects = subjects_of(record.card_contract_id, Some(record));
        Ok(self.store.get_opt_out(&subjects).await?)
    }

    /// What `WithdrawOptOut` of the card would forget, and the programs a caller must be
    /// granted for it: the card's record's, and the program of every opt-out it forgets (an
    /// opt-out outlives the card's record, and one given through another card of the profile,
    /// of another program, is lifted too). No programs: none is known (no record, and no
    /// opt-out or only ones written before opt-outs kept their program). The caller checks the
    /// programs, then hands the plan to [`App::withdraw`]: what is forgotten is what was
    /// checked, read once.
    pub async fn plan_withdrawal(&self, card: CardContractId) -> Result<Withdrawal, AppError> {
        let record = self.store.get(card).await?;
        let (subjects, mut programs) = self.withdrawal(card, record.as_ref()).await?;
        if let Some(record) = record
            && !programs.contains(&record.program)
        {
            programs.insert(0, record.program);
        }
        Ok(Withdrawal { subjects, programs })
    }

    /// Runs `WithdrawOptOut` as planned: whether an opt-out was forgotten.
    pub async fn withdraw(&self, plan: Withdrawal) -> Result<bool, AppError> {
        Ok(self.store.delete_opt_out(&plan.subjects).await?)
    }

    /// Runs `WithdrawOptOut` without a program check: whether an opt-out was forgotten.
    pub async fn withdraw_opt_out(&self, card: CardContractId) -> Result<bool, AppError> {
        let plan = self.plan_withdrawal(card).await?;
        self.withdraw(plan).await
    }

    /// What a withdrawal of the card's opt-out forgets: every subject it reaches (the card's,
    /// its consumer references, and the subjects of each opt-out kept under them: one given
    /// through another card of the profile is kept under that card too), and the programs of
    /// the opt-outs found. Each subject is read on its own: two opt-outs of one profile (given
    /// through two cards) may be kept under its subjects.
    async fn withdrawal(
        &self,
        card: CardContractId,
        record: Option<&EnrollmentRecord>,
    ) -> Result<(Vec<String>, Vec<String>), AppError> {
        // A profile's opt-outs name a few subjects each; the cap only bounds a corrupt chain.
        const MOST_SUBJECTS: usize = 32;
        let mut subjects = subjects_of(card, record);
        let mut programs = Vec::new();
        let mut next = 0;
        while next < subjects.len() && next < MOST_SUBJECTS {
            let subject = subjects[next].clone();
            next += 1;
            let Some(opt_out) = self.store.get_opt_out(&[subject]).await? else {
                continue;
            };
            if let Some(program) = opt_out.program
                && !programs.contains(&program)
            {
                programs.push(program);
            }
            for subject in opt_out.subjects.into_iter().chain(opt_out.linked) {
                if !subjects.contains(&subject) {
                    subjects.push(subject);
                }
            }
        }
        // Only what was read is forgotten: a subject past the cap was never checked.
        subjects.truncate(next);
        Ok((subjects, programs))
    }
}
