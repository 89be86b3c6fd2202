//! Samples the relay while the benchmark runs: process CPU, RSS and threads from `/proc/{pid}`, the
//! latency of its `/xrpc/_health`, and (for relays that export it) `relay_events_relayed_total`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::subscriber::histogram;

/// One `/proc` sample.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcSample {
    /// CPU time used since the previous sample, as a percentage of one core.
    pub cpu_pct: f64,
    /// Resident set, in bytes.
    pub rss_bytes: u64,
    /// Threads.
    pub threads: u64,
}

/// CPU ticks (user + system) and (rss bytes, threads) of `pid`.
fn read_proc(pid: u32) -> Option<(u64, u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let value = |name: &str| {
        status.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
    };
    Some((ticks, value("VmRSS:")? * 1024, value("Threads:")?))
}

/// Samples `pid` every `every` until `stop`; returns every sample.
pub async fn sample_process(pid: u32, every: Duration, stop: Arc<AtomicBool>, out: Arc<Mutex<Vec<ProcSample>>>) {
    let hz = clock_ticks();
    let mut prev = read_proc(pid);
    let mut prev_at = Instant::now();
    while !stop.load(Ordering::Acquire) {
        tokio::time::sleep(every).await;
        let Some(now) = read_proc(pid) else { return };
        let elapsed = prev_at.elapsed().as_secs_f64();
        prev_at = Instant::now();
        let cpu_pct = prev.map_or(0.0, |p| (now.0.saturating_sub(p.0)) as f64 / hz / elapsed * 100.0);
        prev = Some(now);
        if let Ok(mut o) = out.lock() {
            o.push(ProcSample { cpu_pct, rss_bytes: now.1, threads: now.2 });
        }
    }
}

/// `GET {path}` on `addr` (host:port) with a deadline; the status and body.
pub async fn http_get(addr: &str, path: &str, deadline: Duration) -> Option<(u16, String)> {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        Some((status, text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default()))
    };
    tokio::time::timeout(deadline, fut).await.ok().flatten()
}

/// Polls `/xrpc/_health` every `every`, recording latency (µs) of answers and counting failures
/// (no 200 within 5 s).
pub async fn sample_health(
    addr: String,
    every: Duration,
    stop: Arc<AtomicBool>,
    hist: Arc<Mutex<Histogram<u64>>>,
    failures: Arc<std::sync::atomic::AtomicU64>,
) {
    while !stop.load(Ordering::Acquire) {
        let t = Instant::now();
        match http_get(&addr, "/xrpc/_health", Duration::from_secs(5)).await {
            Some((200, _)) => {
                if let Ok(mut h) = hist.lock() {
                    let _ = h.record((t.elapsed().as_micros() as u64).max(1));
                }
            }
            _ => {
                failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        tokio::time::sleep(every).await;
    }
}

/// The sum of the samples of `name` in the relay's `/metrics`, if it exports it.
pub async fn relay_metric(addr: &str, name: &str) -> Option<u64> {
    let (status, body) = http_get(addr, "/metrics", Duration::from_secs(5)).await?;
    if status != 200 {
        return None;
    }
    let values: Vec<f64> = body
        .lines()
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum::<f64>() as u64)
}

/// The `q` quantile (0-1) of the relay's Prometheus histogram `name` (summed over its labels), in
/// the histogram's unit, from its cumulative buckets: the upper bound of the first bucket holding
/// the quantile. `None` when the relay does not export it or it is empty.
pub async fn relay_histogram_quantile(addr: &str, name: &str, q: f64) -> Option<f64> {
    let (status, body) = http_get(addr, "/metrics", Duration::from_secs(5)).await?;
    if status != 200 {
        return None;
    }
    let bucket = format!("{name}_bucket{{");
    let mut buckets: std::collections::BTreeMap<u64, (f64, f64)> = std::collections::BTreeMap::new();
    for line in body.lines().filter(|l| l.starts_with(&bucket)) {
        let le = line.split("le=\"").nth(1)?.split('"').next()?;
        let bound: f64 = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
        let count: f64 = line.rsplit(' ').next()?.parse().ok()?;
        let e = buckets.entry(bound.to_bits()).or_insert((bound, 0.0));
        e.1 += count;
    }
    let mut sorted: Vec<(f64, f64)> = buckets.into_values().collect();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = sorted.last()?.1;
    if total <= 0.0 {
        return None;
    }
    sorted.into_iter().find(|(_, c)| *c >= q * total).map(|(b, _)| b)
}

/// Every `every`: the relay's storage, as `[secs since start, relay_events_disk_bytes,
/// relay_events_oldest_seq, relay_last_seq, relay_data_dir_bytes, relay_wal_bytes, du]` (`du`: what
/// the data directory `data` takes on disk, measured here, independently of the relay; 0 when the
/// relay's directory is not known), until `stop`.
pub async fn sample_storage(
    addr: String,
    data: Option<std::path::PathBuf>,
    every: Duration,
    stop: Arc<AtomicBool>,
    out: Arc<Mutex<Vec<[u64; 7]>>>,
) {
    let t0 = std::time::Instant::now();
    while !stop.load(Ordering::Acquire) {
        let bytes = relay_metric(&addr, "relay_events_disk_bytes").await.unwrap_or(0);
        let oldest = relay_metric(&addr, "relay_events_oldest_seq").await.unwrap_or(0);
        let head = relay_metric(&addr, "relay_last_seq").await.unwrap_or(0);
        let dir = relay_metric(&addr, "relay_data_dir_bytes").await.unwrap_or(0);
        let wal = relay_metric(&addr, "relay_wal_bytes").await.unwrap_or(0);
        let du = data.as_deref().and_then(|d| storage::dir_usage(d).ok()).map_or(0, |u| u.total_bytes);
        if let Ok(mut o) = out.lock() {
            o.push([t0.elapsed().as_secs(), bytes, oldest, head, dir, wal, du]);
        }
        tokio::time::sleep(every).await;
    }
}

/// CPU seconds (user + system) used so far by this process's threads whose name starts with
/// `prefix` (e.g. `fleet-`), from `/proc/self/task/*/stat`.
pub fn own_threads_cpu_secs(prefix: &str) -> f64 {
    let tick = clock_ticks();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0.0 };
    let mut ticks = 0u64;
    for t in tasks.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if !comm.trim_end().starts_with(prefix) {
            continue;
        }
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        // Fields after the ")" of the command: state is field 3; utime 14, stime 15.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = rest.split_whitespace().collect();
        let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        ticks += get(11) + get(12);
    }
    ticks as f64 / tick
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`, 100 on Linux).
fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a system constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// An empty health histogram.
pub fn health_histogram() -> Arc<Mutex<Histogram<u64>>> {
    Arc::new(Mutex::new(histogram()))
}
