//! One upstream connection: the `subscribeRepos` handshake (TLS or plain, the SSRF guard, the
//! relay-loop guard) and the read loop, which applies the host's rate limit, checks the per-socket
//! `seq` order, and has up to [`window::DECIDE_WINDOW`] frames decided at once (the hand-over to the
//! sequencer is [`window`]'s).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::Message;
use async_tungstenite::tungstenite::client::IntoClientRequest;
use async_tungstenite::tungstenite::http::HeaderValue;
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use wire::HostSeq;
use wire::Hostname;
use wire::frame::{Event, Frame};

use super::window::{Decided, Window};
use super::{HostEvent, HostHandle, Shard, THROTTLE_CLEAR, Upstream, now_ms, process, window};
use crate::metrics::Metrics;
use crate::net;

pub(super) type Ws = async_tungstenite::WebSocketStream<net::MaybeTls>;

/// Why a subscription could not start.
pub(super) enum ConnectError {
    /// Network, TLS or handshake failure (retried).
    Failed(String),
    /// The host's handshake `Server` header says it is a relay (this value).
    Relay(String),
}

pub(super) async fn connect(shard: &Shard, upstream: &Upstream, cursor: Option<HostSeq>) -> Result<Ws, ConnectError> {
    let host = &upstream.host;
    let (scheme, default_port) = if upstream.tls { ("wss", 443) } else { ("ws", 80) };
    let port = host.port().unwrap_or(default_port);
    let url = match cursor {
        Some(c) => format!("{scheme}://{host}/xrpc/com.atproto.sync.subscribeRepos?cursor={c}"),
        None => format!("{scheme}://{host}/xrpc/com.atproto.sync.subscribeRepos"),
    };
    let timeout = shard.config.connect_timeout;
    // The SSRF guard: a name may not lead to a private address (checked again at every connection,
    // so DNS cannot be changed after requestCrawl), except localhost, which only the operator (or dev
    // mode) can add.
    let public_only = shard.config.public_only && !host.is_localhost();
    let failed = |e: String| ConnectError::Failed(e);
    let handshake = async {
        let stream = if upstream.tls {
            let tls = shard.config.identity.http.connect_tls_with(host.name(), port, timeout, public_only).await;
            net::MaybeTls::Tls(Box::new(tls.map_err(|e| failed(e.to_string()))?))
        } else {
            let tcp = shard.config.identity.http.connect_tcp(host.name(), port, timeout, public_only).await;
            net::MaybeTls::Plain(tcp.map_err(|e| failed(e.to_string()))?)
        };
        // Messages above the relay's own limit are still read (and dropped as frame_too_big) up to
        // three times that size; a larger one fails the connection (see README, Behaviors).
        let limit = shard.config.limits.max_frame_bytes.saturating_mul(3);
        // Small buffers: thousands of host connections each hold one (tungstenite's default is 128 KiB
        // for reading plus 128 KiB for writing); they grow for large frames.
        let config = WebSocketConfig::default()
            .max_message_size(Some(limit))
            .max_frame_size(Some(limit))
            .read_buffer_size(16 * 1024)
            .write_buffer_size(0);
        let mut request = url.as_str().into_client_request().map_err(|e| failed(e.to_string()))?;
        request.headers_mut().insert("user-agent", HeaderValue::from_static(net::USER_AGENT));
        let (ws, response) = async_tungstenite::client_async_with_config(request, stream, Some(config))
            .await
            .map_err(|e| failed(e.to_string()))?;
        // Relay-loop guard: relays name themselves `(atproto-relay)` in `Server` (indigo's convention).
        if let Some(server) = response.headers().get("server").and_then(|v| v.to_str().ok())
            && server.contains("atproto-relay")
        {
            return Err(ConnectError::Relay(server.to_owned()));
        }
        Ok(ws)
    };
    net::with_timeout(timeout, handshake).await.unwrap_or_else(|| Err(failed("handshake timed out".into())))
}

pub(super) enum ReadOutcome {
    Closed {
        progressed: bool,
        /// `host_closed`, `error`, `idle`, `error_frame` or `malformed_frame`
        /// (`relay_upstream_disconnects_total`).
        reason: &'static str,
    },
    /// The host sent a `FutureCursor` error: its sequence is behind our cursor.
    FutureCursor,
    SequencerGone,
}

/// First pause of a host whose frame waits for an unreachable dependency; it doubles up to
/// [`WAIT_MAX`].
const WAIT_FIRST: Duration = Duration::from_secs(1);
/// Longest pause between two attempts at a waiting frame.
const WAIT_MAX: Duration = Duration::from_secs(10);

/// Counts a decided frame by type (`relay_upstream_frames_total`) and, when dropped, by reason, with
/// a log line.
pub(super) fn count_frame(shard: &Shard, host: &Hostname, v: &process::Verdict) {
    Metrics::inc(&shard.metrics.upstream_frames, "type", frame_type(v));
    match v {
        process::Verdict::Drop(reason, seq) => {
            shard.metrics.drop_event(*reason);
            tracing::info!(host = %host, seq = ?seq.map(|s| s.0), %reason, "dropped event");
        }
        process::Verdict::Broken(seq) => {
            shard.metrics.drop_event(wire::DropReason::MalformedFrame);
            tracing::warn!(host = %host, seq = ?seq.map(|s| s.0), "invalid framing or DAG-CBOR; dropping the connection");
        }
        process::Verdict::Info(Frame::Error(e)) => {
            Metrics::inc(&shard.metrics.upstream_error_frames, "error", error_label(&e.error));
            tracing::warn!(host = %host, error = %e.error, message = ?e.message, "host sent an error frame");
        }
        _ => {}
    }
}

fn frame_type(v: &process::Verdict) -> &'static str {
    match v {
        process::Verdict::Accept(a) => match a.event {
            Event::Commit(_) => "commit",
            Event::Sync(_) => "sync",
            Event::Identity(_) => "identity",
            Event::Account(_) => "account",
            Event::Info(_) => "info",
        },
        process::Verdict::Info(Frame::Error(_)) => "error",
        process::Verdict::Info(_) => "info",
        process::Verdict::Drop(..) | process::Verdict::Broken(_) | process::Verdict::Wait(..) => "other",
    }
}

/// Error names a `subscribeRepos` stream may carry (the lexicon's `FutureCursor` and
/// `ConsumerTooSlow`), as the `error` label of `relay_upstream_error_frames_total`; any other is
/// `other` (labels stay bounded whatever a host sends).
pub const ERROR_FRAME_LABELS: [&str; 3] = ["FutureCursor", "ConsumerTooSlow", "other"];

fn error_label(error: &str) -> &'static str {
    ERROR_FRAME_LABELS.iter().find(|l| **l == error).copied().unwrap_or("other")
}

/// Decides one frame, waiting out dependency outages ([`process::Outage`]): the frame is processed
/// again after a pause (1 s doubling to 10 s) until it is decided; meanwhile the host's cursor stays
/// below it ([`super::window`]) and, once the window is full of waiting frames, its stream pauses.
/// A `did:web` outage is waited out for at most [`process::DID_WEB_MAX_WAIT`], then the event is
/// dropped.
async fn decide(
    shard: &Shard,
    host: &Hostname,
    label: &Arc<str>,
    bytes: &[u8],
    last_seq: Option<HostSeq>,
    received: Instant,
) -> process::Verdict {
    let mut delay = WAIT_FIRST;
    let mut waited = Duration::ZERO;
    loop {
        let input = process::Input { bytes, host, label, last_seq, now_ms: now_ms(), received };
        let started = Instant::now();
        let (outage, seq) = match process::process_frame(input, &shard.ctx).await {
            process::Verdict::Wait(outage, seq) => (outage, seq),
            decided => {
                shard.metrics.validation_seconds.observe(started.elapsed().as_secs_f64());
                return decided;
            }
        };
        if outage == process::Outage::DidWeb && waited >= process::DID_WEB_MAX_WAIT {
            tracing::warn!(host = %host, seq = seq.0, waited_s = waited.as_secs(), "did:web server still unreachable; dropping the event");
            return process::Verdict::Drop(wire::DropReason::IdentityUnresolved, Some(seq));
        }
        if waited.is_zero() {
            Metrics::inc(&shard.metrics.upstream_waits, "dependency", outage.as_str());
            tracing::warn!(host = %host, seq = seq.0, dependency = outage.as_str(), "identity directory unreachable; the host waits");
        }
        glommio::timer::sleep(delay).await;
        waited += delay;
        delay = (delay * 2).min(WAIT_MAX);
    }
}

/// Takes one token of the host's rate limit for a frame, waiting (pausing this host's reads, so TCP
/// pushes back on it) rather than dropping. Every frame takes one, whatever its fate: a dropped
/// event cost validation and perhaps an identity lookup too.
async fn take_token(
    shard: &Shard,
    host: &Hostname,
    handle: &HostHandle,
    last_wait: &mut Option<Instant>,
    status: &mut dyn FnMut(HostEvent),
) {
    let mut limited = false;
    loop {
        let wait = handle.limiter.borrow_mut().acquire(Instant::now());
        if wait.is_zero() {
            break;
        }
        if !limited {
            limited = true;
            shard.metrics.upstream_rate_limited.inc();
            if last_wait.is_none() {
                tracing::info!(host = %host, "host rate limited; its events are delayed");
                status(HostEvent::Throttled);
            }
            *last_wait = Some(Instant::now());
        }
        glommio::timer::sleep(wait).await;
    }
    if !limited && last_wait.is_some_and(|at| at.elapsed() >= THROTTLE_CLEAR) {
        *last_wait = None;
        status(HostEvent::Delivered);
    }
}

/// One turn of the read loop: a decided frame or the next websocket message (`None`: the idle
/// timeout passed; `Some(None)`: the stream ended).
// Short-lived, one per frame, never stored: boxing the decided frame would add an allocation.
#[allow(clippy::large_enum_variant)]
enum Step {
    Decided(Decided),
    Read(Option<Option<Result<Message, async_tungstenite::tungstenite::Error>>>),
}

pub(super) async fn read_frames(
    shard: &Shard,
    host: &Hostname,
    label: &Arc<str>,
    mut ws: Ws,
    handle: &HostHandle,
    status: &mut dyn FnMut(HostEvent),
) -> ReadOutcome {
    // Per-host seq order holds across connections: a host that replays at or below the cursor the
    // relay resumed from has those frames dropped (`seq_not_increasing`), never relayed twice.
    let mut window = Window::new(handle.cursor.get());
    let mut deciding = FuturesUnordered::new();
    let mut progressed = false;
    // When an event last had to wait for the rate limit (the host is `throttled` meanwhile).
    let mut last_wait: Option<Instant> = None;
    let mut reason = "host_closed";
    let mut reading = true;
    loop {
        glommio::yield_if_needed().await;
        let step = if reading && window.has_room() {
            futures_lite::future::or(
                async {
                    match deciding.next().await {
                        Some(d) => Step::Decided(d),
                        None => std::future::pending().await,
                    }
                },
                async { Step::Read(net::with_timeout(shard.config.idle_timeout, ws.next()).await) },
            )
            .await
        } else {
            match deciding.next().await {
                Some(d) => Step::Decided(d),
                // Not reading and nothing left to decide.
                None => break,
            }
        };
        let msg = match step {
            Step::Decided(d) => {
                match window::settle(shard, host, label, handle, &mut window, d).await {
                    Ok(sent) => progressed |= sent,
                    Err(outcome) => return outcome,
                }
                if window.closing.is_some() {
                    // An error frame or broken framing: read nothing more; the frames read before
                    // it are still settled.
                    reading = false;
                }
                continue;
            }
            Step::Read(Some(Some(msg))) => msg,
            Step::Read(Some(None)) => {
                reading = false;
                continue;
            }
            Step::Read(None) => {
                tracing::warn!(host = %host, idle_s = shard.config.idle_timeout.as_secs(), "host idle; reconnecting");
                status(HostEvent::Idle);
                reason = "idle";
                reading = false;
                continue;
            }
        };
        if !progressed {
            status(HostEvent::Delivered);
        }
        let bytes = match msg {
            Ok(Message::Binary(b)) => b,
            Ok(Message::Close(frame)) => {
                tracing::info!(host = %host, close = ?frame, "host closed the connection");
                reading = false;
                continue;
            }
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(host = %host, error = %e, "host connection error");
                reason = "error";
                reading = false;
                continue;
            }
        };
        let received = Instant::now();
        shard.metrics.upstream_bytes.inc_by(bytes.len() as u64);
        take_token(shard, host, handle, &mut last_wait, status).await;
        // A frame over the size limit is dropped as such (`frame_too_big`), whatever its seq says.
        let within_limit = bytes.len() <= shard.config.limits.max_frame_bytes;
        let peeked = wire::frame::peek(&bytes);
        let seq = peeked.seq.filter(|_| within_limit).map(HostSeq);
        let before = window.last_read();
        if let Some(s) = seq {
            if handle.handed_ahead.borrow().contains(&s) {
                // Handed over on an earlier connection, above the cursor it resumed from.
                tracing::debug!(host = %host, seq = s.0, "frame already relayed; skipped");
                continue;
            }
            if before.is_some_and(|last| s <= last) {
                count_frame(shard, host, &process::Verdict::Drop(wire::DropReason::SeqNotIncreasing, Some(s)));
                continue;
            }
        }
        let account: Box<str> = peeked.did.unwrap_or_default().into();
        let len = bytes.len();
        let index = window.admit(seq, &account, len);
        deciding.push(async move {
            let verdict = decide(shard, host, label, &bytes, before, received).await;
            Decided { index, account, seq, len, verdict }
        });
    }
    window.closing.take().unwrap_or(ReadOutcome::Closed { progressed, reason })
}
