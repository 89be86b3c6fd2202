//! Jetstream subscribers: the firehose as filtered JSON, served by the fanout shard from the same
//! batches and the same store as `subscribeRepos` (wire formats: `wire::jetstream`).
//!
//! - **Live**: the publisher converts each event of a batch once (records decoded from the commit's
//!   CAR slice to JSON), then hands each subscriber the events its [`Filter`] wants. A message is
//!   encoded once per format (and compressed once per format) per shard, on first use, and the same
//!   bytes go to every subscriber of that format ([`codec`]).
//! - **Replay** (a cursor, or a queue that overflowed): from the store at the subscriber's pace, as
//!   for the firehose, converting and filtering each stored event; then live, with no gap and no
//!   duplicate. A subscriber's position is a Jetstream seq (relay seq × 256 + op index), so a
//!   commit cut by an overflow resumes at its next op.
//! - **Times**: an event's `time_us` comes from the `time_index` entry of the second it was
//!   committed in ([`wire::jetstream::time_us`]): the same live and in replay, and a v1 time cursor
//!   finds its event exactly.
//! - v1 subscribers may change their filter with `options_update`; an invalid one closes the
//!   connection (as Jetstream does). `requireHello=true` holds the stream until the first one.

pub mod codec;
mod reader;
mod seconds;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures_lite::io::WriteHalf;
use glommio::net::TcpStream;
use wire::RelaySeq;
use wire::frame::Frame;
use wire::jetstream::{self, Filter, JetSeq};
use wire::ws;

use super::queue::{Outgoing, Queue};
use super::session::{JetPositions, Start, Wire, close_with};
use super::subscriber::{End, SubscriberInfo, write};
use super::{FanoutShard, SubscriberProgress};
use crate::messages::Published;
use crate::metrics::Metrics;
use seconds::Seconds;

/// Which Jetstream wire a subscriber speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JetFormat {
    /// `GET /subscribe`: bare JSON events with `time_us`; no `#sync`.
    V1,
    /// `network.bsky.jetstream.subscribeEvents` (`xrpc.v1.json` frames with a `seq`).
    V2,
}

impl JetFormat {
    fn label(self) -> &'static str {
        match self {
            JetFormat::V1 => "v1",
            JetFormat::V2 => "v2",
        }
    }
}

/// Where a Jetstream subscriber starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JetStart {
    /// The live tail.
    Live,
    /// The first event with a Jetstream seq at or above this (v2 seq cursors).
    Seq(JetSeq),
    /// The first event whose `time_us` is at or after this (v1 cursors, v2 timestamp cursors).
    TimeUs(u64),
}

/// A Jetstream subscription, as the engine parsed it from the request.
#[derive(Debug, Clone)]
pub struct JetRequest {
    /// The wire.
    pub format: JetFormat,
    /// What it wants.
    pub filter: Filter,
    /// Where it starts.
    pub start: JetStart,
    /// zstd-compressed binary messages with [`codec::DICTIONARY`].
    pub compress: bool,
    /// v1 `requireHello=true`: nothing is sent before the first `options_update`.
    pub require_hello: bool,
}

/// A subscriber's settings, shared by its writer and its reader (which applies `options_update`).
pub(crate) struct JetSub {
    format: JetFormat,
    compress: bool,
    filter: RefCell<Filter>,
    /// An `options_update` arrived (for `requireHello`).
    hello: Cell<bool>,
}

impl JetSub {
    /// This subscriber's frame for `p` (`None`: filtered out, too large, or no form in its format).
    fn frame(&self, p: &codec::Prepared, shard: &FanoutShard) -> Option<bytes::Bytes> {
        let e = &p.event;
        if !self.filter.borrow().wants(e.did.as_str(), e.kind(), e.collection()) {
            return None;
        }
        let codec = if self.compress { Some(shard.codec.as_ref()?) } else { None };
        let (frame, len) = p.frame(self.format, codec, &shard.metrics)?;
        self.filter.borrow().fits(len).then_some(frame)
    }
}

/// A live Jetstream subscriber, as the publisher sees it.
pub(crate) struct JetRegistered {
    pub(super) queue: Rc<Queue<JetSeq>>,
    sub: Rc<JetSub>,
}

/// The Jetstream events of a published batch (converted once per shard).
pub(crate) fn prepare(batch: &Published, metrics: &Metrics) -> Vec<codec::Prepared> {
    let (second, first) = batch.second;
    let mut out = Vec::new();
    for ((seq, _), event) in batch.events.iter().zip(&batch.decoded) {
        let time_us = jetstream::time_us(second, first.0, seq.0);
        let converted = jetstream::convert(event, time_us);
        metrics.jetstream_unconvertible.inc_by(converted.unconvertible as u64);
        out.extend(converted.events.into_iter().map(codec::Prepared::new));
    }
    out
}

/// Jetstream's wire: positions are [`JetSeq`]s; a stored event is converted, filtered and encoded
/// for this subscriber.
impl Wire for JetSub {
    type P = JetPositions;
    type Extra = Seconds;

    fn read_extra(store: &storage::Store, chunk: &storage::ReplayChunk) -> Result<Seconds, storage::StoreError> {
        Seconds::read(store, chunk)
    }

    /// v2: `#info OutdatedCursor`, as at the start ([`FanoutShard::jet_position`]); v1 has no
    /// frame for it.
    fn outdated(&self, _: &FanoutShard, oldest: RelaySeq) -> Option<Vec<u8>> {
        (self.format == JetFormat::V2).then(|| outdated_info(oldest))
    }

    fn replayed(
        &self,
        shard: &FanoutShard,
        seq: RelaySeq,
        frame: &[u8],
        seconds: &mut Seconds,
        pos: JetSeq,
        out: &mut Vec<u8>,
    ) -> u64 {
        let Ok(Frame::Message(event)) = wire::frame::decode_frame(frame) else { return 0 };
        let (second, first) = seconds.of(seq);
        let converted = jetstream::convert(&event, jetstream::time_us(second, first, seq.0));
        shard.metrics.jetstream_unconvertible.inc_by(converted.unconvertible as u64);
        let mut sent = 0;
        // A commit cut by an overflow resumes at its next op.
        for ev in converted.events.into_iter().filter(|ev| ev.seq() > pos) {
            if let Some(frame) = self.frame(&codec::Prepared::new(ev), shard) {
                out.extend_from_slice(&frame);
                sent += 1;
            }
        }
        sent
    }

    fn register(
        self: &Rc<Self>,
        shard: &FanoutShard,
        queue: &Rc<Queue<JetSeq>>,
        progress: &Arc<SubscriberProgress>,
    ) -> u64 {
        let id = shard.next_id.get();
        shard.next_id.set(id + 1);
        progress.replaying.store(false, Ordering::Relaxed);
        shard.jet_live.borrow_mut().insert(id, JetRegistered { queue: Rc::clone(queue), sub: Rc::clone(self) });
        id
    }

    fn unregister(&self, shard: &FanoutShard, id: u64) {
        shard.jet_live.borrow_mut().remove(&id);
    }

    fn count_sent(&self, shard: &FanoutShard, n: u64) {
        Metrics::inc_by(&shard.metrics.jetstream_messages, "endpoint", self.format.label(), n);
    }
}

/// The v2 `#info OutdatedCursor` for a stream resuming at relay seq `oldest`.
fn outdated_info(oldest: RelaySeq) -> Vec<u8> {
    let message =
        format!("the cursor is older than the relay's retention window; resuming from seq {}", JetSeq::new(oldest, 0));
    ws::encode_frame(ws::Opcode::Text, &jetstream::v2_info("OutdatedCursor", &message))
}

impl FanoutShard {
    /// Hands a published batch to the live Jetstream subscribers.
    pub(super) fn publish_jetstream(&self, batch: &Published) {
        if self.jet_live.borrow().is_empty() {
            return;
        }
        let prepared = prepare(batch, &self.metrics);
        let mut live = self.jet_live.borrow_mut();
        live.retain(|_, reg| {
            for p in &prepared {
                let Some(frame) = reg.sub.frame(p, self) else { continue };
                if reg.queue.push(Outgoing::Event(p.event.seq(), frame, batch.committed_at)).is_err() {
                    reg.queue.mark_behind();
                    return false;
                }
            }
            true
        });
    }

    /// Serves one Jetstream subscriber whose websocket handshake has been answered, until it closes,
    /// stalls, sends an invalid `options_update`, or a write fails. `leftover` holds bytes read past
    /// the HTTP head.
    pub async fn serve_jetstream(
        self: Rc<Self>,
        stream: TcpStream,
        request: JetRequest,
        leftover: Vec<u8>,
        info: SubscriberInfo,
    ) {
        let endpoint = request.format.label();
        let gauge = self.metrics.jetstream_subscribers.get_or_create(&vec![("endpoint", endpoint)]).clone();
        gauge.inc();
        self.serving.set(self.serving.get() + 1);
        let listed = self.directory.add(info.clone());
        let _ = stream.set_write_timeout(Some(self.config.stall_timeout));
        let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
        let (rd, wr) = futures_lite::io::split(stream);
        let queue = Rc::new(Queue::new(self.config.subscriber_queue));
        let sub = Rc::new(JetSub {
            format: request.format,
            compress: request.compress,
            filter: RefCell::new(request.filter.clone()),
            hello: Cell::new(!request.require_hello),
        });
        let bad_message = Rc::new(Cell::new(false));
        let reader = glommio::spawn_local(reader::read_client(
            rd,
            Rc::clone(&queue),
            Rc::clone(&sub),
            leftover,
            Rc::clone(&bad_message),
        ));
        let progress = Arc::clone(&listed.progress);
        let epoch = self.epoch();
        let (wr, end) = Rc::clone(&self).stream_jet(wr, fd, &queue, &sub, request.start, progress).await;
        let end = if bad_message.get() { End::BadMessage } else { end };
        let end = if self.epoch() != epoch && matches!(end, End::ClientClosed) { End::Reset } else { end };
        let bye = match (end, request.format) {
            (End::Stalled, JetFormat::V2) => {
                let mut bye = ws::encode_frame(
                    ws::Opcode::Text,
                    &jetstream::v2_error("ConsumerTooSlow", "subscriber stopped reading"),
                );
                bye.extend(ws::encode_close(1008, "ConsumerTooSlow"));
                Some(bye)
            }
            (End::Stalled, JetFormat::V1) => Some(ws::encode_close(1008, "ConsumerTooSlow")),
            (End::BadMessage, _) => Some(ws::encode_close(1008, "invalid subscriber message")),
            (End::StoreError, _) => Some(ws::encode_close(1011, "internal error")),
            (End::ClientClosed, _) => Some(ws::encode_close(1000, "")),
            (End::Killed, _) => Some(ws::encode_close(1008, "closed by the relay's operator")),
            (End::Shutdown, _) => Some(ws::encode_close(1001, "relay shutting down")),
            (End::Reset, _) => Some(ws::encode_close(1012, "the upstream's sequence was reset; reconnect")),
            (End::FutureCursor | End::WriteError, _) => None,
        };
        close_with(wr, bye).await;
        drop(reader);
        Metrics::inc(&self.metrics.subscribers_closed, "reason", end.as_str());
        gauge.dec();
        self.serving.set(self.serving.get().saturating_sub(1));
        drop(listed);
    }

    /// The lowest Jetstream v2 seq still served: the first op of the oldest relay seq retention has
    /// not deleted (`network.bsky.jetstream.subscribeEvents` answers a seq cursor below it with
    /// `CursorTooOld`).
    ///
    /// # Errors
    /// The store's.
    pub fn jet_floor(&self) -> Result<JetSeq, storage::StoreError> {
        // 0: retention has deleted nothing, every seq is still served.
        Ok(match self.store.retained_from()? {
            RelaySeq(0 | 1) => JetSeq(0),
            retained => JetSeq::new(retained, 0),
        })
    }

    /// Where a subscriber starts: its position (the Jetstream seq before its first event), and the
    /// `#info` frame a v2 subscriber gets first, if any.
    fn jet_position(&self, start: JetStart, format: JetFormat) -> Result<(JetSeq, Option<Vec<u8>>), End> {
        let store_error = |e: storage::StoreError| {
            tracing::error!(error = %e, "jetstream cursor lookup failed");
            End::StoreError
        };
        let head = self.head();
        let live = JetSeq::end_of(head);
        // The lowest relay seq still stored (relay seqs start at 1; 0: nothing deleted).
        let retained = RelaySeq(self.store.retained_from().map_err(store_error)?.0.max(1));
        let v2 = format == JetFormat::V2;
        let outdated = |from: RelaySeq| {
            self.metrics.outdated_cursors.inc();
            (JetSeq::before(from), v2.then(|| outdated_info(from)))
        };
        match start {
            JetStart::Live => Ok((live, None)),
            JetStart::Seq(s) if s.relay() > self.committed() => Ok((
                live,
                v2.then(|| {
                    let message =
                        format!("the cursor is ahead of the relay; starting at the live tail, seq {}", live.0 + 1);
                    ws::encode_frame(ws::Opcode::Text, &jetstream::v2_info("FutureCursor", &message))
                }),
            )),
            JetStart::Seq(s) if s.relay().max(RelaySeq(1)) < retained => Ok(outdated(retained)),
            JetStart::Seq(s) => Ok((s.prev(), None)),
            JetStart::TimeUs(us) => {
                let second = us / 1_000_000;
                let entry = self.store.time_entry_at(second).map_err(store_error)?.map(|(s, f)| (s, f.0));
                let next = self.store.time_entry_after(second).map_err(store_error)?.map(|(_, f)| f.0);
                match jetstream::seq_for_time_us(us, entry, next).map(RelaySeq) {
                    // Nothing committed at or after that time: the live tail.
                    None => Ok((live, None)),
                    Some(seq) if seq > head => Ok((live, None)),
                    Some(seq) if seq.max(RelaySeq(1)) < retained => Ok(outdated(retained)),
                    Some(seq) => Ok((JetSeq::before(seq), None)),
                }
            }
        }
    }

    /// `requireHello`, the start position, then replay and live in turn until the subscriber is
    /// done ([`super::session`]).
    async fn stream_jet(
        self: Rc<Self>,
        mut wr: WriteHalf<TcpStream>,
        fd: std::os::fd::RawFd,
        queue: &Rc<Queue<JetSeq>>,
        sub: &Rc<JetSub>,
        start: JetStart,
        progress: Arc<SubscriberProgress>,
    ) -> (Option<WriteHalf<TcpStream>>, End) {
        // requireHello: nothing until the first options_update (pongs still go out).
        while !sub.hello.get() {
            if queue.is_closed() {
                return (Some(wr), End::ClientClosed);
            }
            let mut pongs = Vec::new();
            queue.take_controls(&mut pongs);
            if let Err(end) = write(&mut wr, &pongs, queue, &self.metrics).await {
                return (Some(wr), end);
            }
            // Woken by the hello, a ping or the close; never on a timer.
            queue.wait_for(|| sub.hello.get()).await;
        }
        let (position, first) = match self.jet_position(start, sub.format) {
            Ok(p) => p,
            Err(end) => return (Some(wr), end),
        };
        if let Some(frame) = first
            && let Err(end) = write(&mut wr, &frame, queue, &self.metrics).await
        {
            return (Some(wr), end);
        }
        let start =
            if position < JetSeq::end_of(self.head()) { Start::Replay(position) } else { Start::Live(position) };
        Rc::clone(&self).stream(wr, fd, queue, sub, start, progress).await
    }
}
