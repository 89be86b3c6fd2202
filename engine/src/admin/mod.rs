//! The admin API and page under `/admin/`, behind HTTP Basic auth (user `admin`, the password from
//! `--admin-password` / `RELAY_ADMIN_PASSWORD`, compared in constant time). Without a password the
//! API is not served at all (`404`). Paths follow indigo's relay where it has the same call; bodies
//! are JSON.
//!
//! `GET /admin/` is the admin page (`page.html`: one static page, no build step, its script calling
//! the JSON endpoints below): key numbers, hosts (ban, unban, kill, limits), the `requestCrawl`
//! switch and quota, domain bans, takedowns, subscribers (lag, kill).
//!
//! | method and path | body | effect and answer |
//! |---|---|---|
//! | `POST /admin/repo/takeDown` | `{"did"}` | take the account down: its events are no longer relayed; `#account` with status `takendown` is relayed. `{"did", "takenDown": true}` |
//! | `POST /admin/repo/reverseTakedown` | `{"did"}` | reverse it: `#account` with the host's status is relayed. `{"did", "takenDown": false}` |
//! | `GET /admin/subs/getUpstreamConns` | | open upstream connections: `{"connections": [{"hostname", "shard", "tls", "connectedAt"}]}` |
//! | `POST /admin/subs/killUpstream` | `{"hostname", "ban"?: bool}` | close the host's connection; it is not reconnected until a `requestCrawl` or restart (or ever, with `"ban": true`). `{"hostname", "wasConnected", "banned"}` |
//! | `GET /admin/subs/getEnabled` | | `{"enabled"}`: whether public `requestCrawl` is accepted |
//! | `POST /admin/subs/setEnabled` | `{"enabled": bool}` | enable or disable public `requestCrawl` (persisted). `{"enabled"}` |
//! | `GET /admin/subs/perDayLimit` | | `{"limit"}`: new hosts public `requestCrawl` may add per UTC day |
//! | `POST /admin/subs/setPerDayLimit` | `{"limit": n}` | change it until restart (`--new-hosts-per-day` sets it at start). `{"limit"}` |
//! | `GET /admin/subs/listDomainBans` | | `{"domains": [...]}` |
//! | `POST /admin/subs/banDomain` | `{"domain"}` | ban a domain and its subdomains (persisted); their connections close. `{"domain", "changed"}` |
//! | `POST /admin/subs/unbanDomain` | `{"domain"}` | lift it; its hosts that are not banned themselves reconnect. `{"domain", "changed"}` |
//! | `GET /admin/pds/list` | | every known host with its settings: `{"hosts": [{"hostname", "status", "seq"?, "accountCount"?, "accountLimit", "trusted", "tls", "banned", "addedAt", "connected", "discontinuities", "rateLimits": {"perSecond", "perHour", "perDay"}}]}` (`discontinuities`: valid commits relayed from the host that did not continue their account's stored state) |
//! | `POST /admin/pds/requestCrawl` | `{"hostname"}` | add a host as `requestCrawl` does, without the public switch or the per-day quota. `{}` |
//! | `POST /admin/pds/changeLimits` | `{"hostname", "accountLimit"?: n, "trusted"?: bool}` | change the host's account limit and trust (its rate limits follow). The host as in `pds/list` |
//! | `POST /admin/pds/block` | `{"hostname"}` | ban the host (persisted) and close its connection. The host |
//! | `POST /admin/pds/unblock` | `{"hostname"}` | lift the ban and reconnect it. The host |
//! | `POST /admin/pds/resetCursor` | `{"hostname", "cursor"?: n}` | set the host's upstream cursor (default 0: from the start of what it still has) and reconnect: how a host that reset its sequence (`FutureCursor`) is recovered without deleting data. The host |
//! | `GET /admin/consumers/list` | | connected subscribers: `{"subscribers": [{"id", "remoteAddr", "userAgent"?, "cursor"?, "connectedAt", "position", "replaying", "lagMs", "endpoint"}]}` (`endpoint`: `firehose`, `jetstream-v1` or `jetstream-v2`; `position`: the last relay seq written to it; `lagMs`: how long the oldest frame in its live queue has waited) |
//! | `POST /admin/consumers/kill` | `{"id"}` | close that subscriber (within a second, with a close frame). `{"id", "killed"}` |
//!
//! Errors (XRPC JSON): `401 AuthenticationRequired` without valid credentials; `404 NotFound` for an unknown
//! path; `400 InvalidRequest` for the wrong method (as the reference XRPC server); `415 InvalidRequest` for a POST without
//! `Content-Type: application/json` (so a cross-site form cannot ride on cached credentials); `400
//! InvalidRequest` for a bad body; `400
//! HostNotFound` for a host the relay does not know; `503 NotEnoughResources` when the sequencer's queue is
//! full (retry).

use base64::Engine;
use serde_json::{Value, json};
use shards::Metrics;
use shards::hosts::RateLimits;
use shards::messages::{HostCommand, ToSequencer};
use storage::{HostConfig, HostRow};
use wire::{Did, HostSeq, Hostname};

use crate::http::{Request, Response};
use crate::xrpc::Ctx;
use crate::xrpc::request_crawl;

/// The admin API of one fanout core.
pub struct Admin {
    password: String,
}

fn datetime_ms(ms: u64) -> String {
    wire::syntax::datetime_from_unix_us(ms.saturating_mul(1000))
}

fn bad(message: &str) -> Response {
    Response::xrpc_error(400, "InvalidRequest", message)
}

fn internal(e: impl std::fmt::Display) -> Response {
    Response::xrpc_error(500, "InternalServerError", &e.to_string())
}

fn body(req: &Request) -> Result<Value, Response> {
    // A JSON content type: a browser cannot send one cross-origin without a preflight, so a page an
    // admin visits cannot reuse cached Basic credentials (CSRF).
    let json =
        req.header("content-type").is_some_and(|t| t.trim_start().to_ascii_lowercase().starts_with("application/json"));
    if !json {
        return Err(Response::xrpc_error(415, "InvalidRequest", "admin calls need Content-Type: application/json"));
    }
    serde_json::from_slice::<Value>(&req.body)
        .ok()
        .filter(Value::is_object)
        .ok_or_else(|| bad("the body must be a JSON object"))
}

/// The `hostname` field: a known host.
fn known_host(v: &Value, ctx: &Ctx) -> Result<(Hostname, HostConfig), Response> {
    let raw = v.get("hostname").and_then(Value::as_str).ok_or_else(|| bad("hostname is required"))?;
    let host = Hostname::parse_lenient(raw).map_err(|_| bad("hostname is not a hostname[:port]"))?.without_tls_port();
    match ctx.hosts.store().host_config(host.as_str()) {
        Ok(Some(config)) => Ok((host, config)),
        Ok(None) => Err(Response::xrpc_error(400, "HostNotFound", "the relay does not know this host")),
        Err(e) => Err(internal(e)),
    }
}

/// A host as `pds/list` shows it.
fn host_admin_json(row: &HostRow, ctx: &Ctx) -> Value {
    let mut v = crate::xrpc::list_hosts::host_json(row, ctx);
    let limits = RateLimits::for_host(&row.config);
    crate::xrpc::set(&mut v, "accountLimit", row.config.account_limit);
    crate::xrpc::set(&mut v, "trusted", row.config.trusted);
    crate::xrpc::set(&mut v, "tls", row.config.tls);
    crate::xrpc::set(&mut v, "banned", row.config.banned);
    crate::xrpc::set(&mut v, "addedAt", datetime_ms(row.config.added_ms));
    crate::xrpc::set(&mut v, "connected", Hostname::parse_lenient(&row.host).is_ok_and(|h| ctx.hosts.is_connected(&h)));
    crate::xrpc::set(&mut v, "discontinuities", row.state.as_ref().map_or(0, |s| s.discontinuities));
    crate::xrpc::set(
        &mut v,
        "rateLimits",
        json!({ "perSecond": limits.per_second, "perHour": limits.per_hour, "perDay": limits.per_day }),
    );
    v
}

fn host_response(host: &Hostname, ctx: &Ctx) -> Response {
    match ctx.hosts.store().host_row(host.as_str()) {
        Ok(Some(row)) => Response::json(200, &host_admin_json(&row, ctx)),
        Ok(None) => Response::xrpc_error(400, "HostNotFound", "the relay does not know this host"),
        Err(e) => internal(e),
    }
}

/// The admin page: not cached, not framed by other sites, scripts only its own.
fn page() -> Response {
    let mut resp = Response {
        status: 200,
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("page.html").to_vec(),
        headers: Vec::new(),
    };
    resp.headers.push(("Cache-Control", "no-store".into()));
    resp.headers.push(("X-Frame-Options", "DENY".into()));
    resp.headers.push((
        "Content-Security-Policy",
        "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; frame-ancestors 'none'".into(),
    ));
    resp
}

fn send(ctx: &Ctx, cmd: HostCommand) -> Result<(), Response> {
    request_crawl::send(ctx, cmd).map_err(|(_, resp)| resp)
}

impl Admin {
    /// An admin API checking `password`.
    pub fn new(password: String) -> Self {
        Self { password }
    }

    pub(crate) fn authorized(&self, req: &Request) -> bool {
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
    pub async fn handle(&self, path: &str, req: &Request, ctx: &Ctx) -> Response {
        if !self.authorized(req) {
            let mut resp = Response::xrpc_error(401, "AuthenticationRequired", "HTTP Basic auth as admin is required");
            resp.headers.push(("WWW-Authenticate", "Basic realm=\"relay admin\"".into()));
            return resp;
        }
        if path.is_empty() || path == "index.html" {
            if req.method != "GET" {
                return crate::xrpc::wrong_method(&req.method, "GET");
            }
            return page();
        }
        let get = match path {
            "subs/getUpstreamConns"
            | "subs/getEnabled"
            | "subs/perDayLimit"
            | "subs/listDomainBans"
            | "pds/list"
            | "consumers/list" => true,
            "repo/takeDown"
            | "repo/reverseTakedown"
            | "subs/killUpstream"
            | "subs/setEnabled"
            | "subs/setPerDayLimit"
            | "subs/banDomain"
            | "subs/unbanDomain"
            | "pds/requestCrawl"
            | "pds/changeLimits"
            | "pds/block"
            | "pds/unblock"
            | "pds/resetCursor"
            | "consumers/kill" => false,
            _ => return Response::xrpc_error(404, "NotFound", &format!("no admin endpoint /admin/{path}")),
        };
        match (get, req.method.as_str()) {
            (true, "GET") | (false, "POST") => {}
            (true, _) => return crate::xrpc::wrong_method(&req.method, "GET"),
            (false, _) => return crate::xrpc::wrong_method(&req.method, "POST"),
        }
        if path == "pds/requestCrawl" {
            return request_crawl::handle(req, ctx, true).await;
        }
        let result = if get { self.query(path, ctx) } else { self.procedure(path, req, ctx) };
        result.unwrap_or_else(|resp| resp)
    }

    fn query(&self, path: &str, ctx: &Ctx) -> Result<Response, Response> {
        let registry = &ctx.hosts;
        let v = match path {
            "subs/getUpstreamConns" => {
                let conns: Vec<Value> = registry
                    .connections()
                    .into_iter()
                    .map(|(h, c)| json!({ "hostname": h, "shard": c.shard, "tls": c.tls, "connectedAt": datetime_ms(c.since_ms) }))
                    .collect();
                json!({ "connections": conns })
            }
            "subs/getEnabled" => json!({ "enabled": registry.crawl_enabled() }),
            "subs/perDayLimit" => json!({ "limit": registry.new_hosts_per_day() }),
            "subs/listDomainBans" => json!({ "domains": registry.domain_bans() }),
            "pds/list" => {
                let mut hosts = Vec::new();
                let mut after: Option<String> = None;
                loop {
                    let page = registry.store().hosts_after(after.as_deref(), 1000).map_err(internal)?;
                    hosts.extend(page.iter().map(|row| host_admin_json(row, ctx)));
                    match page.last() {
                        Some(last) if page.len() == 1000 => after = Some(last.host.clone()),
                        _ => break,
                    }
                }
                json!({ "hosts": hosts })
            }
            "consumers/list" => {
                let subs: Vec<Value> = ctx
                    .fanout
                    .directory()
                    .list()
                    .into_iter()
                    .map(|s| {
                        json!({
                            "id": s.id, "remoteAddr": s.info.remote, "userAgent": s.info.user_agent,
                            "cursor": s.info.cursor, "connectedAt": datetime_ms(s.info.connected_ms),
                            "position": s.position, "replaying": s.replaying, "lagMs": s.lag_ms,
                            "endpoint": s.info.endpoint,
                        })
                    })
                    .collect();
                json!({ "subscribers": subs })
            }
            _ => return Err(Response::xrpc_error(404, "NotFound", "no such admin query")),
        };
        Ok(Response::json(200, &v))
    }

    fn procedure(&self, path: &str, req: &Request, ctx: &Ctx) -> Result<Response, Response> {
        let v = body(req)?;
        let store = ctx.hosts.store();
        match path {
            "repo/takeDown" | "repo/reverseTakedown" => {
                let taken_down = path == "repo/takeDown";
                let did = v
                    .get("did")
                    .and_then(Value::as_str)
                    .and_then(|d| Did::new(d).ok())
                    .ok_or_else(|| bad("body must be {\"did\": \"did:…\"} with a valid DID"))?;
                request_crawl::to_sequencer(ctx, ToSequencer::Takedown { did: did.clone(), taken_down })
                    .map_err(|_| Response::xrpc_error(503, "NotEnoughResources", "the sequencer is busy; retry"))?;
                tracing::info!(%did, taken_down, "admin account action");
                Ok(Response::json(200, &json!({ "did": did.as_str(), "takenDown": taken_down })))
            }
            "subs/killUpstream" => {
                let (host, _) = known_host(&v, ctx)?;
                let ban = v.get("ban").and_then(Value::as_bool).unwrap_or(false);
                let was = ctx.hosts.is_connected(&host);
                if ban {
                    store
                        .update_host_config(host.as_str(), |c| c.map(|c| HostConfig { banned: true, ..c }))
                        .map_err(internal)?;
                    Metrics::inc(&ctx.metrics.host_changes, "change", "banned");
                }
                send(ctx, HostCommand::Disconnect(host.clone()))?;
                Metrics::inc(&ctx.metrics.host_changes, "change", "killed");
                tracing::info!(host = %host, ban, "admin killed upstream");
                Ok(Response::json(200, &json!({ "hostname": host.as_str(), "wasConnected": was, "banned": ban })))
            }
            "subs/setEnabled" => {
                let enabled =
                    v.get("enabled").and_then(Value::as_bool).ok_or_else(|| bad("enabled (bool) is required"))?;
                ctx.hosts.set_crawl_enabled(enabled).map_err(internal)?;
                tracing::info!(enabled, "admin set requestCrawl");
                Ok(Response::json(200, &json!({ "enabled": enabled })))
            }
            "subs/setPerDayLimit" => {
                let limit = v
                    .get("limit")
                    .and_then(Value::as_u64)
                    .and_then(|l| u32::try_from(l).ok())
                    .ok_or_else(|| bad("limit (0 to 4294967295) is required"))?;
                ctx.hosts.set_new_hosts_per_day(limit);
                Ok(Response::json(200, &json!({ "limit": limit })))
            }
            "subs/banDomain" | "subs/unbanDomain" => {
                let banned = path == "subs/banDomain";
                let domain = v
                    .get("domain")
                    .and_then(Value::as_str)
                    .map(|d| d.trim().trim_start_matches("*.").trim_end_matches('.').to_ascii_lowercase())
                    .filter(|d| Hostname::new(d.clone()).is_ok())
                    .ok_or_else(|| bad("domain (a DNS name) is required"))?;
                let changed = ctx.hosts.set_domain_ban(&domain, banned, shards::unix_ms()).map_err(internal)?;
                // Close (or reopen) the domain's hosts.
                for (h, config) in store.host_configs().map_err(internal)? {
                    let Ok(host) = Hostname::parse_lenient(&h) else { continue };
                    if !shards::hosts::in_domain(&host, &domain) {
                        continue;
                    }
                    if banned {
                        send(ctx, HostCommand::Disconnect(host))?;
                    } else if !config.banned && ctx.hosts.domain_ban(&host).is_none() {
                        send(ctx, HostCommand::Connect(host))?;
                    }
                }
                tracing::info!(%domain, banned, changed, "admin domain ban");
                Ok(Response::json(200, &json!({ "domain": domain, "changed": changed })))
            }
            "pds/changeLimits" => {
                let (host, _) = known_host(&v, ctx)?;
                let limit = match v.get("accountLimit") {
                    None => None,
                    Some(l) => Some(l.as_u64().ok_or_else(|| bad("accountLimit must be a non-negative integer"))?),
                };
                let trusted = match v.get("trusted") {
                    None => None,
                    Some(t) => Some(t.as_bool().ok_or_else(|| bad("trusted must be a boolean"))?),
                };
                store
                    .update_host_config(host.as_str(), |c| {
                        c.map(|c| HostConfig {
                            account_limit: limit.unwrap_or(c.account_limit),
                            trusted: trusted.unwrap_or(c.trusted),
                            ..c
                        })
                    })
                    .map_err(internal)?;
                send(ctx, HostCommand::Reload(host.clone()))?;
                tracing::info!(host = %host, ?limit, ?trusted, "admin changed host limits");
                Ok(host_response(&host, ctx))
            }
            "pds/block" | "pds/unblock" => {
                let (host, _) = known_host(&v, ctx)?;
                let banned = path == "pds/block";
                store.update_host_config(host.as_str(), |c| c.map(|c| HostConfig { banned, ..c })).map_err(internal)?;
                let cmd =
                    if banned { HostCommand::Disconnect(host.clone()) } else { HostCommand::Connect(host.clone()) };
                send(ctx, cmd)?;
                Metrics::inc(&ctx.metrics.host_changes, "change", if banned { "banned" } else { "unbanned" });
                tracing::info!(host = %host, banned, "admin host ban");
                Ok(host_response(&host, ctx))
            }
            "pds/resetCursor" => {
                let (host, _) = known_host(&v, ctx)?;
                let cursor = match v.get("cursor") {
                    None => 0,
                    Some(c) => c.as_u64().ok_or_else(|| bad("cursor must be a non-negative integer"))?,
                };
                send(ctx, HostCommand::ResetCursor { host: host.clone(), cursor: HostSeq(cursor) })?;
                Metrics::inc(&ctx.metrics.host_changes, "change", "cursor_reset");
                tracing::info!(host = %host, cursor, "admin reset host cursor");
                Ok(host_response(&host, ctx))
            }
            "consumers/kill" => {
                let id = v.get("id").and_then(Value::as_u64).ok_or_else(|| bad("id (a subscriber id) is required"))?;
                let killed = ctx.fanout.directory().kill(id);
                tracing::info!(id, killed, "admin killed subscriber");
                Ok(Response::json(200, &json!({ "id": id, "killed": killed })))
            }
            _ => Err(Response::xrpc_error(404, "NotFound", "no such admin procedure")),
        }
    }
}
