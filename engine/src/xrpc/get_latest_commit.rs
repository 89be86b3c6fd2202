//! `com.atproto.sync.getLatestCommit`: the last commit the relay relayed for an account.

/// The lexicon NSID.
pub const NSID: &str = "com.atproto.sync.getLatestCommit";

use super::Ctx;
use crate::http::{Request, Response};

/// `did` required. Output `{cid, rev}`. Errors (`400`, lexicon names): `RepoNotFound` (unknown,
/// deleted, or no commit yet), `RepoTakendown`, `RepoSuspended`, `RepoDeactivated`. Other inactive
/// statuses (`desynchronized`, `throttled`) answer the commit: the lexicon defines no error for them.
pub fn handle(req: &Request, ctx: &Ctx) -> Response {
    let (_, state) = match super::account(req, ctx) {
        Ok(found) => found,
        Err(resp) => return resp,
    };
    if let Some(refused) = super::inactive_error(&state) {
        return refused;
    }
    match (state.commit, state.rev) {
        (Some(cid), Some(rev)) => {
            Response::json(200, &serde_json::json!({ "cid": cid.to_string(), "rev": rev.as_str() }))
        }
        _ => Response::xrpc_error(400, "RepoNotFound", "no commit of this account has been relayed"),
    }
}
