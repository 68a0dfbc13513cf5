//! `OptOut` and `WithdrawOptOut`: a cardholder leaves Click to Pay (their profile deleted, the
//! opt-out remembered under the card and the consumer references, so that EnrollCard refuses
//! their cards), and comes back (the opt-out forgotten). Both are idempotent by nature.

use super::lifecycle::{CheckedProgram, lifecycle_error, subjects_of};
use super::ports::{ClickToPayKeys, Deleted, OptOutStamp};
use super::{App, AppError};
use crate::domain::{
    CardContractId, EnrollmentRecord, EnrollmentState, OptOut, RemovalReason, now_ms,
};
use std::collections::HashMap;
use tokio::time::Instant;
use uuid::Uuid;

/// What a `WithdrawOptOut` forgets ([`App::plan_withdrawal`]).
#[derive(Debug, Clone)]
pub struct Withdrawal {
    /// The subjects whose opt-outs it deletes, each with the opt-out read there: what was
    /// checked is what is forgotten (an opt-out kept there since stays).
    read: Vec<(String, OptOutStamp)>,
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
        checked: &CheckedProgram,
        deadline: Option<Instant>,
    ) -> Result<OptedOut, AppError> {
        let owner = self.hold_card(card).await?;
        let work = async {
            let record = self.known_record(card, true, checked).await?;
            self.opt_out_held(record, &owner, deadline).await
        };
        let result = self.under_lock(card, &owner, work).await;
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
        let since_ms = self.keep_opt_out(card, subjects, &record.program).await?;
        let record = self.remove_for_opt_out(record, owner, deadline).await?;
        Ok(OptedOut { record, since_ms })
    }

    /// Keeps the opt-out of `card` (of `program`) under each of `subjects`, merged with what each
    /// holds: this card's earlier opt-out (a retry: its first time is kept) and one given
    /// through another card of the profile (under the consumer's subject), which it replaces
    /// there and links. Each subject is written only if it still holds what was read; when an
    /// OptOut or WithdrawOptOut of another card of the cardholder changed one meanwhile, all is
    /// read and merged again. When the opt-out was first recorded, Unix ms.
    async fn keep_opt_out(
        &self,
        card: CardContractId,
        subjects: Vec<String>,
        program: &str,
    ) -> Result<i64, AppError> {
        // What each subject held before this call wrote there, and the ids of this call's
        // writes: a pass cut short leaves its writes under the subjects before, and the next
        // pass merges what they replaced, not them (they may carry what a withdrawal forgot).
        let mut before: HashMap<&str, Option<OptOut>> = HashMap::new();
        let mut ours: Vec<String> = Vec::new();
        'read: for _ in 0..OPT_OUT_ATTEMPTS {
            // Each subject on its own: this card's earlier opt-out and another card's may both
            // be there.
            let mut since_ms = None::<i64>;
            let mut linked: Vec<String> = Vec::new();
            let mut read = Vec::with_capacity(subjects.len());
            for subject in &subjects {
                let kept = self.store.read_opt_out(subject).await?;
                read.push(kept.as_ref().map(|(_, stamp)| stamp.clone()));
                let kept = kept.map(|(opt_out, _)| opt_out);
                let earlier = match kept {
                    Some(mine) if mine.rev.as_ref().is_some_and(|rev| ours.contains(rev)) => {
                        before.get(subject.as_str()).cloned().flatten()
                    }
                    other => {
                        before.insert(subject, other.clone());
                        other
                    }
                };
                if let Some(earlier) = earlier {
                    since_ms = Some(since_ms.map_or(earlier.since_ms, |s| s.min(earlier.since_ms)));
                    linked.extend(earlier.subjects.into_iter().chain(earlier.linked));
                }
            }
            let since_ms = since_ms.unwrap_or_else(now_ms);
            // Another card's opt-out is kept under its own card: linked, so that a withdrawal
            // through this card reaches it too.
            linked.retain(|s| !subjects.contains(s));
            linked.sort_unstable();
            linked.dedup();
            let rev = Uuid::new_v4().to_string();
            ours.push(rev.clone());
            let opt_out = OptOut {
                since_ms,
                subjects: subjects.clone(),
                program: Some(program.to_owned()),
                linked,
                rev: Some(rev),
            };
            for (subject, stamp) in subjects.iter().zip(&read) {
                if !self
                    .store
                    .swap_opt_out(subject, stamp.as_ref(), Some(&opt_out))
                    .await?
                {
                    continue 'read;
                }
            }
            return Ok(since_ms);
        }
        Err(contended(card))
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
        let (read, mut programs) = self.withdrawal(card, record.as_ref()).await?;
        if let Some(record) = record
            && !programs.contains(&record.program)
        {
            programs.insert(0, record.program);
        }
        Ok(Withdrawal { read, programs })
    }

    /// Runs `WithdrawOptOut` as planned: whether there was an opt-out to forget. Under each
    /// subject, only the opt-out read there is forgotten: one an OptOut kept there since was
    /// given after this withdrawal (and its program was not checked), and stays; the answer is
    /// still that there was one (the withdrawal came first). The card's own subjects go last: a
    /// withdrawal cut short is found again from them.
    pub async fn withdraw(&self, plan: Withdrawal) -> Result<bool, AppError> {
        for (subject, stamp) in plan.read.iter().rev() {
            self.store.swap_opt_out(subject, Some(stamp), None).await?;
        }
        Ok(!plan.read.is_empty())
    }

    /// Runs `WithdrawOptOut` without a program check: whether an opt-out was forgotten.
    pub async fn withdraw_opt_out(&self, card: CardContractId) -> Result<bool, AppError> {
        let plan = self.plan_withdrawal(card).await?;
        self.withdraw(plan).await
    }

    /// What a withdrawal of the card's opt-out forgets: every subject it reaches that holds an
    /// opt-out (the card's, its consumer references, and the subjects of each opt-out kept under
    /// them: one given through another card of the profile is kept under that card too), each
    /// with the opt-out read there, and the programs of the opt-outs found. Each subject is read
    /// on its own: two opt-outs of one profile (given through two cards) may be kept under its
    /// subjects.
    async fn withdrawal(
        &self,
        card: CardContractId,
        record: Option<&EnrollmentRecord>,
    ) -> Result<(Vec<(String, OptOutStamp)>, Vec<String>), AppError> {
        // A profile's opt-outs name a few subjects each; the cap only bounds a corrupt chain.
        const MOST_SUBJECTS: usize = 32;
        let mut subjects = subjects_of(card, record);
        let mut read = Vec::new();
        let mut programs = Vec::new();
        let mut next = 0;
        // Only what was read is forgotten: a subject past the cap is never checked.
        while next < subjects.len() && next < MOST_SUBJECTS {
            let subject = subjects[next].clone();
            next += 1;
            let Some((opt_out, stamp)) = self.store.read_opt_out(&subject).await? else {
                continue;
            };
            read.push((subject, stamp));
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
        Ok((read, programs))
    }
}

/// How many times an OptOut reads and writes its subjects again when another call for the same
/// cardholder changed one of them meanwhile: a pass is a few round trips, and a conflict needs
/// two calls for one profile at the same moment.
const OPT_OUT_ATTEMPTS: usize = 8;

/// ENROLLMENT_IN_PROGRESS for an OptOut whose every pass met another call's change: the same
/// request again finishes it.
fn contended(card: CardContractId) -> AppError {
    AppError::OptOutsContended {
        card,
        retry_after: std::time::Duration::from_secs(1),
    }
}
