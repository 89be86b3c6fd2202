//! `com.atproto.sync.listRepos`: accounts the relay has relayed a commit for, in DID order.

/// The lexicon NSID.
pub const NSID: &str = "com.atproto.sync.listRepos";

use super::{Ctx, limit_param};
use crate::http::{Request, Response};

/// `limit` 1-1000 (default 500), `cursor` = the last DID of the previous page.
/// Output `{cursor?, repos: [{did, head, rev, active, status?}]}`; `cursor` is absent on the last page.
/// Errors: `400 InvalidRequest` for a bad `limit`.
pub fn handle(req: &Request, ctx: &Ctx) -> Response {
    let limit = match limit_param(req, 500) {
        Ok(l) => l,
        Err(resp) => return resp,
    };
    let cursor = req.param("cursor");
    // Accounts without a commit yet (only #identity/#account seen) have no head: skipped.
    let page = match ctx.fanout.store().repos_after(cursor, limit) {
        Ok(p) => p,
        Err(e) => return Response::xrpc_error(500, "InternalServerError", &e.to_string()),
    };
    let next = (page.len() == limit).then(|| page.last().map(|(d, _)| d.to_string())).flatten();
    let repos: Vec<serde_json::Value> = page
        .into_iter()
        .filter_map(|(did, state)| {
            let (commit, rev) = (state.commit?, state.rev.clone()?);
            let status = state.status();
            let mut v = serde_json::json!({
                "did": did.as_str(), "head": commit.to_string(), "rev": rev.as_str(), "active": status.is_active(),
            });
            if let Some(s) = status.as_lexicon() {
                crate::xrpc::set(&mut v, "status", s);
            }
            Some(v)
        })
        .collect();
    let mut body = serde_json::json!({ "repos": repos });
    if let Some(c) = next {
        crate::xrpc::set(&mut body, "cursor", c);
    }
    Response::json(200, &body)
}
