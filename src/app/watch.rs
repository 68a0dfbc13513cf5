//! `WatchEnrollment`: the current record, then every change, wherever it was written.

use super::{App, AppError};
use crate::domain::{CardContractId, EnrollmentRecord, EnrollmentState, now_ms};
use crate::store::ChangeStream;

impl App {
    /// Subscribes first, then reads the current record, so that no change in between is lost.
    pub async fn watch(
        &self,
        card: CardContractId,
    ) -> Result<(EnrollmentRecord, ChangeStream), AppError> {
        let changes = self.store.watch(card).await?;
        let current = self.store.get(card).await?.unwrap_or_else(|| {
            EnrollmentRecord::new(card, String::new(), EnrollmentState::NotEnrolled, now_ms())
        });
        Ok((current, changes))
    }
}
