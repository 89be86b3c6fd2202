//! The admin API under `/admin/`, behind HTTP Basic auth (user `admin`, the password from
//! `--admin-password` / `RELAY_ADMIN_PASSWORD`, compared in constant time). Without a password the
//! API is not served at all.
//!
//! | method and path | body | effect |
//! |---|---|---|
//! | `POST /admin/repo/takeDown` | `{"did": "did:…"}` | take the account down: its commits are no longer relayed; an `#account` event with status `takendown` is relayed |
//! | `POST /admin/repo/reverseTakedown` | `{"did": "did:…"}` | reverse it: an `#account` event with the host's status is relayed |
//!
//! Answers `200 {"did", "takenDown"}` once the sequencer has the request (it applies it in its next
//! batch); `401` without valid credentials; `400 InvalidRequest` for a bad body; `503` when the
//! sequencer's queue is full.

use std::rc::Rc;

use base64::Engine;
use glommio::channels::shared_channel::ConnectedSender;
use shards::messages::IngestMsg;
use wire::Did;

use crate::http::{Request, Response};

/// The admin API of one fanout core.
pub struct Admin {
    password: String,
    to_sequencer: Rc<ConnectedSender<IngestMsg>>,
}

impl Admin {
    /// An admin API checking `password` and sending account actions to the sequencer.
    pub fn new(password: String, to_sequencer: ConnectedSender<IngestMsg>) -> Self {
        Self { password, to_sequencer: Rc::new(to_sequencer) }
    }

    fn authorized(&self, req: &Request) -> bool {
        let Some(encoded) = req.header("authorization").and_then(|v| v.strip_prefix("Basic ")) else {
            return false;
        };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else { return false };
        let Some(colon) = decoded.iter().position(|b| *b == b':') else { return false };
        let (user, password) = decoded.split_at(colon);
        let password = password.get(1..).unwrap_or_default();
        let user_ok = aws_lc_rs::constant_time::verify_slices_are_equal(user, b"admin").is_ok();
        let password_ok = aws_lc_rs::constant_time::verify_slices_are_equal(password, self.password.as_bytes()).is_ok();
        user_ok & password_ok
    }

    /// Handles `/admin/{path}`.
    pub fn handle(&self, path: &str, req: &Request) -> Response {
        if !self.authorized(req) {
            let mut resp = Response::xrpc_error(401, "AuthRequired", "HTTP Basic auth as admin is required");
            resp.headers.push(("WWW-Authenticate", "Basic realm=\"relay admin\"".into()));
            return resp;
        }
        let taken_down = match path {
            "repo/takeDown" => true,
            "repo/reverseTakedown" => false,
            _ => return Response::xrpc_error(404, "NotFound", &format!("no admin endpoint /admin/{path}")),
        };
        if req.method != "POST" {
            return Response::xrpc_error(405, "InvalidRequest", "use POST");
        }
        let did = match serde_json::from_slice::<serde_json::Value>(&req.body)
            .ok()
            .and_then(|v| v["did"].as_str().map(str::to_owned))
            .map(Did::new)
        {
            Some(Ok(did)) => did,
            _ => {
                return Response::xrpc_error(
                    400,
                    "InvalidRequest",
                    "body must be {\"did\": \"did:…\"} with a valid DID",
                );
            }
        };
        match self.to_sequencer.try_send(IngestMsg::Takedown { did: did.clone(), taken_down }) {
            Ok(()) => {
                tracing::info!(%did, taken_down, "admin account action");
                Response::json(200, &serde_json::json!({ "did": did.as_str(), "takenDown": taken_down }))
            }
            Err(_) => Response::xrpc_error(503, "Unavailable", "the sequencer is busy; retry"),
        }
    }
}
