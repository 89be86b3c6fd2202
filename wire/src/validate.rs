//! Structural validation of `#commit` and `#sync` events, and [`DropReason`], the verdict for an
//! event the relay refuses.
//!
//! Rules from <https://atproto.com/specs/sync> and the `com.atproto.sync.subscribeRepos` lexicon:
//! `blocks` is a CAR whose single root is the `commit` CID and whose blocks hash to their CIDs; the
//! commit object is version 3 and agrees with the event's `repo`/`did` and `rev`; at most 200 ops,
//! `blocks` at most 2,000,000 bytes. The signature needs the account's key and is checked by the
//! caller with [`SignedCommit::verify`].

use crate::car::{self, CarError};
use crate::commit::{COMMIT_VERSION, SignedCommit};
use crate::frame::{CommitEvent, SyncEvent};
use crate::syntax::{Did, Tid};
use cid::Cid;

/// Size limits on events, in bytes and counts. The defaults are the lexicon's and the spec's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest websocket message accepted from a host, in bytes. Default 5,000,000 (5 MB; event-stream
    /// spec). Larger frames are dropped as [`DropReason::FrameTooBig`].
    pub max_frame_bytes: usize,
    /// Largest `blocks` field, in bytes. Default 2,000,000 (lexicon `maxLength`).
    pub max_blocks_bytes: usize,
    /// Most `ops` in one `#commit`. Default 200 (lexicon `maxLength`).
    pub max_ops: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_bytes: 5_000_000,
            max_blocks_bytes: 2_000_000,
            max_ops: 200,
        }
    }
}

/// Why an event from a host was not relayed. Each is a counter label
/// (`relay_events_dropped_total{reason}`), never an error: the relay goes on with the next event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// The websocket message is larger than [`Limits::max_frame_bytes`].
    FrameTooBig,
    /// The frame does not decode as a lexicon-shaped event.
    MalformedFrame,
    /// A message type the relay does not know.
    UnknownType,
    /// The frame's `seq` is not above the previous one on the same connection.
    SeqNotIncreasing,
    /// `blocks` is larger than [`Limits::max_blocks_bytes`].
    BlocksTooBig,
    /// More `ops` than [`Limits::max_ops`].
    TooManyOps,
    /// An op with an unknown action, or a create/update without a `cid`.
    BadOp,
    /// `blocks` is not a valid CAR, or a block does not hash to its CID.
    BadCar,
    /// The CAR root is not the event's `commit` CID, or the commit block is missing.
    CommitNotInCar,
    /// The commit block does not decode as a version-3 commit.
    BadCommit,
    /// The commit's `did` is not the event's `repo`/`did`.
    RepoMismatch,
    /// The commit's `rev` is not the event's `rev`.
    RevMismatch,
    /// The DID could not be resolved to a document with an `#atproto` key.
    IdentityUnresolved,
    /// The signature does not verify with the account's current key (also after one refresh).
    BadSignature,
    /// The account's DID document names another PDS than the host that sent the event.
    WrongHost,
    /// The `rev` is not newer than the account's last relayed `rev` (`#sync`: older than it).
    StaleRev,
}

impl DropReason {
    /// Every reason, for pre-registering counters.
    pub const ALL: [DropReason; 16] = [
        DropReason::FrameTooBig,
        DropReason::MalformedFrame,
        DropReason::UnknownType,
        DropReason::SeqNotIncreasing,
        DropReason::BlocksTooBig,
        DropReason::TooManyOps,
        DropReason::BadOp,
        DropReason::BadCar,
        DropReason::CommitNotInCar,
        DropReason::BadCommit,
        DropReason::RepoMismatch,
        DropReason::RevMismatch,
        DropReason::IdentityUnresolved,
        DropReason::BadSignature,
        DropReason::WrongHost,
        DropReason::StaleRev,
    ];

    /// The counter label, snake_case.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::FrameTooBig => "frame_too_big",
            DropReason::MalformedFrame => "malformed_frame",
            DropReason::UnknownType => "unknown_type",
            DropReason::SeqNotIncreasing => "seq_not_increasing",
            DropReason::BlocksTooBig => "blocks_too_big",
            DropReason::TooManyOps => "too_many_ops",
            DropReason::BadOp => "bad_op",
            DropReason::BadCar => "bad_car",
            DropReason::CommitNotInCar => "commit_not_in_car",
            DropReason::BadCommit => "bad_commit",
            DropReason::RepoMismatch => "repo_mismatch",
            DropReason::RevMismatch => "rev_mismatch",
            DropReason::IdentityUnresolved => "identity_unresolved",
            DropReason::BadSignature => "bad_signature",
            DropReason::WrongHost => "wrong_host",
            DropReason::StaleRev => "stale_rev",
        }
    }
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<CarError> for DropReason {
    fn from(_: CarError) -> Self {
        DropReason::BadCar
    }
}

/// Checks the CAR and commit object of a `#commit` against the event; returns the commit's CID and
/// the decoded commit for the signature check.
///
/// # Errors
/// The first failing rule as a [`DropReason`].
pub fn check_commit(ev: &CommitEvent, limits: &Limits) -> Result<(Cid, SignedCommit), DropReason> {
    if ev.ops.len() > limits.max_ops {
        return Err(DropReason::TooManyOps);
    }
    for op in &ev.ops {
        let ok = match op.action.as_str() {
            "create" | "update" => op.cid.is_some(),
            "delete" => op.cid.is_none(),
            _ => false,
        };
        if !ok || op.path.split_once('/').is_none() {
            return Err(DropReason::BadOp);
        }
    }
    check_signed_car(&ev.blocks, &ev.commit, &ev.repo, &ev.rev, limits)
}

/// Checks the CAR and commit object of a `#sync`; the CAR root is the commit. Returns the commit's
/// CID and the decoded commit.
///
/// # Errors
/// The first failing rule as a [`DropReason`].
pub fn check_sync(ev: &SyncEvent, limits: &Limits) -> Result<(Cid, SignedCommit), DropReason> {
    if ev.blocks.len() > limits.max_blocks_bytes {
        return Err(DropReason::BlocksTooBig);
    }
    let car = car::read_car(&ev.blocks)?;
    let root = match car.roots.as_slice() {
        [root] => *root,
        _ => return Err(DropReason::CommitNotInCar),
    };
    check_commit_block(&car, &root, &ev.did, &ev.rev)
}

fn check_signed_car(
    blocks: &[u8],
    commit_cid: &cid::Cid,
    did: &Did,
    rev: &Tid,
    limits: &Limits,
) -> Result<(Cid, SignedCommit), DropReason> {
    if blocks.len() > limits.max_blocks_bytes {
        return Err(DropReason::BlocksTooBig);
    }
    let car = car::read_car(blocks)?;
    if car.roots.as_slice() != [*commit_cid] {
        return Err(DropReason::CommitNotInCar);
    }
    check_commit_block(&car, commit_cid, did, rev)
}

fn check_commit_block(
    car: &car::Car<'_>,
    root: &cid::Cid,
    did: &Did,
    rev: &Tid,
) -> Result<(Cid, SignedCommit), DropReason> {
    if root.codec() != car::CODEC_DAG_CBOR {
        return Err(DropReason::BadCommit);
    }
    let block = car.get(root).ok_or(DropReason::CommitNotInCar)?;
    let signed = SignedCommit::decode(block).map_err(|_| DropReason::BadCommit)?;
    if signed.commit.version != COMMIT_VERSION {
        return Err(DropReason::BadCommit);
    }
    if &signed.commit.did != did {
        return Err(DropReason::RepoMismatch);
    }
    if &signed.commit.rev != rev {
        return Err(DropReason::RevMismatch);
    }
    Ok((*root, signed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_unique() {
        let mut labels: Vec<_> = DropReason::ALL.iter().map(|r| r.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), DropReason::ALL.len());
    }
}
