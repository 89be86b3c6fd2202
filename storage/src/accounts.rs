//! Accounts: the relay's state of each account (`repos`) and the identity cache (`identities`).

use rocksdb::{Direction, IteratorMode};
use wire::Did;

use crate::cf;
use crate::error::StoreError;
use crate::layout::{IdentityRecord, RepoState};
use crate::store::{Store, corrupt};

/// The `collections` key of `(collection, did)`.
pub(crate) fn collection_key(collection: &str, did: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(collection.len() + 1 + did.len());
    k.extend_from_slice(collection.as_bytes());
    k.push(0);
    k.extend_from_slice(did.as_bytes());
    k
}

impl Store {
    /// Up to `limit` accounts noted with records of `collection`, in DID order, after `after`
    /// (exclusive) when given (`listReposByCollection`). Accounts are noted from relayed commits
    /// only; the caller hides inactive ones.
    ///
    /// # Errors
    /// [`StoreError::Rocks`] or [`StoreError::Corrupt`].
    pub fn repos_with_collection(
        &self,
        collection: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Did>, StoreError> {
        let prefix = collection_key(collection, "");
        let start = collection_key(collection, after.unwrap_or(""));
        let mut out = Vec::with_capacity(limit.min(1024));
        for item in self.db.iterator_cf(self.cf(cf::COLLECTIONS), IteratorMode::From(&start, Direction::Forward)) {
            let (k, _) = item?;
            let Some(did) = k.strip_prefix(prefix.as_slice()) else { break };
            if after.is_some_and(|a| a.as_bytes() == did) {
                continue;
            }
            let did = std::str::from_utf8(did)
                .ok()
                .and_then(|d| Did::new(d).ok())
                .ok_or_else(|| corrupt(cf::COLLECTIONS, &k))?;
            out.push(did);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Whether `(collection, did)` is noted in `collections`.
    ///
    /// # Errors
    /// [`StoreError::Rocks`].
    pub fn has_collection(&self, collection: &str, did: &str) -> Result<bool, StoreError> {
        Ok(self.db.get_pinned_cf(self.cf(cf::COLLECTIONS), collection_key(collection, did))?.is_some())
    }

    /// The last relayed commit of `did`, if any.
    ///
    /// # Errors
    /// [`StoreError::Rocks`] or [`StoreError::Corrupt`].
    pub fn repo(&self, did: &Did) -> Result<Option<RepoState>, StoreError> {
        self.repo_cache.get_or_read(did, || self.get_decoded(cf::REPOS, did.as_str().as_bytes(), RepoState::decode))
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CommitBatch, HostState, StoreOptions};
    use bytes::Bytes;
    use wire::{HostSeq, RelaySeq, Tid};

    fn batch(seqs: std::ops::RangeInclusive<u64>) -> CommitBatch {
        CommitBatch {
            events: seqs.map(|s| (RelaySeq(s), Bytes::from(format!("frame {s}")))).collect(),
            hosts: vec![("localhost:2583".into(), HostState::at(HostSeq(9)))],
            ..CommitBatch::default()
        }
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

    #[test]
    fn collections_page_by_did_and_stop_at_the_collection() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let d = |s: &str| Did::new(s).unwrap();
        let mut b = batch(1..=1);
        for (c, did) in [
            ("app.bsky.feed.post", "did:plc:b"),
            ("app.bsky.feed.post", "did:plc:a"),
            ("app.bsky.feed.postx", "did:plc:c"),
            ("app.bsky.feed.like", "did:plc:a"),
        ] {
            b.collections.push((c.into(), d(did), RelaySeq(1)));
        }
        store.commit(&b).unwrap();
        let page = |after, limit| store.repos_with_collection("app.bsky.feed.post", after, limit).unwrap();
        assert_eq!(
            page(None, 10),
            [d("did:plc:a"), d("did:plc:b")],
            "a longer NSID with the same prefix is not included"
        );
        assert_eq!(page(None, 1), [d("did:plc:a")]);
        assert_eq!(page(Some("did:plc:a"), 10), [d("did:plc:b")]);
        assert!(page(Some("did:plc:b"), 10).is_empty());
        assert!(store.has_collection("app.bsky.feed.like", "did:plc:a").unwrap());
        assert!(!store.has_collection("app.bsky.feed.like", "did:plc:b").unwrap());
    }
}
