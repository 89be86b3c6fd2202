//! One group commit in the making: the sequencer's messages applied in order to a [`Batch`], which
//! holds the events with their relay seqs, the account states and host cursors they change, the
//! time-index entry and the tombstones, ready for one RocksDB `WriteBatch`.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use bytes::Bytes;
use storage::{CommitBatch, HostState, RepoState, Store, StoreError};
use wire::frame::Event;
use wire::{AccountStatus, Did, DropReason, RelaySeq, ws};

use super::SequencerError;
use crate::accounts;
use crate::messages::{AcceptedEvent, ToSequencer};
use crate::metrics::Metrics;

/// What the sequencer keeps between batches.
pub(super) struct State {
    /// The last relay seq assigned.
    pub(super) last_seq: u64,
    /// Every host's cursor and account count, loaded on first use; the sequencer is their only
    /// writer.
    pub(super) hosts: HashMap<String, HostState>,
    /// The newest `time_index` entry: (unix second, its first relay seq).
    pub(super) last_indexed: (u64, RelaySeq),
    /// `(collection, account)` pairs noted in the `collections` column family recently; cleared
    /// when it holds [`MAX_NOTED_COLLECTIONS`].
    pub(super) noted_collections: HashSet<(String, Did)>,
}

/// Most `(collection, account)` pairs the sequencer remembers having written (about 100 MB at
/// most); past it the memory starts over, and a pair seen again is written again (idempotent).
const MAX_NOTED_COLLECTIONS: usize = 1_000_000;

/// A group commit being assembled.
pub(super) struct Batch<'a> {
    store: &'a Store,
    metrics: &'a Metrics,
    state: &'a mut State,
    pub(super) commit: CommitBatch,
    touched_hosts: HashSet<String>,
    repos: HashMap<Did, RepoState>,
    /// The events as complete websocket frames, for the fanout shards.
    pub(super) published: Vec<(RelaySeq, Bytes)>,
    /// The same events decoded, for the fanout shards' Jetstream subscribers.
    pub(super) decoded: Vec<Event>,
    /// Host commands to forward to ingest shards once the batch is built.
    pub(super) host_commands: Vec<crate::messages::HostCommand>,
    relayed: Relayed,
}

/// What a batch relayed, for the metrics.
#[derive(Debug, Default)]
pub(super) struct Relayed {
    /// Events by type (`commit`, `sync`, `identity`, `account`).
    pub(super) by_type: [(&'static str, u64); 4],
    /// When ingest read each event off its host's socket (takedowns have none).
    pub(super) received: Vec<Instant>,
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

fn now_datetime() -> String {
    wire::syntax::datetime_from_unix_us(crate::unix_ms().saturating_mul(1000))
}

/// Whether a relayed `#account` event removes the account's earlier events from replay: the status
/// it carries is `deleted` or `takendown`.
pub(crate) fn is_tombstone(event: &Event) -> bool {
    match event {
        Event::Account(a) => {
            !a.active
                && matches!(
                    AccountStatus::from_fields(a.active, a.status.as_deref()),
                    AccountStatus::Deleted | AccountStatus::Takendown
                )
        }
        _ => false,
    }
}

impl<'a> Batch<'a> {
    pub(super) fn new(store: &'a Store, metrics: &'a Metrics, state: &'a mut State) -> Self {
        Self {
            store,
            metrics,
            state,
            commit: CommitBatch::default(),
            touched_hosts: HashSet::new(),
            repos: HashMap::new(),
            published: Vec::new(),
            decoded: Vec::new(),
            host_commands: Vec::new(),
            relayed: Relayed {
                by_type: [("commit", 0), ("sync", 0), ("identity", 0), ("account", 0)],
                received: Vec::new(),
            },
        }
    }

    /// Moves a host's resume point to `resume` (written in this batch, with the events it covers).
    /// The ingest sends one host's messages in order, so it only moves forward; an operator's reset
    /// ([`ToSequencer::CursorReset`]) moves it back. A default resume point (nothing known) moves
    /// nothing.
    fn advance_cursor(&mut self, host: &str, resume: storage::ResumePoint) -> Result<(), StoreError> {
        if resume == storage::ResumePoint::default() {
            return Ok(());
        }
        let state = host_state(&mut self.state.hosts, self.store, host)?;
        if resume.high < state.resume.high {
            tracing::warn!(
                host,
                high = resume.high.0,
                stored = state.resume.high.0,
                "a resume point behind the stored one; kept the stored one"
            );
            return Ok(());
        }
        state.resume = resume;
        self.touched_hosts.insert(host.to_owned());
        Ok(())
    }

    fn prior(&self, did: &Did) -> Result<Option<RepoState>, StoreError> {
        match self.repos.get(did) {
            Some(state) => Ok(Some(state.clone())),
            None => self.store.repo(did),
        }
    }

    /// Gives `event` the next seq, encodes it once and adds it to the batch.
    fn sequence(&mut self, did: &Did, mut event: Event) -> Result<(), SequencerError> {
        let seq = self.state.last_seq + 1;
        event.set_seq(seq as i64);
        let frame = event.encode().map_err(|e| SequencerError::Encode(e.to_string()))?;
        self.state.last_seq = seq;
        let kind = match &event {
            Event::Commit(_) => 0,
            Event::Sync(_) => 1,
            Event::Identity(_) => 2,
            Event::Account(_) | Event::Info(_) => 3,
        };
        if let Some(slot) = self.relayed.by_type.get_mut(kind) {
            slot.1 += 1;
        }
        if is_tombstone(&event) {
            self.commit.tombstones.push((did.clone(), RelaySeq(seq)));
        }
        if let Event::Commit(c) = &event {
            self.note_collections(did, c, RelaySeq(seq));
        }
        self.published.push((RelaySeq(seq), Bytes::from(ws::encode_frame(ws::Opcode::Binary, &frame))));
        self.commit.events.push((RelaySeq(seq), Bytes::from(frame)));
        self.decoded.push(event);
        Ok(())
    }

    /// Notes the collections the commit creates or updates records in (`listReposByCollection`).
    fn note_collections(&mut self, did: &Did, commit: &wire::frame::CommitEvent, seq: RelaySeq) {
        for op in &commit.ops {
            if op.action == "delete" {
                continue;
            }
            let Some((collection, _)) = op.path.split_once('/') else { continue };
            let noted = &mut self.state.noted_collections;
            if noted.contains(&(collection.to_owned(), did.clone())) {
                continue;
            }
            if noted.len() >= MAX_NOTED_COLLECTIONS {
                noted.clear();
            }
            noted.insert((collection.to_owned(), did.clone()));
            self.commit.collections.push((collection.to_owned(), did.clone(), seq));
        }
    }

    /// Applies one message.
    pub(super) fn apply(&mut self, msg: ToSequencer) -> Result<(), SequencerError> {
        let ev = match msg {
            ToSequencer::Skipped { host, resume } => return Ok(self.advance_cursor(&host, resume)?),
            ToSequencer::CursorReset { host, cursor } => {
                tracing::info!(host = %host, cursor = cursor.0, "host cursor reset");
                host_state(&mut self.state.hosts, self.store, &host)?.resume = storage::ResumePoint::at(cursor);
                self.touched_hosts.insert(host.to_string());
                return Ok(());
            }
            ToSequencer::Host(cmd) => {
                self.host_commands.push(cmd);
                return Ok(());
            }
            ToSequencer::Event(ev) => ev,
            ToSequencer::Takedown { did, taken_down } => {
                let prior = self.prior(&did)?;
                let (state, event) = accounts::takedown(&did, prior.as_ref(), taken_down, now_datetime());
                tracing::info!(%did, taken_down, "operator takedown");
                self.sequence(&did, event)?;
                self.repos.insert(did, state);
                return Ok(());
            }
        };
        self.event(ev)
    }

    fn event(&mut self, mut ev: AcceptedEvent) -> Result<(), SequencerError> {
        self.advance_cursor(&ev.host, std::mem::take(&mut ev.resume))?;
        let Some(did) = ev.event.did().cloned() else { return Ok(()) };
        let prior = self.prior(&did)?;
        // Account limit: an account new to the relay (or still throttled) takes a slot of its host
        // only while the host is under its limit; past it the account is throttled, and that is
        // announced with an `#account` event (<https://atproto.com/specs/account>: services "should
        // also emit `#account` events when their local account hosting status updates"; indigo's
        // relay emits them too). A throttled account's commits and `#sync` are dropped; its
        // `#identity` and `#account` are still relayed. When its host has room again (the limit was
        // raised, an account left), its next event releases it, announced the same way.
        let at_limit = if prior.as_ref().is_none_or(|p| p.throttled) {
            let limit = self.store.host_config(&ev.host)?.map(|c| c.account_limit);
            let count = host_state(&mut self.state.hosts, self.store, &ev.host)?.account_count;
            limit.is_some_and(|limit| count >= limit)
        } else {
            false
        };
        let unthrottled = if at_limit {
            let throttled = prior.clone().unwrap_or_else(|| {
                tracing::warn!(%did, host = %ev.host, "host at its account limit; account throttled");
                RepoState { throttled: true, ..RepoState::new(ev.host.to_string()) }
            });
            let newly = prior.is_none();
            if !matches!(ev.event, Event::Identity(_) | Event::Account(_)) {
                self.metrics.drop_event(DropReason::AccountThrottled);
                if newly {
                    self.announce(&did, &throttled)?;
                    self.repos.insert(did, throttled);
                }
                return Ok(());
            }
            if newly && matches!(ev.event, Event::Identity(_)) {
                self.announce(&did, &throttled)?;
            }
            Some(throttled)
        } else if let Some(p) = prior.as_ref().filter(|p| p.throttled) {
            let released = RepoState { throttled: false, ..p.clone() };
            tracing::info!(%did, host = %ev.host, "host has room again; account released");
            if !matches!(ev.event, Event::Account(_)) {
                self.announce(&did, &released)?;
            }
            Some(released)
        } else {
            prior.clone()
        };
        let new_state = match accounts::apply(&mut ev, unthrottled.as_ref()) {
            Err(reason) => {
                tracing::info!(%did, host = %ev.host, %reason, "dropped event");
                self.metrics.drop_event(reason);
                return Ok(());
            }
            Ok(applied) => {
                if let Some(t) = applied.tolerated {
                    tracing::debug!(%did, host = %ev.host, reason = t.as_str(), "tolerated commit quirk");
                    Metrics::inc(&self.metrics.sync_tolerated, "reason", t.as_str());
                }
                if let Some(d) = applied.discontinuity {
                    let stored = prior.as_ref().and_then(|p| p.rev.as_ref()).map(|r| r.to_string());
                    tracing::info!(%did, host = %ev.host, reason = d.as_str(), stored_rev = ?stored, "relaying a discontinuous commit");
                    Metrics::inc(&self.metrics.sync_discontinuities, "reason", d.as_str());
                    let h = host_state(&mut self.state.hosts, self.store, &ev.host)?;
                    h.discontinuities = h.discontinuities.saturating_add(1);
                    self.touched_hosts.insert(ev.host.to_string());
                }
                applied.state
            }
        };
        // An `#account` of a throttled account says so (indigo does the same), unless the host's own
        // status is already inactive.
        if let (Event::Account(a), Some(state)) = (&mut ev.event, &new_state)
            && state.throttled
            && a.active
        {
            a.active = false;
            a.status = Some("throttled".into());
        }
        let received = ev.received;
        if let Err(e) = self.sequence(&did, ev.event) {
            // Not reachable for events that decoded; never relay what cannot be encoded.
            tracing::error!(error = %e, "cannot re-encode event");
            self.metrics.drop_event(DropReason::MalformedFrame);
            return Ok(());
        }
        self.relayed.received.push(received);
        if let Some(state) = new_state {
            for (host, delta) in accounts::count_changes(prior.as_ref(), &state) {
                let h = host_state(&mut self.state.hosts, self.store, &host)?;
                h.account_count = h.account_count.saturating_add_signed(delta);
                self.touched_hosts.insert(host);
            }
            self.repos.insert(did, state);
        }
        Ok(())
    }

    /// Relays an `#account` event carrying `state`'s combined status (a throttled or released
    /// account), with the relay's clock as its time.
    fn announce(&mut self, did: &Did, state: &RepoState) -> Result<(), SequencerError> {
        let status = state.status();
        let event = Event::Account(wire::frame::AccountEvent {
            seq: 0,
            did: did.clone(),
            time: now_datetime(),
            active: status.is_active(),
            status: status.as_lexicon().map(str::to_owned),
        });
        self.sequence(did, event)
    }

    /// Finishes the batch: account states, host cursors, and the time-index entry when its first
    /// event opens a new second (`now_s`, unix seconds).
    pub(super) fn finish(
        mut self,
        now_s: u64,
    ) -> (CommitBatch, crate::messages::Published, Vec<crate::messages::HostCommand>, Relayed) {
        self.commit.repos = self.repos.into_iter().collect();
        let hosts = &self.state.hosts;
        self.commit.hosts =
            self.touched_hosts.into_iter().filter_map(|h| hosts.get(&h).map(|s| (h, s.clone()))).collect();
        if let Some((first, _)) = self.commit.events.first()
            && now_s > self.state.last_indexed.0
        {
            self.commit.time_index = Some((now_s, *first));
            self.state.last_indexed = (now_s, *first);
        }
        let published = crate::messages::Published {
            // Set again when the batch is durable.
            committed_at: Instant::now(),
            events: self.published,
            decoded: self.decoded,
            second: self.state.last_indexed,
            reset: None,
        };
        (self.commit, published, self.host_commands, self.relayed)
    }
}
