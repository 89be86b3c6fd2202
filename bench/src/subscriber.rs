//! The subscriber fleet. Each subscriber holds one websocket per URL (one relay, or every host in
//! direct mode) and checks every frame: latency from the moment its host sent it (found by the due
//! time the event carries), seq order (gaps, repeats), and for a sample, which generated events
//! arrived (by repo and rev).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hdrhistogram::Histogram;
use tokio_tungstenite::tungstenite::Message;

use crate::generator::event_key;
use crate::now_us;
use crate::scan::scan;

/// How a subscriber reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behavior {
    /// As fast as frames come.
    Healthy,
    /// Sleeps this long after each frame.
    Slow(Duration),
    /// Never reads (its socket fills; the relay should drop it).
    Stalled,
}

/// What one subscriber saw.
#[derive(Debug)]
pub struct SubStats {
    /// Frames with a seq received.
    pub received: AtomicU64,
    /// Seqs skipped (a gap between consecutive frames on a connection).
    pub gaps: AtomicU64,
    /// Frames whose seq was not above the previous one on the connection.
    pub repeats: AtomicU64,
    /// The error frame that ended the stream, if any (e.g. `ConsumerTooSlow`).
    pub error: Mutex<Option<String>>,
    /// Latency in µs (host send → receipt), for the current window.
    pub latency: Mutex<Histogram<u64>>,
    /// Keys of received events, when this subscriber is in the loss sample.
    pub keys: Option<Mutex<HashSet<u64>>>,
    /// Keys received more than once.
    pub key_repeats: AtomicU64,
    /// Highest seq received.
    pub last_seq: AtomicU64,
    /// The connection ended (closed, error frame, or failure).
    pub ended: AtomicBool,
}

/// A latency histogram from 1 µs to 10 minutes, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).unwrap_or_else(|_| unreachable!())
}

impl SubStats {
    /// Empty stats; `track_keys`: record which `(repo, rev)` arrived (the loss sample).
    pub fn new(track_keys: bool) -> Self {
        Self {
            received: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            repeats: AtomicU64::new(0),
            error: Mutex::new(None),
            latency: Mutex::new(histogram()),
            keys: track_keys.then(|| Mutex::new(HashSet::new())),
            key_repeats: AtomicU64::new(0),
            last_seq: AtomicU64::new(0),
            ended: AtomicBool::new(false),
        }
    }
}

/// Starts a subscriber reading every URL in `urls` (each `…/xrpc/com.atproto.sync.subscribeRepos`
/// with any query). Returns its stats; connections run until `stop`.
pub fn spawn(
    urls: Vec<String>,
    behavior: Behavior,
    track_keys: bool,
    stop: Arc<AtomicBool>,
    sent: Arc<crate::host::HostStats>,
) -> Arc<SubStats> {
    let stats = Arc::new(SubStats::new(track_keys));
    for url in urls {
        let (stats, stop, sent) = (Arc::clone(&stats), Arc::clone(&stop), Arc::clone(&sent));
        tokio::spawn(async move {
            if let Err(e) = connection(&url, behavior, &stats, &stop, &sent).await
                && let Ok(mut err) = stats.error.lock()
            {
                err.get_or_insert(e);
            }
            stats.ended.store(true, Ordering::Release);
        });
    }
    stats
}

async fn connection(
    url: &str,
    behavior: Behavior,
    stats: &SubStats,
    stop: &AtomicBool,
    sent: &crate::host::HostStats,
) -> Result<(), String> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.map_err(|e| format!("connect {url}: {e}"))?;
    if behavior == Behavior::Stalled {
        while !stop.load(Ordering::Acquire) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // At the end, read what the relay left: a ConsumerTooSlow error frame or a close.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_secs(1), ws.next()).await {
                Ok(Some(Ok(Message::Binary(b)))) => {
                    if let Some(s) = scan(&b)
                        && s.op == -1
                    {
                        return Err(s.error.unwrap_or("error").to_owned());
                    }
                }
                Ok(Some(Ok(_))) => {}
                Ok(None) | Ok(Some(Err(_))) => return Err("closed".into()),
                Err(_) => return Ok(()),
            }
        }
        return Ok(());
    }
    let mut last: Option<i64> = None;
    while !stop.load(Ordering::Acquire) {
        let Some(msg) = crate::subscriber::next_message(&mut ws).await? else { continue };
        let Message::Binary(bytes) = msg else { continue };
        if !record_frame(&mut last, stats, &bytes, sent)? {
            continue;
        }
        if let Behavior::Slow(d) = behavior {
            tokio::time::sleep(d).await;
        }
    }
    Ok(())
}

/// Records one frame a subscriber received: seq order (repeats, gaps), latency from its host's
/// send time, and (when the subscriber tracks them) its (repo, rev/time) key. Returns whether the
/// frame carried a seq; an error frame ends the subscriber with its error name.
///
/// # Errors
/// The error name of an error frame (`op` -1).
pub(crate) fn record_frame(
    last: &mut Option<i64>,
    stats: &SubStats,
    payload: &[u8],
    sent: &crate::host::HostStats,
) -> Result<bool, String> {
    let received_us = now_us();
    let Some(s) = scan(payload) else { return Ok(false) };
    if s.op == -1 {
        return Err(s.error.unwrap_or("error").to_owned());
    }
    let Some(seq) = s.seq else { return Ok(false) };
    match *last {
        Some(l) if seq <= l => {
            stats.repeats.fetch_add(1, Ordering::Relaxed);
        }
        Some(l) => {
            stats.gaps.fetch_add((seq - l - 1) as u64, Ordering::Relaxed);
        }
        None => {}
    }
    *last = Some(last.map_or(seq, |l| l.max(seq)));
    stats.last_seq.fetch_max(seq as u64, Ordering::Relaxed);
    stats.received.fetch_add(1, Ordering::Relaxed);
    let due_us = crate::scan::due_us(&s);
    if let Some(due) = due_us
        && let Ok(mut h) = stats.latency.lock()
    {
        let sent_us = sent.send_times.get(due).unwrap_or(due);
        let _ = h.record(received_us.saturating_sub(sent_us).max(1));
    }
    if let (Some(keys), Some(repo)) = (&stats.keys, s.repo)
        && let Some(id) = s.rev.or(s.time)
        && let Ok(mut k) = keys.lock()
        && !k.insert(event_key(repo, id))
    {
        stats.key_repeats.fetch_add(1, Ordering::Relaxed);
    }
    Ok(true)
}

/// The next message of a subscriber's websocket, waiting at most 200 ms (`Ok(None)`: nothing yet,
/// so the caller can look at its stop flag).
///
/// # Errors
/// `closed` when the relay closed the connection, or the websocket error.
pub(crate) async fn next_message<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> Result<Option<Message>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match tokio::time::timeout(Duration::from_millis(200), ws.next()).await {
        Err(_) => Ok(None),
        Ok(None) => Err("closed".into()),
        Ok(Some(Err(e))) => Err(e.to_string()),
        Ok(Some(Ok(m))) => Ok(Some(m)),
    }
}
