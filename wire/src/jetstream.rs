//! Jetstream: the firehose as JSON, one event per record operation, in the two wire formats
//! Bluesky's Jetstream serves (<https://github.com/bluesky-social/jetstream>):
//!
//! - **v1** (`GET /subscribe`, what `@skyware/jetstream` speaks): one JSON object per websocket
//!   message, `{did, time_us, kind: "commit"|"identity"|"account", commit?|identity?|account?}`;
//!   `#sync` is not sent on v1.
//! - **v2** (`network.bsky.jetstream.subscribeEvents`, subprotocol `xrpc.v1.json`, what the Python
//!   `atproto_jetstream` client speaks): `{"$type": "message", "payload": {"$type":
//!   "network.bsky.jetstream.subscribeEvents#commit", did, seq, time, …}}`, with `#identity`,
//!   `#account` and `#sync` wrapping the firehose event as JSON.
//!
//! Records are decoded from the commit's CAR slice and written in the atproto data model's JSON form
//! (<https://atproto.com/specs/data-model>): a CID link is `{"$link": cid}`, bytes are `{"$bytes":
//! base64}` (standard alphabet, no padding), a blob ref is the map `{"$type": "blob", "ref": {"$link"},
//! "mimeType", "size"}` it already is in DAG-CBOR. A record that cannot be converted (a float, a
//! missing block) is sent without `record`, and [`Converted::unconvertible`] counts it.
//!
//! Numbers the relay chooses: an event's v2 `seq` is its relay seq × 256 + the op's index in the
//! commit (commits carry at most 200 ops), so it is unique, increasing, and tells the relay where to
//! resume; `time_us` (v1) and `time` (v2) are given by the caller (the relay derives them from the
//! second its sequencer committed the event in: see `storage`'s `time_index`).
//!
//! Pure: no I/O, no clock.

use base64::Engine;
use ipld_core::ipld::Ipld;
use serde_json::{Map, Value, json};

use crate::frame::{AccountEvent, Event, IdentityEvent, SyncEvent};
use crate::syntax::{Did, RelaySeq, Tid, datetime_from_unix_us};

mod filter;

pub use filter::{
    Filter, MAX_COLLECTIONS, MAX_DIDS, MAX_OPTIONS_UPDATE_BYTES, V1Request, V2Cursor, V2Request, apply_options_update,
    parse_v1, parse_v2,
};

/// The v2 method name.
pub const V2_NSID: &str = "network.bsky.jetstream.subscribeEvents";

/// The unix-microseconds time the relay gives the event with relay seq `seq`, committed in unix
/// second `second` whose first relay seq was `first_seq` (the `time_index` entry covering it): the
/// second, plus the event's offset in it as microseconds. Increasing with `seq`, and unique while a
/// second holds fewer than a million events; [`seq_for_time_us`] inverts it, so a time cursor
/// resumes exactly where it left off. An event's real commit time is within the second.
pub fn time_us(second: u64, first_seq: u64, seq: u64) -> u64 {
    second.saturating_mul(1_000_000).saturating_add(seq.saturating_sub(first_seq).min(999_999))
}

/// The first relay seq whose [`time_us`] is at or after `us`, given the `time_index` entry of
/// `us`'s second (`Some((second, first_seq))` when that exact second is indexed) and the first seq
/// of the next indexed second after it (`next_first`).
pub fn seq_for_time_us(us: u64, entry: Option<(u64, u64)>, next_first: Option<u64>) -> Option<u64> {
    let second = us / 1_000_000;
    match entry {
        Some((s, first)) if s == second => {
            let at = first.saturating_add(us % 1_000_000);
            // Past the second's last event: the next second's first.
            Some(next_first.map_or(at, |next| at.min(next)))
        }
        _ => next_first,
    }
}

/// Why a record could not be written as JSON.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    /// The block is not DAG-CBOR.
    #[error("not DAG-CBOR: {0}")]
    Cbor(String),
    /// A value the atproto data model has no JSON form for (a float, a non-string map key, an
    /// integer out of range).
    #[error("no atproto JSON form for {0}")]
    Unsupported(&'static str),
    /// The op's record block is not in the commit's CAR slice.
    #[error("record block missing")]
    MissingBlock,
}

/// A DAG-CBOR record as atproto JSON.
///
/// # Errors
/// [`JsonError`] when the bytes are not DAG-CBOR or hold a value with no JSON form.
pub fn record_json(block: &[u8]) -> Result<Value, JsonError> {
    let ipld: Ipld = crate::cbor::from_slice(block).map_err(|e| JsonError::Cbor(e.to_string()))?;
    ipld_json(ipld)
}

fn ipld_json(ipld: Ipld) -> Result<Value, JsonError> {
    Ok(match ipld {
        Ipld::Null => Value::Null,
        Ipld::Bool(b) => Value::Bool(b),
        Ipld::Integer(i) => {
            if let Ok(n) = i64::try_from(i) {
                Value::from(n)
            } else {
                Value::from(u64::try_from(i).map_err(|_| JsonError::Unsupported("an integer beyond 64 bits"))?)
            }
        }
        Ipld::Float(_) => return Err(JsonError::Unsupported("a float")),
        Ipld::String(s) => Value::String(s),
        Ipld::Bytes(b) => json!({ "$bytes": base64::engine::general_purpose::STANDARD_NO_PAD.encode(b) }),
        Ipld::List(items) => Value::Array(items.into_iter().map(ipld_json).collect::<Result<_, _>>()?),
        Ipld::Map(map) => {
            let mut out = Map::with_capacity(map.len());
            for (k, v) in map {
                out.insert(k, ipld_json(v)?);
            }
            Value::Object(out)
        }
        Ipld::Link(cid) => json!({ "$link": cid.to_string() }),
    })
}

/// The kind of a Jetstream event (the `kind` of v1, the `$type` fragment of v2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// One record operation of a `#commit`.
    Commit,
    /// An `#identity`.
    Identity,
    /// An `#account`.
    Account,
    /// A `#sync` (v2 only).
    Sync,
}

impl Kind {
    /// The name: `commit`, `identity`, `account`, `sync`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Commit => "commit",
            Kind::Identity => "identity",
            Kind::Account => "account",
            Kind::Sync => "sync",
        }
    }

    /// The kind named `s`, if any.
    pub fn parse(s: &str) -> Option<Self> {
        [Kind::Commit, Kind::Identity, Kind::Account, Kind::Sync].into_iter().find(|k| k.as_str() == s)
    }
}

/// What a Jetstream event carries.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// One op of a commit.
    Commit {
        /// The commit's rev.
        rev: Tid,
        /// `create`, `update` or `delete`.
        operation: String,
        /// The record's collection (NSID).
        collection: String,
        /// The record key.
        rkey: String,
        /// The record's CID (absent for deletes).
        cid: Option<crate::Cid>,
        /// The record as atproto JSON (absent for deletes, and when it could not be converted).
        record: Option<Value>,
    },
    /// An `#identity` (its `seq` is the relay seq).
    Identity(IdentityEvent),
    /// An `#account` (its `seq` is the relay seq).
    Account(AccountEvent),
    /// A `#sync` (its `seq` is the relay seq).
    Sync(SyncEvent),
}

/// One Jetstream event.
#[derive(Debug, Clone, PartialEq)]
pub struct JetEvent {
    /// The account.
    pub did: Did,
    /// The relay seq of the firehose event it comes from.
    pub relay_seq: u64,
    /// The op's index in its commit (0 for other kinds); below 256.
    pub index: u8,
    /// Unix microseconds the relay gives the event.
    pub time_us: u64,
    /// What it carries.
    pub body: Body,
}

/// The Jetstream events of one firehose event.
#[derive(Debug, Clone, Default)]
pub struct Converted {
    /// In op order.
    pub events: Vec<JetEvent>,
    /// Records that could not be written as JSON (sent without `record`).
    pub unconvertible: usize,
}

/// A Jetstream v2 `seq`: relay seq × 256 + the op's index in its commit (0 for other kinds). It
/// orders the Jetstream stream as the relay seq orders the firehose, and tells the relay where to
/// resume inside a commit. Relay seqs below 2^56 map one to one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JetSeq(pub u64);

impl JetSeq {
    /// The seq of op `index` of relay event `relay`.
    pub fn new(relay: RelaySeq, index: u8) -> Self {
        Self(relay.0 << 8 | u64::from(index))
    }

    /// The relay seq of the firehose event it comes from.
    pub fn relay(self) -> RelaySeq {
        RelaySeq(self.0 >> 8)
    }

    /// The op's index in its commit.
    pub fn index(self) -> u8 {
        (self.0 & 0xff) as u8
    }

    /// The position just before the first op of relay seq `relay` (0 for relay seq 0).
    pub fn before(relay: RelaySeq) -> Self {
        Self((relay.0 << 8).saturating_sub(1))
    }

    /// The seq of the last op any event at relay seq `relay` can have.
    pub fn end_of(relay: RelaySeq) -> Self {
        Self(relay.0 << 8 | 0xff)
    }

    /// The seq just before this one (0 stays 0).
    pub fn prev(self) -> Self {
        Self(self.0.saturating_sub(1))
    }
}

impl std::fmt::Display for JetSeq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Converts a firehose event (carrying its relay seq) to Jetstream events at `time_us`.
pub fn convert(event: &Event, time_us: u64) -> Converted {
    let mut out = Converted::default();
    let Some(seq) = event.seq().and_then(|s| u64::try_from(s).ok()) else { return out };
    let one = |did: &Did, body| JetEvent { did: did.clone(), relay_seq: seq, index: 0, time_us, body };
    match event {
        Event::Commit(c) => {
            let car = crate::car::read_car(&c.blocks).ok();
            for (index, op) in c.ops.iter().enumerate().take(256) {
                let Some((collection, rkey)) = op.path.split_once('/') else { continue };
                let record = match (op.action.as_str(), op.cid) {
                    ("delete", _) | (_, None) => None,
                    (_, Some(cid)) => {
                        let block = car.as_ref().and_then(|car| car.get(&cid)).ok_or(JsonError::MissingBlock);
                        match block.and_then(record_json) {
                            Ok(v) => Some(v),
                            Err(_) => {
                                out.unconvertible += 1;
                                None
                            }
                        }
                    }
                };
                out.events.push(JetEvent {
                    did: c.repo.clone(),
                    relay_seq: seq,
                    index: index as u8,
                    time_us,
                    body: Body::Commit {
                        rev: c.rev.clone(),
                        operation: op.action.clone(),
                        collection: collection.to_owned(),
                        rkey: rkey.to_owned(),
                        cid: if op.action == "delete" { None } else { op.cid },
                        record,
                    },
                });
            }
        }
        Event::Identity(i) => out.events.push(one(&i.did, Body::Identity(i.clone()))),
        Event::Account(a) => out.events.push(one(&a.did, Body::Account(a.clone()))),
        Event::Sync(s) => out.events.push(one(&s.did, Body::Sync(s.clone()))),
        Event::Info(_) => {}
    }
    out
}

fn identity_json(i: &IdentityEvent) -> Value {
    let mut v = json!({ "did": i.did.as_str(), "seq": i.seq, "time": i.time });
    if let (Some(h), Some(map)) = (&i.handle, v.as_object_mut()) {
        map.insert("handle".into(), h.clone().into());
    }
    v
}

fn account_json(a: &AccountEvent) -> Value {
    let mut v = json!({ "active": a.active, "did": a.did.as_str(), "seq": a.seq, "time": a.time });
    if let (Some(s), Some(map)) = (&a.status, v.as_object_mut()) {
        map.insert("status".into(), s.clone().into());
    }
    v
}

impl JetEvent {
    /// Its kind.
    pub fn kind(&self) -> Kind {
        match self.body {
            Body::Commit { .. } => Kind::Commit,
            Body::Identity(_) => Kind::Identity,
            Body::Account(_) => Kind::Account,
            Body::Sync(_) => Kind::Sync,
        }
    }

    /// The record collection of a commit op.
    pub fn collection(&self) -> Option<&str> {
        match &self.body {
            Body::Commit { collection, .. } => Some(collection),
            _ => None,
        }
    }

    /// Its v2 `seq`.
    pub fn seq(&self) -> JetSeq {
        JetSeq::new(RelaySeq(self.relay_seq), self.index)
    }

    fn commit_fields(&self) -> Option<Map<String, Value>> {
        let Body::Commit { rev, operation, collection, rkey, cid, record } = &self.body else { return None };
        let mut m = Map::new();
        m.insert("rev".into(), rev.as_str().into());
        m.insert("operation".into(), operation.clone().into());
        m.insert("collection".into(), collection.clone().into());
        m.insert("rkey".into(), rkey.clone().into());
        if let Some(r) = record {
            m.insert("record".into(), r.clone());
        }
        if let Some(c) = cid {
            m.insert("cid".into(), c.to_string().into());
        }
        Some(m)
    }

    /// The v1 JSON message; `None` for `#sync`, which v1 does not carry.
    pub fn v1_json(&self) -> Option<Vec<u8>> {
        let mut v = json!({ "did": self.did.as_str(), "time_us": self.time_us, "kind": self.kind().as_str() });
        let (key, inner) = match &self.body {
            Body::Commit { .. } => ("commit", Value::Object(self.commit_fields()?)),
            Body::Identity(i) => ("identity", identity_json(i)),
            Body::Account(a) => ("account", account_json(a)),
            Body::Sync(_) => return None,
        };
        v.as_object_mut()?.insert(key.into(), inner);
        serde_json::to_vec(&v).ok()
    }

    /// The v2 message frame (`xrpc.v1.json`): `{"$type": "message", "payload": {…}}`.
    pub fn v2_json(&self) -> Vec<u8> {
        let time = datetime_from_unix_us(self.time_us);
        let mut payload = Map::new();
        payload.insert("$type".into(), format!("{V2_NSID}#{}", self.kind().as_str()).into());
        payload.insert("did".into(), self.did.as_str().into());
        payload.insert("seq".into(), self.seq().0.into());
        payload.insert("time".into(), time.clone().into());
        payload.insert("witnessedAt".into(), time.into());
        match &self.body {
            Body::Commit { .. } => payload.extend(self.commit_fields().unwrap_or_default()),
            Body::Identity(i) => {
                payload.insert("identity".into(), identity_json(i));
            }
            Body::Account(a) => {
                payload.insert("account".into(), account_json(a));
            }
            Body::Sync(s) => {
                let blocks = base64::engine::general_purpose::STANDARD_NO_PAD.encode(&s.blocks);
                payload.insert(
                    "sync".into(),
                    json!({ "did": s.did.as_str(), "seq": s.seq, "time": s.time, "rev": s.rev.as_str(), "blocks": { "$bytes": blocks } }),
                );
            }
        }
        serde_json::to_vec(&json!({ "$type": "message", "payload": payload })).unwrap_or_default()
    }
}

/// A v2 `#info` frame (`OutdatedCursor`, `FutureCursor`).
pub fn v2_info(name: &str, message: &str) -> Vec<u8> {
    let payload = json!({ "$type": format!("{V2_NSID}#info"), "name": name, "message": message });
    serde_json::to_vec(&json!({ "$type": "message", "payload": payload })).unwrap_or_default()
}

/// A v2 error frame (`ConsumerTooSlow`, …).
pub fn v2_error(error: &str, message: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({ "$type": "error", "error": error, "message": message })).unwrap_or_default()
}

#[cfg(test)]
mod tests;
