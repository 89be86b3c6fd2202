//! The [`Store`]: opening, group-commit writes, point reads and the replay reader.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, WriteBatch, WriteOptions};
use wire::{Did, RelaySeq};

use crate::error::StoreError;
use crate::layout::{HostConfig, HostInfo, HostState, IdentityRecord, RepoState};
use crate::{FORMAT_VERSION, cf};

const META_FORMAT_VERSION: &[u8] = b"format_version";
const META_LAST_SEQ: &[u8] = b"last_seq";
const META_CRAWL_ENABLED: &[u8] = b"crawl_enabled";
const META_CRAWL_QUOTA: &[u8] = b"crawl_quota";

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
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self { sync_writes: true, background_threads: 2, write_buffer_bytes: 64 << 20 }
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
}

impl CommitBatch {
    /// Whether the batch writes nothing.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.repos.is_empty() && self.hosts.is_empty()
    }
}

/// The relay's RocksDB store. Shared by all executors (`Arc<Store>`); every method is a blocking
/// RocksDB call.
pub struct Store {
    db: DB,
    sync_writes: bool,
    poisoned: AtomicBool,
    /// Serializes read-modify-write of `host_config` (the API of several cores may change one host).
    host_config_lock: std::sync::Mutex<()>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.db.path()).finish()
    }
}

fn be_u64(b: &[u8]) -> Option<u64> {
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
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_env(&env);
        db_opts.set_max_background_jobs(options.background_threads.clamp(1, 64) + 1);
        let cfs = cf::ALL.iter().map(|name| {
            let mut o = Options::default();
            o.set_write_buffer_size(options.write_buffer_bytes);
            if *name == cf::EVENTS {
                o.set_compression_type(rocksdb::DBCompressionType::Lz4);
            }
            ColumnFamilyDescriptor::new(*name, o)
        });
        let db = DB::open_cf_descriptors(&db_opts, path, cfs)?;
        let store = Self {
            db,
            sync_writes: options.sync_writes,
            poisoned: AtomicBool::new(false),
            host_config_lock: std::sync::Mutex::new(()),
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
        Ok(store)
    }

    fn cf(&self, name: &str) -> &ColumnFamily {
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
        let mut wo = WriteOptions::default();
        wo.set_sync(self.sync_writes);
        self.db.write_opt(wb, &wo).map_err(|e| {
            self.poisoned.store(true, Ordering::Release);
            StoreError::Rocks(e)
        })
    }

    /// Reads up to `max` events with `seq > after`, in order.
    ///
    /// # Errors
    /// [`StoreError::Rocks`] or [`StoreError::Corrupt`].
    pub fn events_after(&self, after: RelaySeq, max: usize) -> Result<Vec<(RelaySeq, Bytes)>, StoreError> {
        let start = after.0.saturating_add(1).to_be_bytes();
        let mut out = Vec::with_capacity(max.min(1024));
        for item in self.db.iterator_cf(self.cf(cf::EVENTS), IteratorMode::From(&start, Direction::Forward)).take(max) {
            let (k, v) = item?;
            let seq = be_u64(&k).ok_or_else(|| corrupt(cf::EVENTS, &k))?;
            out.push((RelaySeq(seq), Bytes::from(Vec::from(v))));
        }
        Ok(out)
    }

    /// The lowest stored relay `seq`, or `None` when no event is stored.
    ///
    /// # Errors
    /// [`StoreError::Rocks`] or [`StoreError::Corrupt`].
    pub fn first_seq(&self) -> Result<Option<RelaySeq>, StoreError> {
        match self.db.iterator_cf(self.cf(cf::EVENTS), IteratorMode::Start).next() {
            Some(item) => {
                let (k, _) = item?;
                Ok(Some(RelaySeq(be_u64(&k).ok_or_else(|| corrupt(cf::EVENTS, &k))?)))
            }
            None => Ok(None),
        }
    }

    /// The last relayed commit of `did`, if any.
    ///
    /// # Errors
    /// [`StoreError::Rocks`] or [`StoreError::Corrupt`].
    pub fn repo(&self, did: &Did) -> Result<Option<RepoState>, StoreError> {
        self.get_decoded(cf::REPOS, did.as_str().as_bytes(), RepoState::decode)
    }

    /// Up to `limit` accounts in DID order, starting after `after` (exclusive) when given.
    ///
    /// # Errors
    /// [`StoreError::Rocks`] or [`StoreError::Corrupt`].
    pub fn repos_after(&self, after: Option<&str>, limit: usize) -> Result<Vec<(Did, RepoState)>, StoreError> {
        let mode = match after {
            Some(a) => IteratorMode::From(a.as_bytes(), Direction::Forward),
            None => IteratorMode::Start,
        };
        let mut out = Vec::with_capacity(limit.min(1024));
        for item in self.db.iterator_cf(self.cf(cf::REPOS), mode) {
            let (k, v) = item?;
            if after.is_some_and(|a| a.as_bytes() == &*k) {
                continue;
            }
            let did =
                std::str::from_utf8(&k).ok().and_then(|d| Did::new(d).ok()).ok_or_else(|| corrupt(cf::REPOS, &k))?;
            out.push((did, RepoState::decode(&v).ok_or_else(|| corrupt(cf::REPOS, &k))?));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// The persisted state of `host`, if any.
    ///
    /// # Errors
    /// [`StoreError::Rocks`] or [`StoreError::Corrupt`].
    pub fn host(&self, host: &str) -> Result<Option<HostState>, StoreError> {
        self.get_decoded(cf::HOSTS, host.as_bytes(), HostState::decode)
    }

    /// The connection status of `host`, if recorded.
    ///
    /// # Errors
    /// [`StoreError::Rocks`] or [`StoreError::Corrupt`].
    pub fn host_info(&self, host: &str) -> Result<Option<HostInfo>, StoreError> {
        self.get_decoded(cf::HOST_INFO, host.as_bytes(), HostInfo::decode)
    }

    /// Records the connection status of `host` (not fsynced: it is rewritten on every change).
    ///
    /// # Errors
    /// [`StoreError::Rocks`].
    pub fn put_host_info(&self, host: &str, info: &HostInfo) -> Result<(), StoreError> {
        Ok(self.db.put_cf(self.cf(cf::HOST_INFO), host, info.encode())?)
    }

    /// The operator settings of `host`, if it is known.
    ///
    /// # Errors
    /// [`StoreError::Rocks`] or [`StoreError::Corrupt`].
    pub fn host_config(&self, host: &str) -> Result<Option<HostConfig>, StoreError> {
        self.get_decoded(cf::HOST_CONFIG, host.as_bytes(), HostConfig::decode)
    }

    /// Read-modify-write of `host`'s settings under a lock (synced): `change` gets the current value
    /// and returns the new one, or `None` to leave it. Returns what is stored afterwards.
    ///
    /// # Errors
    /// [`StoreError::Rocks`] or [`StoreError::Corrupt`].
    pub fn update_host_config(
        &self,
        host: &str,
        change: impl FnOnce(Option<HostConfig>) -> Option<HostConfig>,
    ) -> Result<Option<HostConfig>, StoreError> {
        let _guard = self.host_config_lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let current = self.host_config(host)?;
        match change(current) {
            Some(next) if Some(next) != current => {
                let mut opts = WriteOptions::default();
                opts.set_sync(self.sync_writes);
                self.db.put_cf_opt(self.cf(cf::HOST_CONFIG), host, next.encode(), &opts)?;
                Ok(Some(next))
            }
            _ => Ok(current),
        }
    }

    /// [`Store::update_host_config`] for many hosts at once, written as one synced batch (thousands of
    /// `--host` flags or a `pull-hosts` page cost one fsync). Returns, per host, what was stored before
    /// and what is stored after.
    ///
    /// # Errors
    /// [`StoreError::Rocks`] or [`StoreError::Corrupt`] (then nothing was written).
    pub fn update_host_configs(
        &self,
        hosts: &[&str],
        mut change: impl FnMut(&str, Option<HostConfig>) -> Option<HostConfig>,
    ) -> Result<Vec<ConfigChange>, StoreError> {
        let _guard = self.host_config_lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut batch = WriteBatch::default();
        let mut out = Vec::with_capacity(hosts.len());
        for host in hosts {
            let current = self.host_config(host)?;
            match change(host, current) {
                Some(next) if Some(next) != current => {
                    batch.put_cf(self.cf(cf::HOST_CONFIG), host, next.encode());
                    out.push((current, Some(next)));
                }
                _ => out.push((current, current)),
            }
        }
        if !batch.is_empty() {
            let mut opts = WriteOptions::default();
            opts.set_sync(self.sync_writes);
            self.db.write_opt(batch, &opts)?;
        }
        Ok(out)
    }

    /// Every known host with its settings, in hostname order.
    ///
    /// # Errors
    /// [`StoreError::Rocks`] or [`StoreError::Corrupt`].
    pub fn host_configs(&self) -> Result<Vec<(String, HostConfig)>, StoreError> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(cf::HOST_CONFIG), IteratorMode::Start) {
            let (k, v) = item?;
            let host = String::from_utf8(k.to_vec()).map_err(|_| corrupt(cf::HOST_CONFIG, &k))?;
            out.push((host, HostConfig::decode(&v).ok_or_else(|| corrupt(cf::HOST_CONFIG, &k))?));
        }
        Ok(out)
    }

    /// Up to `limit` known hosts in hostname order, after `after` when given: their settings, their
    /// connection status once their ingest shard recorded one, and their cursor and account count
    /// once the sequencer wrote them.
    ///
    /// # Errors
    /// [`StoreError::Rocks`] or [`StoreError::Corrupt`].
    pub fn hosts_after(&self, after: Option<&str>, limit: usize) -> Result<Vec<HostRow>, StoreError> {
        let mode = match after {
            Some(a) => IteratorMode::From(a.as_bytes(), Direction::Forward),
            None => IteratorMode::Start,
        };
        let mut out = Vec::with_capacity(limit.min(1024));
        for item in self.db.iterator_cf(self.cf(cf::HOST_CONFIG), mode) {
            let (k, v) = item?;
            if after.is_some_and(|a| a.as_bytes() == &*k) {
                continue;
            }
            let host = String::from_utf8(k.to_vec()).map_err(|_| corrupt(cf::HOST_CONFIG, &k))?;
            let config = HostConfig::decode(&v).ok_or_else(|| corrupt(cf::HOST_CONFIG, &k))?;
            let info = self.host_info(&host)?;
            let state = self.host(&host)?;
            out.push(HostRow { host, config, info, state });
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// The [`HostRow`] of one host, if known.
    ///
    /// # Errors
    /// [`StoreError::Rocks`] or [`StoreError::Corrupt`].
    pub fn host_row(&self, host: &str) -> Result<Option<HostRow>, StoreError> {
        let Some(config) = self.host_config(host)? else { return Ok(None) };
        Ok(Some(HostRow { host: host.to_owned(), config, info: self.host_info(host)?, state: self.host(host)? }))
    }

    /// Banned domains (each also bans its subdomains) with when, ms since the UNIX epoch.
    ///
    /// # Errors
    /// [`StoreError::Rocks`] or [`StoreError::Corrupt`].
    pub fn domain_bans(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(cf::DOMAIN_BANS), IteratorMode::Start) {
            let (k, v) = item?;
            let domain = String::from_utf8(k.to_vec()).map_err(|_| corrupt(cf::DOMAIN_BANS, &k))?;
            out.push((domain, be_u64(&v).ok_or_else(|| corrupt(cf::DOMAIN_BANS, &k))?));
        }
        Ok(out)
    }

    /// Bans (`Some(at_ms)`) or unbans (`None`) `domain` (synced).
    ///
    /// # Errors
    /// [`StoreError::Rocks`].
    pub fn set_domain_ban(&self, domain: &str, at_ms: Option<u64>) -> Result<(), StoreError> {
        let mut opts = WriteOptions::default();
        opts.set_sync(self.sync_writes);
        let cf = self.cf(cf::DOMAIN_BANS);
        match at_ms {
            Some(at) => self.db.put_cf_opt(cf, domain, at.to_be_bytes(), &opts)?,
            None => self.db.delete_cf_opt(cf, domain, &opts)?,
        }
        Ok(())
    }

    /// The new-host quota's state: (UTC day number, hosts added that day by public `requestCrawl`).
    ///
    /// # Errors
    /// [`StoreError::Rocks`] or [`StoreError::Corrupt`].
    pub fn crawl_quota(&self) -> Result<Option<(u64, u32)>, StoreError> {
        match self.db.get_cf(self.cf(cf::META), META_CRAWL_QUOTA)? {
            None => Ok(None),
            Some(v) => {
                let day = v.get(..8).and_then(be_u64);
                let count = v.get(8..12).and_then(|b| b.try_into().ok()).map(u32::from_be_bytes);
                match (day, count, v.len()) {
                    (Some(d), Some(c), 12) => Ok(Some((d, c))),
                    _ => Err(corrupt(cf::META, META_CRAWL_QUOTA)),
                }
            }
        }
    }

    /// Records the new-host quota's state (not synced: a lost update only lets a few more hosts in
    /// after a crash).
    ///
    /// # Errors
    /// [`StoreError::Rocks`].
    pub fn set_crawl_quota(&self, day: u64, count: u32) -> Result<(), StoreError> {
        let mut v = day.to_be_bytes().to_vec();
        v.extend_from_slice(&count.to_be_bytes());
        Ok(self.db.put_cf(self.cf(cf::META), META_CRAWL_QUOTA, v)?)
    }

    /// Whether public `requestCrawl` is enabled (default true).
    ///
    /// # Errors
    /// [`StoreError::Rocks`].
    pub fn crawl_enabled(&self) -> Result<bool, StoreError> {
        Ok(self.db.get_cf(self.cf(cf::META), META_CRAWL_ENABLED)?.is_none_or(|v| v.first() != Some(&0)))
    }

    /// Enables or disables public `requestCrawl` (synced).
    ///
    /// # Errors
    /// [`StoreError::Rocks`].
    pub fn set_crawl_enabled(&self, enabled: bool) -> Result<(), StoreError> {
        let mut opts = WriteOptions::default();
        opts.set_sync(self.sync_writes);
        Ok(self.db.put_cf_opt(self.cf(cf::META), META_CRAWL_ENABLED, [u8::from(enabled)], &opts)?)
    }

    /// The cached identity of `did`, if any (whatever its age; the caller applies TTLs).
    ///
    /// # Errors
    /// [`StoreError::Rocks`] or [`StoreError::Corrupt`].
    pub fn identity(&self, did: &Did) -> Result<Option<IdentityRecord>, StoreError> {
        self.get_decoded(cf::IDENTITIES, did.as_str().as_bytes(), IdentityRecord::decode)
    }

    /// Caches an identity. Not fsynced: a lost entry is only re-resolved.
    ///
    /// # Errors
    /// [`StoreError::Rocks`].
    pub fn put_identity(&self, did: &Did, record: &IdentityRecord) -> Result<(), StoreError> {
        Ok(self.db.put_cf(self.cf(cf::IDENTITIES), did.as_str(), record.encode())?)
    }

    /// Removes a cached identity (after `#identity`, or when it failed to verify).
    ///
    /// # Errors
    /// [`StoreError::Rocks`].
    pub fn delete_identity(&self, did: &Did) -> Result<(), StoreError> {
        Ok(self.db.delete_cf(self.cf(cf::IDENTITIES), did.as_str())?)
    }

    fn get_decoded<T>(
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

/// A host's settings before and after [`Store::update_host_configs`].
pub type ConfigChange = (Option<HostConfig>, Option<HostConfig>);

/// One row of [`Store::hosts_after`].
#[derive(Debug, Clone)]
pub struct HostRow {
    /// Hostname, with `:port` when not the default.
    pub host: String,
    /// Operator settings.
    pub config: HostConfig,
    /// Connection status, once the host's ingest shard recorded one.
    pub info: Option<HostInfo>,
    /// Cursor and account count, once the sequencer wrote them.
    pub state: Option<HostState>,
}

fn corrupt(cf: &'static str, key: &[u8]) -> StoreError {
    StoreError::Corrupt { cf, key: String::from_utf8_lossy(key).into_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::{HostSeq, Tid};

    fn batch(seqs: std::ops::RangeInclusive<u64>) -> CommitBatch {
        CommitBatch {
            events: seqs.map(|s| (RelaySeq(s), Bytes::from(format!("frame {s}")))).collect(),
            repos: vec![],
            hosts: vec![("localhost:2583".into(), HostState { cursor: HostSeq(9), account_count: 0 })],
        }
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
        let got: Vec<u64> = store.events_after(RelaySeq(2), 10).unwrap().iter().map(|e| e.0.0).collect();
        assert_eq!(got, vec![3, 4, 5]);
        assert_eq!(store.events_after(RelaySeq(0), 2).unwrap().len(), 2);
        assert_eq!(store.host("localhost:2583").unwrap(), Some(HostState { cursor: HostSeq(9), account_count: 0 }));
        assert_eq!(store.host("other").unwrap(), None);
    }

    #[test]
    fn host_table_bans_and_switch_persist() {
        let dir = tempfile::tempdir().unwrap();
        let config = HostConfig { tls: true, trusted: false, banned: false, account_limit: 100, added_ms: 1 };
        {
            let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
            assert!(store.crawl_enabled().unwrap());
            let changes = store.update_host_configs(&["b.example", "a.example"], |_, c| c.or(Some(config))).unwrap();
            assert_eq!(changes, vec![(None, Some(config)), (None, Some(config))]);
            // Unchanged settings are not rewritten; a change is read back.
            assert_eq!(store.update_host_config("a.example", |c| c).unwrap(), Some(config));
            let banned =
                store.update_host_config("a.example", |c| c.map(|c| HostConfig { banned: true, ..c })).unwrap();
            assert_eq!(banned.map(|c| c.banned), Some(true));
            store.set_domain_ban("evil.example", Some(7)).unwrap();
            store.set_domain_ban("gone.example", Some(8)).unwrap();
            store.set_domain_ban("gone.example", None).unwrap();
            store.set_crawl_enabled(false).unwrap();
            assert_eq!(store.crawl_quota().unwrap(), None);
            store.set_crawl_quota(20_000, 3).unwrap();
        }
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        assert!(!store.crawl_enabled().unwrap());
        assert_eq!(store.crawl_quota().unwrap(), Some((20_000, 3)));
        assert_eq!(store.domain_bans().unwrap(), vec![("evil.example".to_owned(), 7)]);
        let hosts: Vec<String> = store.hosts_after(None, 10).unwrap().into_iter().map(|r| r.host).collect();
        assert_eq!(hosts, vec!["a.example", "b.example"]);
        let page = store.hosts_after(Some("a.example"), 10).unwrap();
        assert_eq!((page.len(), page[0].config, page[0].info), (1, config, None));
        assert!(store.host_row("a.example").unwrap().is_some_and(|r| r.config.banned));
        assert!(store.host_row("c.example").unwrap().is_none());
    }

    #[test]
    fn repo_state_is_written_with_the_batch() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let did = Did::new("did:plc:abc").unwrap();
        let cid = wire::car::cid_for(wire::car::CODEC_DAG_CBOR, b"c");
        let state = RepoState {
            rev: Some(Tid::new("3n2senwrdcs2x").unwrap()),
            commit: Some(cid),
            data: Some(cid),
            ..RepoState::new("h")
        };
        let mut b = batch(1..=1);
        b.repos.push((did.clone(), state.clone()));
        store.commit(&b).unwrap();
        assert_eq!(store.repo(&did).unwrap(), Some(state.clone()));
        let other = Did::new("did:plc:abd").unwrap();
        let mut b = batch(2..=2);
        b.repos.push((other.clone(), state));
        store.commit(&b).unwrap();
        let dids = |v: Vec<(Did, RepoState)>| v.into_iter().map(|(d, _)| d).collect::<Vec<_>>();
        assert_eq!(dids(store.repos_after(None, 10).unwrap()), vec![did.clone(), other.clone()]);
        assert_eq!(dids(store.repos_after(None, 1).unwrap()), vec![did.clone()]);
        assert_eq!(dids(store.repos_after(Some(did.as_str()), 10).unwrap()), vec![other]);
    }
}
