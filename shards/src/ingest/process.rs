//! Per-frame ingest pipeline: decode, structural checks, identity, host authority, signature.
//! Returns a [`Verdict`]; nothing here writes to the store except the identity cache.

use std::sync::Arc;

use wire::frame::{Event, Frame, decode_frame};
use wire::validate::{check_commit, check_sync};
use wire::{Did, DropReason, HostSeq, Hostname, Limits};

use crate::identity::{Resolver, Source};
use crate::messages::{AcceptedEvent, CommitRef};

/// What to do with one frame from a host.
// Accepting is the common case; boxing it would add an allocation per event.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Verdict {
    /// Relay it.
    Accept(AcceptedEvent),
    /// Do not relay it; count the reason. Carries the frame's `seq` when it was readable.
    Drop(DropReason, Option<HostSeq>),
    /// Nothing to relay and nothing wrong: `#info` and error frames (logged by the caller).
    Info(Frame),
}

/// Decides what to do with a frame `bytes` from `host`. `last_seq` is the previous `seq` on this
/// connection (per-socket monotonicity); `now_ms` is wall-clock milliseconds for cache TTLs.
pub async fn process_frame(
    bytes: &[u8],
    host: &Hostname,
    host_label: &Arc<str>,
    last_seq: Option<HostSeq>,
    limits: &Limits,
    resolver: &Resolver,
    now_ms: u64,
) -> Verdict {
    if bytes.len() > limits.max_frame_bytes {
        return Verdict::Drop(DropReason::FrameTooBig, None);
    }
    let event = match decode_frame(bytes) {
        Ok(Frame::Message(Event::Info(i))) => return Verdict::Info(Frame::Message(Event::Info(i))),
        Ok(Frame::Message(e)) => e,
        Ok(f @ Frame::Error(_)) => return Verdict::Info(f),
        Err(wire::frame::FrameError::UnknownType(_)) => {
            return Verdict::Drop(DropReason::UnknownType, None);
        }
        Err(_) => return Verdict::Drop(DropReason::MalformedFrame, None),
    };
    let Some(seq) = event.seq().and_then(|s| u64::try_from(s).ok()).map(HostSeq) else {
        return Verdict::Drop(DropReason::MalformedFrame, None);
    };
    if last_seq.is_some_and(|last| seq <= last) {
        return Verdict::Drop(DropReason::SeqNotIncreasing, Some(seq));
    }
    let drop = |r| Verdict::Drop(r, Some(seq));
    let signed = match &event {
        Event::Commit(c) => check_commit(c, limits),
        Event::Sync(s) => check_sync(s, limits),
        Event::Identity(i) => {
            // The document or handle may have changed: resolve afresh on next use.
            resolver.purge(&i.did);
            return accept(host_label, seq, event, None);
        }
        Event::Account(_) => return accept(host_label, seq, event, None),
        Event::Info(_) => return drop(DropReason::UnknownType),
    };
    let (commit_cid, signed) = match signed {
        Ok(s) => s,
        Err(r) => return drop(r),
    };
    let did: &Did = &signed.commit.did;
    let (mut identity, mut source) = match resolver.lookup(did, now_ms).await {
        Ok(found) => found,
        Err(e) => {
            tracing::debug!(%did, host = %host, error = %e, "identity resolution failed");
            return drop(DropReason::IdentityUnresolved);
        }
    };
    // Host authority, then the signature. A cached identity that fails either is fetched again once
    // (the account may have migrated or rotated its key) before the event is dropped.
    loop {
        let authority = identity
            .pds_endpoint
            .as_deref()
            .and_then(wire::did_doc::endpoint_host);
        let verdict = if authority.as_ref() != Some(host) {
            Some(DropReason::WrongHost)
        } else if signed.verify(&identity.signing_key).is_err() {
            Some(DropReason::BadSignature)
        } else {
            None
        };
        match (verdict, source) {
            (None, _) => break,
            (Some(reason), Source::Fetched) => return drop(reason),
            (Some(_), Source::Cached) => match resolver.refresh(did, now_ms).await {
                Ok(fresh) => {
                    identity = fresh;
                    source = Source::Fetched;
                }
                Err(_) => return drop(DropReason::IdentityUnresolved),
            },
        }
    }
    let commit = CommitRef {
        commit: commit_cid,
        data: signed.commit.data,
    };
    accept(host_label, seq, event, Some(commit))
}

fn accept(host: &Arc<str>, seq: HostSeq, event: Event, commit: Option<CommitRef>) -> Verdict {
    Verdict::Accept(AcceptedEvent {
        host: Arc::clone(host),
        host_seq: seq,
        event,
        commit,
    })
}
