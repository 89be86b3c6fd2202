//! The `relay` binary's library: the CLI, the core layout and executors, the listeners, XRPC
//! handlers, the admin API, metrics and shutdown. It holds no relay policy: validation, sequencing and
//! fanout live in `shards`. It is a library so the request fuzz target (`fuzz/`) can drive the real
//! routers; `src/main.rs` only installs logging and the panic policy and calls [`run`].

#![cfg_attr(not(test), deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod admin;
pub mod http;
pub mod layout;
pub mod limits;
pub mod pull_hosts;
pub mod runtime;
pub mod xrpc;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// An AT Protocol relay: subscribes to PDS hosts, validates and sequences their events, persists them
/// in RocksDB and serves `com.atproto.sync.subscribeRepos` with cursor replay.
#[derive(Parser, Debug)]
#[command(name = "relay", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the relay.
    Serve(Box<ServeArgs>),
    /// Bootstrap the host table from another relay's `com.atproto.sync.listHosts` (run while the
    /// relay is stopped: it opens the data directory).
    PullHosts(pull_hosts::PullHostsArgs),
}

/// When the sequencer's group commits are fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Fsync {
    /// Every group commit is fsynced before its events are served (survives power loss).
    Always,
    /// Group commits reach the OS but are not fsynced (survives a process crash, not a power loss).
    Never,
}

/// Flags of `relay serve`.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Upstream host to subscribe to (repeatable; added to the host table as trusted): `host[:port]`
    /// (wss://, or ws:// for localhost),
    /// or an explicit `wss://host[:port]` / `ws://host[:port]`.
    #[arg(long = "host", value_name = "HOST")]
    pub hosts: Vec<String>,

    /// Seconds over which an ingest shard with 1,000+ hosts spreads their first connections at start
    /// (fewer hosts: proportionally less; 0 = all at once).
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    pub startup_ramp_secs: u64,

    /// Consecutive failed connection attempts after which a host is offline (1 and up).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub offline_after_failures: u32,

    /// How often an offline host is still tried, seconds.
    #[arg(long, default_value_t = 600, value_name = "SECS")]
    pub offline_retry_secs: u64,

    /// A host connection silent for this long is closed and reconnected, and the host is `idle`
    /// until it sends again, seconds (1 and up).
    #[arg(long, default_value_t = 600, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout_secs: u64,

    /// Allow plain ws:// upstreams other than localhost (e.g. on a private network).
    #[arg(long)]
    pub allow_insecure_ws: bool,

    /// Turn the SSRF guard off: upstreams, requestCrawl hosts and did:web servers may resolve to
    /// private addresses and requestCrawl may name any port (hosts on a private network).
    #[arg(long)]
    pub allow_private_hosts: bool,

    /// Dev mode: requestCrawl accepts localhost hosts (loopback, plain ws://), and a bare `localhost`
    /// means `localhost:PORT` (the reference PDS of @atproto/dev-env announces itself as `localhost`).
    #[arg(long, value_name = "PORT")]
    pub dev_localhost_port: Option<u16>,

    /// Settings of the hosts the relay adds.
    #[command(flatten)]
    pub host_policy: HostPolicyArgs,

    /// New hosts public requestCrawl may add per UTC day (0 = none; admin adds are not counted).
    #[arg(long, default_value_t = 50, value_name = "N")]
    pub new_hosts_per_day: u32,

    /// PLC directory base URL for did:plc resolution, e.g. https://plc.directory or
    /// http://localhost:2582.
    #[arg(long, value_name = "URL", required_unless_present = "print_layout")]
    pub plc_url: Option<String>,

    /// Directory of the RocksDB store (created if missing).
    #[arg(long, default_value = "./data", value_name = "DIR")]
    pub data_dir: PathBuf,

    /// Address the HTTP/websocket API listens on (one SO_REUSEPORT listener per fanout core).
    #[arg(long, default_value = "127.0.0.1:2470", value_name = "ADDR")]
    pub listen: SocketAddr,

    /// CPUs running ingest shards, e.g. `0-3,6` (default: automatic layout).
    #[arg(long, value_name = "CPUS")]
    pub ingest_cores: Option<String>,

    /// CPUs running fanout shards and the API, e.g. `4-7` (default: automatic layout).
    #[arg(long, value_name = "CPUS")]
    pub fanout_cores: Option<String>,

    /// CPU running the sequencer (default: automatic layout).
    #[arg(long, value_name = "CPU")]
    pub sequencer_core: Option<usize>,

    /// CPU RocksDB's flush and compaction threads are pinned to (default: automatic layout).
    #[arg(long, value_name = "CPU")]
    pub compaction_core: Option<usize>,

    /// Print which role runs on which CPU, then exit.
    #[arg(long)]
    pub print_layout: bool,

    /// Durability of group commits.
    #[arg(long, value_enum, default_value = "always")]
    pub fsync: Fsync,

    /// Most subscribers (subscribeRepos websockets) served at once; past it an upgrade is answered
    /// 503 NotEnoughResources. 0 = no limit.
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    pub max_subscribers: usize,

    /// Most open API connections (HTTP requests and websockets) per client address (IPv6: per
    /// /64); past it a connection is answered 429 RateLimitExceeded and closed. 0 = no limit.
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub max_connections_per_ip: usize,

    /// Frames queued per subscriber before it is dropped with ConsumerTooSlow (1024 and up: at least
    /// one sequencer batch).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1024..))]
    pub subscriber_queue: u64,

    /// Relay commits whose Sync 1.1 checks fail (op CIDs, inversion to prevData, since/prevData
    /// against the stored state), counting them in relay_sync_violations_total, instead of dropping
    /// them. For migrations off hosts that are not Sync 1.1 yet.
    #[arg(long)]
    pub lenient_sync: bool,

    /// PEM file of extra CA certificates to trust for outbound TLS (besides the webpki roots), e.g.
    /// a test CA.
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,

    /// Password of the admin API (`/admin/`, HTTP Basic auth as user `admin`). Without it the admin
    /// API is not served.
    #[arg(long, env = "RELAY_ADMIN_PASSWORD", hide_env_values = true, value_name = "PASSWORD")]
    pub admin_password: Option<String>,

    /// RocksDB background threads for flushes and compactions (1-64).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(i32).range(1..=64))]
    pub rocksdb_threads: i32,
}

/// Settings of hosts the relay adds (flags shared by `serve` and `pull-hosts`).
#[derive(clap::Args, Debug, Clone)]
pub struct HostPolicyArgs {
    /// Account limit of a host added by requestCrawl or pull-hosts; accounts past it are throttled
    /// (change per host with /admin/pds/changeLimits).
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub default_account_limit: u64,

    /// Account limit of a new trusted host (--host, or in a --trusted-domain).
    #[arg(long, default_value_t = 10_000_000, value_name = "N")]
    pub trusted_account_limit: u64,

    /// Domain whose hosts are trusted when added (repeatable; `*.` prefix optional): the trusted
    /// account limit and higher event rate limits.
    #[arg(long = "trusted-domain", value_name = "DOMAIN")]
    pub trusted_domains: Vec<String>,
}

impl HostPolicyArgs {
    /// The policy these flags give (the new-host quota at its default).
    pub fn policy(&self) -> shards::hosts::HostPolicy {
        shards::hosts::HostPolicy {
            default_account_limit: self.default_account_limit,
            trusted_account_limit: self.trusted_account_limit,
            trusted_domains: self
                .trusted_domains
                .iter()
                .map(|d| d.trim_start_matches("*.").to_ascii_lowercase())
                .collect(),
            ..shards::hosts::HostPolicy::default()
        }
    }
}

/// Runs a parsed command line.
///
/// # Errors
/// Whatever stopped the command (printed by `main` with `{:#}`).
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => runtime::serve(*args),
        Command::PullHosts(args) => pull_hosts::run(&args),
    }
}
