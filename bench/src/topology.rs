//! Topology mode (`--splitters N`): `relay splitter` processes in front of the relay this tool
//! started, the healthy subscribers spread round-robin over the relay and the splitters, and each
//! process's latency, added latency per hop and CPU per delivery.
//!
//! Endpoints are numbered: 0 is the relay, k (1..=N) splitter k. Splitter k follows the relay, or
//! with `--splitter-chain` splitter k-1. A splitter keeps the upstream's seqs, so every subscriber's
//! loss and order checks hold unchanged whichever endpoint it reads.

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bench::probe::{self, ProcSample};
use bench::subscriber::SubStats;
use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::cli::Common;
use crate::setup::{Spawned, free_port, lift_limits, pin_command, relay_binary, tempdir};

/// A `relay splitter` this tool started.
pub(crate) struct Splitter {
    pub(crate) _spawned: Spawned,
    /// `127.0.0.1:port`.
    pub(crate) addr: String,
    pub(crate) pid: u32,
    /// Its upstream's endpoint number (0: the relay).
    pub(crate) upstream: usize,
}

/// Starts `c.splitters` splitters in front of the relay at `relay_addr` and waits until each is
/// connected to its upstream (`upstreamConnected` in its `_health`), at most 60 s each.
pub(crate) async fn spawn_splitters(c: &Common, relay_addr: &str) -> anyhow::Result<Vec<Splitter>> {
    let bin = relay_binary(c);
    let mut out: Vec<Splitter> = Vec::new();
    for k in 1..=c.splitters {
        let upstream = if c.splitter_chain { k - 1 } else { 0 };
        let up_addr = match upstream {
            0 => relay_addr.to_owned(),
            u => out.get(u - 1).map(|s| s.addr.clone()).context("the splitter before")?,
        };
        let port = free_port()?;
        let data = std::env::temp_dir().join(format!("relay-bench-{}-splitter{k}-{port}", std::process::id()));
        let log = std::fs::File::create(data.with_extension("log"))?;
        let mut cmd = Command::new(&bin);
        cmd.args(["splitter", "--upstream", &format!("ws://{up_addr}"), "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(&data)
            .args(&c.splitter_args);
        lift_limits(&mut cmd, &c.splitter_args);
        pin_command(&mut cmd, c)?;
        let child =
            cmd.stdout(Stdio::null()).stderr(log).spawn().with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id();
        let spawned = Spawned { child, _data: tempdir::Dir(data) };
        let addr = format!("127.0.0.1:{port}");
        let t0 = Instant::now();
        loop {
            let health = probe::http_get(&addr, "/xrpc/_health", Duration::from_secs(2)).await;
            if health.as_ref().is_some_and(|(code, body)| *code == 200 && body.contains("\"upstreamConnected\":true")) {
                break;
            }
            if t0.elapsed() > Duration::from_secs(60) {
                bail!("splitter {k} at {addr} did not connect to ws://{up_addr} in 60 s: {health:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!("relay-bench: started splitter {k} pid {pid} on {addr} following ws://{up_addr}");
        out.push(Splitter { _spawned: spawned, addr, pid, upstream });
    }
    Ok(out)
}

/// Latency of the healthy subscribers by endpoint, filled as the run drains their histograms.
pub(crate) struct Tiers {
    /// Endpoints: the relay and the splitters, at least one.
    endpoints: usize,
    /// One histogram per endpoint.
    pub(crate) latency: Mutex<Vec<Histogram<u64>>>,
}

impl Tiers {
    /// `endpoints` endpoints (relay + splitters), at least one.
    pub(crate) fn new(endpoints: usize) -> Tiers {
        let endpoints = endpoints.max(1);
        Tiers { endpoints, latency: Mutex::new((0..endpoints).map(|_| bench::subscriber::histogram()).collect()) }
    }

    /// The endpoint healthy subscriber `i` reads: `i % endpoints`.
    pub(crate) fn endpoint_of(&self, i: usize) -> usize {
        i % self.endpoints
    }

    /// Adds subscriber `i`'s window histogram to its endpoint's.
    pub(crate) fn add(&self, i: usize, h: &Histogram<u64>) {
        let e = self.endpoint_of(i);
        if let Ok(mut l) = self.latency.lock()
            && let Some(t) = l.get_mut(e)
        {
            let _ = t.add(h);
        }
    }
}

fn avg_cpu(samples: &Mutex<Vec<ProcSample>>) -> f64 {
    let s = samples.lock().map(|s| s.clone()).unwrap_or_default();
    if s.is_empty() { 0.0 } else { s.iter().map(|p| p.cpu_pct).sum::<f64>() / s.len() as f64 }
}

/// The JSON line's `topology`: one object per endpoint with `name`, `upstream`, `subscribers`,
/// `deliveries_per_s` (to its subscribers; `+ events/s` per splitter that follows it, counted in
/// `cpu_us_per_delivery`), `latency_ms` `{p50, p99}` (from the event's send time at the host),
/// `added_ms` `{p50, p99}` (a splitter's latency minus its upstream's: the hop), `cpu_pct_avg`
/// (of one CPU) and `cpu_us_per_delivery`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn result(
    tiers: &Tiers,
    splitters: &[Splitter],
    healthy: &[Arc<SubStats>],
    relay_cpu_pct: f64,
    splitter_cpu: &[Arc<Mutex<Vec<ProcSample>>>],
    events_per_s: f64,
    secs: f64,
) -> Value {
    let latency = tiers.latency.lock().map(|l| l.clone()).unwrap_or_default();
    let ms = |h: Option<&Histogram<u64>>, q: f64| h.map_or(0.0, |h| h.value_at_quantile(q) as f64 / 1000.0);
    let n = splitters.len() + 1;
    (0..n)
        .map(|e| {
            let subs = || healthy.iter().enumerate().filter(move |(i, _)| tiers.endpoint_of(*i) == e);
            let received: u64 = subs().map(|(_, s)| s.received.load(std::sync::atomic::Ordering::Relaxed)).sum();
            let deliveries_per_s = received as f64 / secs.max(1e-9);
            let followers = splitters.iter().filter(|s| s.upstream == e).count();
            let cpu = match e {
                0 => relay_cpu_pct,
                k => splitter_cpu.get(k - 1).map_or(0.0, |s| avg_cpu(s)),
            };
            let per_s = deliveries_per_s + followers as f64 * events_per_s;
            let h = latency.get(e);
            let mut v = json!({
                "name": if e == 0 { "relay".to_owned() } else { format!("splitter {e}") },
                "subscribers": subs().count(),
                "deliveries_per_s": deliveries_per_s,
                "followed_by": followers,
                "latency_ms": { "p50": ms(h, 0.5), "p99": ms(h, 0.99) },
                "cpu_pct_avg": cpu,
                "cpu_us_per_delivery": cpu / 100.0 * 1e6 / per_s.max(1.0),
            });
            if let Some(s) = e.checked_sub(1).and_then(|k| splitters.get(k)) {
                let up = latency.get(s.upstream);
                v["pid"] = json!(s.pid);
                v["upstream"] =
                    json!(if s.upstream == 0 { "relay".to_owned() } else { format!("splitter {}", s.upstream) });
                v["added_ms"] = json!({
                    "p50": ms(h, 0.5) - ms(up, 0.5),
                    "p99": ms(h, 0.99) - ms(up, 0.99),
                });
            }
            v
        })
        .collect()
}

/// The report's lines for `topology`, one per process.
pub(crate) fn table(v: &Value) -> String {
    let Some(rows) = v.as_array() else { return String::new() };
    let mut out = String::from(
        "process     upstream    subs  deliveries/s  p50 ms  p99 ms  added p50/p99 ms  cpu %  cpu µs/delivery\n",
    );
    for r in rows {
        let added = match &r["added_ms"] {
            Value::Null => "-".to_owned(),
            a => format!("{:.1} / {:.1}", a["p50"].as_f64().unwrap_or(0.0), a["p99"].as_f64().unwrap_or(0.0)),
        };
        out.push_str(&format!(
            "{:<11} {:<11} {:>4}  {:>12.0}  {:>6.1}  {:>6.1}  {:>16}  {:>5.0}  {:>15.2}\n",
            r["name"].as_str().unwrap_or(""),
            r["upstream"].as_str().unwrap_or("-"),
            r["subscribers"].as_u64().unwrap_or(0),
            r["deliveries_per_s"].as_f64().unwrap_or(0.0),
            r["latency_ms"]["p50"].as_f64().unwrap_or(0.0),
            r["latency_ms"]["p99"].as_f64().unwrap_or(0.0),
            added,
            r["cpu_pct_avg"].as_f64().unwrap_or(0.0),
            r["cpu_us_per_delivery"].as_f64().unwrap_or(0.0),
        ));
    }
    out
}
