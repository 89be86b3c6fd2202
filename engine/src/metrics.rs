//! Metrics the engine measures itself, beside the shards' ([`shards::Metrics`]): the process (memory,
//! descriptors, threads, CPU), each executor's busy ratio, RocksDB's counters, and hosts by status.
//! Most are read when `/metrics` is scraped ([`EngineMetrics::refresh`]); the busy ratios by a task
//! on each executor every second.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use storage::Store;
use wire::HostStatus;

/// Labels with an owned value (a CPU number, a status).
type Labels = Vec<(&'static str, String)>;

/// The engine's metrics (atomics, shared by every core).
#[derive(Debug, Default, Clone)]
pub struct EngineMetrics {
    /// `relay_process_resident_bytes`: resident memory of the process.
    pub resident_bytes: Gauge,
    /// `relay_process_open_fds`: open file descriptors (counted at most every 10 s).
    pub open_fds: Gauge,
    /// `relay_process_threads`: threads of the process.
    pub threads: Gauge,
    /// `relay_process_cpu_seconds_total`: CPU time used (user and system).
    pub cpu_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    /// `relay_executor_busy_ratio{cpu}`: share of the last second each executor spent running tasks
    /// (0 to 1).
    pub executor_busy: Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// `relay_hosts{status}`: known hosts by status (`active`, `idle`, `offline`, `throttled`,
    /// `banned`).
    pub hosts: Family<Labels, Gauge>,
    /// `relay_rocksdb_stall_seconds_total`: time RocksDB stalled or slowed writes.
    pub rocksdb_stall_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    /// `relay_rocksdb_compaction_bytes_total{direction}`: bytes compactions read and wrote.
    pub rocksdb_compaction_bytes: Family<Labels, Counter>,
    /// `relay_rocksdb_running_compactions`: compactions running now.
    pub rocksdb_running_compactions: Gauge,
    /// `relay_rocksdb_pending_compaction_bytes`: bytes compactions still have to rewrite.
    pub rocksdb_pending_compaction_bytes: Gauge,
    /// `relay_rocksdb_write_stopped`: 1 while RocksDB stops writes.
    pub rocksdb_write_stopped: Gauge,
    /// Last values read of the cumulative sources, to turn them into counter increments.
    seen: std::sync::Arc<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    cpu_ticks: AtomicU64,
    stall_micros: AtomicU64,
    compaction_read: AtomicU64,
    compaction_write: AtomicU64,
    /// When the host table was last counted (ms since the UNIX epoch): at most every
    /// [`HOST_COUNT_INTERVAL_MS`], however often `/metrics` (unauthenticated) is scraped.
    hosts_counted_ms: AtomicU64,
    /// When `/proc/self/fd` was last counted (ms since the UNIX epoch): at most every
    /// [`HOST_COUNT_INTERVAL_MS`] too, since listing it costs ~5 µs per open descriptor (5 ms with
    /// 1,000 hosts connected: half an idle relay's CPU when scraped every second).
    fds_counted_ms: AtomicU64,
}

/// Claims the right to redo a periodic count kept in `last` (ms since the UNIX epoch): true when
/// `interval_ms` has passed and no other core claimed it first.
fn due(last: &AtomicU64, now_ms: u64, interval_ms: u64) -> bool {
    let seen = last.load(Ordering::Acquire);
    now_ms.saturating_sub(seen) >= interval_ms
        && last.compare_exchange(seen, now_ms, Ordering::AcqRel, Ordering::Acquire).is_ok()
}

/// How often at most `/metrics` counts the host table by status (a scan of every host).
const HOST_COUNT_INTERVAL_MS: u64 = 10_000;

/// Adds to `counter` what `now` (a cumulative source) grew by since `last`.
fn advance(last: &AtomicU64, now: u64) -> u64 {
    now.saturating_sub(last.swap(now, Ordering::AcqRel))
}

impl EngineMetrics {
    /// Registers every metric in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register("relay_process_resident_bytes", "Resident memory", self.resident_bytes.clone());
        registry.register(
            "relay_process_open_fds",
            "Open file descriptors (counted at most every 10 s)",
            self.open_fds.clone(),
        );
        registry.register("relay_process_threads", "Threads", self.threads.clone());
        registry.register("relay_process_cpu_seconds", "CPU time used", self.cpu_seconds.clone());
        registry.register(
            "relay_executor_busy_ratio",
            "Share of the last second each executor ran tasks",
            self.executor_busy.clone(),
        );
        registry.register("relay_hosts", "Known hosts by status", self.hosts.clone());
        registry.register(
            "relay_rocksdb_stall_seconds",
            "Time RocksDB stalled or slowed writes",
            self.rocksdb_stall_seconds.clone(),
        );
        registry.register(
            "relay_rocksdb_compaction_bytes",
            "Bytes compactions read and wrote",
            self.rocksdb_compaction_bytes.clone(),
        );
        registry.register(
            "relay_rocksdb_running_compactions",
            "Compactions running now",
            self.rocksdb_running_compactions.clone(),
        );
        registry.register(
            "relay_rocksdb_pending_compaction_bytes",
            "Bytes compactions still have to rewrite",
            self.rocksdb_pending_compaction_bytes.clone(),
        );
        registry.register(
            "relay_rocksdb_write_stopped",
            "1 while RocksDB stops writes",
            self.rocksdb_write_stopped.clone(),
        );
        for status in HostStatus::ALL {
            let _ = self.hosts.get_or_create(&vec![("status", status.as_str().to_owned())]);
        }
    }

    /// Reads the process, RocksDB and host-table values (called when `/metrics` is scraped; the host
    /// table at most every 10 s).
    pub fn refresh(&self, store: &Store, registry: &shards::hosts::HostRegistry) {
        self.refresh_process();
        let rocks = store.rocksdb_stats();
        self.rocksdb_stall_seconds.inc_by(advance(&self.seen.stall_micros, rocks.stall_micros) as f64 / 1e6);
        let dir = |d: &str| vec![("direction", d.to_owned())];
        self.rocksdb_compaction_bytes
            .get_or_create(&dir("read"))
            .inc_by(advance(&self.seen.compaction_read, rocks.compaction_read_bytes));
        self.rocksdb_compaction_bytes
            .get_or_create(&dir("write"))
            .inc_by(advance(&self.seen.compaction_write, rocks.compaction_write_bytes));
        self.rocksdb_running_compactions.set(rocks.running_compactions as i64);
        self.rocksdb_pending_compaction_bytes.set(i64::try_from(rocks.pending_compaction_bytes).unwrap_or(i64::MAX));
        self.rocksdb_write_stopped.set(i64::from(rocks.write_stopped));
        let now_ms = shards::unix_ms();
        if !due(&self.seen.hosts_counted_ms, now_ms, HOST_COUNT_INTERVAL_MS) {
            // Counted recently (or by another core just now): the gauges keep those counts.
            return;
        }
        let mut counts = [0i64; 5];
        let mut after: Option<String> = None;
        while let Ok(page) = store.hosts_after(after.as_deref(), 1000) {
            for row in &page {
                let host = wire::Hostname::parse_lenient(&row.host).ok();
                let banned = row.config.banned || host.is_some_and(|h| registry.domain_ban(&h).is_some());
                let status =
                    if banned { HostStatus::Banned } else { row.info.map_or(HostStatus::Active, |i| i.status) };
                if let Some(c) = counts.get_mut(usize::from(status.code())) {
                    *c += 1;
                }
            }
            match page.last() {
                Some(last) if page.len() == 1000 => after = Some(last.host.clone()),
                _ => break,
            }
        }
        for status in HostStatus::ALL {
            let n = counts.get(usize::from(status.code())).copied().unwrap_or(0);
            self.hosts.get_or_create(&vec![("status", status.as_str().to_owned())]).set(n);
        }
    }

    fn refresh_process(&self) {
        if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
            for line in status.lines() {
                let value = |l: &str| l.split_whitespace().nth(1).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
                if line.starts_with("VmRSS:") {
                    self.resident_bytes.set(value(line) * 1024);
                } else if line.starts_with("Threads:") {
                    self.threads.set(value(line));
                }
            }
        }
        if due(&self.seen.fds_counted_ms, shards::unix_ms(), HOST_COUNT_INTERVAL_MS)
            && let Ok(fds) = std::fs::read_dir("/proc/self/fd")
        {
            self.open_fds.set(fds.count() as i64);
        }
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            // Fields after the command name: utime and stime are the 12th and 13th.
            let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
            let ticks: u64 = [11, 12].iter().filter_map(|i| fields.get(*i)?.parse::<u64>().ok()).sum();
            // SAFETY: sysconf only reads a configuration value.
            let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
            self.cpu_seconds.inc_by(advance(&self.seen.cpu_ticks, ticks) as f64 / per_second);
        }
    }

    /// Samples the current executor's busy ratio every second, labelled `cpu`, forever.
    pub async fn sample_executor(self, cpu: usize) {
        let label = vec![("cpu", cpu.to_string())];
        let ex = glommio::executor();
        let _ = ex.executor_stats();
        loop {
            let started = std::time::Instant::now();
            glommio::timer::sleep(Duration::from_secs(1)).await;
            let busy = ex.executor_stats().total_runtime().as_secs_f64() / started.elapsed().as_secs_f64();
            self.executor_busy.get_or_create(&label).set(busy.min(1.0));
        }
    }
}
