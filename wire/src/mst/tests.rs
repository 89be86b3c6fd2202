use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use super::*;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/interop")
}

fn leaf(i: u64) -> Cid {
    car::cid_for(CODEC_DAG_CBOR, &cbor::to_vec(&i).unwrap())
}

#[test]
fn key_heights_fixture() {
    let text = std::fs::read_to_string(fixtures().join("mst/key_heights.json")).unwrap();
    let cases: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    assert!(!cases.is_empty());
    for c in cases {
        let key = c["key"].as_str().unwrap();
        assert_eq!(u64::from(key_height(key.as_bytes())), c["height"].as_u64().unwrap(), "{key}");
    }
}

#[test]
fn common_prefix_fixture() {
    let text = std::fs::read_to_string(fixtures().join("mst/common_prefix.json")).unwrap();
    let cases: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    for c in cases {
        let (l, r) = (c["left"].as_str().unwrap(), c["right"].as_str().unwrap());
        assert_eq!(common_prefix_len(l.as_bytes(), r.as_bytes()) as u64, c["len"].as_u64().unwrap(), "{l} {r}");
    }
}

fn build(keys: &BTreeMap<Vec<u8>, Cid>) -> Mst {
    let none: HashMap<Cid, Vec<u8>> = HashMap::new();
    let mut mst = Mst::new();
    for (k, v) in keys {
        mst.insert(k, *v, &none).unwrap();
    }
    mst
}

fn blocks_of(mst: &Mst) -> (Cid, HashMap<Cid, Vec<u8>>) {
    let mut out = Vec::new();
    let root = mst.root_cid(Some(&mut out)).unwrap();
    (root, out.into_iter().collect())
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProofFixture {
    comment: String,
    leaf_value: String,
    keys: Vec<String>,
    adds: Vec<String>,
    dels: Vec<String>,
    root_before_commit: String,
    root_after_commit: String,
    blocks_in_proof: Vec<String>,
}

/// The six commit-proof cases: the tree built from `keys` has `rootBeforeCommit`; applying the
/// commit gives `rootAfterCommit`; and from the `blocksInProof` alone, inverting the commit gives
/// back `rootBeforeCommit` (Sync 1.1).
#[test]
fn commit_proof_fixtures() {
    let text = std::fs::read_to_string(fixtures().join("firehose/commit-proof-fixtures.json")).unwrap();
    let cases: Vec<ProofFixture> = serde_json::from_str(&text).unwrap();
    assert_eq!(cases.len(), 6);
    for f in cases {
        let leaf: Cid = f.leaf_value.parse().unwrap();
        let keys: BTreeMap<Vec<u8>, Cid> = f.keys.iter().map(|k| (k.as_bytes().to_vec(), leaf)).collect();
        let mut mst = build(&keys);
        assert_eq!(mst.root_cid(None).unwrap().to_string(), f.root_before_commit, "{}: before", f.comment);
        let none: HashMap<Cid, Vec<u8>> = HashMap::new();
        for k in &f.adds {
            mst.insert(k.as_bytes(), leaf, &none).unwrap();
        }
        for k in &f.dels {
            mst.remove(k.as_bytes(), &none).unwrap();
        }
        let (after, all_blocks) = blocks_of(&mst);
        assert_eq!(after.to_string(), f.root_after_commit, "{}: after", f.comment);

        let proof: HashMap<Cid, Vec<u8>> = f
            .blocks_in_proof
            .iter()
            .map(|c| {
                let cid: Cid = c.parse().unwrap();
                (cid, all_blocks[&cid].clone())
            })
            .collect();
        let mut partial = Mst::load(after, &proof).unwrap();
        for k in &f.adds {
            assert_eq!(partial.get(k.as_bytes(), &proof).unwrap(), Some(leaf), "{}: {k} present", f.comment);
        }
        for k in &f.dels {
            assert_eq!(partial.get(k.as_bytes(), &proof).unwrap(), None, "{}: {k} absent", f.comment);
        }
        for k in &f.adds {
            partial.remove(k.as_bytes(), &proof).unwrap();
        }
        for k in &f.dels {
            partial.insert(k.as_bytes(), leaf, &proof).unwrap();
        }
        assert_eq!(partial.root_cid(None).unwrap().to_string(), f.root_before_commit, "{}: inverted", f.comment);

        // Without the root block nothing can be checked.
        let mut missing = proof.clone();
        missing.remove(&after);
        assert!(matches!(Mst::load(after, &missing), Err(MstError::MissingBlock(_))));
    }
}

/// A tiny deterministic generator (xorshift64*), so the test needs no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// The tree of a key set is unique: any sequence of inserts and removes ends in the same root as
/// building the final set from scratch, and partial trees made of only the touched blocks can
/// undo the last change.
#[test]
fn incremental_changes_match_a_fresh_build() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let none: HashMap<Cid, Vec<u8>> = HashMap::new();
    for round in 0..40 {
        let mut mst = Mst::new();
        let mut keys: BTreeMap<Vec<u8>, Cid> = BTreeMap::new();
        for step in 0..(20 + round * 5) {
            let key = format!("app.bsky.feed.post/{:013}", rng.next() % 500).into_bytes();
            if keys.contains_key(&key) && rng.next().is_multiple_of(3) {
                mst.remove(&key, &none).unwrap();
                keys.remove(&key);
            } else {
                let v = leaf(step as u64);
                mst.insert(&key, v, &none).unwrap();
                keys.insert(key, v);
            }
            assert_eq!(mst.root_cid(None).unwrap(), build(&keys).root_cid(None).unwrap(), "round {round} step {step}");
        }
        // Undo one insert on a tree loaded from blocks.
        let (root, blocks) = blocks_of(&mst);
        let new_key = b"app.bsky.feed.like/zzzzzzzzzzzzz".to_vec();
        let mut loaded = Mst::load(root, &blocks).unwrap();
        loaded.insert(&new_key, leaf(9999), &blocks).unwrap();
        let (after, after_blocks) = blocks_of(&loaded);
        let mut reloaded = Mst::load(after, &after_blocks).unwrap();
        reloaded.remove(&new_key, &after_blocks).unwrap();
        assert_eq!(reloaded.root_cid(None).unwrap(), root, "round {round}");
        // Removing everything gives the empty tree.
        for k in keys.keys() {
            mst.remove(k, &none).unwrap();
        }
        assert_eq!(mst.root_cid(None).unwrap(), Mst::new().root_cid(None).unwrap());
        assert_eq!(mst.remove(b"missing", &none), Err(MstError::KeyNotFound));
    }
}
