//! Simulated accounts for tests and the load generator (feature `testkit`): real keys (k256 and
//! p256, low-S), a real MST, and `#commit` events with Sync 1.1 `prevData`, `since`, per-op `prev` and
//! the proof blocks a relay needs — the same shapes a reference PDS sends.
//!
//! Not for production use: keys are generated for the simulation. It never sees network input, so
//! the crate's no-indexing rule is relaxed here.
#![allow(clippy::indexing_slicing)]

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use bytes::Bytes;
use cid::Cid;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::car::{self, CODEC_DAG_CBOR};
use crate::cbor;
use crate::crypto::{KeyType, PublicKey};
use crate::frame::{AccountEvent, CommitEvent, IdentityEvent, RepoOp, SyncEvent};
use crate::mst::{Blocks, Mst};
use crate::syntax::{Did, Tid};

/// Order of secp256k1, big-endian.
const K256_ORDER: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe, 0xba, 0xae, 0xdc,
    0xe6, 0xaf, 0x48, 0xa0, 0x3b, 0xbf, 0xd2, 0x5e, 0x8c, 0xd0, 0x36, 0x41, 0x41,
];
/// Order of P-256, big-endian.
const P256_ORDER: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xbc, 0xe6, 0xfa,
    0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];

/// `n - s` for 32-byte big-endian numbers with `s < n`.
fn negate(n: &[u8; 32], s: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let d = i16::from(n[i]) - i16::from(s.get(i).copied().unwrap_or(0)) - borrow;
        borrow = i16::from(d < 0);
        out[i] = d.rem_euclid(256) as u8;
    }
    out
}

/// A signing key of either curve.
pub enum SigningKey {
    /// secp256k1.
    K256(secp256k1::SecretKey),
    /// P-256, with its PKCS#8 document (to clone it).
    P256(EcdsaKeyPair, Vec<u8>),
}

impl Clone for SigningKey {
    fn clone(&self) -> Self {
        match self {
            SigningKey::K256(k) => SigningKey::K256(*k),
            SigningKey::P256(_, pkcs8) => {
                #[allow(clippy::expect_used)]
                let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8).expect("own PKCS#8");
                SigningKey::P256(pair, pkcs8.clone())
            }
        }
    }
}

impl SigningKey {
    /// A k256 key derived from `seed` (deterministic).
    pub fn k256(seed: u64) -> Self {
        let bytes: [u8; 32] = Sha256::digest(seed.to_be_bytes()).into();
        // A sha-256 output is a valid secret key with overwhelming probability; retry on the
        // astronomically rare failure.
        let key = secp256k1::SecretKey::from_byte_array(&bytes)
            .unwrap_or_else(|_| secp256k1::SecretKey::from_byte_array(&[1; 32]).unwrap_or_else(|_| unreachable!()));
        SigningKey::K256(key)
    }

    /// A new random P-256 key.
    ///
    /// # Panics
    /// When the system random source fails.
    pub fn p256() -> Self {
        #[allow(clippy::expect_used)]
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .expect("system randomness");
        let pkcs8 = doc.as_ref().to_vec();
        #[allow(clippy::expect_used)]
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8).expect("own PKCS#8");
        SigningKey::P256(pair, pkcs8)
    }

    /// The public key.
    pub fn public(&self) -> PublicKey {
        match self {
            SigningKey::K256(k) => PublicKey::K256(secp256k1::PublicKey::from_secret_key(secp256k1::SECP256K1, k)),
            SigningKey::P256(k, _) => PublicKey::from_sec1(KeyType::P256, k.public_key().as_ref())
                .unwrap_or_else(|_| unreachable!("aws-lc-rs public keys are on the curve")),
        }
    }

    /// A low-S compact signature over sha-256(`msg`).
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        let mut out = [0u8; 64];
        match self {
            SigningKey::K256(k) => {
                let digest: [u8; 32] = Sha256::digest(msg).into();
                let sig = secp256k1::SECP256K1.sign_ecdsa(&secp256k1::Message::from_digest(digest), k);
                out = sig.serialize_compact();
            }
            SigningKey::P256(k, _) => {
                if let Ok(sig) = k.sign(&SystemRandom::new(), msg) {
                    out.copy_from_slice(sig.as_ref().get(..64).unwrap_or(&[0; 64]));
                }
                // Normalize to low-S: s > n/2 becomes n - s.
                let s = out.get(32..).unwrap_or_default().to_vec();
                let high = s.as_slice() > &negate(&P256_ORDER, &s)[..];
                if high {
                    out[32..].copy_from_slice(&negate(&P256_ORDER, &s));
                }
            }
        }
        out
    }

    /// The malleable twin of [`SigningKey::sign`]: the same signature with `s` replaced by `n - s`
    /// (valid ECDSA, but high-S, which atproto rejects).
    pub fn sign_high_s(&self, msg: &[u8]) -> [u8; 64] {
        let mut sig = self.sign(msg);
        let order = match self {
            SigningKey::K256(_) => &K256_ORDER,
            SigningKey::P256(..) => &P256_ORDER,
        };
        let s = negate(order, &sig[32..]);
        sig[32..].copy_from_slice(&s);
        sig
    }
}

#[derive(Serialize)]
struct UnsignedCommit<'a> {
    did: &'a str,
    version: u64,
    data: Cid,
    rev: &'a str,
    prev: Option<Cid>,
}

#[derive(Serialize)]
struct SignedCommitData<'a> {
    did: &'a str,
    version: u64,
    data: Cid,
    rev: &'a str,
    prev: Option<Cid>,
    #[serde(with = "serde_bytes")]
    sig: &'a [u8],
}

/// A block source that records which blocks were read.
struct Tracking<'a> {
    blocks: &'a HashMap<Cid, Vec<u8>>,
    used: RefCell<HashSet<Cid>>,
}

impl Blocks for Tracking<'_> {
    fn block(&self, cid: &Cid) -> Option<&[u8]> {
        self.used.borrow_mut().insert(*cid);
        self.blocks.get(cid).map(Vec::as_slice)
    }
}

/// A record operation for [`SimAccount::commit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Create `collection/rkey` with a record of about `bytes` bytes.
    Create {
        /// The path, `collection/rkey`.
        path: String,
        /// Approximate record size in bytes.
        bytes: usize,
    },
    /// Create `collection/rkey` with exactly this record block (tests of what a record may be).
    CreateBlock {
        /// The path.
        path: String,
        /// The record's block, DAG-CBOR or not.
        block: Vec<u8>,
    },
    /// Replace the record at the path.
    Update {
        /// The path.
        path: String,
    },
    /// Delete the record at the path.
    Delete {
        /// The path.
        path: String,
    },
}

/// How to sign a commit (tests use the wrong ways on purpose).
pub enum Signer<'a> {
    /// The account's own key, low-S.
    Own,
    /// The account's own key, high-S.
    OwnHighS,
    /// Another key.
    Other(&'a SigningKey),
}

/// A simulated account: key, repo (MST and blocks), `rev` clock. Cloning forks it (tests send one
/// fork's events and not the other's).
#[derive(Clone)]
pub struct SimAccount {
    /// The account DID.
    pub did: Did,
    /// Its `#atproto` key.
    pub key: SigningKey,
    mst: Mst,
    blocks: HashMap<Cid, Vec<u8>>,
    root: Cid,
    rev: Option<Tid>,
    clock_us: u64,
    counter: u64,
    commits: u64,
    last: Option<(Cid, Vec<u8>)>,
}

/// Key of the record body's text field: records are `{"$type", "text", "createdAt"}`.
const CREATED_AT: &str = "2026-01-01T00:00:00.000Z";

impl SimAccount {
    /// A new account with an empty repo; `start_us` (microseconds since the epoch) seeds the `rev`
    /// clock, which then advances at least 1 µs per commit.
    pub fn new(did: Did, key: SigningKey, start_us: u64) -> Self {
        let mst = Mst::new();
        let mut out = Vec::new();
        let root = mst.root_cid(Some(&mut out));
        Self {
            did,
            key,
            mst,
            blocks: out.into_iter().collect(),
            root,
            rev: None,
            clock_us: start_us,
            counter: 0,
            commits: 0,
            last: None,
        }
    }

    /// The account's current `rev`.
    pub fn rev(&self) -> Option<&Tid> {
        self.rev.as_ref()
    }

    /// The current MST root (`data`).
    pub fn data(&self) -> Cid {
        self.root
    }

    /// The CID and block of the latest signed commit (what `getLatestCommit`/`getBlocks` serve).
    pub fn latest_commit(&self) -> Option<(Cid, Vec<u8>)> {
        self.last.clone()
    }

    /// Overrides the `rev` the next commit names as `since` (a host that lost history).
    pub fn set_rev(&mut self, rev: Option<Tid>) {
        self.rev = rev;
    }

    /// Moves the `rev` clock to `us` microseconds since the epoch. Revs stay strictly increasing:
    /// a clock behind the last `rev` is ignored.
    pub fn set_clock(&mut self, us: u64) {
        self.clock_us = self.clock_us.max(us);
    }

    /// Blocks held for the repo (MST nodes of the current tree and recent versions).
    pub fn block_count(&self) -> usize {
        self.blocks.len()
    }

    /// A DID document (Multikey form) naming `pds` as the account's PDS.
    pub fn did_doc(&self, pds: &str) -> serde_json::Value {
        let did_key = self.key.public().to_did_key();
        serde_json::json!({
            "id": self.did.as_str(),
            "alsoKnownAs": [format!("at://{}.test", self.did.as_str().rsplit(':').next().unwrap_or("user"))],
            "verificationMethod": [{
                "id": format!("{}#atproto", self.did), "type": "Multikey", "controller": self.did.as_str(),
                "publicKeyMultibase": did_key.trim_start_matches("did:key:"),
            }],
            "service": [{"id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": pds}],
        })
    }

    /// A fresh record key (`rkey`) as a TID string.
    pub fn next_rkey(&mut self) -> String {
        self.counter += 1;
        Tid::from_u64((self.clock_us + self.counter) << 10).to_string()
    }

    fn record(&mut self, bytes: usize) -> (Cid, Vec<u8>) {
        self.counter += 1;
        let mut text = self.counter.to_string();
        text.extend(std::iter::repeat_n('x', bytes.saturating_sub(80 + text.len())));
        let block = cbor::to_vec(&serde_json::json!({
            "$type": "app.bsky.feed.post", "text": text, "createdAt": CREATED_AT,
        }))
        .unwrap_or_default();
        (car::cid_for(CODEC_DAG_CBOR, &block), block)
    }

    fn signed_commit(&self, rev: &Tid, data: Cid, signer: &Signer<'_>) -> (Cid, Vec<u8>) {
        let unsigned = UnsignedCommit { did: self.did.as_str(), version: 3, data, rev: rev.as_str(), prev: None };
        let bytes = cbor::to_vec(&unsigned).unwrap_or_default();
        let sig = match signer {
            Signer::Own => self.key.sign(&bytes),
            Signer::OwnHighS => self.key.sign_high_s(&bytes),
            Signer::Other(k) => k.sign(&bytes),
        };
        let signed =
            SignedCommitData { did: self.did.as_str(), version: 3, data, rev: rev.as_str(), prev: None, sig: &sig };
        let block = cbor::to_vec(&signed).unwrap_or_default();
        (car::cid_for(CODEC_DAG_CBOR, &block), block)
    }

    /// Applies `ops` and returns the signed `#commit` with `seq`, `since`, `prevData` (absent on the
    /// first commit), per-op `prev`, and a CAR of the commit, the changed MST nodes with the proof
    /// nodes, and the new records.
    ///
    /// # Panics
    /// When an op names a path that is absent (update/delete) or present (create).
    pub fn commit(&mut self, seq: i64, ops: &[Op], signer: &Signer<'_>) -> CommitEvent {
        let prev_data = self.rev.is_some().then_some(self.root);
        let mut repo_ops = Vec::with_capacity(ops.len());
        let mut new_blocks: Vec<(Cid, Vec<u8>)> = Vec::new();
        for op in ops {
            let (path, cid, prev) = match op {
                Op::Create { path, bytes } => {
                    let (cid, block) = self.record(*bytes);
                    new_blocks.push((cid, block));
                    self.mst_insert(path, cid);
                    (path.clone(), Some(cid), None)
                }
                Op::CreateBlock { path, block } => {
                    let cid = car::cid_for(CODEC_DAG_CBOR, block);
                    new_blocks.push((cid, block.clone()));
                    self.mst_insert(path, cid);
                    (path.clone(), Some(cid), None)
                }
                Op::Update { path } => {
                    let old = self.mst_get(path);
                    let (cid, block) = self.record(120);
                    new_blocks.push((cid, block));
                    self.mst_insert(path, cid);
                    (path.clone(), Some(cid), old)
                }
                Op::Delete { path } => {
                    let old = self.mst_get(path);
                    #[allow(clippy::expect_used)]
                    self.mst.remove(path.as_bytes(), &self.blocks).expect("delete of a present path");
                    (path.clone(), None, old)
                }
            };
            let action = match op {
                Op::Create { .. } | Op::CreateBlock { .. } => "create",
                Op::Update { .. } => "update",
                Op::Delete { .. } => "delete",
            };
            repo_ops.push(RepoOp {
                action: action.into(),
                path,
                cid,
                prev: if action == "create" { None } else { prev },
            });
        }
        let mut nodes = Vec::new();
        let root = self.mst.root_cid(Some(&mut nodes));
        for (cid, block) in &nodes {
            self.blocks.insert(*cid, block.clone());
        }
        // Later commits load only the nodes they touch.
        self.mst = Mst::load(root, &self.blocks).unwrap_or_default();
        self.root = root;
        // The proof: every node a relay reads to check the ops and invert them (Sync 1.1), found by
        // doing exactly that against the full block set and recording what is read.
        let tracker = Tracking { blocks: &self.blocks, used: RefCell::new(HashSet::new()) };
        if let Ok(mut check) = Mst::load(root, &tracker) {
            for op in &repo_ops {
                let _ = check.get(op.path.as_bytes(), &tracker);
            }
            for op in &repo_ops {
                let _ = match (op.action.as_str(), op.prev) {
                    ("create", _) => check.remove(op.path.as_bytes(), &tracker),
                    (_, Some(prev)) => check.insert(op.path.as_bytes(), prev, &tracker),
                    _ => Ok(()),
                };
            }
        }
        let changed: HashSet<Cid> = nodes.iter().map(|(c, _)| *c).collect();
        for cid in tracker.used.into_inner() {
            if !changed.contains(&cid)
                && let Some(block) = self.blocks.get(&cid)
            {
                nodes.push((cid, block.clone()));
            }
        }
        let since = self.rev.clone();
        self.clock_us += 1;
        let rev = Tid::from_u64(self.clock_us << 10);
        let (commit_cid, commit_block) = self.signed_commit(&rev, root, signer);
        self.last = Some((commit_cid, commit_block.clone()));
        let mut car_blocks: Vec<(Cid, &[u8])> = vec![(commit_cid, &commit_block)];
        car_blocks.extend(nodes.iter().map(|(c, b)| (*c, b.as_slice())));
        car_blocks.extend(new_blocks.iter().map(|(c, b)| (*c, b.as_slice())));
        let blocks = car::write_car(&commit_cid, &car_blocks).unwrap_or_default();
        self.rev = Some(rev.clone());
        self.commits += 1;
        if self.commits.is_multiple_of(64) {
            // Keep only the current tree's nodes (old versions are never read again).
            let live: HashSet<Cid> = crate::mst::reachable_nodes(self.root, &self.blocks).into_iter().collect();
            self.blocks.retain(|cid, _| live.contains(cid));
        }
        CommitEvent {
            seq,
            rebase: Some(false),
            too_big: Some(false),
            repo: self.did.clone(),
            commit: commit_cid,
            rev,
            since,
            blocks: Bytes::from(blocks),
            ops: repo_ops,
            blobs: Some(Vec::new()),
            prev_data,
            time: CREATED_AT.into(),
        }
    }

    fn mst_get(&mut self, path: &str) -> Option<Cid> {
        self.mst.get(path.as_bytes(), &self.blocks).ok().flatten()
    }

    fn mst_insert(&mut self, path: &str, cid: Cid) {
        #[allow(clippy::expect_used)]
        self.mst.insert(path.as_bytes(), cid, &self.blocks).expect("every block of the simulated repo is known");
    }

    /// A `#sync` declaring the current commit (a new `rev`, same data), signed with the account key.
    pub fn sync(&mut self, seq: i64) -> SyncEvent {
        self.clock_us += 1;
        let rev = Tid::from_u64(self.clock_us << 10);
        let (cid, block) = self.signed_commit(&rev, self.root, &Signer::Own);
        let blocks = car::write_car(&cid, &[(cid, &block)]).unwrap_or_default();
        self.last = Some((cid, block));
        self.rev = Some(rev.clone());
        SyncEvent { seq, did: self.did.clone(), blocks: Bytes::from(blocks), rev, time: CREATED_AT.into() }
    }

    /// An `#identity` event.
    pub fn identity(&self, seq: i64) -> IdentityEvent {
        IdentityEvent { seq, did: self.did.clone(), time: CREATED_AT.into(), handle: None }
    }

    /// An `#account` event.
    pub fn account(&self, seq: i64, active: bool, status: Option<&str>) -> AccountEvent {
        AccountEvent { seq, did: self.did.clone(), time: CREATED_AT.into(), active, status: status.map(str::to_owned) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::{Limits, check_commit};

    #[test]
    fn simulated_commits_pass_every_check() {
        for key in [SigningKey::k256(7), SigningKey::p256()] {
            let public = key.public();
            let mut acct = SimAccount::new(Did::new("did:plc:sim").unwrap(), key, 1_700_000_000_000_000);
            let mut paths: Vec<String> = Vec::new();
            for i in 0..30 {
                let ops = if i % 5 == 4 {
                    vec![Op::Update { path: paths[0].clone() }, Op::Delete { path: paths.pop().unwrap() }]
                } else {
                    let path = format!("app.bsky.feed.post/{}", acct.next_rkey());
                    paths.push(path.clone());
                    vec![Op::Create { path, bytes: 300 }]
                };
                let ev = acct.commit(i, &ops, &Signer::Own);
                let checked = check_commit(&ev, &Limits::default(), u64::MAX / 2).unwrap();
                assert_eq!(checked.proof, Ok(()), "commit {i}");
                assert_eq!(checked.signed.verify(&public), Ok(()));
                assert_eq!(ev.prev_data.is_some(), i > 0);
            }
            let ev =
                acct.commit(99, &[Op::Create { path: "app.bsky.feed.like/x".into(), bytes: 10 }], &Signer::OwnHighS);
            let checked = check_commit(&ev, &Limits::default(), u64::MAX / 2).unwrap();
            assert_eq!(checked.signed.verify(&public), Err(crate::crypto::SignatureError::HighS));
        }
    }
}
