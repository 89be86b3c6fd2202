//! Host policy shared by every core: settings for new hosts, bans, the public `requestCrawl` switch
//! and its per-day quota, per-host event rate limits, the SSRF address check, and the table of live
//! upstream connections (written by ingest shards on connect and disconnect, read by the admin API).
//!
//! Defaults follow indigo's relay (`cmd/relay`): 100 accounts for a new host, 10,000,000 for a trusted
//! one; 50 new hosts a day; event rates of 50/s + accounts/1000, 2,500/h + accounts and
//! 20,000/day + 10 × accounts, and 5,000/s, 50,000,000/h and 500,000,000/day for trusted hosts.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use storage::{HostConfig, Store, StoreError};
use wire::Hostname;

/// Settings for hosts the relay adds, and the public `requestCrawl` quota.
#[derive(Debug, Clone)]
pub struct HostPolicy {
    /// Account limit of a new host. Default 100.
    pub default_account_limit: u64,
    /// Account limit of a new trusted host. Default 10,000,000.
    pub trusted_account_limit: u64,
    /// Domains whose hosts (the domain itself and every subdomain) are trusted when added, lowercase.
    /// Default none.
    pub trusted_domains: Vec<String>,
    /// New hosts a public `requestCrawl` may add per UTC day. Default 50; 0 refuses every new host.
    pub new_hosts_per_day: u32,
}

impl Default for HostPolicy {
    fn default() -> Self {
        Self {
            default_account_limit: 100,
            trusted_account_limit: 10_000_000,
            trusted_domains: Vec::new(),
            new_hosts_per_day: 50,
        }
    }
}

/// Whether `host` (its name, without port) is `domain` or a subdomain of it.
pub fn in_domain(host: &Hostname, domain: &str) -> bool {
    let name = host.name();
    name == domain || name.strip_suffix(domain).is_some_and(|rest| rest.ends_with('.'))
}

/// An upstream connection that is open now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// The ingest shard (0-based) holding it.
    pub shard: usize,
    /// When it was opened, ms since the UNIX epoch.
    pub since_ms: u64,
    /// Over TLS.
    pub tls: bool,
    /// Unique per connection (set by [`HostRegistry::connected`]), so closing an old connection
    /// never unlists a newer one of the same host.
    pub id: u64,
}

/// Shared host policy and state (one per process, behind an `Arc`).
#[derive(Debug)]
pub struct HostRegistry {
    store: Arc<Store>,
    policy: HostPolicy,
    domain_bans: RwLock<Vec<String>>,
    crawl_enabled: AtomicBool,
    new_hosts_per_day: AtomicU32,
    /// (UTC day number, hosts added that day by public `requestCrawl`).
    added_today: Mutex<(u64, u32)>,
    connections: Mutex<BTreeMap<String, Connection>>,
    next_connection: std::sync::atomic::AtomicU64,
}

impl HostRegistry {
    /// Loads the domain bans and the `requestCrawl` switch from `store`.
    ///
    /// # Errors
    /// A store read error.
    pub fn new(store: Arc<Store>, policy: HostPolicy) -> Result<Self, StoreError> {
        let bans = store.domain_bans()?.into_iter().map(|(d, _)| d).collect();
        let enabled = store.crawl_enabled()?;
        let added_today = store.crawl_quota()?.unwrap_or((0, 0));
        Ok(Self {
            new_hosts_per_day: AtomicU32::new(policy.new_hosts_per_day),
            store,
            policy,
            domain_bans: RwLock::new(bans),
            crawl_enabled: AtomicBool::new(enabled),
            added_today: Mutex::new(added_today),
            connections: Mutex::new(BTreeMap::new()),
            next_connection: std::sync::atomic::AtomicU64::new(1),
        })
    }

    /// The store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The settings for a host added now: trusted (with the trusted account limit) when it is in a
    /// trusted domain.
    pub fn new_config(&self, host: &Hostname, tls: bool, now_ms: u64) -> HostConfig {
        let trusted = self.policy.trusted_domains.iter().any(|d| in_domain(host, d));
        let account_limit = if trusted { self.policy.trusted_account_limit } else { self.policy.default_account_limit };
        HostConfig { tls, trusted, banned: false, account_limit, added_ms: now_ms }
    }

    /// The banned domain `host` falls in, if any.
    pub fn domain_ban(&self, host: &Hostname) -> Option<String> {
        let bans = self.domain_bans.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        bans.iter().find(|d| in_domain(host, d)).cloned()
    }

    /// Banned domains, sorted.
    pub fn domain_bans(&self) -> Vec<String> {
        let mut bans = self.domain_bans.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        bans.sort();
        bans
    }

    /// Bans (`banned`) or unbans `domain` (lowercase), persisting it. Returns whether it changed.
    ///
    /// # Errors
    /// A store write error (then nothing changed).
    pub fn set_domain_ban(&self, domain: &str, banned: bool, now_ms: u64) -> Result<bool, StoreError> {
        let present =
            self.domain_bans.read().unwrap_or_else(std::sync::PoisonError::into_inner).iter().any(|d| d == domain);
        if present == banned {
            return Ok(false);
        }
        // Written (and fsynced) before taking the lock that every connection attempt reads.
        self.store.set_domain_ban(domain, banned.then_some(now_ms))?;
        let mut bans = self.domain_bans.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        bans.retain(|d| d != domain);
        if banned {
            bans.push(domain.to_owned());
        }
        Ok(true)
    }

    /// Whether public `requestCrawl` is enabled.
    pub fn crawl_enabled(&self) -> bool {
        self.crawl_enabled.load(Ordering::Acquire)
    }

    /// Enables or disables public `requestCrawl`, persisting it.
    ///
    /// # Errors
    /// A store write error (then nothing changed).
    pub fn set_crawl_enabled(&self, enabled: bool) -> Result<(), StoreError> {
        self.store.set_crawl_enabled(enabled)?;
        self.crawl_enabled.store(enabled, Ordering::Release);
        Ok(())
    }

    /// The current new-hosts-per-day quota.
    pub fn new_hosts_per_day(&self) -> u32 {
        self.new_hosts_per_day.load(Ordering::Acquire)
    }

    /// Changes the new-hosts-per-day quota until restart (the flag sets it at start).
    pub fn set_new_hosts_per_day(&self, limit: u32) {
        self.new_hosts_per_day.store(limit, Ordering::Release);
    }

    /// Takes one of today's (UTC) new-host slots (persisted, so a restart does not reset the day's
    /// count): the slot's day, or `None` when the quota is used up.
    pub fn take_new_host_slot(&self, now_ms: u64) -> Option<u64> {
        let day = now_ms / 86_400_000;
        let mut added = self.added_today.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if added.0 != day {
            *added = (day, 0);
        }
        if added.1 >= self.new_hosts_per_day() {
            return None;
        }
        added.1 += 1;
        self.save_quota(*added);
        Some(day)
    }

    /// Gives back a slot of `day` taken by [`HostRegistry::take_new_host_slot`] for a host that was
    /// not added after all (its probe failed); a slot of an earlier day is not given back.
    pub fn return_new_host_slot(&self, day: u64) {
        let mut added = self.added_today.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if added.0 == day {
            added.1 = added.1.saturating_sub(1);
            self.save_quota(*added);
        }
    }

    fn save_quota(&self, (day, count): (u64, u32)) {
        if let Err(e) = self.store.set_crawl_quota(day, count) {
            tracing::warn!(error = %e, "cannot record the new-host quota");
        }
    }

    /// Records that `host`'s connection is open (its `id` is assigned here and returned).
    pub fn connected(&self, host: &Hostname, mut conn: Connection) -> u64 {
        conn.id = self.next_connection.fetch_add(1, Ordering::Relaxed);
        let id = conn.id;
        let mut c = self.connections.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        c.insert(host.to_string(), conn);
        id
    }

    /// Records that connection `id` of `host` closed (a newer connection stays listed).
    pub fn disconnected(&self, host: &Hostname, id: u64) {
        let mut c = self.connections.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if c.get(host.as_str()).is_some_and(|conn| conn.id == id) {
            c.remove(host.as_str());
        }
    }

    /// Open upstream connections, by hostname.
    pub fn connections(&self) -> BTreeMap<String, Connection> {
        self.connections.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Whether `host` has an open connection.
    pub fn is_connected(&self, host: &Hostname) -> bool {
        self.connections.lock().unwrap_or_else(std::sync::PoisonError::into_inner).contains_key(host.as_str())
    }
}

/// Whether `ip` is a public unicast address: not loopback, private (RFC 1918, ULA), link-local,
/// shared (CGNAT, RFC 6598), documentation, benchmarking, multicast, broadcast, unspecified or
/// reserved. The SSRF guard of `requestCrawl` and of upstream connections accepts only these.
pub fn is_public_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || o[0] >= 240
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || (o[0] == 198 && (18..20).contains(&o[1])))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_ip(IpAddr::V4(v4));
            }
            let s = v6.segments();
            // IPv4-compatible (deprecated `::a.b.c.d`) and 6to4 (`2002:AABB:CCDD::`) carry an IPv4.
            if s[..6] == [0; 6] && !v6.is_loopback() && !v6.is_unspecified() {
                return v6.to_ipv4().is_some_and(|v4| is_public_ip(IpAddr::V4(v4)));
            }
            if s[0] == 0x2002 {
                let [a, b] = s[1].to_be_bytes();
                let [c, d] = s[2].to_be_bytes();
                return is_public_ip(IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, d)));
            }
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] & 0xffc0) == 0xfec0
                || (s[0] == 0x2001 && s[1] == 0x0db8)
                || (s[0] == 0x0064 && s[1] == 0xff9b)
                || s[0] == 0x0100)
        }
    }
}

/// A host's event rate limits: events per second, per hour and per day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    /// Events per second.
    pub per_second: u64,
    /// Events per hour.
    pub per_hour: u64,
    /// Events per day.
    pub per_day: u64,
}

impl RateLimits {
    /// The limits for a host's settings: 50/s + accounts/1000, 2,500/h + accounts, 20,000/day +
    /// 10 × accounts (scaled with the account limit); trusted hosts 5,000/s, 50,000,000/h,
    /// 500,000,000/day.
    pub fn for_host(config: &HostConfig) -> Self {
        if config.trusted {
            return Self { per_second: 5_000, per_hour: 50_000_000, per_day: 500_000_000 };
        }
        let a = config.account_limit;
        Self {
            per_second: 50u64.saturating_add(a / 1000),
            per_hour: 2_500u64.saturating_add(a),
            per_day: 20_000u64.saturating_add(a.saturating_mul(10)),
        }
    }
}

/// Three token buckets (second, hour, day), each holding its limit when full and refilling evenly
/// over its period. An event that finds a bucket empty waits (the host's reading pauses, so TCP
/// pushes back on it) rather than being dropped.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    limits: RateLimits,
    buckets: [(f64, f64); 3],
    last: Instant,
}

impl RateLimiter {
    /// A limiter with full buckets.
    pub fn new(limits: RateLimits, now: Instant) -> Self {
        let bucket = |limit: u64, period_s: f64| (limit as f64, limit as f64 / period_s);
        Self {
            limits,
            buckets: [
                bucket(limits.per_second, 1.0),
                bucket(limits.per_hour, 3600.0),
                bucket(limits.per_day, 86_400.0),
            ],
            last: now,
        }
    }

    /// The limits.
    pub fn limits(&self) -> RateLimits {
        self.limits
    }

    /// Takes one event's token from every bucket and returns `Duration::ZERO`, or, when a bucket is
    /// empty, takes nothing and returns how long to wait before trying again.
    pub fn acquire(&mut self, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        let caps = [self.limits.per_second, self.limits.per_hour, self.limits.per_day];
        let mut wait: f64 = 0.0;
        for ((tokens, rate), cap) in self.buckets.iter_mut().zip(caps) {
            *tokens = (*tokens + elapsed * *rate).min(cap as f64);
            // The epsilon absorbs rounding in the refill (a bucket refilled for exactly one token's
            // time must pass).
            if *tokens < 1.0 - 1e-9 {
                wait = wait.max((1.0 - *tokens) / rate.max(f64::MIN_POSITIVE));
            }
        }
        if wait > 0.0 {
            // Never a zero wait (a caller retries on it), at least 1 ms.
            return Duration::from_secs_f64(wait.min(86_400.0)).max(Duration::from_millis(1));
        }
        for (tokens, _) in &mut self.buckets {
            *tokens -= 1.0;
        }
        Duration::ZERO
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_match_by_label() {
        let h = |s: &str| Hostname::new(s).unwrap();
        assert!(in_domain(&h("pds.example.com"), "example.com"));
        assert!(in_domain(&h("example.com"), "example.com"));
        assert!(!in_domain(&h("badexample.com"), "example.com"));
        assert!(!in_domain(&h("example.com.evil.net"), "example.com"));
    }

    #[test]
    fn public_addresses() {
        for ip in ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8", "2002:808:808::1"] {
            assert!(is_public_ip(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.2.1",
            "198.18.0.1",
            "240.0.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "64:ff9b::a00:1",
            "::7f00:1",
            "fec0::1",
            "2002:c0a8:101::1",
        ] {
            assert!(!is_public_ip(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn rate_limits_scale_and_delay() {
        let config = HostConfig { tls: true, trusted: false, banned: false, account_limit: 100, added_ms: 0 };
        let limits = RateLimits::for_host(&config);
        assert_eq!(limits, RateLimits { per_second: 50, per_hour: 2_600, per_day: 21_000 });
        let big = RateLimits::for_host(&HostConfig { account_limit: 1_000_000, ..config });
        assert_eq!(big.per_second, 1_050);
        assert_eq!(RateLimits::for_host(&HostConfig { trusted: true, ..config }).per_second, 5_000);

        let start = Instant::now();
        let mut limiter = RateLimiter::new(limits, start);
        for _ in 0..50 {
            assert_eq!(limiter.acquire(start), Duration::ZERO);
        }
        let wait = limiter.acquire(start);
        assert!(wait > Duration::from_millis(19) && wait <= Duration::from_millis(21), "{wait:?}");
        assert!(!limiter.acquire(start + Duration::from_nanos(1)).is_zero(), "a tiny refill is not a token");
        // After waiting, one more event passes.
        assert_eq!(limiter.acquire(start + wait), Duration::ZERO);
        // Over one hour the hour bucket lets through its 2,600 plus what refills in the hour (2,600),
        // not the 180,000 the second bucket alone would allow.
        let mut limiter = RateLimiter::new(limits, start);
        let mut now = start;
        let mut passed = 0u64;
        for _ in 0..1_000_000 {
            if now >= start + Duration::from_secs(3600) {
                break;
            }
            let w = limiter.acquire(now);
            if w.is_zero() {
                passed += 1;
            } else {
                now += w;
            }
        }
        assert!((5_150..=5_210).contains(&passed), "{passed}");
    }
}
