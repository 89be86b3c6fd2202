//! Value encodings of the `repos`, `hosts` and `identities` column families (see the crate docs for
//! the byte tables).

use wire::crypto::{KeyType, PublicKey};
use wire::{AccountStatus, Cid, HostSeq, HostStatus, Tid};

/// What the relay knows of an account: its last relayed commit and its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoState {
    /// The `rev` of the last relayed commit, if any.
    pub rev: Option<Tid>,
    /// CID of that commit object.
    pub commit: Option<Cid>,
    /// CID of its MST root (`data`): the `prevData` the next commit must name.
    pub data: Option<Cid>,
    /// The host the account was last relayed from.
    pub host: String,
    /// The status its host last declared (`#account`).
    pub upstream: AccountStatus,
    /// Taken down on this relay.
    pub taken_down: bool,
    /// Throttled on this relay: the account appeared when its host was at its account limit, so its
    /// events are not relayed until the host has room (see `HostConfig::account_limit`).
    pub throttled: bool,
}

impl RepoState {
    /// A new active account on `host` with no commit yet.
    pub fn new(host: impl Into<String>) -> Self {
        Self {
            rev: None,
            commit: None,
            data: None,
            host: host.into(),
            upstream: AccountStatus::Active,
            taken_down: false,
            throttled: false,
        }
    }

    /// The status the relay serves: `Takendown` when taken down here, `Throttled` when held back by
    /// its host's account limit, else the host's.
    pub fn status(&self) -> AccountStatus {
        if self.taken_down {
            AccountStatus::Takendown
        } else if self.throttled {
            AccountStatus::Throttled
        } else {
            self.upstream
        }
    }
}

/// Where an upstream host's stream resumes: every frame up to `high` was handed over to the sequencer
/// (relayed, or dropped with its reason) except the `holes`, which are read again. Persisted with the
/// events it covers, so a restart relays every frame exactly once (the ingest's `HostSession`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResumePoint {
    /// The highest upstream `seq` handed over.
    pub high: HostSeq,
    /// Seqs below `high` read and not yet handed over, ascending (at most a few hundred: the frames
    /// of a host being decided).
    pub holes: Vec<HostSeq>,
}

impl ResumePoint {
    /// Everything up to `cursor` handed over, nothing above.
    pub fn at(cursor: HostSeq) -> Self {
        Self { high: cursor, holes: Vec::new() }
    }

    /// The cursor to resume from: below the lowest hole, else `high`.
    pub fn cursor(&self) -> HostSeq {
        self.holes.first().map_or(self.high, |h| HostSeq(h.0.saturating_sub(1)))
    }

    /// Whether the frame with `seq` was handed over.
    pub fn is_done(&self, seq: HostSeq) -> bool {
        seq <= self.high && !self.holes.contains(&seq)
    }
}

/// The persisted state of an upstream host (written by the sequencer).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostState {
    /// Where the host's stream resumes (the cursor asked of the host is [`ResumePoint::cursor`]).
    pub resume: ResumePoint,
    /// Accounts the relay has on this host (not deleted); the slots a per-host account limit counts.
    pub account_count: u64,
    /// Valid commits from this host the relay relayed although they did not continue their
    /// account's stored state (Sync 1.1 discontinuities: a host that breaks chains shows here).
    pub discontinuities: u64,
}

/// The connection status of an upstream host (written by its ingest shard).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostInfo {
    /// The status.
    pub status: HostStatus,
    /// Last successful connection, ms since the UNIX epoch; 0 when never.
    pub last_connected_ms: u64,
    /// Consecutive failed connection attempts.
    pub failures: u32,
}

impl HostInfo {
    /// Encodes per the `host_info` byte table.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![self.status.code()];
        out.extend_from_slice(&self.last_connected_ms.to_be_bytes());
        out.extend_from_slice(&self.failures.to_be_bytes());
        out
    }

    /// Decodes per the `host_info` byte table.
    pub fn decode(mut b: &[u8]) -> Option<Self> {
        let status = HostStatus::from_code(*take(&mut b, 1)?.first()?)?;
        let last_connected_ms = take_u64(&mut b)?;
        let failures = u32::from_be_bytes(take(&mut b, 4)?.try_into().ok()?);
        b.is_empty().then_some(Self { status, last_connected_ms, failures })
    }
}

/// How the relay treats an upstream host: set when the host is added (`--host`, `requestCrawl`,
/// `pull-hosts`) and changed only by the operator (admin API). Written under the store's host lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostConfig {
    /// Reached over TLS (`wss://`) rather than plain `ws://`.
    pub tls: bool,
    /// Trusted: a higher account limit and event rate (e.g. the network's own PDS fleet).
    pub trusted: bool,
    /// Banned by an operator: never connected, its `requestCrawl` refused.
    pub banned: bool,
    /// Most accounts the relay takes from this host; accounts past it are throttled.
    pub account_limit: u64,
    /// When the host was added, ms since the UNIX epoch.
    pub added_ms: u64,
}

impl HostConfig {
    /// Encodes per the `host_config` byte table.
    pub fn encode(&self) -> Vec<u8> {
        let flags = u8::from(self.tls) | (u8::from(self.trusted) << 1) | (u8::from(self.banned) << 2);
        let mut out = vec![flags];
        out.extend_from_slice(&self.account_limit.to_be_bytes());
        out.extend_from_slice(&self.added_ms.to_be_bytes());
        out
    }

    /// Decodes per the `host_config` byte table.
    pub fn decode(mut b: &[u8]) -> Option<Self> {
        let flags = *take(&mut b, 1)?.first()?;
        let account_limit = take_u64(&mut b)?;
        let added_ms = take_u64(&mut b)?;
        (b.is_empty() && flags < 8).then_some(Self {
            tls: flags & 1 != 0,
            trusted: flags & 2 != 0,
            banned: flags & 4 != 0,
            account_limit,
            added_ms,
        })
    }
}

/// A cached identity resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityRecord {
    /// When it was fetched, in milliseconds since the UNIX epoch.
    pub fetched_at_ms: u64,
    /// The `#atproto` signing key.
    pub signing_key: PublicKey,
    /// The `#atproto_pds` endpoint, if any.
    pub pds_endpoint: Option<String>,
    /// The claimed handle, if any.
    pub handle: Option<String>,
}

fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    let (head, rest) = b.split_at_checked(n)?;
    *b = rest;
    Some(head)
}

fn take_u64(b: &mut &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(take(b, 8)?.try_into().ok()?))
}

/// A length-prefixed CID; `Some(None)` for length 0.
fn take_cid(b: &mut &[u8]) -> Option<Option<Cid>> {
    let len = *take(b, 1)?.first()?;
    if len == 0 {
        return Some(None);
    }
    Cid::read_bytes(take(b, usize::from(len))?).ok().map(Some)
}

impl RepoState {
    /// Encodes per the `repos` byte table.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(12 + 72 + self.host.len());
        out.push(self.upstream.code());
        out.push(u8::from(self.taken_down) | (u8::from(self.throttled) << 1));
        out.extend_from_slice(&self.rev.as_ref().map_or(0, Tid::to_u64).to_be_bytes());
        for cid in [&self.commit, &self.data] {
            let b = cid.map(|c| c.to_bytes()).unwrap_or_default();
            out.push(b.len() as u8);
            out.extend_from_slice(&b);
        }
        out.extend_from_slice(self.host.as_bytes());
        out
    }

    /// Decodes per the `repos` byte table; `None` when the bytes do not fit it.
    pub fn decode(mut b: &[u8]) -> Option<Self> {
        let upstream = AccountStatus::from_code(*take(&mut b, 1)?.first()?);
        let local = *take(&mut b, 1)?.first()?;
        let (taken_down, throttled) = (local & 1 == 1, local & 2 == 2);
        let rev = match take_u64(&mut b)? {
            0 => None,
            v => Some(Tid::from_u64(v)),
        };
        let commit = take_cid(&mut b)?;
        let data = take_cid(&mut b)?;
        let host = std::str::from_utf8(b).ok()?.to_owned();
        Some(Self { rev, commit, data, host, upstream, taken_down, throttled })
    }
}

impl HostState {
    /// A host resuming after `cursor`, with nothing else known.
    pub fn at(cursor: HostSeq) -> Self {
        Self { resume: ResumePoint::at(cursor), ..Self::default() }
    }

    /// The cursor: every upstream `seq` up to it was handed over.
    pub fn cursor(&self) -> HostSeq {
        self.resume.cursor()
    }

    /// Encodes per the `hosts` byte table (at most [`u16::MAX`] holes are written; the ingest keeps
    /// a few hundred).
    pub fn encode(&self) -> Vec<u8> {
        let holes = self.resume.holes.get(..self.resume.holes.len().min(usize::from(u16::MAX))).unwrap_or_default();
        let mut out = Vec::with_capacity(34 + 8 * holes.len());
        out.extend_from_slice(&self.cursor().0.to_be_bytes());
        out.extend_from_slice(&self.account_count.to_be_bytes());
        out.extend_from_slice(&self.discontinuities.to_be_bytes());
        out.extend_from_slice(&self.resume.high.0.to_be_bytes());
        out.extend_from_slice(&(holes.len() as u16).to_be_bytes());
        for h in holes {
            out.extend_from_slice(&h.0.to_be_bytes());
        }
        out
    }

    /// Decodes per the `hosts` byte table. Values written by earlier versions are read too: without
    /// the discontinuity count (0) and without the resume point (resume after the cursor).
    pub fn decode(mut b: &[u8]) -> Option<Self> {
        let cursor = HostSeq(take_u64(&mut b)?);
        let account_count = take_u64(&mut b)?;
        let discontinuities = if b.is_empty() { 0 } else { take_u64(&mut b)? };
        let resume = if b.is_empty() {
            ResumePoint::at(cursor)
        } else {
            let high = HostSeq(take_u64(&mut b)?);
            let n = u16::from_be_bytes(take(&mut b, 2)?.try_into().ok()?);
            let holes = (0..n).map(|_| take_u64(&mut b).map(HostSeq)).collect::<Option<Vec<_>>>()?;
            ResumePoint { high, holes }
        };
        b.is_empty().then_some(Self { resume, account_count, discontinuities })
    }
}

impl IdentityRecord {
    /// Encodes per the `identities` byte table.
    pub fn encode(&self) -> Vec<u8> {
        let endpoint = self.pds_endpoint.as_deref().unwrap_or("");
        let handle = self.handle.as_deref().unwrap_or("");
        let mut out = Vec::with_capacity(44 + endpoint.len() + handle.len());
        out.extend_from_slice(&self.fetched_at_ms.to_be_bytes());
        out.push(match self.signing_key.key_type() {
            KeyType::K256 => 1,
            KeyType::P256 => 2,
        });
        out.extend_from_slice(&self.signing_key.to_compressed());
        let elen = u16::try_from(endpoint.len()).unwrap_or(0);
        out.extend_from_slice(&elen.to_be_bytes());
        out.extend_from_slice(endpoint.as_bytes().get(..usize::from(elen)).unwrap_or_default());
        out.extend_from_slice(handle.as_bytes());
        out
    }

    /// Decodes per the `identities` byte table.
    pub fn decode(mut b: &[u8]) -> Option<Self> {
        let fetched_at_ms = take_u64(&mut b)?;
        let kind = match take(&mut b, 1)?.first()? {
            1 => KeyType::K256,
            2 => KeyType::P256,
            _ => return None,
        };
        let signing_key = PublicKey::from_sec1(kind, take(&mut b, 33)?).ok()?;
        let elen = u16::from_be_bytes(take(&mut b, 2)?.try_into().ok()?);
        let endpoint = std::str::from_utf8(take(&mut b, usize::from(elen))?).ok()?;
        let handle = std::str::from_utf8(b).ok()?;
        let some = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        Some(Self { fetched_at_ms, signing_key, pds_endpoint: some(endpoint), handle: some(handle) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let cid = wire::car::cid_for(wire::car::CODEC_DAG_CBOR, b"x");
        let repo = RepoState {
            rev: Some(Tid::new("3n2senwrdcs2x").unwrap()),
            commit: Some(cid),
            data: Some(wire::car::cid_for(wire::car::CODEC_DAG_CBOR, b"y")),
            host: "localhost:2583".into(),
            upstream: AccountStatus::Suspended,
            taken_down: true,
            throttled: true,
        };
        assert_eq!(RepoState::decode(&repo.encode()), Some(repo.clone()));
        assert_eq!(RepoState::decode(&repo.encode()[..20]), None);
        let fresh = RepoState::new("h");
        assert_eq!(RepoState::decode(&fresh.encode()), Some(fresh));

        let host = HostState {
            resume: ResumePoint { high: HostSeq(50), holes: vec![HostSeq(43), HostSeq(47)] },
            account_count: 7,
            discontinuities: 3,
        };
        assert_eq!(host.cursor(), HostSeq(42));
        assert_eq!(HostState::decode(&host.encode()), Some(host.clone()));
        // Values of earlier versions: no discontinuity count, no resume point.
        let older = &host.encode()[..16];
        assert_eq!(HostState::decode(older), Some(HostState { account_count: 7, ..HostState::at(HostSeq(42)) }));
        let old = &host.encode()[..24];
        assert_eq!(
            HostState::decode(old).map(|h| (h.discontinuities, h.resume)),
            Some((3, ResumePoint::at(HostSeq(42))))
        );
        let mut cut = host.encode();
        cut.pop();
        assert_eq!(HostState::decode(&cut), None, "a hole cut short");
        let info = HostInfo { status: HostStatus::Offline, last_connected_ms: 9, failures: 3 };
        assert_eq!(HostInfo::decode(&info.encode()), Some(info));
        let config = HostConfig { tls: true, trusted: false, banned: true, account_limit: 100, added_ms: 5 };
        assert_eq!(HostConfig::decode(&config.encode()), Some(config));
        assert_eq!(HostConfig::decode(&[8; 17]), None);

        let key = PublicKey::from_did_key("did:key:zDnaembgSGUhZULN2Caob4HLJPaxBh92N7rtH21TErzqf8HQo").unwrap();
        for (ep, h) in [(Some("http://localhost:2583".to_owned()), Some("a.test".to_owned())), (None, None)] {
            let id = IdentityRecord { fetched_at_ms: 7, signing_key: key.clone(), pds_endpoint: ep, handle: h };
            assert_eq!(IdentityRecord::decode(&id.encode()), Some(id));
        }
    }
}
