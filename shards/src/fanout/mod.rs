//! Fanout shards: one per fanout core. A shard receives every persisted batch from the sequencer and
//! hands each event (a complete websocket frame, encoded once) to each live subscriber's bounded
//! queue; subscribers behind the live tail read from the store instead (`replay`). The rules a
//! subscriber lives by are in `subscriber`.

mod directory;
pub mod jet;
pub mod pace;
mod queue;
mod send;
mod session;
mod subscriber;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use glommio::TaskQueueHandle;
use glommio::channels::shared_channel::SharedReceiver;
use storage::Store;
use wire::RelaySeq;

use crate::messages::PublishedBatch;
use crate::metrics::Metrics;

pub use directory::{Listed, SubscriberDirectory, SubscriberProgress, SubscriberView};
pub use jet::{JetFormat, JetRequest, JetStart};
pub use queue::Outgoing;
pub(crate) use subscriber::End;
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
    /// Most events read from the store per replay chunk. Default 8,000; 1 and up.
    pub replay_chunk_events: usize,
    /// Bytes of events read per replay chunk (a chunk holds at least one event, whatever its size).
    /// Default 4 MiB; 1 and up. Measured (bench/README.md): replay of a 1M-event store beside live
    /// load at 221,581 events/s with 4 MiB and 8,000 events, 188,314 with 1 MiB and 2,000.
    pub replay_chunk_bytes: usize,
    /// Bytes of replay chunks this shard holds at once, across its subscribers; more replays wait.
    /// Default 256 MiB.
    pub replay_memory_bytes: u64,
    /// A subscriber whose socket accepts nothing for this long is closed. Default 30 s.
    pub stall_timeout: Duration,
    /// Shortest time between two publishes: batches arriving within it are published together, so
    /// each subscriber wakes and writes once for them. A batch after a quiet spell is published at
    /// once. `None` (default): [`auto_coalesce`] of the shard's subscribers; zero publishes each
    /// batch as it arrives.
    pub coalesce: Option<Duration>,
    /// This shard's index (0-based): the `shard` label of its metrics. Default 0.
    pub shard: usize,
}

impl Default for FanoutConfig {
    fn default() -> Self {
        Self {
            subscriber_queue: 10_000,
            replay_chunk_events: 8_000,
            replay_chunk_bytes: 4 << 20,
            replay_memory_bytes: 256 << 20,
            stall_timeout: Duration::from_secs(30),
            coalesce: None,
            shard: 0,
        }
    }
}

/// The automatic coalescing interval for `subscribers` subscribers of a shard: 100 µs each, at most
/// 20 ms. What a publish costs grows with the subscribers (a wake-up and a write each), and so does
/// what coalescing saves; a relay with few subscribers keeps its latency. Measured in
/// bench/README.md (performance): 200 subscribers × 500 events/s took 87% of a core with every batch
/// published, 36% with 20 ms.
pub fn auto_coalesce(subscribers: usize) -> Duration {
    Duration::from_micros(100 * subscribers as u64).min(Duration::from_millis(20))
}

struct Registered {
    queue: Rc<queue::Queue>,
    progress: Arc<SubscriberProgress>,
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
    /// Live Jetstream subscribers ([`jet`]).
    jet_live: RefCell<BTreeMap<u64, jet::JetRegistered>>,
    /// This shard's Jetstream compressor; `None` if zstd could not start (compressed subscriptions
    /// are then refused).
    codec: Option<jet::codec::Codec>,
    next_id: Cell<u64>,
    directory: Arc<SubscriberDirectory>,
    /// The task queue replays run in (fewer shares than live delivery); `None`: the caller's.
    replay_tq: Cell<Option<TaskQueueHandle>>,
    /// Bytes of replay chunks in flight ([`FanoutConfig::replay_memory_bytes`]).
    replay_budget: glommio::sync::Semaphore,
    /// Subscribers this shard serves (live and replaying).
    serving: Cell<usize>,
    /// The relay is shutting down: every subscriber is being closed.
    closing: Cell<bool>,
    /// Bumped when a splitter's store is cut back ([`crate::messages::Published::reset`]): a
    /// subscriber that started before ends.
    epoch: Cell<u64>,
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
            jet_live: RefCell::new(BTreeMap::new()),
            codec: jet::codec::Codec::new()
                .inspect_err(|e| tracing::error!(error = %e, "zstd unavailable: compressed Jetstream refused"))
                .ok(),
            next_id: Cell::new(1),
            directory,
            replay_tq: Cell::new(None),
            replay_budget: glommio::sync::Semaphore::new(config.replay_memory_bytes.max(1)),
            serving: Cell::new(0),
            closing: Cell::new(false),
            epoch: Cell::new(0),
        }))
    }

    /// Starts closing every subscriber for a shutdown: each gets a close frame (1001, going away)
    /// after the write in flight; replaying ones stop after their chunk in flight.
    pub fn shut_down(&self) {
        self.closing.set(true);
        for sub in self.live.borrow().values() {
            sub.queue.close();
        }
        for sub in self.jet_live.borrow().values() {
            sub.queue.close();
        }
    }

    /// The shard's epoch (see [`crate::messages::Published::reset`]).
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.get()
    }

    /// Whether compressed Jetstream messages can be served.
    pub fn can_compress(&self) -> bool {
        self.codec.is_some()
    }

    /// Subscribers this shard still serves.
    pub fn serving(&self) -> usize {
        self.serving.get()
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
        let mut last_publish: Option<std::time::Instant> = None;
        while let Some(batch) = rx.recv().await {
            // Publishes at most once per `coalesce`: what arrives meanwhile goes out with it, so a
            // subscriber gets one wake-up and one write for several batches.
            let coalesce = self.config.coalesce.unwrap_or_else(|| auto_coalesce(self.serving.get()));
            if let Some(wait) = last_publish.map(|t| coalesce.saturating_sub(t.elapsed()))
                && !wait.is_zero()
            {
                glommio::timer::sleep(wait).await;
            }
            self.metrics.fanout_queue_depth.dec();
            self.publish(&batch);
            while let Some(Some(more)) = futures_lite::future::poll_once(rx.recv()).await {
                self.metrics.fanout_queue_depth.dec();
                self.publish(&more);
            }
            last_publish = Some(std::time::Instant::now());
            // Let the subscribers' writers drain their queues before the next batch: with batches
            // already waiting, `recv` would otherwise return at once, batch after batch.
            futures_lite::future::yield_now().await;
        }
    }

    /// Every second: each subscriber's lag (how long the oldest frame in its live queue has
    /// waited), the kill switches the admin API set, and `relay_subscribers_by_lag{lag, shard}`.
    pub async fn run_sampler(self: Rc<Self>) {
        let shard = self.config.shard.to_string();
        loop {
            glommio::timer::sleep(Duration::from_secs(1)).await;
            let mut buckets = [0i64; 4];
            let mut live_count = 0;
            for sub in self.live.borrow().values() {
                live_count += 1;
                let lag = sub.queue.oldest_wait().unwrap_or_default();
                sub.progress.lag_ms.store(lag.as_millis() as u64, Ordering::Relaxed);
                if sub.progress.kill.load(Ordering::Acquire) {
                    sub.queue.close();
                }
                let slot = match lag.as_secs() {
                    0 => 0,
                    1..=9 => 1,
                    10..=59 => 2,
                    _ => 3,
                };
                if let Some(b) = buckets.get_mut(slot) {
                    *b += 1;
                }
            }
            let replaying = self.serving.get().saturating_sub(live_count) as i64;
            for (lag, n) in ["within_1s", "within_10s", "within_60s", "over_60s", "replaying"]
                .into_iter()
                .zip(buckets.into_iter().chain([replaying]))
            {
                self.metrics
                    .subscribers_by_lag
                    .get_or_create(&vec![("lag", lag.to_owned()), ("shard", shard.clone())])
                    .set(n);
            }
        }
    }

    fn publish(&self, batch: &PublishedBatch) {
        if let Some(head) = batch.reset {
            // A splitter's store was cut back: every subscriber's position may be above it now.
            self.head.set(head.0);
            self.epoch.set(self.epoch.get() + 1);
            for sub in self.live.borrow().values() {
                sub.queue.close();
            }
            for sub in self.jet_live.borrow().values() {
                sub.queue.close();
            }
        }
        let Some((last, _)) = batch.events.last() else {
            return;
        };
        self.head.set(last.0);
        self.publish_jetstream(batch);
        let mut live = self.live.borrow_mut();
        live.retain(|_, sub| {
            for (seq, frame) in &batch.events {
                if sub.queue.push(Outgoing::Event(*seq, frame.clone(), batch.committed_at)).is_err() {
                    // Full: the subscriber's own task goes back to the store.
                    sub.queue.mark_behind();
                    return false;
                }
            }
            true
        });
    }

    fn register(&self, queue: Rc<queue::Queue>, progress: &Arc<SubscriberProgress>) -> u64 {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        progress.replaying.store(false, Ordering::Relaxed);
        self.live.borrow_mut().insert(id, Registered { queue, progress: Arc::clone(progress) });
        id
    }

    fn unregister(&self, id: u64) {
        self.live.borrow_mut().remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn automatic_coalescing_grows_with_subscribers_up_to_20_ms() {
        assert_eq!(auto_coalesce(0), Duration::ZERO);
        assert_eq!(auto_coalesce(1), Duration::from_micros(100));
        assert_eq!(auto_coalesce(100), Duration::from_millis(10));
        assert_eq!(auto_coalesce(200), Duration::from_millis(20));
        assert_eq!(auto_coalesce(100_000), Duration::from_millis(20));
    }
}
