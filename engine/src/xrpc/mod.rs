//! XRPC routing, one file per NSID (each starting with its `NSID` const), plus `/metrics`.
//! Errors are XRPC error JSON (`{"error", "message"}`) per <https://atproto.com/specs/xrpc>.

mod health;
mod subscribe_repos;

use std::rc::Rc;
use std::sync::Arc;

use glommio::TaskQueueHandle;
use prometheus_client::registry::Registry;
use shards::fanout::FanoutShard;
use wire::RelaySeq;

use crate::http::{Request, Response};

/// What a handler on a fanout core can reach.
pub struct Ctx {
    /// This core's fanout shard.
    pub fanout: Rc<FanoutShard>,
    /// The task queue subscriber connections run in.
    pub fanout_tq: TaskQueueHandle,
    /// The metrics registry rendered at `/metrics`.
    pub registry: Arc<Registry>,
    /// The admin API, when `--admin-password` is set.
    pub admin: Option<crate::admin::Admin>,
}

/// The outcome of routing a request.
pub enum Routed {
    /// Answer with this response and close.
    Respond(Response),
    /// Upgrade to a websocket and serve the firehose from `cursor`.
    Upgrade {
        /// `Sec-WebSocket-Accept` value.
        accept_key: String,
        /// The requested cursor.
        cursor: Option<RelaySeq>,
    },
}

/// Routes a request head.
pub fn route(req: &Request, ctx: &Ctx) -> Routed {
    let path = req.path.as_str();
    if path == "/metrics" {
        return Routed::Respond(only_get(req).unwrap_or_else(|| metrics(ctx)));
    }
    if let Some(rest) = path.strip_prefix("/admin/") {
        return Routed::Respond(match &ctx.admin {
            Some(admin) => admin.handle(rest, req),
            None => Response::xrpc_error(404, "NotFound", "the admin API is disabled (no --admin-password)"),
        });
    }
    let Some(nsid) = path.strip_prefix("/xrpc/") else {
        return Routed::Respond(Response::xrpc_error(404, "NotFound", "no such path"));
    };
    match nsid {
        health::NSID => Routed::Respond(only_get(req).unwrap_or_else(|| health::handle(ctx))),
        subscribe_repos::NSID => match only_get(req) {
            Some(resp) => Routed::Respond(resp),
            None => subscribe_repos::handle(req, ctx),
        },
        _ => Routed::Respond(Response::xrpc_error(
            501,
            "MethodNotImplemented",
            &format!("method {nsid} is not implemented"),
        )),
    }
}

fn only_get(req: &Request) -> Option<Response> {
    (req.method != "GET").then(|| Response::xrpc_error(405, "InvalidRequest", "only GET is allowed on this method"))
}

fn metrics(ctx: &Ctx) -> Response {
    let mut body = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut body, &ctx.registry) {
        return Response::xrpc_error(500, "InternalServerError", &e.to_string());
    }
    Response {
        status: 200,
        content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
        body: body.into_bytes(),
        headers: Vec::new(),
    }
}
