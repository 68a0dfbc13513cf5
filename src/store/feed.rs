//! The change feed over Redis pub/sub: one subscriber connection per process, one channel per
//! watched card, subscribed while at least one local watcher follows the card and unsubscribed
//! when the last one leaves, re-subscribed after a reconnect.

use super::StoreError;
use crate::domain::EnrollmentRecord;
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
}

/// What a watcher receives: a new version of the record, or word that changes may have been
/// missed (a reconnect, a slow watcher) and the record must be read again.
// One per published change, moved straight on to the watcher.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum FeedItem {
    /// The record as written.
    Record(EnrollmentRecord),
    /// Read the record again.
    Resync,
}

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
    /// Starts the subscriber task on `client` (connects when the first card is watched).
    pub fn start(client: redis::Client) -> Self {
        let (commands, rx) = mpsc::unbounded_channel();
        let watchers: Watchers = Arc::default();
        tokio::spawn(run(client, rx, watchers.clone()));
        Self { commands, watchers }
    }

    /// The changes published on `channel` from now on.
    pub async fn watch(
        &self,
        channel: String,
    ) -> Result<Pin<Box<dyn Stream<Item = FeedItem> + Send>>, StoreError> {
        let (receiver, first) = {
            let mut watchers = lock(&self.watchers);
            let entry = watchers
                .entry(channel.clone())
                .or_insert_with(|| (broadcast::channel(256).0, 0));
            entry.1 += 1;
            (entry.0.subscribe(), entry.1 == 1)
        };
        let guard = Guard {
            channel: channel.clone(),
            watchers: self.watchers.clone(),
            commands: self.commands.clone(),
        };
        if first {
            let (done, subscribed) = oneshot::channel();
            let _ = self.commands.send(Command::Subscribe(channel, done));
            // Wait for SUBSCRIBE to be in force, so that no change after this call is missed.
            match tokio::time::timeout(Duration::from_secs(5), subscribed).await {
                Ok(Ok(())) => {}
                _ => {
                    return Err(StoreError::Unavailable(
                        "cannot subscribe to the change feed".into(),
                    ));
                }
            }
        }
        Ok(Box::pin(Watched {
            inner: tokio_stream::wrappers::BroadcastStream::new(receiver),
            _guard: guard,
        }))
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

struct Watched {
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

async fn run(
    client: redis::Client,
    mut commands: mpsc::UnboundedReceiver<Command>,
    watchers: Watchers,
) {
    let mut pending: Vec<Command> = Vec::new();
    // Whether a connection was lost: the next one tells the watchers to read again.
    let mut lost = false;
    loop {
        // Connect only when someone watches.
        if pending.is_empty() && lock(&watchers).is_empty() {
            match commands.recv().await {
                Some(c) => pending.push(c),
                None => return,
            }
        }
        let pubsub = match client.get_async_pubsub().await {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(error = %e, "change feed cannot connect; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let (mut sink, mut stream) = pubsub.split();
        let channels: Vec<String> = lock(&watchers).keys().cloned().collect();
        if !channels.is_empty() {
            if sink.subscribe(&channels).await.is_err() {
                continue;
            }
            // Changes published while the connection was down were missed.
            if lost {
                for (sender, _) in lock(&watchers).values() {
                    let _ = sender.send(FeedItem::Resync);
                }
            }
        }
        for command in pending.drain(..) {
            apply(&mut sink, command, &watchers).await;
        }
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(c) => apply(&mut sink, c, &watchers).await,
                    None => return,
                },
                message = stream.next() => match message {
                    Some(m) => deliver(&m, &watchers),
                    None => {
                        tracing::warn!("change feed connection lost; reconnecting");
                        lost = true;
                        break;
                    }
                },
            }
        }
    }
}

async fn apply(sink: &mut redis::aio::PubSubSink, command: Command, watchers: &Watchers) {
    match command {
        Command::Subscribe(channel, done) => {
            if sink.subscribe(&channel).await.is_ok() {
                let _ = done.send(());
            }
        }
        Command::Unsubscribe(channel) => {
            // A watcher may have come back meanwhile.
            if !lock(watchers).contains_key(&channel) {
                let _ = sink.unsubscribe(&channel).await;
            }
        }
    }
}

fn deliver(message: &redis::Msg, watchers: &Watchers) {
    let channel = message.get_channel_name().to_owned();
    let Ok(payload) = message.get_payload::<String>() else {
        return;
    };
    let Ok(record) = serde_json::from_str::<EnrollmentRecord>(&payload) else {
        tracing::warn!("change feed: unreadable record");
        return;
    };
    if let Some((sender, _)) = lock(watchers).get(&channel) {
        let _ = sender.send(FeedItem::Record(record));
    }
}
