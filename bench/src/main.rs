//! `relay-bench`: drives a relay that serves `com.atproto.sync.subscribeRepos` (ours, started here with
//! a chosen core layout, or any relay already running) with simulated PDS hosts, and measures fanout
//! latency, throughput, loss and the relay's resource use. See `bench/README.md`.

#![recursion_limit = "256"]

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bench::generator::{self, GenStats};
use bench::probe::{self, ProcSample};
use bench::subscriber::{self, Behavior, SubStats, histogram};
use bench::{jetstream_sub, now_us};

use crate::cli::{Cli, Common, Mode};
use crate::outcome::{jetstream_result, result, write_outputs};
use crate::setup::{Setup, Source, setup};

mod cli;
mod outcome;
mod setup;
mod topology;
use clap::Parser;
use hdrhistogram::Histogram;
use serde_json::{Value, json};

struct Fleetwide {
    /// Jetstream subscribers (`--jetstream-subscribers`).
    jet: Vec<Arc<jetstream_sub::JetStats>>,
    healthy: Vec<Arc<SubStats>>,
    slow: Vec<Arc<SubStats>>,
    stalled: Vec<Arc<SubStats>>,
    stop: Arc<AtomicBool>,
    /// Topology mode: the healthy subscribers' endpoints and latency by endpoint.
    tiers: Option<topology::Tiers>,
}

fn subscribe_urls(s: &Setup, c: &Common, cursor: Option<u64>) -> Vec<String> {
    let q = cursor.map(|c| format!("?cursor={c}")).unwrap_or_default();
    match &s.relay_addr {
        Some(addr) => vec![format!("ws://{addr}/xrpc/com.atproto.sync.subscribeRepos{q}")],
        None => (0..c.hosts)
            .map(|h| format!("ws://127.0.0.1:{}/xrpc/com.atproto.sync.subscribeRepos", c.host_base_port as usize + h))
            .collect(),
    }
}

/// The relay's Jetstream dictionary (`getZstdDictionary`), over plain HTTP/1.1.
async fn fetch_dictionary(addr: &str) -> anyhow::Result<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let req = format!(
        "GET /xrpc/network.bsky.jetstream.getZstdDictionary HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| anyhow::anyhow!("no HTTP head"))?;
    Ok(buf.split_off(end + 4))
}

async fn start_subscribers(s: &Setup, c: &Common) -> anyhow::Result<Fleetwide> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut jet = Vec::new();
    if let (Some(addr), true) = (&s.relay_addr, c.jetstream_subscribers > 0) {
        let dictionary = Arc::new(fetch_dictionary(addr).await?);
        let compressed = (c.jetstream_subscribers as f64 * c.jetstream_compressed_share).round() as usize;
        for i in 0..c.jetstream_subscribers {
            let dict = (i < compressed).then(|| Arc::clone(&dictionary));
            let class = i % jetstream_sub::CLASSES.len();
            let relay = format!("ws://{addr}");
            jet.push(jetstream_sub::spawn(&relay, class, dict, Arc::clone(&stop), Arc::clone(&s.host_stats)));
        }
    }
    let urls = subscribe_urls(s, c, None);
    let n_healthy = c.subscribers.saturating_sub(c.stalled + c.slow).max(1);
    // Topology mode: healthy subscriber i reads endpoint i % (splitters + 1) (0: the relay).
    let tiers = (!s.splitters.is_empty()).then(|| topology::Tiers::new(s.splitters.len() + 1));
    let urls_of = |i: usize| -> Vec<String> {
        let endpoint = tiers.as_ref().map_or(0, |t| t.endpoint_of(i));
        match endpoint.checked_sub(1).and_then(|k| s.splitters.get(k)) {
            Some(sp) => vec![format!("ws://{}/xrpc/com.atproto.sync.subscribeRepos", sp.addr)],
            None => urls.clone(),
        }
    };
    let healthy: Vec<Arc<SubStats>> = if c.tungstenite_subscribers {
        (0..n_healthy)
            .map(|i| {
                subscriber::spawn(urls_of(i), Behavior::Healthy, i < 2, Arc::clone(&stop), Arc::clone(&s.host_stats))
            })
            .collect()
    } else {
        let stats: Vec<Arc<SubStats>> = (0..n_healthy).map(|i| Arc::new(SubStats::new(i < 2))).collect();
        let conns = stats
            .iter()
            .enumerate()
            .flat_map(|(i, st)| urls_of(i).into_iter().map(|u| bench::fleet::Conn { url: u, stats: Arc::clone(st) }))
            .collect();
        bench::fleet::run(conns, c.fleet_threads, Arc::clone(&stop), Arc::clone(&s.host_stats));
        stats
    };
    let slow = (0..c.slow)
        .map(|_| {
            let slow = Behavior::Slow(Duration::from_millis(c.slow_delay_ms));
            subscriber::spawn(urls.clone(), slow, false, Arc::clone(&stop), Arc::clone(&s.host_stats))
        })
        .collect();
    let stalled = (0..c.stalled)
        .map(|_| {
            subscriber::spawn(urls.clone(), Behavior::Stalled, false, Arc::clone(&stop), Arc::clone(&s.host_stats))
        })
        .collect();
    Ok(Fleetwide { jet, healthy, slow, stalled, stop, tiers })
}

/// Moves every healthy subscriber's window histogram into `window` (and, in topology mode, into
/// its endpoint's).
fn drain_latency(subs: &Fleetwide, window: &mut Histogram<u64>) {
    for (i, s) in subs.healthy.iter().enumerate() {
        if let Ok(mut h) = s.latency.lock() {
            let _ = window.add(&*h);
            if let Some(t) = &subs.tiers {
                t.add(i, &h);
            }
            h.reset();
        }
    }
}

fn received(subs: &[Arc<SubStats>]) -> u64 {
    subs.iter().map(|s| s.received.load(Ordering::Relaxed)).sum()
}

struct Probes {
    stop: Arc<AtomicBool>,
    proc_samples: Arc<Mutex<Vec<ProcSample>>>,
    health: Arc<Mutex<Histogram<u64>>>,
    health_failures: Arc<AtomicU64>,
    /// `[secs, relay_events_disk_bytes, relay_events_oldest_seq, relay_last_seq,
    /// relay_data_dir_bytes, relay_wal_bytes, du]` every `--storage-every` seconds.
    storage: Arc<Mutex<Vec<[u64; 7]>>>,
    /// Topology mode: each splitter's CPU, RSS and threads, in splitter order.
    splitters: Vec<Arc<Mutex<Vec<ProcSample>>>>,
}

fn start_probes(s: &Setup) -> Probes {
    let p = Probes {
        stop: Arc::new(AtomicBool::new(false)),
        proc_samples: Arc::default(),
        health: probe::health_histogram(),
        health_failures: Arc::default(),
        storage: Arc::default(),
        splitters: s.splitters.iter().map(|_| Arc::default()).collect(),
    };
    for (sp, out) in s.splitters.iter().zip(&p.splitters) {
        tokio::spawn(probe::sample_process(sp.pid, Duration::from_secs(1), Arc::clone(&p.stop), Arc::clone(out)));
    }
    if let Some(pid) = s.relay_pid {
        tokio::spawn(probe::sample_process(
            pid,
            Duration::from_secs(1),
            Arc::clone(&p.stop),
            Arc::clone(&p.proc_samples),
        ));
    }
    if let Some(addr) = &s.relay_addr {
        tokio::spawn(probe::sample_storage(
            addr.clone(),
            s._spawned.as_ref().map(|sp| sp._data.0.clone()),
            Duration::from_secs(s.storage_every.max(1)),
            Arc::clone(&p.stop),
            Arc::clone(&p.storage),
        ));
        tokio::spawn(probe::sample_health(
            addr.clone(),
            Duration::from_millis(s.health_every_ms),
            Arc::clone(&p.stop),
            Arc::clone(&p.health),
            Arc::clone(&p.health_failures),
        ));
    }
    p
}

async fn accepted_now(s: &Setup, subs: &Fleetwide) -> u64 {
    match &s.relay_addr {
        Some(addr) => match probe::relay_metric(addr, "relay_events_relayed_total").await {
            Some(v) => v,
            None => subs.healthy.first().map_or(0, |x| x.received.load(Ordering::Relaxed)),
        },
        None => s.host_stats.sent.load(Ordering::Relaxed) as u64,
    }
}

struct Gen {
    /// When the first event is due.
    start: Instant,
    rate: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    stats: Arc<GenStats>,
    keys: Arc<Mutex<HashSet<u64>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn start_generator(s: &mut Setup, rate: u64) -> Gen {
    let g = Gen {
        start: Instant::now() + Duration::from_millis(500),
        rate: Arc::new(AtomicU64::new(rate)),
        stop: Arc::new(AtomicBool::new(false)),
        stats: Arc::default(),
        keys: Arc::default(),
        thread: None,
    };
    let source = s.source.take().unwrap_or_else(|| unreachable!("one generator per run"));
    let pacing = generator::Pacing {
        hosts: s.host_tx.clone(),
        rate: Arc::clone(&g.rate),
        start_us: now_us() + 500_000,
        lead: Duration::from_millis(300),
        stop: Arc::clone(&g.stop),
        stats: Arc::clone(&g.stats),
        keys: Some(Arc::clone(&g.keys)),
    };
    let thread = std::thread::Builder::new()
        .name("generator".into())
        .spawn(move || match source {
            Source::Live(fleet) => generator::run(fleet, pacing),
            Source::Corpus(corpus) => generator::run_corpus(corpus, pacing),
        })
        .ok();
    Gen { thread, ..g }
}

/// Per-second progress until `secs` pass; returns the latency histogram of the period.
async fn progress(s: &Setup, subs: &Fleetwide, secs: u64, label: &str, probes: &Probes) -> Histogram<u64> {
    let mut total = histogram();
    let (mut prev_sent, mut prev_acc, mut prev_recv) =
        (s.host_stats.sent.load(Ordering::Relaxed) as u64, accepted_now(s, subs).await, received(&subs.healthy));
    for t in 1..=secs {
        tokio::time::sleep(Duration::from_secs(1)).await;
        s.host_stats.send_times.prune(now_us().saturating_sub(120_000_000));
        let mut window = histogram();
        drain_latency(subs, &mut window);
        let _ = total.add(&window);
        let sent = s.host_stats.sent.load(Ordering::Relaxed) as u64;
        let acc = accepted_now(s, subs).await;
        let recv = received(&subs.healthy);
        let proc_line = probes
            .proc_samples
            .lock()
            .ok()
            .and_then(|p| p.last().copied())
            .map(|p| format!(" cpu={:.0}% rss={}MB thr={}", p.cpu_pct, p.rss_bytes >> 20, p.threads))
            .unwrap_or_default();
        eprintln!(
            "{label} t={t:>3}s offered={:>6}/s accepted={:>6}/s delivered={:>6}/s/sub p50={:.1}ms p99={:.1}ms{proc_line}",
            sent - prev_sent,
            acc.saturating_sub(prev_acc),
            (recv - prev_recv) / subs.healthy.len().max(1) as u64,
            window.value_at_quantile(0.5) as f64 / 1000.0,
            window.value_at_quantile(0.99) as f64 / 1000.0,
        );
        (prev_sent, prev_acc, prev_recv) = (sent, acc, recv);
    }
    total
}

/// Waits until healthy subscribers stop receiving (drained) or `limit` passes.
async fn drain(subs: &Fleetwide, limit: Duration) {
    let t0 = Instant::now();
    let mut last = received(&subs.healthy);
    while t0.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = received(&subs.healthy);
        if now == last {
            return;
        }
        last = now;
    }
}

async fn replay_catch_up(s: &Setup, c: &Common, subs: &Fleetwide) -> Option<f64> {
    if c.cursor_subscribers == 0 || s.relay_addr.is_none() {
        return None;
    }
    let head = subs.healthy.iter().map(|x| x.last_seq.load(Ordering::Relaxed)).max().unwrap_or(0);
    let urls = subscribe_urls(s, c, Some(0));
    let t0 = Instant::now();
    let replayers: Vec<Arc<SubStats>> = if c.tungstenite_subscribers {
        (0..c.cursor_subscribers)
            .map(|_| {
                let stop = Arc::clone(&subs.stop);
                subscriber::spawn(urls.clone(), Behavior::Healthy, false, stop, Arc::clone(&s.host_stats))
            })
            .collect()
    } else {
        // Lean readers on their own fleet thread(s), so catch-up is not paced by the live fleet.
        let stats: Vec<Arc<SubStats>> = (0..c.cursor_subscribers).map(|_| Arc::new(SubStats::new(false))).collect();
        let conns = stats
            .iter()
            .flat_map(|st| urls.iter().map(|u| bench::fleet::Conn { url: u.clone(), stats: Arc::clone(st) }))
            .collect();
        bench::fleet::run(conns, c.cursor_subscribers, Arc::clone(&subs.stop), Arc::clone(&s.host_stats));
        stats
    };
    while replayers.iter().any(|r| r.last_seq.load(Ordering::Relaxed) < head && !r.ended.load(Ordering::Relaxed)) {
        if t0.elapsed() > Duration::from_secs(120) {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Some(head as f64 / t0.elapsed().as_secs_f64())
}

async fn run_fixed(c: Common, rate: u64, duration: u64, direct: bool) -> anyhow::Result<()> {
    let mode = if direct { "direct" } else { "run" };
    let mut s = setup(&c, direct).await?;
    let subs = start_subscribers(&s, &c).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let probes = start_probes(&s);
    let sent0 = s.host_stats.sent.load(Ordering::Relaxed) as u64;
    let acc0 = accepted_now(&s, &subs).await;
    let fleet_cpu0 = probe::own_threads_cpu_secs("fleet-");
    let mut generator = start_generator(&mut s, rate);
    tokio::time::sleep_until(generator.start.into()).await;
    let t0 = generator.start;
    let half = duration / 2;
    let mut latency = progress(&s, &subs, half, mode, &probes).await;
    let replay = replay_catch_up(&s, &c, &subs).await;
    let rest = duration.saturating_sub(t0.elapsed().as_secs());
    let more = progress(&s, &subs, rest, mode, &probes).await;
    let _ = latency.add(&more);
    // Events are made 300 ms ahead of their due time: stop making them so the last is due at the end.
    tokio::time::sleep_until((t0 + Duration::from_secs(duration) - Duration::from_millis(300)).into()).await;
    generator.stop.store(true, Ordering::Release);
    if let Some(t) = generator.thread.take() {
        let _ = t.join();
    }
    tokio::time::sleep_until((t0 + Duration::from_secs(duration)).into()).await;
    let secs = t0.elapsed().as_secs_f64();
    drain(&subs, Duration::from_secs(30)).await;
    let delivery_secs = t0.elapsed().as_secs_f64();
    // Before the fleet stops: its threads' CPU time leaves /proc with them.
    let fleet_cpu = probe::own_threads_cpu_secs("fleet-") - fleet_cpu0;
    let mut tail = histogram();
    drain_latency(&subs, &mut tail);
    let _ = latency.add(&tail);
    let offered = s.host_stats.sent.load(Ordering::Relaxed) as u64 - sent0;
    let accepted = accepted_now(&s, &subs).await - acc0;
    subs.stop.store(true, Ordering::Release);
    probes.stop.store(true, Ordering::Release);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let keys = generator.keys.lock().map(|k| k.clone()).unwrap_or_default();
    let mut v =
        result(mode, &c, &s, &subs, &generator.stats, &keys, &latency, &probes, offered, accepted, secs, rate, replay);
    // Deliveries go on after generation while subscribers catch up: rate over the whole window.
    let delivered = received(&subs.healthy) as f64;
    v["delivery_window_s"] = json!(delivery_secs);
    v["delivered_per_sub_per_s"] = json!(delivered / subs.healthy.len().max(1) as f64 / delivery_secs);
    v["deliveries_per_s"] = json!(delivered / delivery_secs);
    if !c.tungstenite_subscribers {
        v["fleet_cpu_us_per_frame"] = json!(fleet_cpu * 1e6 / delivered.max(1.0));
        v["fleet_cpu_pct_avg"] = json!(fleet_cpu * 100.0 / delivery_secs);
        // The fleet's threads busy most of the time: the subscribers, not the relay, set the pace.
        v["subscriber_bound"] = json!(fleet_cpu / delivery_secs > 0.9 * c.fleet_threads as f64);
    }
    if let Some(addr) = &s.relay_addr {
        for (key, name) in [
            ("relay_ingest_to_durable_p99_s", "relay_ingest_to_durable_seconds"),
            ("relay_commit_p99_s", "relay_commit_seconds"),
            ("relay_fanout_delay_p99_s", "relay_fanout_delay_seconds"),
        ] {
            v[key] = json!(probe::relay_histogram_quantile(addr, name, 0.99).await);
        }
    }
    let jet = jetstream_result(&subs, delivery_secs);
    if let Some(cpu) = v["relay_cpu_pct_avg"].as_f64() {
        // Relay CPU per delivery (firehose frames and Jetstream messages alike), µs.
        let per_s = delivered / delivery_secs + jet["messages_per_s"].as_f64().unwrap_or(0.0);
        v["relay_cpu_us_per_delivery"] = json!(cpu / 100.0 * 1e6 / per_s.max(1.0));
    }
    v["jetstream"] = jet;
    if let Some(tiers) = &subs.tiers {
        let relay_cpu = v["relay_cpu_pct_avg"].as_f64().unwrap_or(0.0);
        let events_per_s = accepted as f64 / secs.max(1e-9);
        v["topology"] = topology::result(
            tiers,
            &s.splitters,
            &subs.healthy,
            relay_cpu,
            &probes.splitters,
            events_per_s,
            delivery_secs,
        );
        v["splitter_chain"] = json!(c.splitter_chain);
    }
    write_outputs(&c, &v, &latency)
}

#[allow(clippy::too_many_arguments)]
async fn run_ramp(
    c: Common,
    start: u64,
    factor: f64,
    step_secs: u64,
    max_p99_ms: f64,
    max_steps: u32,
) -> anyhow::Result<()> {
    if c.splitters > 0 {
        anyhow::bail!("--splitters is a `run` option (the topology is reported for one fixed rate)");
    }
    let mut s = setup(&c, false).await?;
    let subs = start_subscribers(&s, &c).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let probes = start_probes(&s);
    let mut rate = start;
    let mut generator = start_generator(&mut s, rate);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut best: Option<(u64, Histogram<u64>, u64, u64, f64)> = None;
    let mut steps = Vec::new();
    for step in 0..max_steps {
        generator.rate.store(rate, Ordering::Release);
        let sent0 = s.host_stats.sent.load(Ordering::Relaxed) as u64;
        let acc0 = accepted_now(&s, &subs).await;
        let lost0: u64 = subs.healthy.iter().map(|x| x.gaps.load(Ordering::Relaxed)).sum();
        let late0 = generator.stats.late.load(Ordering::Relaxed);
        let recv0 = received(&subs.healthy);
        let samples0 = probes.proc_samples.lock().map(|p| p.len()).unwrap_or(0);
        let t0 = Instant::now();
        let h = progress(&s, &subs, step_secs, &format!("ramp[{step}] {rate}/s"), &probes).await;
        let secs = t0.elapsed().as_secs_f64();
        let offered = s.host_stats.sent.load(Ordering::Relaxed) as u64 - sent0;
        let accepted = accepted_now(&s, &subs).await - acc0;
        let lost: u64 = subs.healthy.iter().map(|x| x.gaps.load(Ordering::Relaxed)).sum::<u64>() - lost0;
        let late = generator.stats.late.load(Ordering::Relaxed) - late0;
        let p99_ms = h.value_at_quantile(0.99) as f64 / 1000.0;
        let delivered: u64 = received(&subs.healthy) - recv0;
        let cut_off = subs.healthy.iter().any(|x| x.ended.load(Ordering::Relaxed));
        let kept_up = accepted as f64 >= 0.98 * offered as f64
            && delivered as f64 >= 0.98 * accepted as f64 * subs.healthy.len() as f64
            && !cut_off;
        let generator_bound = late * 100 > offered.max(1);
        let exhausted = generator.stats.exhausted.load(Ordering::Relaxed);
        let pass = lost == 0 && p99_ms <= max_p99_ms && kept_up && !generator_bound && !exhausted;
        // The relay's CPU over the step (samples every second), and per accepted event.
        let cpu_pct = probes.proc_samples.lock().ok().and_then(|p| {
            let step: Vec<f64> = p.get(samples0..)?.iter().map(|x| x.cpu_pct).collect();
            (!step.is_empty()).then(|| step.iter().sum::<f64>() / step.len() as f64)
        });
        let accepted_per_s = accepted as f64 / secs;
        let cpu_us_per_event = cpu_pct.map(|c| c / 100.0 * 1e6 / accepted_per_s.max(1.0));
        steps.push(json!({"rate": rate, "offered_per_s": offered as f64 / secs, "accepted_per_s": accepted_per_s, "p99_ms": p99_ms, "p50_ms": h.value_at_quantile(0.5) as f64 / 1000.0, "lost": lost, "kept_up": kept_up, "generator_bound": generator_bound, "corpus_exhausted": exhausted, "relay_cpu_pct_avg": cpu_pct, "relay_cpu_us_per_event": cpu_us_per_event, "pass": pass}));
        eprintln!(
            "ramp step {step}: {rate}/s p99={p99_ms:.1}ms lost={lost} kept_up={kept_up} generator_bound={generator_bound} corpus_exhausted={exhausted} cpu={:.0}% -> {}",
            cpu_pct.unwrap_or(0.0),
            if pass { "pass" } else { "stop" }
        );
        if !pass {
            break;
        }
        best = Some((rate, h, offered, accepted, secs));
        rate = ((rate as f64) * factor).ceil() as u64;
    }
    generator.stop.store(true, Ordering::Release);
    if let Some(t) = generator.thread.take() {
        let _ = t.join();
    }
    subs.stop.store(true, Ordering::Release);
    probes.stop.store(true, Ordering::Release);
    let best_step = steps.iter().rev().find(|x| x["pass"] == json!(true)).cloned();
    let (rate, latency, offered, accepted, secs) = best.unwrap_or_else(|| (0, histogram(), 0, 0, 1.0));
    let keys = HashSet::new();
    let mut v =
        result("ramp", &c, &s, &subs, &generator.stats, &keys, &latency, &probes, offered, accepted, secs, rate, None);
    v["sustained_rate"] = json!(rate);
    v["relay_cpu_us_per_event"] = best_step.map_or(Value::Null, |b| b["relay_cpu_us_per_event"].clone());
    v["max_p99_ms"] = json!(max_p99_ms);
    v["steps"] = json!(steps);
    v["lost_by_repo_rev"] = Value::Null;
    write_outputs(&c, &v, &latency)
}

/// `relay-bench jetstream-dictionary`: trains, writes and measures the dictionary.
fn jetstream_dictionary(out: &std::path::Path, samples: usize, size: usize) -> anyhow::Result<()> {
    use bench::jetstream_traffic;
    let now = now_us();
    let messages = |seed, n| -> Vec<Vec<u8>> {
        jetstream_traffic::events(seed, n, now)
            .iter()
            .flat_map(|e| [e.v1_json(), Some(e.v2_json())])
            .flatten()
            .collect()
    };
    let train = messages(1, samples);
    let dictionary = zstd::dict::from_samples(&train, size)?;
    std::fs::write(out, &dictionary)?;
    let test = messages(2, 5_000);
    let mut with = zstd::bulk::Compressor::with_dictionary(3, &dictionary)?;
    let (mut raw, mut plain, mut dict) = (0usize, 0usize, 0usize);
    for m in &test {
        raw += m.len();
        plain += zstd::bulk::compress(m, 3)?.len();
        dict += with.compress(m)?.len();
    }
    let n = test.len().max(1);
    let id = dictionary.get(4..8).and_then(|b| <[u8; 4]>::try_from(b).ok()).map_or(0, u32::from_le_bytes);
    let v = json!({
        "dictionary": out.display().to_string(), "dictionary_id": id, "dictionary_bytes": dictionary.len(),
        "trained_on_messages": train.len(), "measured_on_messages": test.len(),
        "avg_bytes_raw": raw / n, "avg_bytes_zstd": plain / n, "avg_bytes_zstd_dictionary": dict / n,
    });
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let common = match &cli.mode {
        Mode::Run { common, .. } | Mode::Direct { common, .. } | Mode::Ramp { common, .. } => Some(common),
        Mode::JetstreamDictionary { .. } => None,
    };
    if let Some(list) = common.and_then(|c| c.bench_cpus.as_deref()) {
        bench::pin_to(&bench::parse_cpu_list(list).map_err(anyhow::Error::msg)?)?;
    }
    if let Mode::JetstreamDictionary { out, samples, size } = &cli.mode {
        return jetstream_dictionary(out, *samples, *size);
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        match cli.mode {
            Mode::Run { common, fixed } => run_fixed(common, fixed.rate, fixed.duration, false).await,
            Mode::Direct { common, fixed } => run_fixed(common, fixed.rate, fixed.duration, true).await,
            Mode::Ramp { common, start_rate, factor, step_secs, max_p99_ms, max_steps } => {
                run_ramp(common, start_rate, factor, step_secs, max_p99_ms, max_steps).await
            }
            Mode::JetstreamDictionary { .. } => Ok(()),
        }
    })
}
