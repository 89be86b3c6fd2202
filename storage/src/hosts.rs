//! The host table: `hosts` (cursor and account count, written by the sequencer), `host_info`
//! (connection status, written by the host's ingest shard), `host_config` (the operator's settings)
//! and `domain_bans`, plus the public `requestCrawl` switch and quota in `meta`.

use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions};

use crate::cf;
use crate::error::StoreError;
use crate::layout::{HostConfig, HostInfo, HostState};
use crate::store::{META_CRAWL_ENABLED, META_CRAWL_QUOTA, Store, be_u64, corrupt};

impl Store {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreOptions;

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
}
