//! The splitter's follower: one websocket to the current upstream (`subscribeRepos?cursor=<the last
//! seq kept>`), each frame decided by [`UpstreamStream`], the frames kept written in upstream order
//! as group commits (one RocksDB `WriteBatch` per batch of whatever arrived meanwhile, fsynced per
//! the store's options) and only then handed to the fanout shards. On any failure the follower
//! moves to the next configured upstream and resumes from the last seq kept: upstreams with the
//! same seq space (a relay and its splitters) give no gap and no duplicate.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::Message;
use async_tungstenite::tungstenite::client::IntoClientRequest;
use async_tungstenite::tungstenite::http::HeaderValue;
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use bytes::Bytes;
use futures_util::StreamExt;
use glommio::channels::shared_channel::SharedSender;
use storage::{CommitBatch, Store, StoreError};
use wire::frame::{Event, Frame};
use wire::{RelaySeq, ws};

use super::stream::{Action, UpstreamStream};
use super::{SplitterState, UpstreamUrl};
use crate::backoff::Backoff;
use crate::health::Health;
use crate::messages::{Published, PublishedBatch};
use crate::metrics::Metrics;
use crate::net::{self, HttpClient};
use crate::sequencer::pace::CommitPace;

/// The follower's settings.
#[derive(Debug, Clone)]
pub struct FollowConfig {
    /// The upstreams, tried in turn (the first one first); at least one.
    pub upstreams: Vec<UpstreamUrl>,
    /// TCP connect plus websocket handshake deadline. Default 10 s.
    pub connect_timeout: Duration,
    /// An upstream silent this long is closed and the next one tried. Default 60 s (a relay's
    /// firehose is never quiet that long).
    pub idle_timeout: Duration,
    /// First reconnect delay (1 s by default), doubling up to `backoff_max` (30 s by default).
    pub backoff_base: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// Most frames in one group commit. Default 4,096.
    pub max_batch_frames: usize,
    /// Free bytes the data directory must keep; below it the follower stops reading (the upstream's
    /// TCP pushes back) until there is room. Default 1 GiB; 0: no check.
    pub min_free_disk_bytes: u64,
    /// Shortest time between the starts of two group commits (`--commit-interval`, as the relay's
    /// sequencer: [`crate::sequencer::pace::CommitPace`]). Default
    /// [`crate::sequencer::DEFAULT_COMMIT_INTERVAL`].
    pub commit_interval: Duration,
}

impl FollowConfig {
    /// Defaults for `upstreams`.
    pub fn new(upstreams: Vec<UpstreamUrl>) -> Self {
        Self {
            upstreams,
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            max_batch_frames: 4096,
            min_free_disk_bytes: 1 << 30,
            commit_interval: crate::sequencer::DEFAULT_COMMIT_INTERVAL,
        }
    }
}

/// Why the follower stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    /// A store read or write failed: nothing after it was served.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

type Ws = async_tungstenite::WebSocketStream<net::MaybeTls>;

async fn connect(http: &HttpClient, up: &UpstreamUrl, cursor: Option<u64>, timeout: Duration) -> Result<Ws, String> {
    let scheme = if up.tls { "wss" } else { "ws" };
    let url = match cursor {
        Some(c) => format!("{scheme}://{}/xrpc/com.atproto.sync.subscribeRepos?cursor={c}", up.authority()),
        None => format!("{scheme}://{}/xrpc/com.atproto.sync.subscribeRepos", up.authority()),
    };
    let handshake = async {
        // The operator names the upstreams: no SSRF guard (a splitter beside its relay on a
        // private network is the common case).
        let stream = if up.tls {
            net::MaybeTls::Tls(Box::new(
                http.connect_tls_with(&up.host, up.port, timeout, false).await.map_err(|e| e.to_string())?,
            ))
        } else {
            net::MaybeTls::Plain(http.connect_tcp(&up.host, up.port, timeout, false).await.map_err(|e| e.to_string())?)
        };
        // A relay's frames are at most 5 MB; a little room above that.
        let config = WebSocketConfig::default()
            .max_message_size(Some(16 << 20))
            .max_frame_size(Some(16 << 20))
            .read_buffer_size(256 * 1024);
        let mut request = url.as_str().into_client_request().map_err(|e| e.to_string())?;
        // `(atproto-relay)`: relays refuse to crawl a splitter as a PDS (indigo's convention).
        request.headers_mut().insert("user-agent", HeaderValue::from_static(net::USER_AGENT));
        let (ws, _) = async_tungstenite::client_async_with_config(request, stream, Some(config))
            .await
            .map_err(|e| e.to_string())?;
        Ok(ws)
    };
    net::with_timeout(timeout, handshake).await.unwrap_or_else(|| Err("handshake timed out".into()))
}

/// The group commit in the making.
struct Batch {
    frames: Vec<(RelaySeq, Bytes)>,
    received: Vec<Instant>,
}

/// What the follower keeps between batches.
struct Writer {
    store: Arc<Store>,
    fanout: Vec<glommio::channels::shared_channel::ConnectedSender<PublishedBatch>>,
    committed: Arc<AtomicU64>,
    metrics: Metrics,
    health: Arc<Health>,
    state: Arc<SplitterState>,
    min_free_disk_bytes: u64,
    /// The newest `time_index` entry: (unix second, its first seq).
    last_indexed: (u64, RelaySeq),
    /// When the next group commit may start.
    pace: CommitPace,
}

impl Writer {
    /// Writes `batch` (durable before it returns) and hands it to the fanout shards.
    async fn commit(&mut self, batch: &mut Batch) -> Result<(), FollowError> {
        let Some(&(first, _)) = batch.frames.first() else { return Ok(()) };
        crate::sequencer::wait_for_disk(&self.store, self.min_free_disk_bytes, &self.health, &self.metrics).await;
        let now_s = crate::unix_ms() / 1000;
        let mut commit = CommitBatch::default();
        if now_s > self.last_indexed.0 {
            commit.time_index = Some((now_s, first));
            self.last_indexed = (now_s, first);
        }
        let mut decoded = Vec::with_capacity(batch.frames.len());
        let mut published = Vec::with_capacity(batch.frames.len());
        for (seq, frame) in batch.frames.drain(..) {
            let event = match wire::frame::decode_frame(&frame) {
                Ok(Frame::Message(e)) => e,
                // A type this build does not know: kept and served as is, nothing for Jetstream.
                _ => Event::Info(wire::frame::Info { name: String::new(), message: None }),
            };
            // A deletion or takedown hides the account's earlier events from replay, as in the relay.
            if crate::sequencer::batch::is_tombstone(&event)
                && let Some(did) = event.did()
            {
                commit.tombstones.push((did.clone(), seq));
            }
            Metrics::inc(&self.metrics.events_relayed, "type", kind(&event));
            published.push((seq, Bytes::from(ws::encode_frame(ws::Opcode::Binary, &frame))));
            commit.events.push((seq, frame));
            decoded.push(event);
        }
        let last = commit.events.last().map_or(first, |(s, _)| *s);
        let writer = Arc::clone(&self.store);
        let started = Instant::now();
        self.pace.started(started);
        glommio::executor().spawn_blocking(move || writer.commit(&commit)).await?;
        let committed_at = Instant::now();
        self.metrics.commit_seconds.observe((committed_at - started).as_secs_f64());
        self.metrics.batch_events.observe(published.len() as f64);
        self.metrics.batch_commits.inc();
        for received in batch.received.drain(..) {
            self.metrics.ingest_to_durable_seconds.observe((committed_at - received).as_secs_f64());
        }
        self.metrics.last_seq.set(i64::try_from(last.0).unwrap_or(i64::MAX));
        self.committed.store(last.0, Ordering::Release);
        self.state.last_seq.store(last.0, Ordering::Release);
        let batch =
            Arc::new(Published { committed_at, events: published, decoded, second: self.last_indexed, reset: None });
        self.publish(batch).await;
        Ok(())
    }

    async fn publish(&self, batch: PublishedBatch) {
        for tx in &self.fanout {
            if tx.send(Arc::clone(&batch)).await.is_ok() {
                self.metrics.fanout_queue_depth.inc();
            }
        }
    }

    /// An operator's reset to `cursor`: the frames above it go (when the store has any), the fanout
    /// shards' heads go back with them and their subscribers are closed.
    async fn reset(&mut self, cursor: Option<u64>) -> Result<(), FollowError> {
        let last = self.store.last_seq()?.map_or(0, |s| s.0);
        if let Some(c) = cursor.filter(|c| *c < last) {
            let store = Arc::clone(&self.store);
            glommio::executor().spawn_blocking(move || store.truncate_after(RelaySeq(c))).await?;
            tracing::warn!(cursor = c, deleted_above = last, "splitter store cut back to the reset cursor");
            self.committed.store(c, Ordering::Release);
            self.state.last_seq.store(c, Ordering::Release);
            self.metrics.last_seq.set(i64::try_from(c).unwrap_or(i64::MAX));
            self.last_indexed = self.store.time_entry_at(u64::MAX)?.unwrap_or((0, RelaySeq(0)));
            let batch = Published {
                committed_at: Instant::now(),
                events: Vec::new(),
                decoded: Vec::new(),
                second: self.last_indexed,
                reset: Some(RelaySeq(c)),
            };
            self.publish(Arc::new(batch)).await;
        }
        Ok(())
    }
}

fn kind(event: &Event) -> &'static str {
    match event {
        Event::Commit(_) => "commit",
        Event::Sync(_) => "sync",
        Event::Identity(_) => "identity",
        Event::Account(_) | Event::Info(_) => "account",
    }
}

/// How one connection ended.
enum Ended {
    /// Try again (the next upstream), with backoff unless it delivered frames: the reason for
    /// `relay_upstream_disconnects_total`.
    Reconnect { reason: &'static str, delivered: bool },
    /// Ingest stopped until an operator's reset.
    Stopped,
    /// An operator asked for a reset.
    Reset(Option<u64>),
    /// The process is stopping.
    Shutdown,
}

/// Follows the upstreams until `stop`, writing what they send to `store` and handing it to the
/// fanout shards `to_fanout`; `committed` is set to the last durable seq after each batch.
///
/// # Errors
/// [`FollowError::Store`] when the store fails (the splitter must stop: nothing more can be made
/// durable).
#[allow(clippy::too_many_arguments)]
pub async fn run(
    config: FollowConfig,
    http: HttpClient,
    store: Arc<Store>,
    to_fanout: Vec<SharedSender<PublishedBatch>>,
    committed: Arc<AtomicU64>,
    metrics: Metrics,
    health: Arc<Health>,
    state: Arc<SplitterState>,
    stop: Arc<AtomicBool>,
) -> Result<(), FollowError> {
    let mut fanout = Vec::with_capacity(to_fanout.len());
    for tx in to_fanout {
        fanout.push(tx.connect().await);
    }
    let last = store.last_seq()?;
    state.last_seq.store(last.map_or(0, |s| s.0), Ordering::Release);
    let mut writer = Writer {
        last_indexed: store.time_entry_at(u64::MAX)?.unwrap_or((0, RelaySeq(0))),
        store,
        fanout,
        committed,
        metrics,
        health,
        state: Arc::clone(&state),
        min_free_disk_bytes: config.min_free_disk_bytes,
        pace: CommitPace::new(config.commit_interval),
    };
    let mut stream = UpstreamStream::new(last);
    let mut backoff = Backoff::new(config.backoff_base, config.backoff_max, 0x5eed);
    let mut which = 0usize;
    let n = config.upstreams.len().max(1);
    while !stop.load(Ordering::Acquire) {
        if let Some(cursor) = state.take_reset() {
            apply_reset(&mut writer, &mut stream, cursor).await?;
        }
        if let Some(why) = stream.stopped() {
            // Wait for the operator, checking for a reset.
            writer.health.set_upstream_stopped(true);
            state.set_stopped(Some(why.to_string()));
            glommio::timer::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let Some(up) = config.upstreams.get(which % n) else { return Ok(()) };
        let cursor = stream.cursor();
        match connect(&http, up, cursor, config.connect_timeout).await {
            Ok(ws) => {
                Metrics::inc(&writer.metrics.upstream_connects, "result", "ok");
                tracing::info!(upstream = %up, cursor = ?cursor, "following the upstream");
                state.set_connected(Some(which % n));
                writer.metrics.upstream_connected.inc();
                stream.connected();
                let ended = read(ws, &config, &mut stream, &mut writer, &state, &stop).await;
                writer.metrics.upstream_connected.dec();
                state.set_connected(None);
                match ended? {
                    Ended::Shutdown => return Ok(()),
                    Ended::Reset(cursor) => {
                        apply_reset(&mut writer, &mut stream, cursor).await?;
                        continue;
                    }
                    Ended::Stopped => {
                        let why = stream.stopped().map(|s| s.to_string()).unwrap_or_default();
                        tracing::error!(upstream = %up, reason = %why, "ingest stopped until an operator resets the cursor (POST /admin/upstream/resetCursor)");
                        Metrics::inc(&writer.metrics.upstream_disconnects, "reason", "future_cursor");
                        continue;
                    }
                    Ended::Reconnect { reason, delivered } => {
                        Metrics::inc(&writer.metrics.upstream_disconnects, "reason", reason);
                        tracing::warn!(upstream = %up, reason, "upstream connection ended; trying the next one");
                        if delivered {
                            backoff.reset();
                        }
                    }
                }
            }
            Err(e) => {
                Metrics::inc(&writer.metrics.upstream_connects, "result", "error");
                tracing::warn!(upstream = %up, error = %e, "cannot connect to the upstream; trying the next one");
            }
        }
        which += 1;
        // A full round over every upstream without success backs off; moving to the next one after
        // a failure is immediate.
        if which.is_multiple_of(n) {
            glommio::timer::sleep(backoff.next_delay()).await;
        }
    }
    Ok(())
}

async fn apply_reset(writer: &mut Writer, stream: &mut UpstreamStream, cursor: Option<u64>) -> Result<(), FollowError> {
    tracing::warn!(cursor = ?cursor, "operator reset the upstream cursor");
    writer.reset(cursor).await?;
    let kept = writer.store.last_seq()?.map(|s| s.0);
    // Resume after the cursor, or after what is kept when the cursor is above it.
    stream.reset(match (cursor, kept) {
        (Some(c), Some(k)) => Some(c.max(k)),
        (Some(c), None) => Some(c),
        (None, k) => k,
    });
    writer.health.set_upstream_stopped(false);
    writer.state.set_stopped(None);
    Metrics::inc(&writer.metrics.host_changes, "change", "cursor_reset");
    Ok(())
}

/// One step of the read loop.
enum Step {
    Message(Option<Option<Result<Message, async_tungstenite::tungstenite::Error>>>),
    Check,
}

/// Reads one connection until it ends, committing what arrives in batches.
async fn read(
    mut ws: Ws,
    config: &FollowConfig,
    stream: &mut UpstreamStream,
    writer: &mut Writer,
    state: &SplitterState,
    stop: &AtomicBool,
) -> Result<Ended, FollowError> {
    let mut batch = Batch { frames: Vec::new(), received: Vec::new() };
    let mut delivered = false;
    loop {
        // Wait for a message, waking every 100 ms for a shutdown or an operator's reset.
        let step = futures_lite::future::or(
            async { Step::Message(net::with_timeout(config.idle_timeout, ws.next()).await) },
            async {
                glommio::timer::sleep(Duration::from_millis(100)).await;
                Step::Check
            },
        )
        .await;
        let mut next = match step {
            Step::Check => {
                if stop.load(Ordering::Acquire) {
                    return Ok(Ended::Shutdown);
                }
                if let Some(cursor) = state.take_reset() {
                    return Ok(Ended::Reset(cursor));
                }
                continue;
            }
            Step::Message(m) => m,
        };
        // This message and whatever else is ready now make one group commit.
        let mut ended = None;
        loop {
            match next {
                None => {
                    ended = Some(Ended::Reconnect { reason: "idle", delivered });
                    break;
                }
                Some(None) | Some(Some(Ok(Message::Close(_)))) => {
                    ended = Some(Ended::Reconnect { reason: "host_closed", delivered });
                    break;
                }
                Some(Some(Err(e))) => {
                    tracing::warn!(error = %e, "upstream connection error");
                    ended = Some(Ended::Reconnect { reason: "error", delivered });
                    break;
                }
                Some(Some(Ok(Message::Binary(bytes)))) => {
                    writer.metrics.upstream_bytes.inc_by(bytes.len() as u64);
                    match stream.frame(&bytes) {
                        Action::Store(seq) => {
                            batch.frames.push((seq, bytes));
                            batch.received.push(Instant::now());
                            delivered = true;
                        }
                        Action::Overlap => tracing::debug!("the cursor's frame again; skipped"),
                        Action::Info(name) => {
                            tracing::info!(name, "upstream #info");
                            Metrics::inc(&writer.metrics.upstream_frames, "type", "info");
                        }
                        Action::NoSeq => Metrics::inc(&writer.metrics.upstream_frames, "type", "other"),
                        Action::Reconnect(reason) => {
                            if reason == "error_frame" {
                                Metrics::inc(&writer.metrics.upstream_error_frames, "error", "other");
                            }
                            ended = Some(Ended::Reconnect { reason, delivered });
                            break;
                        }
                        Action::Stop(why) => {
                            if matches!(why, super::stream::Stopped::FutureCursor) {
                                Metrics::inc(&writer.metrics.upstream_error_frames, "error", "FutureCursor");
                            }
                            ended = Some(Ended::Stopped);
                            break;
                        }
                    }
                }
                Some(Some(Ok(_))) => {}
            }
            if batch.frames.len() >= config.max_batch_frames {
                break;
            }
            // What is ready now joins the batch; within the commit interval of the previous
            // commit, so does what arrives before the interval is over.
            let wait = writer.pace.wait(Instant::now());
            let more = if wait.is_zero() {
                futures_lite::future::poll_once(ws.next()).await
            } else {
                net::with_timeout(wait, ws.next()).await
            };
            match more {
                Some(m) => next = Some(m),
                None => break,
            }
        }
        // What arrived before the end is kept: it is in upstream order and complete.
        writer.commit(&mut batch).await?;
        if let Some(e) = ended {
            return Ok(e);
        }
    }
}
