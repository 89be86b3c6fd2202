//! Replay from the store for one subscriber: chunks bounded in events and bytes, sized to the
//! subscriber's pace ([`super::pace::ReplayPacer`]), read off the executor, written with its pongs
//! between chunks; the shard's replay memory (all chunks in flight) is bounded too, and each chunk
//! gives its share back as its bytes leave ([`super::pace::Held`]). Events retention deleted under the subscriber's
//! position are announced with `#info OutdatedCursor` (once per gap), then replay goes on from the
//! oldest event. When the store has nothing newer than the shard's head, the subscriber is
//! registered for live events on the spot — no await between that check and the registration, so
//! no event falls between replay and live.

use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures_lite::io::WriteHalf;
use glommio::net::TcpStream;
use wire::RelaySeq;
use wire::frame::{Event, Info};
use wire::ws::{self, Opcode};

use super::pace::{Held, ReplayPacer};
use super::queue::Queue;
use super::subscriber::{End, write};
use super::{FanoutShard, SubscriberProgress};

/// Bytes written to the socket at a time during replay, each slice's memory given back as it goes.
pub(super) const SLICE_BYTES: usize = 64 * 1024;

/// The `#info` frame for a cursor older than the oldest stored event.
fn outdated_cursor_frame(oldest: u64) -> Vec<u8> {
    let info = Event::Info(Info {
        name: "OutdatedCursor".into(),
        message: Some(format!(
            "the cursor is older than the relay's retention window; replay starts at the oldest stored event, seq {oldest}"
        )),
    });
    // An #info of two strings always encodes.
    ws::encode_frame(Opcode::Binary, &info.encode().unwrap_or_default())
}

/// Replays events after `position` until caught up, then registers `queue` for live events. Returns
/// the write half, and the position reached with the live registration id.
pub(super) async fn run(
    shard: Rc<FanoutShard>,
    mut wr: WriteHalf<TcpStream>,
    queue: Rc<Queue>,
    mut position: u64,
    progress: Arc<SubscriberProgress>,
) -> (WriteHalf<TcpStream>, Result<(u64, u64), End>) {
    let result = replay(&shard, &mut wr, &queue, &mut position, &progress).await.map(|id| (position, id));
    (wr, result)
}

async fn replay(
    shard: &Rc<FanoutShard>,
    wr: &mut WriteHalf<TcpStream>,
    queue: &Rc<Queue>,
    position: &mut u64,
    progress: &Arc<SubscriberProgress>,
) -> Result<u64, End> {
    let (max_events, max_bytes) = (shard.config.replay_chunk_events.max(1), shard.config.replay_chunk_bytes.max(1));
    let budget = shard.config.replay_memory_bytes.max(1);
    let mut pacer = ReplayPacer::new(max_bytes);
    let epoch = shard.epoch();
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
        let retained = shard.store.retained_from().map_err(|e| {
            tracing::error!(error = %e, "replay read failed");
            End::StoreError
        })?;
        if position.saturating_add(1) < retained.0 {
            buf.extend_from_slice(&outdated_cursor_frame(retained.0));
            shard.metrics.outdated_cursors.inc();
            *position = retained.0 - 1;
        }
        // This subscriber's chunk, at its pace; waits while the shard's other replays hold its
        // replay memory.
        let chunk_bytes = pacer.chunk_bytes();
        let mut held =
            Held::acquire(&shard.replay_budget, (chunk_bytes as u64).min(budget)).await.map_err(|_| End::StoreError)?;
        let store = Arc::clone(&shard.store);
        let after = RelaySeq(*position);
        let read = glommio::executor().spawn_blocking(move || store.replay(after, max_events, chunk_bytes)).await;
        let mut chunk = read.map_err(|e| {
            tracing::error!(error = %e, "replay read failed");
            End::StoreError
        })?;
        // Pongs first: a client pinging during a long replay is answered between chunks.
        queue.take_controls(&mut buf);
        let started = std::time::Instant::now();
        let (events, hidden, last_scanned) = (chunk.events.len(), chunk.hidden, chunk.last_scanned);
        let mut bytes = 0;
        // Written in slices, each given back to the replay memory (and its events freed) as it
        // leaves: a reader that stalls part-way holds only what it has not read.
        for (_, frame) in chunk.events.drain(..) {
            ws::push_frame_header(&mut buf, Opcode::Binary, frame.len());
            buf.extend_from_slice(&frame);
            bytes += frame.len();
            if buf.len() >= SLICE_BYTES {
                write(wr, &buf, queue, &shard.metrics).await?;
                held.release(buf.len() as u64);
                buf.clear();
            }
        }
        write(wr, &buf, queue, &shard.metrics).await?;
        drop(held);
        if events + hidden >= max_events || bytes >= chunk_bytes {
            // A full chunk: how long it took says how fast this subscriber reads.
            pacer.wrote(bytes.max(chunk_bytes), started.elapsed());
        }
        shard.metrics.replay_events.inc_by(events as u64);
        shard.metrics.replay_hidden.inc_by(hidden as u64);
        if let Some(last) = last_scanned {
            *position = (*position).max(last.0);
        }
        progress.position.store(*position, Ordering::Relaxed);
        let short = events + hidden < max_events && bytes < chunk_bytes;
        glommio::yield_if_needed().await;
        // Caught up: nothing more stored, and nothing published since that is not stored-and-sent.
        // No await between this check and the registration.
        if short && *position >= shard.head.get() {
            return Ok(shard.register(Rc::clone(queue), progress));
        }
    }
}
