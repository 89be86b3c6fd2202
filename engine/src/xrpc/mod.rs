//! XRPC routing, one file per NSID (each starting with its `NSID` const), plus `/metrics`.
//! Errors are XRPC error JSON (`{"error", "message"}`) per <https://atproto.com/specs/xrpc>.

mod get_host_status;
mod get_latest_commit;
mod get_repo;
mod get_repo_status;
pub(crate) mod health;
pub mod jetstream;
pub mod list_hosts;
mod list_repos;
mod list_repos_by_collection;
pub mod request_crawl;
pub(crate) mod subscribe_repos;

use std::rc::Rc;
use std::sync::Arc;

use glommio::TaskQueueHandle;
use glommio::channels::shared_channel::ConnectedSender;
use prometheus_client::registry::Registry;
use shards::Metrics;
use shards::fanout::FanoutShard;
use shards::hosts::HostRegistry;
use shards::messages::ToSequencer;
use shards::net::HttpClient;
use wire::RelaySeq;

use crate::http::{Request, Response};

/// What a handler on a fanout core can reach.
pub struct Ctx {
    /// This core's fanout shard.
    pub fanout: Rc<FanoutShard>,
    /// The task queue subscriber connections run in.
    pub fanout_tq: TaskQueueHandle,
    /// The metrics registry rendered at `/metrics`.
    pub registry: Arc<Registry>,
    /// The admin API, when `--admin-password` is set.
    pub admin: Option<crate::admin::Admin>,
    /// Host policy, bans and live upstream connections (shared by every core).
    pub hosts: Arc<HostRegistry>,
    /// This core's queue to the sequencer (host commands, takedowns); `None` in a splitter.
    pub to_sequencer: Option<ConnectedSender<ToSequencer>>,
    /// The splitter's side of the API (`relay splitter`): what it serves itself, what it passes on
    /// to its upstream; `None` in the relay.
    pub splitter: Option<Rc<crate::splitter::api::SplitterApi>>,
    /// Outbound HTTP (the `describeServer` probe of `requestCrawl`).
    pub http: HttpClient,
    /// `requestCrawl` settings.
    pub crawl: request_crawl::CrawlConfig,
    /// Counters.
    pub metrics: Metrics,
    /// Connection limits (shared by every fanout core).
    pub limits: std::sync::Arc<crate::limits::ConnectionLimits>,
    /// Conditions that degrade the relay (shared by every core).
    pub health: std::sync::Arc<shards::health::Health>,
    /// The engine's own metrics, read when `/metrics` is scraped.
    pub engine_metrics: crate::metrics::EngineMetrics,
    /// Memory this core's API requests being read may hold ([`crate::http::REQUEST_MEMORY_BYTES`]).
    pub request_memory: Rc<glommio::sync::Semaphore>,
}

/// What an upgraded connection is served.
pub enum Stream {
    /// `subscribeRepos` from the cursor (`None`: the live tail).
    Firehose(Option<RelaySeq>),
    /// A Jetstream subscription (v1 or v2).
    Jetstream(Box<shards::fanout::JetRequest>),
}

/// The outcome of routing a request.
pub enum Routed {
    /// Answer with this response and close.
    Respond(Response),
    /// Upgrade to a websocket and serve `stream`.
    Upgrade {
        /// `Sec-WebSocket-Accept` value.
        accept_key: String,
        /// What to serve.
        stream: Stream,
        /// The `Sec-WebSocket-Protocol` chosen, if any.
        subprotocol: Option<&'static str>,
    },
}

/// Routes a request.
pub async fn route(req: &Request, ctx: &Ctx) -> Routed {
    let path = req.path.as_str();
    if req.method == "OPTIONS" {
        // CORS preflight (e.g. a browser POSTing requestCrawl with a JSON body).
        let mut resp = Response::json(204, &serde_json::Value::Null);
        resp.body.clear();
        resp.headers.push(("Access-Control-Allow-Methods", "GET, POST, OPTIONS".into()));
        resp.headers.push(("Access-Control-Allow-Headers", "Content-Type, Authorization".into()));
        resp.headers.push(("Access-Control-Max-Age", "86400".into()));
        return Routed::Respond(resp);
    }
    if path == "/metrics" {
        return Routed::Respond(only_get(req).unwrap_or_else(|| metrics(req, ctx)));
    }
    if let Some(splitter) = &ctx.splitter {
        return crate::splitter::api::route(req, ctx, splitter).await;
    }
    if path == "/admin" {
        let mut resp = Response::json(302, &serde_json::json!({}));
        resp.headers.push(("Location", "/admin/".into()));
        return Routed::Respond(resp);
    }
    if path == jetstream::V1_PATH {
        return only_get_stream(req).map_or_else(|| jetstream::subscribe_v1(req, ctx), Routed::Respond);
    }
    if let Some(rest) = path.strip_prefix("/admin/") {
        return Routed::Respond(match &ctx.admin {
            Some(admin) => admin.handle(rest, req, ctx).await,
            None => Response::xrpc_error(404, "NotFound", "the admin API is disabled (no --admin-password)"),
        });
    }
    let Some(nsid) = path.strip_prefix("/xrpc/") else {
        return Routed::Respond(Response::xrpc_error(404, "NotFound", "no such path"));
    };
    match nsid {
        health::NSID => Routed::Respond(only_get(req).unwrap_or_else(|| health::handle(ctx))),
        list_repos::NSID => Routed::Respond(only_get(req).unwrap_or_else(|| list_repos::handle(req, ctx))),
        list_hosts::NSID => Routed::Respond(only_get(req).unwrap_or_else(|| list_hosts::handle(req, ctx))),
        get_host_status::NSID => Routed::Respond(only_get(req).unwrap_or_else(|| get_host_status::handle(req, ctx))),
        get_repo_status::NSID => Routed::Respond(only_get(req).unwrap_or_else(|| get_repo_status::handle(req, ctx))),
        get_latest_commit::NSID => {
            Routed::Respond(only_get(req).unwrap_or_else(|| get_latest_commit::handle(req, ctx)))
        }
        get_repo::NSID => Routed::Respond(only_get(req).unwrap_or_else(|| get_repo::handle(req, ctx))),
        request_crawl::NSID => Routed::Respond(match req.method.as_str() {
            "POST" => request_crawl::handle(req, ctx, false).await,
            other => wrong_method(other, "POST"),
        }),
        subscribe_repos::NSID => match only_get_stream(req) {
            Some(resp) => Routed::Respond(resp),
            None => subscribe_repos::handle(req, ctx),
        },
        list_repos_by_collection::NSID => {
            Routed::Respond(only_get(req).unwrap_or_else(|| list_repos_by_collection::handle(req, ctx)))
        }
        jetstream::V2_NSID => only_get_stream(req).map_or_else(|| jetstream::subscribe_v2(req, ctx), Routed::Respond),
        jetstream::DICTIONARY_NSID => Routed::Respond(only_get(req).unwrap_or_else(|| jetstream::get_dictionary(req))),
        _ => Routed::Respond(Response::xrpc_error(
            501,
            "MethodNotImplemented",
            &format!("method {nsid} is not implemented"),
        )),
    }
}

/// The `limit` parameter: 1-1000, `default` when absent.
fn limit_param(req: &Request, default: usize) -> Result<usize, Response> {
    match req.param("limit") {
        None => Ok(default),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=1000).contains(&n) => Ok(n),
            _ => Err(Response::xrpc_error(400, "InvalidRequest", "limit must be an integer from 1 to 1000")),
        },
    }
}

/// The required `did` parameter and the relay's state for it: `400 InvalidRequest` for a missing or
/// bad DID, `400 RepoNotFound` for an account the relay does not know.
fn account(req: &Request, ctx: &Ctx) -> Result<(wire::Did, storage::RepoState), Response> {
    let did = match req.param("did").map(wire::Did::new) {
        Some(Ok(did)) => did,
        Some(Err(_)) => return Err(Response::xrpc_error(400, "InvalidRequest", "did is not a valid DID")),
        None => return Err(Response::xrpc_error(400, "InvalidRequest", "did is required")),
    };
    match ctx.fanout.store().repo(&did) {
        Ok(Some(state)) => Ok((did, state)),
        Ok(None) => Err(Response::xrpc_error(400, "RepoNotFound", "the relay does not know this account")),
        Err(e) => Err(Response::xrpc_error(500, "InternalServerError", &e.to_string())),
    }
}

/// The lexicon error for an account the relay has inactive, as `getLatestCommit` and `getRepo`
/// declare them: `RepoTakendown`, `RepoSuspended`, `RepoDeactivated`, and `RepoNotFound` for a deleted
/// account. `None` for other statuses (`desynchronized`, `throttled`: the lexicons define no error).
fn inactive_error(state: &storage::RepoState) -> Option<Response> {
    let (name, message) = match state.status() {
        wire::AccountStatus::Takendown => ("RepoTakendown", "the account is taken down"),
        wire::AccountStatus::Suspended => ("RepoSuspended", "the account is suspended"),
        wire::AccountStatus::Deactivated => ("RepoDeactivated", "the account is deactivated"),
        wire::AccountStatus::Deleted => ("RepoNotFound", "the account is deleted"),
        _ => return None,
    };
    Some(Response::xrpc_error(400, name, message))
}

/// Sets `key` of the JSON object `v` (no effect on a value that is not an object, which the handlers
/// never build).
pub(crate) fn set(v: &mut serde_json::Value, key: &str, value: impl Into<serde_json::Value>) {
    if let Some(map) = v.as_object_mut() {
        map.insert(key.to_owned(), value.into());
    }
}

/// A method called with the wrong HTTP method: `400 InvalidRequest`, as the reference XRPC server
/// (`@atproto/xrpc-server`) answers, with its message.
pub fn wrong_method(got: &str, expected: &str) -> Response {
    Response::xrpc_error(400, "InvalidRequest", &format!("Incorrect HTTP method ({got}) expected {expected}"))
}

pub(crate) fn only_get(req: &Request) -> Option<Response> {
    (req.method != "GET").then(|| wrong_method(&req.method, "GET"))
}

/// A subscription endpoint called with another method than `GET`: `405 MethodNotAllowed`
/// (<https://atproto.com/specs/event-stream>, "Connection": "`405 Method Not Allowed`: Returned to
/// client for non-GET HTTP requests to a stream endpoint"; the body is XRPC error JSON, as the spec
/// asks for these status codes), with `Allow: GET`.
pub(crate) fn only_get_stream(req: &Request) -> Option<Response> {
    (req.method != "GET").then(|| {
        let mut r = Response::xrpc_error(
            405,
            "MethodNotAllowed",
            &format!("{} is not allowed on a stream endpoint: use GET", req.method),
        );
        r.headers.push(("Allow", "GET".to_owned()));
        r
    })
}

/// `/metrics`: OpenMetrics text for a scraper that asks for it (`Accept: application/openmetrics-text`,
/// as Prometheus does), else the Prometheus text format 0.0.4 (what `curl` and `promtool check
/// metrics` read).
fn metrics(req: &Request, ctx: &Ctx) -> Response {
    ctx.engine_metrics.refresh(ctx.fanout.store(), &ctx.hosts);
    let mut body = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut body, &ctx.registry) {
        return Response::xrpc_error(500, "InternalServerError", &e.to_string());
    }
    let openmetrics = req.header("accept").is_some_and(|a| a.contains("application/openmetrics-text"));
    let (content_type, body) = if openmetrics {
        ("application/openmetrics-text; version=1.0.0; charset=utf-8", body)
    } else {
        ("text/plain; version=0.0.4; charset=utf-8", openmetrics_to_text(&body))
    };
    Response { status: 200, content_type, body: body.into_bytes(), headers: Vec::new() }
}

/// OpenMetrics text as the Prometheus text format 0.0.4: a counter family is named with its
/// `_total` suffix in `# HELP` and `# TYPE` (OpenMetrics names the family without it), and the
/// `# UNIT` and `# EOF` lines, which 0.0.4 does not have, go. Samples are the same in both.
fn openmetrics_to_text(om: &str) -> String {
    let counters: std::collections::HashSet<&str> =
        om.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.strip_suffix(" counter")).collect();
    let mut out = String::with_capacity(om.len());
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            counters.contains(name).then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn openmetrics_counters_become_total_families_in_text_0_0_4() {
        let om = "# HELP relay_x Things.\n# TYPE relay_x counter\nrelay_x_total{a=\"b\"} 3\n# HELP relay_g A gauge.\n# TYPE relay_g gauge\n# UNIT relay_g bytes\nrelay_g 1\n# EOF\n";
        assert_eq!(
            super::openmetrics_to_text(om),
            "# HELP relay_x_total Things.\n# TYPE relay_x_total counter\nrelay_x_total{a=\"b\"} 3\n# HELP relay_g A gauge.\n# TYPE relay_g gauge\nrelay_g 1\n"
        );
    }
}
