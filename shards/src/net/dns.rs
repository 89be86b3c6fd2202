//! Name resolution off the executors.
//!
//! `getaddrinfo` blocks, sometimes for seconds (a slow or broken DNS zone). It runs here on the
//! `blocking` crate's thread pool, never on glommio's per-executor blocking pool, which carries the
//! sequencer's RocksDB commits and replay reads: a name that takes 5 s to resolve must not hold a
//! group commit for 5 s. Lookups in flight are bounded process-wide ([`Dns::new`]), each has a
//! deadline, and the answer keeps `getaddrinfo`'s error kind (through `dns-lookup`), so "this name
//! does not exist" (permanent) is told apart from "the resolver could not answer" (transient).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dns_lookup::{AddrInfoHints, LookupErrorKind};

/// Why a name did not resolve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// The name does not exist or has no address (`EAI_NONAME`, `EAI_NODATA`): asking again will
    /// not help soon.
    #[error("no such host")]
    NotFound,
    /// The resolver could not answer (`EAI_AGAIN`, `EAI_FAIL`, a system error) or took longer than
    /// the deadline: asking again later may succeed.
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

impl Dns {
    /// A resolver running at most `max_in_flight` lookups at once (1 and up; more wait for a
    /// slot), each answered within `timeout` or failed as [`DnsError::Unavailable`].
    pub fn new(max_in_flight: usize, timeout: Duration) -> Self {
        Self { permits: Arc::new(async_lock::Semaphore::new(max_in_flight.max(1))), timeout }
    }

    /// The addresses of `host:port`, in the resolver's order.
    ///
    /// # Errors
    /// [`DnsError::NotFound`] or [`DnsError::Unavailable`].
    pub async fn lookup(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, DnsError> {
        let _permit = self.permits.acquire_arc().await;
        let name = host.to_owned();
        let lookup = blocking::unblock(move || getaddrinfo(&name, port));
        match super::with_timeout(self.timeout, lookup).await {
            Some(result) => result,
            // The thread finishes the lookup on its own; its answer is dropped.
            None => Err(DnsError::Unavailable(format!("no answer within {} s", self.timeout.as_secs()))),
        }
    }
}

fn getaddrinfo(host: &str, port: u16) -> Result<Vec<SocketAddr>, DnsError> {
    let hints = AddrInfoHints { socktype: libc::SOCK_STREAM, ..AddrInfoHints::default() };
    let service = port.to_string();
    let answers = dns_lookup::getaddrinfo(Some(host), Some(&service), Some(hints)).map_err(|e| match e.kind() {
        LookupErrorKind::NoName | LookupErrorKind::NoData => DnsError::NotFound,
        kind => DnsError::Unavailable(format!("{kind:?}")),
    })?;
    let addrs: Vec<SocketAddr> = answers.filter_map(Result::ok).map(|a| a.sockaddr).collect();
    if addrs.is_empty() {
        return Err(DnsError::NotFound);
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn localhost_resolves() {
        let addrs = getaddrinfo("localhost", 80).unwrap();
        assert!(addrs.iter().all(|a| a.ip().is_loopback() && a.port() == 80), "{addrs:?}");
    }
}
