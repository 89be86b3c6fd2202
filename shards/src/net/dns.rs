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
//! Lookups in flight are bounded process-wide ([`Dns::new`]), each has a deadline, and the answer
//! tells "this name does not exist" (NXDOMAIN, or no address records: permanent) from "the resolver
//! could not answer" (timeout, SERVFAIL, refused: transient). IP literals are answered without a
//! query; `localhost` names follow RFC 6761 (loopback). Answers are cached for their TTL. With no
//! readable `/etc/resolv.conf` the resolver asks 127.0.0.1:53, as glibc does.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

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

/// The resolver shared by every executor (cheap to clone).
#[derive(Debug, Clone)]
pub struct Dns {
    permits: Arc<async_lock::Semaphore>,
    timeout: Duration,
}

impl Default for Dns {
    /// 64 lookups in flight, 10 s deadline.
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
    /// A resolver running at most `max_in_flight` lookups at once (1 and up; more wait for a
    /// slot), each answered within `timeout` or failed as [`DnsError::Unavailable`].
    pub fn new(max_in_flight: usize, timeout: Duration) -> Self {
        Self { permits: Arc::new(async_lock::Semaphore::new(max_in_flight.max(1))), timeout }
    }

    /// The addresses of `host:port` (IPv4 first, then IPv6), in the resolver's order.
    ///
    /// # Errors
    /// [`DnsError::NotFound`] or [`DnsError::Unavailable`].
    pub async fn lookup(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, DnsError> {
        // An IP literal (hosts may be added by address) needs no query.
        if let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let backend = backend().as_ref().map_err(|e| DnsError::Unavailable(e.clone()))?;
        let _permit = self.permits.acquire_arc().await;
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
        let addrs: Vec<SocketAddr> = ips.iter().map(|ip| SocketAddr::new(ip, port)).collect();
        if addrs.is_empty() {
            return Err(DnsError::NotFound);
        }
        Ok(addrs)
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
        ex.run(async move { Dns::default().lookup(&host, port).await })
    }

    #[test]
    fn localhost_resolves_to_loopback() {
        let addrs = lookup("localhost", 80).unwrap();
        assert!(!addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback() && a.port() == 80), "{addrs:?}");
    }

    #[test]
    fn ip_literals_need_no_query() {
        assert_eq!(lookup("127.0.0.9", 8080).unwrap(), vec!["127.0.0.9:8080".parse().unwrap()]);
        assert_eq!(lookup("[::1]", 443).unwrap(), vec!["[::1]:443".parse().unwrap()]);
    }
}
