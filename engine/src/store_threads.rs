//! The store's threads: opening RocksDB on the compaction CPU (so its background threads inherit
//! that pinning), and the retention and disk-gauge threads beside them (pinned there, nice 10).
//! Shared by `relay serve` and `relay splitter`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use shards::Metrics;
use storage::{Store, StoreOptions};

use crate::Fsync;
use crate::layout;
use crate::runtime::Control;

/// Opens the store from a thread pinned to the compaction CPU, so RocksDB's background threads
/// (created during open) inherit that affinity.
pub(crate) fn open_store(args: &crate::cli::StoreArgs, compaction_cpu: usize) -> anyhow::Result<Arc<Store>> {
    let path = args.data_dir.clone();
    let options = StoreOptions {
        sync_writes: args.fsync == Fsync::Always,
        background_threads: args.rocksdb_threads,
        max_wal_bytes: args.max_wal_size,
        ..StoreOptions::default()
    };
    std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
    let opened = std::thread::Builder::new()
        .name("relay-store-open".into())
        .spawn(move || {
            if let Err(e) = layout::pin_current_thread(compaction_cpu) {
                tracing::warn!(cpu = compaction_cpu, error = %e, "cannot pin RocksDB threads");
            }
            Store::open(&path, &options)
        })
        .context("spawning the store thread")?
        .join()
        .map_err(|_| anyhow::anyhow!("the store thread panicked"))?;
    Ok(Arc::new(opened.with_context(|| format!("opening the store in {}", args.data_dir.display()))?))
}

/// Pins the calling thread to `cpu` and lowers it to nice 10, so its work waits for the executors
/// sharing the core; failures are logged (`what` names the thread), the thread runs anyway.
fn pin_background_thread(cpu: usize, what: &str) {
    if let Err(e) = layout::pin_current_thread(cpu) {
        tracing::warn!(cpu, error = %e, "cannot pin the {what} thread");
    }
    // SAFETY: setpriority on this thread's id (gettid) changes only this thread's nice value.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10) } != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot lower the {what} thread's priority");
    }
}

/// Measures the data directory every second (`relay_data_dir_bytes`, `relay_wal_bytes`) on a thread
/// of its own (pinned to the compaction CPU, nice 10), so the gauges stay current while a retention
/// pass deletes and compacts: that is when compaction output and the files it replaces are both on
/// disk, the directory's peak, which a measurement on the retention thread could never see. Stops
/// once `control` has stopped and the thread is unparked (the retention thread does both, then
/// joins it).
fn start_disk_gauges(
    store: Arc<Store>,
    cpu: usize,
    control: Arc<Control>,
    metrics: Metrics,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("relay-disk".into())
        .spawn(move || {
            pin_background_thread(cpu, "disk gauge");
            while !control.stop.is_stopped() {
                match store.disk_usage() {
                    Ok(usage) => {
                        metrics.data_dir_bytes.set(i64::try_from(usage.total_bytes).unwrap_or(i64::MAX));
                        metrics.wal_bytes.set(i64::try_from(usage.wal_bytes).unwrap_or(i64::MAX));
                    }
                    Err(e) => tracing::debug!(error = %e, "cannot measure the data directory"),
                }
                std::thread::park_timeout(Duration::from_secs(1));
            }
        })
        .context("starting the disk gauge thread")
}

/// Runs retention ([`storage::retention::enforce`]) every [`storage::retention::interval`] on a thread
/// pinned to the compaction CPU, off every executor, until `control` stops; keeps the storage gauges
/// current.
pub(crate) fn start_retention(
    store: Arc<Store>,
    policy: storage::retention::RetentionPolicy,
    cpu: usize,
    control: Arc<Control>,
    metrics: Metrics,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let disk = start_disk_gauges(Arc::clone(&store), cpu, Arc::clone(&control), metrics.clone())?;
    let every = storage::retention::interval(&policy);
    std::thread::Builder::new()
        .name("relay-retention".into())
        .spawn(move || {
            // Nice 10: deleting and compacting old events waits for the executors sharing the core.
            pin_background_thread(cpu, "retention");
            let mut next = std::time::Instant::now();
            while !control.stop.is_stopped() {
                if std::time::Instant::now() < next {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
                next = std::time::Instant::now() + every;
                match storage::retention::enforce(&store, &policy, shards::unix_ms() / 1000) {
                    Ok(trims) => {
                        for t in trims {
                            tracing::info!(
                                reason = t.reason.as_str(),
                                before = t.before.0,
                                events = t.events,
                                "retention deleted events"
                            );
                            metrics
                                .retention_trimmed
                                .get_or_create(&vec![("reason", t.reason.as_str())])
                                .inc_by(t.events);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "retention pass failed; retried at the next one"),
                }
                if let Ok(Some(oldest)) = store.first_seq() {
                    metrics.events_oldest_seq.set(i64::try_from(oldest.0).unwrap_or(i64::MAX));
                }
                if let Ok(bytes) = store.events_disk_bytes() {
                    metrics.events_disk_bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
                }
                metrics.tombstones.set(i64::try_from(store.tombstone_count()).unwrap_or(i64::MAX));
            }
            // The disk gauge thread holds the store too: stopped and joined here, so the store
            // closes when the caller joins this thread.
            disk.thread().unpark();
            let _ = disk.join();
        })
        .context("starting the retention thread")
}
