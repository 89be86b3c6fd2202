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
    let root = mst.root_cid(Some(&mut out));
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
        assert_eq!(mst.root_cid(None).to_string(), f.root_before_commit, "{}: before", f.comment);
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
        assert_eq!(partial.root_cid(None).to_string(), f.root_before_commit, "{}: inverted", f.comment);

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
            assert_eq!(mst.root_cid(None), build(&keys).root_cid(None), "round {round} step {step}");
        }
        // Undo one insert on a tree loaded from blocks.
        let (root, blocks) = blocks_of(&mst);
        let new_key = b"app.bsky.feed.like/zzzzzzzzzzzzz".to_vec();
        let mut loaded = Mst::load(root, &blocks).unwrap();
        loaded.insert(&new_key, leaf(9999), &blocks).unwrap();
        let (after, after_blocks) = blocks_of(&loaded);
        let mut reloaded = Mst::load(after, &after_blocks).unwrap();
        reloaded.remove(&new_key, &after_blocks).unwrap();
        assert_eq!(reloaded.root_cid(None), root, "round {round}");
        // Removing everything gives the empty tree.
        for k in keys.keys() {
            mst.remove(k, &none).unwrap();
        }
        assert_eq!(mst.root_cid(None), Mst::new().root_cid(None));
        assert_eq!(mst.remove(b"missing", &none), Err(MstError::KeyNotFound));
    }
}

/// The direct node encoder writes exactly what serde's DAG-CBOR encoder writes for the same node
/// (map keys in canonical order, shortest heads, links as tag 42, `null` for absent subtrees),
/// including keys long enough for one- and two-byte length heads and shared prefixes above 23.
#[test]
fn direct_node_encoding_matches_serde_dag_cbor() {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let none: HashMap<Cid, Vec<u8>> = HashMap::new();
    let mut nodes = 0;
    for round in 0..20 {
        let mut mst = Mst::new();
        for i in 0..(30 + round * 20) {
            let tail = "x".repeat((rng.next() % 300) as usize);
            let key = format!("app.bsky.feed.post/{:05}{tail}", rng.next() % 100_000).into_bytes();
            mst.insert(&key, leaf(i), &none).unwrap();
        }
        let mut out = Vec::new();
        let root = mst.root_cid(Some(&mut out));
        assert_eq!(out.last().map(|(cid, _)| *cid), Some(root));
        for (cid, bytes) in out {
            let via_serde = cbor::to_vec(&cbor::from_slice::<NodeData>(&bytes).unwrap()).unwrap();
            assert_eq!(bytes, via_serde, "node {cid}");
            assert_eq!(car::cid_for(CODEC_DAG_CBOR, &bytes), cid);
            nodes += 1;
        }
    }
    assert!(nodes > 100, "{nodes} nodes compared");
    let empty = cbor::to_vec(&NodeData { l: None, e: Vec::new() }).unwrap();
    assert_eq!(EMPTY_NODE, empty.as_slice());
}

/// `get` loads the nodes on its path into the tree; removing and re-inserting on that path then
/// gives the same roots as on a fresh load.
#[test]
fn get_loads_in_place_without_changing_roots() {
    let mut keys = BTreeMap::new();
    for i in 0..500u64 {
        keys.insert(format!("app.bsky.feed.like/{i:013}").into_bytes(), leaf(i));
    }
    let (root, blocks) = blocks_of(&build(&keys));
    for (k, v) in keys.iter().step_by(37) {
        let mut mst = Mst::load(root, &blocks).unwrap();
        assert_eq!(mst.get(k, &blocks).unwrap(), Some(*v));
        assert_eq!(mst.root_cid(None), root, "loading a path changes nothing");
        mst.remove(k, &blocks).unwrap();
        let mut fresh = Mst::load(root, &blocks).unwrap();
        fresh.remove(k, &blocks).unwrap();
        assert_eq!(mst.root_cid(None), fresh.root_cid(None));
        mst.insert(k, *v, &blocks).unwrap();
        assert_eq!(mst.root_cid(None), root);
    }
    let mut mst = Mst::load(root, &blocks).unwrap();
    assert_eq!(mst.get(b"app.bsky.feed.like/missing", &blocks).unwrap(), None);
}
