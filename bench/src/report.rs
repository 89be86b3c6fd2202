//! Results: the final human table, one JSON line with every figure and the environment, the latency
//! histogram as `.hgrm` (HdrHistogram percentile distribution text) and as an SVG percentile chart.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// Percentiles of a histogram in µs, as JSON.
pub fn percentiles(h: &Histogram<u64>) -> Value {
    json!({
        "count": h.len(),
        "p50": h.value_at_quantile(0.50),
        "p90": h.value_at_quantile(0.90),
        "p99": h.value_at_quantile(0.99),
        "p999": h.value_at_quantile(0.999),
        "max": h.max(),
    })
}

/// The environment of a run: commit, kernel, CPU model, CPUs.
pub fn environment() -> Value {
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_owned()).unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    json!({ "commit": commit, "kernel": kernel, "cpu_model": cpu, "cpus": cpus })
}

/// The `.hgrm` text of a latency histogram in µs, values printed in milliseconds.
pub fn hgrm(h: &Histogram<u64>) -> String {
    let mut out = String::from("       Value     Percentile TotalCount 1/(1-Percentile)\n\n");
    for v in h.iter_quantiles(5) {
        let q = v.quantile_iterated_to();
        let inv = if q < 1.0 { format!("{:.2}", 1.0 / (1.0 - q)) } else { "inf".into() };
        let _ = writeln!(
            out,
            "{:12.3} {:14.12} {:10} {:>14}",
            v.value_iterated_to() as f64 / 1000.0,
            q,
            v.count_since_last_iteration(),
            inv
        );
    }
    let _ = writeln!(
        out,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]\n#[Max     = {:12.3}, Total count    = {:12}]",
        h.mean() / 1000.0,
        h.stdev() / 1000.0,
        h.max() as f64 / 1000.0,
        h.len()
    );
    out
}

/// An SVG chart of latency (ms, log scale) against percentile (log scale of 1/(1-p)).
pub fn svg(h: &Histogram<u64>, title: &str) -> String {
    let (w, ht, left, bottom) = (720.0, 420.0, 70.0, 50.0);
    let qs = [
        (0.0, "0%"),
        (0.5, "50%"),
        (0.9, "90%"),
        (0.99, "99%"),
        (0.999, "99.9%"),
        (0.9999, "99.99%"),
        (0.99999, "99.999%"),
    ];
    let max_x = (1.0f64 / (1.0 - 0.99999)).log10();
    let max_ms = (h.max().max(1) as f64 / 1000.0).max(0.01);
    let min_ms = (h.min().max(1) as f64 / 1000.0).min(max_ms / 10.0).max(0.001);
    let (ly0, ly1) = (min_ms.log10(), max_ms.log10() + 0.1);
    let x = |q: f64| left + (1.0 / (1.0 - q.min(0.99999))).log10() / max_x * (w - left - 20.0);
    let y = |ms: f64| ht - bottom - (ms.max(min_ms).log10() - ly0) / (ly1 - ly0) * (ht - bottom - 30.0);
    let mut points = String::new();
    let mut q = 0.0;
    while q <= 0.99999 {
        let ms = h.value_at_quantile(q) as f64 / 1000.0;
        let _ = write!(points, "{:.1},{:.1} ", x(q), y(ms));
        q = 1.0 - (1.0 - q) * 0.9;
        if q > 0.99999 && q < 1.0 {
            q = 0.99999;
            let ms = h.value_at_quantile(q) as f64 / 1000.0;
            let _ = write!(points, "{:.1},{:.1} ", x(q), y(ms));
            break;
        }
    }
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{ht}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"18\" text-anchor=\"middle\" font-size=\"14\">{title}</text>\n",
        w / 2.0
    );
    for (q, label) in qs {
        let _ = writeln!(
            s,
            "<line x1=\"{0:.1}\" y1=\"30\" x2=\"{0:.1}\" y2=\"{1}\" stroke=\"#ddd\"/><text x=\"{0:.1}\" y=\"{2}\" text-anchor=\"middle\">{label}</text>",
            x(q),
            ht - bottom,
            ht - bottom + 16.0
        );
    }
    let mut tick = 10f64.powf(ly0.floor());
    while tick <= 10f64.powf(ly1) {
        if tick >= min_ms {
            let _ = writeln!(
                s,
                "<line x1=\"{left}\" y1=\"{0:.1}\" x2=\"{1}\" y2=\"{0:.1}\" stroke=\"#ddd\"/><text x=\"{2}\" y=\"{3:.1}\" text-anchor=\"end\">{tick} ms</text>",
                y(tick),
                w - 20.0,
                left - 6.0,
                y(tick) + 4.0
            );
        }
        tick *= 10.0;
    }
    let _ = writeln!(s, "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"2\" points=\"{points}\"/>");
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">percentile</text>\n<text x=\"16\" y=\"{}\" transform=\"rotate(-90 16 {})\" text-anchor=\"middle\">fanout latency</text>\n</svg>",
        w / 2.0,
        ht - 10.0,
        ht / 2.0,
        ht / 2.0
    );
    s
}

/// The human table of a result JSON.
pub fn table(r: &Value) -> String {
    let lat = &r["latency_us"];
    let ms = |v: &Value| v.as_u64().map_or("-".into(), |u| format!("{:.2} ms", u as f64 / 1000.0));
    let mut s = String::new();
    let rows: Vec<(&str, String)> = vec![
        ("mode", r["mode"].to_string()),
        ("layout", r["layout"].to_string()),
        ("hosts / accounts", format!("{} / {}", r["hosts"], r["accounts"])),
        ("subscribers (stalled, slow)", format!("{} ({}, {})", r["subscribers"], r["stalled"], r["slow"])),
        ("duration", format!("{} s", r["duration_s"])),
        ("offered", format!("{} events, {:.0}/s", r["offered"], r["offered_per_s"].as_f64().unwrap_or(0.0))),
        (
            "accepted by relay",
            format!("{} events, {:.0}/s", r["accepted"], r["accepted_per_s"].as_f64().unwrap_or(0.0)),
        ),
        (
            "delivered per subscriber",
            format!(
                "{:.0}/s (over {:.1} s)",
                r["delivered_per_sub_per_s"].as_f64().unwrap_or(0.0),
                r["delivery_window_s"].as_f64().unwrap_or(r["duration_s"].as_f64().unwrap_or(0.0))
            ),
        ),
        ("deliveries total", format!("{:.0}/s", r["deliveries_per_s"].as_f64().unwrap_or(0.0))),
        ("latency p50 / p90 / p99", format!("{} / {} / {}", ms(&lat["p50"]), ms(&lat["p90"]), ms(&lat["p99"]))),
        ("latency p99.9 / max", format!("{} / {}", ms(&lat["p999"]), ms(&lat["max"]))),
        ("lost / repeated (by seq)", format!("{} / {}", r["lost_by_seq"], r["repeated_by_seq"])),
        ("not yet delivered at end (events, all subs)", r["behind_at_end"].to_string()),
        ("healthy subscribers cut off", r["healthy_cut_off"].to_string()),
        ("subscribers refused by the relay (429)", r["refused_429"].to_string()),
        ("lost / repeated (by repo+rev, sample)", format!("{} / {}", r["lost_by_repo_rev"], r["repeated_by_repo_rev"])),
        ("generator late events (bound?)", format!("{} ({})", r["generator_late"], r["generator_bound"])),
        (
            "relay CPU avg / max",
            format!(
                "{:.0}% / {:.0}%",
                r["relay_cpu_pct_avg"].as_f64().unwrap_or(0.0),
                r["relay_cpu_pct_max"].as_f64().unwrap_or(0.0)
            ),
        ),
        ("relay RSS max / threads max", format!("{} MB / {}", r["relay_rss_mb_max"], r["relay_threads_max"])),
        ("hosts connected after relay start", format!("{} s", r["hosts_connected_s"])),
        (
            "health while connecting p99 / max (failures)",
            format!(
                "{} / {} ({})",
                ms(&r["connect_health_latency_us"]["p99"]),
                ms(&r["connect_health_latency_us"]["max"]),
                r["connect_health_failures"]
            ),
        ),
        (
            "health p99 / max (failures)",
            format!(
                "{} / {} ({})",
                ms(&r["health_latency_us"]["p99"]),
                ms(&r["health_latency_us"]["max"]),
                r["health_failures"]
            ),
        ),
        ("replay catch-up", format!("{} events/s", r["replay_events_per_s"])),
        ("stalled subscribers cut off", r["stalled_cut_off"].to_string()),
    ];
    for (k, v) in rows {
        let _ = writeln!(s, "  {k:<40} {v}");
    }
    s
}
