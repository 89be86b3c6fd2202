//! A splitter's HTTP API: what it serves itself (the streams, `_health`, `/metrics`, its own admin
//! calls) and what it passes on to its upstream (the other `com.atproto.sync` methods,
//! `requestCrawl`, the relay's `/admin/*` calls).
//!
//! | path | served |
//! |---|---|
//! | `subscribeRepos`, `/subscribe`, `subscribeEvents`, `getZstdDictionary` | here, from the splitter's store (the upstream's seqs and frames) |
//! | `/xrpc/_health` | here: `503 degraded` with `reason: upstream_stopped` while ingest waits for an operator's cursor reset, `disk_full` as the relay |
//! | `/metrics` | here |
//! | `GET /admin/upstream/status` | here: `{"upstreams": [...], "current", "connected", "connectedAt"?, "seq", "stopped"?}` |
//! | `POST /admin/upstream/resetCursor` | here: `{"cursor"?: n}` resumes ingest after `n` (absent: from the upstream's live tail); a cursor below the last seq kept deletes the frames above it and closes every subscriber (close code 1012) |
//! | `/admin/consumers/list`, `/admin/consumers/kill` | here (this splitter's subscribers) |
//! | other `/admin/*` | passed on to the upstream with the client's `Authorization` |
//! | other `com.atproto.sync.*` (`listRepos`, `getRepoStatus`, `getLatestCommit`, `listHosts`, `getHostStatus`, `getRepo`, `listReposByCollection`, ...) | passed on to the current upstream; its answer (status, body, `Content-Type`, `Location`: a `getRepo` redirect is returned, not followed) comes back as is |
//! | `POST com.atproto.sync.requestCrawl` | passed on to every `--crawl-forward` URL (the first one's answer is returned, the others are sent without waiting), or to the upstream |
//!
//! Passed-on requests carry `Via: 1.1 <this splitter> (atproto-relay)`, after what the request's own
//! `Via` says: indigo's relay does not forward a request whose `Via` names `atproto-relay`, which
//! stops sibling ping-pong; a splitter must pass requests up a chain of splitters, so it refuses
//! (`508 LoopDetected`) only a request that already passed through itself, or through 8 relays.

use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Value, json};
use shards::net::HttpUrl;
use shards::splitter::{SplitterState, UpstreamUrl};

use crate::http::{Request, Response};
use crate::xrpc::{Ctx, Routed, only_get, only_get_stream};

/// Deadline of a request passed on to the upstream.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest answer passed back, in bytes (a `listRepos` page of 1,000 is ~200 KB).
const FORWARD_MAX_BODY: usize = 16 << 20;
/// Most `atproto-relay` hops a passed-on request may have made.
const MAX_HOPS: usize = 8;

/// What the splitter's API needs besides the relay's [`Ctx`].
pub struct SplitterApi {
    /// The upstreams, in order.
    pub upstreams: Vec<UpstreamUrl>,
    /// Where `requestCrawl` goes (`--crawl-forward`); empty: the current upstream.
    pub crawl_forward: Vec<String>,
    /// The follower's state (shared with it).
    pub state: Arc<SplitterState>,
    /// This splitter's name in `Via` (random per process).
    pub via_token: String,
    /// The admin password (`--admin-password`), for this splitter's own admin calls.
    pub admin_password: Option<String>,
}

impl SplitterApi {
    fn current(&self) -> Option<&UpstreamUrl> {
        let i = self.state.upstream.load(Ordering::Acquire);
        self.upstreams.get(i % self.upstreams.len().max(1))
    }
}

/// Routes a request on a splitter.
pub async fn route(req: &Request, ctx: &Ctx, sp: &Rc<SplitterApi>) -> Routed {
    let path = req.path.as_str();
    if path == crate::xrpc::jetstream::V1_PATH {
        return only_get_stream(req).map_or_else(|| crate::xrpc::jetstream::subscribe_v1(req, ctx), Routed::Respond);
    }
    if let Some(rest) = path.strip_prefix("/admin/") {
        return Routed::Respond(admin(rest, req, ctx, sp).await);
    }
    let Some(nsid) = path.strip_prefix("/xrpc/") else {
        return Routed::Respond(Response::xrpc_error(404, "NotFound", "no such path"));
    };
    match nsid {
        crate::xrpc::health::NSID => Routed::Respond(only_get(req).unwrap_or_else(|| health(ctx, sp))),
        crate::xrpc::subscribe_repos::NSID => match only_get_stream(req) {
            Some(resp) => Routed::Respond(resp),
            None => crate::xrpc::subscribe_repos::handle(req, ctx),
        },
        crate::xrpc::jetstream::V2_NSID => {
            only_get_stream(req).map_or_else(|| crate::xrpc::jetstream::subscribe_v2(req, ctx), Routed::Respond)
        }
        crate::xrpc::jetstream::DICTIONARY_NSID => {
            Routed::Respond(only_get(req).unwrap_or_else(|| crate::xrpc::jetstream::get_dictionary(req)))
        }
        crate::xrpc::request_crawl::NSID => Routed::Respond(match req.method.as_str() {
            "POST" => request_crawl(req, ctx, sp).await,
            other => crate::xrpc::wrong_method(other, "POST"),
        }),
        n if n.starts_with("com.atproto.sync.") => Routed::Respond(forward_to_upstream(req, ctx, sp).await),
        _ => Routed::Respond(Response::xrpc_error(
            501,
            "MethodNotImplemented",
            &format!("method {nsid} is not implemented by this splitter"),
        )),
    }
}

/// `_health`: the relay's, with the upstream being followed and why ingest stopped, if it did.
fn health(ctx: &Ctx, sp: &SplitterApi) -> Response {
    let mut resp = crate::xrpc::health::handle(ctx);
    if let Ok(mut body) = serde_json::from_slice::<Value>(&resp.body) {
        if let Some(up) = sp.current() {
            crate::xrpc::set(&mut body, "upstream", up.to_string());
        }
        crate::xrpc::set(&mut body, "upstreamConnected", sp.state.connected.load(Ordering::Acquire));
        if let Some(why) = sp.state.stopped_reason() {
            crate::xrpc::set(&mut body, "message", format!("ingest stopped: {why}; POST /admin/upstream/resetCursor"));
        }
        resp.body = body.to_string().into_bytes();
    }
    resp
}

/// The `Via` a passed-on request carries, or the loop it would make.
fn via(req: &Request, sp: &SplitterApi) -> Result<String, Response> {
    let before = req.header("via").unwrap_or_default();
    let hops = before.matches("atproto-relay").count();
    if before.contains(&sp.via_token) || hops >= MAX_HOPS {
        return Err(Response::xrpc_error(
            508,
            "LoopDetected",
            "this request already passed through this splitter (or through too many relays): a forwarding loop",
        ));
    }
    let ours = format!("1.1 {} (atproto-relay)", sp.via_token);
    Ok(if before.is_empty() { ours } else { format!("{before}, {ours}") })
}

/// Sends `req` (method, path, query, body, the headers that matter) to `base` and returns its answer.
async fn forward(req: &Request, ctx: &Ctx, base: &str, via: &str) -> Response {
    let target = match &req.query {
        Some(q) => format!("{base}{}?{q}", req.path),
        None => format!("{base}{}", req.path),
    };
    let url = match HttpUrl::parse(&target) {
        Ok(u) => u,
        Err(e) => return Response::xrpc_error(500, "InternalServerError", &format!("upstream URL {target}: {e}")),
    };
    let mut headers: Vec<(String, String)> = ["accept", "authorization", "content-type"]
        .iter()
        .filter_map(|n| req.header(n).map(|v| ((*n).to_owned(), v.to_owned())))
        .collect();
    headers.push(("via".into(), via.to_owned()));
    match ctx.http.forward(&req.method, &url, &headers, &req.body, FORWARD_MAX_BODY, FORWARD_TIMEOUT).await {
        Ok(answer) => {
            let content_type = answer.headers.iter().find(|(n, _)| n == "content-type").map(|(_, v)| v.as_str());
            let mut resp = Response {
                status: answer.status,
                content_type: static_content_type(content_type),
                body: answer.body,
                headers: Vec::new(),
            };
            for (name, value) in answer.headers {
                let name: &'static str = match name.as_str() {
                    "location" => "Location",
                    "cache-control" => "Cache-Control",
                    "retry-after" => "Retry-After",
                    _ => continue,
                };
                resp.headers.push((name, value));
            }
            resp
        }
        Err(shards::net::NetError::Timeout) => {
            Response::xrpc_error(504, "UpstreamTimeout", "the upstream did not answer in time")
        }
        Err(e) => Response::xrpc_error(502, "UpstreamFailure", &format!("the upstream could not be asked: {e}")),
    }
}

/// The `Content-Type`s the response type can carry (a `&'static str`): the upstream's when it is one
/// of these, else JSON.
fn static_content_type(ct: Option<&str>) -> &'static str {
    match ct.map(|c| c.split(';').next().unwrap_or("").trim()) {
        Some("application/vnd.ipld.car") => "application/vnd.ipld.car",
        Some("application/octet-stream") => "application/octet-stream",
        Some("text/html") => "text/html; charset=utf-8",
        Some("text/plain") => "text/plain; charset=utf-8",
        _ => "application/json; charset=utf-8",
    }
}

async fn forward_to_upstream(req: &Request, ctx: &Ctx, sp: &SplitterApi) -> Response {
    let via = match via(req, sp) {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    match sp.current() {
        Some(up) => forward(req, ctx, &up.http_base(), &via).await,
        None => Response::xrpc_error(502, "UpstreamFailure", "no upstream"),
    }
}

/// `requestCrawl`: to every `--crawl-forward` target (the first one's answer is returned; the others
/// are sent without waiting), or to the current upstream.
async fn request_crawl(req: &Request, ctx: &Ctx, sp: &SplitterApi) -> Response {
    let via = match via(req, sp) {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    let targets: Vec<String> = if sp.crawl_forward.is_empty() {
        sp.current().map(UpstreamUrl::http_base).into_iter().collect()
    } else {
        sp.crawl_forward.iter().map(|t| t.trim_end_matches('/').to_owned()).collect()
    };
    let Some((first, rest)) = targets.split_first() else {
        return Response::xrpc_error(502, "UpstreamFailure", "no upstream");
    };
    for target in rest {
        let (req, http, target, via) = (req.clone(), ctx.http.clone(), target.clone(), via.clone());
        glommio::spawn_local(async move {
            let url = match HttpUrl::parse(&format!("{target}{}", req.path)) {
                Ok(u) => u,
                Err(_) => return,
            };
            let headers = vec![("content-type".to_owned(), "application/json".to_owned()), ("via".to_owned(), via)];
            if let Err(e) = http.forward("POST", &url, &headers, &req.body, 64 * 1024, FORWARD_TIMEOUT).await {
                tracing::warn!(target, error = %e, "requestCrawl not passed on");
            }
        })
        .detach();
    }
    forward(req, ctx, first, &via).await
}

/// The splitter's own admin calls (HTTP Basic auth as `admin`), and the relay's passed on.
async fn admin(rest: &str, req: &Request, ctx: &Ctx, sp: &SplitterApi) -> Response {
    match rest {
        "upstream/status" | "upstream/resetCursor" | "consumers/list" | "consumers/kill" => {}
        // The relay's admin calls: its upstream checks its own password.
        _ => {
            let via = match via(req, sp) {
                Ok(v) => v,
                Err(resp) => return resp,
            };
            return match sp.current() {
                Some(up) => forward(req, ctx, &up.http_base(), &via).await,
                None => Response::xrpc_error(502, "UpstreamFailure", "no upstream"),
            };
        }
    }
    let Some(admin) = &ctx.admin else {
        return Response::xrpc_error(404, "NotFound", "the admin API is disabled (no --admin-password)");
    };
    if rest.starts_with("consumers/") {
        return admin.handle(rest, req, ctx).await;
    }
    if !admin.authorized(req) {
        let mut resp = Response::xrpc_error(401, "AuthenticationRequired", "HTTP Basic auth as admin");
        resp.headers.push(("WWW-Authenticate", "Basic realm=\"splitter admin\"".into()));
        return resp;
    }
    match (rest, req.method.as_str()) {
        ("upstream/status", "GET") => {
            let state = &sp.state;
            let connected_ms = state.connected_ms.load(Ordering::Acquire);
            let mut v = json!({
                "upstreams": sp.upstreams.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "current": sp.current().map(ToString::to_string),
                "connected": state.connected.load(Ordering::Acquire),
                "seq": state.last_seq.load(Ordering::Acquire),
            });
            if connected_ms > 0 {
                crate::xrpc::set(
                    &mut v,
                    "connectedAt",
                    wire::syntax::datetime_from_unix_us(connected_ms.saturating_mul(1000)),
                );
            }
            if let Some(why) = state.stopped_reason() {
                crate::xrpc::set(&mut v, "stopped", why);
            }
            Response::json(200, &v)
        }
        ("upstream/resetCursor", "POST") => {
            if !req.header("content-type").is_some_and(|c| c.starts_with("application/json")) {
                return Response::xrpc_error(415, "InvalidRequest", "send application/json");
            }
            let body: Value = match serde_json::from_slice(&req.body) {
                Ok(v @ Value::Object(_)) => v,
                _ => return Response::xrpc_error(400, "InvalidRequest", "the body must be a JSON object"),
            };
            let cursor = match body.get("cursor") {
                None | Some(Value::Null) => None,
                Some(c) => match c.as_u64().filter(|c| *c <= i64::MAX as u64) {
                    Some(c) => Some(c),
                    None => {
                        return Response::xrpc_error(400, "InvalidRequest", "cursor must be a non-negative integer");
                    }
                },
            };
            sp.state.request_reset(cursor);
            tracing::warn!(cursor = ?cursor, "admin: upstream cursor reset requested");
            Response::json(200, &json!({ "cursor": cursor }))
        }
        (_, method) => crate::xrpc::wrong_method(method, if rest == "upstream/status" { "GET" } else { "POST" }),
    }
}
