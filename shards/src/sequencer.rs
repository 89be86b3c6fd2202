//! The sequencer: the one place a relay `seq` is assigned.
//!
//! It drains the SPSC queues from every ingest shard into batches. For each accepted event it checks
//! the account's stored `rev` (a `#commit` must be strictly newer, a `#sync` not older), assigns the
//! next `seq`, re-encodes the frame with it once, and adds the event, the account's new state and the
//! host cursor to one RocksDB `WriteBatch`. Only after that batch is durable are the events handed to
//! the fanout shards, so a subscriber never sees an event a crash could lose.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use futures_lite::future::poll_once;
use glommio::channels::local_channel;
use glommio::channels::shared_channel::{SharedReceiver, SharedSender};
use storage::{CommitBatch, HostState, RepoState, Store, StoreError};
use wire::frame::Event;
use wire::{Did, DropReason, RelaySeq, ws};

use crate::messages::{AcceptedEvent, IngestMsg, PublishedBatch};
use crate::metrics::Metrics;

/// Sequencer settings.
#[derive(Debug, Clone, Copy)]
pub struct SequencerConfig {
    /// Most events in one group commit. Default 1,024; valid 1 and up.
    pub max_batch_events: usize,
}

impl Default for SequencerConfig {
    fn default() -> Self {
        Self {
            max_batch_events: 1024,
        }
    }
}

/// Why the sequencer stopped.
#[derive(Debug, thiserror::Error)]
pub enum SequencerError {
    /// A store read or write failed; nothing after it was published.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

/// Decides whether `ev` moves its account forward, given the account's last relayed state: the
/// account's new state to store (`None` for events that do not change it), or why to drop it.
fn check_rev(
    ev: &AcceptedEvent,
    prior: Option<&RepoState>,
) -> Result<Option<RepoState>, DropReason> {
    let Some(commit) = ev.commit else {
        return Ok(None);
    };
    let (did, rev, is_sync) = match &ev.event {
        Event::Commit(c) => (&c.repo, &c.rev, false),
        Event::Sync(s) => (&s.did, &s.rev, true),
        _ => return Ok(None),
    };
    if let Some(prior) = prior {
        // A #sync may restate the current commit (same rev); a #commit must advance.
        let stale = if is_sync {
            rev < &prior.rev
        } else {
            rev <= &prior.rev
        };
        if stale {
            tracing::info!(%did, rev = %rev, stored_rev = %prior.rev, "stale rev");
            return Err(DropReason::StaleRev);
        }
    }
    Ok(Some(RepoState {
        rev: rev.clone(),
        commit: commit.commit,
        data: commit.data,
        host: ev.host.to_string(),
    }))
}

/// Runs the sequencer on the current executor until every ingest shard has gone away.
///
/// # Errors
/// [`SequencerError::Store`] when the store fails; the relay must stop, since no later event can be
/// made durable.
pub async fn run(
    config: SequencerConfig,
    from_ingest: Vec<SharedReceiver<IngestMsg>>,
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
    let mut fanout = Vec::with_capacity(to_fanout.len());
    for tx in to_fanout {
        fanout.push(tx.connect().await);
    }

    let mut last_seq = store.last_seq()?.map_or(0, |s| s.0);
    metrics.last_seq.set(last_seq as i64);
    tracing::info!(
        seq = last_seq,
        "sequencer starting after the last stored seq"
    );
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
        let mut hosts: HashMap<Arc<str>, HostState> = HashMap::new();
        let mut repos: HashMap<Did, RepoState> = HashMap::new();
        let mut published = Vec::new();
        for msg in msgs {
            let mut ev = match msg {
                IngestMsg::Cursor { host, seq } => {
                    hosts.insert(host, HostState { cursor: seq });
                    continue;
                }
                IngestMsg::Event(ev) => ev,
            };
            hosts.insert(
                Arc::clone(&ev.host),
                HostState {
                    cursor: ev.host_seq,
                },
            );
            let prior = match ev.event.did().and_then(|d| repos.get(d)) {
                Some(state) => Some(state.clone()),
                None => match ev.event.did() {
                    Some(did) if ev.commit.is_some() => store.repo(did)?,
                    _ => None,
                },
            };
            let new_state = match check_rev(&ev, prior.as_ref()) {
                Err(reason) => {
                    metrics.drop_event(reason);
                    continue;
                }
                Ok(state) => state,
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
            if let (Some(state), Some(did)) = (new_state, ev.event.did()) {
                repos.insert(did.clone(), state);
            }
            published.push((
                RelaySeq(seq),
                Bytes::from(ws::encode_frame(ws::Opcode::Binary, &frame)),
            ));
            batch.events.push((RelaySeq(seq), Bytes::from(frame)));
        }
        batch.repos = repos.into_iter().collect();
        batch.hosts = hosts.into_iter().map(|(h, s)| (h.to_string(), s)).collect();
        if batch.is_empty() {
            continue;
        }
        let events = batch.events.len();
        let writer = Arc::clone(&store);
        glommio::executor()
            .spawn_blocking(move || writer.commit(&batch))
            .await?;
        metrics.batch_commits.inc();
        metrics.events_relayed.inc_by(events as u64);
        metrics.last_seq.set(last_seq as i64);
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
