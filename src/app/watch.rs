//! `WatchEnrollment`: the current record, then every change, wherever it was written.

use super::ports::ChangeStream;
use super::{App, AppError};
use crate::domain::{CardContractId, EnrollmentRecord};
use tokio::time::Instant;

impl App {
    /// Subscribes first, then reads the current record, so that no change in between is lost. A
    /// card without a record is looked up as `GetEnrollmentStatus` does (Mastercard's token
    /// list; NOT_FOUND for a card Processing does not know), so that both RPCs agree and the
    /// first message is a stored record with its real times and revision.
    pub async fn watch(
        &self,
        card: CardContractId,
        deadline: Option<Instant>,
    ) -> Result<(EnrollmentRecord, ChangeStream), AppError> {
        let changes = self.store.watch(card).await?;
        let current = match self.store.get(card).await? {
            Some(record) => record,
            // Boxed: inline, the upstream lookup's state (kilobytes) would be part of every
            // watch's opening, though a card without a record is the exception.
            None => Box::pin(self.status(card, false, deadline)).await?.0,
        };
        Ok((current, changes))
    }
}
