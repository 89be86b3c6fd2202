//! `com.atproto.sync.listHosts`: the upstream hosts the relay subscribes to, in hostname order.

/// The lexicon NSID.
pub const NSID: &str = "com.atproto.sync.listHosts";

use wire::HostStatus;

use super::{Ctx, limit_param};
use crate::http::{Request, Response};

/// One host as the lexicon's `#host`: `{hostname, seq?, accountCount?, status}`; `seq` is the last
/// upstream seq the relay processed. `status` is `banned` for a host banned directly or by domain,
/// else what its ingest shard recorded (`active` before its first connection attempt).
pub fn host_json(row: &storage::HostRow, ctx: &Ctx) -> serde_json::Value {
    let banned =
        row.config.banned || wire::Hostname::parse_lenient(&row.host).is_ok_and(|h| ctx.hosts.domain_ban(&h).is_some());
    let status = if banned { HostStatus::Banned } else { row.info.map_or(HostStatus::Active, |i| i.status) };
    let mut v = serde_json::json!({ "hostname": row.host, "status": status.as_str() });
    if let Some(s) = &row.state {
        crate::xrpc::set(&mut v, "seq", s.cursor().0);
        crate::xrpc::set(&mut v, "accountCount", s.account_count);
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
    let cursor = req.param("cursor");
    let page = match ctx.fanout.store().hosts_after(cursor, limit) {
        Ok(p) => p,
        Err(e) => return Response::xrpc_error(500, "InternalServerError", &e.to_string()),
    };
    let next = (page.len() == limit).then(|| page.last().map(|r| r.host.clone())).flatten();
    let hosts: Vec<serde_json::Value> = page.iter().map(|row| host_json(row, ctx)).collect();
    let mut body = serde_json::json!({ "hosts": hosts });
    if let Some(c) = next {
        crate::xrpc::set(&mut body, "cursor", c);
    }
    Response::json(200, &body)
}
