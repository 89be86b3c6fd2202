//! Jetstream replay from the store for one subscriber: the firehose replay's chunks (bounded in
//! events and bytes, read off the executor, under the shard's replay memory), each stored event
//! converted, filtered and encoded for this subscriber, with the times of the `time_index` entries
//! read with the chunk. Registers the subscriber for live messages once caught up, with no await
//! between the check and the registration.

use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures_lite::io::WriteHalf;
use glommio::net::TcpStream;
use wire::RelaySeq;
use wire::frame::Frame;
use wire::jetstream;

use super::super::pace::{Held, ReplayPacer};
use super::super::queue::Queue;
use super::super::replay::SLICE_BYTES;
use super::super::subscriber::{End, write};
use super::super::{FanoutShard, SubscriberProgress};
use super::{JetSub, codec, end_of_relay_seq};
use crate::metrics::Metrics;

/// Replays messages after Jetstream seq `position` until caught up, then registers for live ones.
/// Returns the write half, and the position reached with the live registration id.
pub(super) async fn run(
    shard: Rc<FanoutShard>,
    mut wr: WriteHalf<TcpStream>,
    queue: Rc<Queue>,
    sub: Rc<JetSub>,
    mut position: u64,
    progress: Arc<SubscriberProgress>,
) -> (WriteHalf<TcpStream>, Result<(u64, u64), End>) {
    let result = replay(&shard, &mut wr, &queue, &sub, &mut position, &progress).await.map(|id| (position, id));
    (wr, result)
}

/// The second (and its first seq) of relay seq `seq` among `entries` (sorted, as
/// `Store::time_entries_covering` returns them), moving `cursor` forward.
fn second_of(entries: &[(u64, RelaySeq)], cursor: &mut usize, seq: u64) -> (u64, u64) {
    while entries.get(*cursor + 1).is_some_and(|(_, first)| first.0 <= seq) {
        *cursor += 1;
    }
    entries.get(*cursor).map_or((0, 0), |(s, f)| (*s, f.0))
}

async fn replay(
    shard: &Rc<FanoutShard>,
    wr: &mut WriteHalf<TcpStream>,
    queue: &Rc<Queue>,
    sub: &Rc<JetSub>,
    position: &mut u64,
    progress: &Arc<SubscriberProgress>,
) -> Result<u64, End> {
    let (max_events, max_bytes) = (shard.config.replay_chunk_events.max(1), shard.config.replay_chunk_bytes.max(1));
    let budget = shard.config.replay_memory_bytes.max(1);
    let mut pacer = ReplayPacer::new(max_bytes);
    let epoch = shard.epoch();
    let endpoint = sub.format.label();
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
        // This subscriber's chunk, at its pace (as the firehose's replay).
        let chunk_bytes = pacer.chunk_bytes();
        let mut held =
            Held::acquire(&shard.replay_budget, (chunk_bytes as u64).min(budget)).await.map_err(|_| End::StoreError)?;
        let store = Arc::clone(&shard.store);
        // The relay event holding the next Jetstream seq, and the store read after the one before.
        let next_relay = position.saturating_add(1) >> 8;
        let after = RelaySeq(next_relay.saturating_sub(1));
        let read = glommio::executor()
            .spawn_blocking(move || {
                let chunk = store.replay(after, max_events, chunk_bytes)?;
                let entries = match (chunk.events.first(), chunk.events.last()) {
                    (Some((first, _)), Some((last, _))) => store.time_entries_covering(*first, *last)?,
                    _ => Vec::new(),
                };
                Ok::<_, storage::StoreError>((chunk, entries))
            })
            .await;
        let (chunk, entries) = read.map_err(|e| {
            tracing::error!(error = %e, "jetstream replay read failed");
            End::StoreError
        })?;
        queue.take_controls(&mut buf);
        let started = std::time::Instant::now();
        let bytes: usize = chunk.events.iter().map(|(_, f)| f.len()).sum();
        let mut at = 0;
        let mut sent = 0;
        for (seq, frame) in &chunk.events {
            let Ok(Frame::Message(event)) = wire::frame::decode_frame(frame) else { continue };
            let (second, first) = second_of(&entries, &mut at, seq.0);
            let converted = jetstream::convert(&event, jetstream::time_us(second, first, seq.0));
            shard.metrics.jetstream_unconvertible.inc_by(converted.unconvertible as u64);
            for ev in converted.events {
                if ev.seq() <= *position {
                    continue;
                }
                let prepared = codec::Prepared::new(ev);
                if let Some(frame) = sub.frame(&prepared, shard) {
                    buf.extend_from_slice(&frame);
                    sent += 1;
                }
            }
            // Written in slices, the replay memory given back as each leaves.
            if buf.len() >= SLICE_BYTES {
                write(wr, &buf, queue, &shard.metrics).await?;
                held.release(buf.len() as u64);
                buf.clear();
            }
        }
        write(wr, &buf, queue, &shard.metrics).await?;
        drop(held);
        if chunk.events.len() + chunk.hidden >= max_events || bytes >= chunk_bytes {
            pacer.wrote(bytes.max(chunk_bytes), started.elapsed());
        }
        Metrics::inc_by(&shard.metrics.jetstream_messages, "endpoint", endpoint, sent);
        shard.metrics.replay_events.inc_by(chunk.events.len() as u64);
        shard.metrics.replay_hidden.inc_by(chunk.hidden as u64);
        if let Some(last) = chunk.last_scanned {
            *position = (*position).max(end_of_relay_seq(last.0));
        }
        progress.position.store(*position >> 8, Ordering::Relaxed);
        let short = chunk.events.len() + chunk.hidden < max_events && bytes < chunk_bytes;
        glommio::yield_if_needed().await;
        // Caught up: no await between this check and the registration.
        if short && *position >= end_of_relay_seq(shard.head.get()) {
            return Ok(shard.register_jet(Rc::clone(queue), sub, progress));
        }
        if short && chunk.last_scanned.is_none() {
            // Nothing stored after the position but the head is ahead (retention or a gap):
            // the position moves to the head.
            *position = (*position).max(end_of_relay_seq(shard.head.get()));
            return Ok(shard.register_jet(Rc::clone(queue), sub, progress));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_are_found_in_order() {
        let entries = [(100, RelaySeq(1)), (101, RelaySeq(5)), (105, RelaySeq(9))];
        let mut at = 0;
        assert_eq!(second_of(&entries, &mut at, 1), (100, 1));
        assert_eq!(second_of(&entries, &mut at, 4), (100, 1));
        assert_eq!(second_of(&entries, &mut at, 5), (101, 5));
        assert_eq!(second_of(&entries, &mut at, 20), (105, 9));
        assert_eq!(second_of(&[], &mut 0, 3), (0, 0));
    }
}
