//! `GET /xrpc/_health`: liveness and the relay's current head, served from the API task queue so it
//! answers while the relay is under load.

/// The health path (not a lexicon method; indigo's name).
pub const NSID: &str = "_health";

use super::Ctx;
use crate::http::Response;

/// `{"status": "ok", "version": …, "seq": <last durable relay seq>}`.
pub fn handle(ctx: &Ctx) -> Response {
    Response::json(
        200,
        &serde_json::json!({
            "status": "ok",
            "version": env!("CARGO_PKG_VERSION"),
            "seq": ctx.fanout.committed().0,
        }),
    )
}
