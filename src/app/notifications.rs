//! `NotificationIngest`: notifications applied atomically each (dedup, merge by event time,
//! write, publish), then their outcomes. A batch goes to the store in one call.

use super::App;
use super::ports::{NotificationEffect, StoreError};
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
        let result = self.store.apply_notification(event).await;
        outcome(event, result.map(|r| r.effect()))
    }

    /// Applies validated notifications together, in one store call (those of one card in the
    /// order given); their outcomes, in the order of `events`, once their writes returned.
    pub async fn ingest_all(&self, events: Vec<TokenEvent>) -> Vec<IngestOutcome> {
        let mut outcomes = Vec::with_capacity(events.len());
        let mut apply = Vec::with_capacity(events.len());
        for event in events {
            if event.is_click_to_pay() {
                outcomes.push(None);
                apply.push(event);
            } else {
                outcomes.push(Some(IngestOutcome::Ignored));
            }
        }
        let results = if apply.is_empty() {
            Vec::new()
        } else {
            self.store.apply_notifications(&apply).await
        };
        let mut applied = apply.iter().zip(results).map(|(e, r)| outcome(e, r));
        outcomes
            .into_iter()
            .map(|o| {
                o.or_else(|| applied.next()).unwrap_or_else(|| {
                    IngestOutcome::Failed("not applied, resend: the store gave no outcome".into())
                })
            })
            .collect()
    }
}

/// The outcome of one notification's store result; failures are logged with the card and the
/// notification id (the caller's: bounded and escaped).
fn outcome(event: &TokenEvent, result: Result<NotificationEffect, StoreError>) -> IngestOutcome {
    let id = || crate::text::bounded(&event.notification_id, 255);
    match result {
        Ok(NotificationEffect::Applied) => IngestOutcome::Applied,
        Ok(NotificationEffect::Duplicate) => IngestOutcome::Duplicate,
        Ok(NotificationEffect::Stale) => IngestOutcome::Stale,
        Ok(NotificationEffect::Conflict) => IngestOutcome::IdReused,
        Err(StoreError::Corrupt(why)) => {
            tracing::error!(error = %why, card = event.card_contract_id.get(), notification.id = %id(), "notification not applied: the stored record was unreadable");
            IngestOutcome::RecordUnreadable(format!(
                "not applied: the stored record was unreadable and was set aside ({why})"
            ))
        }
        Err(e) => {
            tracing::warn!(error = %e, card = event.card_contract_id.get(), notification.id = %id(), "notification not applied");
            IngestOutcome::Failed(format!("not applied, resend: {e}"))
        }
    }
}
