//! Starting a run: the fleet, the simulated PLC and hosts, and the relay (spawned here or already
//! running), up to the moment the relay is connected to every host.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bench::generator::{Fleet, GenConfig};
use bench::host::{self, HostStats};
use bench::{plc, probe};
use hdrhistogram::Histogram;

use crate::cli::Common;

/// A relay process this tool started.
pub(crate) struct Spawned {
    pub(crate) child: Child,
    pub(crate) _data: tempdir::Dir,
}

pub(crate) mod tempdir {
    /// A directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub(crate) fn relay_binary(c: &Common) -> PathBuf {
    if let Some(p) = &c.spawn {
        return p.clone();
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let release = root.join("target/release/relay");
    if release.exists() { release } else { root.join("target/debug/relay") }
}

pub(crate) fn spawn_relay(c: &Common, hosts: &[String], plc: &str) -> anyhow::Result<(Spawned, String, u32, String)> {
    let bin = relay_binary(c);
    let layout = Command::new(&bin)
        .args(["serve", "--print-layout"])
        .args(&c.relay_args)
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !layout.status.success() {
        bail!("relay --print-layout failed: {}", String::from_utf8_lossy(&layout.stderr));
    }
    let layout = String::from_utf8_lossy(&layout.stdout).lines().map(str::trim).collect::<Vec<_>>().join("; ");
    let port = free_port()?;
    let data = std::env::temp_dir().join(format!("relay-bench-{}-{port}", std::process::id()));
    let log = std::fs::File::create(data.with_extension("log"))?;
    if c.prefill_events > 0 {
        let p =
            bench::prefill::prefill(&data, c.prefill_events, c.prefill_rate, c.prefill_age, c.prefill_record_bytes)?;
        eprintln!("relay-bench: prefilled {} events ({} MB of frames) in {:.1} s", p.events, p.bytes >> 20, p.secs);
    }
    let mut cmd = Command::new(&bin);
    cmd.args(["serve", "--plc-url", plc, "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(&data)
        .args(&c.relay_args);
    lift_limits(&mut cmd, &c.relay_args);
    for h in hosts {
        cmd.args(["--host", h]);
    }
    pin_command(&mut cmd, c)?;
    let child = cmd.stdout(Stdio::null()).stderr(log).spawn().with_context(|| format!("starting {}", bin.display()))?;
    let pid = child.id();
    Ok((Spawned { child, _data: tempdir::Dir(data) }, format!("127.0.0.1:{port}"), pid, layout))
}

/// The whole subscriber fleet connects from 127.0.0.1: lifts the per-address and subscriber limits of
/// a relay or splitter this tool starts, unless its own arguments `args` set them.
pub(crate) fn lift_limits(cmd: &mut Command, args: &[String]) {
    for flag in ["--max-connections-per-ip", "--max-subscribers"] {
        if !args.iter().any(|a| a.starts_with(flag)) {
            cmd.arg(format!("{flag}=0"));
        }
    }
}

/// Pins a process this tool starts (relay or splitter) to `--relay-cpus`, else every CPU (not
/// relay-bench's own `--bench-cpus` mask, which a child would inherit).
pub(crate) fn pin_command(cmd: &mut Command, c: &Common) -> anyhow::Result<()> {
    let relay_cpus = match &c.relay_cpus {
        Some(list) => bench::parse_cpu_list(list).map_err(anyhow::Error::msg)?,
        // SAFETY: sysconf only reads a system constant.
        None => (0..unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) }.max(1) as usize).collect(),
    };
    // SAFETY: the closure runs in the child between fork and exec and only calls sched_setaffinity,
    // which is async-signal-safe.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || bench::pin_to(&relay_cpus));
    }
    Ok(())
}

/// Where a run's events come from.
pub(crate) enum Source {
    /// Made live by the generator thread.
    Live(Fleet),
    /// Made ahead ([`bench::corpus`]).
    Corpus(Arc<bench::corpus::Corpus>),
}

/// Everything a run has started.
pub(crate) struct Setup {
    pub(crate) host_stats: Arc<HostStats>,
    pub(crate) host_tx: Vec<tokio::sync::mpsc::UnboundedSender<host::Due>>,
    pub(crate) host_names: Vec<String>,
    /// Where events come from; taken by the generator.
    pub(crate) source: Option<Source>,
    /// The corpus's summary for the JSON line, when one is used.
    pub(crate) corpus: Option<serde_json::Value>,
    pub(crate) accounts: usize,
    pub(crate) relay_addr: Option<String>,
    pub(crate) relay_pid: Option<u32>,
    pub(crate) layout: String,
    pub(crate) _spawned: Option<Spawned>,
    /// `--splitters`: the splitters started in front of the relay (topology mode).
    pub(crate) splitters: Vec<crate::topology::Splitter>,
    pub(crate) connect_all_s: Option<f64>,
    /// `/xrpc/_health` latency (µs) while the relay connected to the hosts, and failed polls.
    pub(crate) connect_health: Option<(Histogram<u64>, u64)>,
    /// Seconds between storage samples (`--storage-every`).
    pub(crate) storage_every: u64,
    /// Milliseconds between health polls (`--health-every-ms`).
    pub(crate) health_every_ms: u64,
}

pub(crate) async fn setup(c: &Common, direct: bool) -> anyhow::Result<Setup> {
    let config = GenConfig {
        hosts: c.hosts,
        accounts_per_host: c.accounts_per_host,
        p256_share: c.p256_share,
        skew: c.skew,
        lead: Duration::from_millis(300),
        seed: c.seed,
    };
    eprintln!("relay-bench: making {} accounts on {} hosts", c.hosts * c.accounts_per_host, c.hosts);
    let (source, identities, corpus) = if c.corpus_events > 0 {
        if c.jetstream_subscribers > 0 {
            bail!(
                "--corpus-events with --jetstream-subscribers: Jetstream messages carry the relay's time, not the host's, so their latency is measured from the rev, which a corpus made earlier does not carry"
            );
        }
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let corpus = bench::corpus::load_or_build(&c.corpus_dir, &config, c.corpus_events, threads)?;
        let identities = corpus.identities.clone();
        let summary = corpus.summary();
        (Source::Corpus(Arc::new(corpus)), identities, Some(summary))
    } else {
        let fleet = Fleet::new(&config);
        let identities = fleet.identities();
        (Source::Live(fleet), identities, None)
    };
    let plc_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let plc_url = format!("http://127.0.0.1:{}", plc_listener.local_addr()?.port());
    let mut docs = std::collections::HashMap::new();
    for (did, h, key) in identities {
        let pds = format!("http://localhost:{}", c.host_base_port as usize + h);
        docs.insert(did.to_string(), plc::did_doc(did.as_str(), &key, &pds, c.legacy_did_docs).to_string());
    }
    tokio::spawn(plc::serve(plc_listener, Arc::new(docs), Duration::from_millis(c.plc_delay_ms)));
    let host_stats = Arc::new(HostStats::default());
    let mut host_tx = Vec::new();
    let mut host_names = Vec::new();
    for h in 0..c.hosts {
        let port = c.host_base_port as usize + h;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port as u16))
            .await
            .with_context(|| format!("binding host port {port}"))?;
        host_tx.push(host::start(listener, Arc::clone(&host_stats)));
        host_names.push(format!("localhost:{port}"));
    }
    let mut s = Setup {
        host_stats,
        host_tx,
        host_names,
        accounts: c.hosts * c.accounts_per_host,
        source: Some(source),
        corpus,
        relay_addr: None,
        relay_pid: c.relay_pid,
        layout: c.relay_layout.clone().unwrap_or_default(),
        _spawned: None,
        splitters: Vec::new(),
        connect_all_s: None,
        connect_health: None,
        storage_every: c.storage_every,
        health_every_ms: c.health_every_ms,
    };
    if direct && c.splitters > 0 {
        bail!("--splitters needs a relay: it is not a `direct` option");
    }
    if direct {
        s.layout = "direct (no relay)".into();
        return Ok(s);
    }
    match &c.relay {
        Some(url) => {
            s.relay_addr = Some(url.trim_start_matches("ws://").trim_end_matches('/').to_owned());
            eprintln!("relay-bench: point the relay at PLC {plc_url} and these hosts:");
            eprintln!("  {}", s.host_names.iter().map(|h| format!("--host {h}")).collect::<Vec<_>>().join(" "));
        }
        None => {
            let (spawned, addr, pid, layout) = spawn_relay(c, &s.host_names, &plc_url)?;
            eprintln!("relay-bench: started relay pid {pid} on {addr} ({layout})");
            s._spawned = Some(spawned);
            s.relay_addr = Some(addr);
            s.relay_pid = Some(pid);
            s.layout = layout;
        }
    }
    let addr = s.relay_addr.clone().unwrap_or_default();
    let started = Instant::now();
    let t0 = Instant::now();
    while probe::http_get(&addr, "/xrpc/_health", Duration::from_secs(2)).await.map(|r| r.0) != Some(200) {
        if t0.elapsed() > Duration::from_secs(60) {
            bail!("the relay at {addr} does not answer /xrpc/_health");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("relay-bench: waiting for the relay to connect to {} hosts", c.hosts);
    let health_stop = Arc::new(AtomicBool::new(false));
    let health = probe::health_histogram();
    let failures = Arc::new(AtomicU64::new(0));
    tokio::spawn(probe::sample_health(
        addr.clone(),
        Duration::from_millis(50),
        Arc::clone(&health_stop),
        Arc::clone(&health),
        Arc::clone(&failures),
    ));
    let t0 = started;
    while s.host_stats.connections.load(Ordering::Acquire) < c.hosts {
        if t0.elapsed() > Duration::from_secs(c.connect_timeout) {
            bail!("the relay connected to {} of {} hosts", s.host_stats.connections.load(Ordering::Acquire), c.hosts);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.connect_all_s = Some(t0.elapsed().as_secs_f64());
    health_stop.store(true, Ordering::Release);
    s.connect_health = health.lock().ok().map(|h| (h.clone(), failures.load(Ordering::Relaxed)));
    eprintln!("relay-bench: all hosts connected {:.2} s after the relay started", t0.elapsed().as_secs_f64());
    if c.splitters > 0 {
        s.splitters = crate::topology::spawn_splitters(c, &addr).await?;
    }
    Ok(s)
}
