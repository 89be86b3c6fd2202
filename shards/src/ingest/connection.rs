//! One upstream connection: the `subscribeRepos` handshake (TLS or plain, the SSRF guard, the
//! relay-loop guard) and the read loop that validates each frame, applies the host's rate limit and
//! hands the results to the sequencer in order.

use std::sync::Arc;
use std::time::Instant;

use async_tungstenite::tungstenite::Message;
use async_tungstenite::tungstenite::client::IntoClientRequest;
use async_tungstenite::tungstenite::http::HeaderValue;
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use futures_util::StreamExt;
use wire::HostSeq;
use wire::Hostname;
use wire::frame::{Event, Frame};

use super::{HostEvent, HostHandle, Shard, THROTTLE_CLEAR, Upstream, now_ms, process};
use crate::messages::IngestMsg;
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
            let tcp = net::connect_with(host.name(), port, timeout, public_only).await;
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
    },
    /// The host sent a `FutureCursor` error: its sequence is behind our cursor.
    FutureCursor,
    SequencerGone,
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
        process::Verdict::Drop(..) => "other",
    }
}

pub(super) async fn read_frames(
    shard: &Shard,
    host: &Hostname,
    label: &Arc<str>,
    mut ws: Ws,
    handle: &HostHandle,
    status: &mut dyn FnMut(HostEvent),
) -> ReadOutcome {
    let mut last_seq: Option<HostSeq> = None;
    let mut progressed = false;
    // When an event last had to wait for the rate limit (the host is `throttled` meanwhile).
    let mut last_wait: Option<Instant> = None;
    loop {
        glommio::yield_if_needed().await;
        let msg = match net::with_timeout(shard.config.idle_timeout, ws.next()).await {
            Some(Some(msg)) => msg,
            Some(None) => break,
            None => {
                tracing::warn!(host = %host, idle_s = shard.config.idle_timeout.as_secs(), "host idle; reconnecting");
                status(HostEvent::Idle);
                break;
            }
        };
        if !progressed {
            status(HostEvent::Delivered);
        }
        let bytes = match msg {
            Ok(Message::Binary(b)) => b,
            Ok(Message::Close(frame)) => {
                tracing::info!(host = %host, close = ?frame, "host closed the connection");
                break;
            }
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(host = %host, error = %e, "host connection error");
                break;
            }
        };
        let input = process::Input { bytes: &bytes, host, label, last_seq, now_ms: now_ms() };
        let verdict = process::process_frame(input, &shard.ctx).await;
        Metrics::inc(&shard.metrics.upstream_frames, "type", frame_type(&verdict));
        let msg = match verdict {
            process::Verdict::Accept(ev) => {
                // Per-host rate limit: wait (pausing this host's reads) rather than drop.
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
                        last_wait = Some(Instant::now());
                    }
                    glommio::timer::sleep(wait).await;
                }
                if !limited && last_wait.is_some_and(|at| at.elapsed() >= THROTTLE_CLEAR) {
                    last_wait = None;
                    status(HostEvent::Delivered);
                }
                last_seq = Some(ev.host_seq);
                IngestMsg::Event(ev)
            }
            process::Verdict::Drop(reason, seq) => {
                shard.metrics.drop_event(reason);
                tracing::info!(host = %host, seq = ?seq.map(|s| s.0), %reason, "dropped event");
                match seq {
                    // Only a seq above the last one moves the cursor.
                    Some(s) if last_seq.is_none_or(|l| s > l) => {
                        last_seq = Some(s);
                        IngestMsg::Cursor { host: Arc::clone(label), seq: s }
                    }
                    _ => continue,
                }
            }
            process::Verdict::Info(Frame::Error(e)) if e.error == "FutureCursor" => return ReadOutcome::FutureCursor,
            process::Verdict::Info(frame) => {
                tracing::warn!(host = %host, ?frame, "host sent info/error frame");
                continue;
            }
        };
        progressed = true;
        if shard.to_sequencer.send(msg).await.is_err() {
            return ReadOutcome::SequencerGone;
        }
        // Only once the sequencer has it: a task aborted while waiting to send resumes before it.
        handle.cursor.set(last_seq);
    }
    ReadOutcome::Closed { progressed }
}
