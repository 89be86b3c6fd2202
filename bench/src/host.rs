//! A simulated PDS host: a websocket server on its own port serving `subscribeRepos`. Frames arrive
//! from the generator with the time they are due; the host sends each at that time to every
//! connected subscriber (the relay, or in direct mode the bench's subscribers), keeps the recent ones
//! to honour `?cursor=` on reconnect, and records how late it sent them.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

use crate::now_us;

/// Frames kept per host for cursor replay.
const REPLAY_FRAMES: usize = 100_000;

/// A frame due at `at_us` with the host's `seq`.
#[derive(Debug, Clone)]
pub struct Due {
    /// When to send it (µs since the epoch); also the time carried in the event.
    pub at_us: u64,
    /// The host seq inside the frame.
    pub seq: u64,
    /// The encoded frame.
    pub frame: Bytes,
}

/// When each frame actually left its host, by due time (µs → µs), sharded for concurrent readers.
/// Subscribers measure latency from the actual send time, so the generator's timer slack is not
/// counted against the relay (it is reported separately as send lateness).
#[derive(Debug)]
pub struct SendTimes {
    shards: Vec<std::sync::RwLock<std::collections::HashMap<u64, u64>>>,
}

impl Default for SendTimes {
    fn default() -> Self {
        Self { shards: (0..64).map(|_| std::sync::RwLock::new(std::collections::HashMap::new())).collect() }
    }
}

impl SendTimes {
    fn shard(&self, due: u64) -> &std::sync::RwLock<std::collections::HashMap<u64, u64>> {
        &self.shards[(due % self.shards.len() as u64) as usize]
    }

    /// Records that the frame due at `due` left at `sent`.
    pub fn insert(&self, due: u64, sent: u64) {
        if let Ok(mut m) = self.shard(due).write() {
            m.insert(due, sent);
        }
    }

    /// When the frame due at `due` left, if known.
    pub fn get(&self, due: u64) -> Option<u64> {
        self.shard(due).read().ok()?.get(&due).copied()
    }

    /// Forgets frames due before `before`.
    pub fn prune(&self, before: u64) {
        for s in &self.shards {
            if let Ok(mut m) = s.write() {
                m.retain(|due, _| *due >= before);
            }
        }
    }
}

/// Counters shared by every host.
#[derive(Debug)]
pub struct HostStats {
    /// Actual send times.
    pub send_times: SendTimes,
    /// Frames sent (each counted once, however many connections received it).
    pub sent: AtomicUsize,
    /// Connections currently open to hosts.
    pub connections: AtomicUsize,
    /// Reconnects whose cursor was older than a host's replay log: frames the host could not resend
    /// (counted as host-side gaps, not relay loss).
    pub replay_gaps: AtomicUsize,
    /// How late frames left, in µs.
    pub lateness_us: Mutex<Histogram<u64>>,
}

impl Default for HostStats {
    fn default() -> Self {
        Self {
            send_times: SendTimes::default(),
            sent: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            replay_gaps: AtomicUsize::new(0),
            lateness_us: Mutex::new(Histogram::new_with_bounds(1, 600_000_000, 3).unwrap_or_else(|_| unreachable!())),
        }
    }
}

struct Log {
    recent: VecDeque<(u64, Bytes)>,
}

/// Starts a host on `listener`; returns the sender the generator feeds.
pub fn start(listener: TcpListener, stats: Arc<HostStats>) -> mpsc::UnboundedSender<Due> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Due>();
    let (live, _) = broadcast::channel::<(u64, Bytes)>(65_536);
    let log = Arc::new(Mutex::new(Log { recent: VecDeque::new() }));
    let (live2, log2, stats2) = (live.clone(), Arc::clone(&log), Arc::clone(&stats));
    tokio::spawn(async move {
        while let Some(due) = rx.recv().await {
            let now = now_us();
            if due.at_us > now {
                tokio::time::sleep(Duration::from_micros(due.at_us - now)).await;
            }
            let sent_at = now_us();
            stats2.send_times.insert(due.at_us, sent_at);
            let late = sent_at.saturating_sub(due.at_us);
            if let Ok(mut h) = stats2.lateness_us.lock() {
                let _ = h.record(late.max(1));
            }
            if let Ok(mut l) = log2.lock() {
                l.recent.push_back((due.seq, due.frame.clone()));
                if l.recent.len() > REPLAY_FRAMES {
                    l.recent.pop_front();
                }
            }
            stats2.sent.fetch_add(1, Ordering::Relaxed);
            let _ = live2.send((due.seq, due.frame));
        }
    });
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            let (live, log, stats) = (live.subscribe(), Arc::clone(&log), Arc::clone(&stats));
            tokio::spawn(serve(stream, live, log, stats));
        }
    });
    tx
}

// The handshake callback's error type is tungstenite's (an HTTP response), not ours.
#[allow(clippy::result_large_err)]
async fn serve(
    stream: tokio::net::TcpStream,
    mut live: broadcast::Receiver<(u64, Bytes)>,
    log: Arc<Mutex<Log>>,
    stats: Arc<HostStats>,
) {
    let mut cursor: Option<u64> = None;
    let callback = |req: &Request, resp: Response| {
        cursor = req
            .uri()
            .query()
            .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("cursor=")))
            .and_then(|c| c.parse().ok());
        Ok(resp)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else { return };
    stats.connections.fetch_add(1, Ordering::Relaxed);
    let mut last = 0u64;
    if let Some(c) = cursor {
        let backlog: Vec<(u64, Bytes)> = match log.lock() {
            Ok(l) => {
                if l.recent.front().is_some_and(|(oldest, _)| *oldest > c + 1) {
                    stats.replay_gaps.fetch_add(1, Ordering::Relaxed);
                }
                l.recent.iter().filter(|(s, _)| *s > c).cloned().collect()
            }
            Err(_) => Vec::new(),
        };
        for (seq, frame) in backlog {
            if ws.send(Message::Binary(frame)).await.is_err() {
                stats.connections.fetch_sub(1, Ordering::Relaxed);
                return;
            }
            last = seq;
        }
    }
    loop {
        tokio::select! {
            msg = live.recv() => match msg {
                Ok((seq, frame)) if seq > last => {
                    if ws.send(Message::Binary(frame)).await.is_err() { break; }
                    last = seq;
                }
                Ok(_) => {}
                // A connection that cannot keep up with its host loses frames, as with a real PDS
                // closing a slow consumer: close it so the subscriber reconnects with its cursor.
                Err(broadcast::error::RecvError::Lagged(_)) | Err(broadcast::error::RecvError::Closed) => break,
            },
            incoming = ws.next() => match incoming {
                Some(Ok(_)) => {}
                _ => break,
            },
        }
    }
    stats.connections.fetch_sub(1, Ordering::Relaxed);
}
