//! What a Jetstream subscriber asks for: the query parameters of both endpoints, the v1
//! `options_update` message, and the [`Filter`] every event is matched against.
//!
//! Matching is O(1) per event for DID and exact-collection filters (hash sets); a prefix filter
//! (`app.bsky.feed.*`) is looked up once per `.`-separated prefix of the event's collection (a
//! handful of hash lookups), so it costs the same however many prefixes a subscriber gave.

use std::collections::HashSet;

use serde::Deserialize;

use super::Kind;

/// Most `wantedCollections` / `collections` entries (Jetstream's limit).
pub const MAX_COLLECTIONS: usize = 100;
/// Most `wantedDids` / `dids` entries (Jetstream's limit).
pub const MAX_DIDS: usize = 10_000;
/// Largest `options_update` message accepted, in bytes (Jetstream's limit).
pub const MAX_OPTIONS_UPDATE_BYTES: usize = 10 << 20;
/// A v2 `cursor` at or above this is a unix-microseconds timestamp, below it a seq.
pub const V2_TIMESTAMP_CURSOR_FLOOR: u64 = 1_000_000_000_000_000;

/// Which events a subscriber gets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Kinds wanted; `None`: every kind the endpoint carries.
    pub kinds: Option<HashSet<Kind>>,
    /// Accounts wanted (every kind); empty: all.
    pub dids: HashSet<String>,
    /// Exact collections wanted (commits only); with `prefixes` empty too: all.
    pub collections: HashSet<String>,
    /// Collection prefixes wanted, without the trailing `.*` (`app.bsky.feed` for
    /// `app.bsky.feed.*`).
    pub prefixes: HashSet<String>,
    /// Events whose uncompressed message is larger than this many bytes are skipped; 0: no limit.
    pub max_message_bytes: usize,
}

impl Filter {
    /// Whether an event of `kind` about `did` (with `collection` for a commit) is wanted.
    pub fn wants(&self, did: &str, kind: Kind, collection: Option<&str>) -> bool {
        if self.kinds.as_ref().is_some_and(|k| !k.contains(&kind)) {
            return false;
        }
        if !self.dids.is_empty() && !self.dids.contains(did) {
            return false;
        }
        match collection {
            Some(c) if kind == Kind::Commit => self.wants_collection(c),
            _ => true,
        }
    }

    fn wants_collection(&self, collection: &str) -> bool {
        if self.collections.is_empty() && self.prefixes.is_empty() {
            return true;
        }
        if self.collections.contains(collection) {
            return true;
        }
        !self.prefixes.is_empty()
            && collection
                .match_indices('.')
                .any(|(i, _)| collection.get(..i).is_some_and(|p| self.prefixes.contains(p)))
    }

    /// Whether a message of `len` bytes (uncompressed) may be sent.
    pub fn fits(&self, len: usize) -> bool {
        self.max_message_bytes == 0 || len <= self.max_message_bytes
    }

    /// Sets the collections from `wantedCollections` / `collections` entries: NSIDs, or prefixes
    /// ending in `.*` whose segments are NSID segments.
    ///
    /// # Errors
    /// A message naming the bad entry, or saying there are more than [`MAX_COLLECTIONS`].
    pub fn set_collections<'a>(&mut self, entries: impl IntoIterator<Item = &'a str>) -> Result<(), String> {
        self.collections.clear();
        self.prefixes.clear();
        for (n, entry) in entries.into_iter().enumerate() {
            if n >= MAX_COLLECTIONS {
                return Err(format!("at most {MAX_COLLECTIONS} collections may be given"));
            }
            if let Some(prefix) = entry.strip_suffix(".*") {
                if !valid_prefix(prefix) {
                    return Err(format!("{entry:?} is not an NSID prefix (segments of letters, digits and '-')"));
                }
                self.prefixes.insert(prefix.to_owned());
            } else if crate::Nsid::new(entry).is_ok() {
                self.collections.insert(entry.to_owned());
            } else {
                return Err(format!("{entry:?} is not an NSID or an NSID prefix ending in .*"));
            }
        }
        Ok(())
    }

    /// Sets the accounts from `wantedDids` / `dids` entries.
    ///
    /// # Errors
    /// A message naming the bad DID, or saying there are more than [`MAX_DIDS`].
    pub fn set_dids<'a>(&mut self, entries: impl IntoIterator<Item = &'a str>) -> Result<(), String> {
        self.dids.clear();
        for (n, entry) in entries.into_iter().enumerate() {
            if n >= MAX_DIDS {
                return Err(format!("at most {MAX_DIDS} DIDs may be given"));
            }
            if crate::Did::new(entry).is_err() {
                return Err(format!("{entry:?} is not a DID"));
            }
            self.dids.insert(entry.to_owned());
        }
        Ok(())
    }
}

fn valid_prefix(prefix: &str) -> bool {
    !prefix.is_empty()
        && prefix.len() <= 317
        && prefix.split('.').all(|seg| {
            !seg.is_empty() && seg.len() <= 63 && seg.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
        })
}

/// A `maxMessageSizeBytes` value: a non-negative integer; negative values mean no limit (as
/// Jetstream coerces them).
fn max_size(v: &str) -> Result<usize, String> {
    match v.parse::<i64>() {
        Ok(n) if n <= 0 => Ok(0),
        Ok(n) => Ok(usize::try_from(n).unwrap_or(usize::MAX)),
        Err(_) => Err(format!("maxMessageSizeBytes must be an integer, got {v:?}")),
    }
}

/// The parameters of a v1 `GET /subscribe`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct V1Request {
    /// `wantedCollections`, `wantedDids`, `maxMessageSizeBytes`.
    pub filter: Filter,
    /// `cursor`: unix microseconds to replay from (inclusive); `None` (absent, 0 or negative): the
    /// live tail.
    pub cursor_us: Option<u64>,
    /// `compress=true` (or the `Socket-Encoding: zstd` header, which the caller checks): zstd frames
    /// with the relay's dictionary, as binary messages.
    pub compress: bool,
    /// `requireHello=true`: send nothing until the first `options_update`.
    pub require_hello: bool,
}

/// Parses a v1 query (decoded `(name, value)` pairs).
///
/// # Errors
/// A message for the XRPC `InvalidRequest` error: a bad NSID, prefix or DID, too many of them, a
/// non-integer cursor or size.
pub fn parse_v1(params: &[(String, String)]) -> Result<V1Request, String> {
    let values = |name: &'static str| params.iter().filter(move |(k, _)| k == name).map(|(_, v)| v.as_str());
    let mut req = V1Request::default();
    req.filter.set_collections(values("wantedCollections"))?;
    req.filter.set_dids(values("wantedDids"))?;
    if let Some(v) = values("maxMessageSizeBytes").next_back() {
        req.filter.max_message_bytes = max_size(v)?;
    }
    if let Some(v) = values("cursor").next_back() {
        let c = v.parse::<i64>().map_err(|_| format!("cursor must be unix microseconds, got {v:?}"))?;
        req.cursor_us = u64::try_from(c).ok().filter(|c| *c > 0);
    }
    req.compress = values("compress").any(|v| v == "true");
    req.require_hello = values("requireHello").any(|v| v == "true");
    Ok(req)
}

/// Where a v2 stream starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum V2Cursor {
    /// Events with `seq >= ` this (a v2 seq: relay seq × 256 + op index).
    Seq(super::JetSeq),
    /// The first event at or after this unix-microseconds instant.
    TimeUs(u64),
}

/// The parameters of `network.bsky.jetstream.subscribeEvents`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct V2Request {
    /// `kinds`, `dids`, `collections`, `maxMessageSizeBytes`.
    pub filter: Filter,
    /// `cursor`; `None`: the live tail.
    pub cursor: Option<V2Cursor>,
    /// `zstdDictionary`: the dictionary ID the client has loaded (checked by the caller).
    pub zstd_dictionary: Option<u32>,
}

/// Parses a v2 query (decoded `(name, value)` pairs; arrays are repeated names, as XRPC sends them).
///
/// # Errors
/// A message for the XRPC `InvalidRequest` error: an unknown kind, `collections` with `kinds` that
/// exclude commits, a bad NSID, prefix or DID, too many of them, a non-integer cursor, size or
/// dictionary ID.
pub fn parse_v2(params: &[(String, String)]) -> Result<V2Request, String> {
    let values = |name: &'static str| params.iter().filter(move |(k, _)| k == name).map(|(_, v)| v.as_str());
    // v1's names on v2 are refused rather than ignored (bluesky-social/jetstream answers them with
    // InvalidRequest): a client that sends them would otherwise get an unfiltered stream.
    for (v1, v2) in [
        ("wantedCollections", "collections"),
        ("wantedDids", "dids"),
        ("compress", "zstdDictionary"),
        ("requireHello", "no equivalent"),
    ] {
        if params.iter().any(|(k, _)| k == v1) {
            return Err(format!("{v1} is a v1 (/subscribe) parameter; on subscribeEvents use {v2}"));
        }
    }
    let mut req = V2Request::default();
    let mut kinds = HashSet::new();
    for k in values("kinds") {
        kinds.insert(Kind::parse(k).ok_or_else(|| format!("unknown kind {k:?} (commit, identity, account, sync)"))?);
    }
    req.filter.set_collections(values("collections"))?;
    if !kinds.is_empty() {
        let collections_given = !(req.filter.collections.is_empty() && req.filter.prefixes.is_empty());
        if collections_given && !kinds.contains(&Kind::Commit) {
            return Err("collections filter commits, but kinds excludes commit".into());
        }
        req.filter.kinds = Some(kinds);
    }
    req.filter.set_dids(values("dids"))?;
    if let Some(v) = values("maxMessageSizeBytes").next_back() {
        req.filter.max_message_bytes =
            v.parse::<u32>().map_err(|_| format!("maxMessageSizeBytes must be 0-4294967295, got {v:?}"))? as usize;
    }
    if let Some(v) = values("cursor").next_back() {
        let c = v.parse::<u64>().map_err(|_| format!("cursor must be a non-negative integer, got {v:?}"))?;
        req.cursor =
            Some(if c >= V2_TIMESTAMP_CURSOR_FLOOR { V2Cursor::TimeUs(c) } else { V2Cursor::Seq(super::JetSeq(c)) });
    }
    if let Some(v) = values("zstdDictionary").next_back() {
        let id = v.parse::<u32>().ok().filter(|id| *id >= 1);
        req.zstd_dictionary = Some(id.ok_or_else(|| format!("zstdDictionary must be a dictionary ID, got {v:?}"))?);
    }
    Ok(req)
}

#[derive(Deserialize)]
struct SubscriberMessage {
    #[serde(rename = "type")]
    kind: String,
    payload: serde_json::Value,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct OptionsPayload {
    #[serde(default)]
    wanted_collections: Option<Vec<String>>,
    #[serde(default)]
    wanted_dids: Option<Vec<String>>,
    #[serde(default)]
    max_message_size_bytes: Option<i64>,
}

/// Applies a v1 subscriber message `{"type": "options_update", "payload": {wantedCollections?,
/// wantedDids?, maxMessageSizeBytes?}}` to `filter`: the lists given replace the current ones (an
/// empty or absent list means all, as on connect); the size replaces the current one when given.
///
/// # Errors
/// A message saying what is wrong (not JSON, another `type`, a bad entry, too many, too large);
/// the subscriber is then disconnected, as Jetstream does, and `filter` is unchanged.
pub fn apply_options_update(filter: &mut Filter, message: &[u8]) -> Result<(), String> {
    if message.len() > MAX_OPTIONS_UPDATE_BYTES {
        return Err(format!("subscriber messages are at most {MAX_OPTIONS_UPDATE_BYTES} bytes"));
    }
    let msg: SubscriberMessage =
        serde_json::from_slice(message).map_err(|e| format!("not a subscriber message: {e}"))?;
    if msg.kind != "options_update" {
        return Err(format!("unknown subscriber message type {:?}", msg.kind));
    }
    let payload: OptionsPayload =
        serde_json::from_value(msg.payload).map_err(|e| format!("bad options_update payload: {e}"))?;
    let mut next = filter.clone();
    next.set_collections(payload.wanted_collections.iter().flatten().map(String::as_str))?;
    next.set_dids(payload.wanted_dids.iter().flatten().map(String::as_str))?;
    if let Some(n) = payload.max_message_size_bytes {
        next.max_message_bytes = usize::try_from(n).unwrap_or(0);
    }
    *filter = next;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    const DID: &str = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa";

    #[test]
    fn v1_filters_match_both_ways() {
        let r = parse_v1(&q(&[
            ("wantedCollections", "app.bsky.feed.post"),
            ("wantedCollections", "app.bsky.graph.*"),
            ("wantedDids", DID),
            ("cursor", "1700000000000000"),
            ("compress", "true"),
        ]))
        .unwrap();
        assert_eq!(r.cursor_us, Some(1_700_000_000_000_000));
        assert!(r.compress && !r.require_hello);
        let f = &r.filter;
        assert!(f.wants(DID, Kind::Commit, Some("app.bsky.feed.post")));
        assert!(f.wants(DID, Kind::Commit, Some("app.bsky.graph.follow")));
        assert!(f.wants(DID, Kind::Commit, Some("app.bsky.graph.list.item")), "prefixes match deeper NSIDs");
        assert!(!f.wants(DID, Kind::Commit, Some("app.bsky.feed.like")));
        assert!(!f.wants(DID, Kind::Commit, Some("app.bsky.graphx.follow")), "a prefix ends at a segment");
        assert!(!f.wants("did:plc:other", Kind::Commit, Some("app.bsky.feed.post")));
        assert!(f.wants(DID, Kind::Identity, None), "identity and account events pass the collection filter");
        assert!(!f.wants("did:plc:other", Kind::Account, None), "but not the DID filter");
        let all = parse_v1(&[]).unwrap();
        assert!(all.filter.wants("did:plc:x", Kind::Commit, Some("a.b.c")) && all.cursor_us.is_none());
    }

    #[test]
    fn v1_rejects_bad_entries_and_limits() {
        assert!(parse_v1(&q(&[("wantedCollections", "app.bsky.fe*")])).is_err());
        assert!(parse_v1(&q(&[("wantedCollections", "not an nsid")])).is_err());
        assert!(parse_v1(&q(&[("wantedDids", "alice")])).is_err());
        assert!(parse_v1(&q(&[("cursor", "soon")])).is_err());
        let many: Vec<(String, String)> =
            (0..=MAX_COLLECTIONS).map(|i| ("wantedCollections".into(), format!("app.bsky.c{i}"))).collect();
        assert!(parse_v1(&many).unwrap_err().contains("at most 100"));
        assert!(parse_v1(&many[..MAX_COLLECTIONS]).is_ok());
        assert_eq!(parse_v1(&q(&[("maxMessageSizeBytes", "-5")])).unwrap().filter.max_message_bytes, 0);
        assert_eq!(parse_v1(&q(&[("cursor", "-5")])).unwrap().cursor_us, None);
    }

    #[test]
    fn v2_kinds_cursor_and_dictionary() {
        let r = parse_v2(&q(&[("kinds", "commit"), ("kinds", "sync"), ("cursor", "512"), ("zstdDictionary", "7")]))
            .unwrap();
        assert_eq!(r.cursor, Some(V2Cursor::Seq(super::super::JetSeq(512))));
        assert_eq!(r.zstd_dictionary, Some(7));
        assert!(r.filter.wants(DID, Kind::Sync, None) && !r.filter.wants(DID, Kind::Identity, None));
        let t = parse_v2(&q(&[("cursor", "1700000000000000")])).unwrap();
        assert_eq!(t.cursor, Some(V2Cursor::TimeUs(1_700_000_000_000_000)));
        assert!(parse_v2(&q(&[("kinds", "posts")])).is_err());
        assert!(parse_v2(&q(&[("kinds", "identity"), ("collections", "app.bsky.feed.post")])).is_err());
        assert!(parse_v2(&q(&[("zstdDictionary", "0")])).is_err());
        for v1 in ["wantedCollections", "wantedDids", "compress", "requireHello"] {
            assert!(parse_v2(&q(&[(v1, "x")])).unwrap_err().contains("v1"), "{v1}");
        }
    }

    #[test]
    fn options_update_replaces_the_filter_or_changes_nothing() {
        let mut f = parse_v1(&q(&[("wantedCollections", "app.bsky.feed.post")])).unwrap().filter;
        let msg = br#"{"type":"options_update","payload":{"wantedCollections":["app.bsky.feed.like"],"wantedDids":[],"maxMessageSizeBytes":1000}}"#;
        apply_options_update(&mut f, msg).unwrap();
        assert!(f.wants(DID, Kind::Commit, Some("app.bsky.feed.like")));
        assert!(!f.wants(DID, Kind::Commit, Some("app.bsky.feed.post")));
        assert!(f.fits(1000) && !f.fits(1001));
        let before = f.clone();
        assert!(apply_options_update(&mut f, br#"{"type":"options_update","payload":{"wantedDids":["x"]}}"#).is_err());
        assert!(apply_options_update(&mut f, br#"{"type":"hello","payload":{}}"#).is_err());
        assert!(apply_options_update(&mut f, b"not json").is_err());
        assert_eq!(f, before);
        apply_options_update(&mut f, br#"{"type":"options_update","payload":{}}"#).unwrap();
        assert!(f.wants(DID, Kind::Commit, Some("any.thing.here")), "absent lists mean all");
    }
}
