//! A minimal, allocation-free reader of the few fields a subscriber needs from an event-stream frame
//! (`op`, `t`, and the body's `seq`, `repo`/`did`, `rev`, `time`, `error`), so a fleet of thousands of
//! subscribers can check every frame without decoding blocks.

use wire::cbor::item_len;

/// The fields read from one frame.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Scanned<'a> {
    /// Header `op` (1 message, -1 error).
    pub op: i64,
    /// Header `t`.
    pub t: Option<&'a str>,
    /// Body `seq`.
    pub seq: Option<i64>,
    /// Body `repo` (`#commit`) or `did` (others).
    pub repo: Option<&'a str>,
    /// Body `rev`.
    pub rev: Option<&'a str>,
    /// Body `time`.
    pub time: Option<&'a str>,
    /// Body `error` (error frames).
    pub error: Option<&'a str>,
}

fn head(buf: &[u8]) -> Option<(u8, u64, usize)> {
    let first = *buf.first()?;
    let info = first & 0x1f;
    let (arg, len) = match info {
        0..=23 => (u64::from(info), 1),
        24 => (u64::from(*buf.get(1)?), 2),
        25 => (u64::from(u16::from_be_bytes(buf.get(1..3)?.try_into().ok()?)), 3),
        26 => (u64::from(u32::from_be_bytes(buf.get(1..5)?.try_into().ok()?)), 5),
        27 => (u64::from_be_bytes(buf.get(1..9)?.try_into().ok()?), 9),
        _ => return None,
    };
    Some((first >> 5, arg, len))
}

fn text(buf: &[u8]) -> Option<&str> {
    let (major, len, hl) = head(buf)?;
    if major != 3 {
        return None;
    }
    std::str::from_utf8(buf.get(hl..hl + usize::try_from(len).ok()?)?).ok()
}

fn int(buf: &[u8]) -> Option<i64> {
    let (major, arg, _) = head(buf)?;
    match major {
        0 => i64::try_from(arg).ok(),
        1 => i64::try_from(arg).ok().map(|a| -1 - a),
        _ => None,
    }
}

/// Calls `f(key, value_bytes)` for each entry of the map at the start of `buf`; returns the map's
/// length in bytes.
fn each_entry<'a>(buf: &'a [u8], mut f: impl FnMut(&'a str, &'a [u8])) -> Option<usize> {
    let (major, n, mut pos) = head(buf)?;
    if major != 5 {
        return None;
    }
    for _ in 0..n {
        let key_len = item_len(buf.get(pos..)?).ok()?;
        let key = text(buf.get(pos..pos + key_len)?)?;
        pos += key_len;
        let value_len = item_len(buf.get(pos..)?).ok()?;
        f(key, buf.get(pos..pos + value_len)?);
        pos += value_len;
    }
    Some(pos)
}

/// Reads a frame's header and the body fields above; `None` when it is not a frame.
pub fn scan(frame: &[u8]) -> Option<Scanned<'_>> {
    let mut s = Scanned::default();
    let header_len = each_entry(frame, |k, v| match k {
        "op" => s.op = int(v).unwrap_or(0),
        "t" => s.t = text(v),
        _ => {}
    })?;
    each_entry(frame.get(header_len..)?, |k, v| match k {
        "seq" => s.seq = int(v),
        "repo" | "did" => s.repo = text(v),
        "rev" => s.rev = text(v),
        "time" => s.time = text(v),
        "error" => s.error = text(v),
        _ => {}
    })?;
    Some(s)
}

pub use wire::syntax::{datetime_from_unix_us as datetime, unix_us_from_datetime as datetime_us};

/// When the event was due to leave its host (µs since the epoch): its `time`, which the generator
/// sets to the due time with microseconds (and a corpus host stamps at send time); for events
/// without one, the timestamp of its `rev`.
pub fn due_us(s: &Scanned<'_>) -> Option<u64> {
    match (s.time, s.rev) {
        (Some(time), _) => datetime_us(time),
        (None, Some(rev)) => wire::Tid::new(rev).ok().map(|t| t.timestamp_us()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::frame::{ErrorBody, Event, IdentityEvent};

    #[test]
    fn scans_events_and_errors() {
        let ev = Event::Identity(IdentityEvent {
            seq: 42,
            did: wire::Did::new("did:plc:abc").unwrap(),
            time: datetime(1_763_707_722_123_456),
            handle: Some("a.test".into()),
        });
        let bytes = ev.encode().unwrap();
        let s = scan(&bytes).unwrap();
        assert_eq!((s.op, s.t, s.seq, s.repo), (1, Some("#identity"), Some(42), Some("did:plc:abc")));
        assert_eq!(datetime_us(s.time.unwrap()), Some(1_763_707_722_123_456));
        let err = ErrorBody { error: "FutureCursor".into(), message: None }.encode().unwrap();
        let s = scan(&err).unwrap();
        assert_eq!((s.op, s.error), (-1, Some("FutureCursor")));
        assert!(scan(&[0xff]).is_none());
        assert_eq!(datetime_us("1970-01-01T00:00:01Z"), Some(1_000_000));
        assert!(wire::syntax::check_datetime(&datetime(0)).is_ok());
    }
}
