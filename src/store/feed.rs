//! The change feed over Redis pub/sub: one subscriber connection per process, one channel per
//! watched card, subscribed while at least one local watcher follows the card and unsubscribed
//! when the last one leaves, re-subscribed after a reconnect.
//!
//! In a cluster, classic PUBLISH reaches the subscribers of every node, so the connection may
//! be held by any live node: when it is lost (the node died, or left a PING, SUBSCRIBE or
//! UNSUBSCRIBE unanswered past its reply timeout) the feed subscribes again through the next
//! node that answers — the seed nodes of `redis.url` in turn, then the nodes learned from
//! `CLUSTER NODES` — and every watcher reads its record again, since changes published
//! meanwhile were missed. While no node answers, what watches and the cache ask for is taken
//! off the queue between attempts and kept as the channels the next connection subscribes.
//!
//! The record cache (`cache.rs`) subscribes the channels of the cards it holds through the
//! same connection ([`Feed::track`]), is told when each subscription is in force, receives
//! every record published, and is emptied the moment the connection is lost.
//!
//! Memory: the watchers of a card share one small broadcast channel of [`CARD_BUFFER`]
//! records, each behind an `Arc` (a slot is a pointer, not a record): a few hundred bytes per
//! watched card however many watch it. A watcher that falls further behind than that gets
//! [`FeedItem::Resync`] and reads the record again, which the watch contract allows (states in
//! between may be merged; the final state is never missed).

use super::StoreError;
use super::cache::RecordCache;
use crate::domain::{CardContractId, EnrollmentRecord};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_stream::{Stream, StreamExt as _};

enum Command {
    Subscribe(String, oneshot::Sender<()>),
    Unsubscribe(String),
    /// The cache holds the card in this slot: subscribe its channel.
    Track(String, CardContractId, u64),
    /// The cache let the slot go.
    Untrack(String, u64),
}

/// The channels the cache holds, with their card and slot (owned by the subscriber task).
type Tracked = HashMap<String, (CardContractId, u64)>;

/// What a watcher receives: a new version of the record, or word that changes may have been
/// missed (a reconnect, a slow watcher) and the record must be read again.
#[derive(Debug, Clone)]
pub enum FeedItem {
    /// The record as written, shared by the card's watchers.
    Record(Arc<EnrollmentRecord>),
    /// Read the record again.
    Resync,
    /// The feed has had no connection for [`OUTAGE_ENDS_WATCHES`]: changes go unseen, and a
    /// watch that went on would tell its client (heartbeats) that nothing changed. It ends.
    Gone,
}

/// How long the feed may be without a connection, after it had one, before its watches end
/// (their clients watch again, and are answered UNAVAILABLE until Redis is back): a failover
/// or a reconnect takes less, and the watchers then read their records again.
pub const OUTAGE_ENDS_WATCHES: Duration = Duration::from_secs(10);

/// The changes of one card held for its slowest watcher. Changes to one card come a few per
/// enrollment, so a watcher that is polled at all keeps up; one that falls 4 behind re-reads the
/// record instead (see the module's note on memory).
pub const CARD_BUFFER: usize = 4;

/// Where the feed subscribes: one server, or any node of a cluster.
pub struct Nodes {
    /// Tried in turn: the server, or the cluster's seed nodes.
    seeds: Vec<redis::Client>,
    /// For a cluster: a client of the node at `host:port` (learned from `CLUSTER NODES`).
    learn: Option<Learn>,
    /// Bounds each connection attempt, and (at least 1 s: [`Nodes::reply_within`]) each
    /// command on the connection.
    timeout: Duration,
}

type Learn = Arc<dyn Fn(&str) -> Option<redis::Client> + Send + Sync>;

impl Nodes {
    /// The standalone server of `client`.
    pub fn single(client: redis::Client, timeout: Duration) -> Self {
        Self {
            seeds: vec![client],
            learn: None,
            timeout,
        }
    }

    /// A cluster reached through `seeds`; `learn` makes a client of another node from its
    /// `host:port`.
    pub fn cluster(
        seeds: Vec<redis::Client>,
        learn: impl Fn(&str) -> Option<redis::Client> + Send + Sync + 'static,
        timeout: Duration,
    ) -> Self {
        Self {
            seeds,
            learn: Some(Arc::new(learn)),
            timeout,
        }
    }
}

/// How often the subscriber connection is checked with PING: a node that vanished without
/// closing the connection is left within this (plus the PING's timeout).
const PING_EVERY: Duration = Duration::from_secs(5);

/// How long to wait before trying every node again when none answered.
const RETRY_EVERY: Duration = Duration::from_millis(500);

impl Nodes {
    /// How long a PING, SUBSCRIBE or UNSUBSCRIBE may wait for its answer before the node is
    /// taken for lost: a node that hangs (stopped, or cut off without a reset) answers nothing
    /// and closes nothing, and the feed, waiting on it, would serve nobody meanwhile.
    fn reply_within(&self) -> Duration {
        self.timeout.max(Duration::from_secs(1))
    }
}

type Watchers = Arc<Mutex<HashMap<String, (broadcast::Sender<FeedItem>, usize)>>>;

/// The feed of one process.
pub struct Feed {
    commands: Commands,
    watchers: Watchers,
    /// How long a new watch waits for its SUBSCRIBE: long enough for the node holding the feed
    /// to be given up (its reply timeout) and the next one to confirm it.
    subscribe_wait: Duration,
}

/// The subscriber task's queue, counting what waits in it (for the tests: the queue must not
/// grow while the feed cannot connect).
#[derive(Clone)]
struct Commands {
    sender: mpsc::UnboundedSender<Command>,
    queued: Arc<AtomicUsize>,
}

impl Commands {
    fn send(&self, command: Command) {
        // Counted before it can be taken, so that the count never goes below zero.
        self.queued.fetch_add(1, Ordering::Relaxed);
        if self.sender.send(command).is_err() {
            self.queued.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// The task's end of [`Commands`].
struct Inbox {
    receiver: mpsc::UnboundedReceiver<Command>,
    queued: Arc<AtomicUsize>,
}

impl Inbox {
    async fn recv(&mut self) -> Option<Command> {
        let command = self.receiver.recv().await;
        self.took(&command);
        command
    }

    fn try_recv(&mut self) -> Option<Command> {
        let command = self.receiver.try_recv().ok();
        self.took(&command);
        command
    }

    fn took(&self, command: &Option<Command>) {
        if command.is_some() {
            self.queued.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

fn lock(
    w: &Watchers,
) -> std::sync::MutexGuard<'_, HashMap<String, (broadcast::Sender<FeedItem>, usize)>> {
    w.lock().unwrap_or_else(|p| p.into_inner())
}

impl Feed {
    /// Starts the subscriber task on `nodes` (connects when the first card is watched or
    /// cached), feeding `cache` if there is one.
    pub fn start(nodes: Nodes, cache: Option<Arc<RecordCache>>) -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let commands = Commands {
            sender,
            queued: queued.clone(),
        };
        let inbox = Inbox { receiver, queued };
        let watchers: Watchers = Arc::default();
        let subscribe_wait = (3 * nodes.reply_within()).max(Duration::from_secs(5));
        tokio::spawn(run(nodes, inbox, watchers.clone(), cache));
        Self {
            commands,
            watchers,
            subscribe_wait,
        }
    }

    /// Subscribes `channel` for the cache's `slot` of `card`; the cache is told once it is in
    /// force ([`RecordCache::subscribed`]). Does not wait.
    pub fn track(&self, channel: String, card: CardContractId, slot: u64) {
        self.commands.send(Command::Track(channel, card, slot));
    }

    /// The cache let `slot` go: its channel is unsubscribed unless a watcher follows it.
    pub fn untrack(&self, channel: String, slot: u64) {
        self.commands.send(Command::Untrack(channel, slot));
    }

    /// The changes published on `channel` from now on.
    pub async fn watch(&self, channel: String) -> Result<Watched, StoreError> {
        let mut receiver = {
            let mut watchers = lock(&self.watchers);
            let entry = watchers
                .entry(channel.clone())
                .or_insert_with(|| (broadcast::channel(CARD_BUFFER).0, 0));
            entry.1 += 1;
            entry.0.subscribe()
        };
        let guard = Guard {
            channel: channel.clone(),
            watchers: self.watchers.clone(),
            commands: self.commands.clone(),
        };
        // Every watcher, not only the channel's first, waits for a SUBSCRIBE of its own to be
        // in force (Redis confirms a channel subscribed already at once, in order): a second
        // watcher opened while the first one's SUBSCRIBE is on its way would otherwise read
        // its record before the subscription holds, and a change in between reach neither.
        let (done, subscribed) = oneshot::channel();
        self.commands.send(Command::Subscribe(channel, done));
        match tokio::time::timeout(self.subscribe_wait, subscribed).await {
            Ok(Ok(())) => {
                // What reached the channel before (another watcher's changes, or the word that
                // an outage ended the watches, given while this one waited for Redis to come
                // back) is older than the record this watch reads next: it would end a watch
                // opened after the outage at once.
                while let Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) =
                    receiver.try_recv()
                {}
            }
            _ => {
                return Err(StoreError::Unavailable(
                    "cannot subscribe to the change feed".into(),
                ));
            }
        }
        Ok(Watched {
            inner: tokio_stream::wrappers::BroadcastStream::new(receiver),
            _guard: guard,
        })
    }
}

struct Guard {
    channel: String,
    watchers: Watchers,
    commands: Commands,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let mut watchers = lock(&self.watchers);
        if let Some(entry) = watchers.get_mut(&self.channel) {
            entry.1 -= 1;
            if entry.1 == 0 {
                watchers.remove(&self.channel);
                self.commands
                    .send(Command::Unsubscribe(self.channel.clone()));
            }
        }
    }
}

/// The changes of one channel, as one watcher follows them; leaving the channel when dropped.
pub struct Watched {
    inner: tokio_stream::wrappers::BroadcastStream<FeedItem>,
    _guard: Guard,
}

impl Stream for Watched {
    type Item = FeedItem;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<FeedItem>> {
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(item))) => Poll::Ready(Some(item)),
            // A slow watcher missed changes: it reads the record again instead.
            Poll::Ready(Some(Err(_lagged))) => Poll::Ready(Some(FeedItem::Resync)),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

fn address(client: &redis::Client) -> String {
    client.get_connection_info().addr().to_string()
}

/// A subscriber connection to the first node that answers, trying every candidate once from
/// `*next` on (seeds first, then learned nodes); `*next` moves past the node connected to, so
/// that after a loss another node is tried first.
async fn connect(
    nodes: &Nodes,
    learned: &Mutex<Vec<redis::Client>>,
    next: &mut usize,
) -> Option<(redis::aio::PubSub, redis::Client)> {
    let mut candidates = nodes.seeds.clone();
    let extra = learned.lock().unwrap_or_else(|p| p.into_inner()).clone();
    for client in extra {
        let at = address(&client);
        if !candidates.iter().any(|c| address(c) == at) {
            candidates.push(client);
        }
    }
    let count = candidates.len();
    for step in 0..count {
        let i = (*next + step) % count;
        let Some(client) = candidates.get(i) else {
            continue;
        };
        match tokio::time::timeout(nodes.timeout, client.get_async_pubsub()).await {
            Ok(Ok(pubsub)) => {
                *next = i + 1;
                return Some((pubsub, client.clone()));
            }
            Ok(Err(e)) => {
                tracing::debug!(node = %address(client), error = %e, "change feed cannot connect");
            }
            Err(_) => {
                tracing::debug!(node = %address(client), "change feed connection timed out");
            }
        }
    }
    None
}

/// Replaces `learned` with the nodes `client`'s node knows and does not think failed.
async fn learn(
    client: redis::Client,
    make: Learn,
    timeout: Duration,
    learned: Arc<Mutex<Vec<redis::Client>>>,
) {
    let nodes = tokio::time::timeout(timeout, async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async::<String>(&mut conn)
            .await
    })
    .await;
    let Ok(Ok(nodes)) = nodes else {
        return;
    };
    let clients: Vec<redis::Client> = live_nodes(&nodes)
        .iter()
        .filter_map(|at| make(at))
        .collect();
    *learned.lock().unwrap_or_else(|p| p.into_inner()) = clients;
}

/// The `host:port` of every node of a `CLUSTER NODES` answer not flagged failed, in
/// handshake, or without an address.
fn live_nodes(answer: &str) -> Vec<String> {
    answer
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let at = fields.nth(1)?;
            let flags = fields.next()?;
            let down = flags
                .split(',')
                .any(|f| matches!(f, "fail" | "fail?" | "handshake" | "noaddr"));
            // `ip:port@cport[,hostname]`
            let at = at.split('@').next()?;
            let (host, port) = at.rsplit_once(':')?;
            (!down && !host.is_empty() && port != "0").then(|| at.to_owned())
        })
        .collect()
}

async fn run(
    nodes: Nodes,
    mut commands: Inbox,
    watchers: Watchers,
    cache: Option<Arc<RecordCache>>,
) {
    let cache = cache.as_deref();
    let mut tracked = Tracked::new();
    let mut pending: Vec<Command> = Vec::new();
    // Whether a connection was lost: the next one tells the watchers to read again.
    let mut lost = false;
    // Since when the feed has been without a connection (since the loss; none: connected).
    let mut down_since: Option<tokio::time::Instant> = None;
    let mut next = 0;
    let learned: Arc<Mutex<Vec<redis::Client>>> = Arc::default();
    let within = nodes.reply_within();
    loop {
        // Connect only when someone watches, or the cache holds a card.
        if pending.is_empty() && lock(&watchers).is_empty() && tracked.is_empty() {
            match commands.recv().await {
                Some(c) => pending.push(c),
                None => return,
            }
        }
        let Some((pubsub, client)) = connect(&nodes, &learned, &mut next).await else {
            tracing::debug!("change feed cannot connect to any node; retrying");
            end_watches_after(OUTAGE_ENDS_WATCHES, &watchers, lost, &mut down_since);
            if !hold_for(RETRY_EVERY, &mut commands, &mut pending, &mut tracked).await {
                return;
            }
            continue;
        };
        let (mut sink, mut stream) = pubsub.split();
        let mut channels: std::collections::HashSet<String> =
            lock(&watchers).keys().cloned().collect();
        channels.extend(tracked.keys().cloned());
        let channels: Vec<String> = channels.into_iter().collect();
        if !channels.is_empty() {
            // A node that answers nothing is passed over like one that refuses (`next` moved
            // past it).
            if !matches!(
                tokio::time::timeout(within, sink.subscribe(&channels)).await,
                Ok(Ok(()))
            ) {
                tracing::debug!(node = %address(&client), "change feed cannot subscribe; trying another node");
                end_watches_after(OUTAGE_ENDS_WATCHES, &watchers, lost, &mut down_since);
                if !hold_for(RETRY_EVERY, &mut commands, &mut pending, &mut tracked).await {
                    return;
                }
                continue;
            }
            if let Some(cache) = cache {
                for (card, slot) in tracked.values() {
                    cache.subscribed(*card, *slot);
                }
            }
            // Changes published while the connection was down were missed.
            if lost {
                for (sender, _) in lock(&watchers).values() {
                    let _ = sender.send(FeedItem::Resync);
                }
            }
        }
        // Connected, and every channel followed subscribed: the outage (if any) is over.
        down_since = None;
        if lost {
            tracing::warn!(node = %address(&client), "change feed subscribed again");
        } else {
            tracing::info!(node = %address(&client), "change feed subscribed");
        }
        let held = std::mem::take(&mut pending);
        if let Err(left) = apply_all(&mut sink, held, &watchers, &mut tracked, cache, within).await
        {
            pending = left;
            lose(
                &client,
                cache,
                &mut lost,
                &mut down_since,
                "does not answer SUBSCRIBE",
            );
            continue;
        }
        if let Some(make) = &nodes.learn {
            tokio::spawn(learn(
                client.clone(),
                make.clone(),
                nodes.timeout,
                learned.clone(),
            ));
        }
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(c) => {
                        // Whatever else is queued goes with it: a burst of new watches is
                        // subscribed in a few round trips, not one each.
                        let mut batch = vec![c];
                        while batch.len() < MAX_BATCH {
                            match commands.try_recv() {
                                Some(c) => batch.push(c),
                                None => break,
                            }
                        }
                        let applied =
                            apply_all(&mut sink, batch, &watchers, &mut tracked, cache, within)
                                .await;
                        if let Err(left) = applied {
                            pending = left;
                            lose(&client, cache, &mut lost, &mut down_since, "does not answer (UN)SUBSCRIBE");
                            break;
                        }
                    }
                    None => return,
                },
                message = stream.next() => match message {
                    Some(m) => deliver(&m, &watchers, &tracked, cache),
                    None => {
                        lose(&client, cache, &mut lost, &mut down_since, "connection lost");
                        break;
                    }
                },
                _ = ping.tick() => {
                    let pong = tokio::time::timeout(within, sink.ping::<redis::Value>()).await;
                    if !matches!(pong, Ok(Ok(_))) {
                        lose(&client, cache, &mut lost, &mut down_since, "does not answer PING");
                        break;
                    }
                }
            }
        }
    }
}

/// After an attempt to subscribe again failed: once the feed has been without a connection
/// for `limit` since it lost one (`lost`: it had one), every watch ends. Sent after each failed
/// attempt from then on, so that a watch opened meanwhile and confirmed before the next
/// attempt ends too (one confirmed later drops what came before: `Feed::watch`).
fn end_watches_after(
    limit: Duration,
    watchers: &Watchers,
    lost: bool,
    down_since: &mut Option<tokio::time::Instant>,
) {
    if !lost {
        return;
    }
    let since = *down_since.get_or_insert_with(tokio::time::Instant::now);
    if since.elapsed() >= limit {
        for (sender, _) in lock(watchers).values() {
            let _ = sender.send(FeedItem::Gone);
        }
    }
}

/// The connection to `client`'s node is given up (`why`): the cache stops serving (changes may
/// be missed from now on), and the next connection tells the watchers to read again.
fn lose(
    client: &redis::Client,
    cache: Option<&RecordCache>,
    lost: &mut bool,
    down_since: &mut Option<tokio::time::Instant>,
    why: &str,
) {
    tracing::warn!(node = %address(client), why, "change feed node lost; subscribing through another node");
    if let Some(cache) = cache {
        cache.disconnected();
    }
    *lost = true;
    // The outage counts from here, not from the first failed attempt after it.
    down_since.get_or_insert_with(tokio::time::Instant::now);
}

/// Waits `pause` before the next attempt to connect, taking in the commands that arrive
/// meanwhile ([`hold`]); `false`: the feed was dropped.
async fn hold_for(
    pause: Duration,
    commands: &mut Inbox,
    pending: &mut Vec<Command>,
    tracked: &mut Tracked,
) -> bool {
    for command in std::mem::take(pending) {
        hold(pending, command, tracked);
    }
    let until = tokio::time::sleep(pause);
    tokio::pin!(until);
    loop {
        tokio::select! {
            () = &mut until => return true,
            command = commands.recv() => match command {
                Some(c) => hold(pending, c, tracked),
                None => return false,
            },
        }
    }
}

/// Takes in `command` while no connection holds the subscriptions: it changes only what the
/// next connection subscribes (every watched and tracked channel). Queued instead, the
/// commands would grow for as long as Redis is out of reach (each read of another card tracks
/// it); held like this they cost what the cache holds (its capacity) and the watches waiting
/// for their subscription (each gives up within seconds).
fn hold(pending: &mut Vec<Command>, command: Command, tracked: &mut Tracked) {
    match command {
        Command::Track(channel, card, slot) => {
            tracked.insert(channel, (card, slot));
        }
        Command::Untrack(channel, slot) => {
            if tracked.get(&channel).is_some_and(|(_, s)| *s == slot) {
                tracked.remove(&channel);
            }
        }
        // Nothing is subscribed, and the watchers' map no longer names the channel: the
        // subscriptions asked for it before were its watchers', all gone.
        Command::Unsubscribe(channel) => {
            pending.retain(|c| !matches!(c, Command::Subscribe(named, _) if *named == channel));
        }
        Command::Subscribe(channel, done) => {
            if pending.len() >= MAX_BATCH {
                pending.retain(|c| !matches!(c, Command::Subscribe(_, d) if d.is_closed()));
            }
            pending.push(Command::Subscribe(channel, done));
        }
    }
}

/// The most commands taken off the queue at once (one SUBSCRIBE of at most as many channels).
const MAX_BATCH: usize = 512;

/// Applies `batch` in order, each run of consecutive subscriptions (watches and cache slots) as
/// one SUBSCRIBE: each is confirmed once that command is. `Err`: the node did not answer within
/// `within`; what is left to do (the unconfirmed watches, the commands not reached) waits for
/// the next connection.
async fn apply_all(
    sink: &mut redis::aio::PubSubSink,
    batch: Vec<Command>,
    watchers: &Watchers,
    tracked: &mut Tracked,
    cache: Option<&RecordCache>,
    within: Duration,
) -> Result<(), Vec<Command>> {
    let mut run = Subscriptions::default();
    let mut batch = batch.into_iter();
    while let Some(command) = batch.next() {
        let step = match command {
            Command::Subscribe(channel, done) => {
                run.add(channel.clone());
                run.done.push((channel, done));
                Ok(())
            }
            Command::Track(channel, card, slot) => {
                tracked.insert(channel.clone(), (card, slot));
                run.add(channel);
                run.tracked.push((card, slot));
                Ok(())
            }
            Command::Unsubscribe(channel) => match run.subscribe(sink, cache, within).await {
                Ok(()) => release(sink, channel, None, watchers, tracked, within).await,
                Err(mut left) => {
                    // After the subscriptions carried over, so that the next connection does
                    // not keep a channel nobody follows.
                    left.push(Command::Unsubscribe(channel));
                    Err(left)
                }
            },
            Command::Untrack(channel, slot) => match run.subscribe(sink, cache, within).await {
                Ok(()) => release(sink, channel, Some(slot), watchers, tracked, within).await,
                Err(mut left) => {
                    // The slot's release still holds for the next connection.
                    left.push(Command::Untrack(channel, slot));
                    Err(left)
                }
            },
        };
        if let Err(mut left) = step {
            left.extend(batch);
            return Err(left);
        }
    }
    run.subscribe(sink, cache, within).await
}

/// A run of subscriptions waiting to be sent as one SUBSCRIBE.
#[derive(Default)]
struct Subscriptions {
    channels: Vec<String>,
    /// The same channels, to name each once.
    named: std::collections::HashSet<String>,
    /// The watches waiting for the command, with their channel.
    done: Vec<(String, oneshot::Sender<()>)>,
    /// The cache's slots waiting for it.
    tracked: Vec<(CardContractId, u64)>,
}

impl Subscriptions {
    fn add(&mut self, channel: String) {
        if self.named.insert(channel.clone()) {
            self.channels.push(channel);
        }
    }

    /// Sends the SUBSCRIBE and tells those waiting. On an error (a lost connection, which the
    /// stream reports) they are not told: a watch then gives up, the cache's slot stays
    /// unconfirmed until the feed subscribes again. `Err`: no answer within `within`; the
    /// watches wait for the next connection (the cache's slots are in `tracked`, which it
    /// subscribes).
    async fn subscribe(
        &mut self,
        sink: &mut redis::aio::PubSubSink,
        cache: Option<&RecordCache>,
        within: Duration,
    ) -> Result<(), Vec<Command>> {
        if self.channels.is_empty() {
            return Ok(());
        }
        let run = std::mem::take(self);
        match tokio::time::timeout(within, sink.subscribe(&run.channels)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Ok(()),
            Err(_) => {
                return Err(run
                    .done
                    .into_iter()
                    .map(|(channel, done)| Command::Subscribe(channel, done))
                    .collect());
            }
        }
        for (_, done) in run.done {
            let _ = done.send(());
        }
        if let Some(cache) = cache {
            for (card, slot) in run.tracked {
                cache.subscribed(card, slot);
            }
        }
        Ok(())
    }
}

/// A watch or a cache slot let `channel` go: it is unsubscribed unless a watcher follows it
/// still (or again) or the cache holds it; `slot`: the cache's release of that slot. `Err`: the
/// UNSUBSCRIBE got no answer within `within` (nothing is left to do: the next connection
/// subscribes only what is followed).
async fn release(
    sink: &mut redis::aio::PubSubSink,
    channel: String,
    slot: Option<u64>,
    watchers: &Watchers,
    tracked: &mut Tracked,
    within: Duration,
) -> Result<(), Vec<Command>> {
    if let Some(slot) = slot {
        // Only the slot's own release: the card may be cached again in a newer slot.
        if tracked.get(&channel).is_none_or(|(_, s)| *s != slot) {
            return Ok(());
        }
        tracked.remove(&channel);
    }
    if !lock(watchers).contains_key(&channel) && !tracked.contains_key(&channel) {
        let unsubscribed = tokio::time::timeout(within, sink.unsubscribe(&channel)).await;
        if unsubscribed.is_err() {
            return Err(Vec::new());
        }
    }
    Ok(())
}

fn deliver(
    message: &redis::Msg,
    watchers: &Watchers,
    tracked: &Tracked,
    cache: Option<&RecordCache>,
) {
    let channel = message.get_channel_name().to_owned();
    let record = message
        .get_payload::<String>()
        .ok()
        .and_then(|payload| serde_json::from_str::<EnrollmentRecord>(&payload).ok());
    let Some(record) = record else {
        // A change was made that this process cannot read (another version's record): its
        // watchers and cache must not stay on the state before it. They read the record
        // again; a watch whose re-read finds it unreadable ends UNAVAILABLE.
        tracing::warn!("change feed: unreadable record; its card is read again");
        if let (Some(cache), Some((card, _))) = (cache, tracked.get(&channel)) {
            cache.forget(*card);
        }
        if let Some((sender, _)) = lock(watchers).get(&channel) {
            let _ = sender.send(FeedItem::Resync);
        }
        return;
    };
    if let Some(cache) = cache {
        cache.published(&record);
    }
    if let Some((sender, _)) = lock(watchers).get(&channel) {
        let _ = sender.send(FeedItem::Record(Arc::new(record)));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn held_commands_leave_what_the_next_connection_must_subscribe() {
        let card = |i: i64| CardContractId::new(i).unwrap();
        let mut pending = Vec::new();
        let mut tracked = Tracked::new();
        // The cache's slots: taken, let go, taken again in a newer slot, a stale release.
        hold(
            &mut pending,
            Command::Track("a".into(), card(1), 1),
            &mut tracked,
        );
        hold(&mut pending, Command::Untrack("a".into(), 1), &mut tracked);
        hold(
            &mut pending,
            Command::Track("b".into(), card(2), 2),
            &mut tracked,
        );
        hold(
            &mut pending,
            Command::Track("b".into(), card(2), 3),
            &mut tracked,
        );
        hold(&mut pending, Command::Untrack("b".into(), 2), &mut tracked);
        assert_eq!(tracked.len(), 1);
        assert_eq!(tracked.get("b"), Some(&(card(2), 3)));
        // A watch that left while waiting, and one that waits still.
        let (gone, _) = oneshot::channel();
        let (waiting, _keep) = oneshot::channel();
        hold(
            &mut pending,
            Command::Subscribe("c".into(), gone),
            &mut tracked,
        );
        hold(&mut pending, Command::Unsubscribe("c".into()), &mut tracked);
        hold(
            &mut pending,
            Command::Subscribe("d".into(), waiting),
            &mut tracked,
        );
        let held: Vec<&str> = pending
            .iter()
            .map(|c| match c {
                Command::Subscribe(channel, _) => channel.as_str(),
                _ => "other",
            })
            .collect();
        assert_eq!(held, ["d"]);
    }

    #[tokio::test]
    async fn commands_sent_while_no_node_answers_do_not_pile_up() {
        // A port nothing listens on: every connection is refused.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
        let feed = Feed::start(Nodes::single(client, Duration::from_millis(100)), None);
        // A walk over card ids during an outage: each read tracks its card, each eviction
        // lets one go.
        for i in 0..20_000_u64 {
            let card = CardContractId::new(i as i64 + 1).unwrap();
            let channel = format!("changes:{i}");
            feed.track(channel.clone(), card, i);
            feed.untrack(channel, i);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let queued = feed.commands.queued.load(Ordering::Relaxed);
            if queued == 0 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{queued} commands still queued 5 s after they were sent"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[test]
    fn live_nodes_skip_failed_handshaking_and_addressless_nodes() {
        let answer = "\
a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
b2 127.0.0.1:7001@17001,node-b master,fail - 1 2 2 disconnected
c3 127.0.0.1:7002@17002 slave,fail? a1 1 2 3 connected
d4 127.0.0.1:7003@17003 slave a1 0 3 1 connected
e5 :0@0 master,noaddr - 0 0 0 disconnected
f6 10.0.0.9:7004@17004 handshake - 0 0 0 disconnected
";
        assert_eq!(live_nodes(answer), ["127.0.0.1:7000", "127.0.0.1:7003"]);
    }
}
