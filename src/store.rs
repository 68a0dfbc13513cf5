//! The `EnrollmentStore` port and its adapters: Redis (shared by all replicas) and in-memory (the
//! embedded default for `cargo run` and unit tests), with the same semantics.

mod keys;
mod memory;
mod redis;

pub use keys::KeySpace;
pub use memory::MemoryStore;
pub use redis::RedisStore;

use crate::config::Settings;
use crate::domain::{CardContractId, EnrollmentRecord};
use std::sync::Arc;

/// Why a store operation failed. Messages never carry record contents.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or did not answer in time; a retry may succeed.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A stored value could not be decoded.
    #[error("stored record for card {card} is unreadable: {reason}")]
    Corrupt {
        /// The card whose record is unreadable.
        card: CardContractId,
        /// The decoder's complaint (no record contents).
        reason: String,
    },
}

/// Where enrollment records live.
#[async_trait::async_trait]
pub trait EnrollmentStore: Send + Sync + 'static {
    /// The record of `card`, if one is stored and not expired.
    async fn get(&self, card: CardContractId) -> Result<Option<EnrollmentRecord>, StoreError>;

    /// Stores `record` (replacing any previous one) for the configured enrollment TTL.
    async fn put(&self, record: &EnrollmentRecord) -> Result<(), StoreError>;

    /// Succeeds when the store is reachable; drives the gRPC health status.
    async fn ping(&self) -> Result<(), StoreError>;

    /// A short name for logs: `memory` or `redis`.
    fn kind(&self) -> &'static str;
}

/// The store the settings ask for: Redis when `redis.url` is set, otherwise in-memory.
///
/// The Redis connection is established lazily and re-established by itself, so the service
/// starts (NOT_SERVING) even while Redis is down.
pub fn from_settings(settings: &Settings) -> Result<Arc<dyn EnrollmentStore>, StoreError> {
    let ttl = settings.store.enrollment_ttl;
    let keys = KeySpace::new(&settings.redis.key_prefix);
    match &settings.redis.url {
        Some(url) => Ok(Arc::new(RedisStore::connect_lazy(
            url,
            &settings.redis,
            keys,
            ttl,
        )?)),
        None => Ok(Arc::new(MemoryStore::new(ttl))),
    }
}
