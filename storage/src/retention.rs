//! Retention: the store is a window of events. Events older than the window, and the oldest events
//! while the data directory is over its size budget, are deleted by seq ranges
//! ([`Store::trim_before`]: a range delete, then the SST files inside the range are dropped and the
//! range compacted). Time maps to seq through the `time_index` column family (the first seq of each
//! second the sequencer committed in), never by scanning events.
//!
//! [`enforce`] is one pass; the engine runs it periodically on a thread pinned to the compaction
//! core, off the ingest, sequencer and fanout executors.

use std::time::Duration;

use wire::RelaySeq;

use crate::error::StoreError;
use crate::store::Store;

/// What the window is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Events older than this are deleted; `None` keeps everything (the disk then grows without
    /// bound). The relay's default is 72 h.
    pub window: Option<Duration>,
    /// When the data directory takes more than this many bytes on disk ([`Store::disk_usage`]:
    /// every SST file, the write-ahead log, RocksDB's own files, as `du` counts them), the oldest
    /// events are deleted early until it fits (never the newest event: what is not events, and the
    /// write-ahead log, cannot be deleted this way). `None`: no size budget.
    pub max_disk_bytes: Option<u64>,
}

/// Why events were deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrimReason {
    /// Older than the window.
    Age,
    /// Over the size budget.
    Disk,
}

impl TrimReason {
    /// The `reason` label of `relay_retention_trimmed_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            TrimReason::Age => "age",
            TrimReason::Disk => "disk",
        }
    }
}

/// One deletion [`enforce`] made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trim {
    /// Why.
    pub reason: TrimReason,
    /// Every event below this seq is gone.
    pub before: RelaySeq,
    /// Seqs the deletion covered (events, or gaps the relay never filled).
    pub events: u64,
}

/// Most size-budget deletions in one pass (each removes a slice of the oldest events, then measures
/// again).
const MAX_DISK_ROUNDS: usize = 8;

/// One retention pass at `now_unix_s`: deletes what is older than the window, then, while the data
/// directory is over the size budget, the oldest slice of what is left (the excess as a share of the
/// events' bytes, plus 5%; never the newest event). Returns the deletions made, oldest first.
///
/// # Errors
/// [`StoreError`] from the store; deletions made before the error stand.
pub fn enforce(store: &Store, policy: &RetentionPolicy, now_unix_s: u64) -> Result<Vec<Trim>, StoreError> {
    let mut done = Vec::new();
    if let Some(window) = policy.window {
        let cutoff = now_unix_s.saturating_sub(window.as_secs());
        if let Some(before) = store.seq_at(cutoff)? {
            let events = store.trim_before(before)?;
            if events > 0 {
                done.push(Trim { reason: TrimReason::Age, before, events });
            }
        }
    }
    if let Some(budget) = policy.max_disk_bytes {
        for _ in 0..MAX_DISK_ROUNDS {
            let size = store.disk_usage()?.total_bytes;
            if size <= budget {
                break;
            }
            let (Some(first), Some(last)) = (store.first_seq()?, store.last_seq()?) else { break };
            // The share of the events to delete: what the directory is over, out of what the
            // events take (the rest of the directory cannot be deleted this way), plus 5%.
            let events = store.events_disk_bytes()?.max(1);
            let over = ((size - budget) as f64 / events as f64).min(1.0) + 0.05;
            let span = last.0.saturating_sub(first.0) + 1;
            let cut = ((span as f64 * over).ceil() as u64).clamp(1, span.saturating_sub(1));
            if span <= 1 {
                break;
            }
            let before = RelaySeq(first.0 + cut);
            let events = store.trim_before(before)?;
            if events == 0 {
                break;
            }
            done.push(Trim { reason: TrimReason::Disk, before, events });
        }
    }
    Ok(done)
}

/// How often the engine runs [`enforce`] for a policy: a twentieth of the window, between 1 s and
/// 60 s; every 60 s with no window.
pub fn interval(policy: &RetentionPolicy) -> Duration {
    match policy.window {
        Some(w) => (w / 20).clamp(Duration::from_secs(1), Duration::from_secs(60)),
        None => Duration::from_secs(60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CommitBatch, StoreOptions};
    use bytes::Bytes;

    #[test]
    fn the_window_and_the_size_budget_delete_the_oldest_events() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        // 10 seconds, 100 events of 1 KB each (not compressible: the budget test measures the disk).
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        let mut noise = |n: usize| -> Vec<u8> {
            (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect()
        };
        for second in 0..10u64 {
            let first = second * 100 + 1;
            let events = (first..first + 100).map(|s| (RelaySeq(s), Bytes::from(noise(1000)))).collect();
            let batch =
                CommitBatch { events, time_index: Some((1_000 + second, RelaySeq(first))), ..Default::default() };
            store.commit(&batch).unwrap();
        }
        let keep = RetentionPolicy::default();
        assert_eq!(enforce(&store, &keep, 2_000).unwrap(), [], "no window, no budget: nothing goes");
        let window = RetentionPolicy { window: Some(Duration::from_secs(5)), max_disk_bytes: None };
        // At 1,009 the window starts at 1,004: seconds 1,000-1,003 (events 1-400) go.
        let done = enforce(&store, &window, 1_009).unwrap();
        assert_eq!(done, [Trim { reason: TrimReason::Age, before: RelaySeq(401), events: 400 }]);
        assert_eq!(store.first_seq().unwrap(), Some(RelaySeq(401)));
        assert_eq!(enforce(&store, &window, 1_009).unwrap(), [], "idempotent");
        // A budget of what the directory holds without about half the events deletes the oldest
        // events until it fits.
        store.flush_all().unwrap();
        let size = store.disk_usage().unwrap().total_bytes;
        let events = store.events_disk_bytes().unwrap();
        let budget = RetentionPolicy { window: None, max_disk_bytes: Some(size - events / 2) };
        let done = enforce(&store, &budget, 1_009).unwrap();
        assert!(!done.is_empty() && done.iter().all(|t| t.reason == TrimReason::Disk), "{done:?}");
        let after = store.disk_usage().unwrap();
        assert!(after.total_bytes <= size - events / 2, "{size} {events} {after:?} {done:?}");
        assert_eq!(store.last_seq().unwrap(), Some(RelaySeq(1000)), "the newest events stay");
        assert_eq!(interval(&window), Duration::from_secs(1));
        assert_eq!(
            interval(&RetentionPolicy { window: Some(Duration::from_secs(72 * 3600)), ..keep }),
            Duration::from_secs(60)
        );
    }
}
