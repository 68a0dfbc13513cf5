//! The adapters of the app's `EnrollmentStore` port (`app::ports`): Redis (standalone or
//! Cluster, shared by all replicas) and in-memory (the embedded default), with the same
//! semantics.

mod access;
mod bounded;
mod cache;
mod cluster_target;
mod feed;
mod keys;
mod memory;
mod merge_plan;
mod redis;
mod scripts;
mod settings;

pub use cache::RecordCacheSettings;
pub use keys::KeySpace;
pub use memory::{DEFAULT_MAX_ENTRIES as DEFAULT_MEMORY_MAX_ENTRIES, MemoryStore};
pub use redis::RedisStore;
pub use settings::RedisSettings;

pub use crate::app::ports::{
    ChangeStream, EnrollmentStore, LockedCard, NotificationEffect, NotificationResult, OptOutStamp,
    PutMode, StoreError,
};

use crate::domain::{EnrollmentRecord, TokenEvent};
use std::sync::Arc;
use std::time::Duration;

/// Refuses a notification whose event time the store could not keep exactly (every adapter
/// refuses the same ones).
fn check_event(event: &TokenEvent) -> Result<(), StoreError> {
    if crate::domain::is_storable_time(event.event_at_ms) {
        Ok(())
    } else {
        Err(StoreError::Refused(format!(
            "event time {} ms is outside 0 to {} ms (5138-11-16)",
            event.event_at_ms,
            crate::domain::STORE_INTEGER_LIMIT - 1
        )))
    }
}

/// Refuses a record holding a time the store could not keep exactly.
fn check_record(record: &EnrollmentRecord) -> Result<(), StoreError> {
    match record.unstorable_time() {
        None => Ok(()),
        Some(ms) => Err(StoreError::Refused(format!(
            "the record holds the time {ms} ms, outside 0 to {} ms (5138-11-16)",
            crate::domain::STORE_INTEGER_LIMIT - 1
        ))),
    }
}

/// Retention settings every adapter applies.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Enrollment records written by notifications (and the default of `put_enrollment`).
    pub enrollment: Duration,
    /// Notification dedup markers (at least 72 h: senders retry for days).
    pub notification_dedup: Duration,
    /// Idempotency records (at least 24 h).
    pub idempotency: Duration,
}

/// The store `redis` asks for: Redis when `redis.url` is set (with a record cache of status
/// reads sized by `cache`), otherwise in-memory.
///
/// The Redis connection is established lazily and re-established by itself, so the service
/// starts (NOT_SERVING) even while Redis is down.
pub fn open(
    redis: &RedisSettings,
    retention: Retention,
    cache: RecordCacheSettings,
    memory_max_entries: usize,
) -> Result<Arc<dyn EnrollmentStore>, StoreError> {
    let keys = KeySpace::new(&redis.key_prefix);
    match &redis.url {
        Some(url) => {
            crate::metrics::register_redis_errors();
            Ok(Arc::new(RedisStore::connect_lazy(
                secrecy::ExposeSecret::expose_secret(url),
                redis,
                keys,
                retention,
                cache,
            )?))
        }
        None => Ok(Arc::new(MemoryStore::with_capacity(
            retention,
            memory_max_entries,
        ))),
    }
}
