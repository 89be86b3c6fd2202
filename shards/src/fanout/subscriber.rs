//! One subscriber connection: replay from the store at its own pace ([`super::replay`]), live from
//! its bounded queue, back to the store whenever its queue overflows, and the reader that answers
//! its pings and notices its close.
//!
//! The rules, in one place:
//! - A subscriber behind the live tail (a cursor, or a queue that overflowed) reads from the store in
//!   chunks bounded in bytes, at its own pace: it is never cut off for being behind.
//! - A live subscriber's queue holds `subscriber_queue` frames; when the publisher finds it full,
//!   the subscriber goes back to the store from its last frame (`relay_subscriber_fallbacks_total`),
//!   with no gap and no duplicate, and joins the live tail again once caught up.
//! - A subscriber whose socket accepts nothing for `stall_timeout` is closed
//!   (`relay_subscribers_closed_total{reason="consumer_too_slow"}`); the `ConsumerTooSlow` error
//!   frame goes with it when the socket still takes it within a second.
//! - Pings are answered in order with the frames, between replay chunks too.

use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_lite::io::{ReadHalf, WriteHalf};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use wire::RelaySeq;
use wire::frame::ErrorBody;
use wire::ws::{self, Opcode};

use super::queue::{Outgoing, Queue};
use super::{FanoutShard, SubscriberProgress};
use crate::metrics::Metrics;

/// Bytes gathered into one socket write at most (several frames per syscall under load).
pub(super) const MAX_WRITE_BATCH_BYTES: usize = 256 * 1024;

/// What the admin and logs know of a subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriberInfo {
    /// Remote address.
    pub remote: String,
    /// The cursor it connected with.
    pub cursor: Option<u64>,
    /// `User-Agent` header, if any.
    pub user_agent: Option<String>,
    /// When it connected, ms since the UNIX epoch.
    pub connected_ms: u64,
    /// What it subscribed to: `firehose`, `jetstream-v1` or `jetstream-v2`.
    pub endpoint: &'static str,
}

fn error_frame(error: &str, message: &str) -> Vec<u8> {
    let body = ErrorBody { error: error.to_owned(), message: Some(message.to_owned()) };
    // Encoding two strings cannot fail.
    ws::encode_frame(Opcode::Binary, &body.encode().unwrap_or_default())
}

/// Why a subscriber's writer ended (the `reason` label of `relay_subscribers_closed_total`).
#[derive(Debug, Clone, Copy)]
pub(crate) enum End {
    /// Its socket accepted nothing for the stall timeout.
    Stalled,
    FutureCursor,
    ClientClosed,
    /// Closed by the admin API.
    Killed,
    /// The relay is shutting down.
    Shutdown,
    WriteError,
    StoreError,
    /// A Jetstream subscriber sent an invalid message (`options_update`).
    BadMessage,
    /// A splitter's upstream sequence was reset and its store cut back below this subscriber.
    Reset,
}

impl End {
    /// Every end, for pre-registering the counter's labels.
    pub(crate) const ALL: [End; 9] = [
        End::Stalled,
        End::FutureCursor,
        End::ClientClosed,
        End::Killed,
        End::Shutdown,
        End::WriteError,
        End::StoreError,
        End::BadMessage,
        End::Reset,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            End::Stalled => "consumer_too_slow",
            End::FutureCursor => "future_cursor",
            End::ClientClosed => "client_closed",
            End::Killed => "killed",
            End::Shutdown => "shutdown",
            End::WriteError => "write_error",
            End::StoreError => "store_error",
            End::BadMessage => "bad_message",
            End::Reset => "upstream_reset",
        }
    }
}

/// Writes `buf`; a write that makes no progress for the socket's write timeout is a stall.
pub(super) async fn write(
    wr: &mut WriteHalf<TcpStream>,
    buf: &[u8],
    queue: &Queue,
    metrics: &Metrics,
) -> Result<(), End> {
    if buf.is_empty() {
        return Ok(());
    }
    match wr.write_all(buf).await {
        Ok(()) => {
            metrics.subscriber_bytes.inc_by(buf.len() as u64);
            Ok(())
        }
        Err(_) if queue.is_closed() => Err(End::ClientClosed),
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Err(End::Stalled),
        Err(_) => Err(End::WriteError),
    }
}

/// How a live stretch ended.
enum Live {
    /// The queue overflowed: back to the store.
    Behind,
    Ended(End),
}

impl FanoutShard {
    /// Serves one subscriber whose websocket handshake has been answered: replays from `cursor`
    /// (events with `seq > cursor`) when given, then streams live events until the subscriber closes,
    /// stalls, or a write fails. `leftover` holds bytes read past the HTTP head.
    pub async fn serve(
        self: Rc<Self>,
        stream: TcpStream,
        cursor: Option<RelaySeq>,
        leftover: Vec<u8>,
        info: SubscriberInfo,
    ) {
        self.metrics.subscribers.inc();
        self.serving.set(self.serving.get() + 1);
        let listed = self.directory.add(info.clone());
        let _ = stream.set_write_timeout(Some(self.config.stall_timeout));
        let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
        let (rd, wr) = futures_lite::io::split(stream);
        let queue = Rc::new(Queue::new(self.config.subscriber_queue));
        let reader = glommio::spawn_local(read_client(rd, Rc::clone(&queue), leftover));
        let progress = Arc::clone(&listed.progress);
        let epoch = self.epoch();
        let (wr, end) = Rc::clone(&self).stream_events(wr, fd, Rc::clone(&queue), cursor, progress).await;
        let end = if self.epoch() != epoch && matches!(end, End::ClientClosed) { End::Reset } else { end };
        let bye = match end {
            End::Stalled => {
                tracing::info!(remote = %info.remote, "subscriber stalled; closing");
                let mut bye = error_frame("ConsumerTooSlow", "subscriber stopped reading");
                bye.extend(ws::encode_close(1008, "ConsumerTooSlow"));
                Some(bye)
            }
            End::FutureCursor => {
                let mut bye = error_frame("FutureCursor", "cursor is ahead of the relay's sequence");
                bye.extend(ws::encode_close(1008, "FutureCursor"));
                Some(bye)
            }
            End::StoreError => Some(ws::encode_close(1011, "internal error")),
            End::ClientClosed => Some(ws::encode_close(1000, "")),
            End::Killed => Some(ws::encode_close(1008, "closed by the relay's operator")),
            End::Shutdown => Some(ws::encode_close(1001, "relay shutting down")),
            End::Reset => Some(ws::encode_close(1012, "the upstream's sequence was reset; reconnect")),
            End::WriteError | End::BadMessage => None,
        };
        if let Some(mut wr) = wr {
            if let Some(bye) = bye {
                let _ = crate::net::with_timeout(Duration::from_secs(1), wr.write_all(&bye)).await;
            }
            let _ = wr.close().await;
        }
        drop(reader);
        Metrics::inc(&self.metrics.subscribers_closed, "reason", end.as_str());
        self.metrics.subscribers.dec();
        self.serving.set(self.serving.get().saturating_sub(1));
        drop(listed);
    }

    /// Replay and live, in turn, until the subscriber is done. Returns the write half for the
    /// goodbye (`None` if it was lost with a replay task that could not start).
    async fn stream_events(
        self: Rc<Self>,
        mut wr: WriteHalf<TcpStream>,
        fd: std::os::fd::RawFd,
        queue: Rc<Queue>,
        cursor: Option<RelaySeq>,
        progress: Arc<SubscriberProgress>,
    ) -> (Option<WriteHalf<TcpStream>>, End) {
        // The highest seq this subscriber has been given (or skipped: hidden by a tombstone).
        let mut position = match cursor {
            Some(c) if c > self.committed() => return (Some(wr), End::FutureCursor),
            Some(c) => c.0,
            None => self.head.get(),
        };
        let mut replaying = cursor.is_some();
        let mut parts = Vec::with_capacity(256);
        loop {
            let id = if replaying {
                progress.replaying.store(true, Ordering::Relaxed);
                let replay =
                    super::replay::run(Rc::clone(&self), wr, Rc::clone(&queue), position, Arc::clone(&progress));
                let (back, outcome) = match self.replay_tq.get() {
                    // Replay runs in its own task queue, with fewer shares than live delivery.
                    Some(tq) => match glommio::spawn_local_into(replay, tq) {
                        Ok(task) => task.await,
                        // Not reachable: the queue is this executor's own.
                        Err(_) => return (None, End::StoreError),
                    },
                    None => replay.await,
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
                self.register(Rc::clone(&queue), &progress)
            };
            let live = self.stream_live(&mut wr, fd, &queue, &mut parts, &mut position, &progress).await;
            self.unregister(id);
            match live {
                Live::Behind if progress.kill.load(Ordering::Acquire) => return (Some(wr), End::Killed),
                Live::Behind => {
                    queue.reset_events();
                    self.metrics.subscriber_fallbacks.inc();
                    replaying = true;
                }
                Live::Ended(end) => return (Some(wr), end),
            }
        }
    }

    async fn stream_live(
        &self,
        wr: &mut WriteHalf<TcpStream>,
        fd: std::os::fd::RawFd,
        queue: &Queue,
        parts: &mut Vec<bytes::Bytes>,
        position: &mut u64,
        progress: &SubscriberProgress,
    ) -> Live {
        let mut items = Vec::new();
        loop {
            // Let latency-sensitive task queues (the API) run when this one has had its slice.
            glommio::yield_if_needed().await;
            items.clear();
            if queue.next_batch(&mut items, MAX_WRITE_BATCH_BYTES).await.is_none() {
                if self.closing.get() {
                    return Live::Ended(End::Shutdown);
                }
                return match (queue.is_behind(), progress.kill.load(Ordering::Acquire)) {
                    (_, true) => Live::Ended(End::Killed),
                    (true, false) => Live::Behind,
                    (false, false) => Live::Ended(End::ClientClosed),
                };
            }
            parts.clear();
            let mut last = *position;
            let mut committed_at = None;
            for item in items.drain(..) {
                match item {
                    Outgoing::Event(seq, frame, at) => {
                        if seq.0 > last {
                            parts.push(frame);
                            last = seq.0;
                            committed_at = Some(at);
                        }
                    }
                    Outgoing::Control(frame) => parts.push(frame),
                }
            }
            if let Err(end) = super::send::write_parts(wr, fd, parts, queue, &self.metrics).await {
                return Live::Ended(end);
            }
            if let Some(at) = committed_at {
                self.metrics.fanout_delay_seconds.observe(at.elapsed().as_secs_f64());
            }
            *position = last;
            progress.position.store(last, Ordering::Relaxed);
        }
    }
}

async fn read_client(mut rd: ReadHalf<TcpStream>, queue: Rc<Queue>, mut buf: Vec<u8>) {
    let mut chunk = vec![0u8; 4096];
    loop {
        loop {
            match ws::decode_client_frame(&buf) {
                Ok(Some((frame, used))) => {
                    buf.drain(..used);
                    match frame.opcode {
                        Opcode::Ping => {
                            queue.push_control(Outgoing::Control(ws::encode_frame(Opcode::Pong, &frame.payload).into()))
                        }
                        Opcode::Close => {
                            // The writer stops and answers with its own close frame.
                            queue.close();
                            return;
                        }
                        // Subscribers have nothing to say on this endpoint; data frames are ignored.
                        _ => {}
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "subscriber protocol error");
                    queue.close();
                    return;
                }
            }
        }
        match rd.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                queue.close();
                return;
            }
            Ok(n) => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
        }
    }
}
