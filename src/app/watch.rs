//! `WatchEnrollment`: the current record, then every change, wherever it was written.

use super::ports::ChangeStream;
use super::{App, AppError, Source};
use crate::domain::{CardContractId, EnrollmentRecord};
use tokio::time::Instant;

impl App {
    /// Subscribes first, then reads the current record, so that no change in between is lost. A
    /// card without a record is looked up as `GetEnrollmentStatus` does (Mastercard's token
    /// list; NOT_FOUND for a card Processing does not know), so that both RPCs agree and the
    /// first message is a stored record with its real times and revision; the source says
    /// which (the store's record, or one built from the token list on this call).
    pub async fn watch(
        &self,
        card: CardContractId,
        deadline: Option<Instant>,
    ) -> Result<(EnrollmentRecord, Source, ChangeStream), AppError> {
        let changes = self.store.watch(card).await?;
        {
            // A burst of watches (a replica's clients all coming back) reads its records a few
            // at a time instead of holding a store read each in flight at once.
            let _turn = self
                .watch_reads
                .acquire()
                .await
                .map_err(|_| AppError::Internal("the gate of watch reads is closed".into()))?;
            if let Some(current) = self.store.get(card).await? {
                return Ok((current, Source::Store, changes));
            }
        }
        // Boxed, and after the read's record has gone out of scope: otherwise the upstream
        // lookup's state (kilobytes), or room for a record, would be part of every watch's
        // opening, though a card without a record is the exception. The token list, not the
        // status read's cache: the store just had no record (one it set aside as unreadable
        // may still be cached in its readable form of before).
        let (current, source) = Box::pin(self.observe(card, None, deadline, None)).await?;
        Ok((current, source, changes))
    }
}
