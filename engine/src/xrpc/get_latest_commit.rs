//! `com.atproto.sync.getLatestCommit`: the last commit the relay relayed for an account.

/// The lexicon NSID.
pub const NSID: &str = "com.atproto.sync.getLatestCommit";

use wire::AccountStatus;

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
    let error = match state.status() {
        AccountStatus::Takendown => Some(("RepoTakendown", "the account is taken down")),
        AccountStatus::Suspended => Some(("RepoSuspended", "the account is suspended")),
        AccountStatus::Deactivated => Some(("RepoDeactivated", "the account is deactivated")),
        AccountStatus::Deleted => Some(("RepoNotFound", "the account is deleted")),
        _ => None,
    };
    if let Some((name, message)) = error {
        return Response::xrpc_error(400, name, message);
    }
    match (state.commit, state.rev) {
        (Some(cid), Some(rev)) => {
            Response::json(200, &serde_json::json!({ "cid": cid.to_string(), "rev": rev.as_str() }))
        }
        _ => Response::xrpc_error(400, "RepoNotFound", "no commit of this account has been relayed"),
    }
}
