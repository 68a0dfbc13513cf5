//! `NotificationIngest`: one notification applied atomically (dedup, merge by event time, write,
//! publish), then its outcome.

use super::App;
use super::ports::{NotificationResult, StoreError};
use crate::domain::TokenEvent;

/// What was done with a notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IngestOutcome {
    /// Durably merged.
    Applied,
    /// Seen before.
    Duplicate,
    /// Older than what is stored.
    Stale,
    /// Not a Click to Pay token.
    Ignored,
    /// The id was seen before with other content: not applied.
    IdReused,
    /// Not applied, and a resend would not help (the stored record was unreadable and was set
    /// aside: the card is rebuilt from Mastercard's token list on its next read).
    RecordUnreadable(String),
    /// Not applied: the store failed; the gateway should resend.
    Failed(String),
}

impl App {
    /// Applies one validated notification; the outcome is only returned after the write.
    pub async fn ingest(&self, event: &TokenEvent) -> IngestOutcome {
        if !event.is_click_to_pay() {
            return IngestOutcome::Ignored;
        }
        match self.store.apply_notification(event).await {
            Ok(NotificationResult::Applied(_)) => IngestOutcome::Applied,
            Ok(NotificationResult::Duplicate) => IngestOutcome::Duplicate,
            Ok(NotificationResult::Stale) => IngestOutcome::Stale,
            Ok(NotificationResult::Conflict) => IngestOutcome::IdReused,
            Err(StoreError::Corrupt(why)) => {
                tracing::error!(error = %why, card = event.card_contract_id.get(), "notification not applied: the stored record was unreadable");
                IngestOutcome::RecordUnreadable(format!(
                    "not applied: the stored record was unreadable and was set aside ({why})"
                ))
            }
            Err(e) => {
                tracing::warn!(error = %e, "notification not applied");
                IngestOutcome::Failed(format!("not applied, resend: {e}"))
            }
        }
    }
}
