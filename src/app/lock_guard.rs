//! A card lock given back when the future holding it is dropped before its release.

use super::ports::EnrollmentStore;
use crate::domain::CardContractId;
use std::sync::Arc;

/// Gives the card lock back (on a task of its own) when dropped armed: a status read runs on
/// its caller's future, and a caller that goes away (or a deadline) while it takes or holds
/// the lock, or a lock whose answer was lost, would leave the card busy for a whole lease. The
/// calls that change a card run detached and always reach their release.
pub(super) struct UnlockOnDrop {
    store: Option<Arc<dyn EnrollmentStore>>,
    card: CardContractId,
    owner: String,
}

impl UnlockOnDrop {
    pub(super) fn new(store: &Arc<dyn EnrollmentStore>, card: CardContractId, owner: &str) -> Self {
        Self {
            store: Some(store.clone()),
            card,
            owner: owner.to_owned(),
        }
    }

    /// The holder releases the lock itself.
    pub(super) fn disarm(mut self) {
        self.store = None;
    }
}

impl Drop for UnlockOnDrop {
    fn drop(&mut self) {
        let Some(store) = self.store.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (card, owner) = (self.card, std::mem::take(&mut self.owner));
        runtime.spawn(async move {
            // Best effort: the lock expires by itself otherwise.
            let _ = store.unlock_card(card, &owner).await;
        });
    }
}
