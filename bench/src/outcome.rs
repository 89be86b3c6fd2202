//! What a run reports: the JSON line (every figure, the environment), the Jetstream subscribers'
//! figures, and the files it writes (JSON line, `.hgrm`, SVG).

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use bench::generator::GenStats;
use bench::subscriber::histogram;
use bench::{jetstream_sub, report};
use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::cli::Common;
use crate::setup::Setup;
use crate::{Fleetwide, Probes, received};

/// The Jetstream subscribers' figures: per filter class, latency, bytes per message with and
/// without compression, time order.
pub(crate) fn jetstream_result(subs: &Fleetwide, secs: f64) -> Value {
    if subs.jet.is_empty() {
        return Value::Null;
    }
    let mut latency = histogram();
    for j in &subs.jet {
        if let Ok(h) = j.latency.lock() {
            let _ = latency.add(&*h);
        }
    }
    let sum = |f: &dyn Fn(&jetstream_sub::JetStats) -> u64, pick: &dyn Fn(&jetstream_sub::JetStats) -> bool| -> u64 {
        subs.jet.iter().filter(|j| pick(j)).map(|j| f(j)).sum()
    };
    let messages = |j: &jetstream_sub::JetStats| j.messages.load(Ordering::Relaxed);
    let wire = |j: &jetstream_sub::JetStats| j.wire_bytes.load(Ordering::Relaxed);
    let json_b = |j: &jetstream_sub::JetStats| j.json_bytes.load(Ordering::Relaxed);
    let zm = sum(&messages, &|j| j.compressed).max(1) as f64;
    let pm = sum(&messages, &|j| !j.compressed).max(1) as f64;
    let classes: Vec<Value> = jetstream_sub::CLASSES
        .iter()
        .enumerate()
        .map(|(i, (query, name))| {
            let n = subs.jet.iter().filter(|j| j.class == i).count().max(1) as f64;
            json!({
                "class": name, "query": query,
                "messages_per_sub_per_s": sum(&messages, &|j| j.class == i) as f64 / n / secs,
            })
        })
        .collect();
    let total = sum(&messages, &|_| true);
    json!({
        "subscribers": subs.jet.len(),
        "compressed_subscribers": subs.jet.iter().filter(|j| j.compressed).count(),
        "messages": total,
        "messages_per_s": total as f64 / secs,
        "classes": classes,
        "latency_us": report::percentiles(&latency),
        "bytes_per_message_json": sum(&json_b, &|_| true) as f64 / total.max(1) as f64,
        "bytes_per_message_wire_uncompressed": sum(&wire, &|j| !j.compressed) as f64 / pm,
        "bytes_per_message_wire_compressed": sum(&wire, &|j| j.compressed) as f64 / zm,
        "time_regressions": sum(&|j| j.time_regressions.load(Ordering::Relaxed), &|_| true),
        "cut_off": subs.jet.iter().filter(|j| j.error.lock().map(|e| e.is_some()).unwrap_or(false)).count(),
    })
}

/// Whether a connection error is the relay refusing the connection with HTTP 429 (its
/// `--max-connections-per-ip`), as the lean fleet ("handshake: HTTP/1.1 429 ...") and tungstenite
/// ("HTTP error: 429 ...") report it.
pub(crate) fn refused_429(error: &str) -> bool {
    error.contains("HTTP/1.1 429") || error.contains("HTTP error: 429")
}

fn sub_refused(x: &crate::subscriber::SubStats) -> bool {
    x.error.lock().is_ok_and(|e| e.as_deref().is_some_and(refused_429))
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn result(
    mode: &str,
    c: &Common,
    s: &Setup,
    subs: &Fleetwide,
    gen_stats: &GenStats,
    keys: &HashSet<u64>,
    latency: &Histogram<u64>,
    probes: &Probes,
    offered: u64,
    accepted: u64,
    secs: f64,
    rate: u64,
    replay_rate: Option<f64>,
) -> Value {
    let max_seq = subs.healthy.iter().map(|x| x.last_seq.load(Ordering::Relaxed)).max().unwrap_or(0);
    // Gaps inside a stream are losses; a subscriber whose stream ended early (cut off) lost its tail.
    // One the relay refused (429) never had a stream: it is counted apart, not as lost.
    let lost_by_seq: u64 = subs
        .healthy
        .iter()
        .filter(|x| !sub_refused(x))
        .map(|x| {
            let tail = if x.ended.load(Ordering::Relaxed) { max_seq - x.last_seq.load(Ordering::Relaxed) } else { 0 };
            x.gaps.load(Ordering::Relaxed) + tail
        })
        .sum();
    let behind_at_end: u64 = if s.relay_addr.is_some() {
        subs.healthy
            .iter()
            .filter(|x| !x.ended.load(Ordering::Relaxed))
            .map(|x| max_seq - x.last_seq.load(Ordering::Relaxed))
            .sum()
    } else {
        0
    };
    let healthy_cut: usize =
        subs.healthy.iter().filter(|x| !sub_refused(x) && x.error.lock().map(|e| e.is_some()).unwrap_or(false)).count();
    let refused = subs.healthy.iter().chain(&subs.stalled).chain(&subs.slow).filter(|x| sub_refused(x)).count()
        + subs.jet.iter().filter(|j| j.error.lock().is_ok_and(|e| e.as_deref().is_some_and(refused_429))).count();
    let repeated_by_seq: u64 = subs.healthy.iter().map(|x| x.repeats.load(Ordering::Relaxed)).sum();
    let mut lost_by_key = 0u64;
    let mut repeated_by_key = 0u64;
    for x in subs.healthy.iter().filter(|x| x.keys.is_some()) {
        if let Some(Ok(k)) = x.keys.as_ref().map(|k| k.lock()) {
            lost_by_key += keys.difference(&k).count() as u64;
        }
        repeated_by_key += x.key_repeats.load(Ordering::Relaxed);
    }
    let samples = probes.proc_samples.lock().map(|p| p.clone()).unwrap_or_default();
    let cpu_avg =
        if samples.is_empty() { 0.0 } else { samples.iter().map(|p| p.cpu_pct).sum::<f64>() / samples.len() as f64 };
    let cpu_max = samples.iter().map(|p| p.cpu_pct).fold(0.0, f64::max);
    let rss_max = samples.iter().map(|p| p.rss_bytes).max().unwrap_or(0) >> 20;
    let threads_max = samples.iter().map(|p| p.threads).max().unwrap_or(0);
    let delivered: u64 = received(&subs.healthy);
    let n_healthy = subs.healthy.iter().filter(|x| !sub_refused(x)).count().max(1) as f64;
    let late = gen_stats.late.load(Ordering::Relaxed);
    let generated = gen_stats.generated.load(Ordering::Relaxed).max(1);
    let lateness = s.host_stats.lateness_us.lock().map(|h| h.value_at_quantile(0.99)).unwrap_or(0);
    let health = probes.health.lock().map(|h| report::percentiles(&h)).unwrap_or(Value::Null);
    let stalled_cut: usize =
        subs.stalled.iter().filter(|x| x.error.lock().map(|e| e.is_some()).unwrap_or(false)).count();
    let mut v = json!({
        "tool": "relay-bench",
        "label": c.label,
        "mode": mode,
        "layout": s.layout,
        "hosts": c.hosts,
        "accounts": s.accounts,
        "subscribers": c.subscribers,
        "stalled": c.stalled,
        "slow": c.slow,
        "p256_share": c.p256_share,
        "legacy_did_docs": c.legacy_did_docs,
        "plc_delay_ms": c.plc_delay_ms,
        "rate_target": rate,
        "bench_cpus": c.bench_cpus,
        "relay_cpus": c.relay_cpus,
        "duration_s": secs,
        "hosts_connected_s": s.connect_all_s,
        "connect_health_latency_us": s.connect_health.as_ref().map(|(h, _)| report::percentiles(h)),
        "connect_health_failures": s.connect_health.as_ref().map(|(_, f)| *f),
        "offered": offered,
        "offered_per_s": offered as f64 / secs,
        "accepted": accepted,
        "accepted_per_s": accepted as f64 / secs,
        "delivered_per_sub_per_s": delivered as f64 / n_healthy / secs,
        "deliveries_per_s": delivered as f64 / secs,
        "latency_us": report::percentiles(latency),
        "lost_by_seq": lost_by_seq,
        "behind_at_end": behind_at_end,
        "healthy_cut_off": healthy_cut,
        "refused_429": refused,
        "repeated_by_seq": repeated_by_seq,
        "lost_by_repo_rev": lost_by_key,
        "repeated_by_repo_rev": repeated_by_key,
        "generator_late": late,
        "generator_send_lateness_p99_us": lateness,
        "generator_bound": late * 100 > generated || lateness > 10_000,
        "relay_cpu_pct_avg": cpu_avg,
        "relay_cpu_pct_max": cpu_max,
        "relay_rss_mb_max": rss_max,
        "relay_threads_max": threads_max,
        "health_latency_us": health,
        "health_failures": probes.health_failures.load(Ordering::Relaxed),
        "replay_events_per_s": replay_rate,
        "stalled_cut_off": stalled_cut,
        "slow_cut_off": subs.slow.iter().filter(|x| x.error.lock().map(|e| e.is_some()).unwrap_or(false)).count(),
    });
    v["host_replay_gaps"] = json!(s.host_stats.replay_gaps.load(Ordering::Relaxed));
    v["corpus"] = json!(s.corpus);
    v["corpus_exhausted"] = json!(gen_stats.exhausted.load(Ordering::Relaxed));
    v["storage_series"] = json!(probes.storage.lock().map(|x| x.clone()).unwrap_or_default());
    if let (Some(obj), Value::Object(env)) = (v.as_object_mut(), report::environment()) {
        obj.extend(env);
    }
    v
}

/// Prints the table and the JSON line, and writes `--json-out`, `--hgrm` and `--svg` when given.
pub(crate) fn write_outputs(c: &Common, v: &Value, latency: &Histogram<u64>) -> anyhow::Result<()> {
    println!("{}", report::table(v));
    if v["topology"].is_array() {
        println!("{}", crate::topology::table(&v["topology"]));
    }
    println!("{v}");
    let refused = v["refused_429"].as_u64().unwrap_or(0);
    if refused > 0 {
        eprintln!(
            "relay-bench: the relay REFUSED {refused} of the subscriber connections with 429 RateLimitExceeded: \
             its --max-connections-per-ip (default 100) counts every connection from this address. They are \
             left out of `lost_by_seq`; to benchmark more subscribers from one machine, start the relay with \
             --max-connections-per-ip 0 (no limit) or a limit above the subscriber count (relay-bench does \
             this for a relay it starts itself). Health polls refused the same way count in `health_failures`."
        );
    }
    if let Some(p) = &c.json_out {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(p)?;
        writeln!(f, "{v}")?;
    }
    if let Some(p) = &c.hgrm {
        std::fs::write(p, report::hgrm(latency))?;
    }
    if let Some(p) = &c.svg {
        let title = format!("fanout latency: {} ({} ev/s, {} subscribers)", c.label, v["rate_target"], c.subscribers);
        std::fs::write(p, report::svg(latency, &title))?;
    }
    Ok(())
}
