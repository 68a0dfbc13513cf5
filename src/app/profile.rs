//! The cardholder's Click to Pay profile after an enrollment: read it, replace its consumer
//! details, replace a card's billing address. Updates are idempotent by nature (they replace),
//! take the card's lock, and note on the record when they were done, so that watchers see them.

use super::lifecycle::{CheckedProgram, lifecycle_error};
use super::ports::{Address, ClickToPayKeys, ClickToPayProfile, Found, Updated};
use super::{App, AppError, ConsumerInput};
use crate::domain::{CardContractId, EnrollmentRecord, EnrollmentState, RemovalReason, now_ms};
use tokio::time::Instant;

impl App {
    /// Runs `GetClickToPayProfile`.
    pub async fn click_to_pay_profile(
        &self,
        card: CardContractId,
        checked: &CheckedProgram,
        deadline: Option<Instant>,
    ) -> Result<ClickToPayProfile, AppError> {
        let record = self.known_record(card, true, checked).await?;
        match self
            .upstream
            .profile(&ClickToPayKeys::of(&record), deadline)
            .await
        {
            Ok(Found::Found(mut profile)) => {
                // The requested card is known by its ids whatever the family.
                for c in &mut profile.cards {
                    let same_digital_card = c.src_digital_card_id.is_some()
                        && c.src_digital_card_id == record.src_digital_card_id;
                    let same_credential = c.external_credential_id.is_some()
                        && c.external_credential_id == record.external_credential_id;
                    if same_digital_card || same_credential {
                        c.card = Some(card);
                    }
                }
                Ok(profile)
            }
            Ok(Found::NotFound(upstream)) => Err(AppError::NotInClickToPay { card, upstream }),
            Err(e) => Err(lifecycle_error(card, e, deadline)),
        }
    }

    /// Runs `UpdateConsumer`.
    pub async fn update_consumer(
        &self,
        card: CardContractId,
        consumer: ConsumerInput,
        checked: &CheckedProgram,
        deadline: Option<Instant>,
    ) -> Result<EnrollmentRecord, AppError> {
        let consumer_ref =
            super::fingerprint::consumer_ref(&self.settings.fingerprint_key, &consumer)
                .map_err(AppError::Internal)?;
        let owner = self.hold_card(card).await?;
        let work = async {
            let record = self.known_record(card, true, checked).await?;
            match self
                .upstream
                .update_consumer(&ClickToPayKeys::of(&record), &consumer, deadline)
                .await
            {
                Ok(Updated::Updated) => {}
                Ok(Updated::NotFound(upstream)) => {
                    return Err(AppError::NotInClickToPay { card, upstream });
                }
                Err(e) => return Err(lifecycle_error(card, e, deadline)),
            }
            let mut updated = record;
            updated.consumer_ref = Some(consumer_ref);
            updated.consumer_update_time_ms = Some(now_ms());
            self.write_held(&updated, &owner).await
        };
        let result = self.under_lock(card, &owner, work).await;
        self.release_card(card, &owner).await;
        result
    }

    /// Runs `UpdateBillingAddress`. A card Click to Pay no longer holds is REMOVED
    /// (`NOT_IN_CLICK_TO_PAY`) and the call answers so.
    pub async fn update_billing_address(
        &self,
        card: CardContractId,
        address: Address,
        checked: &CheckedProgram,
        deadline: Option<Instant>,
    ) -> Result<EnrollmentRecord, AppError> {
        let owner = self.hold_card(card).await?;
        let work = async {
            let record = self.known_record(card, false, checked).await?;
            match self
                .upstream
                .update_billing_address(&ClickToPayKeys::of(&record), &address, deadline)
                .await
            {
                Ok(Updated::Updated) => {
                    let mut updated = record;
                    updated.billing_address_update_time_ms = Some(now_ms());
                    self.write_held(&updated, &owner).await
                }
                Ok(Updated::NotFound(upstream)) => {
                    self.removed_upstream(record, &owner).await?;
                    Err(AppError::NotInClickToPay { card, upstream })
                }
                Err(e) => Err(lifecycle_error(card, e, deadline)),
            }
        };
        let result = self.under_lock(card, &owner, work).await;
        self.release_card(card, &owner).await;
        result
    }

    /// Records that Click to Pay no longer holds an ENROLLED card (REMOVED,
    /// `NOT_IN_CLICK_TO_PAY`), under the lock `owner` holds.
    pub(super) async fn removed_upstream(
        &self,
        record: EnrollmentRecord,
        owner: &str,
    ) -> Result<EnrollmentRecord, AppError> {
        if record.state != EnrollmentState::Enrolled {
            return Ok(record);
        }
        let card = record.card_contract_id;
        let stored = self
            .write_removed(record, RemovalReason::NotInClickToPay, owner)
            .await?;
        tracing::info!(
            card = card.get(),
            "Click to Pay no longer holds the card: REMOVED"
        );
        Ok(stored)
    }
}
