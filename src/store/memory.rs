//! The in-memory store: the embedded default. Same semantics as Redis, TTL included; state is lost
//! when the process exits and is not shared between replicas.

use super::{EnrollmentStore, StoreError};
use crate::domain::{CardContractId, EnrollmentRecord};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Records in a map, each with its expiry instant.
#[derive(Debug)]
pub struct MemoryStore {
    ttl: Duration,
    records: Mutex<HashMap<CardContractId, (EnrollmentRecord, Instant)>>,
}

impl MemoryStore {
    /// An empty store whose records expire `ttl` after their last write.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            records: Mutex::new(HashMap::new()),
        }
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<CardContractId, (EnrollmentRecord, Instant)>> {
        // A panic while holding the lock cannot leave a half-written entry (inserts are single
        // calls), so a poisoned map is still consistent.
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait::async_trait]
impl EnrollmentStore for MemoryStore {
    async fn get(&self, card: CardContractId) -> Result<Option<EnrollmentRecord>, StoreError> {
        let mut records = self.lock();
        match records.get(&card) {
            Some((record, expires)) if *expires > Instant::now() => Ok(Some(record.clone())),
            Some(_) => {
                records.remove(&card);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    async fn put(&self, record: &EnrollmentRecord) -> Result<(), StoreError> {
        let expires = Instant::now() + self.ttl;
        self.lock()
            .insert(record.card_contract_id, (record.clone(), expires));
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}
