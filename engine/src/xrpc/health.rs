//! `GET /xrpc/_health`: liveness and the relay's current head, served from the API task queue so it
//! answers while the relay is under load.

/// The health path (not a lexicon method; indigo's name).
pub const NSID: &str = "_health";

use super::Ctx;
use crate::http::Response;

/// `200 {"status": "ok", "version", "seq": <last durable relay seq>, "oldestSeq"?: <oldest stored
/// seq>}`; `503 {"status": "degraded", "reason", "error": "NotEnoughResources", "message", …}` while
/// the relay cannot take events (`disk_full`: the data directory is below `--min-free-disk`; replay
/// and the API still work).
pub fn handle(ctx: &Ctx) -> Response {
    let mut body = serde_json::json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "seq": ctx.fanout.committed().0,
    });
    if let Ok(Some(oldest)) = ctx.fanout.store().first_seq() {
        super::set(&mut body, "oldestSeq", oldest.0);
    }
    match ctx.health.degraded() {
        Some(reason) => {
            super::set(&mut body, "status", "degraded");
            super::set(&mut body, "reason", reason);
            // Also an XRPC error, for clients that read every non-2xx answer as one.
            super::set(&mut body, "error", "NotEnoughResources");
            super::set(&mut body, "message", format!("the relay is not taking events: {reason}"));
            Response::json(503, &body)
        }
        None => Response::json(200, &body),
    }
}
