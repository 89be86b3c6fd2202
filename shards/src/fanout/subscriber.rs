//! A firehose (`com.atproto.sync.subscribeRepos`) subscriber: its [`Wire`] (relay seqs, stored
//! frames as they are), its goodbye, and the reader that answers its pings (in order with the
//! frames, between replay chunks too) and notices its close. The stream's rules are in
//! [`super::session`].

use std::rc::Rc;
use std::sync::Arc;

use futures_lite::io::{ReadHalf, WriteHalf};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use wire::RelaySeq;
use wire::frame::{ErrorBody, Event, Info};
use wire::ws::{self, Opcode};

use super::queue::{Outgoing, Queue};
use super::session::{RelayPositions, Start, Wire, close_with};
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
pub(super) async fn write<S>(
    wr: &mut WriteHalf<TcpStream>,
    buf: &[u8],
    queue: &Queue<S>,
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

/// The firehose's wire: positions are relay seqs and a stored frame goes out as it is.
pub(crate) struct Firehose;

impl Wire for Firehose {
    type P = RelayPositions;
    type Extra = ();

    fn read_extra(_: &storage::Store, _: &storage::ReplayChunk) -> Result<(), storage::StoreError> {
        Ok(())
    }

    /// `#info` with `name: "OutdatedCursor"`, the one name the `#info` message of
    /// `com.atproto.sync.subscribeRepos` knows (bluesky-social/atproto,
    /// lexicons/com/atproto/sync/subscribeRepos.json, `defs.info.properties.name.knownValues`);
    /// replay then goes on from the oldest stored event, as the reference PDS does (indigo's relay
    /// sends nothing: bluesky-social/indigo#1328).
    fn outdated(&self, _: &FanoutShard, oldest: RelaySeq) -> Option<Vec<u8>> {
        Some(outdated_cursor_frame(oldest.0))
    }

    fn replayed(&self, _: &FanoutShard, _: RelaySeq, frame: &[u8], _: &mut (), _: RelaySeq, out: &mut Vec<u8>) -> u64 {
        // The store is read after the position: every event of a chunk follows it.
        ws::push_frame_header(out, Opcode::Binary, frame.len());
        out.extend_from_slice(frame);
        1
    }

    fn register(self: &Rc<Self>, shard: &FanoutShard, queue: &Rc<Queue>, progress: &Arc<SubscriberProgress>) -> u64 {
        shard.register(Rc::clone(queue), progress)
    }

    fn unregister(&self, shard: &FanoutShard, id: u64) {
        shard.unregister(id);
    }

    fn count_sent(&self, _: &FanoutShard, _: u64) {}
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
        let (wr, end) = match cursor {
            Some(c) if c > self.committed() => (Some(wr), End::FutureCursor),
            // The highest seq this subscriber has been given (or skipped: hidden by a tombstone).
            Some(c) => Rc::clone(&self).stream(wr, fd, &queue, &Rc::new(Firehose), Start::Replay(c), progress).await,
            None => {
                let head = Start::Live(self.head());
                Rc::clone(&self).stream(wr, fd, &queue, &Rc::new(Firehose), head, progress).await
            }
        };
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
        close_with(wr, bye).await;
        drop(reader);
        Metrics::inc(&self.metrics.subscribers_closed, "reason", end.as_str());
        self.metrics.subscribers.dec();
        self.serving.set(self.serving.get().saturating_sub(1));
        drop(listed);
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
