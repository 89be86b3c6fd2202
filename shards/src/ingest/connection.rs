//! One upstream connection: the `subscribeRepos` handshake (TLS or plain, the SSRF guard, the
//! relay-loop guard) and the read loop, which drives the host's [`session::HostSession`]: it takes a
//! token of the host's rate limit per frame, tells the session what it read, decides the frames the
//! session asks for (up to [`session::MAX_DECIDING`] at once) and hands to the sequencer what the
//! session releases, with the resume point to persist.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use async_tungstenite::tungstenite::Message;
use async_tungstenite::tungstenite::client::IntoClientRequest;
use async_tungstenite::tungstenite::http::HeaderValue;
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use futures_util::StreamExt;
use futures_util::future::LocalBoxFuture;
use futures_util::stream::FuturesUnordered;
use wire::HostSeq;
use wire::Hostname;
use wire::frame::{Event, Frame};

use super::{HostEvent, HostHandle, Shard, Upstream, now_ms, process, session};
use crate::messages::ToSequencer;
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
/// again after a pause (1 s doubling to 10 s, [`session::wait_outage`]) until it is decided;
/// meanwhile the host's cursor stays below it and its account's later frames wait. A `did:web` frame
/// gives up [`session::DID_WEB_MAX_WAIT`] of wall time after its first attempt (fetches included),
/// dropped as `identity_unresolved`.
async fn decide(
    shard: &Shard,
    host: &Hostname,
    label: &Arc<str>,
    web_slots: &glommio::sync::Semaphore,
    frame: Pending,
) -> process::Verdict {
    let first = Instant::now();
    let did_web = frame.account.starts_with("did:web:");
    // At most DID_WEB_SLOTS of this host's did:web frames are decided at once: their servers are
    // chosen by whoever made the DIDs, and must not hold the host's other accounts, nor every
    // did:web DNS slot of the relay.
    let _slot = if did_web { web_slots.acquire_permit(1).await.ok() } else { None };
    let mut attempt = 0;
    loop {
        let input = process::Input { bytes: &frame.bytes, host, label, now_ms: now_ms(), received: frame.received };
        let started = Instant::now();
        // One await of `process_frame`, with or without the did:web deadline: it is the largest
        // part of a frame's decision, and two awaits of it would lay out two copies.
        let deadline = did_web.then(|| session::DID_WEB_MAX_WAIT.saturating_sub(first.elapsed()));
        let processing = || process::process_frame(input, &shard.ctx);
        let Some(verdict) = net::with_optional_timeout(deadline, processing).await else {
            return give_up(host, frame.seq, first);
        };
        let (outage, seq) = match verdict {
            process::Verdict::Wait(outage, seq) => (outage, seq),
            decided => {
                shard.metrics.validation_seconds.observe(started.elapsed().as_secs_f64());
                return decided;
            }
        };
        let Some(delay) = session::wait_outage(outage == process::Outage::DidWeb, first, Instant::now(), attempt)
        else {
            return give_up(host, Some(seq), first);
        };
        if attempt == 0 {
            Metrics::inc(&shard.metrics.upstream_waits, "dependency", outage.as_str());
            tracing::warn!(host = %host, seq = seq.0, dependency = outage.as_str(), "identity directory unreachable; the frame waits");
        }
        attempt += 1;
        glommio::timer::sleep(delay).await;
    }
}

fn give_up(host: &Hostname, seq: Option<HostSeq>, first: Instant) -> process::Verdict {
    tracing::warn!(host = %host, seq = ?seq.map(|s| s.0), waited_s = first.elapsed().as_secs(), "did:web server still unreachable; dropping the event");
    process::Verdict::Drop(wire::DropReason::IdentityUnresolved, seq)
}

/// Takes one token of the host's rate limit for a frame, waiting (pausing this host's reads, so TCP
/// pushes back on it) rather than dropping. Every frame takes one, whatever its fate: a dropped
/// event cost validation and perhaps an identity lookup too.
async fn take_token(shard: &Shard, host: &Hostname, handle: &HostHandle, status: &mut dyn FnMut(HostEvent)) {
    let mut limited = false;
    loop {
        let taken = handle.session.borrow_mut().take_token(Instant::now());
        let Err(wait) = taken else { break };
        if !limited {
            limited = true;
            shard.metrics.upstream_rate_limited.inc();
            if handle.session.borrow_mut().throttled(Instant::now()) {
                tracing::info!(host = %host, "host rate limited; its events are delayed");
                status(HostEvent::Throttled);
            }
        }
        glommio::timer::sleep(wait).await;
    }
    if !limited && handle.session.borrow_mut().unthrottled(Instant::now()) {
        status(HostEvent::Delivered);
    }
}

/// A frame read and not yet decided.
struct Pending {
    bytes: Vec<u8>,
    account: Box<str>,
    seq: Option<HostSeq>,
    received: Instant,
}

/// One turn of the read loop: a decided frame or the next websocket message (`None`: the idle
/// timeout passed; `Some(None)`: the stream ended).
// Short-lived, one per frame, never stored: boxing the verdict would add an allocation.
#[allow(clippy::large_enum_variant)]
enum Step {
    Decided(u64, process::Verdict),
    Read(Option<Option<Result<Message, async_tungstenite::tungstenite::Error>>>),
}

/// What the read loop does with a frame the session handed over.
enum Sent {
    /// Nothing reached the sequencer.
    Nothing,
    /// A message reached the sequencer.
    Sent,
}

/// Hands `h` to the sequencer (or not, for frames that change nothing) and commits its resume point
/// in the session once the sequencer has it.
async fn hand_over(
    shard: &Shard,
    host: &Hostname,
    label: &Arc<str>,
    handle: &HostHandle,
    h: session::HandOver<process::Verdict>,
) -> Result<Sent, ReadOutcome> {
    count_frame(shard, host, &h.verdict);
    let moved = handle.session.borrow().resume() != Some(&h.resume);
    let msg = match h.verdict {
        process::Verdict::Accept(mut ev) => {
            ev.resume = h.resume.clone();
            ToSequencer::Event(ev)
        }
        process::Verdict::Info(Frame::Error(e)) if e.error == "FutureCursor" => return Err(ReadOutcome::FutureCursor),
        verdict => {
            match verdict {
                // specs/event-stream: "Streams should be closed immediately following transmitting or
                // receiving an error frame", and invalid framing is a hard error: the connection ends
                // once the frames read before it are settled.
                process::Verdict::Info(Frame::Error(_)) => {
                    handle.session.borrow_mut().end_after(h.index);
                    handle.closing.set(Some("error_frame"));
                }
                process::Verdict::Broken(_) => {
                    handle.session.borrow_mut().end_after(h.index);
                    handle.closing.set(Some("malformed_frame"));
                }
                process::Verdict::Info(frame) => tracing::info!(host = %host, ?frame, "host sent an info frame"),
                _ => {}
            }
            if !moved {
                return Ok(Sent::Nothing);
            }
            ToSequencer::Skipped { host: Arc::clone(label), resume: h.resume.clone() }
        }
    };
    if shard.to_sequencer.send(msg).await.is_err() {
        return Err(ReadOutcome::SequencerGone);
    }
    shard.metrics.ingest_queue_depth.inc();
    // Only once the sequencer has it: a task aborted while waiting to send resumes before it.
    handle.session.borrow_mut().handed(h.resume);
    Ok(Sent::Sent)
}

pub(super) async fn read_frames(
    shard: &Shard,
    host: &Hostname,
    label: &Arc<str>,
    mut ws: Ws,
    handle: &HostHandle,
    status: &mut dyn FnMut(HostEvent),
) -> ReadOutcome {
    handle.session.borrow_mut().begin();
    handle.closing.set(None);
    // Boxed: a `FuturesUnordered` keeps a stub task with room for one future from its creation on,
    // so unboxed, every connected host would hold room for a whole frame's decision (6.8 KB) while
    // idle.
    let mut deciding: FuturesUnordered<LocalBoxFuture<'_, Step>> = FuturesUnordered::new();
    // Frames read and waiting for an earlier frame of their account, by read index.
    let mut queued: HashMap<u64, Pending> = HashMap::new();
    let mut progressed = false;
    let mut reason = "host_closed";
    let mut reading = true;
    let web_slots = &handle.did_web_slots;
    let decide_one = |index: u64, frame: Pending| -> LocalBoxFuture<'_, Step> {
        Box::pin(async move { Step::Decided(index, decide(shard, host, label, web_slots, frame).await) })
    };
    let outcome = loop {
        glommio::yield_if_needed().await;
        let room = reading && handle.session.borrow().has_room();
        let step = if room {
            futures_lite::future::or(
                async {
                    match deciding.next().await {
                        Some(d) => d,
                        None => std::future::pending().await,
                    }
                },
                async { Step::Read(net::with_timeout(shard.config.idle_timeout, ws.next()).await) },
            )
            .await
        } else {
            match deciding.next().await {
                Some(d) => d,
                // Not reading and nothing left to decide.
                None => break None,
            }
        };
        let msg = match step {
            Step::Decided(index, verdict) => {
                handle.session.borrow_mut().decided(index, verdict);
                loop {
                    let next = handle.session.borrow_mut().next_ready();
                    let Some(h) = next else { break };
                    match hand_over(shard, host, label, handle, h).await {
                        Ok(Sent::Sent) => progressed = true,
                        Ok(Sent::Nothing) => {}
                        Err(outcome) => return end(handle, outcome),
                    }
                }
                for index in handle.session.borrow_mut().take_started() {
                    if let Some(frame) = queued.remove(&index) {
                        deciding.push(decide_one(index, frame));
                    }
                }
                if handle.closing.get().is_some() {
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
        take_token(shard, host, handle, status).await;
        // A frame over the size limit is dropped as such (`frame_too_big`), whatever its seq says.
        let within_limit = bytes.len() <= shard.config.limits.max_frame_bytes;
        let peeked = wire::frame::peek(&bytes);
        let seq = peeked.seq.filter(|_| within_limit).map(HostSeq);
        let account: Box<str> = peeked.did.unwrap_or_default().into();
        let read = handle.session.borrow_mut().read(seq, &account, bytes.len());
        let frame = Pending { bytes: bytes.into(), account, seq, received };
        match read {
            session::Read::Decide(index) => deciding.push(decide_one(index, frame)),
            session::Read::Queued(index) => {
                queued.insert(index, frame);
            }
            // Handed over on an earlier connection (or before a restart): its resume point says so.
            session::Read::Skip => {
                tracing::debug!(host = %host, seq = ?seq.map(|s| s.0), "frame already handed over; skipped")
            }
            session::Read::Stale => {
                count_frame(shard, host, &process::Verdict::Drop(wire::DropReason::SeqNotIncreasing, seq));
            }
        }
    };
    let closing = handle.closing.take().map(|reason| ReadOutcome::Closed { progressed: false, reason });
    end(handle, outcome.or(closing).unwrap_or(ReadOutcome::Closed { progressed, reason }))
}

fn end(handle: &HostHandle, outcome: ReadOutcome) -> ReadOutcome {
    handle.session.borrow_mut().end();
    outcome
}
