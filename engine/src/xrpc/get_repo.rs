//! `com.atproto.sync.getRepo`: the relay does not store repos; it redirects to the account's host.

/// The lexicon NSID.
pub const NSID: &str = "com.atproto.sync.getRepo";

use super::Ctx;
use crate::http::{Request, Response};

/// `did` required (`since` is passed on). `302` to `{host}/xrpc/com.atproto.sync.getRepo?…` on the
/// host the account was last relayed from (`http://` for localhost hosts, else `https://`).
/// Errors: `400 InvalidRequest` for a missing or bad DID, `400 RepoNotFound` for an unknown account.
pub fn handle(req: &Request, ctx: &Ctx) -> Response {
    let (_, state) = match super::account(req, ctx) {
        Ok(found) => found,
        Err(resp) => return resp,
    };
    let Ok(host) = wire::Hostname::new(state.host.clone()) else {
        return Response::xrpc_error(400, "RepoNotFound", "the account's host is not known");
    };
    let scheme = if host.is_localhost() { "http" } else { "https" };
    let query = req.query.as_deref().unwrap_or_default();
    let mut resp = Response::json(302, &serde_json::json!({}));
    resp.headers.push(("Location", format!("{scheme}://{host}/xrpc/{NSID}?{query}")));
    resp
}
