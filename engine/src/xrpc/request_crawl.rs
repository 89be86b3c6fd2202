//! `com.atproto.sync.requestCrawl`: a host asks the relay to subscribe to it.
//!
//! Input `{"hostname": "pds.example.com"}` (a scheme and a trailing `/` are tolerated). Checks, in
//! order, each with its XRPC error:
//!
//! | check | status, error |
//! |---|---|
//! | public `requestCrawl` enabled (admin switch) | `403 Forbidden` |
//! | body is JSON with a string `hostname` | `400 InvalidRequest` |
//! | hostname syntax, not an IP address; `localhost` only in dev mode (`--dev-localhost-port`) | `400 InvalidRequest` |
//! | no port, or 443 (dropped: `host:443` is `host`); any port with `--allow-private-hosts`, or localhost in dev mode | `400 InvalidRequest` |
//! | host not banned, directly or by domain (suffix match) | `400 HostBanned` (lexicon) |
//! | a known host is only reconnected (when not connected) | `200` |
//! | a new host fits today's quota (`--new-hosts-per-day`, UTC days) | `429 RateLimitExceeded` |
//! | SSRF guard: every address of the name public (unless `--allow-private-hosts`) | `400 InvalidRequest` |
//! | `GET /xrpc/com.atproto.server.describeServer` answers 200 with a `did` (5 s) | `400 HostNotFound` |
//!
//! Then the host is added to the host table (with the default or trusted account limit) and its
//! ingest shard subscribes to it: `200 {}`. `503 NotEnoughResources` when the sequencer's queue is full.

/// The lexicon NSID.
pub const NSID: &str = "com.atproto.sync.requestCrawl";

use std::time::Duration;

use shards::Metrics;
use shards::messages::{HostCommand, ToSequencer};
use shards::net::{HttpUrl, NetError};
use storage::HostConfig;
use wire::Hostname;

use super::Ctx;
use crate::http::{Request, Response};

/// How long the `describeServer` probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// `requestCrawl` settings (from `relay serve` flags).
#[derive(Debug, Clone, Copy, Default)]
pub struct CrawlConfig {
    /// Dev mode: accept `localhost[:port]` hosts (loopback, plain `ws://`), a bare `localhost`
    /// meaning `localhost:{port}` (the reference PDS of `@atproto/dev-env` announces itself as
    /// `localhost`). `None` (default) refuses localhost.
    pub dev_localhost_port: Option<u16>,
    /// Turn the SSRF guard off: private addresses and any port (hosts on a private network).
    pub allow_private_hosts: bool,
}

/// Normalizes and checks a hostname from a `requestCrawl` (or an admin add): `Ok(host)` or the
/// `400 InvalidRequest` response.
///
/// The name is read as the authority of a URL by the `url` crate (WHATWG URL parsing): a scheme
/// (`https`, `http`, `wss`, `ws`) and a trailing `/` are tolerated, internationalised names become
/// their ASCII (punycode) form, IP literals in any notation are recognised. Nothing else (a path, a
/// query, credentials) is accepted.
pub fn parse_hostname(raw: &str, crawl: &CrawlConfig) -> Result<Hostname, Response> {
    let bad = |m: &str| Response::xrpc_error(400, "InvalidRequest", m);
    let s = raw.trim();
    let with_scheme = if s.contains("://") { s.to_owned() } else { format!("https://{s}") };
    let url = url::Url::parse(&with_scheme).map_err(|_| bad("hostname is not a valid hostname[:port]"))?;
    if !matches!(url.scheme(), "https" | "http" | "wss" | "ws")
        || !url.username().is_empty()
        || url.password().is_some()
        || url.query().is_some()
        || url.fragment().is_some()
        || !matches!(url.path(), "" | "/")
    {
        return Err(bad("hostname must be a bare hostname[:port]"));
    }
    let name = match url.host() {
        Some(url::Host::Domain(d)) => d,
        Some(url::Host::Ipv4(_) | url::Host::Ipv6(_)) => {
            return Err(bad("hostname must be a DNS name, not an IP address"));
        }
        None => return Err(bad("hostname is not a valid hostname[:port]")),
    };
    let spelled = match url.port() {
        Some(port) => format!("{name}:{port}"),
        None => name.to_owned(),
    };
    let mut host = Hostname::parse_lenient(&spelled).map_err(|_| bad("hostname is not a valid hostname[:port]"))?;
    if host.is_localhost() {
        let Some(dev_port) = crawl.dev_localhost_port else {
            return Err(bad("localhost is accepted only in dev mode (--dev-localhost-port)"));
        };
        if host.port().is_none() {
            host = Hostname::parse_lenient(&format!("{}:{dev_port}", host.name()))
                .map_err(|_| bad("hostname is not a valid hostname[:port]"))?;
        }
        return Ok(host);
    }
    if !host.name().contains('.') {
        return Err(bad("hostname must have at least two labels"));
    }
    // The default TLS port names the same host as none (one table row, one connection, one ban).
    let host = host.without_tls_port();
    match host.port() {
        Some(_) if !crawl.allow_private_hosts => {
            Err(bad("hostname may name no port but 443 (hosts are reached over TLS)"))
        }
        _ => Ok(host),
    }
}

/// Handles the request; `admin` requests (from `/admin/pds/requestCrawl`) bypass the public switch
/// and the per-day quota.
pub async fn handle(req: &Request, ctx: &Ctx, admin: bool) -> Response {
    let outcome = crawl(req, ctx, admin).await;
    let result = match &outcome {
        Ok(r) => r.as_str(),
        Err((r, _)) => r,
    };
    Metrics::inc(&ctx.metrics.request_crawl, "result", result);
    match outcome {
        Ok(_) => Response::json(200, &serde_json::json!({})),
        Err((_, resp)) => resp,
    }
}

enum Crawled {
    Added,
    Reconnected,
    Known,
}

impl Crawled {
    fn as_str(&self) -> &'static str {
        match self {
            Crawled::Added => "added",
            Crawled::Reconnected => "reconnected",
            Crawled::Known => "known",
        }
    }
}

type Refused = (&'static str, Response);

async fn crawl(req: &Request, ctx: &Ctx, admin: bool) -> Result<Crawled, Refused> {
    if !admin && !ctx.hosts.crawl_enabled() {
        return Err(("disabled", Response::xrpc_error(403, "Forbidden", "this relay is not accepting requestCrawl")));
    }
    let raw = serde_json::from_slice::<serde_json::Value>(&req.body)
        .ok()
        .and_then(|v| v.get("hostname").and_then(|h| h.as_str()).map(str::to_owned))
        .ok_or_else(|| {
            ("invalid", Response::xrpc_error(400, "InvalidRequest", "body must be {\"hostname\": \"…\"}"))
        })?;
    let host = parse_hostname(&raw, &ctx.crawl).map_err(|r| ("invalid", r))?;
    let store = ctx.hosts.store();
    let internal = |e: storage::StoreError| ("error", Response::xrpc_error(500, "InternalServerError", &e.to_string()));
    let banned = || ("banned", Response::xrpc_error(400, "HostBanned", "this host is banned from the relay"));
    if ctx.hosts.domain_ban(&host).is_some() {
        return Err(banned());
    }
    if let Some(config) = store.host_config(host.as_str()).map_err(internal)? {
        if config.banned {
            return Err(banned());
        }
        if ctx.hosts.is_connected(&host) {
            return Ok(Crawled::Known);
        }
        send(ctx, HostCommand::Connect(host))?;
        return Ok(Crawled::Reconnected);
    }
    let slot = if admin { None } else { ctx.hosts.take_new_host_slot(shards::unix_ms()) };
    if !admin && slot.is_none() {
        return Err((
            "quota",
            Response::xrpc_error(
                429,
                "RateLimitExceeded",
                "the relay has added its new hosts for today; retry tomorrow",
            ),
        ));
    }
    let tls = !host.is_localhost();
    if let Err(refused) = probe(ctx, &host, tls).await {
        if let Some(day) = slot {
            ctx.hosts.return_new_host_slot(day);
        }
        return Err(refused);
    }
    let config = ctx.hosts.new_config(&host, tls, shards::unix_ms());
    let added = store.update_host_config(host.as_str(), |c| Some(c.unwrap_or(config))).map_err(internal)?;
    if added.is_some_and(|c: HostConfig| c.banned) {
        return Err(banned());
    }
    tracing::info!(host = %host, trusted = config.trusted, account_limit = config.account_limit, admin, "host added by requestCrawl");
    Metrics::inc(&ctx.metrics.host_changes, "change", "added");
    send(ctx, HostCommand::Connect(host))?;
    Ok(Crawled::Added)
}

/// The `describeServer` probe, through the SSRF guard.
async fn probe(ctx: &Ctx, host: &Hostname, tls: bool) -> Result<(), Refused> {
    let scheme = if tls { "https" } else { "http" };
    let url = HttpUrl::parse(&format!("{scheme}://{host}/xrpc/com.atproto.server.describeServer"))
        .map_err(|e| ("invalid", Response::xrpc_error(400, "InvalidRequest", &e.to_string())))?;
    let public_only = !ctx.crawl.allow_private_hosts && !host.is_localhost();
    let unreachable = |m: String| ("unreachable", Response::xrpc_error(400, "HostNotFound", &m));
    let http = ctx.http.for_purpose(shards::net::dns::Purpose::Crawl);
    match http.get_with(&url, 64 * 1024, PROBE_TIMEOUT, public_only).await {
        Ok((200, body)) => {
            let did = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("did").and_then(|d| d.as_str()).map(str::to_owned));
            match did {
                Some(d) if d.starts_with("did:") => Ok(()),
                _ => Err(unreachable(format!("{host} answered describeServer without a did: not a PDS"))),
            }
        }
        Ok((status, _)) => Err(unreachable(format!("{host} answered describeServer with HTTP {status}: not a PDS"))),
        Err(e @ NetError::NotPublic { .. }) => {
            Err(("invalid", Response::xrpc_error(400, "InvalidRequest", &format!("refused: {e}"))))
        }
        Err(e) => Err(unreachable(format!("{host} is unreachable: {e}"))),
    }
}

/// Hands a host command to the sequencer (which forwards it to the host's ingest shard).
pub fn send(ctx: &Ctx, cmd: HostCommand) -> Result<(), Refused> {
    to_sequencer(ctx, ToSequencer::Host(cmd))
        .map_err(|_| ("busy", Response::xrpc_error(503, "NotEnoughResources", "the relay is busy; retry")))
}

/// The sequencer's queue is full (the message was not sent).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the sequencer's queue is full")]
pub struct QueueFull;

/// Queues `msg` for the sequencer without waiting (counted in `relay_ingest_queue_depth`).
///
/// # Errors
/// [`QueueFull`].
pub fn to_sequencer(ctx: &Ctx, msg: ToSequencer) -> Result<(), QueueFull> {
    // A splitter has no sequencer: its host and account calls are its upstream's (proxied).
    let tx = ctx.to_sequencer.as_ref().ok_or(QueueFull)?;
    tx.try_send(msg).map_err(|_| QueueFull)?;
    ctx.metrics.ingest_queue_depth.inc();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames() {
        let prod = CrawlConfig::default();
        let ok = |s: &str, c: &CrawlConfig| parse_hostname(s, c).map(|h| h.to_string()).map_err(|r| r.status);
        assert_eq!(ok("pds.example.com", &prod), Ok("pds.example.com".into()));
        assert_eq!(ok("https://PDS.Example.com/", &prod), Ok("pds.example.com".into()));
        assert_eq!(ok("pds.example.com:443", &prod), Ok("pds.example.com".into()));
        assert_eq!(ok("wss://pds.example.com:443/", &prod), Ok("pds.example.com".into()));
        // Internationalised names (and their first byte not being a char boundary) are no panic:
        // their ASCII form is the host.
        assert_eq!(ok("ééééé.com", &prod), Ok("xn--9caaaaa.com".into()));
        assert_eq!(ok("HTTPS://Ünïcode.Example/", &prod), Ok("xn--ncode-cta3g.example".into()));
        for bad in [
            "",
            "1.2.3.4",
            "1.2.3.4:443",
            "[::1]",
            "::1",
            "localhost",
            "localhost:2583",
            "pds",
            "pds.example.com:8080",
            "pds.example.com:80",
            "a b.com",
            "https://user:pw@pds.example.com",
            "pds.example.com/path",
            "pds.example.com?x=1",
            "ftp://pds.example.com",
            "0x7f.0.0.1",
            "[::ffff:127.0.0.1]",
            "é",
        ] {
            assert_eq!(ok(bad, &prod), Err(400), "{bad}");
        }
        let dev = CrawlConfig { dev_localhost_port: Some(2583), allow_private_hosts: false };
        assert_eq!(ok("localhost", &dev), Ok("localhost:2583".into()));
        assert_eq!(ok("localhost:9000", &dev), Ok("localhost:9000".into()));
        let private = CrawlConfig { dev_localhost_port: None, allow_private_hosts: true };
        assert_eq!(ok("pds.internal.example:8080", &private), Ok("pds.internal.example:8080".into()));
    }
}
