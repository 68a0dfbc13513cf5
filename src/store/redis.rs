//! The Redis store, through a `ConnectionManager` that reconnects by itself.

use super::{EnrollmentStore, KeySpace, StoreError};
use crate::config::RedisSettings;
use crate::domain::{CardContractId, EnrollmentRecord};
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::time::Duration;

/// Enrollment records as JSON strings under [`KeySpace::enrollment`], with a TTL.
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    keys: KeySpace,
    ttl: Duration,
}

impl std::fmt::Debug for RedisStore {
    // The connection info may hold a password; show only the key layout.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("keys", &self.keys)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: redis::RedisError) -> StoreError {
    // RedisError's text names the failure kind and server message, not the URL or the values.
    StoreError::Unavailable(e.to_string())
}

impl RedisStore {
    /// A store whose first connection is made on first use, and remade after every loss.
    pub fn connect_lazy(
        url: &str,
        settings: &RedisSettings,
        keys: KeySpace,
        ttl: Duration,
    ) -> Result<Self, StoreError> {
        let client = redis::Client::open(url)
            .map_err(|e| StoreError::Unavailable(format!("bad redis.url ({:?})", e.kind())))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.connect_timeout))
            .set_response_timeout(Some(settings.response_timeout))
            // Fail fast and let the next command reconnect: callers have deadlines and the
            // health probe runs every second.
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, config).map_err(unavailable)?;
        Ok(Self { conn, keys, ttl })
    }
}

#[async_trait::async_trait]
impl EnrollmentStore for RedisStore {
    async fn get(&self, card: CardContractId) -> Result<Option<EnrollmentRecord>, StoreError> {
        let mut conn = self.conn.clone();
        let raw: Option<String> = conn
            .get(self.keys.enrollment(card))
            .await
            .map_err(unavailable)?;
        raw.map(|json| {
            serde_json::from_str(&json).map_err(|e| StoreError::Corrupt {
                card,
                // serde_json's message gives line/column and the kind, not the value.
                reason: format!("{:?} error at column {}", e.classify(), e.column()),
            })
        })
        .transpose()
    }

    async fn put(&self, record: &EnrollmentRecord) -> Result<(), StoreError> {
        let json = serde_json::to_string(record).map_err(|e| StoreError::Corrupt {
            card: record.card_contract_id,
            reason: format!("{:?}", e.classify()),
        })?;
        let ttl_ms = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        let mut conn = self.conn.clone();
        let () = conn
            .pset_ex(self.keys.enrollment(record.card_contract_id), json, ttl_ms)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}
