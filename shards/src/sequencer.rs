//! The sequencer: the one place a relay `seq` is assigned.
//!
//! It drains the SPSC queues from every ingest shard into batches. For each accepted event it applies
//! the per-account rules ([`crate::accounts`]: status, `rev` order, `since`/`prevData`), assigns the
//! next `seq`, re-encodes the frame with it once, and adds the event, the account's new state and the
//! host cursor to one RocksDB `WriteBatch`. Only after that batch is durable are the events handed to
//! the fanout shards, so a subscriber never sees an event a crash could lose.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::future::poll_once;
use glommio::channels::local_channel;
use glommio::channels::shared_channel::{ConnectedSender, SharedReceiver, SharedSender};
use storage::{CommitBatch, HostState, RepoState, Store, StoreError};
use wire::{Did, DropReason, RelaySeq, ws};

use crate::accounts;
use crate::messages::{IngestMsg, PublishedBatch, ResyncRequest, ShardCommand};
use crate::metrics::Metrics;

/// Sequencer settings.
#[derive(Debug, Clone, Copy)]
pub struct SequencerConfig {
    /// Most events in one group commit. Default 1,024; valid 1 and up.
    pub max_batch_events: usize,
    /// Relay (and count) `since`/`prevData` mismatches instead of dropping them. Default false.
    pub lenient_sync: bool,
}

impl Default for SequencerConfig {
    fn default() -> Self {
        Self { max_batch_events: 1024, lenient_sync: false }
    }
}

/// Why the sequencer stopped.
#[derive(Debug, thiserror::Error)]
pub enum SequencerError {
    /// A store read or write failed; nothing after it was published.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// An event the relay made itself could not be encoded (not reachable).
    #[error("encoding an event: {0}")]
    Encode(String),
}

/// How often at most the sequencer asks for one account's resync.
const RESYNC_INTERVAL: Duration = Duration::from_secs(60);

/// Asks the ingest shard that owns `host` to resync `did` (a full queue only skips this request).
fn ask_resync(to: &[ConnectedSender<ShardCommand>], did: &Did, host: &Arc<str>, metrics: &Metrics) {
    let Ok(hostname) = wire::Hostname::new(host.to_string()) else { return };
    let Some(tx) = to.get(crate::ingest::shard_for_host(&hostname, to.len())) else { return };
    let asked = tx.try_send(ShardCommand::Resync(ResyncRequest { did: did.clone(), host: Arc::clone(host) })).is_ok();
    Metrics::inc(&metrics.resyncs, "result", if asked { "requested" } else { "queue_full" });
    tracing::info!(%did, %host, asked, "asked for a resync");
}

/// The state of `host`, from memory or the store.
fn host_state<'a>(
    hosts: &'a mut HashMap<String, HostState>,
    store: &Store,
    host: &str,
) -> Result<&'a mut HostState, StoreError> {
    if !hosts.contains_key(host) {
        let state = store.host(host)?.unwrap_or_default();
        hosts.insert(host.to_owned(), state);
    }
    Ok(hosts.entry(host.to_owned()).or_default())
}

/// Moves a host's cursor to `seq`, never backwards: only an operator's reset
/// ([`IngestMsg::CursorReset`]) does that.
fn advance_cursor(state: &mut HostState, seq: wire::HostSeq) {
    state.cursor = state.cursor.max(seq);
}

fn now_datetime() -> String {
    let us = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
    wire::syntax::datetime_from_unix_us(us)
}

/// Runs the sequencer on the current executor until every ingest shard has gone away. `committed` is
/// set to the last durable relay seq after each group commit (fanout shards read it to tell a future
/// cursor from one that is only ahead of their own head).
///
/// # Errors
/// [`SequencerError::Store`] when the store fails; the relay must stop, since no later event can be
/// made durable.
pub async fn run(
    config: SequencerConfig,
    committed: Arc<AtomicU64>,
    from_ingest: Vec<SharedReceiver<IngestMsg>>,
    to_ingest: Vec<SharedSender<ShardCommand>>,
    to_fanout: Vec<SharedSender<PublishedBatch>>,
    store: Arc<Store>,
    metrics: Metrics,
) -> Result<(), SequencerError> {
    // Merge the per-shard SPSC queues into one local queue, keeping each shard's order.
    let (merged_tx, merged_rx) = local_channel::new_bounded(config.max_batch_events.max(1) * 4);
    let merged_tx = Rc::new(merged_tx);
    for rx in from_ingest {
        let tx = Rc::clone(&merged_tx);
        glommio::spawn_local(async move {
            let rx = rx.connect().await;
            while let Some(msg) = rx.recv().await {
                if tx.send(msg).await.is_err() {
                    break;
                }
            }
        })
        .detach();
    }
    drop(merged_tx);
    let mut resync_to = Vec::with_capacity(to_ingest.len());
    for tx in to_ingest {
        resync_to.push(tx.connect().await);
    }
    // When each account's last resync was asked for: at most one a minute per account.
    let mut resync_asked: HashMap<Did, Instant> = HashMap::new();
    let mut fanout = Vec::with_capacity(to_fanout.len());
    for tx in to_fanout {
        fanout.push(tx.connect().await);
    }

    let mut last_seq = store.last_seq()?.map_or(0, |s| s.0);
    // Every host's cursor and account count, loaded on first use; the sequencer is their only writer.
    let mut hosts: HashMap<String, HostState> = HashMap::new();
    metrics.last_seq.set(last_seq as i64);
    tracing::info!(seq = last_seq, "sequencer starting after the last stored seq");
    loop {
        let Some(first) = merged_rx.recv().await else {
            return Ok(());
        };
        let mut msgs = vec![first];
        while msgs.len() < config.max_batch_events {
            match poll_once(merged_rx.recv()).await {
                Some(Some(m)) => msgs.push(m),
                _ => break,
            }
        }
        let mut batch = CommitBatch::default();
        let mut touched_hosts: HashSet<String> = HashSet::new();
        let mut repos: HashMap<Did, RepoState> = HashMap::new();
        let mut published = Vec::new();
        for msg in msgs {
            let (mut ev, resynced) = match msg {
                IngestMsg::Cursor { host, seq } => {
                    advance_cursor(host_state(&mut hosts, &store, &host)?, seq);
                    touched_hosts.insert(host.to_string());
                    continue;
                }
                IngestMsg::CursorReset { host, cursor } => {
                    tracing::info!(host = %host, cursor = cursor.0, "host cursor reset");
                    host_state(&mut hosts, &store, &host)?.cursor = cursor;
                    touched_hosts.insert(host.to_string());
                    continue;
                }
                IngestMsg::Host(cmd) => {
                    let shard = crate::ingest::shard_for_host(cmd.host(), resync_to.len());
                    if let Some(tx) = resync_to.get(shard) {
                        // Waits for room: host commands are rare and must not be lost.
                        let _ = tx.send(ShardCommand::Host(cmd)).await;
                    }
                    continue;
                }
                IngestMsg::Event(ev) => (ev, false),
                IngestMsg::Resync(ev) => (ev, true),
                IngestMsg::Takedown { did, taken_down } => {
                    let prior = match repos.get(&did) {
                        Some(state) => Some(state.clone()),
                        None => store.repo(&did)?,
                    };
                    let (state, mut event) = accounts::takedown(&did, prior.as_ref(), taken_down, now_datetime());
                    tracing::info!(%did, taken_down, "operator takedown");
                    last_seq += 1;
                    event.set_seq(last_seq as i64);
                    let frame = event.encode().map_err(|e| SequencerError::Encode(e.to_string()))?;
                    repos.insert(did, state);
                    published.push((RelaySeq(last_seq), Bytes::from(ws::encode_frame(ws::Opcode::Binary, &frame))));
                    batch.events.push((RelaySeq(last_seq), Bytes::from(frame)));
                    continue;
                }
            };
            if !resynced {
                advance_cursor(host_state(&mut hosts, &store, &ev.host)?, ev.host_seq);
                touched_hosts.insert(ev.host.to_string());
            }
            let Some(did) = ev.event.did().cloned() else { continue };
            let prior = match repos.get(&did) {
                Some(state) => Some(state.clone()),
                None => store.repo(&did)?,
            };
            // Account limit: an account new to the relay (or still throttled) takes a slot of its host
            // only while the host is under its limit; past it the account is throttled.
            let unthrottled = if prior.as_ref().is_none_or(|p| p.throttled) {
                let limit = store.host_config(&ev.host)?.map(|c| c.account_limit);
                let count = host_state(&mut hosts, &store, &ev.host)?.account_count;
                if limit.is_some_and(|limit| count >= limit) {
                    metrics.drop_event(DropReason::AccountThrottled);
                    if prior.is_none() {
                        tracing::warn!(%did, host = %ev.host, count, "host at its account limit; account throttled");
                        repos.insert(did, RepoState { throttled: true, ..RepoState::new(ev.host.to_string()) });
                    }
                    continue;
                }
                prior.clone().map(|p| RepoState { throttled: false, ..p })
            } else {
                prior.clone()
            };
            let new_state = match accounts::apply(&mut ev, unthrottled.as_ref(), config.lenient_sync) {
                Err(reason) => {
                    tracing::info!(%did, host = %ev.host, %reason, resynced, "dropped event");
                    metrics.drop_event(reason);
                    if matches!(reason, DropReason::WrongSince | DropReason::WrongPrevData)
                        && resync_asked.get(&did).is_none_or(|at| at.elapsed() >= RESYNC_INTERVAL)
                    {
                        ask_resync(&resync_to, &did, &ev.host, &metrics);
                        if resync_asked.len() >= 100_000 {
                            resync_asked.retain(|_, at| at.elapsed() < RESYNC_INTERVAL);
                        }
                        resync_asked.insert(did.clone(), Instant::now());
                    }
                    continue;
                }
                Ok(applied) => {
                    if let Some(t) = applied.tolerated {
                        tracing::debug!(%did, host = %ev.host, reason = t.as_str(), "tolerated commit quirk");
                        Metrics::inc(&metrics.sync_tolerated, "reason", t.as_str());
                    }
                    if let Some(v) = applied.violation {
                        tracing::warn!(%did, host = %ev.host, reason = %v, "relaying a Sync 1.1 violation (lenient)");
                        Metrics::inc(&metrics.sync_violations, "reason", v.as_str());
                    }
                    applied.state
                }
            };
            let seq = last_seq + 1;
            ev.event.set_seq(seq as i64);
            let frame = match ev.event.encode() {
                Ok(f) => f,
                Err(e) => {
                    // Not reachable for events that decoded; never relay what cannot be encoded.
                    tracing::error!(error = %e, "cannot re-encode event");
                    metrics.drop_event(DropReason::MalformedFrame);
                    continue;
                }
            };
            last_seq = seq;
            if let Some(state) = new_state {
                for (host, delta) in accounts::count_changes(prior.as_ref(), &state) {
                    let h = host_state(&mut hosts, &store, &host)?;
                    h.account_count = h.account_count.saturating_add_signed(delta);
                    touched_hosts.insert(host);
                }
                repos.insert(did, state);
            }
            published.push((RelaySeq(seq), Bytes::from(ws::encode_frame(ws::Opcode::Binary, &frame))));
            batch.events.push((RelaySeq(seq), Bytes::from(frame)));
        }
        batch.repos = repos.into_iter().collect();
        batch.hosts = touched_hosts.into_iter().filter_map(|h| hosts.get(&h).map(|s| (h, *s))).collect();
        if batch.is_empty() {
            continue;
        }
        let events = batch.events.len();
        let writer = Arc::clone(&store);
        glommio::executor().spawn_blocking(move || writer.commit(&batch)).await?;
        metrics.batch_commits.inc();
        metrics.events_relayed.inc_by(events as u64);
        metrics.last_seq.set(last_seq as i64);
        committed.store(last_seq, Ordering::Release);
        if published.is_empty() {
            continue;
        }
        let published: PublishedBatch = Arc::new(published);
        for tx in &fanout {
            // A fanout shard that is gone has no subscribers to serve; keep sequencing for the rest.
            let _ = tx.send(Arc::clone(&published)).await;
        }
    }
}
