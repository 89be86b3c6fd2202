//! The host session driven step by step without sockets (quinn's `Pair::drive` manner): a simulated
//! host serving frames from a cursor, the session, and a simulated sequencer whose batches become
//! durable (or are lost in a crash). Unit tests pin each rule; the property test drives random
//! interleavings of reads, decisions in any order (slow identities), group commits, reconnects and
//! crashes, and checks that every accepted frame is relayed exactly once and each account's in order.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use storage::{HostInfo, ResumePoint};
use wire::{HostSeq, HostStatus};

use super::*;
use crate::backoff::Backoff;
use crate::hosts::{RateLimiter, RateLimits};

/// What deciding a frame gives: relay it or drop it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Accept,
    Drop,
}

/// One frame of the simulated host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HostFrame {
    seq: u64,
    account: usize,
    fate: Fate,
}

const ACCOUNTS: [&str; 4] = ["did:plc:a", "did:plc:b", "did:plc:c", "did:plc:d"];

fn session(resume: Option<ResumePoint>) -> HostSession<HostFrame> {
    let limits = RateLimits { per_second: 1_000_000, per_hour: 1_000_000_000, per_day: 1_000_000_000 };
    let info = HostInfo { status: HostStatus::Active, last_connected_ms: 0, failures: 0 };
    HostSession::new(
        resume,
        RateLimiter::new(limits, Instant::now()),
        Backoff::new(Duration::from_secs(1), Duration::from_secs(60), 7),
        info,
        8,
    )
}

/// The relay around one host's session: what it read and is deciding, what the sequencer queued and
/// what is durable.
struct Pair {
    host: Vec<HostFrame>,
    session: HostSession<HostFrame>,
    /// The host's next frame on this connection (index into `host`).
    next: usize,
    /// Frames being decided, by read index.
    deciding: BTreeMap<u64, HostFrame>,
    /// Frames waiting for an earlier frame of their account, by read index.
    queued: HashMap<u64, HostFrame>,
    /// Handed over, not yet durable: (accepted frame, resume point after it).
    sequencer: Vec<(Option<HostFrame>, ResumePoint)>,
    /// The resume point as stored.
    stored: Option<ResumePoint>,
    /// Accepted frames as relayed (durable), in relay order.
    relayed: Vec<HostFrame>,
    /// Frames dropped at read time as `seq_not_increasing`.
    stale: usize,
}

impl Pair {
    fn new(host: Vec<HostFrame>) -> Self {
        let mut p = Self {
            host,
            session: session(None),
            next: 0,
            deciding: BTreeMap::new(),
            queued: HashMap::new(),
            sequencer: Vec::new(),
            stored: None,
            relayed: Vec::new(),
            stale: 0,
        };
        p.connect();
        p
    }

    /// A new connection: the host serves every frame after the cursor the session asks for.
    fn connect(&mut self) {
        self.session.begin();
        let cursor = self.session.cursor().map_or(0, |c| c.0);
        self.next = self.host.iter().position(|f| f.seq > cursor).unwrap_or(self.host.len());
        self.deciding.clear();
        self.queued.clear();
    }

    /// Reads the host's next frame, if the session has room. `false` when nothing was read.
    fn read(&mut self) -> bool {
        if !self.session.has_room() {
            return false;
        }
        let Some(frame) = self.host.get(self.next).copied() else { return false };
        self.next += 1;
        match self.session.read(Some(HostSeq(frame.seq)), ACCOUNTS[frame.account], 100) {
            Read::Decide(i) => {
                self.deciding.insert(i, frame);
            }
            Read::Queued(i) => {
                self.queued.insert(i, frame);
            }
            Read::Skip => {}
            Read::Stale => self.stale += 1,
        }
        true
    }

    /// Finishes deciding the `k`-th frame being decided (any order: identities resolve when they
    /// do), and hands over what the session releases.
    fn decide(&mut self, k: usize) -> bool {
        let Some(index) = self.deciding.keys().nth(k % self.deciding.len().max(1)).copied() else { return false };
        let frame = self.deciding.remove(&index).unwrap();
        self.session.decided(index, frame);
        while let Some(h) = self.session.next_ready() {
            let accepted = (h.verdict.fate == Fate::Accept).then_some(h.verdict);
            let moved = self.session.resume() != Some(&h.resume);
            if accepted.is_some() || moved {
                self.sequencer.push((accepted, h.resume.clone()));
            }
            self.session.handed(h.resume);
        }
        for i in self.session.take_started() {
            let frame = self.queued.remove(&i).unwrap();
            self.deciding.insert(i, frame);
        }
        true
    }

    /// A group commit: what the sequencer holds becomes durable, with the last resume point.
    fn commit(&mut self) {
        for (accepted, resume) in self.sequencer.drain(..) {
            self.relayed.extend(accepted);
            self.stored = Some(resume);
        }
    }

    /// A crash: what is not durable is lost; the relay restarts from the store.
    fn crash(&mut self) {
        self.sequencer.clear();
        self.session = session(self.stored.clone());
        self.connect();
    }

    /// The connection drops (the host closed it, an idle timeout): the session stays.
    fn reconnect(&mut self) {
        self.session.end();
        self.connect();
    }

    /// Runs until every frame of the host is read, decided, handed over and durable.
    fn finish(&mut self) {
        for _ in 0..100_000 {
            if self.read() {
                continue;
            }
            if self.decide(0) {
                continue;
            }
            break;
        }
        self.commit();
        assert!(self.deciding.is_empty() && self.queued.is_empty() && self.session.pending() == 0);
    }

    /// Exactly once and each account in order.
    fn check(&self) {
        let accepted: Vec<u64> = self.host.iter().filter(|f| f.fate == Fate::Accept).map(|f| f.seq).collect();
        let mut relayed: Vec<u64> = self.relayed.iter().map(|f| f.seq).collect();
        relayed.sort_unstable();
        assert_eq!(relayed, accepted, "every accepted frame relayed exactly once: {:?}", self.relayed);
        for account in 0..ACCOUNTS.len() {
            let seqs: Vec<u64> = self.relayed.iter().filter(|f| f.account == account).map(|f| f.seq).collect();
            assert!(seqs.windows(2).all(|w| w[0] < w[1]), "account {account} out of order: {seqs:?}");
        }
    }
}

fn frame(seq: u64, account: usize) -> HostFrame {
    HostFrame { seq, account, fate: Fate::Accept }
}

/// The cursor stays below the lowest frame not handed over; other accounts' frames pass it; once
/// the frame is handed over the cursor moves past everything handed over.
#[test]
fn the_cursor_moves_only_past_frames_all_handed_over() {
    let mut p = Pair::new(vec![frame(7, 0), frame(9, 1), frame(11, 1)]);
    p.session.reset(HostSeq(5));
    p.connect();
    assert!(p.read() && p.read() && p.read());
    assert_eq!(p.deciding.len(), 2, "one frame per account is decided at once");
    // Account 1 (seq 9) decides first: handed over, the cursor stays below 7.
    assert!(p.decide(1));
    assert_eq!(p.session.resume().unwrap(), &ResumePoint { high: HostSeq(9), holes: vec![HostSeq(7)] });
    assert_eq!(p.session.cursor(), Some(HostSeq(6)));
    assert_eq!(p.deciding.keys().count(), 2, "seq 11 starts once seq 9 is handed over");
    p.decide(1);
    assert_eq!(p.session.resume().unwrap().holes, vec![HostSeq(7)]);
    p.decide(0);
    assert_eq!(p.session.resume().unwrap(), &ResumePoint::at(HostSeq(11)));
    p.commit();
    assert_eq!(p.relayed.iter().map(|f| f.seq).collect::<Vec<_>>(), [9, 11, 7]);
}

/// After a crash, the frames handed over above the cursor are skipped (the resume point was stored
/// with them), the holes are decided again, and nothing is relayed twice — whatever its type (the
/// old in-memory skip set relayed `#identity`, `#account` and `#sync` twice here).
#[test]
fn a_restart_skips_what_was_handed_over_and_decides_the_holes() {
    let mut p = Pair::new(vec![frame(1, 0), frame(2, 1), frame(3, 2), frame(4, 0)]);
    while p.read() {}
    p.decide(1); // seq 2 (account 1)
    p.decide(1); // seq 3 (account 2)
    p.commit();
    assert_eq!(p.stored, Some(ResumePoint { high: HostSeq(3), holes: vec![HostSeq(1)] }));
    p.crash();
    assert_eq!(p.session.cursor(), Some(HostSeq(0)), "the host is asked from below the hole");
    p.finish();
    p.check();
    assert_eq!(p.relayed.iter().map(|f| f.seq).collect::<Vec<_>>(), [2, 3, 1, 4]);
}

/// Frames the session dropped are handed over too: after a reconnect an older frame of an account
/// whose first decision was a drop is not decided again after the account's newer one (the old skip
/// set only held relayed frames).
#[test]
fn dropped_frames_are_not_decided_again() {
    let host = vec![HostFrame { seq: 1, account: 0, fate: Fate::Drop }, frame(2, 1), frame(3, 0)];
    let mut p = Pair::new(host);
    while p.read() {}
    p.decide(0); // seq 1, dropped
    p.decide(0); // seq 2
    p.decide(0); // seq 3
    p.commit();
    assert_eq!(p.stored, Some(ResumePoint::at(HostSeq(3))));
    p.reconnect();
    p.finish();
    p.check();
}

/// A hole of the stored resume point not read yet on the new connection stays a hole when a lower
/// frame is handed over meanwhile.
#[test]
fn holes_not_reached_yet_are_kept() {
    let mut p = Pair::new((1..=6).map(|s| frame(s, (s % 3) as usize)).collect());
    p.session.reset(HostSeq(0));
    p.stored = Some(ResumePoint { high: HostSeq(6), holes: vec![HostSeq(2), HostSeq(5)] });
    p.relayed = vec![frame(1, 1), frame(3, 0), frame(4, 1), frame(6, 0)];
    p.crash();
    assert!(p.read(), "seq 2");
    assert!(p.decide(0));
    p.commit();
    assert_eq!(p.stored, Some(ResumePoint { high: HostSeq(6), holes: vec![HostSeq(5)] }), "5 not read yet");
    p.crash();
    p.finish();
    p.check();
}

/// One account's frames take one decision slot: a stuck account (a slow `did:web`) does not fill the
/// window; the host's stream pauses only at [`MAX_OPEN_FRAMES`] frames read and not handed over.
#[test]
fn one_account_takes_one_slot_and_the_window_is_bounded() {
    let mut host: Vec<HostFrame> = (1..=100).map(|s| frame(s, 0)).collect();
    host.extend((101..=400).map(|s| frame(s, 1 + (s % 3) as usize)));
    let mut p = Pair::new(host);
    let mut reads = 0;
    while p.read() {
        reads += 1;
        // Every account but the stuck one (account 0, seq 1) is decided as soon as it can be.
        while let Some(k) = p.deciding.iter().position(|(_, f)| f.account != 0) {
            p.decide(k);
        }
    }
    assert_eq!(p.deciding.len(), 1, "only the stuck frame is being decided");
    assert_eq!(p.session.pending(), 100, "account 0's frames wait in memory");
    assert_eq!(reads, 400, "the other accounts' 300 frames passed it");
    assert_eq!(p.session.resume().unwrap().holes.len(), 100);
    let mut stuck: Vec<HostFrame> = (1..=MAX_OPEN_FRAMES as u64 + 10).map(|s| frame(s, 0)).collect();
    stuck.push(frame(10_000, 1));
    let mut p = Pair::new(stuck);
    while p.read() {}
    assert_eq!(p.session.pending(), MAX_OPEN_FRAMES, "then the host pauses");
    p.finish();
    p.check();
}

/// Frames read after one that ends the stream (an error frame, broken framing) are not handed over:
/// the next connection reads them again.
#[test]
fn frames_after_the_end_of_a_stream_are_read_again() {
    let mut p = Pair::new(vec![frame(1, 0), frame(2, 1), frame(3, 2)]);
    while p.read() {}
    let index_of_2 = *p.deciding.iter().find(|(_, f)| f.seq == 2).unwrap().0;
    p.session.end_after(index_of_2);
    assert!(!p.session.has_room(), "nothing more is read");
    while p.decide(0) {}
    p.commit();
    assert_eq!(p.stored, Some(ResumePoint::at(HostSeq(2))), "3 was decided but not handed over");
    p.reconnect();
    p.finish();
    p.check();
}

/// At or below the cursor, or not above the last seq read on the connection: stale.
#[test]
fn stale_seqs_are_counted() {
    let mut p = Pair::new(vec![frame(5, 0), frame(5, 1), frame(4, 1), frame(6, 1)]);
    p.finish();
    assert_eq!(p.stale, 2);
    p.session.reset(HostSeq(10));
    p.session.begin();
    assert_eq!(p.session.read(Some(HostSeq(10)), "did:plc:a", 1), Read::Stale);
    assert!(matches!(p.session.read(Some(HostSeq(11)), "did:plc:a", 1), Read::Decide(_)));
}

/// A `did:web` frame gives up after 60 s of wall time from its first attempt, the directory's
/// outage is waited out; the pause doubles from 1 s to 10 s.
#[test]
fn outages_are_waited_out_with_a_did_web_bound() {
    let first = Instant::now();
    let at = |s| first + Duration::from_secs(s);
    assert_eq!(wait_outage(true, first, at(0), 0), Some(Duration::from_secs(1)));
    assert_eq!(wait_outage(true, first, at(3), 2), Some(Duration::from_secs(4)));
    assert_eq!(wait_outage(true, first, at(30), 9), Some(Duration::from_secs(10)));
    assert_eq!(wait_outage(true, first, at(51), 9), None, "61 s would pass the bound");
    assert_eq!(wait_outage(false, first, at(3_600), 9), Some(Duration::from_secs(10)));
}

#[derive(Debug, Clone)]
enum Step {
    Read,
    Decide(usize),
    Commit,
    Crash,
    Reconnect,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => Just(Step::Read),
        6 => (0usize..8).prop_map(Step::Decide),
        2 => Just(Step::Commit),
        1 => Just(Step::Crash),
        1 => Just(Step::Reconnect),
    ]
}

fn host_frames() -> impl Strategy<Value = Vec<HostFrame>> {
    prop::collection::vec((1u64..4, 0usize..ACCOUNTS.len(), prop::bool::weighted(0.8)), 1..60).prop_map(|v| {
        let mut seq = 0;
        v.into_iter()
            .map(|(gap, account, accept)| {
                seq += gap;
                HostFrame { seq, account, fate: if accept { Fate::Accept } else { Fate::Drop } }
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Random interleavings of reads, decisions in any order, group commits, reconnects and crashes
    /// at any point: after a restart from any stored state, every accepted frame is relayed exactly
    /// once and each account's frames in order.
    #[test]
    fn every_accepted_frame_is_relayed_exactly_once_in_account_order(
        host in host_frames(),
        steps in prop::collection::vec(step(), 0..300),
    ) {
        let mut p = Pair::new(host);
        for s in steps {
            match s {
                Step::Read => { p.read(); }
                Step::Decide(k) => { p.decide(k); }
                Step::Commit => p.commit(),
                Step::Crash => p.crash(),
                Step::Reconnect => p.reconnect(),
            }
        }
        p.finish();
        p.check();
        prop_assert!(p.stored.as_ref().is_some_and(|r| r.holes.is_empty()));
    }
}
