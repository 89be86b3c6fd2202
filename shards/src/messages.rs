//! What crosses executors: ingest → sequencer ([`IngestMsg`]) and sequencer → fanout
//! ([`PublishedBatch`]). Both travel over glommio `shared_channel` SPSC queues.

use std::sync::Arc;

use bytes::Bytes;
use wire::frame::Event;
use wire::{Cid, Did, HostSeq, RelaySeq};

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
    /// The decoded event; the sequencer replaces its `seq` and encodes it once.
    pub event: Event,
    /// For `#commit` and `#sync`: the commit it declares.
    pub commit: Option<CommitRef>,
    /// Ingest asked the host (`getRepoStatus`) and it says the account is active, although the relay
    /// had it inactive: the sequencer marks it active again (indigo #1161).
    pub confirmed_active: bool,
}

/// A message to the sequencer, from an ingest shard or the admin API.
// Events are the common case; boxing them would add an allocation per event.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum IngestMsg {
    /// A validated event to sequence.
    Event(AcceptedEvent),
    /// A host frame was fully processed without producing an event (dropped or informational): the
    /// host cursor may advance to `seq`.
    Cursor {
        /// The host.
        host: Arc<str>,
        /// The processed upstream `seq`.
        seq: HostSeq,
    },
    /// A `#sync` the ingest shard made by fetching the account's current commit from its host after
    /// the sequencer asked for a resync ([`ResyncRequest`]); it moves no host cursor.
    Resync(AcceptedEvent),
    /// An operator took the account down (`taken_down: true`) or reversed it: the sequencer records
    /// it and relays an `#account` event with the resulting status.
    Takedown {
        /// The account.
        did: Did,
        /// Down or reversed.
        taken_down: bool,
    },
}

/// Events persisted by one sequencer batch, in increasing relay `seq`, each as a complete websocket
/// binary frame (encoded once, shared by every subscriber of every fanout shard).
pub type PublishedBatch = Arc<Vec<(RelaySeq, Bytes)>>;

/// From the sequencer to the ingest shard of `host`: the account's chain broke (a `since` or
/// `prevData` the relay never stored), so fetch its current commit from the host and send it as a
/// `#sync` ([`IngestMsg::Resync`]).
#[derive(Debug, Clone)]
pub struct ResyncRequest {
    /// The account.
    pub did: Did,
    /// Its host.
    pub host: Arc<str>,
}
