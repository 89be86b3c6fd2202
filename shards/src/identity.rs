//! Identity resolution for ingest: DID → `#atproto` signing key and `#atproto_pds` endpoint, cached in
//! memory (per ingest shard) and in the `identities` column family, so a restart does not re-resolve
//! every account.
//!
//! Resolves `did:plc` from the PLC directory (`GET {plc_url}/{did}`, <https://web.plc.directory/spec/v0.1/did-plc>).
//! `did:web` resolution is not implemented yet; such accounts fail with
//! [`ResolveError::UnsupportedMethod`] and their events are dropped as `identity_unresolved`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use storage::{IdentityRecord, Store};
use wire::Did;
use wire::did_doc::AtprotoIdentity;

use crate::metrics::Metrics;
use crate::net::{HttpUrl, NetError, http_get};

/// Largest DID document accepted, in bytes.
const MAX_DID_DOC_BYTES: usize = 256 * 1024;

/// Identity resolution settings.
#[derive(Debug, Clone)]
pub struct IdentityConfig {
    /// Base URL of the PLC directory, `http://` only for now, e.g. `http://localhost:2582`.
    pub plc_url: String,
    /// How long a resolved identity is trusted before it is fetched again. Default 24 h.
    pub ttl: Duration,
    /// Deadline of one resolution, connect included. Default 10 s.
    pub timeout: Duration,
    /// Most identities kept in memory per ingest shard; beyond it entries are evicted. Default 100,000.
    pub memory_entries: usize,
}

impl IdentityConfig {
    /// Settings with the defaults above for `plc_url`.
    pub fn new(plc_url: impl Into<String>) -> Self {
        Self {
            plc_url: plc_url.into(),
            ttl: Duration::from_secs(24 * 3600),
            timeout: Duration::from_secs(10),
            memory_entries: 100_000,
        }
    }
}

/// Why an identity could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The DID method is not resolvable by this relay (yet).
    #[error("unsupported DID method {0}")]
    UnsupportedMethod(String),
    /// The directory could not be reached or answered badly.
    #[error("fetching the DID document: {0}")]
    Fetch(#[from] NetError),
    /// The directory answered a non-200 status (404 for unknown or tombstoned DIDs).
    #[error("directory answered HTTP {0}")]
    Status(u16),
    /// The document does not describe this DID or has no usable key.
    #[error("{0}")]
    Document(#[from] wire::did_doc::DidDocError),
}

/// How an identity was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// From memory or the store, fetched earlier.
    Cached,
    /// Fetched from the directory just now.
    Fetched,
}

/// A per-shard identity resolver (single-threaded: lives on one executor).
pub struct Resolver {
    config: IdentityConfig,
    store: Arc<Store>,
    metrics: Metrics,
    cache: RefCell<HashMap<Did, Rc<IdentityRecord>>>,
}

impl Resolver {
    /// A resolver backed by `store`.
    pub fn new(config: IdentityConfig, store: Arc<Store>, metrics: Metrics) -> Self {
        Self {
            config,
            store,
            metrics,
            cache: RefCell::new(HashMap::new()),
        }
    }

    fn fresh(&self, rec: &IdentityRecord, now_ms: u64) -> bool {
        now_ms.saturating_sub(rec.fetched_at_ms) < self.config.ttl.as_millis() as u64
    }

    /// Returns the identity of `did`: from memory, else from the store, else fetched; entries older
    /// than the TTL are fetched again.
    ///
    /// # Errors
    /// [`ResolveError`] when it has to be fetched and cannot be.
    pub async fn lookup(
        &self,
        did: &Did,
        now_ms: u64,
    ) -> Result<(Rc<IdentityRecord>, Source), ResolveError> {
        if let Some(rec) = self
            .cache
            .borrow()
            .get(did)
            .filter(|r| self.fresh(r, now_ms))
        {
            Metrics::inc(&self.metrics.identity_lookups, "result", "cache");
            return Ok((Rc::clone(rec), Source::Cached));
        }
        if let Ok(Some(rec)) = self.store.identity(did)
            && self.fresh(&rec, now_ms)
        {
            Metrics::inc(&self.metrics.identity_lookups, "result", "store");
            let rec = Rc::new(rec);
            self.remember(did, Rc::clone(&rec));
            return Ok((rec, Source::Cached));
        }
        Ok((self.refresh(did, now_ms).await?, Source::Fetched))
    }

    /// Fetches the identity of `did` from the directory, replacing any cached one.
    ///
    /// # Errors
    /// [`ResolveError`] when it cannot be fetched or parsed; the cached entry is then removed.
    pub async fn refresh(
        &self,
        did: &Did,
        now_ms: u64,
    ) -> Result<Rc<IdentityRecord>, ResolveError> {
        match self.fetch(did, now_ms).await {
            Ok(rec) => {
                Metrics::inc(&self.metrics.identity_lookups, "result", "resolved");
                // A failed cache write only costs a later re-resolution.
                let _ = self.store.put_identity(did, &rec);
                let rec = Rc::new(rec);
                self.remember(did, Rc::clone(&rec));
                Ok(rec)
            }
            Err(e) => {
                Metrics::inc(&self.metrics.identity_lookups, "result", "failed");
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

    async fn fetch(&self, did: &Did, now_ms: u64) -> Result<IdentityRecord, ResolveError> {
        if did.method() != "plc" {
            return Err(ResolveError::UnsupportedMethod(did.method().to_owned()));
        }
        let url = HttpUrl::parse(&format!(
            "{}/{}",
            self.config.plc_url.trim_end_matches('/'),
            did
        ))?;
        let (status, body) = http_get(&url, MAX_DID_DOC_BYTES, self.config.timeout).await?;
        if status != 200 {
            return Err(ResolveError::Status(status));
        }
        let id = AtprotoIdentity::from_json(did, &body)?;
        Ok(IdentityRecord {
            fetched_at_ms: now_ms,
            signing_key: id.signing_key,
            pds_endpoint: id.pds_endpoint,
            handle: id.handle,
        })
    }
}
