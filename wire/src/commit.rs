//! The signed repo commit object, per <https://atproto.com/specs/repository#commit-objects>:
//! a DAG-CBOR map `{did, version: 3, data, rev, prev, sig}`. The signature covers the DAG-CBOR
//! encoding of the same map without `sig` ("unsigned bytes").
//!
//! Which fields the unsigned bytes hold, when a commit carries fields beyond these six, is decided
//! here with the spec and both reference implementations in hand. The spec (bluesky-social/
//! atproto-website `specs/repository`, "Commit Objects") defines the commit's fields and says "An
//! unsigned commit object has all the same fields except for `sig`": the defined fields. It also
//! allows new optional fields in the future ("may or may not result in a repo format version
//! change"), but says nothing of how today's verifiers treat them. Both references sign and verify
//! over the defined fields only: `@atproto/repo` `verifyCommitSig` encodes the commit as parsed by its
//! schema (zod strips unknown keys), and indigo's `atproto/repo` `Commit.UnsignedBytes` re-encodes
//! its struct (its decoder skips unknown keys). So this relay verifies over the defined fields: a
//! commit with an extra field signed over the defined ones is accepted (as both references do), one
//! signed over every field including the extra one is not (both references reject it, so relaying
//! it would give consumers a commit they drop). `prev` must be present, null or a CID ("this field
//! must exist in the CBOR object"): without it the references' bytes differ and the signature
//! cannot verify there. Fixtures of each case: `wire/tests/commit_fields.rs`.

use std::collections::BTreeMap;

use cid::Cid;
use ipld_core::ipld::Ipld;
use serde::Deserialize;

use crate::cbor::{self, CborError};
use crate::crypto::{PublicKey, SignatureError};
use crate::syntax::{Did, Tid};

/// The fields of a commit object the signature covers: all defined fields but `sig`.
pub const UNSIGNED_FIELDS: [&str; 5] = ["did", "version", "data", "rev", "prev"];

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
    /// Decodes a commit block and prepares its unsigned bytes: the five defined fields other than
    /// `sig` (`did`, `version`, `data`, `rev`, `prev`), re-encoded canonically, as both reference
    /// implementations compute them (see the module docs); fields this code does not know are not
    /// covered.
    ///
    /// # Errors
    /// [`CborError::Decode`] when the block is not a commit map, or has no `prev` key.
    pub fn decode(block: &[u8]) -> Result<Self, CborError> {
        let commit: Commit = cbor::from_slice(block)?;
        let mut map: BTreeMap<String, Ipld> = cbor::from_slice(block)?;
        if !map.contains_key("prev") {
            return Err(CborError::Decode("commit without prev".into()));
        }
        map.retain(|k, _| UNSIGNED_FIELDS.contains(&k.as_str()));
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
