//! [`HostSession`]: everything that decides what is read from a host, decided, handed over to the
//! sequencer, skipped, and where the host's stream resumes, as one state machine without I/O (time is
//! passed in; quinn-proto's shape). The connection code (`ingest::connection`) only drives it:
//! it reads frames and tells the session, runs the decisions the session asks for, and hands over
//! what the session releases.
//!
//! The rules:
//! - Up to [`MAX_DECIDING`] frames are decided at once, at most one per account (frames of one
//!   account share one identity, so deciding them at once gains nothing, and a slow identity then
//!   holds one slot, not the window); the account's later frames wait, read, in memory. At most
//!   [`MAX_OPEN_FRAMES`] frames ([`MAX_OPEN_BYTES`]) are read and not handed over; then the host's
//!   stream pauses.
//! - A decided frame is handed over as soon as every earlier frame of its account was: one account's
//!   events keep the host's order; other accounts do not wait behind it.
//! - Where the host resumes is a [`ResumePoint`]: the highest seq handed over (`high`) and the seqs
//!   below it read and not yet handed over (`holes`, at most [`MAX_OPEN_FRAMES`]). Every hand-over
//!   carries the resume point after it, and the sequencer writes it in the same `WriteBatch` as the
//!   events it covers, so after a crash or a restart exactly the frames that were not handed over
//!   are decided again: the others, above the cursor or not, are skipped. The cursor asked of the
//!   host is below the lowest hole.
//! - Per connection, seqs must increase; a frame at or below the cursor is dropped
//!   (`seq_not_increasing`), one the resume point says was handed over is skipped silently.
//! - A frame that ends the stream (an error frame, broken framing: [`HostSession::end_after`]) lets
//!   the frames read before it finish; the ones read after it are not handed over.
//! - Rate limits ([`RateLimiter`]), reconnect backoff ([`Backoff`]) and the host's status
//!   ([`super::next_host_info`]) live here too, across connections.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use storage::{HostInfo, ResumePoint};
use wire::HostSeq;

use crate::backoff::Backoff;
use crate::hosts::RateLimiter;

/// Most frames of one host decided at once (their identity lookups overlap), each of another account.
pub const MAX_DECIDING: usize = 32;
/// Most frames of one host read and not yet handed over (being decided, or waiting behind an earlier
/// frame of their account). Also the most holes a [`ResumePoint`] holds.
pub const MAX_OPEN_FRAMES: usize = 256;
/// Most bytes of one host's frames read and not yet handed over.
pub const MAX_OPEN_BYTES: usize = 8 * 1024 * 1024;

/// What to do with a frame just read off the socket ([`HostSession::read`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// Decide it now; `u64` is its read index, to give back with [`HostSession::decided`].
    Decide(u64),
    /// Kept: an earlier frame of its account is still being decided. It is handed to the caller to
    /// decide later ([`HostSession::take_started`]).
    Queued(u64),
    /// Handed over on an earlier connection (the resume point says so): skip it, silently.
    Skip,
    /// Its seq is at or below the cursor, or not above the previous one on this connection: drop it
    /// as `seq_not_increasing`.
    Stale,
}

/// A frame released for the sequencer: its verdict and the resume point once it is handed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandOver<T> {
    /// Its read index.
    pub index: u64,
    /// Its seq, when it has one.
    pub seq: Option<HostSeq>,
    /// What was decided.
    pub verdict: T,
    /// Where the host resumes once this frame is handed over (to persist with it).
    pub resume: ResumePoint,
}

#[derive(Debug)]
enum SlotState<T> {
    Queued,
    Deciding,
    Decided(T),
}

#[derive(Debug)]
struct Slot<T> {
    seq: Option<HostSeq>,
    account: Box<str>,
    len: usize,
    state: SlotState<T>,
}

/// The frames of one connection read and not handed over.
#[derive(Debug)]
struct Connection<T> {
    /// The highest seq read on this connection (or the cursor it resumed from).
    last_read: Option<HostSeq>,
    next_index: u64,
    slots: BTreeMap<u64, Slot<T>>,
    /// Per account: read indices of its frames not handed over, in read order.
    accounts: HashMap<Box<str>, VecDeque<u64>>,
    /// Seqs read and not handed over.
    open: BTreeSet<HostSeq>,
    deciding: usize,
    bytes: usize,
    /// Frames whose earlier account frames are all handed over and that are decided.
    ready: VecDeque<u64>,
    /// Frames that became [`SlotState::Deciding`] for the caller to start.
    started: Vec<u64>,
    /// Frames read after this read index are not handed over (the stream ended there).
    cutoff: Option<u64>,
}

impl<T> Connection<T> {
    fn new(resume: Option<&ResumePoint>) -> Self {
        Self {
            last_read: resume.map(ResumePoint::cursor),
            next_index: 0,
            slots: BTreeMap::new(),
            accounts: HashMap::new(),
            open: BTreeSet::new(),
            deciding: 0,
            bytes: 0,
            ready: VecDeque::new(),
            started: Vec::new(),
            cutoff: None,
        }
    }
}

/// One host's session: its resume point, the frames of its current connection, its rate limits,
/// reconnect backoff and status. `T` is what a frame's decision produces (the ingest's verdict); the
/// session stores it and gives it back in order.
#[derive(Debug)]
pub struct HostSession<T> {
    /// Where the host resumes, as handed over (the last [`HandOver::resume`] the sequencer took);
    /// `None` for a host never read (its first connection starts from the live tail).
    resume: Option<ResumePoint>,
    conn: Option<Connection<T>>,
    limiter: RateLimiter,
    backoff: Backoff,
    /// When a frame last had to wait for the rate limit (the host is `throttled` meanwhile).
    last_throttled: Option<Instant>,
    info: HostInfo,
    offline_after: u32,
}

impl<T> HostSession<T> {
    /// A session resuming at `resume` (what the store holds for the host), with its limits, backoff
    /// and last recorded status.
    pub fn new(
        resume: Option<ResumePoint>,
        limiter: RateLimiter,
        backoff: Backoff,
        info: HostInfo,
        offline_after: u32,
    ) -> Self {
        Self { resume, conn: None, limiter, backoff, last_throttled: None, info, offline_after }
    }

    /// The resume point as handed over.
    pub fn resume(&self) -> Option<&ResumePoint> {
        self.resume.as_ref()
    }

    /// The cursor to ask the host for (`subscribeRepos?cursor=`): below every frame not handed over.
    pub fn cursor(&self) -> Option<HostSeq> {
        self.resume.as_ref().map(ResumePoint::cursor)
    }

    /// An operator's cursor reset: the host resumes after `cursor`, everything above it read again.
    pub fn reset(&mut self, cursor: HostSeq) {
        self.resume = Some(ResumePoint::at(cursor));
        self.conn = None;
    }

    /// A new connection begins (the previous one's frames not handed over are forgotten: the resume
    /// point has them as holes or above it, so they are read again).
    pub fn begin(&mut self) {
        self.conn = Some(Connection::new(self.resume.as_ref()));
    }

    /// The connection ended.
    pub fn end(&mut self) {
        self.conn = None;
    }

    /// Whether another frame may be read now (nothing is read while the window is full, which
    /// pauses the host's stream).
    pub fn has_room(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| {
            c.cutoff.is_none()
                && c.deciding < MAX_DECIDING
                && c.slots.len() < MAX_OPEN_FRAMES
                && c.bytes < MAX_OPEN_BYTES
        })
    }

    /// Whether frames read on this connection are still to be decided or handed over.
    pub fn pending(&self) -> usize {
        self.conn.as_ref().map_or(0, |c| c.slots.len())
    }

    /// A frame was read: `seq` as its header gives it (`None` when unreadable), `account` its DID
    /// (`""` for none), `len` its size in bytes.
    pub fn read(&mut self, seq: Option<HostSeq>, account: &str, len: usize) -> Read {
        let resume = self.resume.as_ref();
        let Some(conn) = self.conn.as_mut() else { return Read::Stale };
        if let Some(s) = seq {
            // `last_read` starts at the cursor, which is below every hole.
            if conn.last_read.is_some_and(|last| s <= last) {
                return Read::Stale;
            }
            conn.last_read = Some(s);
            if resume.is_some_and(|r| s <= r.high && !r.holes.contains(&s)) {
                return Read::Skip;
            }
            conn.open.insert(s);
        }
        let index = conn.next_index;
        conn.next_index += 1;
        let chain = conn.accounts.entry(account.into()).or_default();
        let first = chain.is_empty();
        chain.push_back(index);
        let state = if first { SlotState::Deciding } else { SlotState::Queued };
        if first {
            conn.deciding += 1;
        }
        conn.bytes += len;
        conn.slots.insert(index, Slot { seq, account: account.into(), len, state });
        if first { Read::Decide(index) } else { Read::Queued(index) }
    }

    /// Frames that may now be decided (the next frame of an account whose earlier one was handed
    /// over), in read order.
    pub fn take_started(&mut self) -> Vec<u64> {
        self.conn.as_mut().map(|c| std::mem::take(&mut c.started)).unwrap_or_default()
    }

    /// Frame `index` is decided.
    pub fn decided(&mut self, index: u64, verdict: T) {
        let Some(conn) = self.conn.as_mut() else { return };
        let Some(slot) = conn.slots.get_mut(&index) else { return };
        if matches!(slot.state, SlotState::Deciding) {
            conn.deciding -= 1;
        }
        slot.state = SlotState::Decided(verdict);
        let front = conn.accounts.get(&slot.account).and_then(|c| c.front()) == Some(&index);
        if front {
            conn.ready.push_back(index);
        }
    }

    /// The next frame to hand over, if one is ready. Call [`HostSession::handed`] with its resume
    /// point once the sequencer has it.
    pub fn next_ready(&mut self) -> Option<HandOver<T>> {
        let conn = self.conn.as_mut()?;
        let index = loop {
            let index = conn.ready.pop_front()?;
            if conn.cutoff.is_some_and(|c| index > c) {
                // Read after the frame that ended the stream: left for the next connection.
                continue;
            }
            break index;
        };
        let slot = conn.slots.remove(&index)?;
        let SlotState::Decided(verdict) = slot.state else { return None };
        conn.bytes -= slot.len;
        if let Some(s) = slot.seq {
            conn.open.remove(&s);
        }
        if let Some(chain) = conn.accounts.get_mut(&slot.account) {
            chain.pop_front();
            match chain.front().copied() {
                Some(next) => {
                    if let Some(n) = conn.slots.get_mut(&next) {
                        match n.state {
                            SlotState::Queued => {
                                n.state = SlotState::Deciding;
                                conn.deciding += 1;
                                conn.started.push(next);
                            }
                            SlotState::Decided(_) => conn.ready.push_back(next),
                            SlotState::Deciding => {}
                        }
                    }
                }
                None => {
                    conn.accounts.remove(&slot.account);
                }
            }
        }
        let before = self.resume.as_ref();
        let high = match (before.map(|r| r.high), slot.seq) {
            (Some(h), Some(s)) => h.max(s),
            (Some(h), None) => h,
            (None, Some(s)) => s,
            // Nothing read with a seq yet: the resume point stays unknown.
            (None, None) => return Some(HandOver { index, seq: None, verdict, resume: ResumePoint::default() }),
        };
        // Not handed over: the frames of this connection still open below `high`, and the holes of
        // the resume point this connection has not reached yet (read again after a crash).
        let reached = conn.last_read.unwrap_or(HostSeq(0));
        let mut holes: Vec<HostSeq> = conn.open.range(..high).copied().collect();
        holes.extend(before.iter().flat_map(|r| r.holes.iter()).filter(|h| **h > reached && **h < high));
        holes.sort_unstable();
        holes.dedup();
        Some(HandOver { index, seq: slot.seq, verdict, resume: ResumePoint { high, holes } })
    }

    /// The sequencer took the frame handed over with `resume`: the host now resumes there.
    pub fn handed(&mut self, resume: ResumePoint) {
        if resume != ResumePoint::default() || self.resume.is_some() {
            self.resume = Some(resume);
        }
    }

    /// Frame `index` ends the stream (an error frame, broken framing): nothing more is read, frames
    /// read after it are not handed over.
    pub fn end_after(&mut self, index: u64) {
        if let Some(c) = self.conn.as_mut() {
            c.cutoff = Some(c.cutoff.map_or(index, |i| i.min(index)));
        }
    }

    /// Takes one token of the host's rate limit for a frame at `now`: `Ok(())`, or how long to wait
    /// before asking again. The host is throttled from the first wait until frames have passed
    /// without one for [`super::THROTTLE_CLEAR`].
    ///
    /// # Errors
    /// The wait, when a bucket is empty.
    pub fn take_token(&mut self, now: Instant) -> Result<(), Duration> {
        let wait = self.limiter.acquire(now);
        if wait.is_zero() { Ok(()) } else { Err(wait) }
    }

    /// The rate limiter, to rebuild when the host's settings change.
    pub fn limiter_mut(&mut self) -> &mut RateLimiter {
        &mut self.limiter
    }

    /// Records that a frame waited for the rate limit at `now`; `true` when the host just became
    /// throttled.
    pub fn throttled(&mut self, now: Instant) -> bool {
        self.last_throttled.replace(now).is_none()
    }

    /// A frame passed the rate limit without waiting at `now`; `true` when the host stops being
    /// throttled (no wait for [`super::THROTTLE_CLEAR`]).
    pub fn unthrottled(&mut self, now: Instant) -> bool {
        if self.last_throttled.is_some_and(|at| now.saturating_duration_since(at) >= super::THROTTLE_CLEAR) {
            self.last_throttled = None;
            return true;
        }
        false
    }

    /// The host's status record.
    pub fn info(&self) -> HostInfo {
        self.info
    }

    /// Applies a status event at `now_ms`; the new record when it changed (to persist).
    pub fn record(&mut self, event: super::HostEvent, now_ms: u64) -> Option<HostInfo> {
        let next = super::next_host_info(self.info, event, now_ms, self.offline_after);
        (next != self.info).then(|| {
            self.info = next;
            next
        })
    }

    /// How long to wait before the next connection attempt after one that failed or ended; a
    /// connection that delivered frames resets the backoff first.
    pub fn next_delay(&mut self, progressed: bool, offline_retry: Duration) -> Duration {
        if progressed {
            self.backoff.reset();
        }
        let delay = self.backoff.next_delay();
        if self.info.status == wire::HostStatus::Offline { offline_retry } else { delay }
    }
}

/// How long a frame whose identity cannot be fetched waits, by kind of outage: a `did:web` server
/// belongs to one account, so its frame gives up [`DID_WEB_MAX_WAIT`] after its first attempt
/// (wall time, fetch attempts included); the PLC directory serves every account, so its outage is
/// waited out.
pub const DID_WEB_MAX_WAIT: Duration = Duration::from_secs(60);

/// What a frame that has waited since `first` for an unreachable dependency does at `now`: try again
/// after the returned delay (1 s doubling up to 10 s; `attempt` counts from 0), or give up (`None`: a
/// `did:web` whose wait would pass [`DID_WEB_MAX_WAIT`]).
pub fn wait_outage(did_web: bool, first: Instant, now: Instant, attempt: u32) -> Option<Duration> {
    let delay = Duration::from_secs(1).saturating_mul(1u32 << attempt.min(4)).min(Duration::from_secs(10));
    if did_web && now.saturating_duration_since(first) + delay >= DID_WEB_MAX_WAIT {
        return None;
    }
    Some(delay)
}

#[cfg(test)]
mod tests;
