//! Replay at each subscriber's own pace, so that slow readers cost only themselves.
//!
//! Two rules, both without I/O (the replay loop of `fanout::session` drives them, for the firehose
//! and for Jetstream):
//! - [`ReplayPacer`]: a subscriber's replay chunks start small and double while it reads them quickly,
//!   halving when it does not: a fast consumer reaches the full chunk within a few chunks, a client
//!   reading a trickle ends up with the smallest, so it holds little of the shard's replay memory.
//! - [`Held`]: the memory a chunk holds is given back to the shard's budget as its bytes leave for
//!   the socket, not once the whole chunk is written, so a reader that stalls part-way holds only
//!   what it has not read.

use std::time::Duration;

/// The smallest replay chunk, in bytes (a subscriber reading a trickle reads this much per store
/// read). 64 KiB.
pub const MIN_CHUNK_BYTES: usize = 64 * 1024;
/// A chunk written within this long doubles the next one.
pub const FAST: Duration = Duration::from_millis(250);
/// A chunk that takes longer than this to write halves the next one.
pub const SLOW: Duration = Duration::from_secs(1);

/// The size of one subscriber's next replay chunk, in bytes: starts at [`MIN_CHUNK_BYTES`], doubles
/// after a chunk written within [`FAST`], halves after one that took longer than [`SLOW`]; always
/// between [`MIN_CHUNK_BYTES`] (or `max`, if smaller) and `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayPacer {
    bytes: usize,
    max: usize,
}

impl ReplayPacer {
    /// A pacer whose chunks grow up to `max` bytes (the shard's `replay_chunk_bytes`).
    pub fn new(max: usize) -> Self {
        let max = max.max(1);
        Self { bytes: MIN_CHUNK_BYTES.min(max), max }
    }

    /// The next chunk's size in bytes.
    pub fn chunk_bytes(&self) -> usize {
        self.bytes
    }

    /// The last chunk of `bytes` took `elapsed` to write. A chunk that was not full (the subscriber
    /// caught up) says nothing about its pace.
    pub fn wrote(&mut self, bytes: usize, elapsed: Duration) {
        if elapsed > SLOW {
            self.bytes = (self.bytes / 2).max(MIN_CHUNK_BYTES.min(self.max));
        } else if elapsed <= FAST && bytes * 2 >= self.bytes {
            self.bytes = self.bytes.saturating_mul(2).min(self.max);
        }
    }
}

/// Units of the shard's replay memory ([`glommio::sync::Semaphore`]) held by one chunk in flight,
/// given back as its bytes are written ([`Held::release`]) and in full when dropped.
pub struct Held<'a> {
    budget: &'a glommio::sync::Semaphore,
    units: u64,
}

impl<'a> Held<'a> {
    /// Waits for `units` bytes of the shard's replay memory.
    ///
    /// # Errors
    /// When the semaphore was closed (not done by the relay).
    pub async fn acquire(budget: &'a glommio::sync::Semaphore, units: u64) -> glommio::Result<Self, ()> {
        budget.acquire(units).await?;
        Ok(Self { budget, units })
    }

    /// Gives back `units` (what was just written), at most what is held.
    pub fn release(&mut self, units: u64) {
        let n = units.min(self.units);
        if n > 0 {
            self.units -= n;
            self.budget.signal(n);
        }
    }

    /// Units still held.
    pub fn held(&self) -> u64 {
        self.units
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let n = self.units;
        self.release(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fast reader reaches the full chunk in a few chunks; a trickle reader falls to the smallest and
    /// stays there; a partial chunk (caught up) changes nothing.
    #[test]
    fn chunks_follow_the_readers_pace() {
        let max = 4 << 20;
        let mut fast = ReplayPacer::new(max);
        assert_eq!(fast.chunk_bytes(), MIN_CHUNK_BYTES);
        let mut chunks = 0;
        while fast.chunk_bytes() < max {
            let b = fast.chunk_bytes();
            fast.wrote(b, Duration::from_millis(5));
            chunks += 1;
        }
        assert_eq!(chunks, 6, "64 KiB to 4 MiB");
        fast.wrote(max, Duration::from_millis(5));
        assert_eq!(fast.chunk_bytes(), max, "never past the maximum");
        fast.wrote(100, Duration::from_millis(5));
        assert_eq!(fast.chunk_bytes(), max);
        let mut slow = fast;
        for _ in 0..10 {
            let b = slow.chunk_bytes();
            slow.wrote(b, Duration::from_secs(30));
        }
        assert_eq!(slow.chunk_bytes(), MIN_CHUNK_BYTES);
        let b = slow.chunk_bytes();
        slow.wrote(b, Duration::from_millis(500));
        assert_eq!(slow.chunk_bytes(), MIN_CHUNK_BYTES, "between FAST and SLOW: unchanged");
        let mut tiny = ReplayPacer::new(1000);
        assert_eq!(tiny.chunk_bytes(), 1000);
        tiny.wrote(1000, Duration::from_secs(5));
        assert_eq!(tiny.chunk_bytes(), 1000);
    }

    /// Memory comes back as it is written, the rest when the chunk is dropped.
    #[test]
    fn held_memory_is_given_back_as_it_leaves() {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(1 << 20)
            .spawn(|| async {
                let budget = glommio::sync::Semaphore::new(100);
                let mut held = Held::acquire(&budget, 80).await.unwrap();
                assert_eq!(budget.available(), 20);
                held.release(30);
                assert_eq!((budget.available(), held.held()), (50, 50));
                held.release(500);
                assert_eq!((budget.available(), held.held()), (100, 0));
                let second = Held::acquire(&budget, 60).await.unwrap();
                drop(second);
                assert_eq!(budget.available(), 100);
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
