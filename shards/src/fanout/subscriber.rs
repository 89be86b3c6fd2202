//! One subscriber connection: its bounded queue, the writer (replay, then live), and the reader
//! (pings and closes from the subscriber).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use futures_lite::io::{ReadHalf, WriteHalf};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use wire::RelaySeq;
use wire::frame::ErrorBody;
use wire::ws::{self, Opcode};

use super::FanoutShard;
use crate::metrics::Metrics;

/// Bytes gathered into one socket write at most (several frames per syscall under load).
const MAX_WRITE_BATCH_BYTES: usize = 256 * 1024;
/// When a subscriber is found too slow during a write, how long that write may still take (so the
/// stream stays frame-aligned and the error frame can follow) before the socket is closed without it.
const TOO_SLOW_GRACE: Duration = Duration::from_secs(2);

/// Something to write to a subscriber.
#[derive(Debug, Clone)]
pub enum Outgoing {
    /// An event frame (complete websocket frame) with its relay seq.
    Event(RelaySeq, Bytes),
    /// A control frame (pong), written in order with events.
    Control(Bytes),
}

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
}

/// Pongs a subscriber may have waiting; a client that pings faster than it reads is closed.
const MAX_PENDING_CONTROL: usize = 16;

/// A subscriber's bounded queue. Events beyond the capacity are refused; control frames have their
/// own small bound ([`MAX_PENDING_CONTROL`]).
pub(crate) struct Queue {
    items: RefCell<VecDeque<Outgoing>>,
    capacity: usize,
    controls: Cell<usize>,
    too_slow: Cell<bool>,
    closed: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

impl Queue {
    fn new(capacity: usize) -> Self {
        Self {
            items: RefCell::new(VecDeque::new()),
            capacity: capacity.max(1),
            controls: Cell::new(0),
            too_slow: Cell::new(false),
            closed: Cell::new(false),
            waker: Cell::new(None),
        }
    }

    fn wake(&self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Queues an event; `Err` when the queue is full.
    pub(crate) fn push(&self, item: Outgoing) -> Result<(), Outgoing> {
        let mut items = self.items.borrow_mut();
        if items.len() >= self.capacity {
            return Err(item);
        }
        items.push_back(item);
        drop(items);
        self.wake();
        Ok(())
    }

    /// Queues a control frame; closes the subscriber instead when too many are waiting.
    fn push_control(&self, item: Outgoing) {
        if self.controls.get() >= MAX_PENDING_CONTROL {
            self.close();
            return;
        }
        self.controls.set(self.controls.get() + 1);
        self.items.borrow_mut().push_back(item);
        self.wake();
    }

    /// Marks the subscriber as too slow; its writer stops at once.
    pub(crate) fn mark_too_slow(&self) {
        self.too_slow.set(true);
        self.wake();
    }

    fn close(&self) {
        self.closed.set(true);
        self.wake();
    }

    /// Completes once the subscriber is marked too slow (or closed).
    async fn until_stopped(&self) {
        std::future::poll_fn(|cx| {
            if self.stopped() {
                return Poll::Ready(());
            }
            self.waker.set(Some(cx.waker().clone()));
            Poll::Pending
        })
        .await
    }

    fn stopped(&self) -> bool {
        self.too_slow.get() || self.closed.get()
    }

    /// Waits for items and takes up to `max_bytes` of them; `None` once the subscriber is stopped.
    async fn next_batch(&self, out: &mut Vec<Outgoing>, max_bytes: usize) -> Option<()> {
        std::future::poll_fn(|cx| {
            if self.stopped() {
                return Poll::Ready(None);
            }
            let mut items = self.items.borrow_mut();
            if items.is_empty() {
                self.waker.set(Some(cx.waker().clone()));
                return Poll::Pending;
            }
            let mut bytes = 0;
            while let Some(item) = items.pop_front() {
                bytes += match &item {
                    Outgoing::Event(_, b) => b.len(),
                    Outgoing::Control(b) => {
                        self.controls.set(self.controls.get().saturating_sub(1));
                        b.len()
                    }
                };
                out.push(item);
                if bytes >= max_bytes {
                    break;
                }
            }
            Poll::Ready(Some(()))
        })
        .await
    }
}

fn error_frame(error: &str, message: &str) -> Vec<u8> {
    let body = ErrorBody { error: error.to_owned(), message: Some(message.to_owned()) };
    // Encoding two strings cannot fail.
    ws::encode_frame(Opcode::Binary, &body.encode().unwrap_or_default())
}

/// Why a subscriber's writer ended (the `reason` label of `relay_subscribers_closed_total`).
#[derive(Debug, Clone, Copy)]
enum End {
    ConsumerTooSlow,
    /// Too slow, and the write in flight did not finish: no error frame can follow a partial frame.
    ConsumerTooSlowMidFrame,
    FutureCursor,
    ClientClosed,
    WriteError,
    StoreError,
}

impl End {
    fn as_str(self) -> &'static str {
        match self {
            End::ConsumerTooSlow | End::ConsumerTooSlowMidFrame => "consumer_too_slow",
            End::FutureCursor => "future_cursor",
            End::ClientClosed => "client_closed",
            End::WriteError => "write_error",
            End::StoreError => "store_error",
        }
    }
}

impl FanoutShard {
    /// Serves one subscriber whose websocket handshake has been answered: replays from `cursor`
    /// (events with `seq > cursor`) when given, then streams live events until the subscriber closes,
    /// falls too far behind, or a write fails. `leftover` holds bytes read past the HTTP head.
    pub async fn serve(
        self: Rc<Self>,
        stream: TcpStream,
        cursor: Option<RelaySeq>,
        leftover: Vec<u8>,
        info: SubscriberInfo,
    ) {
        self.metrics.subscribers.inc();
        let _listed = self.directory.add(info.clone());
        let _ = stream.set_write_timeout(Some(self.config.write_timeout));
        let (rd, mut wr) = futures_lite::io::split(stream);
        let queue = Rc::new(Queue::new(self.config.subscriber_queue));
        let reader = glommio::spawn_local(read_client(rd, Rc::clone(&queue), leftover));
        let end = self.write_events(&mut wr, &queue, cursor).await;
        match end {
            End::ConsumerTooSlow => {
                tracing::info!("subscriber too slow; closing");
                let mut bye = error_frame("ConsumerTooSlow", "subscriber queue overflowed");
                bye.extend(ws::encode_close(1008, "ConsumerTooSlow"));
                let _ = crate::net::with_timeout(Duration::from_secs(1), wr.write_all(&bye)).await;
            }
            End::FutureCursor => {
                let mut bye = error_frame("FutureCursor", "cursor is ahead of the relay's sequence");
                bye.extend(ws::encode_close(1008, "FutureCursor"));
                let _ = wr.write_all(&bye).await;
            }
            End::StoreError => {
                let _ = wr.write_all(&ws::encode_close(1011, "internal error")).await;
            }
            End::ClientClosed => {
                let bye = ws::encode_close(1000, "");
                let _ = crate::net::with_timeout(Duration::from_secs(1), wr.write_all(&bye)).await;
            }
            End::ConsumerTooSlowMidFrame | End::WriteError => {}
        }
        let _ = wr.close().await;
        drop(reader);
        Metrics::inc(&self.metrics.subscribers_closed, "reason", end.as_str());
        self.metrics.subscribers.dec();
    }

    async fn write_events(&self, wr: &mut WriteHalf<TcpStream>, queue: &Rc<Queue>, cursor: Option<RelaySeq>) -> End {
        let mut buf = Vec::with_capacity(64 * 1024);
        let mut last_sent = match cursor {
            Some(c) if c > self.committed() => return End::FutureCursor,
            Some(c) => c.0,
            None => self.head.get(),
        };
        if cursor.is_some() {
            let chunk = self.config.replay_chunk.max(1);
            loop {
                let store = std::sync::Arc::clone(&self.store);
                let after = RelaySeq(last_sent);
                let events = match glommio::executor().spawn_blocking(move || store.events_after(after, chunk)).await {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::error!(error = %e, "replay read failed");
                        return End::StoreError;
                    }
                };
                if queue.stopped() {
                    return End::ClientClosed;
                }
                let n = events.len();
                buf.clear();
                for (seq, frame) in events {
                    ws::push_frame_header(&mut buf, Opcode::Binary, frame.len());
                    buf.extend_from_slice(&frame);
                    last_sent = seq.0;
                }
                if let Err(end) = write(wr, &buf, queue).await {
                    return end;
                }
                glommio::yield_if_needed().await;
                // Caught up: nothing more stored, and nothing published since that is not stored-and-sent.
                // No await between this check and `register`, so no live event can slip between them.
                if n < chunk && last_sent >= self.head.get() {
                    break;
                }
            }
        }
        let id = self.register(Rc::clone(queue));
        let end = self.stream_live(wr, queue, &mut buf, last_sent).await;
        self.unregister(id);
        end
    }

    async fn stream_live(
        &self,
        wr: &mut WriteHalf<TcpStream>,
        queue: &Queue,
        buf: &mut Vec<u8>,
        mut last_sent: u64,
    ) -> End {
        let mut items = Vec::new();
        loop {
            // Let latency-sensitive task queues (the API) run when this one has had its slice.
            glommio::yield_if_needed().await;
            items.clear();
            if queue.next_batch(&mut items, MAX_WRITE_BATCH_BYTES).await.is_none() {
                return if queue.too_slow.get() { End::ConsumerTooSlow } else { End::ClientClosed };
            }
            buf.clear();
            for item in items.drain(..) {
                match item {
                    Outgoing::Event(seq, frame) => {
                        if seq.0 > last_sent {
                            buf.extend_from_slice(&frame);
                            last_sent = seq.0;
                        }
                    }
                    Outgoing::Control(frame) => buf.extend_from_slice(&frame),
                }
            }
            if queue.too_slow.get() {
                return End::ConsumerTooSlow;
            }
            if let Err(end) = write(wr, buf, queue).await {
                return end;
            }
        }
    }
}

/// Writes `buf`, unless the subscriber is found too slow meanwhile (see [`TOO_SLOW_GRACE`]).
async fn write(wr: &mut WriteHalf<TcpStream>, buf: &[u8], queue: &Queue) -> Result<(), End> {
    if buf.is_empty() {
        return Ok(());
    }
    let mut write = std::pin::pin!(wr.write_all(buf));
    let raced = futures_lite::future::or(async { Some((&mut write).await) }, async {
        queue.until_stopped().await;
        None
    })
    .await;
    match raced {
        Some(Ok(())) => Ok(()),
        Some(Err(_)) => Err(End::WriteError),
        None if queue.too_slow.get() => match crate::net::with_timeout(TOO_SLOW_GRACE, write).await {
            Some(Ok(())) => Err(End::ConsumerTooSlow),
            _ => Err(End::ConsumerTooSlowMidFrame),
        },
        // The subscriber went away: nothing more to write.
        None => Err(End::ClientClosed),
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
