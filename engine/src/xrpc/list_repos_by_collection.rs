//! `com.atproto.sync.listReposByCollection`: accounts with records of a collection, in DID order,
//! from the `collections` column family the sequencer maintains from relayed commits.
//!
//! What it can know: an account is listed once the relay has relayed a commit of it that created or
//! updated a record of the collection, so accounts first seen after the relay started are complete
//! from their first commit; records older than that (created before the relay saw the account) are
//! not known. An account stays listed after it deletes its last record of the collection (a
//! relay sees operations, not whole repositories). Accounts that are not active (deleted, taken
//! down, deactivated, suspended) are left out.

/// The lexicon NSID.
pub const NSID: &str = "com.atproto.sync.listReposByCollection";

use super::Ctx;
use crate::http::{Request, Response};

/// `collection` (required NSID), `limit` 1-2000 (default 500), `cursor` = the last DID of the
/// previous page. Output `{cursor?, repos: [{did}]}`; `cursor` is absent on the last page.
/// Errors: `400 InvalidRequest` for a missing or bad `collection` or a bad `limit`.
pub fn handle(req: &Request, ctx: &Ctx) -> Response {
    let collection = match req.param("collection").map(wire::Nsid::new) {
        Some(Ok(c)) => c,
        Some(Err(_)) => return Response::xrpc_error(400, "InvalidRequest", "collection is not a valid NSID"),
        None => return Response::xrpc_error(400, "InvalidRequest", "collection is required"),
    };
    let limit = match req.param("limit").map(str::parse::<usize>) {
        None => 500,
        Some(Ok(n)) if (1..=2000).contains(&n) => n,
        Some(_) => return Response::xrpc_error(400, "InvalidRequest", "limit must be an integer from 1 to 2000"),
    };
    let store = ctx.fanout.store();
    let page = match store.repos_with_collection(collection.as_str(), req.param("cursor"), limit) {
        Ok(p) => p,
        Err(e) => return Response::xrpc_error(500, "InternalServerError", &e.to_string()),
    };
    let next = (page.len() == limit).then(|| page.last().map(ToString::to_string)).flatten();
    let mut repos = Vec::with_capacity(page.len());
    for did in page {
        match store.repo(&did) {
            Ok(Some(state)) if state.status().is_active() => repos.push(serde_json::json!({ "did": did.as_str() })),
            Ok(_) => {}
            Err(e) => return Response::xrpc_error(500, "InternalServerError", &e.to_string()),
        }
    }
    let mut body = serde_json::json!({ "repos": repos });
    if let Some(c) = next {
        crate::xrpc::set(&mut body, "cursor", c);
    }
    Response::json(200, &body)
}
