//! The `relay-bench` command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Load generator and fanout-latency benchmark for subscribeRepos relays.
#[derive(Parser, Debug)]
#[command(name = "relay-bench", version, about)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) mode: Mode,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Mode {
    /// A fixed event rate for a duration.
    Run {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        fixed: Fixed,
    },
    /// Raise the rate step by step until the relay loses events, falls behind, or p99 exceeds the
    /// bound; reports the highest rate it sustained.
    Ramp {
        #[command(flatten)]
        common: Common,
        /// First rate, events/s.
        #[arg(long, default_value_t = 250)]
        start_rate: u64,
        /// Rate multiplier per step.
        #[arg(long, default_value_t = 1.5)]
        factor: f64,
        /// Seconds per step.
        #[arg(long, default_value_t = 8)]
        step_secs: u64,
        /// p99 latency bound, milliseconds.
        #[arg(long, default_value_t = 100.0)]
        max_p99_ms: f64,
        /// Most steps.
        #[arg(long, default_value_t = 12)]
        max_steps: u32,
    },
    /// Baseline without a relay: subscribers read the simulated hosts directly (every subscriber
    /// connects to every host), showing what the generator and loopback cost.
    Direct {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        fixed: Fixed,
    },
    /// Trains the relay's Jetstream zstd dictionary on generated Jetstream messages (v1 and v2),
    /// writes it, and reports average message sizes on other generated messages: raw, zstd without a
    /// dictionary, zstd with it.
    JetstreamDictionary {
        /// Where to write the dictionary (the relay embeds `shards/src/fanout/jet/zstd_dictionary.bin`).
        #[arg(long)]
        out: std::path::PathBuf,
        /// Generated events to train on (each gives a v1 and a v2 message).
        #[arg(long, default_value_t = 20_000)]
        samples: usize,
        /// Dictionary size in bytes.
        #[arg(long, default_value_t = 65_536)]
        size: usize,
    },
}

/// Rate and duration of a fixed-rate run.
#[derive(Args, Debug, Clone, Copy)]
pub(crate) struct Fixed {
    /// Aggregate event rate over all hosts, events/s; 0 sends nothing (an idle relay with its hosts
    /// connected: read `relay_cpu_pct_avg`).
    #[arg(long, default_value_t = 500)]
    pub(crate) rate: u64,
    /// How long to generate, seconds.
    #[arg(long, default_value_t = 10)]
    pub(crate) duration: u64,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct Common {
    /// Simulated PDS hosts (each on its own port from --host-base-port).
    #[arg(long, default_value_t = 4)]
    pub(crate) hosts: usize,
    /// Accounts per host.
    #[arg(long, default_value_t = 20)]
    pub(crate) accounts_per_host: usize,
    /// Subscribers (including --stalled and --slow ones).
    #[arg(long, default_value_t = 1)]
    pub(crate) subscribers: usize,
    /// Threads of the lean subscriber fleet that reads the healthy subscribers' connections
    /// (bench/src/fleet.rs: mio, minimal frame parsing).
    #[arg(long, default_value_t = 1)]
    pub(crate) fleet_threads: usize,
    /// Read the healthy subscribers with tokio-tungstenite clients instead of the lean fleet (the
    /// fleet before it existed; for comparison).
    #[arg(long)]
    pub(crate) tungstenite_subscribers: bool,
    /// Subscribers that never read.
    #[arg(long, default_value_t = 0)]
    pub(crate) stalled: usize,
    /// Subscribers that sleep --slow-delay-ms after each frame.
    #[arg(long, default_value_t = 0)]
    pub(crate) slow: usize,
    /// Delay per frame of slow subscribers, ms.
    #[arg(long, default_value_t = 20)]
    pub(crate) slow_delay_ms: u64,
    /// Jetstream v1 subscribers of our relay (`/subscribe`), spread over four filter classes (all,
    /// posts, `app.bsky.feed.*`, follows and reposts).
    #[arg(long, default_value_t = 0)]
    pub(crate) jetstream_subscribers: usize,
    /// Share of the Jetstream subscribers that ask for zstd compression (0.0-1.0).
    #[arg(long, default_value_t = 0.5)]
    pub(crate) jetstream_compressed_share: f64,
    /// Subscribers that connect with cursor=0 halfway through, to measure replay catch-up.
    #[arg(long, default_value_t = 0)]
    pub(crate) cursor_subscribers: usize,
    /// Share of accounts with p256 keys (0.0-1.0).
    #[arg(long, default_value_t = 0.1)]
    pub(crate) p256_share: f64,
    /// Zipf exponent of per-host traffic (0 = uniform).
    #[arg(long, default_value_t = 1.0)]
    pub(crate) skew: f64,
    /// Serve DID documents in the legacy EcdsaSecp256k1VerificationKey2019 form.
    #[arg(long)]
    pub(crate) legacy_did_docs: bool,
    /// RNG seed.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// First host port.
    #[arg(long, default_value_t = 21000)]
    pub(crate) host_base_port: u16,
    /// A relay already running, e.g. ws://127.0.0.1:2470 (configure it with the printed --host list).
    #[arg(long, conflicts_with = "spawn")]
    pub(crate) relay: Option<String>,
    /// PID of that relay, to sample its CPU, RSS and threads.
    #[arg(long)]
    pub(crate) relay_pid: Option<u32>,
    /// Core layout of that relay, for the record.
    #[arg(long)]
    pub(crate) relay_layout: Option<String>,
    /// Start our relay from this binary (default: target/release/relay, else target/debug/relay).
    #[arg(long)]
    pub(crate) spawn: Option<PathBuf>,
    /// Extra argument for `relay serve` (repeatable), e.g. --relay-arg=--fanout-cores=1.
    #[arg(long = "relay-arg", allow_hyphen_values = true)]
    pub(crate) relay_args: Vec<String>,
    /// Topology mode: also start this many `relay splitter` processes (each its own data directory),
    /// following the spawned relay (or, with `--splitter-chain`, each the one before it), and spread the
    /// healthy subscribers round-robin over the relay and the splitters. The JSON line's `topology`
    /// gives each process's subscribers, latency p50/p99, the latency each splitter adds to its upstream
    /// (per hop), and its CPU per delivery. Needs a relay started here (not `--relay`).
    #[arg(long, default_value_t = 0, conflicts_with = "relay")]
    pub(crate) splitters: usize,
    /// With `--splitters`: splitter k follows splitter k-1 (a chain), not the relay.
    #[arg(long, requires = "splitters")]
    pub(crate) splitter_chain: bool,
    /// Extra argument for every `relay splitter` (repeatable), e.g. --splitter-arg=--fanout-coalesce=5ms.
    #[arg(long = "splitter-arg", allow_hyphen_values = true)]
    pub(crate) splitter_args: Vec<String>,
    /// Seconds to wait for the relay to connect to every host.
    #[arg(long, default_value_t = 180)]
    pub(crate) connect_timeout: u64,
    /// Append the JSON result line to this file.
    #[arg(long)]
    pub(crate) json_out: Option<PathBuf>,
    /// Write the latency histogram (.hgrm text) here.
    #[arg(long)]
    pub(crate) hgrm: Option<PathBuf>,
    /// Write an SVG latency-percentile chart here.
    #[arg(long)]
    pub(crate) svg: Option<PathBuf>,
    /// Seconds between storage samples (`storage_series` in the JSON line: the relay's
    /// `relay_events_disk_bytes`, oldest and last seq, `relay_data_dir_bytes`, `relay_wal_bytes`,
    /// and the data directory's `du` measured by relay-bench when it started the relay).
    #[arg(long, default_value_t = 10)]
    pub(crate) storage_every: u64,
    /// Milliseconds between `/xrpc/_health` polls (`health_latency_us` in the JSON line). The
    /// default polls 10 times a second to catch stalls; an idle-CPU measurement wants what a
    /// monitor does (e.g. 10000), since every poll is work for the relay.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) health_every_ms: u64,
    /// Before starting our relay, write this many events into its data directory (relay seqs from 1,
    /// real `#commit` frames): a store to replay, or to delete (see bench/README.md).
    #[arg(long, default_value_t = 0)]
    pub(crate) prefill_events: u64,
    /// The prefilled events' `time_index` rate, events per second.
    #[arg(long, default_value_t = 2000)]
    pub(crate) prefill_rate: u64,
    /// Seconds before now of the last prefilled second (older than `--retention`: all deleted at start).
    #[arg(long, default_value_t = 0)]
    pub(crate) prefill_age: u64,
    /// Record size of the prefilled commits, bytes.
    #[arg(long, default_value_t = 600)]
    pub(crate) prefill_record_bytes: usize,
    /// Make this many events ahead, on every CPU, and send those instead of making events live:
    /// the generator then only stamps each event's `time` with its due time. Cached under
    /// `--corpus-dir`, in a file named by every parameter that shapes the events (seed, hosts,
    /// accounts, p256 share, skew, count); 0 = make events live. A run that needs more events than
    /// the corpus holds stops offering when it runs out (`corpus_exhausted` in the JSON line).
    #[arg(long, default_value_t = 0)]
    pub(crate) corpus_events: usize,
    /// Where corpora are cached.
    #[arg(long, default_value = "target/relay-bench-corpus")]
    pub(crate) corpus_dir: PathBuf,
    /// CPUs relay-bench itself (generator, hosts, subscribers) runs on, e.g. `0-3` or `0,2`; default:
    /// all. With `--relay-cpus`, gives bench and relay separate CPUs on machines with enough of them.
    #[arg(long)]
    pub(crate) bench_cpus: Option<String>,
    /// CPUs the spawned relay may use (its core layout is chosen among them); default: all.
    #[arg(long)]
    pub(crate) relay_cpus: Option<String>,
    /// How long the bench's PLC directory takes to answer each request, milliseconds: a directory
    /// across the internet (plc.directory answers in tens to hundreds of ms) rather than on
    /// loopback. Every account's first event waits for one lookup, so this shapes a cold start.
    #[arg(long, default_value_t = 0)]
    pub(crate) plc_delay_ms: u64,
    /// A label for the run (scenario name) in the JSON line.
    #[arg(long, default_value = "")]
    pub(crate) label: String,
}
