//! The [`Store`]: opening, group-commit writes, point reads and the replay reader.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, DB, IteratorMode, Options, WriteBatch, WriteOptions};
use wire::{Did, RelaySeq};

use crate::error::StoreError;
use crate::layout::{HostState, RepoState};
use crate::{FORMAT_VERSION, cf};

const META_FORMAT_VERSION: &[u8] = b"format_version";
pub(crate) const META_LAST_SEQ: &[u8] = b"last_seq";
pub(crate) const META_CRAWL_ENABLED: &[u8] = b"crawl_enabled";
pub(crate) const META_CRAWL_QUOTA: &[u8] = b"crawl_quota";
pub(crate) const META_RETAINED_FROM: &[u8] = b"retained_from";

/// Options for [`Store::open`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Make every [`Store::commit`] durable with fsync before it returns. Default `true`; with
    /// `false` a process crash loses nothing (the WAL is in the page cache) but a power loss may lose
    /// the last batches.
    pub sync_writes: bool,
    /// RocksDB background threads for flushes and compactions (low-priority pool). Default 2, valid
    /// 1-64. The threads are created by `open` and inherit the calling thread's CPU affinity, which is
    /// how the engine pins them to the compaction core.
    pub background_threads: i32,
    /// Memtable size per column family, in bytes. Default 64 MiB.
    pub write_buffer_bytes: usize,
    /// Most bytes of write-ahead log kept (RocksDB's `max_total_wal_size`). A WAL file is deleted
    /// only once every column family has flushed what it holds; the small column families (`repos`,
    /// `hosts`, `time_index`, ...) are written by every batch but fill their memtables slowly, so
    /// without this bound they pin every WAL file ever written. Past it RocksDB flushes the column
    /// families holding the oldest WAL data. Default 64 MiB (one `events` memtable; chosen by measurement, `kernel-notes.md`); 0 leaves
    /// RocksDB's own rule (4 × the sum of all write buffers, 2.75 GiB here). See `kernel-notes.md`,
    /// storage.
    pub max_wal_bytes: u64,
    /// Cached identities fetched longer ago than this are dropped when RocksDB compacts them (the
    /// relay refreshes an identity after a day anyway; this bounds the `identities` column family
    /// to the accounts seen recently). Default 7 days.
    pub identity_ttl: std::time::Duration,
    /// Account states kept in memory in front of the `repos` column family
    /// ([`crate::repo_cache`]). Default [`crate::repo_cache::DEFAULT_ENTRIES`]; 0: none.
    pub repo_cache_entries: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            sync_writes: true,
            background_threads: 2,
            write_buffer_bytes: 64 << 20,
            max_wal_bytes: 64 << 20,
            identity_ttl: std::time::Duration::from_secs(7 * 24 * 3600),
            repo_cache_entries: crate::repo_cache::DEFAULT_ENTRIES,
        }
    }
}

/// Everything one sequencer batch writes, applied atomically by [`Store::commit`].
#[derive(Debug, Default, Clone)]
pub struct CommitBatch {
    /// New events, in increasing relay `seq`, each the complete frame.
    pub events: Vec<(RelaySeq, Bytes)>,
    /// New account states.
    pub repos: Vec<(Did, RepoState)>,
    /// New host cursors.
    pub hosts: Vec<(String, HostState)>,
    /// A `time_index` entry: (unix second, the first relay `seq` assigned in it), written when the
    /// batch's events are the first of a new second.
    pub time_index: Option<(u64, RelaySeq)>,
    /// Tombstones: accounts whose earlier events leave replay, with the seq of the `#account` event
    /// that took them down or deleted them (that event itself stays).
    pub tombstones: Vec<(Did, RelaySeq)>,
    /// `(collection, account, seq)`: an account relayed a record of a collection (the `collections`
    /// column family). Writing a pair again only rewrites its seq; the sequencer skips the pairs it
    /// noted recently (a bounded memory), so a busy account costs one write per collection, not one
    /// per record.
    pub collections: Vec<(String, Did, RelaySeq)>,
}

impl CommitBatch {
    /// Whether the batch writes nothing.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.repos.is_empty() && self.hosts.is_empty() && self.tombstones.is_empty()
    }
}

/// The relay's RocksDB store. Shared by all executors (`Arc<Store>`); every method is a blocking
/// RocksDB call. Its methods are split by what they own: this file (opening, group commits), `events`
/// (replay, the time index, retention trims, tombstones), `hosts` (the host table), `accounts`
/// (account states, the identity cache).
pub struct Store {
    pub(crate) db: DB,
    pub(crate) sync_writes: bool,
    poisoned: AtomicBool,
    /// Serializes read-modify-write of `host_config` (the API of several cores may change one host).
    pub(crate) host_config_lock: std::sync::Mutex<()>,
    /// The `tombstones` column family in memory (DID → seq), for replay to consult per event.
    pub(crate) tombstones: std::sync::RwLock<std::collections::HashMap<String, u64>>,
    /// Orders the writes of tombstones (a group commit) against their deletion by retention, which
    /// decides which are stale and then deletes them: without it, a tombstone written between the
    /// two could be deleted.
    pub(crate) tombstone_writes: std::sync::Mutex<()>,
    /// The options the store was opened with (statistics enabled), for [`Store::rocksdb_stats`].
    db_opts: Options,
    /// `meta.retained_from` in memory (written only by [`Store::trim_before`]): read by every
    /// `/xrpc/_health`, where a RocksDB read of it cost more than the rest of the answer.
    pub(crate) retained_from: std::sync::atomic::AtomicU64,
    /// Account states in memory ([`crate::repo_cache`]), written through by [`Store::commit`].
    pub(crate) repo_cache: crate::repo_cache::RepoCache,
}

/// What the data directory holds on disk ([`Store::disk_usage`]), in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskUsage {
    /// Every file of the directory, as allocated on disk (`st_blocks` × 512, what `du` counts):
    /// SST files, write-ahead log, `MANIFEST`, `OPTIONS`, RocksDB's info `LOG`.
    pub total_bytes: u64,
    /// The write-ahead log files (`*.log`), as allocated.
    pub wal_bytes: u64,
    /// Live SST files of every column family (`rocksdb.live-sst-files-size`, their logical size).
    pub sst_bytes: u64,
}

/// What the directory at `path` holds on disk, as `du` counts it (allocated blocks of every file, in
/// subdirectories too), and the write-ahead log's share (`*.log` files); `sst_bytes` is left 0. Works
/// on a store in use by another process (`relay doctor`).
///
/// # Errors
/// The I/O error of listing the directory.
pub fn dir_usage(path: &Path) -> std::io::Result<DiskUsage> {
    use std::os::unix::fs::MetadataExt;
    let mut usage = DiskUsage::default();
    let mut dirs = vec![path.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            // A file deleted between the listing and this call is simply not counted.
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                dirs.push(entry.path());
                continue;
            }
            let allocated = meta.blocks().saturating_mul(512);
            usage.total_bytes += allocated;
            if entry.path().extension().is_some_and(|e| e == "log") {
                usage.wal_bytes += allocated;
            }
        }
    }
    Ok(usage)
}

/// RocksDB's own counters and state, for the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RocksStats {
    /// Microseconds writes were stalled or slowed down by RocksDB (`rocksdb.stall.micros`).
    pub stall_micros: u64,
    /// Bytes compactions read (`rocksdb.compact.read.bytes`).
    pub compaction_read_bytes: u64,
    /// Bytes compactions wrote (`rocksdb.compact.write.bytes`).
    pub compaction_write_bytes: u64,
    /// Compactions running now (`rocksdb.num-running-compactions`).
    pub running_compactions: u64,
    /// Bytes compactions still have to rewrite (`rocksdb.estimate-pending-compaction-bytes`).
    pub pending_compaction_bytes: u64,
    /// Whether RocksDB stopped writes (`rocksdb.is-write-stopped`).
    pub write_stopped: bool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.db.path()).finish()
    }
}

pub(crate) fn be_u64(b: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(b.try_into().ok()?))
}

impl Store {
    /// Opens (creating if missing) the store at `path` with all column families.
    ///
    /// # Errors
    /// [`StoreError::Rocks`] when RocksDB cannot open the directory;
    /// [`StoreError::UnsupportedFormat`] when it holds another format version.
    pub fn open(path: &Path, options: &StoreOptions) -> Result<Self, StoreError> {
        let mut env = rocksdb::Env::new()?;
        env.set_background_threads(options.background_threads.clamp(1, 64));
        env.set_high_priority_background_threads(1);
        // Compactions (the low-priority pool) yield the CPU and disk to the executors sharing their
        // core: they catch up in idle time; flushes (the high-priority pool, on the write path) do not.
        env.lower_thread_pool_cpu_priority();
        env.lower_thread_pool_io_priority();
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_env(&env);
        db_opts.set_max_background_jobs(options.background_threads.clamp(1, 64) + 1);
        db_opts.enable_statistics();
        // No periodic stats dump into RocksDB's LOG (every 10 minutes by default) and no stats
        // persistence: the relay reads its statistics and properties when /metrics is scraped.
        db_opts.set_stats_dump_period_sec(0);
        db_opts.set_stats_persist_period_sec(0);
        db_opts.set_max_total_wal_size(options.max_wal_bytes);
        // RocksDB's own info log (`LOG`, `LOG.old.*`): by default a thousand old files are kept; a
        // few of at most 16 MiB are enough to read the last incidents.
        db_opts.set_keep_log_file_num(4);
        db_opts.set_max_log_file_size(16 << 20);
        let cfs = cf::ALL.iter().map(|name| {
            let mut o = Options::default();
            o.set_write_buffer_size(options.write_buffer_bytes);
            if *name == cf::EVENTS {
                o.set_compression_type(rocksdb::DBCompressionType::Lz4);
            }
            if *name == cf::IDENTITIES {
                let ttl_ms = options.identity_ttl.as_millis() as u64;
                o.set_compaction_filter("identity_ttl", move |_level: u32, _key: &[u8], value: &[u8]| {
                    let fetched_ms = value.get(..8).and_then(be_u64).unwrap_or(0);
                    let now_ms = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64);
                    if now_ms.saturating_sub(fetched_ms) > ttl_ms {
                        rocksdb::compaction_filter::Decision::Remove
                    } else {
                        rocksdb::compaction_filter::Decision::Keep
                    }
                });
            }
            ColumnFamilyDescriptor::new(*name, o)
        });
        let db = DB::open_cf_descriptors(&db_opts, path, cfs)?;
        let store = Self {
            db,
            sync_writes: options.sync_writes,
            poisoned: AtomicBool::new(false),
            host_config_lock: std::sync::Mutex::new(()),
            tombstones: std::sync::RwLock::default(),
            tombstone_writes: std::sync::Mutex::new(()),
            db_opts,
            retained_from: std::sync::atomic::AtomicU64::new(0),
            repo_cache: crate::repo_cache::RepoCache::new(options.repo_cache_entries),
        };
        let meta = store.cf(cf::META);
        match store.db.get_cf(meta, META_FORMAT_VERSION)? {
            None => store.db.put_cf(meta, META_FORMAT_VERSION, FORMAT_VERSION.to_be_bytes())?,
            Some(v) => {
                let found = v.as_slice().try_into().map(u32::from_be_bytes).unwrap_or(0);
                if found != FORMAT_VERSION {
                    return Err(StoreError::UnsupportedFormat { found, want: FORMAT_VERSION });
                }
            }
        }
        store.load_tombstones()?;
        let retained_from = store.read_retained_from()?;
        store.retained_from.store(retained_from.0, std::sync::atomic::Ordering::Release);
        Ok(store)
    }

    pub(crate) fn cf(&self, name: &str) -> &ColumnFamily {
        // Every name in cf::ALL is created by `open`, so the handle always exists.
        #[allow(clippy::expect_used)]
        self.db.cf_handle(name).expect("column family created at open")
    }

    /// The highest relay `seq` ever assigned, or `None` for a new store.
    ///
    /// Reads `meta.last_seq` and the last key of `events` and returns the larger, so a `seq` is never
    /// reused after a restart, whatever was trimmed.
    ///
    /// # Errors
    /// [`StoreError::Rocks`] or [`StoreError::Corrupt`].
    pub fn last_seq(&self) -> Result<Option<RelaySeq>, StoreError> {
        let meta = match self.db.get_cf(self.cf(cf::META), META_LAST_SEQ)? {
            Some(v) => Some(be_u64(&v).ok_or_else(|| corrupt(cf::META, META_LAST_SEQ))?),
            None => None,
        };
        let last_event = match self.db.iterator_cf(self.cf(cf::EVENTS), IteratorMode::End).next() {
            Some(item) => {
                let (k, _) = item?;
                Some(be_u64(&k).ok_or_else(|| corrupt(cf::EVENTS, &k))?)
            }
            None => None,
        };
        Ok(meta.max(last_event).map(RelaySeq))
    }

    /// Raises the highest relay `seq` ever assigned to at least `seq` (`meta.last_seq`, synced), so
    /// the next one assigned is above it, whatever is stored and across restarts
    /// (`--initial-seq-number`). Returns whether it changed anything.
    ///
    /// # Errors
    /// [`StoreError::Rocks`] or [`StoreError::Corrupt`].
    pub fn raise_last_seq(&self, seq: RelaySeq) -> Result<bool, StoreError> {
        if self.last_seq()?.is_some_and(|last| last >= seq) || seq.0 == 0 {
            return Ok(false);
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.put_cf_opt(self.cf(cf::META), META_LAST_SEQ, seq.0.to_be_bytes(), &wo)?;
        Ok(true)
    }

    /// Writes a batch atomically: events, account states, host cursors and `meta.last_seq` in one
    /// RocksDB `WriteBatch`, fsynced when [`StoreOptions::sync_writes`] is set.
    ///
    /// # Errors
    /// [`StoreError::Poisoned`] after an earlier failure; [`StoreError::Rocks`] when this write
    /// fails, which also poisons the store.
    pub fn commit(&self, batch: &CommitBatch) -> Result<(), StoreError> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(StoreError::Poisoned);
        }
        let mut wb = WriteBatch::default();
        let events = self.cf(cf::EVENTS);
        for (seq, frame) in &batch.events {
            wb.put_cf(events, seq.0.to_be_bytes(), frame);
        }
        if let Some((seq, _)) = batch.events.last() {
            wb.put_cf(self.cf(cf::META), META_LAST_SEQ, seq.0.to_be_bytes());
        }
        let repos = self.cf(cf::REPOS);
        for (did, state) in &batch.repos {
            wb.put_cf(repos, did.as_str(), state.encode());
        }
        let hosts = self.cf(cf::HOSTS);
        for (host, state) in &batch.hosts {
            wb.put_cf(hosts, host, state.encode());
        }
        if let Some((second, seq)) = batch.time_index {
            wb.put_cf(self.cf(cf::TIME_INDEX), second.to_be_bytes(), seq.0.to_be_bytes());
        }
        let tombstones = self.cf(cf::TOMBSTONES);
        for (did, seq) in &batch.tombstones {
            wb.put_cf(tombstones, did.as_str(), seq.0.to_be_bytes());
        }
        let collections = self.cf(cf::COLLECTIONS);
        for (collection, did, seq) in &batch.collections {
            wb.put_cf(collections, crate::accounts::collection_key(collection, did.as_str()), seq.0.to_be_bytes());
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(self.sync_writes);
        // Only batches with tombstones take the lock (rare: takedowns and deletions).
        let _tombstones = (!batch.tombstones.is_empty())
            .then(|| self.tombstone_writes.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        self.db.write_opt(wb, &wo).map_err(|e| {
            self.poisoned.store(true, Ordering::Release);
            StoreError::Rocks(e)
        })?;
        if !batch.tombstones.is_empty() {
            let mut map = self.tombstones.write().unwrap_or_else(std::sync::PoisonError::into_inner);
            for (did, seq) in &batch.tombstones {
                map.insert(did.to_string(), seq.0);
            }
        }
        for (did, state) in &batch.repos {
            self.repo_cache.wrote(did, state);
        }
        Ok(())
    }

    /// RocksDB's counters and state ([`RocksStats`]), summed over the column families where they are
    /// per column family.
    pub fn rocksdb_stats(&self) -> RocksStats {
        use rocksdb::statistics::Ticker;
        let sum = |property: &str| -> u64 {
            cf::ALL
                .iter()
                .filter_map(|name| self.db.property_int_value_cf(self.cf(name), property).ok().flatten())
                .sum()
        };
        RocksStats {
            stall_micros: self.db_opts.get_ticker_count(Ticker::StallMicros),
            compaction_read_bytes: self.db_opts.get_ticker_count(Ticker::CompactReadBytes),
            compaction_write_bytes: self.db_opts.get_ticker_count(Ticker::CompactWriteBytes),
            running_compactions: self
                .db
                .property_int_value("rocksdb.num-running-compactions")
                .ok()
                .flatten()
                .unwrap_or(0),
            pending_compaction_bytes: sum("rocksdb.estimate-pending-compaction-bytes"),
            write_stopped: sum("rocksdb.is-write-stopped") > 0,
        }
    }

    /// Free bytes (for an unprivileged writer) of the filesystem holding the store, by `statvfs`.
    ///
    /// # Errors
    /// The OS error of `statvfs`.
    pub fn free_disk_bytes(&self) -> std::io::Result<u64> {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(self.db.path().as_os_str().as_bytes()).map_err(std::io::Error::other)?;
        let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
        // SAFETY: `path` is a NUL-terminated string; `st` is written by statvfs before it is read.
        let rc = unsafe { libc::statvfs(path.as_ptr(), st.as_mut_ptr()) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: statvfs returned 0, so it filled `st`.
        let st = unsafe { st.assume_init() };
        Ok(st.f_bavail.saturating_mul(st.f_frsize))
    }

    /// Flushes every column family's memtable to SST files and waits for it: the write-ahead log
    /// they pinned is then deleted. For tests and tools; the relay leaves flushing to RocksDB.
    ///
    /// # Errors
    /// [`StoreError::Rocks`].
    pub fn flush_all(&self) -> Result<(), StoreError> {
        for name in cf::ALL {
            self.db.flush_cf(self.cf(name))?;
        }
        Ok(())
    }

    /// What the data directory holds on disk ([`DiskUsage`]): allocated bytes of every file in it,
    /// as `du` counts them, and the write-ahead log's and live SST files' shares. Reads the
    /// directory (a few hundred entries) and RocksDB properties; cheap enough to call every second.
    ///
    /// # Errors
    /// [`StoreError::Io`] when the directory cannot be read; [`StoreError::Rocks`].
    pub fn disk_usage(&self) -> Result<DiskUsage, StoreError> {
        let mut usage = dir_usage(self.db.path()).map_err(StoreError::Io)?;
        for name in cf::ALL {
            usage.sst_bytes +=
                self.db.property_int_value_cf(self.cf(name), "rocksdb.live-sst-files-size")?.unwrap_or(0);
        }
        Ok(usage)
    }

    pub(crate) fn get_decoded<T>(
        &self,
        name: &'static str,
        key: &[u8],
        decode: fn(&[u8]) -> Option<T>,
    ) -> Result<Option<T>, StoreError> {
        match self.db.get_pinned_cf(self.cf(name), key)? {
            Some(v) => decode(&v).map(Some).ok_or_else(|| corrupt(name, key)),
            None => Ok(None),
        }
    }
}

pub(crate) fn corrupt(cf: &'static str, key: &[u8]) -> StoreError {
    StoreError::Corrupt { cf, key: String::from_utf8_lossy(key).into_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::HostSeq;

    fn batch(seqs: std::ops::RangeInclusive<u64>) -> CommitBatch {
        CommitBatch {
            events: seqs.map(|s| (RelaySeq(s), Bytes::from(format!("frame {s}")))).collect(),
            hosts: vec![("localhost:2583".into(), HostState::at(HostSeq(9)))],
            ..CommitBatch::default()
        }
    }

    /// The write-ahead log stays near its bound although the small column families, written by
    /// every batch, never fill their memtables: RocksDB flushes them once the log passes
    /// `max_wal_bytes`. With RocksDB's own rule (0) the log holds everything written.
    #[test]
    fn the_write_ahead_log_is_bounded() {
        let run = |max_wal_bytes: u64| {
            let dir = tempfile::tempdir().unwrap();
            let options =
                StoreOptions { write_buffer_bytes: 1 << 20, max_wal_bytes, sync_writes: false, ..Default::default() };
            let store = Store::open(dir.path(), &options).unwrap();
            let did = Did::new("did:plc:aaaaaaaaaaaaaaaaaaaaaaaa").unwrap();
            let mut wal_max = 0;
            for b in 0..1_000u64 {
                let events = (0..10).map(|i| (RelaySeq(b * 10 + i + 1), Bytes::from(vec![b as u8; 4096]))).collect();
                let mut repo = RepoState::new("pds.example");
                repo.host = format!("pds{b}.example");
                let batch = CommitBatch {
                    events,
                    repos: vec![(did.clone(), repo)],
                    hosts: vec![("pds.example".into(), HostState { account_count: 1, ..HostState::at(HostSeq(b)) })],
                    ..CommitBatch::default()
                };
                store.commit(&batch).unwrap();
                wal_max = wal_max.max(store.disk_usage().unwrap().wal_bytes);
            }
            wal_max
        };
        // 40 MiB of events written in 1,000 batches.
        let bounded = run(4 << 20);
        assert!(bounded <= 8 << 20, "the log reached {bounded} bytes with a 4 MiB bound");
        let unbounded = run(0);
        assert!(unbounded >= 30 << 20, "RocksDB's own rule kept only {unbounded} bytes of log");
    }

    #[test]
    fn the_last_seq_can_be_raised_but_never_lowered() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        store.commit(&batch(1..=5)).unwrap();
        assert!(!store.raise_last_seq(RelaySeq(3)).unwrap(), "already past it");
        assert!(store.raise_last_seq(RelaySeq(999)).unwrap());
        drop(store);
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        assert_eq!(store.last_seq().unwrap(), Some(RelaySeq(999)), "kept across a restart");
        store.commit(&batch(1000..=1000)).unwrap();
        assert!(!store.raise_last_seq(RelaySeq(500)).unwrap());
        assert_eq!(store.last_seq().unwrap(), Some(RelaySeq(1000)));
    }

    #[test]
    fn seq_survives_reopen_and_replay_reads_in_order() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
            assert_eq!(store.last_seq().unwrap(), None);
            store.commit(&batch(1..=5)).unwrap();
        }
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        assert_eq!(store.last_seq().unwrap(), Some(RelaySeq(5)));
        assert_eq!(store.first_seq().unwrap(), Some(RelaySeq(1)));
        let got: Vec<u64> = store.replay(RelaySeq(2), 10, usize::MAX).unwrap().events.iter().map(|e| e.0.0).collect();
        assert_eq!(got, vec![3, 4, 5]);
        assert_eq!(store.replay(RelaySeq(0), 2, usize::MAX).unwrap().events.len(), 2);
        assert_eq!(store.host("localhost:2583").unwrap(), Some(HostState::at(HostSeq(9))));
        assert_eq!(store.host("other").unwrap(), None);
    }
}
