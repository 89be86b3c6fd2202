//! `com.atproto.sync.getRepoStatus`: the relay's view of one account.

/// The lexicon NSID.
pub const NSID: &str = "com.atproto.sync.getRepoStatus";

use super::Ctx;
use crate::http::{Request, Response};

/// `did` required. Output `{did, active, status?, rev?}`. Errors: `400 InvalidRequest` for a missing
/// or bad DID, `400 RepoNotFound` for an account the relay does not know.
pub fn handle(req: &Request, ctx: &Ctx) -> Response {
    let (did, state) = match super::account(req, ctx) {
        Ok(found) => found,
        Err(resp) => return resp,
    };
    let status = state.status();
    let mut body = serde_json::json!({ "did": did.as_str(), "active": status.is_active() });
    if let Some(s) = status.as_lexicon() {
        crate::xrpc::set(&mut body, "status", s);
    }
    if let Some(rev) = &state.rev {
        crate::xrpc::set(&mut body, "rev", rev.as_str());
    }
    Response::json(200, &body)
}
