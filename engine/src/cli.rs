//! The command line: `relay serve` and `relay pull-hosts`. Every flag of `serve` can also be set by
//! an environment variable `RELAY_<FLAG>` (shown in `--help`; a flag given on the command line wins),
//! as indigo's relay does. Durations take units (`30s`, `10m`, `72h`, humantime syntax; a bare
//! number is seconds, so the old `--…-secs N` spellings, kept as aliases, still work); sizes take
//! units (`512MiB`, `200GB`, bytesize syntax; a bare number is bytes).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

/// An AT Protocol relay: it subscribes to the firehose of many PDS hosts, checks every event
/// (signatures, repository structure, Sync 1.1), gives each one global sequence number, keeps them
/// for a replay window, and serves the merged firehose (com.atproto.sync.subscribeRepos) to
/// websocket subscribers with cursor replay.
#[derive(Parser, Debug)]
#[command(name = "relay", version)]
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
    PullHosts(crate::pull_hosts::PullHostsArgs),
    /// Run a splitter: the relay's fan-out tier. It follows one upstream firehose (a relay,
    /// another splitter, a PDS), keeps its frames byte for byte under the upstream's seqs, and
    /// serves them (subscribeRepos, Jetstream) with the relay's replay, retention and
    /// slow-consumer policy; the other sync methods, requestCrawl and /admin/* go to the upstream.
    Splitter(Box<SplitterArgs>),
    /// Check this machine for the relay (io_uring, locked memory, file descriptors, CPUs, the data
    /// directory, the clock): each check OK, WARN or FAIL with a fix; non-zero exit on a FAIL.
    Doctor(crate::doctor::DoctorArgs),
}

/// When the sequencer's group commits are fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Fsync {
    /// Every group commit is fsynced before its events are served (survives power loss).
    Always,
    /// Group commits reach the OS but are not fsynced (survives a process crash, not a power loss).
    Never,
}

/// A duration with a unit (`30s`, `10m`, `72h`, `1h 30m`: humantime), or a bare number of seconds.
///
/// # Errors
/// A message naming the value when it is neither.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(s).map_err(|e| format!("{s:?} is not a duration such as 30s, 10m or 72h: {e}"))
}

/// The fanout coalescing interval (`--fanout-coalesce`): `auto` (`None`) or a fixed duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coalesce(pub Option<Duration>);

/// [`parse_duration`], or `auto`.
///
/// # Errors
/// A message naming the value when it is neither.
pub fn parse_coalesce(s: &str) -> Result<Coalesce, String> {
    if s.trim().eq_ignore_ascii_case("auto") {
        Ok(Coalesce(None))
    } else {
        parse_duration(s).map(|d| Coalesce(Some(d)))
    }
}

/// A duration that may be `off` (`--retention`): `DurationOrOff(None)` means no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationOrOff(pub Option<Duration>);

/// Parses `--commit-interval`: [`parse_duration`], at most 1 s.
fn parse_commit_interval(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d > Duration::from_secs(1) {
        return Err(format!("{s}: at most 1s (events wait this long to be made durable)"));
    }
    Ok(d)
}

/// [`parse_duration`], or `off` (no limit).
///
/// # Errors
/// As [`parse_duration`].
pub fn parse_duration_or_off(s: &str) -> Result<DurationOrOff, String> {
    if s.trim().eq_ignore_ascii_case("off") {
        Ok(DurationOrOff(None))
    } else {
        parse_duration(s).map(|d| DurationOrOff(Some(d)))
    }
}

/// A size with a unit (`512MiB`, `200GB`, `1.5 GiB`: bytesize; SI and binary units), or a bare number
/// of bytes.
///
/// # Errors
/// A message naming the value when it is neither.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    s.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("{s:?} is not a size such as 512MiB or 200GB: {e}"))
}

/// Flags of `relay serve`.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Upstream host to subscribe to (repeatable; comma-separated in the environment; added to the
    /// host table as trusted): `host[:port]` (wss://, or ws:// for localhost), or an explicit
    /// `wss://host[:port]` / `ws://host[:port]`.
    #[arg(long = "host", value_name = "HOST", env = "RELAY_HOSTS", value_delimiter = ',')]
    pub hosts: Vec<String>,

    /// How long an ingest shard with 1,000+ hosts spreads their first connections over at start
    /// (fewer hosts: proportionally less; 0 = all at once).
    #[arg(long, alias = "startup-ramp-secs", default_value = "30s", value_name = "DURATION",
          value_parser = parse_duration, env = "RELAY_STARTUP_RAMP")]
    pub startup_ramp: Duration,

    /// Consecutive failed connection attempts after which a host is offline (1 and up).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..),
          env = "RELAY_OFFLINE_AFTER_FAILURES")]
    pub offline_after_failures: u32,

    /// How often an offline host is still tried.
    #[arg(long, alias = "offline-retry-secs", default_value = "10m", value_name = "DURATION",
          value_parser = parse_duration, env = "RELAY_OFFLINE_RETRY")]
    pub offline_retry: Duration,

    /// A host connection silent for this long is closed and reconnected, and the host is `idle`
    /// until it sends again (1s and up).
    #[arg(long, alias = "idle-timeout-secs", default_value = "10m", value_name = "DURATION",
          value_parser = parse_duration, env = "RELAY_IDLE_TIMEOUT")]
    pub idle_timeout: Duration,

    /// Allow plain ws:// upstreams other than localhost (e.g. on a private network).
    #[arg(long, env = "RELAY_ALLOW_INSECURE_WS")]
    pub allow_insecure_ws: bool,

    /// Turn the SSRF guard off: upstreams, requestCrawl hosts and did:web servers may resolve to
    /// private addresses and requestCrawl may name any port (hosts on a private network).
    #[arg(long, env = "RELAY_ALLOW_PRIVATE_HOSTS")]
    pub allow_private_hosts: bool,

    /// Dev mode: requestCrawl accepts localhost hosts (loopback, plain ws://), and a bare `localhost`
    /// means `localhost:PORT` (the reference PDS of @atproto/dev-env announces itself as `localhost`).
    #[arg(long, value_name = "PORT", env = "RELAY_DEV_LOCALHOST_PORT")]
    pub dev_localhost_port: Option<u16>,

    /// Settings of the hosts the relay adds.
    #[command(flatten)]
    pub host_policy: HostPolicyArgs,

    /// New hosts public requestCrawl may add per UTC day (0 = none; admin adds are not counted).
    #[arg(long, default_value_t = 50, value_name = "N", env = "RELAY_NEW_HOSTS_PER_DAY")]
    pub new_hosts_per_day: u32,

    /// PLC directory base URL for did:plc resolution, e.g. `https://plc.directory` or
    /// `http://localhost:2582`.
    #[arg(long, value_name = "URL", required_unless_present = "print_layout", env = "RELAY_PLC_URL")]
    pub plc_url: Option<String>,

    /// CPUs running ingest shards, e.g. `0-3,6` (default: automatic layout).
    #[arg(long, value_name = "CPUS", env = "RELAY_INGEST_CORES")]
    pub ingest_cores: Option<String>,

    /// CPUs running fanout shards and the API, e.g. `4-7` (default: automatic layout).
    #[arg(long, value_name = "CPUS", env = "RELAY_FANOUT_CORES")]
    pub fanout_cores: Option<String>,

    /// CPU running the sequencer (default: automatic layout).
    #[arg(long, value_name = "CPU", env = "RELAY_SEQUENCER_CORE")]
    pub sequencer_core: Option<usize>,

    /// CPU RocksDB's flush and compaction threads (and retention) are pinned to (default: automatic
    /// layout).
    #[arg(long, value_name = "CPU", env = "RELAY_COMPACTION_CORE")]
    pub compaction_core: Option<usize>,

    /// Print which role runs on which CPU, then exit.
    #[arg(long, env = "RELAY_PRINT_LAYOUT")]
    pub print_layout: bool,

    /// A floor for the next relay seq (indigo's name): the relay's sequence continues from at least
    /// this number, and the floor is stored, so it holds across restarts without the flag. For a
    /// relay whose store was lost or replaced: pick it "with a healthy margin above any previous
    /// sequence number" (specs/event-stream), so every consumer's cursor is below it. 1 and up;
    /// ignored when the store's sequence is already past it.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..(1u64 << 62)),
          env = "RELAY_INITIAL_SEQ_NUMBER")]
    pub initial_seq_number: Option<u64>,

    /// Relay commits whose Sync 1.1 proof fails (op CIDs against the signed MST, the inversion to
    /// prevData), counting them in relay_sync_violations_total, instead of dropping them (indigo's
    /// --lenient-sync-validation). Commits that only break their account's chain are relayed
    /// anyway.
    #[arg(long, env = "RELAY_LENIENT_SYNC")]
    pub lenient_sync: bool,

    /// The store: data directory, durability, retention and disk bounds.
    #[command(flatten)]
    pub store: StoreArgs,

    /// The API and subscribers: listen address, limits, admin password, outbound TLS.
    #[command(flatten)]
    pub api: ApiArgs,
}

/// Flags of `relay splitter`.
#[derive(clap::Args, Debug, Clone)]
pub struct SplitterArgs {
    /// The upstream's firehose: `wss://host[:port]` or `ws://host[:port]` (`https://`/`http://`
    /// also accepted), a relay or another splitter (repeatable; comma-separated in the
    /// environment). With several, they must share one seq space (a relay and its splitters): on
    /// a failure the splitter goes on with the next one from its last stored seq.
    #[arg(long = "upstream", value_name = "URL", env = "RELAY_UPSTREAMS", value_delimiter = ',')]
    pub upstreams: Vec<String>,

    /// Where requestCrawl is passed on (repeatable; comma-separated in the environment): the first
    /// one's answer is returned, the others are sent without waiting. Default: the upstream.
    #[arg(long = "crawl-forward", value_name = "URL", env = "RELAY_CRAWL_FORWARD", value_delimiter = ',')]
    pub crawl_forward: Vec<String>,

    /// CPUs running fanout shards and the API, e.g. `1-3` (default: automatic layout).
    #[arg(long, value_name = "CPUS", env = "RELAY_FANOUT_CORES")]
    pub fanout_cores: Option<String>,

    /// CPU running the follower (the upstream connection and the writer; default: automatic
    /// layout, where the relay puts its sequencer).
    #[arg(long, value_name = "CPU", env = "RELAY_FOLLOWER_CORE")]
    pub follower_core: Option<usize>,

    /// CPU RocksDB's flush and compaction threads (and retention) are pinned to (default: automatic
    /// layout).
    #[arg(long, value_name = "CPU", env = "RELAY_COMPACTION_CORE")]
    pub compaction_core: Option<usize>,

    /// Print which role runs on which CPU, then exit.
    #[arg(long, env = "RELAY_PRINT_LAYOUT")]
    pub print_layout: bool,

    /// The store: data directory, durability, retention and disk bounds.
    #[command(flatten)]
    pub store: StoreArgs,

    /// The API and subscribers: listen address, limits, admin password, outbound TLS.
    #[command(flatten)]
    pub api: ApiArgs,
}

/// The store's flags (shared by `serve` and `splitter`).
#[derive(clap::Args, Debug, Clone)]
pub struct StoreArgs {
    /// Directory of the RocksDB store (created if missing).
    #[arg(long, default_value = "./data", value_name = "DIR", env = "RELAY_DATA_DIR")]
    pub data_dir: PathBuf,

    /// Durability of group commits.
    #[arg(long, value_enum, default_value = "always", env = "RELAY_FSYNC")]
    pub fsync: Fsync,

    /// How long events are kept for replay; older ones are deleted (by seq ranges, on the
    /// compaction core). `off` keeps everything: the disk then grows without bound.
    #[arg(long, default_value = "72h", value_name = "DURATION|off", value_parser = parse_duration_or_off,
          env = "RELAY_RETENTION")]
    pub retention: DurationOrOff,

    /// When the data directory takes more than this on disk (every file, as `du` counts it: the
    /// events, the other column families, the write-ahead log), the oldest events are deleted early
    /// (e.g. 200GB; default: no size limit, only --retention). `--max-events-disk` and
    /// `RELAY_MAX_EVENTS_DISK` are its former names.
    #[arg(long, alias = "max-events-disk", value_name = "BYTES", value_parser = parse_bytes, env = "RELAY_MAX_DISK")]
    pub max_disk: Option<u64>,

    /// Most bytes of RocksDB write-ahead log kept: past it the column families holding the oldest
    /// log are flushed, so the log files can go. Bounds the disk beyond the window and the replay
    /// after a crash (see kernel-notes.md, storage). 0 = RocksDB's own rule (4 × all write
    /// buffers).
    #[arg(long, default_value = "64MiB", value_name = "BYTES", value_parser = parse_bytes,
          env = "RELAY_MAX_WAL_SIZE")]
    pub max_wal_size: u64,

    /// Free space the data directory's filesystem must keep: below it the relay stops taking events
    /// (hosts pause, nothing is dropped), reports itself degraded, and resumes by itself when space
    /// is freed. 0 = no check.
    #[arg(long, default_value = "1GiB", value_name = "BYTES", value_parser = parse_bytes,
          env = "RELAY_MIN_FREE_DISK")]
    pub min_free_disk: u64,

    /// Shortest time between the starts of two group commits (each one fsync): the events that
    /// arrive within it of the previous commit share the next one. It trades latency for CPU only
    /// at low load: a commit after a quiet spell starts at once, and under load, when a commit takes
    /// longer than this, nothing waits. Adds at most this much to ingest-to-durable latency. `0s`
    /// commits whatever has arrived as soon as the previous commit is durable. Measured in
    /// bench/README.md ("CPU per event").
    #[arg(long, default_value = "5ms", value_name = "DURATION", value_parser = parse_commit_interval,
          env = "RELAY_COMMIT_INTERVAL")]
    pub commit_interval: Duration,

    /// RocksDB background threads for flushes and compactions (1-64).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(i32).range(1..=64),
          env = "RELAY_ROCKSDB_THREADS")]
    pub rocksdb_threads: i32,
}

/// The API's and subscribers' flags (shared by `serve` and `splitter`).
#[derive(clap::Args, Debug, Clone)]
pub struct ApiArgs {
    /// Address the HTTP/websocket API listens on (one SO_REUSEPORT listener per fanout core).
    #[arg(long, default_value = "127.0.0.1:2470", value_name = "ADDR", env = "RELAY_LISTEN")]
    pub listen: SocketAddr,

    /// Most subscribers (subscribeRepos websockets) served at once; past it an upgrade is answered
    /// 503 NotEnoughResources. 0 = no limit.
    #[arg(long, default_value_t = 10_000, value_name = "N", env = "RELAY_MAX_SUBSCRIBERS")]
    pub max_subscribers: usize,

    /// Most open API connections (HTTP requests and websockets) per client address (IPv6: per
    /// /64); past it a connection is answered 429 RateLimitExceeded and closed. 0 = no limit.
    #[arg(long, default_value_t = 100, value_name = "N", env = "RELAY_MAX_CONNECTIONS_PER_IP")]
    pub max_connections_per_ip: usize,

    /// Frames queued per live subscriber; when it is full the subscriber goes back to reading from
    /// the store (1024 and up: at least one sequencer batch).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1024..),
          env = "RELAY_SUBSCRIBER_QUEUE")]
    pub subscriber_queue: u64,

    /// A subscriber whose socket accepts nothing for this long is closed (ConsumerTooSlow).
    #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = parse_duration,
          env = "RELAY_SUBSCRIBER_STALL_TIMEOUT")]
    pub subscriber_stall_timeout: Duration,

    /// Shortest time between two publishes of a fanout shard: batches the sequencer commits within
    /// it reach each subscriber in one write instead of one write per batch. A batch after a quiet
    /// spell goes out at once; under steady load this adds at most this much latency. `auto`
    /// (default): 100 µs per subscriber of the shard, at most 20 ms (1 subscriber: 100 µs; 200
    /// and more: 20 ms). `0s` publishes every batch as it comes.
    #[arg(long, default_value = "auto", value_name = "auto|DURATION", value_parser = parse_coalesce,
          env = "RELAY_FANOUT_COALESCE")]
    pub fanout_coalesce: Coalesce,

    /// Memory all replaying subscribers' read chunks may hold at once (split across fanout cores);
    /// more replays wait their turn.
    #[arg(long, default_value = "256MiB", value_name = "BYTES", value_parser = parse_bytes,
          env = "RELAY_REPLAY_MEMORY")]
    pub replay_memory: u64,

    /// PEM file of extra CA certificates to trust for outbound TLS (besides the webpki roots), e.g.
    /// a test CA.
    #[arg(long, value_name = "FILE", env = "RELAY_TLS_CA")]
    pub tls_ca: Option<PathBuf>,

    /// Password of the admin API (`/admin/`, HTTP Basic auth as user `admin`). Without it the admin
    /// API is not served; an empty one is refused.
    #[arg(long, env = "RELAY_ADMIN_PASSWORD", hide_env_values = true, value_name = "PASSWORD")]
    pub admin_password: Option<String>,
}

/// Settings of hosts the relay adds (flags shared by `serve` and `pull-hosts`).
#[derive(clap::Args, Debug, Clone)]
pub struct HostPolicyArgs {
    /// Account limit of a host added by requestCrawl or pull-hosts; accounts past it are throttled
    /// (change per host with /admin/pds/changeLimits).
    #[arg(long, default_value_t = 100, value_name = "N", env = "RELAY_DEFAULT_ACCOUNT_LIMIT")]
    pub default_account_limit: u64,

    /// Account limit of a new trusted host (--host, or in a --trusted-domain).
    #[arg(long, default_value_t = 10_000_000, value_name = "N", env = "RELAY_TRUSTED_ACCOUNT_LIMIT")]
    pub trusted_account_limit: u64,

    /// Domain whose hosts are trusted when added (repeatable; comma-separated in the environment;
    /// `*.` prefix optional): the trusted account limit and higher event rate limits.
    #[arg(long = "trusted-domain", value_name = "DOMAIN", env = "RELAY_TRUSTED_DOMAINS", value_delimiter = ',')]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_take_units() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("72h"), Ok(Duration::from_secs(72 * 3600)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("600"), Ok(Duration::from_secs(600)), "a bare number is seconds");
        assert!(parse_duration("soon").is_err());
        assert_eq!(parse_duration_or_off("off"), Ok(DurationOrOff(None)));
        assert_eq!(parse_duration_or_off("90m"), Ok(DurationOrOff(Some(Duration::from_secs(5400)))));
        assert_eq!(parse_coalesce("auto"), Ok(Coalesce(None)));
        assert_eq!(parse_coalesce("0s"), Ok(Coalesce(Some(Duration::ZERO))));
        assert_eq!(parse_coalesce("5ms"), Ok(Coalesce(Some(Duration::from_millis(5)))));
        assert!(parse_coalesce("sometimes").is_err());
        assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("200GB"), Ok(200_000_000_000));
        assert_eq!(parse_bytes("1024"), Ok(1024));
        assert!(parse_bytes("lots").is_err());
    }

    #[test]
    fn every_serve_flag_has_an_environment_variable_and_old_spellings_work() {
        use clap::CommandFactory;
        let cli = Cli::command();
        let serve = cli.find_subcommand("serve").unwrap();
        for arg in serve.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
            assert!(env.as_deref().is_some_and(|e| e.starts_with("RELAY_")), "--{id} has no RELAY_ variable");
        }
        let parsed = Cli::try_parse_from([
            "relay",
            "serve",
            "--print-layout",
            "--startup-ramp-secs",
            "5",
            "--idle-timeout",
            "2m",
        ])
        .unwrap();
        let Command::Serve(args) = parsed.command else { panic!() };
        assert_eq!((args.startup_ramp, args.idle_timeout), (Duration::from_secs(5), Duration::from_secs(120)));
        assert_eq!(args.store.retention, DurationOrOff(Some(Duration::from_secs(72 * 3600))));
    }
}
