//! Counters and gauges the shards update, as `prometheus-client` handles.
//!
//! The engine builds one [`Metrics`], registers it in its registry with [`Metrics::register`] and
//! hands clones to every shard; the handles are atomics shared across executors. Names follow
//! `relay_<thing>_<unit|total>`; labels come from bounded enums only.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use wire::DropReason;

/// A single static label, e.g. `reason="bad_signature"`.
pub type Label = Vec<(&'static str, &'static str)>;

/// All metrics of the shards.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// `relay_events_dropped_total{reason}`: events from hosts not relayed, by [`DropReason`].
    pub events_dropped: Family<Label, Counter>,
    /// `relay_lexicon_tolerated_total{field}`: frames from hosts relayed after a repair that makes
    /// them match the lexicon: a `#commit` that omitted `tooBig`, `rebase` or `blobs` (written with
    /// `false`, `false`, `[]`), an `#identity` whose `handle` is not handle syntax (relayed without
    /// it: `handle`).
    pub lexicon_tolerated: Family<Label, Counter>,
    /// `relay_sync_tolerated_total{reason}`: commits accepted with a quirk the lexicon allows
    /// (`since_null`, `no_prev_data`; see `accounts::Tolerated`).
    pub sync_tolerated: Family<Label, Counter>,
    /// `relay_sync_violations_total{reason}`: commits whose Sync 1.1 proof failed (op CIDs against
    /// the signed MST, the inversion to `prevData`), relayed because of `--lenient-sync`.
    pub sync_violations: Family<Label, Counter>,
    /// `relay_upstream_error_frames_total{error}`: error frames hosts sent (each ends its connection),
    /// by error name (`FutureCursor`, `ConsumerTooSlow`, `other`).
    pub upstream_error_frames: Family<Label, Counter>,
    /// `relay_sync_discontinuities_total{reason}`: valid commits relayed although their `since` or
    /// `prevData` does not continue the account's stored state (`prev_data`, `since`, `unchained`;
    /// proposal 0006: relays pass them through and keep track of them).
    pub sync_discontinuities: Family<Label, Counter>,
    /// `relay_upstream_frames_total{type}`: websocket messages received from hosts, by frame type
    /// (`commit`, `sync`, `identity`, `account`, `info`, `error`, `other`).
    pub upstream_frames: Family<Label, Counter>,
    /// `relay_events_relayed_total{type}`: events given a relay `seq` and persisted, by type
    /// (`commit`, `sync`, `identity`, `account`).
    pub events_relayed: Family<Label, Counter>,
    /// `relay_upstream_bytes_total`: bytes of websocket messages received from hosts.
    pub upstream_bytes: Counter,
    /// `relay_subscriber_bytes_total`: bytes written to subscribers (frames, pongs, closes).
    pub subscriber_bytes: Counter,
    /// `relay_validation_seconds`: time to decide one frame from a host (decode, checks, identity,
    /// signature), waits for an unreachable directory excluded.
    pub validation_seconds: Histogram,
    /// `relay_ingest_to_durable_seconds`: from reading an event off a host's socket to its group
    /// commit being durable.
    pub ingest_to_durable_seconds: Histogram,
    /// `relay_batch_events`: events per group commit.
    pub batch_events: Histogram,
    /// `relay_commit_seconds`: time of one group commit (the RocksDB write, with its fsync under
    /// `--fsync always`).
    pub commit_seconds: Histogram,
    /// `relay_fanout_delay_seconds`: from a batch being durable to its last event written to a live
    /// subscriber's socket (one observation per write).
    pub fanout_delay_seconds: Histogram,
    /// `relay_ingest_queue_depth`: messages waiting in the ingest → sequencer queues.
    pub ingest_queue_depth: Gauge,
    /// `relay_fanout_queue_depth`: batches waiting in the sequencer → fanout queues (all shards).
    pub fanout_queue_depth: Gauge,
    /// `relay_identity_fetch_seconds`: time of one identity fetch from the directory or a `did:web`
    /// server (all attempts).
    pub identity_fetch_seconds: Histogram,
    /// `relay_upstream_disconnects_total{reason}`: host connections that ended (`host_closed`,
    /// `error`, `idle`, `future_cursor`).
    pub upstream_disconnects: Family<Label, Counter>,
    /// `relay_last_seq`: the highest relay `seq` assigned.
    pub last_seq: Gauge,
    /// `relay_upstream_connects_total{result}`: connection attempts to hosts (`ok`, `error`).
    pub upstream_connects: Family<Label, Counter>,
    /// `relay_upstream_connected`: hosts with an open firehose connection.
    pub upstream_connected: Gauge,
    /// `relay_identity_lookups_total{result}`: identity lookups (`cache`, `resolved`, `stale` (an
    /// expired entry used because the directory could not be reached), `failed`, `unreachable`,
    /// `joined` (waited for a fetch of the same DID already under way, counted once by its owner)).
    pub identity_lookups: Family<Label, Counter>,
    /// `relay_subscribers`: connected subscribers.
    pub subscribers: Gauge,
    /// `relay_subscribers_by_lag{lag, shard}`: subscribers by how far behind they are: live ones by
    /// how long the oldest frame in their queue has waited (`within_1s`, `within_10s`,
    /// `within_60s`, `over_60s`), and those reading from the store (`replaying`), per fanout shard.
    pub subscribers_by_lag: Family<Vec<(&'static str, String)>, Gauge>,
    /// `relay_accept_errors_total{kind}`: failed `accept`s on the API listener (`out_of_fds`,
    /// `out_of_memory`, `other`); the listener backs off while they last.
    pub accept_errors: Family<Label, Counter>,
    /// `relay_subscribers_closed_total{reason}`: subscribers disconnected (`consumer_too_slow`,
    /// `future_cursor`, `client_closed`, `write_error`).
    pub subscribers_closed: Family<Label, Counter>,
    /// `relay_subscriber_fallbacks_total`: live subscribers whose queue overflowed and who went back
    /// to reading from the store.
    pub subscriber_fallbacks: Counter,
    /// `relay_replay_events_total`: events served from the store (cursor replay and fallbacks).
    pub replay_events: Counter,
    /// `relay_replay_hidden_total`: stored events replay skipped because their account has a
    /// tombstone (taken down or deleted after them).
    pub replay_hidden: Counter,
    /// `relay_outdated_cursors_total`: `#info OutdatedCursor` frames sent (a cursor, or a fallen-back
    /// subscriber, older than the retention window).
    pub outdated_cursors: Counter,
    /// `relay_jetstream_subscribers{endpoint}`: Jetstream subscribers connected (`v1`: `/subscribe`,
    /// `v2`: `network.bsky.jetstream.subscribeEvents`).
    pub jetstream_subscribers: Family<Label, Gauge>,
    /// `relay_jetstream_messages_total{endpoint}`: Jetstream messages written (one per record
    /// operation, identity, account or sync event), live and replayed.
    pub jetstream_messages: Family<Label, Counter>,
    /// `relay_jetstream_encoded_total{encoding}`: Jetstream messages encoded by fanout shards
    /// (`v1`, `v2`, `v1_zstd`, `v2_zstd`): once per event per shard for live delivery, however many
    /// subscribers get it; per subscriber in replay.
    pub jetstream_encoded: Family<Label, Counter>,
    /// `relay_jetstream_unconvertible_records_total`: records sent without `record` because they
    /// have no atproto JSON form (a float, a missing block).
    pub jetstream_unconvertible: Counter,
    /// `relay_batch_commits_total`: RocksDB group commits by the sequencer.
    pub batch_commits: Counter,
    /// `relay_disk_free_bytes`: free bytes of the data directory's filesystem, measured before each
    /// group commit.
    pub disk_free_bytes: Gauge,
    /// `relay_disk_paused`: 1 while the sequencer waits for free disk space (`--min-free-disk`).
    pub disk_paused: Gauge,
    /// `relay_retention_trimmed_total{reason}`: seqs deleted by retention (`age`: older than
    /// `--retention`; `disk`: over `--max-disk`).
    pub retention_trimmed: Family<Label, Counter>,
    /// `relay_events_oldest_seq`: the oldest relay seq still stored (the start of the replay
    /// window), measured by each retention pass.
    pub events_oldest_seq: Gauge,
    /// `relay_events_disk_bytes`: bytes the stored events take (live SST files and memtables),
    /// measured by each retention pass.
    pub events_disk_bytes: Gauge,
    /// `relay_data_dir_bytes`: bytes the whole data directory takes on disk (every file, allocated
    /// blocks, what `du` counts: SST files of every column family, write-ahead log, RocksDB's own
    /// files), measured every second by the retention thread; what `--max-disk` bounds.
    pub data_dir_bytes: Gauge,
    /// `relay_wal_bytes`: bytes of write-ahead log files in the data directory (bounded by
    /// `--max-wal-size`), measured with `relay_data_dir_bytes`.
    pub wal_bytes: Gauge,
    /// `relay_tombstones`: accounts whose earlier events are hidden from replay (takedowns and
    /// deletions inside the retention window).
    pub tombstones: Gauge,
    /// `relay_upstream_rate_limited_total`: frames held back by their host's rate limit (each counted
    /// once however long it waited).
    pub upstream_rate_limited: Counter,
    /// `relay_upstream_waits_total{dependency}`: frames whose host paused because a dependency could
    /// not be reached (`plc_directory`, `did_web`), each counted once however long it waited.
    pub upstream_waits: Family<Label, Counter>,
    /// `relay_host_changes_total{change}`: host table changes (`added`, `future_cursor`,
    /// `relay_loop`, `banned`, `unbanned`, `killed`, `cursor_reset`).
    pub host_changes: Family<Label, Counter>,
    /// `relay_request_crawl_total{result}`: `requestCrawl` calls (public and admin) by outcome (`added`,
    /// `reconnected`, `known`, `invalid`, `banned`, `disabled`, `quota`, `unreachable`).
    pub request_crawl: Family<Label, Counter>,
}

/// Buckets for durations in seconds: 10 µs to ~84 s, doubling.
fn seconds_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.000_01, 2.0, 24))
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            events_dropped: Family::default(),
            lexicon_tolerated: Family::default(),
            sync_tolerated: Family::default(),
            sync_violations: Family::default(),
            sync_discontinuities: Family::default(),
            upstream_error_frames: Family::default(),
            upstream_frames: Family::default(),
            events_relayed: Family::default(),
            upstream_bytes: Counter::default(),
            subscriber_bytes: Counter::default(),
            validation_seconds: seconds_buckets(),
            ingest_to_durable_seconds: seconds_buckets(),
            batch_events: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            commit_seconds: seconds_buckets(),
            fanout_delay_seconds: seconds_buckets(),
            ingest_queue_depth: Gauge::default(),
            fanout_queue_depth: Gauge::default(),
            identity_fetch_seconds: seconds_buckets(),
            upstream_disconnects: Family::default(),
            last_seq: Gauge::default(),
            upstream_connects: Family::default(),
            upstream_connected: Gauge::default(),
            identity_lookups: Family::default(),
            subscribers: Gauge::default(),
            subscribers_by_lag: Family::default(),
            accept_errors: Family::default(),
            subscribers_closed: Family::default(),
            subscriber_fallbacks: Counter::default(),
            replay_events: Counter::default(),
            replay_hidden: Counter::default(),
            outdated_cursors: Counter::default(),
            jetstream_subscribers: Family::default(),
            jetstream_messages: Family::default(),
            jetstream_encoded: Family::default(),
            jetstream_unconvertible: Counter::default(),
            batch_commits: Counter::default(),
            disk_free_bytes: Gauge::default(),
            disk_paused: Gauge::default(),
            retention_trimmed: Family::default(),
            events_oldest_seq: Gauge::default(),
            events_disk_bytes: Gauge::default(),
            data_dir_bytes: Gauge::default(),
            wal_bytes: Gauge::default(),
            tombstones: Gauge::default(),
            upstream_rate_limited: Counter::default(),
            upstream_waits: Family::default(),
            host_changes: Family::default(),
            request_crawl: Family::default(),
        }
    }
}

impl Metrics {
    /// Registers every metric in `registry` (prefix-free names; the engine adds none).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "relay_events_dropped",
            "Events from hosts not relayed, by reason",
            self.events_dropped.clone(),
        );
        registry.register(
            "relay_lexicon_tolerated",
            "Commits that omitted a required field the network tolerates",
            self.lexicon_tolerated.clone(),
        );
        registry.register(
            "relay_sync_tolerated",
            "Commits accepted with a quirk the lexicon allows, by reason",
            self.sync_tolerated.clone(),
        );
        registry.register(
            "relay_sync_violations",
            "Commits whose Sync 1.1 proof failed, relayed because of --lenient-sync",
            self.sync_violations.clone(),
        );
        registry.register(
            "relay_upstream_error_frames",
            "Error frames hosts sent (each ends its connection), by error name",
            self.upstream_error_frames.clone(),
        );
        registry.register(
            "relay_sync_discontinuities",
            "Valid commits relayed although their since or prevData does not continue the stored state, by reason",
            self.sync_discontinuities.clone(),
        );
        registry.register(
            "relay_upstream_frames",
            "Websocket messages received from hosts, by frame type",
            self.upstream_frames.clone(),
        );
        registry.register(
            "relay_events_relayed",
            "Events sequenced and persisted, by type",
            self.events_relayed.clone(),
        );
        registry.register("relay_upstream_bytes", "Bytes received from hosts", self.upstream_bytes.clone());
        registry.register("relay_subscriber_bytes", "Bytes written to subscribers", self.subscriber_bytes.clone());
        registry.register(
            "relay_validation_seconds",
            "Time to decide one frame from a host",
            self.validation_seconds.clone(),
        );
        registry.register(
            "relay_ingest_to_durable_seconds",
            "From reading an event off a host's socket to its group commit being durable",
            self.ingest_to_durable_seconds.clone(),
        );
        registry.register("relay_batch_events", "Events per group commit", self.batch_events.clone());
        registry.register(
            "relay_commit_seconds",
            "Time of one group commit, fsync included",
            self.commit_seconds.clone(),
        );
        registry.register(
            "relay_fanout_delay_seconds",
            "From a batch being durable to its events written to a live subscriber",
            self.fanout_delay_seconds.clone(),
        );
        registry.register(
            "relay_ingest_queue_depth",
            "Messages waiting in the ingest to sequencer queues",
            self.ingest_queue_depth.clone(),
        );
        registry.register(
            "relay_fanout_queue_depth",
            "Batches waiting in the sequencer to fanout queues",
            self.fanout_queue_depth.clone(),
        );
        registry.register(
            "relay_identity_fetch_seconds",
            "Time of one identity fetch, all attempts",
            self.identity_fetch_seconds.clone(),
        );
        registry.register(
            "relay_upstream_disconnects",
            "Host connections that ended, by reason",
            self.upstream_disconnects.clone(),
        );
        registry.register("relay_last_seq", "Highest relay seq assigned", self.last_seq.clone());
        registry.register(
            "relay_upstream_connects",
            "Connection attempts to hosts, by result",
            self.upstream_connects.clone(),
        );
        registry.register(
            "relay_upstream_connected",
            "Hosts with an open firehose connection",
            self.upstream_connected.clone(),
        );
        registry.register(
            "relay_identity_lookups",
            "Identity lookups, by where they were answered",
            self.identity_lookups.clone(),
        );
        registry.register("relay_subscribers", "Connected subscribers", self.subscribers.clone());
        registry.register(
            "relay_subscribers_by_lag",
            "Subscribers by how far behind they are, per fanout shard",
            self.subscribers_by_lag.clone(),
        );
        registry.register(
            "relay_accept_errors",
            "Failed accepts on the API listener, by kind",
            self.accept_errors.clone(),
        );
        registry.register(
            "relay_subscribers_closed",
            "Subscribers disconnected, by reason",
            self.subscribers_closed.clone(),
        );
        registry.register("relay_batch_commits", "RocksDB group commits by the sequencer", self.batch_commits.clone());
        registry.register(
            "relay_disk_free_bytes",
            "Free bytes of the data directory's filesystem",
            self.disk_free_bytes.clone(),
        );
        registry.register(
            "relay_disk_paused",
            "1 while the sequencer waits for free disk space",
            self.disk_paused.clone(),
        );
        registry.register(
            "relay_retention_trimmed",
            "Seqs deleted by retention, by reason",
            self.retention_trimmed.clone(),
        );
        registry.register("relay_events_oldest_seq", "Oldest relay seq still stored", self.events_oldest_seq.clone());
        registry.register("relay_events_disk_bytes", "Bytes the stored events take", self.events_disk_bytes.clone());
        registry.register(
            "relay_data_dir_bytes",
            "Bytes the whole data directory takes on disk (as du counts them)",
            self.data_dir_bytes.clone(),
        );
        registry.register("relay_wal_bytes", "Bytes of write-ahead log in the data directory", self.wal_bytes.clone());
        registry.register(
            "relay_tombstones",
            "Accounts whose earlier events are hidden from replay",
            self.tombstones.clone(),
        );
        registry.register(
            "relay_upstream_rate_limited",
            "Events held back by their host's rate limit",
            self.upstream_rate_limited.clone(),
        );
        registry.register(
            "relay_upstream_waits",
            "Frames whose host paused for an unreachable dependency",
            self.upstream_waits.clone(),
        );
        registry.register("relay_host_changes", "Host table changes, by kind", self.host_changes.clone());
        registry.register("relay_request_crawl", "requestCrawl calls, by outcome", self.request_crawl.clone());
        registry.register(
            "relay_subscriber_fallbacks",
            "Live subscribers whose queue overflowed and who went back to reading from the store",
            self.subscriber_fallbacks.clone(),
        );
        registry.register("relay_replay_events", "Events served from the store", self.replay_events.clone());
        registry.register(
            "relay_replay_hidden",
            "Stored events replay skipped for a takedown or deletion after them",
            self.replay_hidden.clone(),
        );
        registry.register("relay_outdated_cursors", "OutdatedCursor info frames sent", self.outdated_cursors.clone());
        registry.register(
            "relay_jetstream_subscribers",
            "Jetstream subscribers connected, by endpoint",
            self.jetstream_subscribers.clone(),
        );
        registry.register(
            "relay_jetstream_messages",
            "Jetstream messages written, by endpoint",
            self.jetstream_messages.clone(),
        );
        registry.register(
            "relay_jetstream_encoded",
            "Jetstream messages encoded, by encoding",
            self.jetstream_encoded.clone(),
        );
        registry.register(
            "relay_jetstream_unconvertible_records",
            "Records sent without a JSON form",
            self.jetstream_unconvertible.clone(),
        );
        for endpoint in ["v1", "v2"] {
            let _ = self.jetstream_subscribers.get_or_create(&vec![("endpoint", endpoint)]);
        }
        // Pre-create every drop reason so a zero is visible, not an absent series.
        for reason in DropReason::ALL {
            let _ = self.events_dropped.get_or_create(&vec![("reason", reason.as_str())]);
        }
        // Every bounded label value up front: a dashboard finds a zero, not an absent series.
        let families: [(&Family<Label, Counter>, &'static str, &[&'static str]); 14] = [
            (&self.jetstream_messages, "endpoint", &["v1", "v2"]),
            (&self.jetstream_encoded, "encoding", &["v1", "v2", "v1_zstd", "v2_zstd"]),
            (&self.events_relayed, "type", &["commit", "sync", "identity", "account"]),
            (&self.lexicon_tolerated, "field", &["tooBig", "rebase", "blobs", "handle"]),
            (
                &self.sync_violations,
                "reason",
                &["op_cid_mismatch", "missing_mst_block", "bad_mst", "inversion_mismatch"],
            ),
            (&self.upstream_frames, "type", &["commit", "sync", "identity", "account", "info", "error", "other"]),
            (&self.upstream_connects, "result", &["ok", "error"]),
            (&self.identity_lookups, "result", &["cache", "resolved", "stale", "failed", "unreachable", "joined"]),
            (&self.accept_errors, "kind", &["out_of_fds", "out_of_memory", "other"]),
            (
                &self.host_changes,
                "change",
                &["added", "future_cursor", "relay_loop", "banned", "unbanned", "killed", "cursor_reset"],
            ),
            (
                &self.request_crawl,
                "result",
                &[
                    "added",
                    "reconnected",
                    "known",
                    "invalid",
                    "banned",
                    "disabled",
                    "quota",
                    "unreachable",
                    "busy",
                    "error",
                ],
            ),
            (
                &self.upstream_disconnects,
                "reason",
                &["host_closed", "error", "idle", "future_cursor", "error_frame", "malformed_frame"],
            ),
            (&self.upstream_error_frames, "error", &crate::ingest::ERROR_FRAME_LABELS),
            (&self.retention_trimmed, "reason", &["age", "disk"]),
        ];
        for (family, key, values) in families {
            for value in values {
                let _ = family.get_or_create(&vec![(key, *value)]);
            }
        }
        for reason in crate::accounts::Tolerated::ALL {
            let _ = self.sync_tolerated.get_or_create(&vec![("reason", reason.as_str())]);
        }
        // From the enums themselves: a new end or outage is on the dashboard before it first happens.
        for end in crate::fanout::End::ALL {
            let _ = self.subscribers_closed.get_or_create(&vec![("reason", end.as_str())]);
        }
        for outage in crate::ingest::process::Outage::ALL {
            let _ = self.upstream_waits.get_or_create(&vec![("dependency", outage.as_str())]);
        }
        for reason in crate::accounts::Discontinuity::ALL {
            let _ = self.sync_discontinuities.get_or_create(&vec![("reason", reason.as_str())]);
        }
    }

    /// Counts one dropped event.
    pub fn drop_event(&self, reason: DropReason) {
        self.events_dropped.get_or_create(&vec![("reason", reason.as_str())]).inc();
    }

    /// Adds `n` to `family{key=value}`.
    pub fn inc_by(family: &Family<Label, Counter>, key: &'static str, value: &'static str, n: u64) {
        family.get_or_create(&vec![(key, value)]).inc_by(n);
    }

    /// Increments `family{key=value}`.
    pub fn inc(family: &Family<Label, Counter>, key: &'static str, value: &'static str) {
        family.get_or_create(&vec![(key, value)]).inc();
    }
}
