//! The Redis Cluster connection of the store, made on first use and made again when a command
//! on it timed out.
//!
//! Why: redis-rs refreshes its slot map on `MOVED` and on a dropped connection, never on a
//! timeout. A master that hangs (stopped, swapping, cut off without a reset) answers nothing and
//! closes nothing, so after the cluster has failed it over, every command for its slots would
//! still go to it and time out, for as long as it hangs (until TCP gives up, ~15 minutes for a
//! host gone dark; never for a process stopped on a live host). A new connection connects to
//! every seed that answers (one that does not is left out) and takes the slot map from one of
//! them.
//!
//! A timed-out command marks the connection it ran on; the next caller starts a task making a
//! new one, one attempt at a time and at most one per [`REMAKE_AFTER`], failed ones included
//! (a failover takes seconds: until it is over the new map still names the hung master, and the
//! next timeout marks it again). Meanwhile every caller goes on with the marked one (its other
//! slots still answer). Any timeout counts, also one of a slow script on a healthy node: that
//! costs one new set of connections a second at most, while the timeouts last.

use super::StoreError;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The least time between two connections made because of timeouts.
const REMAKE_AFTER: Duration = Duration::from_secs(1);

struct Current {
    /// Counts the connections made (from 1).
    id: u64,
    connection: ClusterConnection,
}

/// What the task making a connection shares with the callers.
struct Making {
    current: Mutex<Option<Current>>,
    /// A task is making a connection.
    busy: AtomicBool,
    /// When the last attempt started (the rate limit counts attempts, failed ones too).
    started: Mutex<Option<Instant>>,
    /// Why the last attempt failed, for the callers that waited for it.
    failed: Mutex<Option<StoreError>>,
    done: tokio::sync::Notify,
}

/// The cluster client and its current connection.
pub(super) struct ClusterTarget {
    client: ClusterClient,
    /// Bounds one attempt (connecting to every seed, reading the slot map, connecting to the
    /// nodes it names).
    attempt_limit: Duration,
    making: Arc<Making>,
    /// The newest connection a command timed out on (0: none).
    timed_out: Arc<AtomicU64>,
}

/// A connection handed out: commands that time out on it mark it.
#[derive(Clone)]
pub(super) struct ClusterHandle {
    connection: ClusterConnection,
    id: u64,
    timed_out: Arc<AtomicU64>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Ends an attempt however its task ends (finished, panicked, or aborted with the runtime): the
/// next caller may start another, and the callers waiting are woken.
struct AttemptOver(Arc<Making>);

impl Drop for AttemptOver {
    fn drop(&mut self) {
        self.0.busy.store(false, Ordering::Release);
        self.0.done.notify_waiters();
    }
}

impl ClusterTarget {
    /// `attempt_limit`: how long one attempt to connect may take in all.
    pub(super) fn new(client: ClusterClient, attempt_limit: Duration) -> Self {
        Self {
            client,
            attempt_limit,
            making: Arc::new(Making {
                current: Mutex::new(None),
                busy: AtomicBool::new(false),
                started: Mutex::new(None),
                failed: Mutex::new(None),
                done: tokio::sync::Notify::new(),
            }),
            timed_out: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The current connection, and whether it is due to be made again.
    fn current(&self) -> Option<(ClusterHandle, bool)> {
        let current = lock(&self.making.current);
        let current = current.as_ref()?;
        let due = self.timed_out.load(Ordering::Relaxed) >= current.id
            && lock(&self.making.started).is_none_or(|at| at.elapsed() >= REMAKE_AFTER);
        let handle = ClusterHandle {
            connection: current.connection.clone(),
            id: current.id,
            timed_out: self.timed_out.clone(),
        };
        Some((handle, due))
    }

    /// Starts a task making a new connection, unless one runs. A task, not the caller: a caller
    /// may be cancelled (its deadline, the health probe's timeout) long before a connection to
    /// every seed is made, a hung one taking `redis.connect_timeout`, and the next caller would
    /// start again from nothing.
    fn start_making(&self) {
        if self.making.busy.swap(true, Ordering::AcqRel) {
            return;
        }
        *lock(&self.making.started) = Some(Instant::now());
        let over = AttemptOver(self.making.clone());
        let client = self.client.clone();
        let limit = self.attempt_limit;
        tokio::spawn(async move {
            let making = over.0.clone();
            let made = match tokio::time::timeout(limit, client.get_async_connection()).await {
                Ok(made) => made.map_err(super::redis::unavailable),
                Err(_) => Err(StoreError::Unavailable(format!(
                    "connecting to the cluster took over {limit:?}"
                ))),
            };
            match made {
                Ok(connection) => {
                    let mut current = lock(&making.current);
                    let id = current.as_ref().map_or(1, |c| c.id + 1);
                    if id > 1 {
                        tracing::warn!(
                            connection = id,
                            "a Redis Cluster command timed out: connected again, with the slot map as the cluster now has it"
                        );
                    }
                    *current = Some(Current { id, connection });
                }
                Err(e) => *lock(&making.failed) = Some(e),
            }
            drop(over);
        });
    }

    /// A connection: the current one (a new one is made in the background when a command timed
    /// out on it; this one serves meanwhile: its other slots still answer), or, before the
    /// first, the first once made.
    pub(super) async fn connection(&self) -> Result<ClusterHandle, StoreError> {
        match self.current() {
            Some((handle, false)) => return Ok(handle),
            Some((handle, true)) => {
                self.start_making();
                return Ok(handle);
            }
            None => {}
        }
        loop {
            // Boxed: the wait's state would otherwise be part of every operation's future.
            let mut done = Box::pin(self.making.done.notified());
            done.as_mut().enable();
            // Made between the look above and the wait's start?
            if let Some((handle, _)) = self.current() {
                return Ok(handle);
            }
            self.start_making();
            done.await;
            if let Some((handle, _)) = self.current() {
                return Ok(handle);
            }
            // Woken by an earlier attempt's end while a newer one runs: wait for that one.
            if !self.making.busy.load(Ordering::Acquire) {
                return Err(lock(&self.making.failed).clone().unwrap_or_else(|| {
                    StoreError::Unavailable("no connection to the cluster".into())
                }));
            }
        }
    }
}

impl ClusterHandle {
    fn observe<T>(&self, result: &RedisResult<T>) {
        if result.as_ref().is_err_and(|e| e.is_timeout()) {
            self.timed_out.fetch_max(self.id, Ordering::Relaxed);
        }
    }

    pub(super) fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        use redis::aio::ConnectionLike as _;
        Box::pin(async move {
            let result = self.connection.req_packed_command(cmd).await;
            self.observe(&result);
            result
        })
    }

    pub(super) fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        use redis::aio::ConnectionLike as _;
        Box::pin(async move {
            let result = self
                .connection
                .req_packed_commands(cmd, offset, count)
                .await;
            self.observe(&result);
            result
        })
    }

    pub(super) fn get_db(&self) -> i64 {
        use redis::aio::ConnectionLike as _;
        self.connection.get_db()
    }
}
