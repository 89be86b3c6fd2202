//! Replay from the store for one subscriber: chunks bounded in events and bytes, read off the
//! executor, written at the subscriber's own pace with its pongs between chunks; the shard's replay
//! memory (all chunks in flight) is bounded too. Events retention deleted under the subscriber's
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

use super::queue::Queue;
use super::subscriber::{End, write};
use super::{FanoutShard, SubscriberProgress};

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
    let units = (max_bytes as u64).min(shard.config.replay_memory_bytes.max(1));
    let mut buf = Vec::with_capacity(max_bytes.min(4 << 20));
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
        // Waits while the shard's other replays hold its replay memory.
        let permit = shard.replay_budget.acquire_permit(units).await.map_err(|_| End::StoreError)?;
        let store = Arc::clone(&shard.store);
        let after = RelaySeq(*position);
        let read = glommio::executor().spawn_blocking(move || store.replay(after, max_events, max_bytes)).await;
        let chunk = read.map_err(|e| {
            tracing::error!(error = %e, "replay read failed");
            End::StoreError
        })?;
        // Pongs first: a client pinging during a long replay is answered between chunks.
        queue.take_controls(&mut buf);
        let mut bytes = 0;
        for (_, frame) in &chunk.events {
            ws::push_frame_header(&mut buf, Opcode::Binary, frame.len());
            buf.extend_from_slice(frame);
            bytes += frame.len();
        }
        write(wr, &buf, queue, &shard.metrics).await?;
        drop(permit);
        shard.metrics.replay_events.inc_by(chunk.events.len() as u64);
        shard.metrics.replay_hidden.inc_by(chunk.hidden as u64);
        if let Some(last) = chunk.last_scanned {
            *position = (*position).max(last.0);
        }
        progress.position.store(*position, Ordering::Relaxed);
        let short = chunk.events.len() + chunk.hidden < max_events && bytes < max_bytes;
        glommio::yield_if_needed().await;
        // Caught up: nothing more stored, and nothing published since that is not stored-and-sent.
        // No await between this check and the registration.
        if short && *position >= shard.head.get() {
            return Ok(shard.register(Rc::clone(queue), progress));
        }
    }
}
