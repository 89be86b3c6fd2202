//! Structural validation of `#commit` and `#sync` events, and [`DropReason`], the verdict for an
//! event the relay refuses.
//!
//! Rules from <https://atproto.com/specs/sync> and the `com.atproto.sync.subscribeRepos` lexicon:
//! `blocks` is a CAR whose single root is the `commit` CID and whose blocks hash to their CIDs; the
//! commit object is version 3 and agrees with the event's `repo`/`did` and `rev`; at most 200 ops,
//! `blocks` at most 2,000,000 bytes (10,000 for `#sync`); `rev` at most 5 minutes ahead; `time` a
//! datetime. Sync 1.1: each op's `cid` is what the signed tree holds at its path, and inverting the ops
//! gives `prevData`. The signature needs the account's key and is checked by the caller with
//! [`SignedCommit::verify`]; the per-account checks (`since`, `prevData` against the stored state)
//! need the relay's state and are the sequencer's.

use crate::car::{self, CarError};
use crate::commit::{COMMIT_VERSION, SignedCommit};
use crate::frame::{CommitEvent, SyncEvent};
use crate::mst::{Mst, MstError};
use crate::syntax::{Did, Tid};
use cid::Cid;

/// Limits on events, in bytes, counts and time. The defaults are the lexicon's and the spec's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest websocket message accepted from a host, in bytes. Default 5,000,000 (5 MB; event-stream
    /// spec). Larger frames are dropped as [`DropReason::FrameTooBig`].
    pub max_frame_bytes: usize,
    /// Largest `blocks` of a `#commit`, in bytes. Default 2,000,000 (lexicon `maxLength`).
    pub max_blocks_bytes: usize,
    /// Largest `blocks` of a `#sync`, in bytes. Default 10,000 (lexicon `maxLength`).
    pub max_sync_blocks_bytes: usize,
    /// Most `ops` in one `#commit`. Default 200 (lexicon `maxLength`).
    pub max_ops: usize,
    /// Largest record block, in bytes. Default 1,000,000 (<https://atproto.com/specs/sync>: "a hard
    /// limit of one million bytes").
    pub max_record_bytes: usize,
    /// How far a `rev` may be ahead of the relay's clock, in microseconds. Default 300,000,000
    /// (5 minutes, <https://atproto.com/specs/sync>).
    pub max_future_rev_us: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_bytes: 5_000_000,
            max_blocks_bytes: 2_000_000,
            max_sync_blocks_bytes: 10_000,
            max_ops: 200,
            max_record_bytes: 1_000_000,
            max_future_rev_us: 300_000_000,
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
    /// The `rev` is more than [`Limits::max_future_rev_us`] ahead of the relay's clock.
    FutureRev,
    /// The `time` field is not an atproto datetime.
    BadTime,
    /// `rebase` or `tooBig` is true: deprecated forms whose blocks cannot be verified.
    DeprecatedFlag,
    /// An op's `cid` is not what the signed tree holds at its path (or a deleted path is present).
    OpCidMismatch,
    /// The CAR lacks an MST block needed to check the ops or to invert them (Sync 1.1 proof).
    MissingMstBlock,
    /// An MST node does not decode or breaks the MST rules.
    BadMst,
    /// Inverting the ops on the signed tree does not give the event's `prevData`.
    InversionMismatch,
    /// A created or updated record's block is not in `blocks` (<https://atproto.com/specs/repository>,
    /// "Repository Diffs": "all 'created' records must be included"; updated ones "should include the
    /// new value").
    MissingRecordBlock,
    /// A record block is not a DAG-CBOR map, or is larger than [`Limits::max_record_bytes`]
    /// (<https://atproto.com/specs/sync>: "individual record blocks within the `blocks` field have a
    /// hard limit of one million bytes"; "Events containing corrupt or entirely invalid records may be
    /// rejected").
    BadRecord,
    /// An op's `path` is not `<collection NSID>/<record key>` (<https://atproto.com/specs/repository>,
    /// "Repository Paths").
    BadPath,
    /// A `did:web` the relay does not resolve: a hostname that is not a valid handle with an allowed
    /// TLD, or a port other than on `localhost` in development (<https://atproto.com/specs/did>).
    DidWebNotAllowed,
    /// The account is not active (deactivated, suspended, deleted, … upstream).
    InactiveAccount,
    /// The account is taken down on this relay.
    TakenDown,
    /// The account is throttled: it appeared when its host had reached its account limit.
    AccountThrottled,
}

impl DropReason {
    /// Every reason, for pre-registering counters.
    pub const ALL: [DropReason; 30] = [
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
        DropReason::FutureRev,
        DropReason::BadTime,
        DropReason::DeprecatedFlag,
        DropReason::OpCidMismatch,
        DropReason::MissingMstBlock,
        DropReason::BadMst,
        DropReason::InversionMismatch,
        DropReason::MissingRecordBlock,
        DropReason::BadRecord,
        DropReason::BadPath,
        DropReason::DidWebNotAllowed,
        DropReason::InactiveAccount,
        DropReason::TakenDown,
        DropReason::AccountThrottled,
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
            DropReason::FutureRev => "future_rev",
            DropReason::BadTime => "bad_time",
            DropReason::DeprecatedFlag => "deprecated_flag",
            DropReason::OpCidMismatch => "op_cid_mismatch",
            DropReason::MissingMstBlock => "missing_mst_block",
            DropReason::BadMst => "bad_mst",
            DropReason::InversionMismatch => "inversion_mismatch",
            DropReason::MissingRecordBlock => "missing_record_block",
            DropReason::BadRecord => "bad_record",
            DropReason::BadPath => "bad_path",
            DropReason::DidWebNotAllowed => "did_web_not_allowed",
            DropReason::InactiveAccount => "inactive_account",
            DropReason::TakenDown => "taken_down",
            DropReason::AccountThrottled => "account_throttled",
        }
    }

    /// Whether this is a failure of the Sync 1.1 proof (the ops against the signed MST, their
    /// inversion to `prevData`): what `--lenient-sync` relays and counts instead of dropping, as
    /// indigo's `--lenient-sync-validation` does ("when messages fail atproto 'Sync 1.1' validation,
    /// just log, don't drop").
    pub fn is_sync_violation(self) -> bool {
        matches!(
            self,
            DropReason::OpCidMismatch
                | DropReason::MissingMstBlock
                | DropReason::BadMst
                | DropReason::InversionMismatch
        )
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

/// A `#commit` or `#sync` whose structure checked out.
#[derive(Debug, Clone)]
pub struct CheckedCommit {
    /// CID of the commit object.
    pub cid: Cid,
    /// The commit, ready for the signature check.
    pub signed: SignedCommit,
    /// The Sync 1.1 proof: `Ok` when every op matches the signed tree and inverting the ops gives
    /// `prevData` (or the event has no `prevData`). The caller decides whether a failure drops the
    /// event (the default) or is only counted (`--lenient-sync`).
    pub proof: Result<(), DropReason>,
}

/// Checks a `#commit`: deprecated flags, `time`, `rev` not in the future (`now_us`: the relay's clock
/// in microseconds since the UNIX epoch), op shapes, limits, the CAR and the commit object; then the
/// Sync 1.1 proof (see [`CheckedCommit::proof`]).
///
/// # Errors
/// The first failing structural rule as a [`DropReason`].
pub fn check_commit(ev: &CommitEvent, limits: &Limits, now_us: u64) -> Result<CheckedCommit, DropReason> {
    if ev.rebase == Some(true) || ev.too_big == Some(true) {
        return Err(DropReason::DeprecatedFlag);
    }
    check_time(&ev.time)?;
    check_rev_time(&ev.rev, limits, now_us)?;
    if ev.ops.len() > limits.max_ops {
        return Err(DropReason::TooManyOps);
    }
    let sync11 = ev.prev_data.is_some();
    for op in &ev.ops {
        let ok = match op.action.as_str() {
            "create" => op.cid.is_some() && op.prev.is_none(),
            "update" => op.cid.is_some() && (op.prev.is_some() || !sync11),
            "delete" => op.cid.is_none() && (op.prev.is_some() || !sync11),
            _ => false,
        };
        if !ok {
            return Err(DropReason::BadOp);
        }
        if crate::syntax::check_repo_path(&op.path).is_err() {
            return Err(DropReason::BadPath);
        }
    }
    if ev.blocks.len() > limits.max_blocks_bytes {
        return Err(DropReason::BlocksTooBig);
    }
    let car = car::read_car(&ev.blocks)?;
    if car.roots.as_slice() != [ev.commit] {
        return Err(DropReason::CommitNotInCar);
    }
    let signed = check_commit_block(&car, &ev.commit, &ev.repo, &ev.rev)?;
    check_records(ev, &car, limits)?;
    let proof = match ev.prev_data {
        Some(prev_data) => check_proof(ev, &car, signed.commit.data, prev_data),
        None => Ok(()),
    };
    Ok(CheckedCommit { cid: ev.commit, signed, proof })
}

/// Checks a `#sync`: `time`, `rev` not in the future, the `blocks` limit, and a CAR whose root is the
/// commit object.
///
/// # Errors
/// The first failing rule as a [`DropReason`].
pub fn check_sync(ev: &SyncEvent, limits: &Limits, now_us: u64) -> Result<CheckedCommit, DropReason> {
    check_time(&ev.time)?;
    check_rev_time(&ev.rev, limits, now_us)?;
    if ev.blocks.len() > limits.max_sync_blocks_bytes {
        return Err(DropReason::BlocksTooBig);
    }
    let car = car::read_car(&ev.blocks)?;
    let root = match car.roots.as_slice() {
        [root] => *root,
        _ => return Err(DropReason::CommitNotInCar),
    };
    let signed = check_commit_block(&car, &root, &ev.did, &ev.rev)?;
    Ok(CheckedCommit { cid: root, signed, proof: Ok(()) })
}

/// Every created or updated record's block is in the CAR, is a DAG-CBOR map with text keys, and is
/// at most [`Limits::max_record_bytes`]. <https://atproto.com/specs/repository>, "Repository Diffs":
/// "all 'created' records must be included", updated ones "should include the new value";
/// <https://atproto.com/specs/sync>: record blocks have "a hard limit of one million bytes", and
/// "Events containing corrupt or entirely invalid records may be rejected". Proposal 0006 lists
/// "missing blocks" among invalid commits, which relays drop. `@atproto/sync` fails the whole commit
/// on a record that is not a map, so relaying one would lose the commit downstream.
fn check_records(ev: &CommitEvent, car: &car::Car<'_>, limits: &Limits) -> Result<(), DropReason> {
    for (i, op) in ev.ops.iter().enumerate() {
        let Some(cid) = op.cid else { continue };
        // A path written again later in the same commit holds what the last op wrote: only that
        // record need be in the diff (as in the Sync 1.1 proof below).
        if ev.ops.get(i + 1..).is_some_and(|later| later.iter().any(|o| o.path == op.path)) {
            continue;
        }
        let block = car.get(&cid).ok_or(DropReason::MissingRecordBlock)?;
        if block.len() > limits.max_record_bytes || !crate::cbor::is_map(block) {
            return Err(DropReason::BadRecord);
        }
        crate::cbor::from_slice::<std::collections::BTreeMap<String, ipld_core::ipld::Ipld>>(block)
            .map_err(|_| DropReason::BadRecord)?;
    }
    Ok(())
}

/// Checks an event's `time` field.
///
/// # Errors
/// [`DropReason::BadTime`].
pub fn check_time(time: &str) -> Result<(), DropReason> {
    crate::syntax::check_datetime(time).map_err(|_| DropReason::BadTime)
}

fn check_rev_time(rev: &Tid, limits: &Limits, now_us: u64) -> Result<(), DropReason> {
    if rev.timestamp_us() > now_us.saturating_add(limits.max_future_rev_us) {
        return Err(DropReason::FutureRev);
    }
    Ok(())
}

fn mst_reason(e: MstError) -> DropReason {
    match e {
        MstError::MissingBlock(_) => DropReason::MissingMstBlock,
        MstError::InvalidNode { .. } => DropReason::BadMst,
        MstError::KeyNotFound | MstError::InvalidKey => DropReason::OpCidMismatch,
    }
}

/// Sync 1.1: every op agrees with the signed tree, and inverting the ops on it gives `prev_data`.
///
/// When a path appears in several ops, the tree holds what the last one wrote, so only that op is
/// compared with the tree; the inversion undoes the ops last to first.
fn check_proof(ev: &CommitEvent, car: &car::Car<'_>, data: Cid, prev_data: Cid) -> Result<(), DropReason> {
    let mut mst = Mst::load(data, car).map_err(mst_reason)?;
    for (i, op) in ev.ops.iter().enumerate() {
        if ev.ops.get(i + 1..).is_some_and(|later| later.iter().any(|o| o.path == op.path)) {
            continue;
        }
        let held = mst.get(op.path.as_bytes(), car).map_err(mst_reason)?;
        if held != op.cid {
            return Err(DropReason::OpCidMismatch);
        }
    }
    for op in ev.ops.iter().rev() {
        let key = op.path.as_bytes();
        let undone = match (op.action.as_str(), op.prev) {
            ("create", _) => mst.remove(key, car),
            ("update" | "delete", Some(prev)) => mst.insert(key, prev, car),
            _ => return Err(DropReason::BadOp),
        };
        undone.map_err(mst_reason)?;
    }
    if mst.root_cid(None) != prev_data {
        return Err(DropReason::InversionMismatch);
    }
    Ok(())
}

fn check_commit_block(car: &car::Car<'_>, root: &cid::Cid, did: &Did, rev: &Tid) -> Result<SignedCommit, DropReason> {
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
    Ok(signed)
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
