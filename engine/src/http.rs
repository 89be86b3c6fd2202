//! The HTTP listener of a fanout core: reads one request head per connection (httparse), routes it
//! to an XRPC handler, `/metrics`, or the `subscribeRepos` websocket upgrade.

use std::rc::Rc;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::TaskQueueHandle;
use glommio::net::{TcpListener, TcpStream};

use crate::xrpc;
use crate::xrpc::Ctx;

/// Largest request head accepted, in bytes; larger heads get 431.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Largest request body accepted, in bytes; larger ones get 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Deadline for a client to send its request head (and body).
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// A parsed request head.
#[derive(Debug, Clone)]
pub struct Request {
    /// `GET`, `POST`, …
    pub method: String,
    /// The path without the query.
    pub path: String,
    /// The raw query string (after `?`), if any.
    pub query: Option<String>,
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body (`Content-Length` bytes, at most [`MAX_BODY_BYTES`]); empty for requests without one.
    pub body: Vec<u8>,
}

impl Request {
    /// The first header named `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Query parameters, percent-decoding not applied (XRPC parameters used here are plain).
    pub fn params(&self) -> Vec<(&str, &str)> {
        self.query
            .as_deref()
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| p.split_once('=').unwrap_or((p, "")))
            .collect()
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

    fn encode(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            401 => "Unauthorized",
            413 => "Payload Too Large",
            503 => "Service Unavailable",
            404 => "Not Found",
            405 => "Method Not Allowed",
            431 => "Request Header Fields Too Large",
            500 => "Internal Server Error",
            501 => "Not Implemented",
            _ => "",
        };
        let mut head = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nAccess-Control-Allow-Origin: *\r\nConnection: close\r\n",
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

/// Accepts connections on `listener` and handles each on the API task queue.
pub async fn accept_loop(listener: TcpListener, ctx: Rc<Ctx>, api_tq: TaskQueueHandle) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let ctx = Rc::clone(&ctx);
                // Spawning into a queue this executor created cannot fail.
                if let Ok(task) = glommio::spawn_local_into(handle_connection(stream, ctx), api_tq) {
                    task.detach();
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn handle_connection(mut stream: TcpStream, ctx: Rc<Ctx>) {
    let _ = stream.set_nodelay(true);
    let head = shards::net::with_timeout(HEAD_TIMEOUT, read_head(&mut stream)).await;
    let (request, leftover) = match head {
        Some(Ok(Some(parsed))) => parsed,
        Some(Ok(None)) | None => return,
        Some(Err(resp)) => {
            let _ = stream.write_all(&resp.encode()).await;
            return;
        }
    };
    match xrpc::route(&request, &ctx) {
        xrpc::Routed::Respond(resp) => {
            let _ = stream.write_all(&resp.encode()).await;
            let _ = stream.close().await;
        }
        xrpc::Routed::Upgrade { accept_key, cursor } => {
            let resp = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept_key}\r\n\r\n"
            );
            if stream.write_all(resp.as_bytes()).await.is_err() {
                return;
            }
            let info = shards::fanout::SubscriberInfo {
                remote: stream.peer_addr().map(|a| a.to_string()).unwrap_or_default(),
                cursor: cursor.map(|c| c.0),
                user_agent: request.header("user-agent").map(str::to_owned),
            };
            tracing::info!(remote = %info.remote, cursor = ?info.cursor, "subscriber connected");
            let shard = Rc::clone(&ctx.fanout);
            if let Ok(task) = glommio::spawn_local_into(shard.serve(stream, cursor, leftover, info), ctx.fanout_tq) {
                task.detach();
            }
        }
    }
}

/// Reads and parses a request head. `Ok(None)` when the client went away first.
async fn read_head(stream: &mut TcpStream) -> Result<Option<(Request, Vec<u8>)>, Response> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(n) => n,
        };
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let target = req.path.unwrap_or("/");
                let (path, query) = match target.split_once('?') {
                    Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
                    None => (target.to_owned(), None),
                };
                let mut request = Request {
                    method: req.method.unwrap_or("GET").to_owned(),
                    path,
                    query,
                    headers: req
                        .headers
                        .iter()
                        .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned()))
                        .collect(),
                    body: Vec::new(),
                };
                let mut rest = buf.split_off(len);
                let Some(length) = request.header("content-length").map(str::trim) else {
                    return Ok(Some((request, rest)));
                };
                let length: usize =
                    length.parse().map_err(|_| Response::xrpc_error(400, "InvalidRequest", "bad Content-Length"))?;
                if length > MAX_BODY_BYTES {
                    return Err(Response::xrpc_error(413, "InvalidRequest", "request body too large"));
                }
                while rest.len() < length {
                    let n = match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return Ok(None),
                        Ok(n) => n,
                    };
                    rest.extend_from_slice(chunk.get(..n).unwrap_or_default());
                }
                let after = rest.split_off(length);
                request.body = rest;
                return Ok(Some((request, after)));
            }
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
                return Err(Response::xrpc_error(431, "InvalidRequest", "request head too large"));
            }
            Ok(httparse::Status::Partial) => {}
            Err(e) => {
                return Err(Response::xrpc_error(400, "InvalidRequest", &format!("malformed HTTP request: {e}")));
            }
        }
    }
}
