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
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
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

/// An empty health histogram.
pub fn health_histogram() -> Arc<Mutex<Histogram<u64>>> {
    Arc::new(Mutex::new(histogram()))
}
