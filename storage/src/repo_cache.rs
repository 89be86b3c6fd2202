//! Account states in memory, in front of the `repos` column family.
//!
//! Every event reads its account's state twice (the ingest shard for its status, the sequencer for
//! `rev` and `prevData`) and the group commit writes it back, so the `repos` memtable holds many
//! versions of the same few keys and each read walks a deep skip list: ~8% of the relay's CPU at
//! 1,000 events/s (bench/README.md, "CPU per event"). This cache answers reads of the accounts seen
//! recently ([`quick_cache`]'s CLOCK-Pro eviction, [`DEFAULT_ENTRIES`] entries, ~350 bytes each), and
//! [`Store::commit`](crate::Store::commit) writes through it once a batch is durable.
//!
//! A read that misses goes to RocksDB and fills the cache only when no write to the account's slot
//! happened meanwhile (a generation per slot, checked and bumped under the slot's lock): a read
//! that started before a commit can never put the older state back over the newer one.

use std::sync::Mutex;

use wire::Did;

use crate::StoreError;
use crate::layout::RepoState;

/// Account states kept by default: the accounts of a few minutes of the network's traffic.
pub const DEFAULT_ENTRIES: usize = 100_000;

/// Slots of write generations (a power of two).
const SLOTS: usize = 1024;

/// The cache: states (`None`: the store has no state for the account) and the slot generations.
pub(crate) struct RepoCache {
    cache: Option<quick_cache::sync::Cache<Did, Option<RepoState>>>,
    generations: Box<[Mutex<u64>]>,
}

impl RepoCache {
    /// A cache of at most `entries` accounts; 0 turns it off (every read goes to RocksDB).
    pub(crate) fn new(entries: usize) -> Self {
        Self {
            cache: (entries > 0).then(|| quick_cache::sync::Cache::new(entries)),
            generations: (0..SLOTS).map(|_| Mutex::new(0)).collect(),
        }
    }

    #[allow(clippy::indexing_slicing, reason = "the index is masked to SLOTS - 1 and `generations` has SLOTS entries")]
    fn slot(&self, did: &Did) -> &Mutex<u64> {
        // FNV-1a: cheap, and only spreads accounts over the locks.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in did.as_str().bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        // SLOTS is a power of two and `generations` has SLOTS entries.
        &self.generations[(h as usize) & (SLOTS - 1)]
    }

    /// The cached state of `did`, else `read()`'s, which fills the cache unless a write to the
    /// account's slot came in between.
    pub(crate) fn get_or_read(
        &self,
        did: &Did,
        read: impl FnOnce() -> Result<Option<RepoState>, StoreError>,
    ) -> Result<Option<RepoState>, StoreError> {
        let Some(cache) = &self.cache else { return read() };
        if let Some(state) = cache.get(did) {
            return Ok(state);
        }
        let slot = self.slot(did);
        let before = *slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let state = read()?;
        let generation = slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if *generation == before {
            cache.insert(did.clone(), state.clone());
        }
        Ok(state)
    }

    /// Records a durable write of `did`'s state (after RocksDB has it).
    pub(crate) fn wrote(&self, did: &Did, state: &RepoState) {
        let Some(cache) = &self.cache else { return };
        let mut generation = self.slot(did).lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *generation += 1;
        cache.insert(did.clone(), Some(state.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn did(n: u32) -> Did {
        Did::new(format!("did:plc:acct{n:020}")).expect("a DID")
    }

    fn state(host: &str) -> RepoState {
        RepoState::new(host)
    }

    #[test]
    fn a_read_fills_the_cache_and_a_write_replaces_it() {
        let cache = RepoCache::new(16);
        let a = did(1);
        assert_eq!(cache.get_or_read(&a, || Ok(None)).unwrap(), None);
        // Cached, including the absence: the second read does not reach the store.
        assert_eq!(cache.get_or_read(&a, || panic!("read the store again")).unwrap(), None);
        cache.wrote(&a, &state("h1"));
        assert_eq!(cache.get_or_read(&a, || panic!("read the store again")).unwrap(), Some(state("h1")));
    }

    #[test]
    fn a_read_that_started_before_a_write_does_not_put_the_old_state_back() {
        let cache = RepoCache::new(16);
        let a = did(2);
        // The store read returns the old state, and the commit of the new one lands during it.
        let got = cache
            .get_or_read(&a, || {
                cache.wrote(&a, &state("new"));
                Ok(Some(state("old")))
            })
            .unwrap();
        assert_eq!(got, Some(state("old")), "the read answers what it read");
        assert_eq!(cache.get_or_read(&a, || panic!("cached")).unwrap(), Some(state("new")));
    }

    #[test]
    fn a_write_to_another_account_of_the_slot_only_skips_the_fill() {
        let cache = RepoCache::new(16);
        let (a, b) = (did(3), did(4));
        let _ = cache.get_or_read(&a, || {
            cache.wrote(&b, &state("b"));
            Ok(Some(state("a")))
        });
        // Whether or not `b` shares `a`'s slot, `a` reads right next time.
        assert_eq!(cache.get_or_read(&a, || Ok(Some(state("a")))).unwrap(), Some(state("a")));
    }

    #[test]
    fn errors_are_not_cached_and_a_zero_size_cache_always_reads() {
        let cache = RepoCache::new(16);
        let a = did(5);
        assert!(cache.get_or_read(&a, || Err(StoreError::Poisoned)).is_err());
        assert_eq!(cache.get_or_read(&a, || Ok(Some(state("x")))).unwrap(), Some(state("x")));
        let off = RepoCache::new(0);
        off.wrote(&a, &state("y"));
        assert_eq!(off.get_or_read(&a, || Ok(None)).unwrap(), None);
    }

    #[test]
    fn concurrent_reads_and_writes_end_on_the_last_write() {
        // Writers commit increasing versions of a few accounts while readers read them through a
        // "store" that lags: every reader's final answer is the last version written.
        use std::sync::Arc;
        use std::sync::atomic::{AtomicU64, Ordering};
        let cache = Arc::new(RepoCache::new(64));
        let store: Arc<Vec<AtomicU64>> = Arc::new((0..4).map(|_| AtomicU64::new(0)).collect());
        let reader = |cache: Arc<RepoCache>, store: Arc<Vec<AtomicU64>>| {
            std::thread::spawn(move || {
                for i in 0..20_000u32 {
                    let n = i % 4;
                    let _ = cache.get_or_read(&did(n), || {
                        let v = store[n as usize].load(Ordering::Acquire);
                        std::hint::spin_loop();
                        Ok(Some(state(&v.to_string())))
                    });
                }
            })
        };
        let readers: Vec<_> = (0..3).map(|_| reader(Arc::clone(&cache), Arc::clone(&store))).collect();
        for v in 1..=5_000u64 {
            let n = (v % 4) as usize;
            store[n].store(v, Ordering::Release);
            cache.wrote(&did(n as u32), &state(&v.to_string()));
        }
        for r in readers {
            r.join().expect("a reader");
        }
        for n in 0..4u32 {
            let last = store[n as usize].load(Ordering::Acquire).to_string();
            assert_eq!(cache.get_or_read(&did(n), || panic!("cached")).unwrap(), Some(state(&last)));
        }
    }
}
