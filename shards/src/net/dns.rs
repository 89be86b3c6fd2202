//! Name resolution off the executors, on one thread.
//!
//! Lookups run on hickory-resolver (asynchronous DNS over UDP/TCP, `/etc/resolv.conf` and
//! `/etc/hosts`) in a single-threaded Tokio runtime on a thread of its own, `relay-dns`, started on
//! first use and shared by every executor. Any number of lookups can be in flight on that one thread,
//! so the relay's thread count does not grow with the hosts it connects to (a blocking
//! `getaddrinfo` pool took a thread per lookup in flight: 21 threads while 5,000 hosts connected),
//! and a name that takes 5 s to resolve holds neither a thread, nor other lookups, nor glommio's
//! per-executor blocking pool (which carries the sequencer's RocksDB commits).
//!
//! Lookups in flight are bounded process-wide per [`Purpose`] ([`Dns::new`]), so that `did:web`
//! names and `requestCrawl` probes (whose names anyone chooses) can never hold the slots the PLC
//! directory's and the hosts' own names need; each lookup has a deadline, and the answer tells "this
//! name does not exist" (NXDOMAIN, or no address records: permanent) from "the resolver could not
//! answer" (timeout, SERVFAIL, refused: transient). Answers are cached for their TTL, and the cache
//! is checked before a slot is taken, so a cached name never waits behind slow ones. IP literals are
//! answered without a query; `localhost` names follow RFC 6761 (loopback). With no readable
//! `/etc/resolv.conf` the resolver asks 127.0.0.1:53, as glibc does.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::ProtoErrorKind;
use hickory_resolver::proto::op::ResponseCode;

/// Why a name did not resolve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// The name does not exist (NXDOMAIN) or has no address records: asking again will not help
    /// soon.
    #[error("no such host")]
    NotFound,
    /// The resolver could not answer (timeout, SERVFAIL, refused, no nameserver reachable) or took
    /// longer than the deadline: asking again later may succeed.
    #[error("{0}")]
    Unavailable(String),
}

/// What a name is looked up for: each purpose has its own lookups in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// The PLC directory (and other operator-configured services).
    Directory,
    /// Upstream hosts: connections, `getRepoStatus` re-checks.
    Host,
    /// `did:web` document servers (named by whoever made the DID).
    DidWeb,
    /// `requestCrawl` probes (named by whoever asks).
    Crawl,
}

impl Purpose {
    /// Every purpose, with its share of the lookups in flight (out of 64).
    pub const ALL: [(Purpose, usize); 4] =
        [(Purpose::Directory, 16), (Purpose::Host, 24), (Purpose::DidWeb, 16), (Purpose::Crawl, 8)];

    fn index(self) -> usize {
        match self {
            Purpose::Directory => 0,
            Purpose::Host => 1,
            Purpose::DidWeb => 2,
            Purpose::Crawl => 3,
        }
    }
}

/// Most names the lookup cache holds; past it the cache starts over.
const CACHE_ENTRIES: usize = 100_000;
/// How long an answer is cached at most, whatever its TTL.
const CACHE_MAX: Duration = Duration::from_secs(3600);

/// Name → its addresses and until when they hold (their TTL).
type Cache = HashMap<String, (Vec<IpAddr>, Instant)>;

/// The resolver shared by every executor (cheap to clone).
#[derive(Debug, Clone)]
pub struct Dns {
    permits: Arc<[Arc<async_lock::Semaphore>; 4]>,
    timeout: Duration,
    /// Name → addresses and until when they hold (their TTL).
    cache: Arc<Mutex<Cache>>,
}

impl Default for Dns {
    /// 64 lookups in flight ([`Purpose::ALL`] shares), 10 s deadline.
    fn default() -> Self {
        Self::new(64, Duration::from_secs(10))
    }
}

/// The `relay-dns` thread's runtime and the resolver on it.
struct Backend {
    runtime: tokio::runtime::Handle,
    resolver: Arc<TokioResolver>,
}

/// Started on first use; `Err` (why the thread could not start) is answered to every lookup.
fn backend() -> &'static Result<Backend, String> {
    static BACKEND: OnceLock<Result<Backend, String>> = OnceLock::new();
    BACKEND.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| format!("resolver runtime: {e}"))?;
        let resolver = runtime.block_on(async {
            let builder = TokioResolver::builder_tokio().unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot read /etc/resolv.conf; resolving with 127.0.0.1:53");
                let local = NameServerConfigGroup::from_ips_clear(&[IpAddr::V4(Ipv4Addr::LOCALHOST)], 53, true);
                TokioResolver::builder_with_config(
                    ResolverConfig::from_parts(None, Vec::new(), local),
                    TokioConnectionProvider::default(),
                )
                .with_options(ResolverOpts::default())
            });
            builder.build()
        });
        let handle = runtime.handle().clone();
        std::thread::Builder::new()
            .name("relay-dns".into())
            .spawn(move || runtime.block_on(std::future::pending::<()>()))
            .map_err(|e| format!("resolver thread: {e}"))?;
        Ok(Backend { runtime: handle, resolver: Arc::new(resolver) })
    })
}

impl Dns {
    /// A resolver running at most `max_in_flight` lookups at once, split between the purposes as
    /// [`Purpose::ALL`] shares them (at least one each; more wait for a slot of their purpose), each
    /// answered within `timeout` or failed as [`DnsError::Unavailable`].
    pub fn new(max_in_flight: usize, timeout: Duration) -> Self {
        let share = |n: usize| Arc::new(async_lock::Semaphore::new((max_in_flight * n / 64).max(1)));
        let [d, h, w, c] = Purpose::ALL.map(|(_, n)| share(n));
        Self { permits: Arc::new([d, h, w, c]), timeout, cache: Arc::default() }
    }

    fn cached(&self, host: &str, port: u16) -> Option<Vec<SocketAddr>> {
        let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        let (ips, until) = cache.get(host)?;
        (Instant::now() < *until).then(|| ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect())
    }

    /// The addresses of `host:port` (IPv4 first, then IPv6), in the resolver's order, looked up
    /// for `purpose` (a cached answer is given without a slot).
    ///
    /// # Errors
    /// [`DnsError::NotFound`] or [`DnsError::Unavailable`].
    pub async fn lookup(&self, host: &str, port: u16, purpose: Purpose) -> Result<Vec<SocketAddr>, DnsError> {
        // An IP literal (hosts may be added by address) needs no query.
        if let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        if let Some(addrs) = self.cached(host, port) {
            return Ok(addrs);
        }
        let backend = backend().as_ref().map_err(|e| DnsError::Unavailable(e.clone()))?;
        let permits = self.permits.get(purpose.index()).ok_or_else(|| DnsError::Unavailable("no slot".into()))?;
        let _permit = permits.acquire_arc().await;
        // Answered meanwhile by a lookup that held a slot.
        if let Some(addrs) = self.cached(host, port) {
            return Ok(addrs);
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let resolver = Arc::clone(&backend.resolver);
        let name = host.to_owned();
        // The task ends on its own (hickory's timeouts) if our deadline passes first; its answer is
        // then dropped.
        backend.runtime.spawn(async move {
            let _ = tx.send(resolver.lookup_ip(name).await);
        });
        let answer = match super::with_timeout(self.timeout, rx).await {
            Some(Ok(answer)) => answer,
            Some(Err(_)) => return Err(DnsError::Unavailable("the resolver thread stopped".into())),
            None => return Err(DnsError::Unavailable(format!("no answer within {} s", self.timeout.as_secs()))),
        };
        let ips = answer.map_err(|e| classify(&e))?;
        let until = ips.valid_until().min(Instant::now() + CACHE_MAX);
        let ips: Vec<IpAddr> = ips.iter().collect();
        if ips.is_empty() {
            return Err(DnsError::NotFound);
        }
        {
            let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
            cache.insert(host.to_owned(), (ips.clone(), until));
        }
        Ok(ips.into_iter().map(|ip| SocketAddr::new(ip, port)).collect())
    }
}

/// NXDOMAIN and "no records" (NOERROR with no answer) are permanent; everything else (timeouts,
/// SERVFAIL, REFUSED, I/O errors) is transient.
fn classify(e: &hickory_resolver::ResolveError) -> DnsError {
    match e.proto().map(|p| p.kind()) {
        Some(ProtoErrorKind::NoRecordsFound {
            response_code: ResponseCode::NXDomain | ResponseCode::NoError, ..
        }) => DnsError::NotFound,
        _ => DnsError::Unavailable(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(host: &str, port: u16) -> Result<Vec<SocketAddr>, DnsError> {
        let ex = glommio::LocalExecutorBuilder::default().make().expect("an executor");
        let host = host.to_owned();
        ex.run(async move { Dns::default().lookup(&host, port, Purpose::Host).await })
    }

    #[test]
    fn localhost_resolves_to_loopback() {
        let addrs = lookup("localhost", 80).unwrap();
        assert!(!addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback() && a.port() == 80), "{addrs:?}");
    }

    /// Every purpose's slots are held by lookups that never end: a cached name is still answered at
    /// once, and so is another purpose's name.
    #[test]
    fn cached_names_and_other_purposes_do_not_wait() {
        let ex = glommio::LocalExecutorBuilder::default().make().expect("an executor");
        ex.run(async {
            let dns = Dns::new(4, Duration::from_secs(10));
            dns.cache.lock().unwrap().insert(
                "cached.example".into(),
                (vec![IpAddr::V4(Ipv4Addr::LOCALHOST)], Instant::now() + Duration::from_secs(60)),
            );
            // Take every slot of DidWeb (4 × 16 / 64 = 1).
            let held = dns.permits[Purpose::DidWeb.index()].acquire_arc().await;
            let cached = dns.lookup("cached.example", 7, Purpose::DidWeb).await.unwrap();
            assert_eq!(cached, vec!["127.0.0.1:7".parse().unwrap()]);
            let other =
                super::super::with_timeout(Duration::from_secs(5), dns.lookup("localhost", 8, Purpose::Host)).await;
            assert!(other.is_some_and(|r| r.is_ok()), "another purpose's lookup is not held");
            drop(held);
        });
    }

    #[test]
    fn ip_literals_need_no_query() {
        assert_eq!(lookup("127.0.0.9", 8080).unwrap(), vec!["127.0.0.9:8080".parse().unwrap()]);
        assert_eq!(lookup("[::1]", 443).unwrap(), vec!["[::1]:443".parse().unwrap()]);
    }
}
