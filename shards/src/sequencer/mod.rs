//! The sequencer: the one place a relay `seq` is assigned.
//!
//! It drains the SPSC queues from every ingest shard into batches. For each accepted event it applies
//! the per-account rules ([`crate::accounts`]: status, `rev` order, `since`/`prevData`), assigns the
//! next `seq`, re-encodes the frame with it once, and adds the event, the account's new state and the
//! host cursor to one RocksDB `WriteBatch` (`batch`). Only after that batch is durable are the
//! events handed to the fanout shards, so a subscriber never sees an event a crash could lose.
//!
//! Before each group commit the free space of the data directory is checked: below
//! [`SequencerConfig::min_free_disk_bytes`] the sequencer stops taking messages (the ingest queues
//! fill, hosts pause with their cursors where the last durable batch left them), the relay reports
//! itself degraded ([`crate::health::Health`]), and it resumes by itself once space is free again.

pub(crate) mod batch;
pub mod pace;

use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_lite::future::poll_once;
use glommio::channels::local_channel;
use glommio::channels::shared_channel::{SharedReceiver, SharedSender};
use storage::{Store, StoreError};

use crate::health::Health;
use crate::messages::{HostCommand, PublishedBatch, ToSequencer};
use crate::metrics::Metrics;

/// Sequencer settings.
#[derive(Debug, Clone, Copy)]
pub struct SequencerConfig {
    /// Most events in one group commit. Default 1,024; valid 1 and up.
    pub max_batch_events: usize,
    /// Free bytes the data directory's filesystem must keep; below it the sequencer pauses (see the
    /// module docs). Default 1 GiB; 0 turns the check off.
    pub min_free_disk_bytes: u64,
    /// Shortest time between the starts of two group commits ([`pace::CommitPace`],
    /// `--commit-interval`). Default [`DEFAULT_COMMIT_INTERVAL`]; zero commits whatever has arrived
    /// as soon as the previous commit is durable.
    pub commit_interval: Duration,
}

/// The default `--commit-interval`: chosen by measurement (bench/README.md, "CPU per event").
pub const DEFAULT_COMMIT_INTERVAL: Duration = Duration::from_millis(5);

impl Default for SequencerConfig {
    fn default() -> Self {
        Self { max_batch_events: 1024, min_free_disk_bytes: 1 << 30, commit_interval: DEFAULT_COMMIT_INTERVAL }
    }
}

/// Why the sequencer stopped.
#[derive(Debug, thiserror::Error)]
pub enum SequencerError {
    /// A store read or write failed; nothing after it was published.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// An event the relay made itself could not be encoded (not reachable).
    #[error("encoding an event: {0}")]
    Encode(String),
}

/// While the disk is short of space, how often its free space is measured again (it doubles from
/// 100 ms up to this).
const DISK_PROBE_MAX: Duration = Duration::from_secs(5);

/// Waits until the data directory's filesystem has `min_free` bytes free, reporting the wait in
/// `health` and `metrics`.
pub(crate) async fn wait_for_disk(store: &Store, min_free: u64, health: &Health, metrics: &Metrics) {
    if min_free == 0 {
        return;
    }
    let mut probe = Duration::from_millis(100);
    loop {
        match store.free_disk_bytes() {
            Ok(free) => {
                metrics.disk_free_bytes.set(i64::try_from(free).unwrap_or(i64::MAX));
                if free >= min_free {
                    if health.set_disk_short(false) {
                        metrics.disk_paused.set(0);
                        tracing::warn!(free_bytes = free, "disk space is back; taking events again");
                    }
                    return;
                }
                metrics.disk_paused.set(1);
                if health.set_disk_short(true) {
                    tracing::error!(
                        free_bytes = free,
                        min_free_bytes = min_free,
                        "data directory nearly full: hosts paused until space is freed (--min-free-disk)"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot measure free disk space"),
        }
        glommio::timer::sleep(probe).await;
        probe = (probe * 2).min(DISK_PROBE_MAX);
    }
}

/// Runs the sequencer on the current executor until every ingest shard has gone away. `committed` is
/// set to the last durable relay seq after each group commit (fanout shards read it to tell a future
/// cursor from one that is only ahead of their own head).
///
/// # Errors
/// [`SequencerError::Store`] when the store fails; the relay must stop, since no later event can be
/// made durable.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    config: SequencerConfig,
    committed: Arc<AtomicU64>,
    from_ingest: Vec<SharedReceiver<ToSequencer>>,
    to_ingest: Vec<SharedSender<HostCommand>>,
    to_fanout: Vec<SharedSender<PublishedBatch>>,
    store: Arc<Store>,
    metrics: Metrics,
    health: Arc<Health>,
    stop: Arc<crate::stop::StopSignal>,
) -> Result<(), SequencerError> {
    // Merge the per-shard SPSC queues into one local queue, keeping each shard's order.
    let (merged_tx, merged_rx) = local_channel::new_bounded(config.max_batch_events.max(1) * 4);
    let merged_tx = Rc::new(merged_tx);
    for rx in from_ingest {
        let tx = Rc::clone(&merged_tx);
        let depth = metrics.ingest_queue_depth.clone();
        glommio::spawn_local(async move {
            let rx = rx.connect().await;
            while let Some(msg) = rx.recv().await {
                depth.dec();
                if tx.send(msg).await.is_err() {
                    break;
                }
            }
        })
        .detach();
    }
    drop(merged_tx);
    let mut to_shards = Vec::with_capacity(to_ingest.len());
    for tx in to_ingest {
        to_shards.push(tx.connect().await);
    }
    let mut fanout = Vec::with_capacity(to_fanout.len());
    for tx in to_fanout {
        fanout.push(tx.connect().await);
    }

    let mut state = batch::State {
        last_seq: store.last_seq()?.map_or(0, |s| s.0),
        hosts: Default::default(),
        last_indexed: store.time_entry_at(u64::MAX)?.unwrap_or((0, wire::RelaySeq(0))),
        noted_collections: std::collections::HashSet::new(),
    };
    metrics.last_seq.set(state.last_seq as i64);
    tracing::info!(seq = state.last_seq, "sequencer starting after the last stored seq");
    let mut pace = pace::CommitPace::new(config.commit_interval);
    loop {
        // Between batches: a shutdown stops here, after the last batch is durable and published.
        let next = futures_lite::future::or(async { merged_rx.recv().await.map(Some) }, async {
            stop.wait().await;
            Some(None)
        })
        .await;
        let first = match next {
            Some(Some(first)) => first,
            Some(None) => {
                tracing::info!(seq = state.last_seq, "sequencer stopped after its last durable batch");
                return Ok(());
            }
            None => return Ok(()),
        };
        // Events that come within the commit interval of the previous commit wait and share the
        // next one (one fsync for all of them).
        let wait = pace.wait(std::time::Instant::now());
        if !wait.is_zero() {
            glommio::timer::sleep(wait).await;
        }
        let mut msgs = vec![first];
        while msgs.len() < config.max_batch_events {
            match poll_once(merged_rx.recv()).await {
                Some(Some(m)) => msgs.push(m),
                _ => break,
            }
        }
        let mut batch = batch::Batch::new(&store, &metrics, &mut state);
        for msg in msgs {
            batch.apply(msg)?;
        }
        let (commit, mut published, host_commands, relayed) = batch.finish(crate::unix_ms() / 1000);
        for cmd in host_commands {
            let shard = crate::ingest::shard_for_host(cmd.host(), to_shards.len());
            if let Some(tx) = to_shards.get(shard) {
                // Waits for room: host commands are rare and must not be lost.
                let _ = tx.send(cmd).await;
            }
        }
        if commit.is_empty() {
            continue;
        }
        // The batch waits here while the disk is short; meanwhile nothing more is taken from the
        // ingest queues, so the hosts pause with their cursors on the last durable batch.
        wait_for_disk(&store, config.min_free_disk_bytes, &health, &metrics).await;
        let events = commit.events.len();
        let writer = Arc::clone(&store);
        let started = std::time::Instant::now();
        pace.started(started);
        glommio::executor().spawn_blocking(move || writer.commit(&commit)).await?;
        let committed_at = std::time::Instant::now();
        metrics.commit_seconds.observe((committed_at - started).as_secs_f64());
        metrics.batch_events.observe(events as f64);
        metrics.batch_commits.inc();
        for (kind, n) in relayed.by_type {
            if n > 0 {
                Metrics::inc_by(&metrics.events_relayed, "type", kind, n);
            }
        }
        for received in relayed.received {
            metrics.ingest_to_durable_seconds.observe((committed_at - received).as_secs_f64());
        }
        metrics.last_seq.set(state.last_seq as i64);
        committed.store(state.last_seq, Ordering::Release);
        if published.events.is_empty() {
            continue;
        }
        published.committed_at = committed_at;
        let published: PublishedBatch = Arc::new(published);
        for tx in &fanout {
            // A fanout shard that is gone has no subscribers to serve; keep sequencing for the rest.
            if tx.send(Arc::clone(&published)).await.is_ok() {
                metrics.fanout_queue_depth.inc();
            }
        }
    }
}
