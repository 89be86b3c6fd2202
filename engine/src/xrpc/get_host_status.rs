//! `com.atproto.sync.getHostStatus`: one upstream host.

/// The lexicon NSID.
pub const NSID: &str = "com.atproto.sync.getHostStatus";

use super::Ctx;
use super::list_hosts::host_json;
use crate::http::{Request, Response};

/// `hostname` required. Output `{hostname, seq?, accountCount?, status}`. Errors: `400
/// InvalidRequest` for a missing or bad hostname, `400 HostNotFound` for a host the relay does not
/// subscribe to.
pub fn handle(req: &Request, ctx: &Ctx) -> Response {
    let Some(raw) = req.param("hostname") else {
        return Response::xrpc_error(400, "InvalidRequest", "hostname is required");
    };
    let Ok(host) = wire::Hostname::parse_lenient(raw) else {
        return Response::xrpc_error(400, "InvalidRequest", "hostname is not a hostname[:port]");
    };
    match ctx.fanout.store().host_row(host.as_str()) {
        Ok(Some(row)) => Response::json(200, &host_json(&row, ctx)),
        Ok(None) => Response::xrpc_error(400, "HostNotFound", "the relay does not know this host"),
        Err(e) => Response::xrpc_error(500, "InternalServerError", &e.to_string()),
    }
}
