//! `com.atproto.sync.subscribeRepos`: the websocket upgrade and the `cursor` parameter. The stream
//! itself is served by the fanout shard (`shards::fanout`).

/// The lexicon NSID.
pub const NSID: &str = "com.atproto.sync.subscribeRepos";

use wire::RelaySeq;

use super::{Ctx, Routed};
use crate::http::{Request, Response};

/// Validates the upgrade request and the cursor.
///
/// Errors (XRPC `InvalidRequest`): `426` without an `Upgrade` header (a plain GET); `400` for a bad
/// upgrade (not `websocket`, missing or unsupported `Sec-WebSocket-Version` (13 only), missing key)
/// or a cursor that is not a non-negative integer.
/// A cursor ahead of the relay is answered inside the stream with the lexicon's `FutureCursor` error.
pub fn handle(req: &Request, _ctx: &Ctx) -> Routed {
    let mut cursor = None;
    for (name, value) in &req.params {
        if name == "cursor" {
            match value.parse::<u64>() {
                Ok(c) if c <= i64::MAX as u64 => cursor = Some(RelaySeq(c)),
                _ => {
                    return Routed::Respond(Response::xrpc_error(
                        400,
                        "InvalidRequest",
                        &format!("cursor must be a non-negative integer, got {value:?}"),
                    ));
                }
            }
        }
    }
    if req.header("upgrade").is_none() {
        // A plain GET (e.g. a browser or curl): 426 says which protocol this method speaks.
        let mut resp = Response::xrpc_error(426, "InvalidRequest", "this method is a websocket: upgrade required");
        resp.headers.push(("Upgrade", "websocket".into()));
        return Routed::Respond(resp);
    }
    match req.websocket_accept() {
        Ok(accept_key) => Routed::Upgrade { accept_key, stream: super::Stream::Firehose(cursor), subprotocol: None },
        Err(reason) => Routed::Respond(Response::xrpc_error(400, "InvalidRequest", reason)),
    }
}
