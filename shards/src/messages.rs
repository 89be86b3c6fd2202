//! What crosses executors: ingest → sequencer ([`ToSequencer`]) and sequencer → fanout
//! ([`PublishedBatch`]). Both travel over glommio `shared_channel` SPSC queues.

use std::sync::Arc;

use bytes::Bytes;
use storage::ResumePoint;
use wire::frame::Event;
use wire::{Cid, Did, HostSeq, Hostname, RelaySeq};

/// The commit an accepted `#commit` or `#sync` moves the account to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitRef {
    /// CID of the commit object.
    pub commit: Cid,
    /// CID of its MST root (`data`).
    pub data: Cid,
}

/// An event that passed ingest validation, on its way to the sequencer.
#[derive(Debug, Clone)]
pub struct AcceptedEvent {
    /// The host it came from.
    pub host: Arc<str>,
    /// Its `seq` on that host.
    pub host_seq: HostSeq,
    /// Where the host resumes once this event is handed over (persisted with it: the frames the
    /// ingest read and has not handed over yet are its holes, see `ingest::session`). Default (0,
    /// no holes) for events that move nothing, e.g. in tests.
    pub resume: ResumePoint,
    /// The decoded event; the sequencer replaces its `seq` and encodes it once.
    pub event: Event,
    /// For `#commit` and `#sync`: the commit it declares.
    pub commit: Option<CommitRef>,
    /// Ingest asked the host (`getRepoStatus`) and it says the account is active, although the relay
    /// had it inactive: the sequencer marks it active again (indigo #1161).
    pub confirmed_active: bool,
    /// When ingest read the frame off the host's socket (`relay_ingest_to_durable_seconds`).
    pub received: std::time::Instant,
}

/// A message to the sequencer, from an ingest shard or the admin API.
// Events are the common case; boxing them would add an allocation per event.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum ToSequencer {
    /// A validated event to sequence.
    Event(AcceptedEvent),
    /// A host frame was fully processed without producing an event (dropped or informational):
    /// the host's resume point moves past it.
    Skipped {
        /// The host.
        host: Arc<str>,
        /// Where the host resumes now.
        resume: ResumePoint,
    },
    /// An operator took the account down (`taken_down: true`) or reversed it: the sequencer records
    /// it and relays an `#account` event with the resulting status.
    Takedown {
        /// The account.
        did: Did,
        /// Down or reversed.
        taken_down: bool,
    },
    /// An operator or `requestCrawl` changed a host: the sequencer forwards the command to the host's
    /// ingest shard.
    Host(HostCommand),
    /// From the host's ingest shard, after it stopped the host's connection for a
    /// [`HostCommand::ResetCursor`]: set the stored cursor to `cursor`, even backwards. It travels on
    /// the shard's own queue, so it comes after every event of the old connection and before any of
    /// the new one (the only way a host cursor moves backwards).
    CursorReset {
        /// The host.
        host: Arc<str>,
        /// The new cursor.
        cursor: HostSeq,
    },
}

/// A change to one upstream host, for the ingest shard that owns it ([`crate::ingest::shard_for_host`]).
/// The host's settings (`storage::HostConfig`) are already in the store when this is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostCommand {
    /// Subscribe to the host (new from `requestCrawl`, or unbanned), or reconnect it now when it is
    /// known but not connected (in backoff, offline or stopped). A connected host is left alone.
    Connect(Hostname),
    /// Close the host's connection and stop reconnecting it (admin kill or ban) until the next
    /// `Connect` or restart.
    Disconnect(Hostname),
    /// The host's settings changed (account limit, trusted): rebuild its rate limits.
    Reload(Hostname),
    /// Set the host's upstream cursor (recovering a host that reset its sequence, `FutureCursor`) and
    /// reconnect it from there.
    ResetCursor {
        /// The host.
        host: Hostname,
        /// The last upstream `seq` to treat as processed; the reconnect asks for events after it.
        cursor: HostSeq,
    },
}

impl HostCommand {
    /// The host it concerns.
    pub fn host(&self) -> &Hostname {
        match self {
            HostCommand::Connect(h) | HostCommand::Disconnect(h) | HostCommand::Reload(h) => h,
            HostCommand::ResetCursor { host, .. } => host,
        }
    }
}

/// Events persisted by one sequencer batch.
#[derive(Debug)]
pub struct Published {
    /// When the batch became durable.
    pub committed_at: std::time::Instant,
    /// The events in increasing relay `seq`, each as a complete websocket binary frame (encoded once,
    /// shared by every subscriber of every fanout shard).
    pub events: Vec<(RelaySeq, Bytes)>,
    /// The same events decoded (same order), for the Jetstream subscribers, which convert them to
    /// JSON once per fanout shard.
    pub decoded: Vec<Event>,
    /// The unix second of the batch's `time_index` entry and its first relay seq: every event of the
    /// batch has that entry's time ([`wire::jetstream::time_us`]).
    pub second: (u64, RelaySeq),
    /// A splitter's store was cut back to this seq (its upstream's sequence was reset, and the
    /// operator reset the cursor): the shard's head goes back to it and every subscriber is closed
    /// (its cursor is now in the future). `None` for every relay batch.
    pub reset: Option<RelaySeq>,
}

/// A [`Published`] batch, shared by the fanout shards.
pub type PublishedBatch = Arc<Published>;
