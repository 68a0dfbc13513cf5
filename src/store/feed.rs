//! The change feed over Redis pub/sub: one subscriber connection per process, one channel per
//! watched card, subscribed while at least one local watcher follows the card and unsubscribed
//! when the last one leaves, re-subscribed after a reconnect.
//!
//! In a cluster, classic PUBLISH reaches the subscribers of every node, so the connection may
//! be held by any live node: when it is lost (the node died, or stopped answering PING) the
//! feed subscribes again through the next node that answers — the seed nodes of `redis.url`
//! in turn, then the nodes learned from `CLUSTER NODES` — and every watcher reads its record
//! again, since changes published meanwhile were missed.
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
}

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
    /// Bounds each connection attempt, and each PING on the connection.
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

type Watchers = Arc<Mutex<HashMap<String, (broadcast::Sender<FeedItem>, usize)>>>;

/// The feed of one process.
pub struct Feed {
    commands: mpsc::UnboundedSender<Command>,
    watchers: Watchers,
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
        let (commands, rx) = mpsc::unbounded_channel();
        let watchers: Watchers = Arc::default();
        tokio::spawn(run(nodes, rx, watchers.clone(), cache));
        Self { commands, watchers }
    }

    /// Subscribes `channel` for the cache's `slot` of `card`; the cache is told once it is in
    /// force ([`RecordCache::subscribed`]). Does not wait.
    pub fn track(&self, channel: String, card: CardContractId, slot: u64) {
        let _ = self.commands.send(Command::Track(channel, card, slot));
    }

    /// The cache let `slot` go: its channel is unsubscribed unless a watcher follows it.
    pub fn untrack(&self, channel: String, slot: u64) {
        let _ = self.commands.send(Command::Untrack(channel, slot));
    }

    /// The changes published on `channel` from now on.
    pub async fn watch(&self, channel: String) -> Result<Watched, StoreError> {
        let receiver = {
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
        let _ = self.commands.send(Command::Subscribe(channel, done));
        match tokio::time::timeout(Duration::from_secs(5), subscribed).await {
            Ok(Ok(())) => {}
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
    commands: mpsc::UnboundedSender<Command>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let mut watchers = lock(&self.watchers);
        if let Some(entry) = watchers.get_mut(&self.channel) {
            entry.1 -= 1;
            if entry.1 == 0 {
                watchers.remove(&self.channel);
                let _ = self
                    .commands
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
    mut commands: mpsc::UnboundedReceiver<Command>,
    watchers: Watchers,
    cache: Option<Arc<RecordCache>>,
) {
    let cache = cache.as_deref();
    let mut tracked = Tracked::new();
    let mut pending: Vec<Command> = Vec::new();
    // Whether a connection was lost: the next one tells the watchers to read again.
    let mut lost = false;
    let mut next = 0;
    let learned: Arc<Mutex<Vec<redis::Client>>> = Arc::default();
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
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        let (mut sink, mut stream) = pubsub.split();
        let mut channels: std::collections::HashSet<String> =
            lock(&watchers).keys().cloned().collect();
        channels.extend(tracked.keys().cloned());
        let channels: Vec<String> = channels.into_iter().collect();
        if !channels.is_empty() {
            if sink.subscribe(&channels).await.is_err() {
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
        if lost {
            tracing::warn!(node = %address(&client), "change feed subscribed again");
        } else {
            tracing::info!(node = %address(&client), "change feed subscribed");
        }
        apply_all(
            &mut sink,
            std::mem::take(&mut pending),
            &watchers,
            &mut tracked,
            cache,
        )
        .await;
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
                                Ok(c) => batch.push(c),
                                Err(_) => break,
                            }
                        }
                        apply_all(&mut sink, batch, &watchers, &mut tracked, cache).await;
                    }
                    None => return,
                },
                message = stream.next() => match message {
                    Some(m) => deliver(&m, &watchers, cache),
                    None => {
                        tracing::warn!(node = %address(&client), "change feed connection lost; subscribing through another node");
                        if let Some(cache) = cache {
                            cache.disconnected();
                        }
                        lost = true;
                        break;
                    }
                },
                _ = ping.tick() => {
                    let pong = tokio::time::timeout(
                        nodes.timeout.max(Duration::from_secs(1)),
                        sink.ping::<redis::Value>(),
                    )
                    .await;
                    if !matches!(pong, Ok(Ok(_))) {
                        tracing::warn!(node = %address(&client), "change feed node does not answer PING; subscribing through another node");
                        if let Some(cache) = cache {
                            cache.disconnected();
                        }
                        lost = true;
                        break;
                    }
                }
            }
        }
    }
}

/// The most commands taken off the queue at once (one SUBSCRIBE of at most as many channels).
const MAX_BATCH: usize = 512;

/// Applies `batch` in order, each run of consecutive subscriptions (watches and cache slots) as
/// one SUBSCRIBE: each is confirmed once that command is.
async fn apply_all(
    sink: &mut redis::aio::PubSubSink,
    batch: Vec<Command>,
    watchers: &Watchers,
    tracked: &mut Tracked,
    cache: Option<&RecordCache>,
) {
    let mut run = Subscriptions::default();
    for command in batch {
        match command {
            Command::Subscribe(channel, done) => {
                run.add(channel);
                run.done.push(done);
            }
            Command::Track(channel, card, slot) => {
                tracked.insert(channel.clone(), (card, slot));
                run.add(channel);
                run.tracked.push((card, slot));
            }
            Command::Unsubscribe(channel) => {
                run.subscribe(sink, cache).await;
                release(sink, channel, None, watchers, tracked).await;
            }
            Command::Untrack(channel, slot) => {
                run.subscribe(sink, cache).await;
                release(sink, channel, Some(slot), watchers, tracked).await;
            }
        }
    }
    run.subscribe(sink, cache).await;
}

/// A run of subscriptions waiting to be sent as one SUBSCRIBE.
#[derive(Default)]
struct Subscriptions {
    channels: Vec<String>,
    /// The same channels, to name each once.
    named: std::collections::HashSet<String>,
    /// The watches waiting for the command.
    done: Vec<oneshot::Sender<()>>,
    /// The cache's slots waiting for it.
    tracked: Vec<(CardContractId, u64)>,
}

impl Subscriptions {
    fn add(&mut self, channel: String) {
        if self.named.insert(channel.clone()) {
            self.channels.push(channel);
        }
    }

    /// Sends the SUBSCRIBE and tells those waiting; on failure (a lost connection, which the
    /// stream reports) they are not told: a watch then gives up, the cache's slot stays
    /// unconfirmed until the feed subscribes again.
    async fn subscribe(&mut self, sink: &mut redis::aio::PubSubSink, cache: Option<&RecordCache>) {
        if self.channels.is_empty() {
            return;
        }
        let run = std::mem::take(self);
        if sink.subscribe(&run.channels).await.is_err() {
            return;
        }
        for done in run.done {
            let _ = done.send(());
        }
        if let Some(cache) = cache {
            for (card, slot) in run.tracked {
                cache.subscribed(card, slot);
            }
        }
    }
}

/// A watch or a cache slot let `channel` go: it is unsubscribed unless a watcher follows it
/// still (or again) or the cache holds it; `slot`: the cache's release of that slot.
async fn release(
    sink: &mut redis::aio::PubSubSink,
    channel: String,
    slot: Option<u64>,
    watchers: &Watchers,
    tracked: &mut Tracked,
) {
    if let Some(slot) = slot {
        // Only the slot's own release: the card may be cached again in a newer slot.
        if tracked.get(&channel).is_none_or(|(_, s)| *s != slot) {
            return;
        }
        tracked.remove(&channel);
    }
    if !lock(watchers).contains_key(&channel) && !tracked.contains_key(&channel) {
        let _ = sink.unsubscribe(&channel).await;
    }
}

fn deliver(message: &redis::Msg, watchers: &Watchers, cache: Option<&RecordCache>) {
    let channel = message.get_channel_name().to_owned();
    let Ok(payload) = message.get_payload::<String>() else {
        return;
    };
    let Ok(record) = serde_json::from_str::<EnrollmentRecord>(&payload) else {
        tracing::warn!("change feed: unreadable record");
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
    use super::live_nodes;

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
