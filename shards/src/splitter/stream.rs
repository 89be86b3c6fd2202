//! [`UpstreamStream`]: what a splitter does with each frame of its upstream, as a state machine
//! without I/O (the connection code in [`super::follow`] only drives it).
//!
//! - Frames are kept byte for byte under the upstream's seq: a splitter does not validate or
//!   sequence (its upstream did), so splitters of one upstream hold the same frames under the same
//!   seqs and are interchangeable.
//! - Seqs must increase. The first frame after a (re)connect may repeat the cursor asked for (some
//!   servers replay the event at the cursor, indigo issue #837): skipped. A forward jump is accepted
//!   (Bluesky's relay switch in January 2026 jumped from ~17.5 B to ~26.6 B); a backward one means the
//!   upstream's sequence was reset: ingest stops, until an operator resets the cursor.
//! - `#info` frames are the upstream's notices to its consumer (this splitter), not events: not kept.
//! - An error frame ends the connection (specs/event-stream); `FutureCursor` stops ingest like a
//!   backward jump (the upstream is behind what the splitter holds). A frame that is not two
//!   well-formed DAG-CBOR items ends the connection too.
//! - Frames of a type the splitter does not know are kept when they carry a seq (consumers ignore
//!   what they do not know, and a splitter passes the upstream's stream on unchanged).

use wire::RelaySeq;

/// What to do with a frame ([`UpstreamStream::frame`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Keep it under this seq.
    Store(RelaySeq),
    /// Already kept (the frame at the cursor, repeated after a reconnect).
    Overlap,
    /// An `#info` frame (its `name`, e.g. `OutdatedCursor`): logged, not kept.
    Info(String),
    /// A frame without a seq that is not `#info`: not kept.
    NoSeq,
    /// The connection must end and be tried again (with backoff): `error_frame` or
    /// `malformed_frame`.
    Reconnect(&'static str),
    /// Ingest stops until an operator resets the cursor.
    Stop(Stopped),
}

/// Why ingest stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// The upstream's seq went from `from` back to `to`: its sequence was reset.
    BackwardJump {
        /// The last seq kept.
        from: u64,
        /// The seq the upstream sent.
        to: u64,
    },
    /// The upstream answered the cursor with `FutureCursor`: it is behind what the splitter holds.
    FutureCursor,
}

impl Stopped {
    /// The `reason` label of `relay_splitter_upstream_stopped` and of `_health`.
    pub fn as_str(self) -> &'static str {
        match self {
            Stopped::BackwardJump { .. } => "backward_jump",
            Stopped::FutureCursor => "future_cursor",
        }
    }
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stopped::BackwardJump { from, to } => {
                write!(f, "the upstream's seq went back from {from} to {to}: its sequence was reset")
            }
            Stopped::FutureCursor => {
                f.write_str("the upstream answered FutureCursor: it is behind what this splitter holds")
            }
        }
    }
}

/// The upstream's stream as the splitter follows it.
#[derive(Debug, Clone, Default)]
pub struct UpstreamStream {
    /// The last seq kept (from the store at start).
    last: Option<u64>,
    /// No frame with a seq read yet on this connection.
    fresh: bool,
    stopped: Option<Stopped>,
}

impl UpstreamStream {
    /// A stream resuming after `last` (the highest seq the store holds, `None` when empty).
    pub fn new(last: Option<RelaySeq>) -> Self {
        Self { last: last.map(|s| s.0), fresh: true, stopped: None }
    }

    /// The cursor to ask the upstream for: the last seq kept (`None`: the live tail).
    pub fn cursor(&self) -> Option<u64> {
        self.last
    }

    /// Why ingest is stopped, if it is.
    pub fn stopped(&self) -> Option<Stopped> {
        self.stopped
    }

    /// A new connection begins.
    pub fn connected(&mut self) {
        self.fresh = true;
    }

    /// An operator's reset: resume after `cursor` (`None`: from the upstream's live tail), ingest
    /// going on.
    pub fn reset(&mut self, cursor: Option<u64>) {
        self.last = cursor;
        self.fresh = true;
        self.stopped = None;
    }

    /// Decides what to do with one frame (its complete bytes).
    pub fn frame(&mut self, bytes: &[u8]) -> Action {
        if let Some(s) = self.stopped {
            return Action::Stop(s);
        }
        if !wire::frame::well_formed(bytes) {
            return Action::Reconnect("malformed_frame");
        }
        let (op, t) = wire::frame::header(bytes);
        if op == Some(-1) {
            let error = match wire::frame::decode_frame(bytes) {
                Ok(wire::frame::Frame::Error(e)) => e.error,
                _ => String::new(),
            };
            if error == "FutureCursor" {
                self.stopped = Some(Stopped::FutureCursor);
                return Action::Stop(Stopped::FutureCursor);
            }
            return Action::Reconnect("error_frame");
        }
        if t.as_deref() == Some("#info") {
            let name = match wire::frame::decode_frame(bytes) {
                Ok(wire::frame::Frame::Message(wire::frame::Event::Info(i))) => i.name,
                _ => String::new(),
            };
            return Action::Info(name);
        }
        let Some(seq) = wire::frame::peek_seq(bytes) else { return Action::NoSeq };
        let fresh = std::mem::replace(&mut self.fresh, false);
        match self.last {
            Some(last) if seq == last && fresh => Action::Overlap,
            Some(last) if seq <= last => {
                let stop = Stopped::BackwardJump { from: last, to: seq };
                self.stopped = Some(stop);
                Action::Stop(stop)
            }
            _ => {
                self.last = Some(seq);
                Action::Store(RelaySeq(seq))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::Did;
    use wire::frame::{AccountEvent, ErrorBody, Event, Info};

    fn account(seq: i64) -> Vec<u8> {
        Event::Account(AccountEvent {
            seq,
            did: Did::new("did:plc:aaaaaaaaaaaaaaaaaaaaaaaa").unwrap(),
            time: "2026-01-01T00:00:00Z".into(),
            active: true,
            status: None,
        })
        .encode()
        .unwrap()
    }

    fn info(name: &str) -> Vec<u8> {
        Event::Info(Info { name: name.into(), message: None }).encode().unwrap()
    }

    fn error(name: &str) -> Vec<u8> {
        ErrorBody { error: name.into(), message: None }.encode().unwrap()
    }

    /// Seqs increase (gaps and forward jumps accepted); the frame at the cursor after a reconnect is
    /// skipped; `#info` is not kept; a backward jump stops ingest until a reset.
    #[test]
    fn the_upstream_is_followed_by_seq() {
        let mut s = UpstreamStream::new(Some(RelaySeq(10)));
        assert_eq!(s.cursor(), Some(10));
        assert_eq!(s.frame(&account(10)), Action::Overlap, "the cursor's own frame, replayed");
        assert_eq!(s.frame(&account(11)), Action::Store(RelaySeq(11)));
        assert_eq!(s.frame(&info("OutdatedCursor")), Action::Info("OutdatedCursor".into()));
        assert_eq!(s.frame(&account(26_600_000_000)), Action::Store(RelaySeq(26_600_000_000)), "a forward jump");
        assert_eq!(s.cursor(), Some(26_600_000_000));
        s.connected();
        assert_eq!(s.frame(&account(26_600_000_001)), Action::Store(RelaySeq(26_600_000_001)));
        let stop = s.frame(&account(5));
        assert_eq!(stop, Action::Stop(Stopped::BackwardJump { from: 26_600_000_001, to: 5 }));
        assert_eq!(s.frame(&account(26_600_000_002)), stop, "stopped until a reset");
        s.reset(Some(4));
        assert_eq!(s.stopped(), None);
        assert_eq!(s.frame(&account(5)), Action::Store(RelaySeq(5)));
    }

    /// Within a connection, even the cursor's seq again is a backward jump.
    #[test]
    fn a_repeat_mid_stream_is_a_backward_jump() {
        let mut s = UpstreamStream::new(None);
        assert_eq!(s.frame(&account(1)), Action::Store(RelaySeq(1)));
        assert!(matches!(s.frame(&account(1)), Action::Stop(Stopped::BackwardJump { from: 1, to: 1 })));
    }

    #[test]
    fn error_frames_and_broken_framing_end_the_connection() {
        let mut s = UpstreamStream::new(Some(RelaySeq(3)));
        assert_eq!(s.frame(&error("ConsumerTooSlow")), Action::Reconnect("error_frame"));
        assert_eq!(s.frame(&[0xa1, 0x61]), Action::Reconnect("malformed_frame"));
        assert_eq!(s.frame(&account(4)), Action::Store(RelaySeq(4)));
        assert_eq!(s.frame(&error("FutureCursor")), Action::Stop(Stopped::FutureCursor));
        assert_eq!(s.stopped(), Some(Stopped::FutureCursor));
    }

    /// A frame of a type this build does not know is passed on when it has a seq.
    #[test]
    fn unknown_types_with_a_seq_are_kept() {
        let mut bytes = wire::cbor::to_vec(&serde_json::json!({"op": 1, "t": "#future"})).unwrap();
        bytes.extend(wire::cbor::to_vec(&serde_json::json!({"seq": 9, "x": 1})).unwrap());
        let mut s = UpstreamStream::new(Some(RelaySeq(8)));
        assert_eq!(s.frame(&bytes), Action::Store(RelaySeq(9)));
        let mut no_seq = wire::cbor::to_vec(&serde_json::json!({"op": 1, "t": "#future"})).unwrap();
        no_seq.extend(wire::cbor::to_vec(&serde_json::json!({"x": 1})).unwrap());
        assert_eq!(s.frame(&no_seq), Action::NoSeq);
    }
}
