//! `relay-bench`: a load generator and fanout-latency benchmark for any relay that serves
//! `com.atproto.sync.subscribeRepos`.
//!
//! It simulates a PLC directory ([`plc`]), a fleet of PDS hosts ([`host`]) fed by a generator of
//! signed, Sync 1.1-complete events ([`generator`]), and a fleet of subscribers ([`subscriber`]) that
//! measure end-to-end latency (scheduled send time, carried in each event's `rev` or `time`, to
//! receipt), loss and duplication; [`probe`] samples the relay process and its health endpoint;
//! [`report`] prints and records the results. Nothing here is needed by the relay's crates.

pub mod generator;
pub mod host;
pub mod jetstream_traffic;
pub mod plc;
pub mod probe;
pub mod report;
pub mod scan;
pub mod subscriber;

/// Microseconds since the UNIX epoch, now.
pub fn now_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}
