//! `relay pull-hosts --from URL`: bootstraps the host table from another relay's
//! `com.atproto.sync.listHosts` (pages of 1,000). Every host with a valid hostname (no port but 443,
//! which is dropped; never `localhost`, which only an operator may add) that the other relay does not
//! list as `banned` is added with the default settings (trusted when in a
//! `--trusted-domain`); hosts already known keep their settings. The relay connects to them at its
//! next start, through the startup ramp.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use shards::hosts::HostRegistry;
use shards::net::{HttpClient, HttpUrl};
use storage::{Store, StoreOptions};
use wire::Hostname;

/// Flags of `relay pull-hosts`.
#[derive(clap::Args, Debug, Clone)]
pub struct PullHostsArgs {
    /// Base URL of the relay to copy from, e.g. `https://relay1.us-east.bsky.network`.
    #[arg(long = "from", value_name = "URL")]
    pub from: String,

    /// Directory of the RocksDB store (created if missing); the relay must not be running on it.
    #[arg(long, default_value = "./data", value_name = "DIR")]
    pub data_dir: PathBuf,

    /// PEM file of extra CA certificates to trust (e.g. a test CA).
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,

    /// Settings of the added hosts.
    #[command(flatten)]
    pub host_policy: crate::HostPolicyArgs,
}

/// What one pull did.
#[derive(Debug, Default)]
struct Pulled {
    listed: usize,
    added: usize,
    known: usize,
    skipped: usize,
}

/// Runs `relay pull-hosts`.
///
/// # Errors
/// A bad URL, an unreachable relay or a non-200 answer, a malformed `listHosts` page, or a store that
/// cannot be opened (e.g. the relay is running on it).
pub fn run(args: &PullHostsArgs) -> anyhow::Result<()> {
    let base = args.from.trim_end_matches('/').to_owned();
    HttpUrl::parse(&format!("{base}/")).with_context(|| format!("--from {}", args.from))?;
    let extra_ca = match &args.tls_ca {
        Some(path) => Some(std::fs::read(path).with_context(|| format!("reading --tls-ca {}", path.display()))?),
        None => None,
    };
    let http = HttpClient::new(extra_ca.as_deref(), shards::net::dns::Dns::default()).context("--tls-ca")?;
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("creating {}", args.data_dir.display()))?;
    let store = Arc::new(
        Store::open(&args.data_dir, &StoreOptions::default())
            .with_context(|| format!("opening the store in {} (is the relay running?)", args.data_dir.display()))?,
    );
    let registry =
        HostRegistry::new(Arc::clone(&store), args.host_policy.policy()).context("reading the host table")?;
    let pulled = glommio::LocalExecutorBuilder::default()
        .io_memory(1 << 20)
        .make()
        .map_err(|e| anyhow::anyhow!("starting an executor: {e} (is io_uring available?)"))?
        .run(pull(&http, &base, &registry))?;
    println!(
        "pulled {} hosts from {base}: {} added, {} already known, {} skipped (banned there, localhost, a port, or not a hostname)",
        pulled.listed, pulled.added, pulled.known, pulled.skipped
    );
    Ok(())
}

async fn pull(http: &HttpClient, base: &str, registry: &HostRegistry) -> anyhow::Result<Pulled> {
    let mut out = Pulled::default();
    let mut cursor: Option<String> = None;
    let now = shards::unix_ms();
    loop {
        let mut url = format!("{base}/xrpc/com.atproto.sync.listHosts?limit=1000");
        if let Some(c) = &cursor {
            url.push_str("&cursor=");
            url.push_str(&c.replace(':', "%3A"));
        }
        let parsed = HttpUrl::parse(&url).with_context(|| url.clone())?;
        let (status, body) =
            http.get(&parsed, 16 << 20, Duration::from_secs(30)).await.with_context(|| format!("GET {url}"))?;
        if status != 200 {
            bail!("GET {url}: HTTP {status}: {}", String::from_utf8_lossy(&body));
        }
        let page: serde_json::Value = serde_json::from_slice(&body).with_context(|| format!("GET {url}: not JSON"))?;
        let hosts = page.get("hosts").and_then(|h| h.as_array()).with_context(|| format!("GET {url}: no hosts"))?;
        let mut names: Vec<Hostname> = Vec::new();
        for h in hosts {
            out.listed += 1;
            let name = h.get("hostname").and_then(|n| n.as_str()).unwrap_or_default();
            let banned = h.get("status").and_then(|s| s.as_str()) == Some("banned");
            let host = Hostname::parse_lenient(name).map(Hostname::without_tls_port);
            match host {
                Ok(host) if !banned && !host.is_localhost() && host.port().is_none() => names.push(host),
                _ => out.skipped += 1,
            }
        }
        let keys: Vec<&str> = names.iter().map(Hostname::as_str).collect();
        let stored = registry.store().update_host_configs(&keys, |name, c| {
            c.or_else(|| Hostname::parse_lenient(name).ok().map(|h| registry.new_config(&h, true, now)))
        })?;
        for (before, _) in stored {
            if before.is_none() {
                out.added += 1;
            } else {
                out.known += 1;
            }
        }
        match page.get("cursor").and_then(|c| c.as_str()) {
            Some(c) if !hosts.is_empty() && cursor.as_deref() != Some(c) => cursor = Some(c.to_owned()),
            _ => return Ok(out),
        }
    }
}
