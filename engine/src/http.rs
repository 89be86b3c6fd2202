//! The HTTP listener of a fanout core: reads one request head per connection (`wire::http`), routes it
//! to an XRPC handler, `/metrics`, or the `subscribeRepos` websocket upgrade.

use std::rc::Rc;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::TaskQueueHandle;
use glommio::net::{TcpListener, TcpStream};

use wire::http::{HeadError, RequestHead, parse_request_head};

use crate::xrpc;
use crate::xrpc::Ctx;
use shards::Metrics;

/// The `Server` header of every response: `(atproto-relay)` makes other relays' loop guards (and
/// ours) refuse to subscribe to this relay as if it were a PDS.
pub const SERVER: &str = shards::net::USER_AGENT;
/// Largest request body accepted, in bytes; larger ones get 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Deadline for writing a response.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline for a client to send its request head (and body).
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// A request: its head ([`wire::http::RequestHead`]) and body.
#[derive(Debug, Clone)]
pub struct Request {
    /// Method, path, query, headers.
    pub head: RequestHead,
    /// The body (`Content-Length` bytes, at most [`MAX_BODY_BYTES`]); empty for requests without one.
    pub body: Vec<u8>,
}

impl std::ops::Deref for Request {
    type Target = RequestHead;
    fn deref(&self) -> &RequestHead {
        &self.head
    }
}

/// A response to write.
pub struct Response {
    /// Status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Body bytes.
    pub body: Vec<u8>,
    /// Extra headers.
    pub headers: Vec<(&'static str, String)>,
}

impl Response {
    /// A JSON response.
    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        Self {
            status,
            content_type: "application/json; charset=utf-8",
            body: value.to_string().into_bytes(),
            headers: Vec::new(),
        }
    }

    /// An XRPC error: `{"error": name, "message": message}`.
    pub fn xrpc_error(status: u16, error: &str, message: &str) -> Self {
        Self::json(status, &serde_json::json!({ "error": error, "message": message }))
    }

    /// The response as HTTP/1.1 bytes: status line, headers (`Server`, `Content-Type`,
    /// `Content-Length`, CORS, `Connection: close`, then the extra ones) and the body.
    pub fn encode(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            204 => "No Content",
            302 => "Found",
            426 => "Upgrade Required",
            400 => "Bad Request",
            401 => "Unauthorized",
            403 => "Forbidden",
            429 => "Too Many Requests",
            502 => "Bad Gateway",
            413 => "Payload Too Large",
            415 => "Unsupported Media Type",
            503 => "Service Unavailable",
            404 => "Not Found",
            405 => "Method Not Allowed",
            431 => "Request Header Fields Too Large",
            500 => "Internal Server Error",
            501 => "Not Implemented",
            _ => "",
        };
        let mut head = format!(
            "HTTP/1.1 {} {reason}\r\nServer: {SERVER}\r\nContent-Type: {}\r\nContent-Length: {}\r\nAccess-Control-Allow-Origin: *\r\nConnection: close\r\n",
            self.status,
            self.content_type,
            self.body.len()
        );
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

/// First pause after a failed `accept` (e.g. `EMFILE`: out of file descriptors); it doubles up to
/// [`ACCEPT_BACKOFF_MAX`] while accepts keep failing, so the loop never spins.
const ACCEPT_BACKOFF_FIRST: Duration = Duration::from_millis(10);
/// Longest pause between failed accepts.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Accepts connections on `listener` and handles each on the API task queue.
pub async fn accept_loop(listener: TcpListener, ctx: Rc<Ctx>, api_tq: TaskQueueHandle) {
    let mut backoff = ACCEPT_BACKOFF_FIRST;
    let mut failures = 0u64;
    loop {
        match listener.accept().await {
            Ok(stream) => {
                if failures > 0 {
                    tracing::warn!(failures, "accepting connections again");
                }
                backoff = ACCEPT_BACKOFF_FIRST;
                failures = 0;
                let ctx = Rc::clone(&ctx);
                // Spawning into a queue this executor created cannot fail.
                if let Ok(task) = glommio::spawn_local_into(handle_connection(stream, ctx), api_tq) {
                    task.detach();
                }
            }
            Err(e) => {
                failures += 1;
                Metrics::inc(&ctx.metrics.accept_errors, "kind", accept_error_kind(&e));
                // Logged on the first failure of a run and then once per 100, not per attempt.
                if failures % 100 == 1 {
                    tracing::warn!(error = %e, failures, "accept failed; backing off");
                }
                glommio::timer::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
        }
    }
}

fn accept_error_kind(e: &glommio::GlommioError<()>) -> &'static str {
    match e {
        glommio::GlommioError::IoError(io) => match io.raw_os_error() {
            Some(libc::EMFILE | libc::ENFILE) => "out_of_fds",
            Some(libc::ENOBUFS | libc::ENOMEM) => "out_of_memory",
            _ => "other",
        },
        _ => "other",
    }
}

async fn handle_connection(mut stream: TcpStream, ctx: Rc<Ctx>) {
    let _ = stream.set_nodelay(true);
    let Some(client) = stream.peer_addr().ok().and_then(|addr| ctx.limits.admit(addr.ip())) else {
        let resp = Response::xrpc_error(
            429,
            "RateLimitExceeded",
            "too many open connections from this address (--max-connections-per-ip)",
        );
        refuse(stream, &resp).await;
        return;
    };
    let mut memory = Vec::new();
    let head = shards::net::with_timeout(HEAD_TIMEOUT, read_head(&mut stream, &ctx.request_memory, &mut memory)).await;
    let (request, leftover) = match head {
        Some(Ok(Some(parsed))) => parsed,
        Some(Ok(None)) | None => return,
        Some(Err(resp)) => {
            let _ = shards::net::with_timeout(WRITE_TIMEOUT, stream.write_all(&resp.encode())).await;
            return;
        }
    };
    match xrpc::route(&request, &ctx).await {
        xrpc::Routed::Respond(resp) => {
            // A client that does not read its response does not hold the task.
            let _ = shards::net::with_timeout(WRITE_TIMEOUT, stream.write_all(&resp.encode())).await;
            let _ = stream.close().await;
        }
        xrpc::Routed::Upgrade { accept_key, stream: what, subprotocol } => {
            let Some(subscriber) = ctx.limits.admit_subscriber() else {
                let resp = Response::xrpc_error(
                    503,
                    "NotEnoughResources",
                    "the relay has as many subscribers as it serves (--max-subscribers); retry later",
                );
                refuse(stream, &resp).await;
                return;
            };
            // The request is read: its memory goes back (a subscriber's own is bounded elsewhere).
            memory.clear();
            let protocol = subprotocol.map(|p| format!("Sec-WebSocket-Protocol: {p}\r\n")).unwrap_or_default();
            let resp = format!(
                "HTTP/1.1 101 Switching Protocols\r\nServer: {SERVER}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept_key}\r\n{protocol}\r\n"
            );
            if stream.write_all(resp.as_bytes()).await.is_err() {
                return;
            }
            let (cursor, endpoint) = match &what {
                xrpc::Stream::Firehose(cursor) => (cursor.map(|c| c.0), "firehose"),
                xrpc::Stream::Jetstream(j) => (
                    match j.start {
                        shards::fanout::JetStart::Live => None,
                        shards::fanout::JetStart::Seq(s) => Some(s.0),
                        shards::fanout::JetStart::TimeUs(us) => Some(us),
                    },
                    match j.format {
                        shards::fanout::JetFormat::V1 => "jetstream-v1",
                        shards::fanout::JetFormat::V2 => "jetstream-v2",
                    },
                ),
            };
            let info = shards::fanout::SubscriberInfo {
                remote: stream.peer_addr().map(|a| a.to_string()).unwrap_or_default(),
                cursor,
                user_agent: request.header("user-agent").map(str::to_owned),
                connected_ms: shards::unix_ms(),
                endpoint,
            };
            tracing::info!(remote = %info.remote, cursor = ?info.cursor, endpoint, "subscriber connected");
            let shard = Rc::clone(&ctx.fanout);
            let serve = async move {
                // Held for as long as the subscriber is served.
                let _slots = (client, subscriber);
                match what {
                    xrpc::Stream::Firehose(cursor) => shard.serve(stream, cursor, leftover, info).await,
                    xrpc::Stream::Jetstream(j) => shard.serve_jetstream(stream, *j, leftover, info).await,
                }
            };
            if let Ok(task) = glommio::spawn_local_into(serve, ctx.fanout_tq) {
                task.detach();
            }
        }
    }
}

/// How long a refused connection's unread request is drained before the socket closes.
const REFUSE_DRAIN: Duration = Duration::from_millis(500);

/// Answers `resp` and closes without reading the request first, gracefully: the write side is shut
/// down and what the client still sends is drained briefly, so the kernel does not answer it with a
/// reset that would destroy the response before the client reads it.
async fn refuse(mut stream: TcpStream, resp: &Response) {
    if shards::net::with_timeout(WRITE_TIMEOUT, stream.write_all(&resp.encode())).await.is_none() {
        return;
    }
    let _ = stream.shutdown(std::net::Shutdown::Write).await;
    let mut sink = [0u8; 4096];
    let drain = async {
        while let Ok(n) = stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = shards::net::with_timeout(REFUSE_DRAIN, drain).await;
}

/// Memory all API requests of one fanout core being read may hold (heads and bodies), in bytes:
/// 64 MiB. Past it a request is answered `503 NotEnoughResources` rather than buffered, whatever
/// the number of clients (the per-address limit alone does not bound it).
pub const REQUEST_MEMORY_BYTES: usize = 64 << 20;
/// The unit request memory is taken in, in bytes.
const MEMORY_UNIT: usize = 16 * 1024;

/// Takes request memory for `bytes` more of a request, in [`MEMORY_UNIT`]s, into `held`.
fn take_memory(
    budget: &Rc<glommio::sync::Semaphore>,
    held: &mut Vec<glommio::sync::StaticPermit>,
    bytes: usize,
) -> Result<(), Response> {
    while held.len() * MEMORY_UNIT < bytes {
        match budget.try_acquire_static_permit(MEMORY_UNIT as u64) {
            Ok(p) => held.push(p),
            Err(_) => {
                return Err(Response::xrpc_error(
                    503,
                    "NotEnoughResources",
                    "the relay is reading as many requests as it has memory for; retry",
                ));
            }
        }
    }
    Ok(())
}

/// Reads and parses a request head (and body), holding request memory for what it buffers in
/// `held`. `Ok(None)` when the client went away first.
async fn read_head(
    stream: &mut TcpStream,
    budget: &Rc<glommio::sync::Semaphore>,
    held: &mut Vec<glommio::sync::StaticPermit>,
) -> Result<Option<(Request, Vec<u8>)>, Response> {
    take_memory(budget, held, MEMORY_UNIT)?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = vec![0u8; MEMORY_UNIT];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(n) => n,
        };
        let old = buf.len();
        if old + n > buf.capacity() {
            // Grown by doubling, as a Vec would, but with the memory taken for the whole new
            // capacity first: what is held is what is allocated, not half of it.
            let capacity = (buf.capacity() * 2).min(wire::http::MAX_HEAD_BYTES + MEMORY_UNIT).max(old + n);
            take_memory(budget, held, MEMORY_UNIT + capacity)?;
            buf.reserve_exact(capacity - old);
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        // Parse only once the head's end (a blank line) may have arrived, or the limit is passed:
        // a long head (Jetstream's wantedDids) is not re-parsed chunk after chunk.
        let tail = buf.get(old.saturating_sub(3)..).unwrap_or_default();
        let ended = tail.windows(4).any(|w| w == b"\r\n\r\n") || tail.windows(2).any(|w| w == b"\n\n");
        if !ended && buf.len() <= wire::http::MAX_HEAD_BYTES {
            continue;
        }
        let (head, len) = match parse_request_head(&buf) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => continue,
            Err(e @ HeadError::TooLarge) => return Err(Response::xrpc_error(431, "InvalidRequest", &e.to_string())),
            Err(e) => return Err(Response::xrpc_error(400, "InvalidRequest", &e.to_string())),
        };
        let length = head
            .content_length()
            .map_err(|e| Response::xrpc_error(400, "InvalidRequest", &e.to_string()))?
            .unwrap_or(0);
        if length > MAX_BODY_BYTES {
            return Err(Response::xrpc_error(413, "PayloadTooLarge", "request entity too large"));
        }
        // The head's buffer and the body, allocated at its length once.
        take_memory(budget, held, MEMORY_UNIT + buf.capacity() + length)?;
        let mut rest = Vec::with_capacity(length);
        rest.extend_from_slice(buf.get(len..).unwrap_or_default());
        while rest.len() < length {
            let n = match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return Ok(None),
                Ok(n) => n,
            };
            rest.extend_from_slice(chunk.get(..n).unwrap_or_default());
        }
        let after = rest.split_off(length.min(rest.len()));
        return Ok(Some((Request { head, body: rest }, after)));
    }
}
