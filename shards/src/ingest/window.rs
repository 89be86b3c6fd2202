//! Frames of one upstream connection read and not yet handed over to the sequencer: up to
//! [`DECIDE_WINDOW`] of them are decided at once (their identity lookups overlap), and each is handed
//! over as soon as the frames of its account read before it were, so one account's events keep the
//! host's order while a cold or slow identity holds only its own account. The host's cursor moves
//! only past frames that were all handed over.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use wire::frame::Frame;
use wire::{HostSeq, Hostname};

use super::connection::{ReadOutcome, count_frame};
use super::{HostHandle, Shard, process};
use crate::messages::IngestMsg;

/// Most frames of one host read and not yet handed over: their identity lookups (a cold cache, a slow
/// `did:web` server) overlap instead of queueing behind each other.
pub(super) const DECIDE_WINDOW: usize = 32;
/// Most bytes of one host's frames read and not yet handed over (a few large frames fill the window
/// early).
pub(super) const DECIDE_WINDOW_BYTES: usize = 8 * 1024 * 1024;

/// A frame whose fate is decided, waiting to be handed over.
pub(super) struct Decided {
    /// Its place in the order frames were read.
    pub(super) index: u64,
    /// Its account (`""` for frames without one).
    pub(super) account: Box<str>,
    /// Its `seq`, when it has one.
    pub(super) seq: Option<HostSeq>,
    /// Its size in bytes.
    pub(super) len: usize,
    /// What to do with it.
    pub(super) verdict: process::Verdict,
}

/// Frames of one connection read and not yet handed over. Frames of different accounts are decided
/// at once and handed over as soon as they are decided; frames of one account are handed over in
/// the order they were read. The host's cursor only moves past frames that were all handed over.
#[derive(Default)]
pub(super) struct Window {
    /// Per account: read indices of its frames not yet handed over, in read order.
    chains: HashMap<Box<str>, VecDeque<u64>>,
    /// Decided frames waiting for an earlier frame of their account, by read index.
    parked: HashMap<u64, Decided>,
    /// `seq`s of frames read and not yet handed over.
    open: BTreeSet<HostSeq>,
    /// The highest `seq` read on this connection (per-socket order).
    last_read: Option<HostSeq>,
    /// The read index of the next frame.
    next_index: u64,
    /// Frames read and not yet handed over.
    frames: usize,
    /// Their bytes.
    bytes: usize,
    /// A frame that ends the connection (an error frame, broken framing) was handed over: frames
    /// read after it (read index above this) are not handed over, so the cursor stays below them.
    cutoff: Option<u64>,
    /// How the connection ends once the frames read before [`Window::cutoff`] are settled.
    pub(super) closing: Option<ReadOutcome>,
}

impl Window {
    /// An empty window on a connection resuming after `cursor`.
    pub(super) fn new(cursor: Option<HostSeq>) -> Self {
        Self { last_read: cursor, ..Self::default() }
    }

    /// The highest `seq` read on this connection (or the cursor it resumed from).
    pub(super) fn last_read(&self) -> Option<HostSeq> {
        self.last_read
    }

    /// Takes in a frame just read (its `seq` above [`Window::last_read`], when it has one); returns
    /// its read index.
    pub(super) fn admit(&mut self, seq: Option<HostSeq>, account: &str, len: usize) -> u64 {
        if let Some(s) = seq {
            self.last_read = Some(s);
            self.open.insert(s);
        }
        let index = self.next_index;
        self.next_index += 1;
        self.chains.entry(account.into()).or_default().push_back(index);
        self.frames += 1;
        self.bytes += len;
        index
    }

    /// Whether another frame may be read.
    pub(super) fn has_room(&self) -> bool {
        self.frames < DECIDE_WINDOW && self.bytes < DECIDE_WINDOW_BYTES && self.closing.is_none()
    }

    /// Where the host's cursor may move: below the lowest frame not yet handed over, else the last
    /// frame read; never below `current`.
    fn cursor(&self, current: Option<HostSeq>) -> Option<HostSeq> {
        let safe = match self.open.first() {
            Some(lowest) => (lowest.0 > 0).then(|| HostSeq(lowest.0 - 1)),
            None => self.last_read,
        };
        safe.max(current)
    }
}

/// Hands over `d` if it is the next frame of its account, then any frames of that account it held
/// back; otherwise parks it. `Ok(true)` when something reached the sequencer.
pub(super) async fn settle(
    shard: &Shard,
    host: &Hostname,
    label: &Arc<str>,
    handle: &HostHandle,
    window: &mut Window,
    d: Decided,
) -> Result<bool, ReadOutcome> {
    let is_next = window.chains.get(&d.account).and_then(|c| c.front()) == Some(&d.index);
    if !is_next {
        window.parked.insert(d.index, d);
        return Ok(false);
    }
    let account = d.account.clone();
    let mut sent = false;
    let mut next = Some(d);
    while let Some(d) = next.take() {
        if let Some(chain) = window.chains.get_mut(&account) {
            chain.pop_front();
            match chain.front() {
                Some(i) => next = window.parked.remove(i),
                None => {
                    window.chains.remove(&account);
                }
            }
        }
        sent |= hand_over(shard, host, label, handle, window, d).await?;
    }
    Ok(sent)
}

/// Hands one decided frame to the sequencer with the cursor the host may move to. `Ok(true)` when
/// something was sent.
async fn hand_over(
    shard: &Shard,
    host: &Hostname,
    label: &Arc<str>,
    handle: &HostHandle,
    window: &mut Window,
    d: Decided,
) -> Result<bool, ReadOutcome> {
    if window.cutoff.is_some_and(|c| d.index > c) {
        // Read after a frame that ended the stream: left for the next connection.
        return Ok(false);
    }
    window.frames -= 1;
    window.bytes -= d.len;
    if let Some(s) = d.seq {
        window.open.remove(&s);
    }
    let before = handle.cursor.get();
    let cursor = window.cursor(before);
    count_frame(shard, host, &d.verdict);
    let index = d.index;
    // The connection ends once the frames read before this one are settled (and the cursor moved
    // past it, when its seq could be read).
    let mut then_close = None;
    let msg = match d.verdict {
        process::Verdict::Accept(mut ev) => {
            ev.cursor = cursor.unwrap_or(HostSeq(0));
            IngestMsg::Event(ev)
        }
        verdict @ (process::Verdict::Drop(..) | process::Verdict::Broken(_)) => {
            if matches!(verdict, process::Verdict::Broken(_)) {
                then_close = Some(ReadOutcome::Closed { progressed: false, reason: "malformed_frame" });
            }
            if let Some(outcome) = then_close.take() {
                window.cutoff = Some(index);
                window.closing = Some(outcome);
            }
            match cursor {
                Some(c) if cursor > before => IngestMsg::Cursor { host: Arc::clone(label), seq: c },
                _ => return Ok(false),
            }
        }
        process::Verdict::Info(Frame::Error(e)) if e.error == "FutureCursor" => return Err(ReadOutcome::FutureCursor),
        // <https://atproto.com/specs/event-stream>: "Streams should be closed immediately following
        // transmitting or receiving an error frame." Reconnected with backoff.
        process::Verdict::Info(Frame::Error(_)) => {
            window.cutoff = Some(index);
            window.closing = Some(ReadOutcome::Closed { progressed: false, reason: "error_frame" });
            return Ok(false);
        }
        process::Verdict::Info(frame) => {
            tracing::info!(host = %host, ?frame, "host sent an info frame");
            return Ok(false);
        }
        // `decide` waits these out.
        process::Verdict::Wait(..) => return Ok(false),
    };
    let ahead = match &msg {
        IngestMsg::Event(ev) => Some(ev.host_seq).filter(|s| cursor.is_none_or(|c| *s > c)),
        _ => None,
    };
    if shard.to_sequencer.send(msg).await.is_err() {
        return Err(ReadOutcome::SequencerGone);
    }
    shard.metrics.ingest_queue_depth.inc();
    // Only once the sequencer has it: a task aborted while waiting to send resumes before it.
    handle.cursor.set(cursor);
    let mut handed = handle.handed_ahead.borrow_mut();
    if let Some(s) = ahead {
        handed.insert(s);
    }
    if let Some(c) = cursor {
        handed.retain(|s| *s > c);
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cursor stays below the lowest frame not yet handed over, never goes back, and reaches the
    /// last frame read once all are handed over.
    #[test]
    fn the_cursor_moves_only_past_frames_all_handed_over() {
        let mut w = Window::new(Some(HostSeq(5)));
        assert_eq!(w.admit(Some(HostSeq(7)), "did:plc:a", 10), 0);
        assert_eq!(w.admit(Some(HostSeq(9)), "did:plc:b", 10), 1);
        assert_eq!(w.admit(None, "", 10), 2);
        assert_eq!(w.last_read(), Some(HostSeq(9)));
        assert_eq!(w.cursor(Some(HostSeq(5))), Some(HostSeq(6)), "below 7, still undecided");
        w.open.remove(&HostSeq(9));
        assert_eq!(w.cursor(Some(HostSeq(6))), Some(HostSeq(6)), "9 handed over, 7 not: no move");
        w.open.remove(&HostSeq(7));
        assert_eq!(w.cursor(Some(HostSeq(6))), Some(HostSeq(9)));
        assert_eq!(w.cursor(Some(HostSeq(12))), Some(HostSeq(12)), "never backwards");
        assert_eq!((w.frames, w.bytes), (3, 30));
        assert_eq!(w.chains.len(), 3);
    }

    #[test]
    fn the_window_fills_by_frames_or_bytes() {
        let mut w = Window::new(None);
        for i in 0..DECIDE_WINDOW as u64 {
            assert!(w.has_room());
            w.admit(Some(HostSeq(i + 1)), "did:plc:a", 1);
        }
        assert!(!w.has_room());
        let mut w = Window::new(None);
        w.admit(Some(HostSeq(1)), "did:plc:a", DECIDE_WINDOW_BYTES);
        assert!(!w.has_room());
        assert_eq!(w.cursor(None), Some(HostSeq(0)), "below frame 1");
    }
}
