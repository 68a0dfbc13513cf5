//! The Redis store, standalone (a `ConnectionManager` that reconnects by itself) or Cluster
//! (`redis.cluster`), every update one atomic script on one card's slot. Status reads may be
//! answered from the process's record cache (`cache.rs`), kept coherent by the change feed.

use super::RedisSettings;
use super::access::{Access, bad_url};
use super::cache::{ForgetOnDrop, Lookup, RecordCache, RecordCacheSettings};
use super::cluster_target::{ClusterHandle, ClusterTarget};
use super::feed::{Feed, Nodes};
use super::merge_plan;
use super::scripts;
use super::{
    ChangeStream, EnrollmentStore, KeySpace, LockedCard, NotificationEffect, NotificationResult,
    OptOutStamp, PutMode, Retention, StoreError,
};
use crate::domain::{
    Begin, CardContractId, EnrollmentRecord, IdempotencyRecord, OptOut, SharedRecord, TokenEvent,
};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_routing::Slot;
use redis::{AsyncCommands, Cmd, Pipeline, RedisFuture, Script, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A connection to a standalone server or to a cluster.
#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterHandle),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(c) => c.req_packed_commands(cmd, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

// One per store, built once.
#[allow(clippy::large_enum_variant)]
enum Target {
    Single(ConnectionManager),
    // The cluster connection is made on first use (the cluster may be down at startup), and
    // again after a timeout (`cluster_target.rs`).
    Cluster(ClusterTarget),
}

/// Records as JSON strings, scripts for every update, pub/sub for changes.
pub struct RedisStore {
    target: std::sync::Arc<Target>,
    keys: KeySpace,
    retention: Retention,
    feed: Feed,
    cache: Option<Arc<RecordCache>>,
    apply_notification: Script,
    write_merged: Script,
    /// Notifications planned in the service but applied by `apply_notification` (see
    /// [`RedisStore::merge_retries`]).
    merge_retries: AtomicU64,
    put_enrollment: Script,
    idempotency_begin: Script,
    idempotency_update: Script,
    lock_card: Script,
    lock_and_read: Script,
    renew_card: Script,
    unlock_card: Script,
    untrack_due: Script,
    quarantine: Script,
    swap_opt_out: Script,
}

impl std::fmt::Debug for RedisStore {
    // The connection info may hold a password; show only the key layout.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

pub(super) fn unavailable(e: redis::RedisError) -> StoreError {
    if e.code() == Some("C2P_REFUSED") {
        // A script's number guard (`scripts::ENCODE`): nothing was written.
        return StoreError::Refused(e.detail().unwrap_or("a number cjson would round").into());
    }
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_io_error() || e.is_connection_dropped() {
        "connection"
    } else {
        "command"
    };
    crate::metrics::redis_error(kind);
    // RedisError's text names the failure kind and server message, not the URL or the values.
    StoreError::Unavailable(e.to_string())
}

/// A read's error: a key that holds another Redis type (WRONGTYPE) is unreadable, not a store
/// that a retry may find back.
fn wrong_type_is_corrupt(e: redis::RedisError) -> StoreError {
    if e.code() == Some("WRONGTYPE") {
        return StoreError::Corrupt("the key holds a value of another Redis type".into());
    }
    unavailable(e)
}

fn corrupt(e: serde_json::Error) -> StoreError {
    // serde_json's message gives the category and position, never the value.
    StoreError::Corrupt(format!("{:?} error at column {}", e.classify(), e.column()))
}

/// One value [`scripts::lock_and_read`] read (`what` it is): the string, or none; an error when
/// the key held another Redis type (the script's 0).
fn read_value<'a>(value: &'a Value, what: &str) -> Result<Option<&'a [u8]>, StoreError> {
    match value {
        Value::Nil => Ok(None),
        Value::BulkString(bytes) => Ok(Some(bytes)),
        _ => Err(StoreError::Corrupt(format!(
            "the {what} key holds a value of another Redis type"
        ))),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The most notifications in one call of the apply script. A call holds Redis for its whole
/// run (some 10 µs per notification), so a longer batch is cut into calls of this many, sent
/// in one pipeline.
const SCRIPT_BATCH: usize = 64;

/// One notification's part of an apply script call.
struct Prepared {
    /// Its card's record, its dedup marker.
    keys: [String; 2],
    /// The token JSON, card id, change channel, content hash.
    args: [String; 4],
}

/// What the apply script answered for one notification.
enum ScriptReply {
    /// Its effect, with the record's JSON when asked for and applied.
    Done(NotificationEffect, Option<String>),
    /// Not applied, nothing of it written: the script's message.
    Failed(String),
}

/// A notification script's reply this code does not understand: FAILED (the gateway resends),
/// not RECORD_UNREADABLE, which tells it the notification is done with (nothing was set aside).
fn unexpected_reply() -> StoreError {
    StoreError::Unavailable("unexpected script reply".into())
}

fn script_reply(reply: Vec<String>) -> Result<ScriptReply, StoreError> {
    let mut parts = reply.into_iter();
    let (kind, detail) = (parts.next(), parts.next());
    Ok(match kind.as_deref() {
        Some("applied") => ScriptReply::Done(NotificationEffect::Applied, detail),
        Some("duplicate") => ScriptReply::Done(NotificationEffect::Duplicate, None),
        Some("stale") => ScriptReply::Done(NotificationEffect::Stale, None),
        Some("conflict") => ScriptReply::Done(NotificationEffect::Conflict, None),
        Some("error") => ScriptReply::Failed(detail.unwrap_or_default()),
        _ => return Err(unexpected_reply()),
    })
}

/// The error of a notification the script could not apply: a number cjson would round is
/// `Refused` (as [`unavailable`] maps `C2P_REFUSED`), anything else a failed command.
fn script_failure(message: &str) -> StoreError {
    if let Some(detail) = message.strip_prefix("C2P_REFUSED") {
        return StoreError::Refused(detail.trim().into());
    }
    crate::metrics::redis_error("command");
    StoreError::Unavailable(format!("the notification script failed: {message}"))
}

/// Runs `pipe`, a pipeline of `EVALSHA` calls of `script`: when the server does not have the
/// script yet (a new or restarted server), loads it and runs the pipeline again.
async fn run_script_calls<T: redis::FromRedisValue>(
    script: &Script,
    pipe: &Pipeline,
    conn: &mut Connection,
) -> Result<T, StoreError> {
    match pipe.query_async(conn).await {
        Ok(replies) => Ok(replies),
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            script.load_async(conn).await.map_err(unavailable)?;
            pipe.query_async(conn).await.map_err(unavailable)
        }
        Err(e) => Err(unavailable(e)),
    }
}

impl RedisStore {
    /// A store whose first connection is made on first use, and remade after every loss.
    /// With `settings.cluster`, `url` is a comma-separated list of seed nodes. Every client
    /// (the store's and the change feed's) logs in as `redis.username` with the password of
    /// `redis.password_file`, and checks a `rediss://` server against `redis.ca_file`.
    /// `cache` sizes the record cache of status reads (size 0: none).
    pub fn connect_lazy(
        url: &str,
        settings: &RedisSettings,
        keys: KeySpace,
        retention: Retention,
        cache: RecordCacheSettings,
    ) -> Result<Self, StoreError> {
        let cache = RecordCache::new(cache).map(Arc::new);
        // One set of credentials and trust for every client: the store's and the feed's.
        let access = Access::from_settings(settings)?;
        let nodes: Vec<&str> = url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        let first = nodes.first().copied().unwrap_or(url);
        let target = if settings.cluster {
            let client = access
                .cluster(&nodes)?
                .connection_timeout(settings.connect_timeout)
                .response_timeout(settings.response_timeout)
                .retries(1)
                .build()
                .map_err(bad_url)?;
            // An attempt connects to the seeds, reads the slot map (a node that hangs costs a
            // response timeout), then connects to the nodes it names.
            let attempt_limit = 2 * (settings.connect_timeout + settings.response_timeout);
            Target::Cluster(ClusterTarget::new(client, attempt_limit))
        } else {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(settings.connect_timeout))
                .set_response_timeout(Some(settings.response_timeout))
                // Fail fast and let the next command reconnect: callers have deadlines and the
                // health probe runs every second.
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(500));
            Target::Single(
                ConnectionManager::new_lazy_with_config(access.client(first)?, config)
                    .map_err(unavailable)?,
            )
        };
        // Classic PUBLISH reaches subscribers on every node of a cluster, so any live node
        // serves the feed: the seeds in turn, then the nodes they know.
        let feed = if settings.cluster {
            let seeds = nodes
                .iter()
                .map(|node| access.client(node))
                .collect::<Result<Vec<_>, _>>()?;
            let scheme = if first.trim_start().starts_with("rediss:") {
                "rediss"
            } else {
                "redis"
            };
            let access = std::sync::Arc::new(access);
            Feed::start(
                Nodes::cluster(
                    seeds,
                    move |at| access.client(&format!("{scheme}://{at}/")).ok(),
                    settings.connect_timeout,
                ),
                cache.clone(),
            )
        } else {
            Feed::start(
                Nodes::single(access.client(first)?, settings.connect_timeout),
                cache.clone(),
            )
        };
        Ok(Self {
            target: std::sync::Arc::new(target),
            keys,
            retention,
            feed,
            cache,
            apply_notification: Script::new(&scripts::apply_notification()),
            write_merged: Script::new(scripts::WRITE_MERGED),
            merge_retries: AtomicU64::new(0),
            put_enrollment: Script::new(&scripts::put_enrollment()),
            idempotency_begin: Script::new(&scripts::idempotency_begin()),
            idempotency_update: Script::new(&scripts::idempotency_update()),
            lock_card: Script::new(&scripts::lock_card()),
            lock_and_read: Script::new(&scripts::lock_and_read()),
            renew_card: Script::new(scripts::RENEW_CARD),
            unlock_card: Script::new(scripts::UNLOCK_CARD),
            untrack_due: Script::new(scripts::UNTRACK_DUE),
            quarantine: Script::new(scripts::QUARANTINE),
            swap_opt_out: Script::new(scripts::SWAP_OPT_OUT),
        })
    }

    /// Up to `limit` cards of the sorted-set index `key` scored before `before_ms`, the lowest
    /// score first (the IN_PROGRESS and ENROLLED indexes).
    async fn index_before(
        &self,
        key: String,
        before_ms: i64,
        limit: usize,
    ) -> Result<Vec<CardContractId>, StoreError> {
        let mut conn = self.connection().await?;
        let ids: Vec<i64> = redis::cmd("ZRANGE")
            .arg(key)
            .arg("-inf")
            .arg(format!("({before_ms}"))
            .arg("BYSCORE")
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(ids.into_iter().filter_map(CardContractId::new).collect())
    }

    /// Takes `card` out of the sorted-set index `key`.
    /// `ZADD key [condition] score card` on a sorted-set index (`NX`: keep a note that is there;
    /// `XX`: only move one that is there; none: add or move).
    async fn index_add(
        &self,
        key: String,
        condition: Option<&str>,
        score: i64,
        card: CardContractId,
    ) -> Result<(), StoreError> {
        let mut conn = self.connection().await?;
        let mut zadd = redis::cmd("ZADD");
        zadd.arg(key);
        if let Some(condition) = condition {
            zadd.arg(condition);
        }
        let _: i64 = zadd
            .arg(score)
            .arg(card.get())
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn index_remove(&self, key: String, card: CardContractId) -> Result<(), StoreError> {
        let mut conn = self.connection().await?;
        let _: i64 = redis::cmd("ZREM")
            .arg(key)
            .arg(card.get())
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn connection(&self) -> Result<Connection, StoreError> {
        connect(&self.target).await
    }

    /// Forgets `card`'s cached record once the write this guard is held across returns.
    fn forget_on_return(&self, card: CardContractId) -> ForgetOnDrop<'_> {
        ForgetOnDrop::new(self.cache.as_deref(), card)
    }

    /// The card's record and its key's TTL, read to fill the cache; `None` when the key holds
    /// nothing readable (absent, or unreadable: [`get`](EnrollmentStore::get) then decides).
    async fn read_with_ttl(
        &self,
        card: CardContractId,
    ) -> Result<Option<(EnrollmentRecord, Option<Duration>)>, StoreError> {
        let key = self.keys.enrollment(card);
        let mut conn = self.connection().await?;
        let read: Result<(Option<String>, i64), _> = redis::pipe()
            .get(&key)
            .pttl(&key)
            .query_async(&mut conn)
            .await;
        match read {
            Ok((Some(json), ttl_ms)) => Ok(serde_json::from_str(&json).ok().map(|record| {
                let ttl = u64::try_from(ttl_ms).ok().map(Duration::from_millis);
                (record, ttl)
            })),
            Ok((None, _)) => Ok(None),
            Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => {
                Err(unavailable(e))
            }
            // Not a string (WRONGTYPE): the plain read sets it aside.
            Err(_) => Ok(None),
        }
    }

    /// Takes (or renews) the lock or lease `key` for `owner` for `ttl`; `false` while another
    /// owner holds it.
    async fn take(&self, key: String, owner: &str, ttl: Duration) -> Result<bool, StoreError> {
        let mut conn = self.connection().await?;
        let held: i64 = self
            .lock_card
            .key(key)
            .arg(owner)
            .arg(millis(ttl))
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(held == 1)
    }

    /// The put script; `fence` empty = no fence; `keep_token`: merge the stored token (else
    /// replace it). `None` when fenced out.
    async fn put(
        &self,
        record: &EnrollmentRecord,
        mode: PutMode,
        ttl: Duration,
        fence: &str,
        keep_token: bool,
    ) -> Result<Option<EnrollmentRecord>, StoreError> {
        super::check_record(record)?;
        let json = serde_json::to_string(record).map_err(corrupt)?;
        let card = record.card_contract_id;
        let _forget = self.forget_on_return(card);
        let mut conn = self.connection().await?;
        let stored: Option<String> = self
            .put_enrollment
            .key(self.keys.enrollment(card))
            .key(self.keys.lock(card))
            .arg(json)
            .arg(millis(ttl))
            .arg(self.keys.changes(card))
            .arg(match mode {
                PutMode::Merge => "merge",
                PutMode::IfAbsent => "if_absent",
            })
            .arg(fence)
            .arg(if keep_token { "keep_token" } else { "fresh" })
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        stored
            .map(|json| serde_json::from_str(&json).map_err(corrupt))
            .transpose()
    }

    /// One notification's keys and arguments for the apply script; the token's JSON only
    /// `for_script` (the service's merge does not need it).
    fn prepare(&self, event: &TokenEvent, for_script: bool) -> Result<Prepared, StoreError> {
        super::check_event(event)?;
        let token = if for_script {
            serde_json::to_string(&event.as_token()).map_err(corrupt)?
        } else {
            String::new()
        };
        let card = event.card_contract_id;
        Ok(Prepared {
            keys: [
                self.keys.enrollment(card),
                self.keys.notification(card, &event.notification_id),
            ],
            args: [
                token,
                card.get().to_string(),
                self.keys.changes(card),
                event.content_hash(),
            ],
        })
    }

    /// Runs the apply script over `notes` (on one slot, on a Cluster): [`SCRIPT_BATCH`] per
    /// call, the calls in one pipeline (one round trip); a reply per notification, in order.
    async fn run_apply(
        &self,
        conn: &mut Connection,
        notes: &[&Prepared],
        with_record: bool,
    ) -> Result<Vec<ScriptReply>, StoreError> {
        let mut pipe = redis::pipe();
        for chunk in notes.chunks(SCRIPT_BATCH) {
            // Sized up front: a call of 64 carries some 30 KB of arguments.
            let bytes: usize = chunk
                .iter()
                .flat_map(|note| note.keys.iter().chain(&note.args))
                .map(String::len)
                .sum();
            let mut cmd = Cmd::with_capacity(6 + chunk.len() * 6, bytes + 128);
            cmd.arg("EVALSHA")
                .arg(self.apply_notification.get_hash())
                .arg(chunk.len() * 2);
            for note in chunk {
                cmd.arg(&note.keys[..]);
            }
            cmd.arg(millis(self.retention.enrollment))
                .arg(millis(self.retention.notification_dedup))
                .arg(if with_record { "record" } else { "outcome" });
            for note in chunk {
                cmd.arg(&note.args[..]);
            }
            pipe.add_command(cmd);
        }
        let replies: Vec<Vec<Vec<String>>> =
            run_script_calls(&self.apply_notification, &pipe, conn).await?;
        let replies = replies
            .into_iter()
            .flatten()
            .map(script_reply)
            .collect::<Result<Vec<_>, _>>()?;
        if replies.len() != notes.len() {
            return Err(unexpected_reply());
        }
        Ok(replies)
    }

    /// Applies `batch` (on one slot, on a Cluster) merged in the service: one round trip reads
    /// the records and Redis' clock, [`merge_plan::plan`] merges, one round trip writes each
    /// merged record if its card's record is still the one read ([`scripts::WRITE_MERGED`]).
    /// What could not be planned, or was not written because the record changed meanwhile, is
    /// then applied by the Lua merge ([`Self::run_apply`]), in the batch's order. A reply per
    /// notification, in order.
    async fn run_merged(
        &self,
        conn: &mut Connection,
        batch: &[(&TokenEvent, &Prepared)],
    ) -> Result<Vec<Result<ScriptReply, StoreError>>, StoreError> {
        let mut cards: Vec<CardContractId> = Vec::new();
        let mut keys: Vec<&str> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (event, note) in batch {
            if seen.insert(event.card_contract_id) {
                cards.push(event.card_contract_id);
                keys.push(&note.keys[0]);
            }
        }
        // One MGET (the batch is on one slot): one command for Redis, not one per card.
        let read: Result<((i64, i64), Vec<Value>), _> = redis::pipe()
            .cmd("TIME")
            .cmd("MGET")
            .arg(&keys)
            .query_async(conn)
            .await;
        let (now_ms, values) = match read {
            Ok(((secs, micros), values)) => (Some(secs * 1000 + micros / 1000), values),
            Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => {
                return Err(unavailable(e));
            }
            // Not the replies a standalone server or a slot gives: the Lua merge decides.
            Err(_) => (None, Vec::new()),
        };
        let plan = match now_ms {
            Some(now_ms) => {
                // A key of another type reads as nil in an MGET: the plan then sees no
                // record, and the write's compare (GET fails) hands it to the Lua merge.
                let stored = cards
                    .iter()
                    .zip(values)
                    .filter_map(|(card, v)| {
                        redis::from_redis_value::<Option<String>>(v)
                            .ok()
                            .map(|raw| (*card, raw))
                    })
                    .collect();
                let events: Vec<&TokenEvent> = batch.iter().map(|(e, _)| *e).collect();
                merge_plan::plan(&events, stored, now_ms)
            }
            None => merge_plan::Plan {
                entries: Vec::new(),
                to_script: (0..batch.len()).collect(),
            },
        };
        let mut replies: Vec<Option<Result<ScriptReply, StoreError>>> =
            batch.iter().map(|_| None).collect();
        let mut to_script = plan.to_script;
        if !plan.entries.is_empty() {
            let written = self.write_merged(conn, batch, &plan.entries).await?;
            for (entry, reply) in plan.entries.iter().zip(written) {
                match reply {
                    Some(effect) => {
                        replies[entry.index] = Some(Ok(ScriptReply::Done(effect, None)));
                    }
                    None => to_script.push(entry.index),
                }
            }
        }
        if !to_script.is_empty() {
            to_script.sort_unstable();
            self.merge_retries
                .fetch_add(to_script.len() as u64, Ordering::Relaxed);
            crate::metrics::notification_merge_retries(to_script.len());
            let notes = to_script
                .iter()
                .map(|i| self.prepare(batch[*i].0, true))
                .collect::<Result<Vec<_>, _>>();
            let applied = match notes {
                Ok(notes) => {
                    let notes: Vec<&Prepared> = notes.iter().collect();
                    self.run_apply(conn, &notes, false).await
                }
                Err(e) => Err(e),
            };
            // A failed fallback fails only its own notifications: the others' writes stand and
            // keep their answers.
            match applied {
                Ok(applied) => {
                    for (i, reply) in to_script.into_iter().zip(applied) {
                        replies[i] = Some(Ok(reply));
                    }
                }
                Err(e) => {
                    for i in to_script {
                        replies[i] = Some(Err(e.clone()));
                    }
                }
            }
        }
        Ok(replies
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(unexpected_reply())))
            .collect())
    }

    /// Runs [`scripts::WRITE_MERGED`] over `entries` ([`SCRIPT_BATCH`] per call, one
    /// pipeline); per entry its effect, or `None` when it was not written (apply it again).
    async fn write_merged(
        &self,
        conn: &mut Connection,
        batch: &[(&TokenEvent, &Prepared)],
        entries: &[merge_plan::Entry],
    ) -> Result<Vec<Option<NotificationEffect>>, StoreError> {
        let mut pipe = redis::pipe();
        for chunk in entries.chunks(SCRIPT_BATCH) {
            let bytes: usize = chunk
                .iter()
                .map(|e| e.expected.len() + e.new.len() + 256)
                .sum();
            let mut cmd = Cmd::with_capacity(6 + chunk.len() * 6, bytes + 128);
            cmd.arg("EVALSHA")
                .arg(self.write_merged.get_hash())
                .arg(chunk.len() * 2);
            for entry in chunk {
                cmd.arg(&batch[entry.index].1.keys[..]);
            }
            cmd.arg(millis(self.retention.enrollment))
                .arg(millis(self.retention.notification_dedup));
            for entry in chunk {
                let note = batch[entry.index].1;
                // The hash and the channel (`Prepared::args` 3 and 2).
                cmd.arg(&*entry.expected)
                    .arg(&*entry.new)
                    .arg(&note.args[3])
                    .arg(&note.args[2]);
            }
            pipe.add_command(cmd);
        }
        let replies: Vec<Vec<String>> = run_script_calls(&self.write_merged, &pipe, conn).await?;
        let replies: Vec<Option<NotificationEffect>> = replies
            .into_iter()
            .flatten()
            .map(|reply| match reply.as_str() {
                "applied" => Some(NotificationEffect::Applied),
                "stale" => Some(NotificationEffect::Stale),
                "duplicate" => Some(NotificationEffect::Duplicate),
                "conflict" => Some(NotificationEffect::Conflict),
                _ => None,
            })
            .collect();
        if replies.len() != entries.len() {
            return Err(unexpected_reply());
        }
        Ok(replies)
    }

    /// Notifications the service merged but then applied with the Lua merge, since this store
    /// was made: the record changed between the read and the write (another writer), or could
    /// not be merged in the service. Counted in `c2p_notification_merge_retries_total` too.
    pub fn merge_retries(&self) -> u64 {
        self.merge_retries.load(Ordering::Relaxed)
    }

    /// Applies `events`: one pipeline (one round trip) on a standalone server, one per slot on
    /// a Cluster (those run concurrently); each notification's effect, and its record's JSON
    /// when `with_record` and applied, in the order of `events`.
    async fn apply_all(
        &self,
        events: &[&TokenEvent],
        with_record: bool,
    ) -> Vec<Result<(NotificationEffect, Option<String>), StoreError>> {
        let mut results: Vec<Option<Result<_, StoreError>>> = events.iter().map(|_| None).collect();
        // Merged here only for a batch: the plan reads first (TIME and MGET), then writes with a
        // compare-and-set, two round trips that pay off by taking the merge's CPU off Redis'
        // one core over many notifications. One notification alone (an enrollment's TAR or TCN,
        // a quiet stream) is merged by the script, in one round trip. The two merges are twins
        // (`merge_plan` and the script, held to each other by the store suites).
        let in_script = with_record || events.len() == 1;
        let mut prepared = Vec::with_capacity(events.len());
        for (i, event) in events.iter().enumerate() {
            match self.prepare(event, in_script) {
                Ok(note) => prepared.push((i, note)),
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        let groups: Vec<Vec<(usize, Prepared)>> = if matches!(*self.target, Target::Cluster(..)) {
            // A script's keys must share a slot; a card's keys do (its hash tag).
            let mut slots: HashMap<Slot, Vec<(usize, Prepared)>> = HashMap::new();
            for (i, note) in prepared {
                slots
                    .entry(Slot::for_key(&note.keys[0]))
                    .or_default()
                    .push((i, note));
            }
            slots.into_values().collect()
        } else {
            vec![prepared]
        };
        let groups: Vec<_> = groups.into_iter().filter(|g| !g.is_empty()).collect();
        match self.connection().await {
            Err(e) => {
                for (i, _) in groups.iter().flatten() {
                    results[*i] = Some(Err(e.clone()));
                }
            }
            Ok(conn) => {
                let runs = groups.iter().map(|group| {
                    let mut conn = conn.clone();
                    async move {
                        let batch: Vec<(&TokenEvent, &Prepared)> =
                            group.iter().map(|(i, note)| (events[*i], note)).collect();
                        if in_script {
                            let notes: Vec<&Prepared> = batch.iter().map(|(_, n)| *n).collect();
                            self.run_apply(&mut conn, &notes, with_record)
                                .await
                                .map(|replies| replies.into_iter().map(Ok).collect())
                        } else {
                            self.run_merged(&mut conn, &batch).await
                        }
                    }
                });
                let replies = futures::future::join_all(runs).await;
                let mut failed = Vec::new();
                for (group, replies) in groups.iter().zip(replies) {
                    match replies {
                        Ok(replies) => {
                            for ((i, _), reply) in group.iter().zip(replies) {
                                match reply {
                                    Ok(ScriptReply::Done(effect, json)) => {
                                        results[*i] = Some(Ok((effect, json)));
                                    }
                                    Ok(ScriptReply::Failed(message)) => failed.push((*i, message)),
                                    Err(e) => results[*i] = Some(Err(e)),
                                }
                            }
                        }
                        Err(e) => {
                            for (i, _) in group {
                                results[*i] = Some(Err(e.clone()));
                            }
                        }
                    }
                }
                for (i, message) in failed {
                    let mut conn = conn.clone();
                    let settled = self
                        .settle(&mut conn, events[i], &message, with_record)
                        .await;
                    results[i] = Some(settled);
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(unexpected_reply())))
            .collect()
    }

    /// A notification the script could not apply (nothing of it written). A stored record the
    /// script could not read, or could not write back (a number cjson would round: the event's
    /// own numbers were refused before the call, by `check_event`, so the record's are the
    /// cause, and every later notification of the card would meet them), is set aside and the
    /// notification applied once more (to an empty record, rebuilt later from the token list),
    /// also when it was set aside meanwhile (by an earlier notification of the card in the same
    /// batch, or another writer): a second failure is the answer.
    async fn settle(
        &self,
        conn: &mut Connection,
        event: &TokenEvent,
        message: &str,
        with_record: bool,
    ) -> Result<(NotificationEffect, Option<String>), StoreError> {
        if let Some(detail) = message.strip_prefix("C2P_REFUSED") {
            self.set_aside_unwritable(conn, event.card_contract_id, detail.trim())
                .await?;
        } else {
            self.get_or_quarantine(event.card_contract_id).await?;
        }
        let note = self.prepare(event, true)?;
        match self.run_apply(conn, &[&note], with_record).await?.pop() {
            Some(ScriptReply::Done(effect, json)) => Ok((effect, json)),
            Some(ScriptReply::Failed(message)) => Err(script_failure(&message)),
            None => Err(unexpected_reply()),
        }
    }

    /// The card's record; one that cannot be read is renamed aside
    /// (`…:enrollment:quarantined:<ms>-<random>`, same slot, same TTL), logged and counted, and
    /// reads as absent so that the card is rebuilt from the token list instead of failing for
    /// 30 days.
    /// The flag says whether a record was set aside.
    async fn get_or_quarantine(
        &self,
        card: CardContractId,
    ) -> Result<(Option<EnrollmentRecord>, bool), StoreError> {
        let key = self.keys.enrollment(card);
        let mut conn = self.connection().await?;
        // Twice at most: a record rewritten between the read and the set-aside is read again.
        for _ in 0..2 {
            let (why, seen) = match conn.get::<_, Option<String>>(&key).await {
                Ok(None) => return Ok((None, false)),
                Ok(Some(json)) => match serde_json::from_str(&json) {
                    Ok(record) => return Ok((Some(record), false)),
                    Err(e) => (corrupt(e), json),
                },
                // Not a string at all (a hash, a list...): as unreadable as bad JSON.
                Err(e) if e.code() == Some("WRONGTYPE") => (
                    StoreError::Corrupt("the key holds a value of another Redis type".into()),
                    String::new(),
                ),
                Err(e) => return Err(unavailable(e)),
            };
            // Boxed: inline, the script call's state would be part of every read (a watch's
            // opening among them), though an unreadable record is the exception.
            if Box::pin(self.set_aside(&mut conn, card, &key, why, &seen)).await? {
                return Ok((None, true));
            }
        }
        Err(StoreError::Unavailable(
            "the record kept changing while being read".into(),
        ))
    }

    /// Sets the card's record aside if it holds what the scripts refuse to write back
    /// (`detail`: a number cjson would round, or a revision whose next one would be), though it
    /// parses. The record is read again first: the one that failed may have been set aside and
    /// replaced meanwhile (by an earlier notification of the card in the same batch, or by
    /// another writer), and a good record is never set aside.
    async fn set_aside_unwritable(
        &self,
        conn: &mut Connection,
        card: CardContractId,
        detail: &str,
    ) -> Result<(), StoreError> {
        let key = self.keys.enrollment(card);
        let seen: Option<String> = conn.get(&key).await.map_err(unavailable)?;
        if let Some(seen) = seen.filter(|raw| unwritable(raw)) {
            let why = StoreError::Corrupt(format!(
                "it holds what the store's scripts cannot write back ({detail})"
            ));
            Box::pin(self.set_aside(conn, card, &key, why, &seen)).await?;
        }
        Ok(())
    }

    /// Renames the unreadable record `seen` under `key` aside (`why`: what is wrong with it);
    /// false when the key no longer holds it.
    async fn set_aside(
        &self,
        conn: &mut Connection,
        card: CardContractId,
        key: &str,
        why: StoreError,
        seen: &str,
    ) -> Result<bool, StoreError> {
        // Random past the time: two set aside within one millisecond (the notifications of a
        // batch, or replicas) must not rename onto each other, which would lose the first.
        let aside = format!(
            "{key}:quarantined:{}-{:08x}",
            crate::domain::now_ms(),
            rand::random::<u32>()
        );
        // Renamed only if it still holds what was read: a good record another replica just
        // wrote is never set aside.
        let renamed: i64 = self
            .quarantine
            .key(key)
            .key(&aside)
            .arg(seen)
            .invoke_async(conn)
            .await
            .map_err(unavailable)?;
        if renamed == 1 {
            crate::metrics::record_quarantined();
            tracing::error!(card = card.get(), error = %why, aside = %aside, "unreadable enrollment record set aside; the card is rebuilt from the token list");
        }
        Ok(renamed == 1)
    }
}

/// Whether the scripts would refuse to write back the record `raw` (`scripts::ENCODE`'s
/// guard): a number that is not an integer or is 10^14 or more, or a revision whose next one
/// would be.
fn unwritable(raw: &str) -> bool {
    fn refused(v: &serde_json::Value) -> bool {
        match v {
            serde_json::Value::Number(n) => n.as_i64().is_none_or(|i| {
                i.unsigned_abs() >= crate::domain::STORE_INTEGER_LIMIT.unsigned_abs()
            }),
            serde_json::Value::Array(items) => items.iter().any(refused),
            serde_json::Value::Object(fields) => fields.values().any(refused),
            _ => false,
        }
    }
    let Ok(value) = serde_json::from_str::<serde_json::Value>(raw) else {
        return false;
    };
    let next_revision_refused = value
        .get("revision")
        .and_then(serde_json::Value::as_i64)
        .is_some_and(|r| r >= crate::domain::STORE_INTEGER_LIMIT - 1);
    next_revision_refused || refused(&value)
}

async fn connect(target: &Target) -> Result<Connection, StoreError> {
    match target {
        Target::Single(c) => Ok(Connection::Single(c.clone())),
        Target::Cluster(cluster) => cluster.connection().await.map(Connection::Cluster),
    }
}

/// The record under `key`, read outside any `RedisStore` borrow (for the change feed).
/// The record read again after the feed missed changes (`None`: it is gone). The read is
/// retried for a while: the feed may have moved to another node while the cluster is still
/// failing over the one that was lost. Given up (or unreadable), the error: the watch then
/// ends, and its client watches again from the revision it has, rather than wait on a stream
/// that will never show what it missed.
async fn resync(target: &Target, key: &str) -> Result<Option<EnrollmentRecord>, StoreError> {
    // 10 s in all (the README's bound), however long each read waits: counted in attempts, 20
    // reads that each waited `redis.response_timeout` on a hung node took 20 times that.
    const RETRY_FOR: Duration = Duration::from_secs(10);
    const PAUSE: Duration = Duration::from_millis(500);
    let until = tokio::time::Instant::now() + RETRY_FOR;
    let mut attempt = 1;
    loop {
        let read = tokio::time::timeout_at(until, read_record(target, key))
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::Unavailable(format!(
                    "the record could not be read within {}",
                    humantime::format_duration(RETRY_FOR)
                )))
            });
        match read {
            Ok(record) => return Ok(record),
            Err(e @ StoreError::Unavailable(_)) if tokio::time::Instant::now() + PAUSE < until => {
                tracing::debug!(error = %e, attempt, "change feed resync cannot read; retrying");
                tokio::time::sleep(PAUSE).await;
                attempt += 1;
            }
            Err(e) => {
                tracing::warn!(error = %e, "change feed resync gave up reading the record; the watch ends");
                return Err(e);
            }
        }
    }
}

async fn read_record(target: &Target, key: &str) -> Result<Option<EnrollmentRecord>, StoreError> {
    let mut conn = connect(target).await?;
    let raw: Option<String> = conn.get(key).await.map_err(wrong_type_is_corrupt)?;
    raw.map(|json| serde_json::from_str(&json).map_err(corrupt))
        .transpose()
}

#[async_trait::async_trait]
impl EnrollmentStore for RedisStore {
    #[tracing::instrument(name = "redis.script", level = "debug", skip_all, fields(db.system = "redis", db.operation = "get"))]
    async fn get(&self, card: CardContractId) -> Result<Option<EnrollmentRecord>, StoreError> {
        self.get_or_quarantine(card).await.map(|(record, _)| record)
    }

    async fn get_cached(
        &self,
        card: CardContractId,
    ) -> Result<Option<Arc<SharedRecord>>, StoreError> {
        let Some(cache) = &self.cache else {
            return Ok(self.get(card).await?.map(SharedRecord::new));
        };
        match cache.lookup(card) {
            Lookup::Hit(record) => {
                crate::metrics::record_cache("hit");
                Ok(Some(record))
            }
            Lookup::Load(ticket) => {
                crate::metrics::record_cache("load");
                match self.read_with_ttl(card).await? {
                    Some((record, ttl)) => {
                        let shared = SharedRecord::new(record);
                        cache.fill(ticket, &shared, ttl);
                        Ok(Some(shared))
                    }
                    None => Ok(self.get(card).await?.map(SharedRecord::new)),
                }
            }
            Lookup::Bypass { track, evicted } => {
                crate::metrics::record_cache("bypass");
                if let Some((card, slot)) = evicted {
                    self.feed.untrack(self.keys.changes(card), slot);
                }
                if let Some(slot) = track {
                    self.feed.track(self.keys.changes(card), card, slot);
                }
                Ok(self.get(card).await?.map(SharedRecord::new))
            }
        }
    }

    #[tracing::instrument(name = "redis.script", level = "debug", skip_all, fields(db.system = "redis", db.operation = "put_enrollment"))]
    async fn put_enrollment(
        &self,
        record: &EnrollmentRecord,
        mode: PutMode,
        ttl: Duration,
    ) -> Result<EnrollmentRecord, StoreError> {
        self.put(record, mode, ttl, "", true)
            .await?
            .ok_or_else(|| StoreError::Corrupt("an unfenced write was fenced".into()))
    }

    #[tracing::instrument(name = "redis.script", level = "debug", skip_all, fields(db.system = "redis", db.operation = "put_enrollment_fenced"))]
    async fn put_enrollment_fenced(
        &self,
        record: &EnrollmentRecord,
        ttl: Duration,
        lock_owner: &str,
    ) -> Result<Option<EnrollmentRecord>, StoreError> {
        self.put(record, PutMode::Merge, ttl, lock_owner, true)
            .await
    }

    #[tracing::instrument(name = "redis.script", level = "debug", skip_all, fields(db.system = "redis", db.operation = "put_fresh_enrollment_fenced"))]
    async fn put_fresh_enrollment_fenced(
        &self,
        record: &EnrollmentRecord,
        ttl: Duration,
        lock_owner: &str,
    ) -> Result<Option<EnrollmentRecord>, StoreError> {
        self.put(record, PutMode::Merge, ttl, lock_owner, false)
            .await
    }

    #[tracing::instrument(name = "redis.script", level = "debug", skip_all, fields(db.system = "redis", db.operation = "apply_notification"))]
    async fn apply_notification(
        &self,
        event: &TokenEvent,
    ) -> Result<NotificationResult, StoreError> {
        let _forget = self.forget_on_return(event.card_contract_id);
        let (effect, json) = self
            .apply_all(&[event], true)
            .await
            .pop()
            .unwrap_or_else(|| Err(unexpected_reply()))?;
        Ok(match effect {
            NotificationEffect::Applied => NotificationResult::Applied(
                serde_json::from_str(&json.ok_or_else(unexpected_reply)?).map_err(corrupt)?,
            ),
            NotificationEffect::Duplicate => NotificationResult::Duplicate,
            NotificationEffect::Stale => NotificationResult::Stale,
            NotificationEffect::Conflict => NotificationResult::Conflict,
        })
    }

    #[tracing::instrument(name = "redis.script", level = "debug", skip_all, fields(db.system = "redis", db.operation = "apply_notifications", count = events.len()))]
    async fn apply_notifications(
        &self,
        events: &[TokenEvent],
    ) -> Vec<Result<NotificationEffect, StoreError>> {
        // Every card of the batch is forgotten by the cache once the batch returned.
        let _forget: Vec<ForgetOnDrop<'_>> = events
            .iter()
            .map(|e| self.forget_on_return(e.card_contract_id))
            .collect();
        let events: Vec<&TokenEvent> = events.iter().collect();
        self.apply_all(&events, false)
            .await
            .into_iter()
            .map(|r| r.map(|(effect, _)| effect))
            .collect()
    }

    #[tracing::instrument(name = "redis.script", level = "debug", skip_all, fields(db.system = "redis", db.operation = "idempotency_begin"))]
    async fn idempotency_begin(
        &self,
        scope: &str,
        proposal: &IdempotencyRecord,
        now_ms: i64,
    ) -> Result<Begin, StoreError> {
        let json = serde_json::to_string(proposal).map_err(corrupt)?;
        // Only the lease's length crosses over: Redis' clock decides when it ends.
        let lease_ms = proposal.lease_until_ms.saturating_sub(now_ms).max(0);
        let mut conn = self.connection().await?;
        let reply: Vec<String> = self
            .idempotency_begin
            .key(self.keys.idempotency(scope))
            .arg(json)
            .arg(&proposal.fingerprint)
            .arg(lease_ms)
            .arg(millis(self.retention.idempotency))
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let record = |json: &str| serde_json::from_str::<IdempotencyRecord>(json).map_err(corrupt);
        match reply.as_slice() {
            [kind, json] if kind == "new" => Ok(Begin::New(record(json)?)),
            [kind, json] if kind == "resume" => Ok(Begin::Resume(record(json)?)),
            [kind, json] if kind == "replay" => Ok(Begin::Replay(record(json)?)),
            [kind, ms] if kind == "in_flight" => Ok(Begin::InFlight(ms.parse().unwrap_or(1000))),
            [kind] if kind == "reused" => Ok(Begin::Reused),
            _ => Err(StoreError::Corrupt("unexpected script reply".into())),
        }
    }

    #[tracing::instrument(name = "redis.script", level = "debug", skip_all, fields(db.system = "redis", db.operation = "idempotency_update"))]
    async fn idempotency_update(
        &self,
        scope: &str,
        record: &IdempotencyRecord,
    ) -> Result<bool, StoreError> {
        let json = serde_json::to_string(record).map_err(corrupt)?;
        // The lease left, as a length: Redis' clock turns it back into an end.
        let lease_ms = if record.lease_until_ms > 0 {
            record
                .lease_until_ms
                .saturating_sub(crate::domain::now_ms())
                .max(1)
        } else {
            0
        };
        let mut conn = self.connection().await?;
        let written: i64 = self
            .idempotency_update
            .key(self.keys.idempotency(scope))
            .arg(&record.owner)
            .arg(json)
            .arg(millis(self.retention.idempotency))
            .arg(lease_ms)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(written == 1)
    }

    #[tracing::instrument(name = "redis.script", level = "debug", skip_all, fields(db.system = "redis", db.operation = "lock_card"))]
    async fn lock_card(
        &self,
        card: CardContractId,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.take(self.keys.lock(card), owner, ttl).await
    }

    #[tracing::instrument(name = "redis.script", level = "debug", skip_all, fields(db.system = "redis", db.operation = "lock_and_read"))]
    async fn lock_and_read(
        &self,
        card: CardContractId,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<LockedCard>, StoreError> {
        let mut conn = self.connection().await?;
        let answer: Vec<Value> = self
            .lock_and_read
            .key(self.keys.lock(card))
            .key(self.keys.enrollment(card))
            .key(self.keys.opt_out(&crate::domain::card_subject(card)))
            .arg(owner)
            .arg(millis(ttl))
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let (record, opt_out) = match answer.as_slice() {
            [Value::Int(0)] => return Ok(None),
            [Value::Int(1), record, opt_out] => (record, opt_out),
            _ => {
                return Err(StoreError::Unavailable(
                    "the lock script gave an answer of another shape".into(),
                ));
            }
        };
        let record = match read_value(record, "record") {
            Ok(None) => Ok(None),
            Ok(Some(json)) => match serde_json::from_slice(json) {
                Ok(record) => Ok(Some(record)),
                // Unreadable: the usual read sets it aside (a round trip more, only then).
                Err(_) => self.get(card).await,
            },
            Err(_) => self.get(card).await,
        };
        let opt_out = read_value(opt_out, "card's opt-out").and_then(|json| {
            json.map(|json| serde_json::from_slice(json).map_err(corrupt))
                .transpose()
        });
        Ok(Some(LockedCard { record, opt_out }))
    }

    #[tracing::instrument(name = "redis.script", level = "debug", skip_all, fields(db.system = "redis", db.operation = "renew_card"))]
    async fn renew_card(
        &self,
        card: CardContractId,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut conn = self.connection().await?;
        let held: i64 = self
            .renew_card
            .key(self.keys.lock(card))
            .arg(owner)
            .arg(millis(ttl))
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(held == 1)
    }

    #[tracing::instrument(name = "redis.script", level = "debug", skip_all, fields(db.system = "redis", db.operation = "unlock_card"))]
    async fn unlock_card(&self, card: CardContractId, owner: &str) -> Result<bool, StoreError> {
        let mut conn = self.connection().await?;
        let released: i64 = self
            .unlock_card
            .key(self.keys.lock(card))
            .arg(owner)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(released == 1)
    }

    async fn watch(&self, card: CardContractId) -> Result<ChangeStream, StoreError> {
        use futures::future::{Either, FutureExt as _};
        use std::sync::Arc;
        use tokio_stream::StreamExt as _;
        let items = self.feed.watch(self.keys.changes(card)).await?;
        let target = self.target.clone();
        let key: Arc<str> = self.keys.enrollment(card).into();
        // A resync (after a reconnect, or a watcher too slow for the feed) reads the record. Its
        // future is boxed only then: held inline, every idle watch would keep room for a Redis
        // read (about a kilobyte).
        let records = items.then(move |item| match item {
            super::feed::FeedItem::Record(record) => {
                Either::Left(std::future::ready(Ok(Some(record))))
            }
            super::feed::FeedItem::Gone => Either::Left(std::future::ready(Err(
                StoreError::Unavailable("the change feed has no connection to Redis".into()),
            ))),
            super::feed::FeedItem::Resync => {
                let (target, key) = (target.clone(), key.clone());
                Either::Right(
                    async move { resync(&target, &key).await.map(|r| r.map(Arc::new)) }.boxed(),
                )
            }
        });
        // A resync given up, or an outage of the feed, ends the stream (the watch answers
        // UNAVAILABLE and its client resumes); a record gone sends nothing.
        Ok(Box::pin(records.take_while(Result::is_ok).filter_map(
            |r| r.ok().flatten().map(Arc::unwrap_or_clone),
        )))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.connection().await?;
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn track_in_progress(
        &self,
        card: CardContractId,
        since_ms: i64,
    ) -> Result<(), StoreError> {
        self.index_add(self.keys.in_progress(), Some("NX"), since_ms, card)
            .await
    }

    async fn requeue_in_progress(
        &self,
        card: CardContractId,
        since_ms: i64,
    ) -> Result<(), StoreError> {
        self.index_add(self.keys.in_progress(), Some("XX"), since_ms, card)
            .await
    }

    async fn untrack_in_progress(&self, card: CardContractId) -> Result<(), StoreError> {
        self.index_remove(self.keys.in_progress(), card).await
    }

    async fn in_progress_before(
        &self,
        before_ms: i64,
        limit: usize,
    ) -> Result<Vec<CardContractId>, StoreError> {
        self.index_before(self.keys.in_progress(), before_ms, limit)
            .await
    }

    async fn count_in_progress(&self, before_ms: i64) -> Result<(u64, u64), StoreError> {
        let key = self.keys.in_progress();
        let mut conn = self.connection().await?;
        redis::pipe()
            .cmd("ZCARD")
            .arg(&key)
            .cmd("ZCOUNT")
            .arg(&key)
            .arg("-inf")
            .arg(format!("({before_ms}"))
            .query_async(&mut conn)
            .await
            .map_err(unavailable)
    }

    async fn track_enrolled(
        &self,
        card: CardContractId,
        check_at_ms: i64,
    ) -> Result<(), StoreError> {
        self.index_add(self.keys.enrolled(), None, check_at_ms, card)
            .await
    }

    async fn untrack_enrolled(&self, card: CardContractId) -> Result<(), StoreError> {
        self.index_remove(self.keys.enrolled(), card).await
    }

    async fn untrack_enrolled_due(
        &self,
        card: CardContractId,
        before_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut conn = self.connection().await?;
        let removed: i64 = self
            .untrack_due
            .key(self.keys.enrolled())
            .arg(card.get())
            .arg(before_ms)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(removed == 1)
    }

    async fn enrolled_due(
        &self,
        before_ms: i64,
        limit: usize,
    ) -> Result<Vec<CardContractId>, StoreError> {
        self.index_before(self.keys.enrolled(), before_ms, limit)
            .await
    }

    async fn get_opt_out(&self, subjects: &[String]) -> Result<Option<OptOut>, StoreError> {
        let conn = self.connection().await?;
        // Every subject's key at once (EnrollCard asks twice per call; one read after the other
        // was a round trip each), each GET on its own slot in a Cluster. The first subject in
        // order that holds an opt-out answers, as when they were read one by one.
        let reads = subjects.iter().map(|subject| {
            let mut conn = conn.clone();
            let key = self.keys.opt_out(subject);
            async move {
                redis::cmd("GET")
                    .arg(key)
                    .query_async::<Option<String>>(&mut conn)
                    .await
            }
        });
        for json in futures::future::join_all(reads).await {
            if let Some(json) = json.map_err(wrong_type_is_corrupt)? {
                return serde_json::from_str(&json).map(Some).map_err(corrupt);
            }
        }
        Ok(None)
    }

    async fn read_opt_out(
        &self,
        subject: &str,
    ) -> Result<Option<(OptOut, OptOutStamp)>, StoreError> {
        let mut conn = self.connection().await?;
        let json: Option<String> = redis::cmd("GET")
            .arg(self.keys.opt_out(subject))
            .query_async(&mut conn)
            .await
            .map_err(wrong_type_is_corrupt)?;
        json.map(|json| {
            let opt_out = serde_json::from_str(&json).map_err(corrupt)?;
            Ok((opt_out, OptOutStamp::of(json)))
        })
        .transpose()
    }

    async fn swap_opt_out(
        &self,
        subject: &str,
        expected: Option<&OptOutStamp>,
        new: Option<&OptOut>,
    ) -> Result<bool, StoreError> {
        let new = new
            .map(|opt_out| serde_json::to_string(opt_out).map_err(corrupt))
            .transpose()?;
        let mut conn = self.connection().await?;
        // One key (one slot in a Cluster): compared and written in one script.
        let swapped: i64 = self
            .swap_opt_out
            .key(self.keys.opt_out(subject))
            .arg(expected.map_or("", OptOutStamp::as_str))
            .arg(new.as_deref().unwrap_or(""))
            .invoke_async(&mut conn)
            .await
            .map_err(wrong_type_is_corrupt)?;
        Ok(swapped == 1)
    }

    async fn lead(&self, name: &str, owner: &str, ttl: Duration) -> Result<bool, StoreError> {
        // A lease is the card lock's script on another key: take it, or renew it if ours.
        self.take(self.keys.lease(name), owner, ttl).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notification_script_reply_not_understood_is_resent_not_rejected() {
        // Unavailable answers the gateway FAILED (resend); Corrupt answered RECORD_UNREADABLE,
        // which it takes for done, though nothing was set aside or applied.
        let error = script_reply(vec!["applied?".into()]).err();
        assert!(
            matches!(error, Some(StoreError::Unavailable(_))),
            "{error:?}"
        );
    }
}
