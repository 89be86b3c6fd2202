//! The signed repo commit object, per <https://atproto.com/specs/repository#commit-objects>:
//! a DAG-CBOR map `{did, version: 3, data, rev, prev, sig}`. The signature covers the DAG-CBOR
//! encoding of the same map without `sig` ("unsigned bytes").

use std::collections::BTreeMap;

use cid::Cid;
use ipld_core::ipld::Ipld;
use serde::Deserialize;

use crate::cbor::{self, CborError};
use crate::crypto::{PublicKey, SignatureError};
use crate::syntax::{Did, Tid};

/// The only commit version this relay accepts.
pub const COMMIT_VERSION: u64 = 3;

/// A decoded commit object.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Commit {
    /// The account DID.
    pub did: Did,
    /// Repo format version; must be 3.
    pub version: u64,
    /// Root CID of the repo's MST.
    pub data: Cid,
    /// Revision TID, increasing with every commit.
    pub rev: Tid,
    /// Previous commit CID; nullable and virtually always null in version 3.
    pub prev: Option<Cid>,
    /// Compact 64-byte signature.
    #[serde(with = "serde_bytes")]
    pub sig: Vec<u8>,
}

/// A commit block decoded twice: the typed fields, and the exact bytes the signature covers.
#[derive(Debug, Clone)]
pub struct SignedCommit {
    /// The typed commit.
    pub commit: Commit,
    /// DAG-CBOR of the commit map without `sig`.
    pub unsigned_bytes: Vec<u8>,
}

impl SignedCommit {
    /// Decodes a commit block and prepares its unsigned bytes.
    ///
    /// All fields of the block other than `sig` (including ones this code does not know) are kept in
    /// the unsigned bytes, re-encoded canonically, as the reference implementation does.
    ///
    /// # Errors
    /// [`CborError::Decode`] when the block is not a commit map.
    pub fn decode(block: &[u8]) -> Result<Self, CborError> {
        let commit: Commit = cbor::from_slice(block)?;
        let mut map: BTreeMap<String, Ipld> = cbor::from_slice(block)?;
        map.remove("sig");
        let unsigned_bytes = cbor::to_vec(&map)?;
        Ok(Self { commit, unsigned_bytes })
    }

    /// Verifies the signature with `key`.
    ///
    /// # Errors
    /// The [`SignatureError`] from [`PublicKey::verify`].
    pub fn verify(&self, key: &PublicKey) -> Result<(), SignatureError> {
        key.verify(&self.unsigned_bytes, &self.commit.sig)
    }
}
