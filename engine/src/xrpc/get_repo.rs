//! `com.atproto.sync.getRepo`: the relay does not store repos; it redirects to the account's host.

/// The lexicon NSID.
pub const NSID: &str = "com.atproto.sync.getRepo";

use super::Ctx;
use crate::http::{Request, Response};

/// `did` required (`since` is passed on). `302` to `{scheme}://{host}/xrpc/com.atproto.sync.getRepo?…`
/// on the host the account was last relayed from, with the scheme the relay reaches that host by
/// (`https` for a TLS host, `http` otherwise). Errors (`400`, the lexicon's names): `InvalidRequest`
/// for a missing or bad DID; `RepoNotFound` for an unknown or deleted account or one whose host is
/// unknown; `RepoTakendown`, `RepoSuspended`, `RepoDeactivated` for an account inactive at the relay
/// (no redirect: the relay does not point at what it does not serve).
pub fn handle(req: &Request, ctx: &Ctx) -> Response {
    let (_, state) = match super::account(req, ctx) {
        Ok(found) => found,
        Err(resp) => return resp,
    };
    if let Some(refused) = super::inactive_error(&state) {
        return refused;
    }
    let Ok(host) = wire::Hostname::new(state.host.clone()) else {
        return Response::xrpc_error(400, "RepoNotFound", "the account's host is not known");
    };
    let tls = match ctx.hosts.store().host_config(host.as_str()) {
        Ok(Some(config)) => config.tls,
        Ok(None) => !host.is_localhost(),
        Err(e) => return Response::xrpc_error(500, "InternalServerError", &e.to_string()),
    };
    let scheme = if tls { "https" } else { "http" };
    let query = req.query.as_deref().unwrap_or_default();
    let mut resp = Response::json(302, &serde_json::json!({}));
    resp.headers.push(("Location", format!("{scheme}://{host}/xrpc/{NSID}?{query}")));
    resp
}
