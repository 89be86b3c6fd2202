//! `com.atproto.sync.listHosts`: the upstream hosts the relay subscribes to, in hostname order.

/// The lexicon NSID.
pub const NSID: &str = "com.atproto.sync.listHosts";

use super::{Ctx, limit_param};
use crate::http::{Request, Response};

/// One host as the lexicon's `#host`: `{hostname, seq?, accountCount?, status}`; `seq` is the last
/// upstream seq the relay processed.
pub fn host_json(hostname: &str, info: &storage::HostInfo, state: Option<&storage::HostState>) -> serde_json::Value {
    let mut v = serde_json::json!({ "hostname": hostname, "status": info.status.as_str() });
    if let Some(s) = state {
        v["seq"] = s.cursor.0.into();
        v["accountCount"] = s.account_count.into();
    }
    v
}

/// `limit` 1-1000 (default 200), `cursor` = the last hostname of the previous page. Output
/// `{cursor?, hosts: [...]}`; `cursor` is absent on the last page. Errors: `400 InvalidRequest` for a
/// bad `limit`.
pub fn handle(req: &Request, ctx: &Ctx) -> Response {
    let limit = match limit_param(req, 200) {
        Ok(l) => l,
        Err(resp) => return resp,
    };
    let cursor = req.params().into_iter().find(|(k, _)| *k == "cursor").map(|(_, v)| v.to_owned());
    let page = match ctx.fanout.store().hosts_after(cursor.as_deref(), limit) {
        Ok(p) => p,
        Err(e) => return Response::xrpc_error(500, "InternalServerError", &e.to_string()),
    };
    let next = (page.len() == limit).then(|| page.last().map(|(h, _, _)| h.clone())).flatten();
    let hosts: Vec<serde_json::Value> =
        page.iter().map(|(h, info, state)| host_json(h, info, state.as_ref())).collect();
    let mut body = serde_json::json!({ "hosts": hosts });
    if let Some(c) = next {
        body["cursor"] = c.into();
    }
    Response::json(200, &body)
}
