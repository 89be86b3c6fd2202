//! Identity resolution for ingest: DID → `#atproto` signing key and `#atproto_pds` endpoint.
//!
//! Resolves `did:plc` from the PLC directory (`GET {plc_url}/{did}`,
//! <https://web.plc.directory/spec/v0.1/did-plc>) and `did:web` from
//! `/.well-known/did.json` of its hostname (<https://atproto.com/specs/did#did-web>; hostnames only,
//! no paths). Results are cached in memory (per ingest shard) and in the `identities` column family
//! with a TTL, so a restart does not storm the directory. Concurrent lookups of one DID share one
//! fetch.
//!
//! Failures are of two kinds ([`ResolveError::is_transient`]). An answer that says "no" (a 404 or
//! 410 from the directory, a document without a key, a `did:web` name that does not exist) is
//! permanent: it is remembered for [`IdentityConfig::failure_ttl`] and the events are dropped. A
//! directory that cannot be reached (timeout, refused connection, DNS that cannot answer, 429, 5xx)
//! is transient: it is never remembered, an expired cached entry is used when there is one, and
//! otherwise ingest pauses the host until the directory answers (see `ingest::process::Outage`).
//! `did:web` documents are fetched through the SSRF guard (public addresses only), since any
//! account can name any server.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::{LocalBoxFuture, Shared};
use storage::{IdentityRecord, Store};
use wire::Did;
use wire::did_doc::AtprotoIdentity;

use crate::metrics::Metrics;
use crate::net::{self, HttpUrl};

/// Largest DID document accepted, in bytes.
const MAX_DID_DOC_BYTES: usize = 256 * 1024;

/// Identity resolution settings.
#[derive(Debug, Clone)]
pub struct IdentityConfig {
    /// Base URL of the PLC directory, e.g. `http://localhost:2582` or `https://plc.directory`.
    pub plc_url: String,
    /// How long a resolved identity is trusted before it is fetched again. Default 24 h.
    pub ttl: Duration,
    /// How long a failed resolution is remembered before the directory is asked again. Default 2 min.
    pub failure_ttl: Duration,
    /// Deadline of one fetch attempt, connect included. Default 5 s.
    pub timeout: Duration,
    /// Attempts for a fetch that fails transiently (network, 429, 5xx), with 250 ms then 1 s between
    /// them. Default 3; valid 1 and up.
    pub attempts: u32,
    /// Most identities kept in memory per ingest shard; beyond it entries are evicted. Default 100,000.
    pub memory_entries: usize,
    /// SSRF guard for `did:web`: fetch a document only from a name whose every address is public
    /// ([`crate::hosts::is_public_ip`]). Default true; `--allow-private-hosts` turns it off.
    pub web_public_only: bool,
    /// Development mode (`--dev-localhost-port`): `did:web:localhost`, with a port or not, is
    /// resolved (over plain HTTP, exempt from the SSRF guard). <https://atproto.com/specs/did>: "The
    /// special `localhost` hostname is allowed, but only in testing and development environments.
    /// Port numbers [...] are only allowed for `localhost`, and only in testing and development."
    /// Default false.
    pub dev_localhost: bool,
    /// Outbound HTTP (TLS trust).
    pub http: net::HttpClient,
}

impl IdentityConfig {
    /// Settings with the defaults above for `plc_url`.
    pub fn new(plc_url: impl Into<String>, http: net::HttpClient) -> Self {
        Self {
            plc_url: plc_url.into(),
            ttl: Duration::from_secs(24 * 3600),
            failure_ttl: Duration::from_secs(120),
            timeout: Duration::from_secs(5),
            attempts: 3,
            memory_entries: 100_000,
            web_public_only: true,
            dev_localhost: false,
            http,
        }
    }
}

/// Why an identity could not be resolved.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ResolveError {
    /// The DID method (or a `did:web` with a path) is not resolvable.
    #[error("unsupported DID: {0}")]
    Unsupported(String),
    /// The directory could not be reached or timed out (transient).
    #[error("fetching the DID document: {0}")]
    Fetch(String),
    /// The directory answered a non-200 status (404/410 for unknown or tombstoned DIDs).
    #[error("directory answered HTTP {0}")]
    Status(u16),
    /// The `did:web` name does not exist in DNS, or resolves to an address the SSRF guard refuses.
    #[error("{0}")]
    NoSuchHost(String),
    /// A `did:web` the spec does not allow (<https://atproto.com/specs/did>): its hostname is not a
    /// valid handle with an allowed TLD ("The same restrictions on top-level domains that apply to
    /// handles [...] also apply to `did:web` domains"), is not lowercase, or has a port or is
    /// `localhost` outside development mode.
    #[error("{0}")]
    NotAllowed(String),
    /// The document does not describe this DID or has no usable key.
    #[error("{0}")]
    Document(String),
    /// A permanent resolution failure of this DID happened less than
    /// [`IdentityConfig::failure_ttl`] ago.
    #[error("resolution failed recently")]
    RecentlyFailed,
}

impl ResolveError {
    /// Whether asking again later may succeed: the directory could not be reached (network errors,
    /// DNS that could not answer, timeouts), or answered 429 or 5xx. Everything else is an answer
    /// that says "no".
    pub fn is_transient(&self) -> bool {
        match self {
            ResolveError::Fetch(_) => true,
            ResolveError::Status(s) => *s == 429 || *s >= 500,
            ResolveError::Unsupported(_)
            | ResolveError::Document(_)
            | ResolveError::NoSuchHost(_)
            | ResolveError::NotAllowed(_)
            | ResolveError::RecentlyFailed => false,
        }
    }
}

/// How an identity was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// From memory or the store, within its TTL (or expired, when the directory is unreachable).
    Cached,
    /// Fetched from the directory just now.
    Fetched,
}

type Pending = Shared<LocalBoxFuture<'static, Result<IdentityRecord, ResolveError>>>;

/// A waiter on a shared fetch; dropping it removes the fetch's `pending` entry (only that fetch's:
/// a newer one for the same DID may have replaced it).
struct PendingEntry<'a> {
    pending: &'a RefCell<HashMap<Did, (Pending, Instant)>>,
    did: &'a Did,
    shared: Pending,
}

impl Drop for PendingEntry<'_> {
    fn drop(&mut self) {
        let mut pending = self.pending.borrow_mut();
        if pending.get(self.did).is_some_and(|(p, _)| Shared::ptr_eq(p, &self.shared)) {
            pending.remove(self.did);
        }
    }
}

/// A per-shard identity resolver (single-threaded: lives on one executor).
pub struct Resolver {
    config: Rc<IdentityConfig>,
    store: Arc<Store>,
    metrics: Metrics,
    cache: RefCell<HashMap<Did, Rc<IdentityRecord>>>,
    failed_until_ms: RefCell<HashMap<Did, u64>>,
    /// Fetches in flight, with when each started.
    pending: RefCell<HashMap<Did, (Pending, Instant)>>,
    /// Fetches in flight at once on this shard ([`MAX_FETCHES`]).
    fetch_slots: Rc<glommio::sync::Semaphore>,
}

/// Most identity fetches one ingest shard has in flight at once (each a connection to the PLC
/// directory or a `did:web` server); more wait for a slot.
pub const MAX_FETCHES: u64 = 64;

impl Resolver {
    /// A resolver backed by `store`.
    pub fn new(config: IdentityConfig, store: Arc<Store>, metrics: Metrics) -> Self {
        Self {
            config: Rc::new(config),
            store,
            metrics,
            cache: RefCell::new(HashMap::new()),
            failed_until_ms: RefCell::new(HashMap::new()),
            pending: RefCell::new(HashMap::new()),
            fetch_slots: Rc::new(glommio::sync::Semaphore::new(MAX_FETCHES)),
        }
    }

    fn fresh(&self, rec: &IdentityRecord, now_ms: u64) -> bool {
        now_ms.saturating_sub(rec.fetched_at_ms) < self.config.ttl.as_millis() as u64
    }

    fn count(&self, result: &'static str) {
        Metrics::inc(&self.metrics.identity_lookups, "result", result);
    }

    /// The cached record (memory, else store), fresh or not.
    fn cached(&self, did: &Did) -> Option<Rc<IdentityRecord>> {
        if let Some(rec) = self.cache.borrow().get(did) {
            return Some(Rc::clone(rec));
        }
        let rec = Rc::new(self.store.identity(did).ok().flatten()?);
        self.remember(did, Rc::clone(&rec));
        Some(rec)
    }

    /// Returns the identity of `did`: cached within its TTL, else fetched. When the fetch fails
    /// transiently, an expired cached entry is returned instead.
    ///
    /// # Errors
    /// [`ResolveError`] when nothing usable is cached and the fetch fails.
    pub async fn lookup(&self, did: &Did, now_ms: u64) -> Result<(Rc<IdentityRecord>, Source), ResolveError> {
        let cached = self.cached(did);
        if let Some(rec) = cached.as_ref().filter(|r| self.fresh(r, now_ms)) {
            self.count("cache");
            return Ok((Rc::clone(rec), Source::Cached));
        }
        match self.refresh(did, now_ms).await {
            Ok(rec) => Ok((rec, Source::Fetched)),
            Err(e) if e.is_transient() => match cached {
                Some(stale) => {
                    self.count("stale");
                    Ok((stale, Source::Cached))
                }
                None => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    /// Fetches the identity of `did`, replacing any cached one. A permanent failure (unknown DID, bad
    /// document) forgets the cached entry; a transient one keeps it.
    ///
    /// # Errors
    /// [`ResolveError`]; [`ResolveError::RecentlyFailed`] without asking when a fetch failed less
    /// than [`IdentityConfig::failure_ttl`] ago.
    pub async fn refresh(&self, did: &Did, now_ms: u64) -> Result<Rc<IdentityRecord>, ResolveError> {
        self.refresh_after(did, now_ms, None).await
    }

    /// [`Resolver::refresh`], seeing only a fetch that started at or after `not_before`: an
    /// `#identity` says the document changed when the host sent it, so a fetch already in flight
    /// from before the event may carry the old document and is not joined.
    ///
    /// # Errors
    /// As [`Resolver::refresh`].
    pub async fn refresh_after(
        &self,
        did: &Did,
        now_ms: u64,
        not_before: Option<Instant>,
    ) -> Result<Rc<IdentityRecord>, ResolveError> {
        // A DID the spec does not let the relay resolve is refused for what it is, every time.
        document_url(&self.config.plc_url, did, self.config.dev_localhost)?;
        if self.failed_until_ms.borrow().get(did).is_some_and(|until| *until > now_ms) {
            self.count("failed");
            return Err(ResolveError::RecentlyFailed);
        }
        // Frames of one DID decided at once share one fetch: the first caller starts it and counts
        // its answer, the others wait for it and count as `joined`. Every waiter records the answer
        // (idempotent), so it is recorded even when the caller that started it was cancelled.
        let (shared, owner) = {
            let mut pending = self.pending.borrow_mut();
            match pending.get(did).filter(|(_, started)| not_before.is_none_or(|t| *started >= t)) {
                Some((p, _)) => (p.clone(), false),
                None => {
                    let histogram = self.metrics.identity_fetch_seconds.clone();
                    let fetching = fetch(Rc::clone(&self.config), did.clone(), now_ms);
                    let slots = Rc::clone(&self.fetch_slots);
                    let p = async move {
                        let _slot = slots.acquire_permit(1).await;
                        let started = Instant::now();
                        let result = fetching.await;
                        histogram.observe(started.elapsed().as_secs_f64());
                        result
                    }
                    .boxed_local()
                    .shared();
                    // A newer fetch replaces an older one: later callers join the newer.
                    pending.insert(did.clone(), (p.clone(), Instant::now()));
                    (p, true)
                }
            }
        };
        // Removes this fetch's entry when the wait ends, answered or cancelled: a later lookup then
        // starts a fetch of its own instead of joining a finished one.
        let guard = PendingEntry { pending: &self.pending, did, shared: shared.clone() };
        let result = shared.await;
        drop(guard);
        let count = |result: &'static str| self.count(if owner { result } else { "joined" });
        match result {
            Ok(rec) => {
                count("resolved");
                if let Some(known) = self.cached(did).filter(|c| **c == rec) {
                    return Ok(known);
                }
                self.failed_until_ms.borrow_mut().remove(did);
                // A failed cache write only costs a later re-resolution.
                let _ = self.store.put_identity(did, &rec);
                let rec = Rc::new(rec);
                self.remember(did, Rc::clone(&rec));
                Ok(rec)
            }
            Err(e) if e.is_transient() => {
                // Never remembered: the next event asks again, so the relay resumes as soon as the
                // directory answers.
                count("unreachable");
                Err(e)
            }
            Err(e) => {
                count("failed");
                let until = now_ms.saturating_add(self.config.failure_ttl.as_millis() as u64);
                let mut failed = self.failed_until_ms.borrow_mut();
                if failed.len() >= self.config.memory_entries {
                    failed.retain(|_, t| *t > now_ms);
                    if failed.len() >= self.config.memory_entries {
                        failed.clear();
                    }
                }
                failed.insert(did.clone(), until);
                drop(failed);
                self.purge(did);
                Err(e)
            }
        }
    }

    /// Forgets the cached identity of `did` (memory and store), e.g. on `#identity`.
    pub fn purge(&self, did: &Did) {
        self.cache.borrow_mut().remove(did);
        let _ = self.store.delete_identity(did);
    }

    /// Marks the cached identity of `did` expired: the next lookup fetches it again, and the old
    /// entry stays as the fallback while the directory cannot be reached (e.g. on `#identity`).
    pub fn expire(&self, did: &Did) {
        if let Some(rec) = self.cached(did) {
            let expired = IdentityRecord { fetched_at_ms: 0, ..(*rec).clone() };
            let _ = self.store.put_identity(did, &expired);
            self.cache.borrow_mut().insert(did.clone(), Rc::new(expired));
        }
    }

    /// Forgets a recent failure, so the next lookup asks the directory (after `#identity`).
    pub fn forget_failure(&self, did: &Did) {
        self.failed_until_ms.borrow_mut().remove(did);
    }

    fn remember(&self, did: &Did, rec: Rc<IdentityRecord>) {
        let mut cache = self.cache.borrow_mut();
        if cache.len() >= self.config.memory_entries
            && !cache.contains_key(did)
            && let Some(victim) = cache.keys().next().cloned()
        {
            cache.remove(&victim);
        }
        cache.insert(did.clone(), rec);
    }
}

/// The URL of the DID document of `did`. A `did:web` must name a hostname that is a valid handle
/// with an allowed TLD, in lowercase, without a port; `localhost` (with or without a port) only when
/// `dev_localhost` (<https://atproto.com/specs/did>, "Blessed DID Methods"; indigo's
/// `ResolveDIDWeb` checks the handle syntax and TLD the same way).
///
/// # Errors
/// [`ResolveError::Unsupported`] for methods other than `plc` and `web`, and `did:web` with a path;
/// [`ResolveError::NotAllowed`] for a `did:web` the spec does not allow.
pub fn document_url(plc_url: &str, did: &Did, dev_localhost: bool) -> Result<String, ResolveError> {
    match did.method() {
        "plc" => Ok(format!("{}/{}", plc_url.trim_end_matches('/'), did)),
        "web" => {
            let id = did.as_str().strip_prefix("did:web:").unwrap_or_default();
            if id.contains(':') {
                return Err(ResolveError::Unsupported(format!("{did}: did:web with a path")));
            }
            let not_allowed = |why: &str| ResolveError::NotAllowed(format!("{did}: {why}"));
            // The port's `:` is percent-encoded (`did:web:localhost%3A8080`), in either case.
            let decoded =
                percent_encoding::percent_decode_str(id).decode_utf8().map_err(|_| not_allowed("not a hostname"))?;
            let (name, port) = match decoded.split_once(':') {
                Some((name, port)) => (name, Some(port)),
                None => (decoded.as_ref(), None),
            };
            if name == "localhost" {
                if !dev_localhost {
                    return Err(not_allowed("localhost is only resolved in development mode"));
                }
                let host = wire::Hostname::new(decoded.as_ref()).map_err(|_| not_allowed("not a hostname"))?;
                return Ok(format!("http://{host}/.well-known/did.json"));
            }
            if port.is_some() {
                return Err(not_allowed("a port is only allowed on localhost"));
            }
            if name != name.to_ascii_lowercase() {
                return Err(not_allowed("not lowercase"));
            }
            let handle =
                wire::syntax::Handle::new(name).map_err(|_| not_allowed("the hostname is not a valid handle"))?;
            if !handle.has_allowed_tld() {
                return Err(not_allowed("the hostname has a disallowed TLD"));
            }
            Ok(format!("https://{name}/.well-known/did.json"))
        }
        m => Err(ResolveError::Unsupported(format!("did:{m}"))),
    }
}

async fn fetch(config: Rc<IdentityConfig>, did: Did, now_ms: u64) -> Result<IdentityRecord, ResolveError> {
    let url = HttpUrl::parse(&document_url(&config.plc_url, &did, config.dev_localhost)?)
        .map_err(|e| ResolveError::Unsupported(e.to_string()))?;
    // The PLC URL is the operator's; a did:web server is named by whoever made the DID (but a
    // `localhost` one is resolved only in development mode, where it is the developer's).
    let local = did.as_str().starts_with("did:web:localhost");
    let guard = config.web_public_only && did.method() == "web" && !local;
    let mut last = ResolveError::Fetch("no attempt".into());
    for attempt in 0..config.attempts.max(1) {
        if attempt > 0 {
            glommio::timer::sleep(if attempt == 1 { Duration::from_millis(250) } else { Duration::from_secs(1) }).await;
        }
        let purpose = if did.method() == "web" { net::dns::Purpose::DidWeb } else { net::dns::Purpose::Directory };
        let http = config.http.for_purpose(purpose);
        let result = match http.get_with(&url, MAX_DID_DOC_BYTES, config.timeout, guard).await {
            Ok((200, body)) => {
                return AtprotoIdentity::from_json(&did, &body)
                    .map(|id| IdentityRecord {
                        fetched_at_ms: now_ms,
                        signing_key: id.signing_key,
                        pds_endpoint: id.pds_endpoint,
                        handle: id.handle,
                    })
                    .map_err(|e| ResolveError::Document(e.to_string()));
            }
            Ok((status, _)) => ResolveError::Status(status),
            // A did:web name that does not exist says "no"; the PLC directory's own name failing to
            // resolve (even NXDOMAIN: a DNS incident, a typo being fixed) is an outage of the
            // directory, whatever the answer: events wait, cached identities stay.
            Err(
                e @ (net::NetError::Resolve { error: net::dns::DnsError::NotFound, .. }
                | net::NetError::NotPublic { .. }),
            ) if did.method() == "web" => ResolveError::NoSuchHost(e.to_string()),
            Err(e) => ResolveError::Fetch(e.to_string()),
        };
        if !result.is_transient() {
            return Err(result);
        }
        last = result;
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_urls() {
        let d = |s| Did::new(s).unwrap();
        let url = |s, dev| document_url("http://plc:2582/", &d(s), dev);
        assert_eq!(url("did:plc:abc", false).unwrap(), "http://plc:2582/did:plc:abc");
        assert_eq!(url("did:web:pds.bsky.social", false).unwrap(), "https://pds.bsky.social/.well-known/did.json");
        assert_eq!(url("did:web:alice.test", false).unwrap(), "https://alice.test/.well-known/did.json");
        assert_eq!(url("did:web:localhost%3a1234", true).unwrap(), "http://localhost:1234/.well-known/did.json");
        assert_eq!(url("did:web:localhost", true).unwrap(), "http://localhost/.well-known/did.json");
        assert!(matches!(url("did:web:example.com:user:alice", false), Err(ResolveError::Unsupported(_))));
        assert!(url("did:key:zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme", false).is_err());
        // specs/did: ports and localhost only in development; the TLD rules of handles; lowercase.
        for refused in [
            ("did:web:localhost%3A1234", false),
            ("did:web:localhost", false),
            ("did:web:example.com%3A8443", true),
            ("did:web:pds.example", true),
            ("did:web:host.arpa", false),
            ("did:web:onion.onion", false),
            ("did:web:single", false),
            ("did:web:Example.com", false),
            ("did:web:1.2.3.4", false),
            ("did:web:exa_mple.com", false),
        ] {
            assert!(matches!(url(refused.0, refused.1), Err(ResolveError::NotAllowed(_))), "{refused:?}");
        }
    }

    /// Two frames of one DID share a fetch; the caller that started it is cancelled (its connection
    /// ended) while the directory is still answering. The other still gets the answer, the answer is
    /// recorded (a 404: remembered as failed, so the next lookup does not ask), the shared entry is
    /// gone, and the directory was asked once.
    #[test]
    fn a_shared_fetch_survives_its_starter_being_cancelled() {
        use std::io::{Read, Write};
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
        let requests = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&requests);
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                counted.fetch_add(1, Ordering::AcqRel);
                let mut buf = [0u8; 2048];
                let _ = stream.read(&mut buf);
                std::thread::sleep(Duration::from_millis(300));
                let _ = stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let ex = glommio::LocalExecutorBuilder::default().make().unwrap();
        ex.run(async move {
            let store = Arc::new(Store::open(dir.path(), &storage::StoreOptions::default()).unwrap());
            let http = net::HttpClient::new(None, net::dns::Dns::default()).unwrap();
            let mut config = IdentityConfig::new(url, http);
            config.attempts = 1;
            let resolver = Rc::new(Resolver::new(config, store, Metrics::default()));
            let did = Did::new("did:plc:cancelledstarter000000000").unwrap();
            let start = |r: &Rc<Resolver>| {
                let (r, did) = (Rc::clone(r), did.clone());
                glommio::spawn_local(async move { r.refresh(&did, 1_000).await })
            };
            let starter = start(&resolver);
            glommio::timer::sleep(Duration::from_millis(50)).await;
            let joiner = start(&resolver);
            glommio::timer::sleep(Duration::from_millis(50)).await;
            drop(starter);
            assert!(matches!(joiner.await, Err(ResolveError::Status(404))));
            assert!(resolver.pending.borrow().is_empty(), "the shared entry is removed");
            assert!(matches!(resolver.refresh(&did, 2_000).await, Err(ResolveError::RecentlyFailed)));
        });
        assert_eq!(requests.load(Ordering::Acquire), 1, "one fetch for both");
    }

    /// An `#identity` read while a fetch of its DID is in flight does not join that fetch (it may
    /// carry the document from before the change): it starts one of its own, and later callers join
    /// the newer one.
    #[test]
    fn an_identity_event_sees_a_fetch_that_started_after_it() {
        use std::io::{Read, Write};
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
        let requests = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&requests);
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                counted.fetch_add(1, Ordering::AcqRel);
                let mut buf = [0u8; 2048];
                let _ = stream.read(&mut buf);
                std::thread::sleep(Duration::from_millis(300));
                let _ = stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let ex = glommio::LocalExecutorBuilder::default().make().unwrap();
        ex.run(async move {
            let store = Arc::new(Store::open(dir.path(), &storage::StoreOptions::default()).unwrap());
            let http = net::HttpClient::new(None, net::dns::Dns::default()).unwrap();
            let mut config = IdentityConfig::new(url, http);
            config.attempts = 1;
            let resolver = Rc::new(Resolver::new(config, store, Metrics::default()));
            let did = Did::new("did:plc:identityafterfetch00000000").unwrap();
            let (r, d) = (Rc::clone(&resolver), did.clone());
            let earlier = glommio::spawn_local(async move { r.refresh(&d, 1_000).await });
            glommio::timer::sleep(Duration::from_millis(50)).await;
            let event_read = Instant::now();
            let (r, d) = (Rc::clone(&resolver), did.clone());
            let identity = glommio::spawn_local(async move { r.refresh_after(&d, 1_000, Some(event_read)).await });
            glommio::timer::sleep(Duration::from_millis(50)).await;
            let (r, d) = (Rc::clone(&resolver), did.clone());
            let later = glommio::spawn_local(async move { r.refresh(&d, 1_000).await });
            let _ = earlier.await;
            let _ = identity.await;
            let _ = later.await;
        });
        assert_eq!(requests.load(Ordering::Acquire), 2, "the #identity's own fetch, joined by the later lookup");
    }

    #[test]
    fn transient_errors() {
        assert!(ResolveError::Fetch("x".into()).is_transient());
        assert!(ResolveError::Status(503).is_transient() && ResolveError::Status(429).is_transient());
        assert!(!ResolveError::Status(404).is_transient() && !ResolveError::Document("x".into()).is_transient());
        assert!(!ResolveError::NoSuchHost("x".into()).is_transient() && !ResolveError::RecentlyFailed.is_transient());
    }
}
