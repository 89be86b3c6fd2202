//! One subscriber's stream, the same for the firehose and for Jetstream: replay from the store at
//! its own pace, live from its bounded queue, back to the store whenever its queue overflows. What
//! differs between the two (positions, what a stored event becomes, where live subscribers are
//! registered) is a [`Wire`]; the firehose's is in `subscriber`, Jetstream's in `jet`.
//!
//! The rules, in one place:
//! - A subscriber behind the live tail (a cursor, or a queue that overflowed) reads from the store in
//!   chunks bounded in events and bytes, sized to its pace ([`super::pace::ReplayPacer`]), read off
//!   the executor, written with its pongs between chunks: it is never cut off for being behind. The
//!   shard's replay memory (all chunks in flight) is bounded, and each chunk gives its share back
//!   as its bytes leave ([`super::pace::Held`]), so a reader that stalls part-way holds only what
//!   it has not read.
//! - Events retention deleted after the subscriber's position are announced (once per gap) where
//!   the wire has a frame for it, and replay goes on from the oldest stored event.
//! - Replay ends when a chunk comes back short and the position has reached the shard's head: the
//!   subscriber is registered for live events then, with no await between that check and the
//!   registration, so no event falls between replay and live ([`after_chunk`]).
//! - A live subscriber's queue holds `subscriber_queue` frames; when the publisher finds it full,
//!   the subscriber goes back to the store from its position (`relay_subscriber_fallbacks_total`),
//!   with no gap and no duplicate, and joins the live tail again once caught up.
//! - A subscriber whose socket accepts nothing for `stall_timeout` is closed
//!   (`relay_subscribers_closed_total{reason="consumer_too_slow"}`).

use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_lite::AsyncWriteExt;
use futures_lite::io::WriteHalf;
use glommio::net::TcpStream;
use storage::{ReplayChunk, Store, StoreError};
use wire::RelaySeq;
use wire::jetstream::JetSeq;

use super::pace::{Held, ReplayPacer};
use super::queue::{Outgoing, Queue};
use super::subscriber::{End, MAX_WRITE_BATCH_BYTES, write};
use super::{FanoutShard, SubscriberProgress};

/// Bytes written to the socket at a time during replay, each slice's memory given back as it goes.
pub(super) const SLICE_BYTES: usize = 64 * 1024;

/// How a wire's positions relate to relay seqs. A position is the last event the subscriber was
/// given or passed over; what follows it is what the subscriber gets next.
pub(crate) trait Positions {
    /// A position in this wire's stream, ordered as the stream.
    type Seq: Copy + Ord + std::fmt::Debug + 'static;
    /// The relay seq the store is read after to find what follows `pos`.
    fn read_after(pos: Self::Seq) -> RelaySeq;
    /// The position past everything at relay seq `seq`.
    fn end_of(seq: RelaySeq) -> Self::Seq;
    /// The relay seq `pos` is in (what the admin API shows as the subscriber's position).
    fn relay_of(pos: Self::Seq) -> RelaySeq;
}

/// Firehose positions: relay seqs.
pub(crate) struct RelayPositions;

impl Positions for RelayPositions {
    type Seq = RelaySeq;
    fn read_after(pos: RelaySeq) -> RelaySeq {
        pos
    }
    fn end_of(seq: RelaySeq) -> RelaySeq {
        seq
    }
    fn relay_of(pos: RelaySeq) -> RelaySeq {
        pos
    }
}

/// Jetstream positions: [`JetSeq`]s, so a commit cut by an overflow resumes at its next op.
pub(crate) struct JetPositions;

impl Positions for JetPositions {
    type Seq = JetSeq;
    /// The relay event holding the next Jetstream seq is `(pos + 1).relay()`; the store is read
    /// after the one before it.
    fn read_after(pos: JetSeq) -> RelaySeq {
        RelaySeq(JetSeq(pos.0.saturating_add(1)).relay().0.saturating_sub(1))
    }
    fn end_of(seq: RelaySeq) -> JetSeq {
        JetSeq::end_of(seq)
    }
    fn relay_of(pos: JetSeq) -> RelaySeq {
        pos.relay()
    }
}

/// What one subscriber's wire does with stored and live events.
pub(crate) trait Wire: 'static {
    /// Its positions.
    type P: Positions;
    /// Read from the store beside each replay chunk, off the executor (Jetstream: the chunk's
    /// seconds, for `time_us`).
    type Extra: Send + 'static;

    /// Reads what goes beside `chunk`.
    fn read_extra(store: &Store, chunk: &ReplayChunk) -> Result<Self::Extra, StoreError>;
    /// The frame that tells the subscriber retention deleted the events after its position and
    /// replay goes on at `oldest` (`None`: this wire has none).
    fn outdated(&self, shard: &FanoutShard, oldest: RelaySeq) -> Option<Vec<u8>>;
    /// Appends to `out` the websocket frames stored event `frame` (relay seq `seq`) gives this
    /// subscriber after position `pos`; returns how many.
    fn replayed(
        &self,
        shard: &FanoutShard,
        seq: RelaySeq,
        frame: &[u8],
        extra: &mut Self::Extra,
        pos: Seq<Self>,
        out: &mut Vec<u8>,
    ) -> u64;
    /// Registers the subscriber for live events; returns the registration's id.
    fn register(
        self: &Rc<Self>,
        shard: &FanoutShard,
        queue: &Rc<Queue<Seq<Self>>>,
        progress: &Arc<SubscriberProgress>,
    ) -> u64;
    /// Removes registration `id`.
    fn unregister(&self, shard: &FanoutShard, id: u64);
    /// Counts `n` messages sent (live or replayed).
    fn count_sent(&self, shard: &FanoutShard, n: u64);
}

/// A wire's position type.
pub(crate) type Seq<W> = <<W as Wire>::P as Positions>::Seq;

/// Where a subscriber's stream starts.
#[derive(Debug, Clone, Copy)]
pub(super) enum Start<S> {
    /// Behind the live tail: replay from the store after this position.
    Replay(S),
    /// At the live tail, which is at this position.
    Live(S),
}

/// What replay does after a chunk: the new position, and whether the subscriber goes live now.
///
/// `pos` is the position before the chunk; `last_scanned` the chunk's highest relay seq read
/// (served or hidden); `short` whether the chunk ended because the store had nothing more (not
/// because it was full); `head_at_read` the shard's head sampled before the read began (every
/// event at or below it was stored by then, so a short chunk has seen all of them); `head_now` the
/// head after the chunk was written. The subscriber goes live only when the chunk was short and
/// the position has reached `head_now`: an event published while the chunk was read or written is
/// above `head_at_read`, so it is read by the next chunk rather than skipped.
pub(crate) fn after_chunk<P: Positions>(
    pos: P::Seq,
    last_scanned: Option<RelaySeq>,
    short: bool,
    head_at_read: RelaySeq,
    head_now: RelaySeq,
) -> (P::Seq, bool) {
    let mut pos = pos;
    if let Some(last) = last_scanned {
        pos = pos.max(P::end_of(last));
    }
    if short {
        // Nothing stored after the chunk up to `head_at_read`: seqs not stored (gaps) are passed.
        pos = pos.max(P::end_of(head_at_read));
    }
    (pos, short && pos >= P::end_of(head_now))
}

impl FanoutShard {
    /// Replay and live, in turn, from `start` until the subscriber is done. Returns the write half
    /// for the goodbye (`None` if it was lost with a replay task that could not start).
    pub(super) async fn stream<W: Wire>(
        self: Rc<Self>,
        mut wr: WriteHalf<TcpStream>,
        fd: std::os::fd::RawFd,
        queue: &Rc<Queue<Seq<W>>>,
        sub: &Rc<W>,
        start: Start<Seq<W>>,
        progress: Arc<SubscriberProgress>,
    ) -> (Option<WriteHalf<TcpStream>>, End) {
        let (mut position, mut replaying) = match start {
            Start::Replay(p) => (p, true),
            Start::Live(p) => (p, false),
        };
        let mut parts = Vec::with_capacity(256);
        loop {
            let id = if replaying {
                progress.replaying.store(true, Ordering::Relaxed);
                let run =
                    replay(Rc::clone(&self), wr, Rc::clone(queue), Rc::clone(sub), position, Arc::clone(&progress));
                let (back, outcome) = match self.replay_tq.get() {
                    // Replay runs in its own task queue, with fewer shares than live delivery.
                    Some(tq) => match glommio::spawn_local_into(run, tq) {
                        Ok(task) => task.await,
                        // Not reachable: the queue is this executor's own.
                        Err(_) => return (None, End::StoreError),
                    },
                    None => run.await,
                };
                wr = back;
                match outcome {
                    // Registered for live events by the replay itself, the moment it caught up.
                    Ok((p, id)) => {
                        position = p;
                        id
                    }
                    Err(end) => return (Some(wr), end),
                }
            } else {
                sub.register(&self, queue, &progress)
            };
            let live = self.live(&mut wr, fd, queue, sub.as_ref(), &mut parts, &mut position, &progress).await;
            sub.unregister(&self, id);
            match live {
                Err(end) => return (Some(wr), end),
                Ok(()) if progress.kill.load(Ordering::Acquire) => return (Some(wr), End::Killed),
                Ok(()) => {
                    queue.reset_events();
                    self.metrics.subscriber_fallbacks.inc();
                    replaying = true;
                }
            }
        }
    }

    /// Writes live events until the queue overflows (`Ok`: back to the store) or the subscriber is
    /// done (`Err`).
    #[allow(clippy::too_many_arguments)]
    async fn live<W: Wire>(
        &self,
        wr: &mut WriteHalf<TcpStream>,
        fd: std::os::fd::RawFd,
        queue: &Queue<Seq<W>>,
        sub: &W,
        parts: &mut Vec<bytes::Bytes>,
        position: &mut Seq<W>,
        progress: &SubscriberProgress,
    ) -> Result<(), End> {
        let mut items = Vec::new();
        loop {
            // Let latency-sensitive task queues (the API) run when this one has had its slice.
            glommio::yield_if_needed().await;
            items.clear();
            if queue.next_batch(&mut items, MAX_WRITE_BATCH_BYTES).await.is_none() {
                if self.closing.get() {
                    return Err(End::Shutdown);
                }
                return match (queue.is_behind(), progress.kill.load(Ordering::Acquire)) {
                    (_, true) => Err(End::Killed),
                    (true, false) => Ok(()),
                    (false, false) => Err(End::ClientClosed),
                };
            }
            parts.clear();
            let mut last = *position;
            let mut sent = 0;
            let mut committed_at = None;
            for item in items.drain(..) {
                match item {
                    // Replay may already have sent it (registered while a batch was in flight).
                    Outgoing::Event(seq, frame, at) if seq > last => {
                        parts.push(frame);
                        last = seq;
                        sent += 1;
                        committed_at = Some(at);
                    }
                    Outgoing::Event(..) => {}
                    Outgoing::Control(frame) => parts.push(frame),
                }
            }
            super::send::write_parts(wr, fd, parts, queue, &self.metrics).await?;
            if let Some(at) = committed_at {
                self.metrics.fanout_delay_seconds.observe(at.elapsed().as_secs_f64());
            }
            sub.count_sent(self, sent);
            *position = last;
            progress.position.store(W::P::relay_of(last).0, Ordering::Relaxed);
        }
    }
}

/// Writes `bye` (if any, within a second) and closes the socket.
pub(super) async fn close_with(wr: Option<WriteHalf<TcpStream>>, bye: Option<Vec<u8>>) {
    if let Some(mut wr) = wr {
        if let Some(bye) = bye {
            let _ = crate::net::with_timeout(Duration::from_secs(1), wr.write_all(&bye)).await;
        }
        let _ = wr.close().await;
    }
}

/// Replays events after `position` until caught up, then registers for live events. Returns the
/// write half, and the position reached with the live registration id.
async fn replay<W: Wire>(
    shard: Rc<FanoutShard>,
    mut wr: WriteHalf<TcpStream>,
    queue: Rc<Queue<Seq<W>>>,
    sub: Rc<W>,
    mut position: Seq<W>,
    progress: Arc<SubscriberProgress>,
) -> (WriteHalf<TcpStream>, Result<(Seq<W>, u64), End>) {
    let result = replay_chunks(&shard, &mut wr, &queue, &sub, &mut position, &progress).await.map(|id| (position, id));
    (wr, result)
}

async fn replay_chunks<W: Wire>(
    shard: &Rc<FanoutShard>,
    wr: &mut WriteHalf<TcpStream>,
    queue: &Rc<Queue<Seq<W>>>,
    sub: &Rc<W>,
    position: &mut Seq<W>,
    progress: &Arc<SubscriberProgress>,
) -> Result<u64, End> {
    let (max_events, max_bytes) = (shard.config.replay_chunk_events.max(1), shard.config.replay_chunk_bytes.max(1));
    let budget = shard.config.replay_memory_bytes.max(1);
    let mut pacer = ReplayPacer::new(max_bytes);
    let epoch = shard.epoch();
    let store_error = |e: StoreError| {
        tracing::error!(error = %e, "replay read failed");
        End::StoreError
    };
    let mut buf = Vec::with_capacity(SLICE_BYTES * 2);
    loop {
        if queue.is_closed() {
            return Err(End::ClientClosed);
        }
        if progress.kill.load(Ordering::Acquire) {
            return Err(End::Killed);
        }
        if shard.closing.get() {
            return Err(End::Shutdown);
        }
        if shard.epoch() != epoch {
            return Err(End::Reset);
        }
        buf.clear();
        let retained = shard.store.retained_from().map_err(store_error)?;
        if W::P::read_after(*position).0.saturating_add(1) < retained.0 {
            if let Some(frame) = sub.outdated(shard, retained) {
                buf.extend_from_slice(&frame);
            }
            shard.metrics.outdated_cursors.inc();
            *position = W::P::end_of(RelaySeq(retained.0 - 1));
        }
        // This subscriber's chunk, at its pace; waits while the shard's other replays hold its
        // replay memory.
        let chunk_bytes = pacer.chunk_bytes();
        let mut held =
            Held::acquire(&shard.replay_budget, (chunk_bytes as u64).min(budget)).await.map_err(|_| End::StoreError)?;
        let store = Arc::clone(&shard.store);
        let after = W::P::read_after(*position);
        let head_at_read = RelaySeq(shard.head.get());
        let read = glommio::executor()
            .spawn_blocking(move || {
                let chunk = store.replay(after, max_events, chunk_bytes)?;
                let extra = W::read_extra(&store, &chunk)?;
                Ok::<_, StoreError>((chunk, extra))
            })
            .await;
        let (chunk, mut extra) = read.map_err(store_error)?;
        // Pongs first: a client pinging during a long replay is answered between chunks.
        queue.take_controls(&mut buf);
        let started = std::time::Instant::now();
        let bytes: usize = chunk.events.iter().map(|(_, f)| f.len()).sum();
        let mut sent = 0;
        // Written in slices, each given back to the replay memory as it leaves.
        for (seq, frame) in &chunk.events {
            sent += sub.replayed(shard, *seq, frame, &mut extra, *position, &mut buf);
            if buf.len() >= SLICE_BYTES {
                write(wr, &buf, queue, &shard.metrics).await?;
                held.release(buf.len() as u64);
                buf.clear();
            }
        }
        write(wr, &buf, queue, &shard.metrics).await?;
        drop(held);
        let full = chunk.events.len() + chunk.hidden >= max_events || bytes >= chunk_bytes;
        if full {
            // A full chunk: how long it took says how fast this subscriber reads.
            pacer.wrote(bytes.max(chunk_bytes), started.elapsed());
        }
        sub.count_sent(shard, sent);
        shard.metrics.replay_events.inc_by(chunk.events.len() as u64);
        shard.metrics.replay_hidden.inc_by(chunk.hidden as u64);
        glommio::yield_if_needed().await;
        // No await between this decision and the registration.
        let (next, live) =
            after_chunk::<W::P>(*position, chunk.last_scanned, !full, head_at_read, RelaySeq(shard.head.get()));
        *position = next;
        progress.position.store(W::P::relay_of(next).0, Ordering::Relaxed);
        if live {
            return Ok(sub.register(shard, queue, progress));
        }
    }
}

#[cfg(test)]
mod tests;
