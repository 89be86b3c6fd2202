//! The splitter (`relay splitter`): the relay's fan-out tier. It follows one upstream firehose (a
//! relay, another splitter, or a PDS), keeps its frames byte for byte under the upstream's seqs (no
//! validation, no sequencing: the upstream did both), and serves them with the relay's replay,
//! retention, slow-consumer policy and Jetstream (the fanout shards, fed the same
//! [`crate::messages::PublishedBatch`]es as the sequencer feeds them). Splitters of one upstream hold
//! the same frames under the same seqs, so they are interchangeable behind a load balancer, and a
//! consumer moves between them and the upstream without changing its cursor. Bluesky's `rainbow`
//! (bluesky-social/indigo `cmd/rainbow`) is the model; where this differs, `README.md` says.
//!
//! - [`stream`]: what to do with each upstream frame (a state machine without I/O).
//! - [`follow`]: the connection to the upstreams (failover between them), and the writer that
//!   group-commits frames in upstream order, durable (fsynced) before they are served.

pub mod follow;
pub mod stream;

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// One upstream: where its `subscribeRepos` is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    /// `wss` (TLS) or `ws`.
    pub tls: bool,
    /// Hostname or IP literal.
    pub host: String,
    /// Port (443 / 80 when the URL has none).
    pub port: u16,
}

impl UpstreamUrl {
    /// Parses `wss://host[:port]`, `ws://host[:port]`, `https://…` or `http://…` (the same, for a
    /// splitter configured with the upstream's HTTP address), with an optional trailing `/`.
    ///
    /// # Errors
    /// A message naming what is wrong.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim().trim_end_matches('/');
        let (tls, rest) = match s.split_once("://") {
            Some(("wss" | "https", r)) => (true, r),
            Some(("ws" | "http", r)) => (false, r),
            Some((other, _)) => return Err(format!("{s:?}: unknown scheme {other} (ws, wss, http, https)")),
            None => return Err(format!("{s:?}: give the scheme, e.g. wss://relay.example.com")),
        };
        if rest.contains('/') {
            return Err(format!("{s:?}: the upstream is a host, without a path"));
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || rest.starts_with('[') => {
                (h, p.parse::<u16>().map_err(|_| format!("{s:?}: bad port {p:?}"))?)
            }
            _ => (rest, if tls { 443 } else { 80 }),
        };
        if host.is_empty() {
            return Err(format!("{s:?}: no host"));
        }
        Ok(Self { tls, host: host.trim_start_matches('[').trim_end_matches(']').to_owned(), port })
    }

    /// `host[:port]` as a `Host` header names it.
    pub fn authority(&self) -> String {
        match (self.tls, self.port) {
            (true, 443) | (false, 80) => self.host.clone(),
            _ if self.host.contains(':') => format!("[{}]:{}", self.host, self.port),
            _ => format!("{}:{}", self.host, self.port),
        }
    }

    /// The base URL of the upstream's XRPC methods: `https://host[:port]` (or `http`).
    pub fn http_base(&self) -> String {
        format!("{}://{}", if self.tls { "https" } else { "http" }, self.authority())
    }
}

impl std::fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}", if self.tls { "wss" } else { "ws" }, self.authority())
    }
}

/// What the splitter's follower shares with the API (its admin calls and `_health`), across
/// executors.
#[derive(Debug, Default)]
pub struct SplitterState {
    /// The upstream being followed now (index into the configured list).
    pub upstream: AtomicUsize,
    /// Whether its websocket is open.
    pub connected: AtomicBool,
    /// When the connection opened, ms since the UNIX epoch (0: not connected).
    pub connected_ms: AtomicU64,
    /// The last seq kept (0: none).
    pub last_seq: AtomicU64,
    /// Why ingest stopped, when it did (a backward jump, `FutureCursor`).
    pub stopped: Mutex<Option<String>>,
    /// An operator's cursor reset waiting for the follower: `Some(None)` resumes from the
    /// upstream's live tail, `Some(Some(n))` after `n`.
    reset: Mutex<Option<Option<u64>>>,
}

impl SplitterState {
    /// Asks the follower to resume after `cursor` (`None`: the live tail). When `cursor` is below
    /// the last seq kept, the frames above it are deleted first and every subscriber is closed
    /// (their cursors are then in the future, and they get `FutureCursor` until the upstream
    /// passes them).
    pub fn request_reset(&self, cursor: Option<u64>) {
        *self.reset.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(cursor);
    }

    pub(crate) fn take_reset(&self) -> Option<Option<u64>> {
        self.reset.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take()
    }

    /// Why ingest is stopped, if it is.
    pub fn stopped_reason(&self) -> Option<String> {
        self.stopped.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    pub(crate) fn set_stopped(&self, why: Option<String>) {
        *self.stopped.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = why;
    }

    /// Whether ingest is stopped (`_health` is degraded).
    pub fn is_stopped(&self) -> bool {
        self.stopped.lock().unwrap_or_else(std::sync::PoisonError::into_inner).is_some()
    }

    pub(crate) fn set_connected(&self, upstream: Option<usize>) {
        match upstream {
            Some(i) => {
                self.upstream.store(i, Ordering::Release);
                self.connected_ms.store(crate::unix_ms(), Ordering::Release);
                self.connected.store(true, Ordering::Release);
            }
            None => {
                self.connected.store(false, Ordering::Release);
                self.connected_ms.store(0, Ordering::Release);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_urls() {
        let u = UpstreamUrl::parse("wss://bsky.network").unwrap();
        assert_eq!((u.tls, u.host.as_str(), u.port, u.authority()), (true, "bsky.network", 443, "bsky.network".into()));
        let u = UpstreamUrl::parse("ws://127.0.0.1:2470/").unwrap();
        assert_eq!((u.tls, u.port, u.http_base()), (false, 2470, "http://127.0.0.1:2470".into()));
        assert_eq!(UpstreamUrl::parse("https://relay.example:8443").unwrap().to_string(), "wss://relay.example:8443");
        assert!(UpstreamUrl::parse("relay.example").is_err());
        assert!(UpstreamUrl::parse("ftp://relay.example").is_err());
        assert!(UpstreamUrl::parse("wss://relay.example/xrpc").is_err());
        assert!(UpstreamUrl::parse("ws://relay.example:x").is_err());
    }
}
