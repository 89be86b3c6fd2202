//! Event-stream frames of `com.atproto.sync.subscribeRepos`: a DAG-CBOR header `{op, t}` followed by a
//! DAG-CBOR body, per <https://atproto.com/specs/event-stream#streaming-wire-protocol-v0>.
//!
//! Message bodies follow the lexicon `com.atproto.sync.subscribeRepos` (`#commit`, `#sync`,
//! `#identity`, `#account`, `#info`). Decoding keeps every field the lexicon defines and ignores
//! unknown ones; encoding writes canonical DAG-CBOR, so `decode(encode(x)) == x`, and for canonical
//! input from a host `encode(decode(bytes)) == bytes`.

use bytes::Bytes;
use cid::Cid;
use serde::{Deserialize, Serialize};

use crate::cbor::{self, CborError};
use crate::syntax::{Did, Tid};

/// Header `op` of a message frame.
pub const OP_MESSAGE: i64 = 1;
/// Header `op` of an error frame.
pub const OP_ERROR: i64 = -1;

/// The frame header `{op, t}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// `1` for a message, `-1` for an error.
    pub op: i64,
    /// The message type (`#commit`, …); absent on error frames.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub t: Option<String>,
}

/// One repo operation of a `#commit` (lexicon `com.atproto.sync.subscribeRepos#repoOp`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoOp {
    /// `create`, `update` or `delete`.
    pub action: String,
    /// `collection/rkey`.
    pub path: String,
    /// The new record CID; null for deletes. Required and nullable in the lexicon.
    pub cid: Option<Cid>,
    /// The previous record CID, for updates and deletes (Sync 1.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<Cid>,
}

/// A `#commit` message: a signed repo commit with the blocks that prove its ops.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitEvent {
    /// The stream sequence number.
    pub seq: i64,
    /// Deprecated, always false when present; kept as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebase: Option<bool>,
    /// Deprecated; kept as sent (some hosts omit it).
    #[serde(rename = "tooBig", default, skip_serializing_if = "Option::is_none")]
    pub too_big: Option<bool>,
    /// The account DID.
    pub repo: Did,
    /// CID of the commit object (the CAR root).
    pub commit: Cid,
    /// The commit's `rev`.
    pub rev: Tid,
    /// The `rev` of the previous commit; null for the first commit. Required and nullable.
    pub since: Option<Tid>,
    /// A CAR v1 slice: the commit block, changed MST nodes and records.
    pub blocks: Bytes,
    /// The record operations, at most 200.
    pub ops: Vec<RepoOp>,
    /// Deprecated; kept as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blobs: Option<Vec<Cid>>,
    /// The MST root CID of the previous commit (Sync 1.1); absent on genesis commits.
    #[serde(rename = "prevData", default, skip_serializing_if = "Option::is_none")]
    pub prev_data: Option<Cid>,
    /// When the host emitted the event (datetime string).
    pub time: String,
}

/// A `#sync` message: the current commit of an account, declaring its state (Sync 1.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncEvent {
    /// The stream sequence number.
    pub seq: i64,
    /// The account DID.
    pub did: Did,
    /// A CAR v1 slice with the commit block as its root.
    pub blocks: Bytes,
    /// The commit's `rev`.
    pub rev: Tid,
    /// When the host emitted the event.
    pub time: String,
}

/// An `#identity` message: the account's DID document or handle may have changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityEvent {
    /// The stream sequence number.
    pub seq: i64,
    /// The account DID.
    pub did: Did,
    /// When the host emitted the event.
    pub time: String,
    /// The current handle, if the host states one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle: Option<String>,
}

/// An `#account` message: the hosting status of an account changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountEvent {
    /// The stream sequence number.
    pub seq: i64,
    /// The account DID.
    pub did: Did,
    /// When the host emitted the event.
    pub time: String,
    /// Whether the account is active.
    pub active: bool,
    /// Why the account is inactive: `takendown`, `suspended`, `deleted`, `deactivated`,
    /// `desynchronized`, `throttled`, or a value unknown to us (kept as sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

/// An `#info` message: out-of-band information, e.g. `OutdatedCursor`. Has no `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Info {
    /// The info name, e.g. `OutdatedCursor`.
    pub name: String,
    /// Human-readable detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The body of an error frame (`op: -1`), e.g. `FutureCursor` or `ConsumerTooSlow`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error name.
    pub error: String,
    /// Human-readable detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A decoded message frame.
// `#commit` is the common case: boxing it would add an allocation per event to spare the rare ones.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `#commit`
    Commit(CommitEvent),
    /// `#sync`
    Sync(SyncEvent),
    /// `#identity`
    Identity(IdentityEvent),
    /// `#account`
    Account(AccountEvent),
    /// `#info`
    Info(Info),
}

/// A decoded frame: a message or an error.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// `op: 1`
    Message(Event),
    /// `op: -1`
    Error(ErrorBody),
}

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The header is not a DAG-CBOR `{op, t}` map.
    #[error("bad frame header: {0}")]
    Header(CborError),
    /// The body does not match the lexicon shape of the header's type.
    #[error("bad {t} body: {err}")]
    Body {
        /// The message type from the header.
        t: String,
        /// The decode error.
        err: CborError,
    },
    /// The header's `op` is neither 1 nor -1.
    #[error("unknown frame op {0}")]
    UnknownOp(i64),
    /// A message type this relay does not know (`t` is kept for the log).
    #[error("unknown message type {0:?}")]
    UnknownType(String),
}

impl Event {
    /// The lexicon type name used in the header `t`, e.g. `#commit`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Event::Commit(_) => "#commit",
            Event::Sync(_) => "#sync",
            Event::Identity(_) => "#identity",
            Event::Account(_) => "#account",
            Event::Info(_) => "#info",
        }
    }

    /// The event's `seq`; `None` for `#info`.
    pub fn seq(&self) -> Option<i64> {
        match self {
            Event::Commit(e) => Some(e.seq),
            Event::Sync(e) => Some(e.seq),
            Event::Identity(e) => Some(e.seq),
            Event::Account(e) => Some(e.seq),
            Event::Info(_) => None,
        }
    }

    /// Replaces the event's `seq`; no effect on `#info`.
    pub fn set_seq(&mut self, seq: i64) {
        match self {
            Event::Commit(e) => e.seq = seq,
            Event::Sync(e) => e.seq = seq,
            Event::Identity(e) => e.seq = seq,
            Event::Account(e) => e.seq = seq,
            Event::Info(_) => {}
        }
    }

    /// The account the event is about; `None` for `#info`.
    pub fn did(&self) -> Option<&Did> {
        match self {
            Event::Commit(e) => Some(&e.repo),
            Event::Sync(e) => Some(&e.did),
            Event::Identity(e) => Some(&e.did),
            Event::Account(e) => Some(&e.did),
            Event::Info(_) => None,
        }
    }

    /// Encodes the event as a complete frame (header + body).
    ///
    /// # Errors
    /// [`CborError::Encode`] only if a field cannot be represented (not reachable for decoded input).
    pub fn encode(&self) -> Result<Vec<u8>, CborError> {
        let header = Header { op: OP_MESSAGE, t: Some(self.type_name().to_owned()) };
        let mut out = cbor::to_vec(&header)?;
        let body = match self {
            Event::Commit(e) => cbor::to_vec(e),
            Event::Sync(e) => cbor::to_vec(e),
            Event::Identity(e) => cbor::to_vec(e),
            Event::Account(e) => cbor::to_vec(e),
            Event::Info(e) => cbor::to_vec(e),
        }?;
        out.extend_from_slice(&body);
        Ok(out)
    }
}

impl ErrorBody {
    /// Encodes an error frame: header `{op: -1}` and this body.
    ///
    /// # Errors
    /// [`CborError::Encode`] only if a string cannot be encoded (not reachable).
    pub fn encode(&self) -> Result<Vec<u8>, CborError> {
        let mut out = cbor::to_vec(&Header { op: OP_ERROR, t: None })?;
        out.extend_from_slice(&cbor::to_vec(self)?);
        Ok(out)
    }
}

/// What a message frame says about itself, read without decoding it ([`crate::cbor::map_text`],
/// [`crate::cbor::map_uint`]): its `seq` and account DID. Both `None` for `#info`, error frames and
/// bytes that are not a frame.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Peek<'a> {
    /// The body's `seq`, when it is one a decode accepts (0 to `i64::MAX`, the lexicon's integer).
    pub seq: Option<u64>,
    /// The body's `repo` (`#commit`) or `did` (the other types).
    pub did: Option<&'a str>,
}

/// Reads a frame's [`Peek`]: the header once, then the body's `seq` and DID keys, skipping values
/// by their length (a few bytes' work, not a decode of the blocks).
pub fn peek(bytes: &[u8]) -> Peek<'_> {
    let Some(header_len) = cbor::item_len(bytes).ok() else { return Peek::default() };
    let (Some(header), Some(body)) = (bytes.get(..header_len), bytes.get(header_len..)) else {
        return Peek::default();
    };
    let did_key = match cbor::map_text(header, "t") {
        Some("#commit") => "repo",
        Some("#sync" | "#identity" | "#account") => "did",
        _ => return Peek::default(),
    };
    Peek { seq: cbor::map_uint(body, "seq").filter(|s| i64::try_from(*s).is_ok()), did: cbor::map_text(body, did_key) }
}

/// A frame's header, `(op, t)`, decoded alone (`(None, None)` when it is not a header).
pub fn header(bytes: &[u8]) -> (Option<i64>, Option<String>) {
    let Some(head) = cbor::item_len(bytes).ok().and_then(|n| bytes.get(..n)) else { return (None, None) };
    match cbor::from_slice::<Header>(head) {
        Ok(h) => (Some(h.op), h.t),
        Err(_) => (None, None),
    }
}

/// The body's `seq` of a message frame of any type (known or not), read without decoding the body;
/// `None` for error frames, bodies without a `seq`, and a `seq` above `i64::MAX`.
pub fn peek_seq(bytes: &[u8]) -> Option<u64> {
    let header_len = cbor::item_len(bytes).ok()?;
    let body = bytes.get(header_len..)?;
    // `op` is -1 on an error frame (a negative integer is not a uint): no seq.
    cbor::map_uint(bytes.get(..header_len)?, "op")?;
    cbor::map_uint(body, "seq").filter(|s| i64::try_from(*s).is_ok())
}

/// The account DID of a message frame ([`peek`]).
pub fn peek_did(bytes: &[u8]) -> Option<&str> {
    peek(bytes).did
}

/// Whether `bytes` is well-framed: exactly two concatenated items (header, then body), each valid
/// DAG-CBOR. A frame that is not is what <https://atproto.com/specs/event-stream> ("Framing") calls a
/// hard error: "Invalid framing or DAG-CBOR encoding are hard errors, and the client should drop the
/// entire connection instead of skipping the frame". A well-framed frame that [`decode_frame`]
/// refuses (an unknown type, a body that does not match the lexicon) is skipped instead.
pub fn well_formed(bytes: &[u8]) -> bool {
    let Ok(header_len) = cbor::item_len(bytes) else { return false };
    let (head, body) = bytes.split_at(header_len);
    cbor::from_slice::<ipld_core::ipld::Ipld>(head).is_ok()
        && cbor::item_len(body).is_ok_and(|n| n == body.len())
        && cbor::from_slice::<ipld_core::ipld::Ipld>(body).is_ok()
}

/// Decodes a complete frame (header then body, nothing after).
///
/// # Errors
/// [`FrameError`] naming what is wrong; never panics on any input.
pub fn decode_frame(bytes: &[u8]) -> Result<Frame, FrameError> {
    let header_len = cbor::item_len(bytes).map_err(FrameError::Header)?;
    let (head, body) = bytes.split_at(header_len);
    let header: Header = cbor::from_slice(head).map_err(FrameError::Header)?;
    let t = header.t.unwrap_or_default();
    let err = |err| FrameError::Body { t: t.clone(), err };
    match header.op {
        OP_ERROR => Ok(Frame::Error(cbor::from_slice(body).map_err(err)?)),
        OP_MESSAGE => {
            let event = match t.as_str() {
                "#commit" => Event::Commit(cbor::from_slice(body).map_err(err)?),
                "#sync" => Event::Sync(cbor::from_slice(body).map_err(err)?),
                "#identity" => Event::Identity(cbor::from_slice(body).map_err(err)?),
                "#account" => Event::Account(cbor::from_slice(body).map_err(err)?),
                "#info" => Event::Info(cbor::from_slice(body).map_err(err)?),
                _ => return Err(FrameError::UnknownType(t)),
            };
            Ok(Frame::Message(event))
        }
        op => Err(FrameError::UnknownOp(op)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_is_two_dag_cbor_items() {
        let frame = ErrorBody { error: "X".into(), message: None }.encode().unwrap();
        assert!(well_formed(&frame));
        let unknown = [cbor::to_vec(&Header { op: 1, t: Some("#future".into()) }).unwrap(), vec![0xa0]].concat();
        assert!(well_formed(&unknown), "an unknown type is well-framed (skipped, not fatal)");
        assert!(!well_formed(&frame[..frame.len() - 1]), "truncated body");
        assert!(!well_formed(&[frame.clone(), vec![0x01]].concat()), "a third item");
        assert!(!well_formed(&cbor::to_vec(&Header { op: 1, t: None }).unwrap()), "no body");
        assert!(!well_formed(&[]) && !well_formed(&[0xff; 8]));
        // A float is CBOR but not DAG-CBOR when it is not the shortest form (half precision here).
        let half = [cbor::to_vec(&Header { op: 1, t: Some("#x".into()) }).unwrap(), vec![0xf9, 0x3c, 0x00]].concat();
        assert!(!well_formed(&half));
    }

    #[test]
    fn error_frame_round_trip() {
        let e = ErrorBody { error: "ConsumerTooSlow".into(), message: Some("queue full".into()) };
        let bytes = e.encode().unwrap();
        assert_eq!(decode_frame(&bytes).unwrap(), Frame::Error(e));
    }

    #[test]
    fn unknown_fields_are_ignored_and_unknown_types_rejected() {
        let mut bytes = cbor::to_vec(&Header { op: 1, t: Some("#identity".into()) }).unwrap();
        let body = serde_json::json!({"seq": 5, "did": "did:plc:abc", "time": "2024-01-01T00:00:00Z", "zzz": [1]});
        bytes.extend(cbor::to_vec(&body).unwrap());
        let Frame::Message(Event::Identity(id)) = decode_frame(&bytes).unwrap() else { panic!() };
        assert_eq!((id.seq, id.did.as_str()), (5, "did:plc:abc"));

        let mut bytes = cbor::to_vec(&Header { op: 1, t: Some("#future".into()) }).unwrap();
        bytes.extend(cbor::to_vec(&body).unwrap());
        assert_eq!(decode_frame(&bytes), Err(FrameError::UnknownType("#future".into())));
    }

    /// `peek` agrees with a full decode on every recorded reference-PDS frame.
    #[test]
    fn peeking_agrees_with_decoding() {
        let dir =
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/recorded-pds-0.5.35");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "cbor") {
                continue;
            }
            let bytes = std::fs::read(&path).unwrap();
            let Ok(Frame::Message(e)) = decode_frame(&bytes) else { continue };
            let p = peek(&bytes);
            assert_eq!(p.seq, e.seq().and_then(|s| u64::try_from(s).ok()), "{path:?}");
            assert_eq!(p.did, e.did().map(Did::as_str), "{path:?}");
            seen += 1;
        }
        assert!(seen > 10, "{seen} frames");
        assert_eq!(peek(&[0xa2, 0x61, 0x74]), Peek::default());
        // A seq above i64::MAX does not decode; peeking must not report it either.
        let mut bytes = cbor::to_vec(&Header { op: 1, t: Some("#identity".into()) }).unwrap();
        let body = serde_json::json!({"seq": u64::MAX, "did": "did:plc:abc", "time": "2024-01-01T00:00:00Z"});
        bytes.extend(cbor::to_vec(&body).unwrap());
        assert!(decode_frame(&bytes).is_err());
        assert_eq!(peek(&bytes).seq, None);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [&[][..], &[0xff], &[0xa2, 0x61, 0x74], &[0xa1, 0x62, 0x6f, 0x70, 0x05, 0xa0]] {
            assert!(decode_frame(bad).is_err());
        }
    }
}
