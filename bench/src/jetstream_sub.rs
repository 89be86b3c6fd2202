//! Jetstream v1 subscribers (`/subscribe` of our relay): each with one of four filter classes and,
//! for a share of them, `compress=true`. They measure latency (the host's send time, found by the
//! commit's `rev` as for firehose subscribers), messages, bytes on the wire and bytes of JSON
//! (compressed messages are decompressed with the relay's dictionary), and time order (`time_us`
//! never going back).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use hdrhistogram::Histogram;
use tokio_tungstenite::tungstenite::Message;

use crate::now_us;
use crate::subscriber::histogram;

/// The filter classes, by index: query string and name.
pub const CLASSES: [(&str, &str); 4] = [
    ("", "all"),
    ("wantedCollections=app.bsky.feed.post", "posts"),
    ("wantedCollections=app.bsky.feed.*", "feed_prefix"),
    ("wantedCollections=app.bsky.graph.follow&wantedCollections=app.bsky.feed.repost", "follows_reposts"),
];

/// What one Jetstream subscriber saw.
#[derive(Debug)]
pub struct JetStats {
    /// Its filter class (index into [`CLASSES`]).
    pub class: usize,
    /// Whether it asked for compression.
    pub compressed: bool,
    /// Messages received.
    pub messages: AtomicU64,
    /// Bytes of websocket payload received.
    pub wire_bytes: AtomicU64,
    /// Bytes of JSON (after decompression).
    pub json_bytes: AtomicU64,
    /// Messages whose `time_us` was below the previous one's.
    pub time_regressions: AtomicU64,
    /// Latency in µs (host send → receipt) of commit messages.
    pub latency: std::sync::Mutex<Histogram<u64>>,
    /// The error that ended the connection, if any.
    pub error: std::sync::Mutex<Option<String>>,
}

fn field<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let at = json.find(key)? + key.len();
    let rest = json.get(at..)?;
    let end = rest.find(['"', ',', '}'])?;
    rest.get(..end)
}

/// Starts a subscriber of class `class` on `relay` (`ws://host:port`); `dictionary` given means
/// `compress=true`. Runs until `stop`.
pub fn spawn(
    relay: &str,
    class: usize,
    dictionary: Option<Arc<Vec<u8>>>,
    stop: Arc<AtomicBool>,
    sent: Arc<crate::host::HostStats>,
) -> Arc<JetStats> {
    let stats = Arc::new(JetStats {
        class,
        compressed: dictionary.is_some(),
        messages: AtomicU64::new(0),
        wire_bytes: AtomicU64::new(0),
        json_bytes: AtomicU64::new(0),
        time_regressions: AtomicU64::new(0),
        latency: std::sync::Mutex::new(histogram()),
        error: std::sync::Mutex::new(None),
    });
    let query = CLASSES.get(class).map_or("", |c| c.0);
    let sep = if query.is_empty() { "" } else { "&" };
    let compress = if dictionary.is_some() { format!("{sep}compress=true") } else { String::new() };
    let url = format!("{relay}/subscribe?{query}{compress}");
    let s = Arc::clone(&stats);
    tokio::spawn(async move {
        if let Err(e) = run(&url, dictionary, &s, &stop, &sent).await
            && let Ok(mut err) = s.error.lock()
        {
            *err = Some(e);
        }
    });
    stats
}

async fn run(
    url: &str,
    dictionary: Option<Arc<Vec<u8>>>,
    stats: &JetStats,
    stop: &AtomicBool,
    sent: &crate::host::HostStats,
) -> Result<(), String> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.map_err(|e| format!("connect {url}: {e}"))?;
    let mut decompressor = match &dictionary {
        Some(d) => Some(zstd::bulk::Decompressor::with_dictionary(d).map_err(|e| e.to_string())?),
        None => None,
    };
    let mut last_time = 0u64;
    while !stop.load(Ordering::Acquire) {
        let Some(msg) = crate::subscriber::next_message(&mut ws).await? else { continue };
        let received_us = now_us();
        let (wire, json) = match (msg, decompressor.as_mut()) {
            (Message::Text(t), _) => (t.len(), t.as_str().to_owned()),
            (Message::Binary(b), Some(d)) => {
                let raw = d.decompress(&b, 1 << 24).map_err(|e| format!("zstd: {e}"))?;
                (b.len(), String::from_utf8(raw).map_err(|e| e.to_string())?)
            }
            _ => continue,
        };
        stats.messages.fetch_add(1, Ordering::Relaxed);
        stats.wire_bytes.fetch_add(wire as u64, Ordering::Relaxed);
        stats.json_bytes.fetch_add(json.len() as u64, Ordering::Relaxed);
        if let Some(t) = field(&json, "\"time_us\":").and_then(|t| t.parse::<u64>().ok()) {
            if t < last_time {
                stats.time_regressions.fetch_add(1, Ordering::Relaxed);
            }
            last_time = last_time.max(t);
        }
        let due = field(&json, "\"rev\":\"").and_then(|r| wire::Tid::new(r).ok()).map(|t| t.timestamp_us());
        if let Some(due) = due
            && let Ok(mut h) = stats.latency.lock()
        {
            let sent_us = sent.send_times.get(due).unwrap_or(due);
            let _ = h.record(received_us.saturating_sub(sent_us).max(1));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn fields_are_found_without_parsing() {
        let j = r#"{"did":"did:plc:x","time_us":1700000000000001,"kind":"commit","commit":{"rev":"3l3qo2vutsw2b","operation":"create"}}"#;
        assert_eq!(super::field(j, "\"time_us\":"), Some("1700000000000001"));
        assert_eq!(super::field(j, "\"rev\":\""), Some("3l3qo2vutsw2b"));
        assert_eq!(super::field(j, "\"nope\":"), None);
    }
}
