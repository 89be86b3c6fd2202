//! The relay's shards: ingest (host connections, validation, cursors), the sequencer (the one place a
//! relay `seq` is assigned, group commits to RocksDB) and fanout (subscribers, replay, slow-consumer
//! policy). Each runs on a glommio executor; they talk only through SPSC `shared_channel` queues.
//!
//! This crate must not parse CLI flags or environment variables, or own the process: the `engine`
//! crate builds the configs and executors and calls the `run` functions here.

#![cfg_attr(not(test), deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod accounts;
pub mod backoff;
pub mod fanout;
pub mod health;
pub mod hosts;
pub mod identity;
pub mod ingest;
pub mod messages;
pub mod metrics;
pub mod net;
pub mod sequencer;
pub mod splitter;
pub mod stop;

pub use metrics::Metrics;

/// Wall-clock time in milliseconds since the UNIX epoch (0 if the clock is before it).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
