//! Identifier syntax: [`Did`], [`Tid`], [`Nsid`], [`Hostname`], and the two sequence-number types
//! [`HostSeq`] and [`RelaySeq`].
//!
//! Each string type is a validated newtype: constructing one checks the syntax from the atproto specs
//! (<https://atproto.com/specs/did>, <https://atproto.com/specs/tid>, <https://atproto.com/specs/nsid>),
//! so code holding a `Did` never re-checks it.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A syntax error in an identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyntaxError {
    /// The string is not a DID per <https://atproto.com/specs/did#at-protocol-did-identifier-syntax>.
    #[error("invalid DID syntax")]
    Did,
    /// The string is not a 13-character TID per <https://atproto.com/specs/tid>.
    #[error("invalid TID syntax")]
    Tid,
    /// The string is not an NSID per <https://atproto.com/specs/nsid>.
    #[error("invalid NSID syntax")]
    Nsid,
    /// The string is not a hostname with an optional `:port`.
    #[error("invalid hostname")]
    Hostname,
    /// The string is not an atproto datetime per <https://atproto.com/specs/lexicon#datetime>.
    #[error("invalid datetime")]
    Datetime,
    /// The string is not a handle per <https://atproto.com/specs/handle>.
    #[error("invalid handle syntax")]
    Handle,
    /// The string is not a record key per <https://atproto.com/specs/record-key>.
    #[error("invalid record key syntax")]
    RecordKey,
    /// The string is not a repository path `<collection NSID>/<record key>`
    /// (<https://atproto.com/specs/repository#repo-data-structure-v3>).
    #[error("invalid repository path")]
    RepoPath,
}

/// Formats microseconds since the UNIX epoch as an atproto datetime in UTC with microseconds, e.g.
/// `2026-11-21T06:48:42.123456Z`.
pub fn datetime_from_unix_us(us: u64) -> String {
    let secs = us / 1_000_000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z", rem / 3600, rem % 3600 / 60, rem % 60, us % 1_000_000)
}

/// Microseconds since the UNIX epoch of an atproto datetime with a `Z` offset (fractions beyond
/// microseconds are cut); `None` for other offsets or invalid syntax.
pub fn unix_us_from_datetime(s: &str) -> Option<u64> {
    check_datetime(s).ok()?;
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> { std::str::from_utf8(b.get(r)?).ok()?.parse().ok() };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let frac = s.get(19..)?.strip_suffix('Z')?;
    let micros = match frac.strip_prefix('.') {
        Some(f) => format!("{f:0<6}").get(..6)?.parse::<i64>().ok()?,
        None => 0,
    };
    // Days from civil (H. Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from((days * 86_400 + h * 3600 + mi * 60 + sec) * 1_000_000 + micros).ok()
}

/// Checks atproto datetime syntax (<https://atproto.com/specs/lexicon#datetime>): RFC 3339
/// `YYYY-MM-DDTHH:MM:SS`, optional fractional seconds, then `Z` or a `±HH:MM` offset other than
/// `-00:00`; uppercase `T` and `Z`; fields in range.
///
/// # Errors
/// [`SyntaxError::Datetime`].
pub fn check_datetime(s: &str) -> Result<(), SyntaxError> {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| -> Option<u32> {
        let part = b.get(r)?;
        if part.iter().all(u8::is_ascii_digit) {
            Some(part.iter().fold(0, |acc, d| acc * 10 + u32::from(d - b'0')))
        } else {
            None
        }
    };
    let fixed = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')];
    if fixed.iter().any(|(i, c)| b.get(*i) != Some(c)) {
        return Err(SyntaxError::Datetime);
    }
    let fields = (digits(0..4), digits(5..7), digits(8..10), digits(11..13), digits(14..16), digits(17..19));
    let (Some(_), Some(mo), Some(d), Some(h), Some(mi), Some(sec)) = fields else {
        return Err(SyntaxError::Datetime);
    };
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return Err(SyntaxError::Datetime);
    }
    let mut rest = b.get(19..).unwrap_or_default();
    if let Some(frac) = rest.strip_prefix(b".") {
        let n = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return Err(SyntaxError::Datetime);
        }
        rest = frac.get(n..).unwrap_or_default();
    }
    match rest {
        b"Z" => Ok(()),
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let all_digits = [h1, h2, m1, m2].iter().all(|c| c.is_ascii_digit());
            let negative_zero = *sign == b'-' && [h1, h2, m1, m2].iter().all(|c| **c == b'0');
            if all_digits && !negative_zero { Ok(()) } else { Err(SyntaxError::Datetime) }
        }
        _ => Err(SyntaxError::Datetime),
    }
}

macro_rules! string_newtype {
    ($name:ident, $check:path) => {
        impl $name {
            /// Validates `s` and wraps it.
            ///
            /// # Errors
            /// Returns the matching [`SyntaxError`] variant when `s` is not valid syntax.
            pub fn new(s: impl Into<String>) -> Result<Self, SyntaxError> {
                let s = s.into();
                $check(&s)?;
                Ok(Self(s))
            }

            /// The identifier as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = SyntaxError;
            fn from_str(s: &str) -> Result<Self, SyntaxError> {
                Self::new(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let s = String::deserialize(deserializer)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

/// A decentralized identifier, e.g. `did:plc:7iza6de2dwap2sbkpav7c6c6`.
///
/// Syntax per <https://atproto.com/specs/did>: `did:` + lowercase method + `:` + method-specific id of
/// `[a-zA-Z0-9._:%-]` not ending in `:` or `%`; at most 2,048 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Did(String);
string_newtype!(Did, check_did);

/// Maximum length of a DID in bytes (<https://atproto.com/specs/did>).
pub const DID_MAX_LEN: usize = 2048;

fn check_did(s: &str) -> Result<(), SyntaxError> {
    let rest = s.strip_prefix("did:").ok_or(SyntaxError::Did)?;
    if s.len() > DID_MAX_LEN {
        return Err(SyntaxError::Did);
    }
    let (method, id) = rest.split_once(':').ok_or(SyntaxError::Did)?;
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_lowercase()) {
        return Err(SyntaxError::Did);
    }
    let ok_char = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'%' | b'-');
    match id.as_bytes().last() {
        None | Some(b':') | Some(b'%') => return Err(SyntaxError::Did),
        Some(_) => {}
    }
    if id.bytes().all(ok_char) { Ok(()) } else { Err(SyntaxError::Did) }
}

impl Did {
    /// The DID method, e.g. `plc` for `did:plc:…`.
    pub fn method(&self) -> &str {
        self.0.get(4..).and_then(|r| r.split(':').next()).unwrap_or("")
    }
}

/// The base32-sortable alphabet of TIDs (<https://atproto.com/specs/tid>).
const TID_ALPHABET: &[u8; 32] = b"234567abcdefghijklmnopqrstuvwxyz";

/// A timestamp identifier: 13 characters of base32-sortable encoding a 64-bit integer whose top bit is
/// zero (53 bits of microseconds since the UNIX epoch, 10 bits of clock id).
///
/// Used for a repo's `rev`. Syntax per <https://atproto.com/specs/tid>. Lexicographic order of the
/// string equals numeric order of [`Tid::to_u64`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tid(String);
string_newtype!(Tid, check_tid);

fn tid_digit(b: u8) -> Option<u64> {
    TID_ALPHABET.iter().position(|&c| c == b).map(|p| p as u64)
}

fn check_tid(s: &str) -> Result<(), SyntaxError> {
    let b = s.as_bytes();
    if b.len() != 13 {
        return Err(SyntaxError::Tid);
    }
    // The first character carries the top bit, which must be zero: only the first 16 symbols.
    match b.first().and_then(|&c| tid_digit(c)) {
        Some(d) if d < 16 => {}
        _ => return Err(SyntaxError::Tid),
    }
    if b.iter().all(|&c| tid_digit(c).is_some()) { Ok(()) } else { Err(SyntaxError::Tid) }
}

impl Tid {
    /// The 64-bit integer the TID encodes (top bit always zero).
    pub fn to_u64(&self) -> u64 {
        self.0.bytes().fold(0u64, |acc, c| (acc << 5) | tid_digit(c).unwrap_or(0))
    }

    /// Encodes a 63-bit integer as a TID. The top bit of `v` is cleared.
    pub fn from_u64(v: u64) -> Self {
        let v = v & (u64::MAX >> 1);
        let mut s = String::with_capacity(13);
        for i in (0..13).rev() {
            let d = ((v >> (5 * i)) & 31) as usize;
            s.push(char::from(TID_ALPHABET.get(d).copied().unwrap_or(b'2')));
        }
        Self(s)
    }

    /// The microseconds-since-epoch part of the TID (the top 53 bits below the zero bit).
    pub fn timestamp_us(&self) -> u64 {
        self.to_u64() >> 10
    }
}

/// A namespaced identifier, e.g. `com.atproto.sync.subscribeRepos`.
///
/// Syntax per <https://atproto.com/specs/nsid>: at least three `.`-separated segments, at most 317
/// characters; domain-authority segments of 1-63 `[a-zA-Z0-9-]` not starting or ending with `-`, the
/// first one not starting with a digit; the final name segment `[a-zA-Z][a-zA-Z0-9]{0,62}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Nsid(String);
string_newtype!(Nsid, check_nsid);

fn check_nsid(s: &str) -> Result<(), SyntaxError> {
    if s.len() > 317 {
        return Err(SyntaxError::Nsid);
    }
    let segments: Vec<&str> = s.split('.').collect();
    let Some((name, authority)) = segments.split_last() else {
        return Err(SyntaxError::Nsid);
    };
    if authority.len() < 2 {
        return Err(SyntaxError::Nsid);
    }
    for (i, seg) in authority.iter().enumerate() {
        let b = seg.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 63
            && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
            && b.first() != Some(&b'-')
            && b.last() != Some(&b'-')
            && !(i == 0 && b.first().is_some_and(u8::is_ascii_digit));
        if !ok {
            return Err(SyntaxError::Nsid);
        }
    }
    let nb = name.as_bytes();
    let ok = !nb.is_empty()
        && nb.len() <= 63
        && nb.first().is_some_and(u8::is_ascii_alphabetic)
        && nb.iter().all(u8::is_ascii_alphanumeric);
    if ok { Ok(()) } else { Err(SyntaxError::Nsid) }
}

/// A handle, e.g. `alice.bsky.social`, as its syntax is written (case is kept; compare handles
/// lowercased).
///
/// Syntax per <https://atproto.com/specs/handle>: at most 253 characters; two or more `.`-separated
/// labels of 1-63 `[a-zA-Z0-9-]`, none starting or ending with `-`; the last label (the TLD) does not
/// start with a digit. [`Handle::has_allowed_tld`] applies the spec's list of disallowed TLDs, which is
/// not part of the syntax.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Handle(String);
string_newtype!(Handle, check_handle);

fn check_handle(s: &str) -> Result<(), SyntaxError> {
    if s.is_empty() || s.len() > 253 {
        return Err(SyntaxError::Handle);
    }
    let labels: Vec<&str> = s.split('.').collect();
    if labels.len() < 2 {
        return Err(SyntaxError::Handle);
    }
    for label in &labels {
        let b = label.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 63
            && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
            && b.first() != Some(&b'-')
            && b.last() != Some(&b'-');
        if !ok {
            return Err(SyntaxError::Handle);
        }
    }
    if labels.last().and_then(|tld| tld.bytes().next()).is_some_and(|c| c.is_ascii_digit()) {
        return Err(SyntaxError::Handle);
    }
    Ok(())
}

/// Top-level domains <https://atproto.com/specs/handle> says must not be used in handles ("these
/// TLDs are disallowed"): `.alt`, `.arpa`, `.example`, `.internal`, `.invalid`, `.local`, `.localhost`
/// and `.onion`. (`.test` is for development; the spec lets services refuse it in production.)
pub const DISALLOWED_HANDLE_TLDS: [&str; 8] =
    ["alt", "arpa", "example", "internal", "invalid", "local", "localhost", "onion"];

impl Handle {
    /// Whether the handle's TLD is not one of [`DISALLOWED_HANDLE_TLDS`] (compared lowercased).
    pub fn has_allowed_tld(&self) -> bool {
        let tld = self.0.rsplit('.').next().unwrap_or("").to_ascii_lowercase();
        !DISALLOWED_HANDLE_TLDS.contains(&tld.as_str())
    }
}

/// A record key, e.g. `3jzfcijpj2z2a` or `self`.
///
/// Syntax per <https://atproto.com/specs/record-key>: 1-512 characters of `[a-zA-Z0-9_~.:-]`, and not
/// `.` or `..`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordKey(String);
string_newtype!(RecordKey, check_record_key);

fn check_record_key(s: &str) -> Result<(), SyntaxError> {
    let ok_char = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'~' | b'.' | b':' | b'-');
    if s.is_empty() || s.len() > 512 || s == "." || s == ".." || !s.bytes().all(ok_char) {
        return Err(SyntaxError::RecordKey);
    }
    Ok(())
}

/// Checks a repository path (an MST key, an op's `path`): exactly `<collection>/<rkey>`, a valid
/// [`Nsid`] and a valid [`RecordKey`]. <https://atproto.com/specs/repository>, "Repo Data Structure
/// (v3)": "The MST key is the collection NSID and record key, separated by a slash (`/`)". Returns
/// the two parts.
///
/// # Errors
/// [`SyntaxError::RepoPath`].
pub fn check_repo_path(path: &str) -> Result<(&str, &str), SyntaxError> {
    let (collection, rkey) = path.split_once('/').ok_or(SyntaxError::RepoPath)?;
    if check_nsid(collection).is_err() || check_record_key(rkey).is_err() {
        return Err(SyntaxError::RepoPath);
    }
    Ok((collection, rkey))
}

/// An upstream host: a DNS hostname with an optional `:port`, lowercased, e.g. `pds.example.com` or
/// `localhost:2583`.
///
/// Labels are 1-63 characters of `[a-z0-9-]`, not starting or ending with `-`; the name is at most 253
/// characters. IP literals are not hostnames here (the relay addresses hosts by name, as indigo does).
/// The port, when given, is 1-65535.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hostname(String);
string_newtype!(Hostname, check_hostname);

fn check_hostname(s: &str) -> Result<(), SyntaxError> {
    let (name, port) = match s.rsplit_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (s, None),
    };
    if let Some(p) = port {
        match p.parse::<u16>() {
            Ok(n) if n > 0 && !p.starts_with('0') => {}
            _ => return Err(SyntaxError::Hostname),
        }
    }
    if name.is_empty() || name.len() > 253 {
        return Err(SyntaxError::Hostname);
    }
    for label in name.split('.') {
        let b = label.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 63
            && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
            && b.first() != Some(&b'-')
            && b.last() != Some(&b'-');
        if !ok {
            return Err(SyntaxError::Hostname);
        }
    }
    // The last label must not be all digits: that would be an IPv4 literal, not a name.
    if name.rsplit('.').next().is_some_and(|tld| tld.bytes().all(|c| c.is_ascii_digit())) {
        return Err(SyntaxError::Hostname);
    }
    Ok(())
}

impl Hostname {
    /// Parses a host as an operator or a DID document writes it, lowercasing it first.
    ///
    /// # Errors
    /// [`SyntaxError::Hostname`] when the lowercased string is not a hostname.
    pub fn parse_lenient(s: &str) -> Result<Self, SyntaxError> {
        Self::new(s.trim().to_ascii_lowercase())
    }

    /// The name without the port.
    pub fn name(&self) -> &str {
        self.0.rsplit_once(':').map_or(&self.0, |(n, _)| n)
    }

    /// The explicit port, if any.
    pub fn port(&self) -> Option<u16> {
        self.0.rsplit_once(':').and_then(|(_, p)| p.parse().ok())
    }

    /// The same host without an explicit `:443` (the default TLS port), so `pds.example.com:443` and
    /// `pds.example.com` are one host; any other port is kept.
    pub fn without_tls_port(self) -> Self {
        match self.port() {
            Some(443) => Self(self.name().to_owned()),
            _ => self,
        }
    }

    /// Whether the name is `localhost` or a subdomain of it (RFC 6761): such hosts are reached over
    /// plain `ws://`.
    pub fn is_localhost(&self) -> bool {
        let n = self.name();
        n == "localhost" || n.ends_with(".localhost")
    }
}

/// A sequence number assigned by an upstream host (the `seq` of the frames it sends).
///
/// Valid values are 0..=2^63-1 (lexicon `integer`, non-negative). Only compared per host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct HostSeq(pub u64);

/// A sequence number assigned by this relay: one global, strictly increasing sequence starting at 1.
///
/// This is the `seq` of every frame the relay serves and the key of the `events` column family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RelaySeq(pub u64);

impl fmt::Display for HostSeq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for RelaySeq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tid_round_trips_through_u64() {
        let t = Tid::new("3jzfcijpj2z2a").unwrap();
        assert_eq!(Tid::from_u64(t.to_u64()), t);
        let a = Tid::new("3n2senwrdcs2x").unwrap();
        let b = Tid::new("3n2senxsdxc2x").unwrap();
        assert!(a < b && a.to_u64() < b.to_u64());
    }

    #[test]
    fn hostnames() {
        for ok in ["localhost", "localhost:2583", "pds.example.com", "a-b.c0.org:443"] {
            assert!(Hostname::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Localhost",
            "a..b",
            "-a.com",
            "a-.com",
            "1.2.3.4",
            "x.com:0",
            "x.com:99999",
            "x.com:",
            "x_y.com",
            "x.com:080",
        ] {
            assert!(Hostname::new(bad).is_err(), "{bad}");
        }
        let h = Hostname::new("localhost:2583").unwrap();
        assert_eq!((h.name(), h.port(), h.is_localhost()), ("localhost", Some(2583), true));
        assert_eq!(h.clone().without_tls_port(), h);
        assert_eq!(Hostname::new("x.com:443").unwrap().without_tls_port().as_str(), "x.com");
    }

    #[test]
    fn datetimes_round_trip() {
        for us in [0, 951_782_400_000_000, 1_763_707_722_123_456, 4_102_444_800_000_001] {
            let s = datetime_from_unix_us(us);
            assert!(check_datetime(&s).is_ok(), "{s}");
            assert_eq!(unix_us_from_datetime(&s), Some(us), "{s}");
        }
        assert_eq!(datetime_from_unix_us(951_782_400_000_000), "2000-02-29T00:00:00.000000Z");
        assert_eq!(unix_us_from_datetime("1970-01-01T00:00:01Z"), Some(1_000_000));
        assert_eq!(unix_us_from_datetime("1970-01-01T00:00:01+01:00"), None);
    }

    #[test]
    fn did_method() {
        assert_eq!(Did::new("did:plc:abc").unwrap().method(), "plc");
    }
}
