//! Noticing cards that Click to Pay no longer holds: `GetEnrollmentStatus(refresh)` and the
//! reconciler ask Click to Pay about an ENROLLED card (the lifecycle port's `holds_card`), and a
//! card it does not hold is REMOVED (`NOT_IN_CLICK_TO_PAY`). A deactivated token is noticed by
//! the token list and the notifications already (the merge's `follow_token`); this catches a
//! card deleted in Click to Pay whose token news never came.

use super::lifecycle::lifecycle_error;
use super::lock_guard::UnlockOnDrop;
use super::ports::ClickToPayKeys;
use super::{App, AppError};
use crate::domain::{EnrollmentRecord, EnrollmentState};
use tokio::time::Instant;

/// What a check found.
// Short-lived return value, one per check.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Checked {
    /// Click to Pay holds the card (or the record is not ENROLLED: nothing to check).
    Held,
    /// Click to Pay does not hold it: the record is REMOVED now.
    Removed(EnrollmentRecord),
    /// The record changed meanwhile (another enrollment, a removal): left as it is.
    Changed,
}

impl App {
    /// Asks Click to Pay whether it still holds the card of an ENROLLED `record`; when it does
    /// not, and the record is still that enrollment, writes it REMOVED under the card lock.
    pub(super) async fn check_held(
        &self,
        record: &EnrollmentRecord,
        deadline: Option<Instant>,
    ) -> Result<Checked, AppError> {
        if record.state != EnrollmentState::Enrolled {
            return Ok(Checked::Held);
        }
        let card = record.card_contract_id;
        let held = self
            .upstream
            .holds_card(&ClickToPayKeys::of(record), deadline)
            .await
            .map_err(|e| lifecycle_error(card, e, deadline))?;
        if held {
            return Ok(Checked::Held);
        }
        // A refresh runs on its caller's future: a caller gone while it takes or holds the lock
        // gives it back (armed first; owner-checked, so harmless when not taken).
        let owner = self.lock_owner();
        let unlock_guard = UnlockOnDrop::new(&self.store, card, &owner);
        if let Err(e) = self.hold_card_as(card, &owner).await {
            unlock_guard.disarm();
            return Err(e);
        }
        let result = async {
            match self.store.get(card).await? {
                Some(current)
                    if current.state == EnrollmentState::Enrolled
                        && current.src_correlation_id == record.src_correlation_id =>
                {
                    Ok(Checked::Removed(
                        self.removed_upstream(current, &owner).await?,
                    ))
                }
                _ => Ok(Checked::Changed),
            }
        }
        .await;
        self.release_card(card, &owner).await;
        unlock_guard.disarm();
        result
    }
}
