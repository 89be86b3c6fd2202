//! Fanout shards: one per fanout core. A shard receives every persisted batch from the sequencer and
//! hands each event (a complete websocket frame, encoded once) to each live subscriber's bounded
//! queue; subscribers behind the live tail read from the store instead ([`replay`]). The rules a
//! subscriber lives by are in [`subscriber`].

mod queue;
mod replay;
mod subscriber;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use glommio::TaskQueueHandle;
use glommio::channels::shared_channel::SharedReceiver;
use storage::Store;
use wire::RelaySeq;

use crate::messages::PublishedBatch;
use crate::metrics::Metrics;

pub use queue::Outgoing;
pub use subscriber::SubscriberInfo;

/// Fanout settings.
#[derive(Debug, Clone, Copy)]
pub struct FanoutConfig {
    /// Frames queued per live subscriber; when the publisher finds the queue full, the subscriber
    /// goes back to reading from the store. Default 10,000. It should hold at least one sequencer
    /// batch ([`crate::sequencer::SequencerConfig::max_batch_events`]), or a burst alone sends a
    /// subscriber that keeps up back to the store. Queued frames are shared, so a slot costs a
    /// pointer, not a frame.
    pub subscriber_queue: usize,
    /// Most events read from the store per replay chunk. Default 2,000; 1 and up.
    pub replay_chunk_events: usize,
    /// Bytes of events read per replay chunk (a chunk holds at least one event, whatever its size).
    /// Default 1 MiB; 1 and up.
    pub replay_chunk_bytes: usize,
    /// Bytes of replay chunks this shard holds at once, across its subscribers; more replays wait.
    /// Default 256 MiB.
    pub replay_memory_bytes: u64,
    /// A subscriber whose socket accepts nothing for this long is closed. Default 30 s.
    pub stall_timeout: Duration,
}

impl Default for FanoutConfig {
    fn default() -> Self {
        Self {
            subscriber_queue: 10_000,
            replay_chunk_events: 2_000,
            replay_chunk_bytes: 1 << 20,
            replay_memory_bytes: 256 << 20,
            stall_timeout: Duration::from_secs(30),
        }
    }
}

/// Every subscriber of every fanout shard (replaying or live), for the admin API: one per process,
/// shared by the shards. Changed only on connect and disconnect.
#[derive(Debug, Default)]
pub struct SubscriberDirectory {
    next_id: AtomicU64,
    subscribers: Mutex<BTreeMap<u64, SubscriberInfo>>,
}

impl SubscriberDirectory {
    /// Lists `info` until the returned guard is dropped.
    pub fn add(&self, info: SubscriberInfo) -> Listed<'_> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.subscribers.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(id, info);
        Listed { directory: self, id }
    }

    /// Connected subscribers with their ids, in connection order.
    pub fn list(&self) -> Vec<(u64, SubscriberInfo)> {
        let subscribers = self.subscribers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        subscribers.iter().map(|(id, info)| (*id, info.clone())).collect()
    }
}

/// Keeps a subscriber in its [`SubscriberDirectory`] while alive.
pub struct Listed<'a> {
    directory: &'a SubscriberDirectory,
    id: u64,
}

impl Drop for Listed<'_> {
    fn drop(&mut self) {
        let mut subscribers = self.directory.subscribers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        subscribers.remove(&self.id);
    }
}

struct Registered {
    queue: Rc<queue::Queue>,
}

/// A fanout shard (single-threaded: lives on one executor).
pub struct FanoutShard {
    config: FanoutConfig,
    store: Arc<Store>,
    metrics: Metrics,
    /// The highest relay seq published to this shard; every event at or below it is in the store.
    head: Cell<u64>,
    /// The last durable relay seq, set by the sequencer (may be ahead of `head`).
    committed: Arc<AtomicU64>,
    live: RefCell<BTreeMap<u64, Registered>>,
    next_id: Cell<u64>,
    directory: Arc<SubscriberDirectory>,
    /// The task queue replays run in (fewer shares than live delivery); `None`: the caller's.
    replay_tq: Cell<Option<TaskQueueHandle>>,
    /// Bytes of replay chunks in flight ([`FanoutConfig::replay_memory_bytes`]).
    replay_budget: glommio::sync::Semaphore,
}

impl FanoutShard {
    /// A shard whose head starts at the store's last seq (everything stored is replayable).
    /// `committed` is the sequencer's last durable seq; `directory` lists subscribers across shards.
    ///
    /// # Errors
    /// [`storage::StoreError`] when the store cannot be read.
    pub fn new(
        config: FanoutConfig,
        store: Arc<Store>,
        metrics: Metrics,
        committed: Arc<AtomicU64>,
        directory: Arc<SubscriberDirectory>,
    ) -> Result<Rc<Self>, storage::StoreError> {
        let head = store.last_seq()?.map_or(0, |s| s.0);
        Ok(Rc::new(Self {
            config,
            store,
            metrics,
            head: Cell::new(head),
            committed,
            live: RefCell::new(BTreeMap::new()),
            next_id: Cell::new(1),
            directory,
            replay_tq: Cell::new(None),
            replay_budget: glommio::sync::Semaphore::new(config.replay_memory_bytes.max(1)),
        }))
    }

    /// Runs replays in `tq` (created with fewer shares than the live queue, so catch-up reading
    /// never starves live delivery).
    pub fn set_replay_queue(&self, tq: TaskQueueHandle) {
        self.replay_tq.set(Some(tq));
    }

    /// The store (for the API's point reads on this core).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The highest relay seq published to this shard.
    pub fn head(&self) -> RelaySeq {
        RelaySeq(self.head.get())
    }

    /// The last durable relay seq (the relay's head, whichever shard asks).
    pub fn committed(&self) -> RelaySeq {
        RelaySeq(self.committed.load(Ordering::Acquire).max(self.head.get()))
    }

    /// Every subscriber of every shard (see [`SubscriberDirectory`]).
    pub fn directory(&self) -> &SubscriberDirectory {
        &self.directory
    }

    /// Receives batches from the sequencer and queues them for every live subscriber, until the
    /// sequencer goes away.
    pub async fn run_publisher(self: Rc<Self>, from_sequencer: SharedReceiver<PublishedBatch>) {
        let rx = from_sequencer.connect().await;
        while let Some(batch) = rx.recv().await {
            self.publish(&batch);
            // Let the subscribers' writers drain their queues before the next batch: with batches
            // already waiting, `recv` would otherwise return at once, batch after batch.
            futures_lite::future::yield_now().await;
        }
    }

    fn publish(&self, batch: &PublishedBatch) {
        let Some((last, _)) = batch.last() else {
            return;
        };
        self.head.set(last.0);
        let mut live = self.live.borrow_mut();
        live.retain(|_, sub| {
            for (seq, frame) in batch.iter() {
                if sub.queue.push(Outgoing::Event(*seq, frame.clone())).is_err() {
                    // Full: the subscriber's own task goes back to the store.
                    sub.queue.mark_behind();
                    return false;
                }
            }
            true
        });
    }

    fn register(&self, queue: Rc<queue::Queue>) -> u64 {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        self.live.borrow_mut().insert(id, Registered { queue });
        id
    }

    fn unregister(&self, id: u64) {
        self.live.borrow_mut().remove(&id);
    }
}
