//! Jetstream, served by the relay itself (the streams: `shards::fanout::jet`; the wire formats:
//! `wire::jetstream`):
//!
//! - `GET /subscribe`: v1, as Bluesky's Jetstream serves it (`wantedCollections`, `wantedDids`,
//!   `cursor` in unix µs, `maxMessageSizeBytes`, `compress=true` or `Socket-Encoding: zstd`,
//!   `requireHello=true`).
//! - `network.bsky.jetstream.subscribeEvents`: v2 (`kinds`, `dids`, `collections`, `cursor` as a seq
//!   or, from 1e15 on, unix µs, `maxMessageSizeBytes`, `zstdDictionary`), subprotocol
//!   `xrpc.v1.json`.
//! - `network.bsky.jetstream.getZstdDictionary`: the relay's dictionary (`id` optional).
//!
//! Bad parameters are answered before the upgrade with `400 InvalidRequest` (XRPC error JSON); a v2
//! `zstdDictionary` that is not the relay's with `400 UnknownZstdDictionary`, naming the current ID;
//! a v2 seq cursor below the retention floor with `400 CursorTooOld`, naming the floor (the errors
//! of the published lexicons, vendored in `scripts/lexicons/jetstream/`).

use shards::fanout::jet::codec;
use shards::fanout::{JetFormat, JetRequest, JetStart};
use wire::jetstream::{self, V2Cursor};

use super::{Ctx, Routed, Stream};
use crate::http::{Request, Response};

/// The v1 path.
pub const V1_PATH: &str = "/subscribe";
/// The v2 subscription NSID.
pub const V2_NSID: &str = jetstream::V2_NSID;
/// The dictionary query NSID.
pub const DICTIONARY_NSID: &str = "network.bsky.jetstream.getZstdDictionary";
/// The websocket subprotocol of v2 frames.
pub const V2_SUBPROTOCOL: &str = "xrpc.v1.json";

fn upgrade(req: &Request, request: JetRequest, ctx: &Ctx, subprotocol: Option<&'static str>) -> Routed {
    if req.header("upgrade").is_none() {
        let mut resp = Response::xrpc_error(426, "InvalidRequest", "this endpoint is a websocket: upgrade required");
        resp.headers.push(("Upgrade", "websocket".into()));
        return Routed::Respond(resp);
    }
    if request.compress && !ctx.fanout.can_compress() {
        return Routed::Respond(Response::xrpc_error(503, "NotEnoughResources", "compression is unavailable"));
    }
    match req.websocket_accept() {
        Ok(accept_key) => Routed::Upgrade { accept_key, stream: Stream::Jetstream(Box::new(request)), subprotocol },
        Err(reason) => Routed::Respond(Response::xrpc_error(400, "InvalidRequest", reason)),
    }
}

/// `GET /subscribe` (v1).
pub fn subscribe_v1(req: &Request, ctx: &Ctx) -> Routed {
    let parsed = match jetstream::parse_v1(&req.params) {
        Ok(p) => p,
        Err(message) => return Routed::Respond(Response::xrpc_error(400, "InvalidRequest", &message)),
    };
    let socket_zstd = req.header("socket-encoding").is_some_and(|v| v.trim().eq_ignore_ascii_case("zstd"));
    let request = JetRequest {
        format: JetFormat::V1,
        filter: parsed.filter,
        start: parsed.cursor_us.map_or(JetStart::Live, JetStart::TimeUs),
        compress: parsed.compress || socket_zstd,
        require_hello: parsed.require_hello,
    };
    upgrade(req, request, ctx, None)
}

/// `network.bsky.jetstream.subscribeEvents` (v2).
pub fn subscribe_v2(req: &Request, ctx: &Ctx) -> Routed {
    let parsed = match jetstream::parse_v2(&req.params) {
        Ok(p) => p,
        Err(message) => return Routed::Respond(Response::xrpc_error(400, "InvalidRequest", &message)),
    };
    let current = codec::dictionary_id();
    if let Some(id) = parsed.zstd_dictionary
        && id != current
    {
        return Routed::Respond(Response::xrpc_error(
            400,
            "UnknownZstdDictionary",
            &format!("unknown zstd dictionary {id}; the current one is {current} (getZstdDictionary)"),
        ));
    }
    // A seq cursor below the retention floor is refused before the upgrade, as the published
    // lexicon says ("Rejected pre-upgrade with HTTP 400, never as a stream error frame: the
    // requested seq cursor is below the server's retention floor. The message carries the floor
    // seq"); a timestamp cursor is clamped with `#info OutdatedCursor` instead. 0 asks for
    // everything still stored.
    if let Some(V2Cursor::Seq(s)) = parsed.cursor
        && s.0 > 0
    {
        match ctx.fanout.jet_floor() {
            Ok(floor) if s < floor => {
                return Routed::Respond(Response::xrpc_error(
                    400,
                    "CursorTooOld",
                    &format!("cursor {s} is below the retention floor; the oldest seq still served is {floor}"),
                ));
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "jetstream cursor floor");
                return Routed::Respond(Response::xrpc_error(500, "InternalServerError", "the store failed"));
            }
        }
    }
    let offered =
        req.header("sec-websocket-protocol").is_some_and(|v| v.split(',').any(|p| p.trim() == V2_SUBPROTOCOL));
    let request = JetRequest {
        format: JetFormat::V2,
        filter: parsed.filter,
        start: match parsed.cursor {
            None => JetStart::Live,
            Some(V2Cursor::Seq(s)) => JetStart::Seq(s),
            Some(V2Cursor::TimeUs(us)) => JetStart::TimeUs(us),
        },
        compress: parsed.zstd_dictionary.is_some(),
        require_hello: false,
    };
    upgrade(req, request, ctx, offered.then_some(V2_SUBPROTOCOL))
}

/// `network.bsky.jetstream.getZstdDictionary`: the raw dictionary (`application/octet-stream`).
/// `id`, when given, must be the current dictionary's (`400 DictionaryNotFound` otherwise, the
/// lexicon's error; `400 InvalidRequest` when it is not an integer of 1 or more).
pub fn get_dictionary(req: &Request) -> Response {
    let current = codec::dictionary_id();
    if let Some(id) = req.param("id") {
        match id.parse::<u32>() {
            Ok(n) if n == current => {}
            Ok(n) if n >= 1 => {
                return Response::xrpc_error(
                    400,
                    "DictionaryNotFound",
                    &format!("no zstd dictionary {n} here; the current one is {current}"),
                );
            }
            _ => {
                return Response::xrpc_error(
                    400,
                    "InvalidRequest",
                    &format!("id must be an integer of 1 or more: {id:?}"),
                );
            }
        }
    }
    let mut resp = Response {
        status: 200,
        content_type: "application/octet-stream",
        body: codec::DICTIONARY.to_vec(),
        headers: Vec::new(),
    };
    resp.headers.push(("Cache-Control", "public, max-age=86400".into()));
    resp
}
