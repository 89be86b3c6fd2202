//! Merkle Search Tree (MST) of atproto repositories, per
//! <https://atproto.com/specs/repository#mst-structure>, over partial trees.
//!
//! A tree is loaded lazily from a block source (the CAR of a commit): nodes are decoded only when an
//! operation reaches them, and a subtree whose block is absent stays a [`Tree::Stub`] with its CID.
//! An operation that must look inside an absent block fails with [`MstError::MissingBlock`]; this is
//! how Sync 1.1 proofs are checked — the blocks a commit carries must suffice to invert its ops.
//!
//! Structure: a key's height is the number of leading zero bits of its sha2-256, divided by two
//! (fanout 4). A node at layer `L` holds the keys of height `L` in order; the gaps between them point
//! to nodes at layer `L-1` (possibly nodes with no keys, to keep every layer), and the root is the
//! node of the highest layer with at least one key. The tree for a set of keys is unique, so inverting
//! a commit's ops must give back exactly the previous root (`prevData`).

use cid::Cid;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::car::{self, CODEC_DAG_CBOR};
use crate::cbor;

/// Longest key accepted, in bytes (repo paths are at most a few hundred bytes).
pub const MAX_KEY_BYTES: usize = 1024;

/// An MST error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MstError {
    /// The operation needs a node whose block is not available.
    #[error("MST block {0} is missing")]
    MissingBlock(Cid),
    /// A node does not decode, or violates the MST rules (key order, heights, prefix lengths).
    #[error("invalid MST node {cid}: {reason}")]
    InvalidNode {
        /// The node's CID.
        cid: Cid,
        /// What is wrong.
        reason: &'static str,
    },
    /// A key to delete or update is not in the tree.
    #[error("key not found")]
    KeyNotFound,
    /// A key longer than [`MAX_KEY_BYTES`] or empty.
    #[error("invalid key")]
    InvalidKey,
}

/// Where blocks come from.
pub trait Blocks {
    /// The bytes of the block `cid`, if available.
    fn block(&self, cid: &Cid) -> Option<&[u8]>;
}

impl Blocks for car::Car<'_> {
    fn block(&self, cid: &Cid) -> Option<&[u8]> {
        self.get(cid)
    }
}

impl Blocks for std::collections::HashMap<Cid, Vec<u8>> {
    fn block(&self, cid: &Cid) -> Option<&[u8]> {
        self.get(cid).map(Vec::as_slice)
    }
}

/// The height of `key` in the tree: leading zero bits of sha2-256(key), divided by 2.
pub fn key_height(key: &[u8]) -> u32 {
    let mut zeros = 0;
    for byte in Sha256::digest(key) {
        if byte == 0 {
            zeros += 8;
        } else {
            zeros += byte.leading_zeros();
            break;
        }
    }
    zeros / 2
}

/// The wire form of a node (decoded with serde; written by [`encode_node`], which the tests check
/// against serde's encoding).
#[derive(Debug, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
struct NodeData {
    /// Left-most subtree.
    l: Option<Cid>,
    /// Entries in key order.
    e: Vec<EntryData>,
}

#[derive(Debug, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
struct EntryData {
    /// Bytes shared with the previous key of the node.
    p: u64,
    /// The rest of the key.
    #[serde(with = "serde_bytes")]
    k: Vec<u8>,
    /// The record CID.
    v: Cid,
    /// Subtree to the right of this entry.
    t: Option<Cid>,
}

/// A subtree: loaded, or known only by its CID.
#[derive(Debug, Clone)]
pub enum Tree {
    /// Not loaded (yet, or at all when its block is absent).
    Stub(Cid),
    /// Loaded.
    Node(Box<Node>),
}

/// A loaded node.
#[derive(Debug, Clone)]
pub struct Node {
    layer: u32,
    left: Option<Tree>,
    entries: Vec<Entry>,
}

#[derive(Debug, Clone)]
struct Entry {
    key: Vec<u8>,
    value: Cid,
    right: Option<Tree>,
}

impl Node {
    fn empty(layer: u32) -> Self {
        Self { layer, left: None, entries: Vec::new() }
    }

    /// The subtree before entry `i` (`left` for 0), taken out.
    fn take_gap(&mut self, i: usize) -> Option<Tree> {
        match i.checked_sub(1).and_then(|j| self.entries.get_mut(j)) {
            Some(prev) => prev.right.take(),
            None => self.left.take(),
        }
    }

    fn put_gap(&mut self, i: usize, t: Option<Tree>) {
        match i.checked_sub(1).and_then(|j| self.entries.get_mut(j)) {
            Some(prev) => prev.right = t,
            None => self.left = t,
        }
    }

    fn gap_mut(&mut self, i: usize) -> &mut Option<Tree> {
        let Node { left, entries, .. } = self;
        match i.checked_sub(1).and_then(|j| entries.get_mut(j)) {
            Some(prev) => &mut prev.right,
            None => left,
        }
    }

    fn position(&self, key: &[u8]) -> usize {
        self.entries.partition_point(|e| e.key.as_slice() < key)
    }
}

/// `None` for a node with no keys and no subtree.
fn normalize(node: Box<Node>) -> Option<Tree> {
    (node.left.is_some() || !node.entries.is_empty()).then_some(Tree::Node(node))
}

fn decode_node(cid: &Cid, bytes: &[u8], layer: Option<u32>) -> Result<Box<Node>, MstError> {
    let invalid = |reason| MstError::InvalidNode { cid: *cid, reason };
    let data: NodeData = cbor::from_slice(bytes).map_err(|_| invalid("does not decode"))?;
    let mut entries: Vec<Entry> = Vec::with_capacity(data.e.len());
    let mut layer = layer;
    for e in data.e {
        let prev = entries.last().map_or(&[][..], |p| p.key.as_slice());
        let p = usize::try_from(e.p).map_err(|_| invalid("prefix length"))?;
        let mut key = prev.get(..p).ok_or_else(|| invalid("prefix longer than the previous key"))?.to_vec();
        key.extend_from_slice(&e.k);
        if key.is_empty() || key.len() > MAX_KEY_BYTES || key.as_slice() <= prev && !entries.is_empty() {
            return Err(invalid("keys out of order"));
        }
        let h = key_height(&key);
        match layer {
            Some(l) if l != h => return Err(invalid("key height does not match the node's layer")),
            _ => layer = Some(h),
        }
        entries.push(Entry { key, value: e.v, right: e.t.map(Tree::Stub) });
    }
    let layer = layer.ok_or_else(|| invalid("a root node without keys"))?;
    if layer == 0 && (data.l.is_some() || entries.iter().any(|e| e.right.is_some())) {
        return Err(invalid("subtree below layer 0"));
    }
    Ok(Box::new(Node { layer, left: data.l.map(Tree::Stub), entries }))
}

fn expand(t: Tree, layer: u32, blocks: &dyn Blocks) -> Result<Box<Node>, MstError> {
    match t {
        Tree::Node(n) => Ok(n),
        Tree::Stub(cid) => {
            let bytes = blocks.block(&cid).ok_or(MstError::MissingBlock(cid))?;
            decode_node(&cid, bytes, Some(layer))
        }
    }
}

/// The node `t` stands for at `layer`, decoded in place if it was a stub.
fn load_in_place<'t>(t: &'t mut Tree, layer: u32, blocks: &dyn Blocks) -> Result<&'t mut Node, MstError> {
    if let Tree::Stub(cid) = t {
        let bytes = blocks.block(cid).ok_or(MstError::MissingBlock(*cid))?;
        *t = Tree::Node(decode_node(cid, bytes, Some(layer))?);
    }
    match t {
        Tree::Node(n) => Ok(n),
        // Replaced just above.
        Tree::Stub(cid) => Err(MstError::MissingBlock(*cid)),
    }
}

/// Wraps `t` (at `from`) in key-less nodes up to layer `to`.
fn lift(mut t: Option<Tree>, from: u32, to: u32) -> Option<Tree> {
    for layer in from + 1..=to {
        t = t.map(|inner| Tree::Node(Box::new(Node { layer, left: Some(inner), entries: Vec::new() })));
    }
    t
}

fn insert(t: Option<Tree>, layer: u32, key: &[u8], height: u32, value: Cid, b: &dyn Blocks) -> Result<Tree, MstError> {
    let mut node = match t {
        Some(t) => expand(t, layer, b)?,
        None => Box::new(Node::empty(layer)),
    };
    let i = node.position(key);
    if height == layer {
        if let Some(e) = node.entries.get_mut(i).filter(|e| e.key == key) {
            e.value = value;
            return Ok(Tree::Node(node));
        }
        let gap = node.take_gap(i);
        let (lt, gt) = match layer.checked_sub(1) {
            Some(below) => split(gap, below, key, b)?,
            None => (None, None),
        };
        node.put_gap(i, lt);
        node.entries.insert(i, Entry { key: key.to_vec(), value, right: gt });
    } else {
        let below = layer.checked_sub(1).ok_or(MstError::InvalidKey)?;
        let gap = node.take_gap(i);
        let new = insert(gap, below, key, height, value, b)?;
        node.put_gap(i, Some(new));
    }
    Ok(Tree::Node(node))
}

type Halves = (Option<Tree>, Option<Tree>);

fn split(t: Option<Tree>, layer: u32, key: &[u8], b: &dyn Blocks) -> Result<Halves, MstError> {
    let Some(t) = t else { return Ok((None, None)) };
    let mut node = expand(t, layer, b)?;
    let i = node.position(key);
    let gap = node.take_gap(i);
    let (gl, gr) = match layer.checked_sub(1) {
        Some(below) => split(gap, below, key, b)?,
        None => (None, None),
    };
    let right_entries = node.entries.split_off(i);
    let mut left = node;
    left.put_gap(i, gl);
    let right = Box::new(Node { layer, left: gr, entries: right_entries });
    Ok((normalize(left), normalize(right)))
}

fn merge(a: Option<Tree>, c: Option<Tree>, layer: u32, b: &dyn Blocks) -> Result<Option<Tree>, MstError> {
    let (a, c) = match (a, c) {
        (None, x) | (x, None) => return Ok(x),
        (Some(a), Some(c)) => (a, c),
    };
    let mut left = expand(a, layer, b)?;
    let mut right = expand(c, layer, b)?;
    let n = left.entries.len();
    let tail = left.take_gap(n);
    let mid = match layer.checked_sub(1) {
        Some(below) => merge(tail, right.left.take(), below, b)?,
        None => None,
    };
    left.put_gap(n, mid);
    left.entries.append(&mut right.entries);
    Ok(Some(Tree::Node(left)))
}

fn delete(t: Tree, layer: u32, key: &[u8], height: u32, b: &dyn Blocks) -> Result<Option<Tree>, MstError> {
    let mut node = expand(t, layer, b)?;
    let i = node.position(key);
    if height == layer {
        if node.entries.get(i).is_none_or(|e| e.key != key) {
            return Err(MstError::KeyNotFound);
        }
        let removed = node.entries.remove(i);
        let before = node.take_gap(i);
        let merged = match layer.checked_sub(1) {
            Some(below) => merge(before, removed.right, below, b)?,
            None => None,
        };
        node.put_gap(i, merged);
    } else {
        let below = layer.checked_sub(1).ok_or(MstError::KeyNotFound)?;
        let gap = node.take_gap(i).ok_or(MstError::KeyNotFound)?;
        let new = delete(gap, below, key, height, b)?;
        node.put_gap(i, new);
    }
    Ok(normalize(node))
}

/// A (possibly partial) MST.
#[derive(Debug, Clone)]
pub struct Mst {
    root: Option<Tree>,
    layer: u32,
}

impl Default for Mst {
    fn default() -> Self {
        Self::new()
    }
}

fn check_key(key: &[u8]) -> Result<(), MstError> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES { Err(MstError::InvalidKey) } else { Ok(()) }
}

impl Mst {
    /// An empty tree.
    pub fn new() -> Self {
        Self { root: None, layer: 0 }
    }

    /// The tree whose root node is `root`, read from `blocks` as operations need them.
    ///
    /// # Errors
    /// [`MstError::MissingBlock`] when the root block is absent, [`MstError::InvalidNode`] when it
    /// does not decode.
    pub fn load(root: Cid, blocks: &dyn Blocks) -> Result<Self, MstError> {
        let bytes = blocks.block(&root).ok_or(MstError::MissingBlock(root))?;
        if bytes == EMPTY_NODE {
            return Ok(Self::new());
        }
        let node = decode_node(&root, bytes, None)?;
        Ok(Self { layer: node.layer, root: Some(Tree::Node(node)) })
    }

    /// The value stored at `key`, `None` when absent. The nodes on the way are loaded into the tree
    /// (decoded once: a later [`Mst::insert`] or [`Mst::remove`] on the same path reuses them).
    ///
    /// # Errors
    /// [`MstError::MissingBlock`] when the path to where `key` would be is not available.
    pub fn get(&mut self, key: &[u8], blocks: &dyn Blocks) -> Result<Option<Cid>, MstError> {
        let mut layer = self.layer;
        let mut slot = &mut self.root;
        loop {
            let Some(tree) = slot else { return Ok(None) };
            let node = load_in_place(tree, layer, blocks)?;
            let i = node.position(key);
            if let Some(e) = node.entries.get(i).filter(|e| e.key == key) {
                return Ok(Some(e.value));
            }
            let Some(below) = layer.checked_sub(1) else {
                return Ok(None);
            };
            slot = node.gap_mut(i);
            layer = below;
        }
    }

    /// Sets `key` to `value`, inserting it or replacing its value.
    ///
    /// # Errors
    /// [`MstError::MissingBlock`] when a node on the way is absent; [`MstError::InvalidKey`].
    pub fn insert(&mut self, key: &[u8], value: Cid, blocks: &dyn Blocks) -> Result<(), MstError> {
        check_key(key)?;
        let height = key_height(key);
        match self.root.take() {
            None => {
                self.root = Some(insert(None, height, key, height, value, blocks)?);
                self.layer = height;
            }
            Some(root) if height > self.layer => {
                let (lt, gt) = split(Some(root), self.layer, key, blocks)?;
                let node = Node {
                    layer: height,
                    left: lift(lt, self.layer, height - 1),
                    entries: vec![Entry { key: key.to_vec(), value, right: lift(gt, self.layer, height - 1) }],
                };
                self.root = Some(Tree::Node(Box::new(node)));
                self.layer = height;
            }
            Some(root) => self.root = Some(insert(Some(root), self.layer, key, height, value, blocks)?),
        }
        Ok(())
    }

    /// Removes `key`.
    ///
    /// # Errors
    /// [`MstError::KeyNotFound`] when it is absent, [`MstError::MissingBlock`] when a node on the way
    /// (or a node the removal merges) is absent.
    pub fn remove(&mut self, key: &[u8], blocks: &dyn Blocks) -> Result<(), MstError> {
        check_key(key)?;
        let height = key_height(key);
        let root = self.root.take().ok_or(MstError::KeyNotFound)?;
        if height > self.layer {
            self.root = Some(root);
            return Err(MstError::KeyNotFound);
        }
        let mut root = delete(root, self.layer, key, height, blocks)?;
        // Trim key-less nodes off the top.
        while let Some(t) = root.take() {
            let node = expand(t, self.layer, blocks)?;
            match (node.entries.is_empty(), node.left) {
                (true, Some(child)) if self.layer > 0 => {
                    root = Some(child);
                    self.layer -= 1;
                }
                (true, _) => {
                    self.layer = 0;
                    break;
                }
                (false, left) => {
                    root = Some(Tree::Node(Box::new(Node { layer: node.layer, left, entries: node.entries })));
                    break;
                }
            }
        }
        self.root = root;
        Ok(())
    }

    /// The root CID; `out`, when given, receives every node block that was loaded or changed.
    pub fn root_cid(&self, mut out: Option<&mut Vec<(Cid, Vec<u8>)>>) -> Cid {
        match &self.root {
            None => {
                let cid = car::cid_for(CODEC_DAG_CBOR, EMPTY_NODE);
                if let Some(out) = out.as_deref_mut() {
                    out.push((cid, EMPTY_NODE.to_vec()));
                }
                cid
            }
            Some(t) => encode(t, &mut out),
        }
    }
}

/// The block of the empty tree's root: `{"e": [], "l": null}`.
const EMPTY_NODE: &[u8] = &[0xa2, 0x61, b'e', 0x80, 0x61, b'l', 0xf6];

fn encode(t: &Tree, out: &mut Option<&mut Vec<(Cid, Vec<u8>)>>) -> Cid {
    let node = match t {
        Tree::Stub(cid) => return *cid,
        Tree::Node(n) => n,
    };
    let left = node.left.as_ref().map(|l| encode(l, out));
    let rights: Vec<Option<Cid>> = node.entries.iter().map(|e| e.right.as_ref().map(|r| encode(r, out))).collect();
    let bytes = encode_node(node, left.as_ref(), &rights);
    let cid = car::cid_for(CODEC_DAG_CBOR, &bytes);
    if let Some(out) = out.as_deref_mut() {
        out.push((cid, bytes));
    }
    cid
}

/// A node's block in canonical DAG-CBOR, written directly: `{"e": [{"k", "p", "t", "v"}…], "l"}`
/// (map keys in DAG-CBOR order: shorter first, then bytewise), CIDs as tag 42 over a 0x00-prefixed
/// byte string, absent subtrees as `null`. The same bytes serde's DAG-CBOR encoder gives for
/// [`NodeData`] (checked in the tests), without its per-map buffering and key sorting.
fn encode_node(node: &Node, left: Option<&Cid>, rights: &[Option<Cid>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + node.entries.iter().map(|e| e.key.len() + 90).sum::<usize>());
    out.extend_from_slice(&[0xa2, 0x61, b'e']);
    cbor_head(&mut out, 4, node.entries.len() as u64);
    let mut prev: &[u8] = &[];
    for (e, right) in node.entries.iter().zip(rights) {
        let p = common_prefix_len(prev, &e.key);
        let suffix = e.key.get(p..).unwrap_or_default();
        out.extend_from_slice(&[0xa4, 0x61, b'k']);
        cbor_head(&mut out, 2, suffix.len() as u64);
        out.extend_from_slice(suffix);
        out.extend_from_slice(&[0x61, b'p']);
        cbor_head(&mut out, 0, p as u64);
        out.extend_from_slice(&[0x61, b't']);
        cbor_cid(&mut out, right.as_ref());
        out.extend_from_slice(&[0x61, b'v']);
        cbor_cid(&mut out, Some(&e.value));
        prev = &e.key;
    }
    out.extend_from_slice(&[0x61, b'l']);
    cbor_cid(&mut out, left);
    out
}

/// A CBOR head: major type `major`, argument `n`, in the shortest form (as DAG-CBOR requires).
fn cbor_head(out: &mut Vec<u8>, major: u8, n: u64) {
    let m = major << 5;
    match n {
        0..=23 => out.push(m | n as u8),
        24..=0xff => out.extend_from_slice(&[m | 24, n as u8]),
        0x100..=0xffff => {
            out.push(m | 25);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(m | 26);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
        _ => {
            out.push(m | 27);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }
}

/// A DAG-CBOR link (tag 42, byte string of 0x00 then the binary CID) or `null`.
fn cbor_cid(out: &mut Vec<u8>, cid: Option<&Cid>) {
    let Some(cid) = cid else {
        out.push(0xf6);
        return;
    };
    out.extend_from_slice(&[0xd8, 42]);
    cbor_head(out, 2, cid.encoded_len() as u64 + 1);
    out.push(0);
    // Writing into a Vec cannot fail.
    let _ = cid.write_bytes(&mut *out);
}

/// The CIDs of every node reachable from `root` whose block is available (absent subtrees are
/// skipped, not errors). Used to drop blocks of old tree versions.
pub fn reachable_nodes(root: Cid, blocks: &dyn Blocks) -> Vec<Cid> {
    let mut out = Vec::new();
    let mut stack = vec![root];
    let mut seen = std::collections::HashSet::new();
    while let Some(cid) = stack.pop() {
        if !seen.insert(cid) {
            continue;
        }
        let Some(bytes) = blocks.block(&cid) else { continue };
        out.push(cid);
        if let Ok(node) = cbor::from_slice::<NodeData>(bytes) {
            stack.extend(node.l);
            stack.extend(node.e.iter().filter_map(|e| e.t));
        }
    }
    out
}

/// The length of the common prefix of two keys, in bytes.
pub fn common_prefix_len(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests;
