//! Every subscriber of every fanout shard, for the admin API and the metrics: one directory per
//! process, shared by the shards. Each entry carries the subscriber's progress (position, replaying
//! or live, lag), updated by its own shard, and a kill switch the admin API sets.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use super::SubscriberInfo;

/// How far along a subscriber is (atomics its shard writes, anyone reads).
#[derive(Debug, Default)]
pub struct SubscriberProgress {
    /// The highest relay seq written to it (or skipped for it).
    pub position: AtomicU64,
    /// Reading from the store rather than the live tail.
    pub replaying: AtomicBool,
    /// How long the oldest frame waiting in its live queue has waited, ms (0 when it is caught up),
    /// sampled every second by its shard.
    pub lag_ms: AtomicU64,
    /// Set by the admin API: the subscriber is closed at its next step.
    pub kill: AtomicBool,
}

/// One subscriber as the admin API sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriberView {
    /// The directory's id.
    pub id: u64,
    /// Connection facts.
    pub info: SubscriberInfo,
    /// [`SubscriberProgress::position`].
    pub position: u64,
    /// [`SubscriberProgress::replaying`].
    pub replaying: bool,
    /// [`SubscriberProgress::lag_ms`].
    pub lag_ms: u64,
}

/// The directory.
#[derive(Debug, Default)]
pub struct SubscriberDirectory {
    next_id: AtomicU64,
    subscribers: Mutex<BTreeMap<u64, (SubscriberInfo, Arc<SubscriberProgress>)>>,
}

impl SubscriberDirectory {
    /// Lists `info` until the returned guard is dropped.
    pub fn add(&self, info: SubscriberInfo) -> Listed<'_> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let progress = Arc::new(SubscriberProgress::default());
        let mut subscribers = self.subscribers.lock().unwrap_or_else(PoisonError::into_inner);
        subscribers.insert(id, (info, Arc::clone(&progress)));
        Listed { directory: self, id, progress }
    }

    /// Connected subscribers, in connection order.
    pub fn list(&self) -> Vec<SubscriberView> {
        let subscribers = self.subscribers.lock().unwrap_or_else(PoisonError::into_inner);
        subscribers
            .iter()
            .map(|(id, (info, p))| SubscriberView {
                id: *id,
                info: info.clone(),
                position: p.position.load(Ordering::Relaxed),
                replaying: p.replaying.load(Ordering::Relaxed),
                lag_ms: p.lag_ms.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Asks subscriber `id` to close; `false` when there is no such subscriber.
    pub fn kill(&self, id: u64) -> bool {
        let subscribers = self.subscribers.lock().unwrap_or_else(PoisonError::into_inner);
        subscribers.get(&id).map(|(_, p)| p.kill.store(true, Ordering::Release)).is_some()
    }
}

/// Keeps a subscriber in its [`SubscriberDirectory`] while alive.
pub struct Listed<'a> {
    directory: &'a SubscriberDirectory,
    id: u64,
    /// Its progress, for its shard to update.
    pub progress: Arc<SubscriberProgress>,
}

impl Drop for Listed<'_> {
    fn drop(&mut self) {
        let mut subscribers = self.directory.subscribers.lock().unwrap_or_else(PoisonError::into_inner);
        subscribers.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_live_as_long_as_their_guard_and_can_be_killed() {
        let d = SubscriberDirectory::default();
        let info = SubscriberInfo {
            remote: "r".into(),
            cursor: None,
            user_agent: None,
            connected_ms: 1,
            endpoint: "firehose",
        };
        let a = d.add(info.clone());
        let b = d.add(info);
        a.progress.position.store(7, Ordering::Relaxed);
        let list = d.list();
        assert_eq!((list.len(), list[0].position), (2, 7));
        assert!(d.kill(list[1].id) && b.progress.kill.load(Ordering::Acquire));
        drop(a);
        assert_eq!(d.list().len(), 1);
        assert!(!d.kill(999));
    }
}
