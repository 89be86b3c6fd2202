//! A data directory filled before the relay starts (`--prefill-events`): real `#commit` frames (one
//! signed commit of a simulated account, its `seq` rewritten per event) written straight to the
//! store with `time_index` entries as if the relay had committed them `--prefill-rate` per second,
//! ending `--prefill-age` seconds ago. With `--relay-arg=--retention=…` shorter than that age, the
//! relay's retention deletes them all while the run's traffic arrives (the deletion-under-ingest
//! measurement); without, they are a store to replay (the replay-under-live measurement).

use std::path::Path;
use std::time::Instant;

use bytes::Bytes;
use storage::{CommitBatch, Store, StoreOptions};
use wire::RelaySeq;
use wire::frame::Event;
use wire::testkit::{Op, Signer, SigningKey, SimAccount};

/// What a prefill wrote.
#[derive(Debug, Clone, Copy)]
pub struct Prefilled {
    /// Events written (relay seqs 1..=events).
    pub events: u64,
    /// Bytes of frames written.
    pub bytes: u64,
    /// Seconds it took.
    pub secs: f64,
}

/// Writes `events` frames of about `record_bytes` each into a new store at `dir`, `rate` per second
/// of `time_index`, the last second `age_s` before now.
///
/// # Errors
/// When the store cannot be opened or written.
pub fn prefill(dir: &Path, events: u64, rate: u64, age_s: u64, record_bytes: usize) -> anyhow::Result<Prefilled> {
    let t0 = Instant::now();
    let store = Store::open(dir, &StoreOptions { sync_writes: false, ..StoreOptions::default() })?;
    let did = wire::Did::new("did:plc:prefill000000000000000000")?;
    let mut acct = SimAccount::new(did, SigningKey::k256(7), crate::now_us().saturating_sub(age_s * 1_000_000));
    let path = format!("app.bsky.feed.post/{}", acct.next_rkey());
    let mut event = Event::Commit(acct.commit(1, &[Op::Create { path, bytes: record_bytes }], &Signer::Own));
    let rate = rate.max(1);
    let seconds = events.div_ceil(rate);
    let mut written = 0u64;
    let mut bytes = 0u64;
    let mut batch = CommitBatch::default();
    for seq in 1..=events {
        event.set_seq(seq as i64);
        let frame = event.encode()?;
        bytes += frame.len() as u64;
        batch.events.push((RelaySeq(seq), Bytes::from(frame)));
        if batch.events.len() == 10_000 || seq == events {
            written += batch.events.len() as u64;
            store.commit(&std::mem::take(&mut batch))?;
        }
    }
    // The time index last, dated from now: the age counts from the end of the prefill, however long
    // writing took.
    let first_second = (crate::now_us() / 1_000_000).saturating_sub(age_s + seconds.saturating_sub(1));
    for second in 0..seconds {
        let entry = Some((first_second + second, RelaySeq(second * rate + 1)));
        store.commit(&CommitBatch { time_index: entry, ..Default::default() })?;
    }
    Ok(Prefilled { events: written, bytes, secs: t0.elapsed().as_secs_f64() })
}
