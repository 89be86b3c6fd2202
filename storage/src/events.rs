//! The event log: replay reads (bounded in events and bytes, hiding the earlier events of accounts
//! with a tombstone), the oldest retained seq, the time → seq index, retention trims, and the size of
//! the `events` column family on disk.

use bytes::Bytes;
use rocksdb::{CompactOptions, Direction, IteratorMode, WriteBatch, WriteOptions};
use wire::RelaySeq;

use crate::cf;
use crate::error::StoreError;
use crate::store::{META_LAST_SEQ, META_RETAINED_FROM, Store, be_u64, corrupt};

/// One replay read ([`Store::replay`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayChunk {
    /// Events to serve, in increasing seq.
    pub events: Vec<(RelaySeq, Bytes)>,
    /// The highest seq read, served or hidden: the next read starts after it. `None` when nothing
    /// is stored after the cursor.
    pub last_scanned: Option<RelaySeq>,
    /// Events read but not served: earlier events of accounts with a tombstone.
    pub hidden: usize,
}

impl Store {
    /// Reads events with `seq > after`, in order, up to `max_events` events or until `max_bytes` are
    /// gathered (at least one event when there is one, whatever its size). An event of an account
    /// with a tombstone at a higher seq is skipped (counted in [`ReplayChunk::hidden`]): takedowns and
    /// deletions leave replay at once, before retention removes the events.
    ///
    /// # Errors
    /// [`StoreError::Rocks`] or [`StoreError::Corrupt`].
    pub fn replay(&self, after: RelaySeq, max_events: usize, max_bytes: usize) -> Result<ReplayChunk, StoreError> {
        let start = after.0.saturating_add(1).max(self.retained_from()?.0).to_be_bytes();
        let tombstones = self.tombstones.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut chunk = ReplayChunk::default();
        let mut bytes = 0usize;
        let mode = IteratorMode::From(&start, Direction::Forward);
        for item in self.db.iterator_cf(self.cf(cf::EVENTS), mode) {
            let (k, v) = item?;
            let seq = be_u64(&k).ok_or_else(|| corrupt(cf::EVENTS, &k))?;
            chunk.last_scanned = Some(RelaySeq(seq));
            let hidden = !tombstones.is_empty()
                && wire::frame::peek_did(&v).and_then(|did| tombstones.get(did)).is_some_and(|t| seq < *t);
            if hidden {
                chunk.hidden += 1;
            } else {
                bytes += v.len();
                chunk.events.push((RelaySeq(seq), Bytes::from(Vec::from(v))));
            }
            if chunk.events.len() + chunk.hidden >= max_events || bytes >= max_bytes {
                break;
            }
        }
        Ok(chunk)
    }

    /// The lowest relay `seq` retention has not deleted (`RelaySeq(0)` when it deleted nothing),
    /// from memory.
    ///
    /// # Errors
    /// None today (kept fallible for callers that treat it as a store read).
    pub fn retained_from(&self) -> Result<RelaySeq, StoreError> {
        Ok(RelaySeq(self.retained_from.load(std::sync::atomic::Ordering::Acquire)))
    }

    /// `meta.retained_from` as stored, read once by [`Store::open`].
    pub(crate) fn read_retained_from(&self) -> Result<RelaySeq, StoreError> {
        match self.db.get_cf(self.cf(cf::META), META_RETAINED_FROM)? {
            Some(v) => Ok(RelaySeq(be_u64(&v).ok_or_else(|| corrupt(cf::META, META_RETAINED_FROM))?)),
            None => Ok(RelaySeq(0)),
        }
    }

    /// The lowest stored relay `seq`, or `None` when no event is stored.
    ///
    /// # Errors
    /// [`StoreError::Rocks`] or [`StoreError::Corrupt`].
    pub fn first_seq(&self) -> Result<Option<RelaySeq>, StoreError> {
        // Seek past what retention deleted instead of walking its range tombstone.
        let start = self.retained_from()?.0.to_be_bytes();
        let mode = IteratorMode::From(&start, Direction::Forward);
        match self.db.iterator_cf(self.cf(cf::EVENTS), mode).next() {
            Some(item) => {
                let (k, _) = item?;
                Ok(Some(RelaySeq(be_u64(&k).ok_or_else(|| corrupt(cf::EVENTS, &k))?)))
            }
            None => Ok(None),
        }
    }

    /// The newest second in `time_index`, if any.
    ///
    /// # Errors
    /// [`StoreError::Rocks`] or [`StoreError::Corrupt`].
    pub fn last_indexed_second(&self) -> Result<Option<u64>, StoreError> {
        match self.db.iterator_cf(self.cf(cf::TIME_INDEX), IteratorMode::End).next() {
            Some(item) => {
                let (k, _) = item?;
                Ok(Some(be_u64(&k).ok_or_else(|| corrupt(cf::TIME_INDEX, &k))?))
            }
            None => Ok(None),
        }
    }

    /// The first relay `seq` of the newest indexed second at or before `unix_s`: every event below it
    /// was committed before that second began. `None` when no indexed second is that old.
    ///
    /// # Errors
    /// [`StoreError::Rocks`] or [`StoreError::Corrupt`].
    pub fn seq_at(&self, unix_s: u64) -> Result<Option<RelaySeq>, StoreError> {
        let key = unix_s.to_be_bytes();
        let mode = IteratorMode::From(&key, Direction::Reverse);
        match self.db.iterator_cf(self.cf(cf::TIME_INDEX), mode).next() {
            Some(item) => {
                let (k, v) = item?;
                Ok(Some(RelaySeq(be_u64(&v).ok_or_else(|| corrupt(cf::TIME_INDEX, &k))?)))
            }
            None => Ok(None),
        }
    }

    /// The `time_index` entry of the newest indexed second at or before `unix_s`: `(second, first
    /// relay seq of that second)`. `None` when no indexed second is that old.
    ///
    /// # Errors
    /// [`StoreError::Rocks`] or [`StoreError::Corrupt`].
    pub fn time_entry_at(&self, unix_s: u64) -> Result<Option<(u64, RelaySeq)>, StoreError> {
        let key = unix_s.to_be_bytes();
        self.time_entry(IteratorMode::From(&key, Direction::Reverse))
    }

    /// The `time_index` entry of the oldest indexed second after `unix_s`, if any.
    ///
    /// # Errors
    /// [`StoreError::Rocks`] or [`StoreError::Corrupt`].
    pub fn time_entry_after(&self, unix_s: u64) -> Result<Option<(u64, RelaySeq)>, StoreError> {
        let key = unix_s.saturating_add(1).to_be_bytes();
        self.time_entry(IteratorMode::From(&key, Direction::Forward))
    }

    fn time_entry(&self, mode: IteratorMode<'_>) -> Result<Option<(u64, RelaySeq)>, StoreError> {
        match self.db.iterator_cf(self.cf(cf::TIME_INDEX), mode).next() {
            Some(item) => {
                let (k, v) = item?;
                let second = be_u64(&k).ok_or_else(|| corrupt(cf::TIME_INDEX, &k))?;
                Ok(Some((second, RelaySeq(be_u64(&v).ok_or_else(|| corrupt(cf::TIME_INDEX, &k))?))))
            }
            None => Ok(None),
        }
    }

    /// The `time_index` entries that give the seconds of relay seqs `from..=to`, in order: the entry
    /// with the greatest first seq at or below `from` (found by a binary search over the indexed
    /// seconds: about 20 seeks for a 72 h window), then every entry whose first seq is in
    /// `from + 1..=to`. Empty when nothing is indexed.
    ///
    /// # Errors
    /// [`StoreError::Rocks`] or [`StoreError::Corrupt`].
    pub fn time_entries_covering(&self, from: RelaySeq, to: RelaySeq) -> Result<Vec<(u64, RelaySeq)>, StoreError> {
        let Some((mut lo, _)) = self.time_entry(IteratorMode::Start)? else { return Ok(Vec::new()) };
        let Some((mut hi, _)) = self.time_entry(IteratorMode::End)? else { return Ok(Vec::new()) };
        // The greatest indexed second whose first seq is <= from (or the oldest one).
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            match self.time_entry_at(mid)? {
                Some((_, first)) if first <= from => lo = mid,
                _ => hi = mid - 1,
            }
        }
        // `lo` may fall between indexed seconds: start from the entry that covers it.
        let start = self.time_entry_at(lo)?.map_or(lo, |(s, _)| s).to_be_bytes();
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(cf::TIME_INDEX), IteratorMode::From(&start, Direction::Forward)) {
            let (k, v) = item?;
            let second = be_u64(&k).ok_or_else(|| corrupt(cf::TIME_INDEX, &k))?;
            let first = RelaySeq(be_u64(&v).ok_or_else(|| corrupt(cf::TIME_INDEX, &k))?);
            if !out.is_empty() && first > to {
                break;
            }
            out.push((second, first));
        }
        Ok(out)
    }

    /// Deletes every event with `seq < before` (a range delete), the `time_index` entries and
    /// tombstones it makes useless, and records `before` as `meta.retained_from`, in one synced
    /// batch; then drops the SST files wholly inside the range and compacts it, so the space comes
    /// back. Blocking, possibly for long: run it off the executors (the retention thread on the
    /// compaction core). Returns how many seqs the range covered that were still retained.
    ///
    /// # Errors
    /// [`StoreError::Rocks`] or [`StoreError::Corrupt`]; nothing is deleted when the batch fails.
    pub fn trim_before(&self, before: RelaySeq) -> Result<u64, StoreError> {
        let from = self.retained_from()?;
        if before <= from {
            return Ok(0);
        }
        let events = self.cf(cf::EVENTS);
        let mut wb = WriteBatch::default();
        wb.delete_range_cf(events, 0u64.to_be_bytes(), before.0.to_be_bytes());
        wb.put_cf(self.cf(cf::META), META_RETAINED_FROM, before.0.to_be_bytes());
        let index = self.cf(cf::TIME_INDEX);
        for item in self.db.iterator_cf(index, IteratorMode::Start) {
            let (k, v) = item?;
            // Entries grow with their key: stop at the first one still needed.
            if be_u64(&v).ok_or_else(|| corrupt(cf::TIME_INDEX, &k))? >= before.0 {
                break;
            }
            wb.delete_cf(index, k);
        }
        // Held from choosing the stale tombstones until they are deleted from memory: a group commit
        // writing a newer tombstone for one of them waits, and is not undone.
        let ordered = self.tombstone_writes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let stale: Vec<String> = {
            let map = self.tombstones.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            map.iter().filter(|(_, seq)| **seq <= before.0).map(|(did, _)| did.clone()).collect()
        };
        let tombstones = self.cf(cf::TOMBSTONES);
        for did in &stale {
            wb.delete_cf(tombstones, did);
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(self.sync_writes);
        self.db.write_opt(wb, &wo)?;
        self.retained_from.store(before.0, std::sync::atomic::Ordering::Release);
        {
            let mut map = self.tombstones.write().unwrap_or_else(std::sync::PoisonError::into_inner);
            for did in &stale {
                map.remove(did);
            }
        }
        drop(ordered);
        let (start, end) = (0u64.to_be_bytes(), before.0.to_be_bytes());
        // Files wholly inside the range go at once; the memtable (the newest events) is not flushed for
        // it: a range reaching into it is rare (a window shorter than a memtable's life), and its
        // tombstone drops those events when the memtable is flushed anyway.
        self.db.delete_file_in_range_cf(events, start, end)?;
        let mut compact = CompactOptions::default();
        // Automatic compactions (of new events) go on meanwhile.
        compact.set_exclusive_manual_compaction(false);
        self.db.compact_range_cf_opt(events, Some(start), Some(end), &compact);
        // Seqs start at 1.
        Ok(before.0 - from.0.max(1))
    }

    /// Deletes every event with `seq > after`, with the `time_index` entries and tombstones above it,
    /// and sets `meta.last_seq` to `after`, in one synced batch: a splitter's store after its
    /// upstream's sequence was reset below it (the operator's `resetCursor`). The relay never calls
    /// it (its seqs are never reused).
    ///
    /// # Errors
    /// [`StoreError::Rocks`] or [`StoreError::Corrupt`]; nothing is deleted when the batch fails.
    pub fn truncate_after(&self, after: RelaySeq) -> Result<(), StoreError> {
        let events = self.cf(cf::EVENTS);
        let mut wb = WriteBatch::default();
        wb.delete_range_cf(events, (after.0 + 1).to_be_bytes(), u64::MAX.to_be_bytes());
        wb.delete_cf(events, u64::MAX.to_be_bytes());
        wb.put_cf(self.cf(cf::META), META_LAST_SEQ, after.0.to_be_bytes());
        let index = self.cf(cf::TIME_INDEX);
        for item in self.db.iterator_cf(index, IteratorMode::End) {
            let (k, v) = item?;
            if be_u64(&v).ok_or_else(|| corrupt(cf::TIME_INDEX, &k))? <= after.0 {
                break;
            }
            wb.delete_cf(index, k);
        }
        let ordered = self.tombstone_writes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let above: Vec<String> = {
            let map = self.tombstones.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            map.iter().filter(|(_, seq)| **seq > after.0).map(|(did, _)| did.clone()).collect()
        };
        for did in &above {
            wb.delete_cf(self.cf(cf::TOMBSTONES), did);
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(wb, &wo)?;
        let mut map = self.tombstones.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        for did in &above {
            map.remove(did);
        }
        drop(map);
        drop(ordered);
        Ok(())
    }

    /// Bytes the `events` column family takes: its live SST files plus its memtables.
    ///
    /// # Errors
    /// [`StoreError::Rocks`].
    pub fn events_disk_bytes(&self) -> Result<u64, StoreError> {
        let events = self.cf(cf::EVENTS);
        let sst = self.db.property_int_value_cf(events, "rocksdb.live-sst-files-size")?.unwrap_or(0);
        let mem = self.db.property_int_value_cf(events, "rocksdb.size-all-mem-tables")?.unwrap_or(0);
        Ok(sst + mem)
    }

    /// Whether replay hides event `seq` of `did` (the account has a tombstone above it).
    pub fn hides(&self, did: &str, seq: RelaySeq) -> bool {
        let map = self.tombstones.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(did).is_some_and(|t| seq.0 < *t)
    }

    /// Accounts with a tombstone.
    pub fn tombstone_count(&self) -> usize {
        self.tombstones.read().unwrap_or_else(std::sync::PoisonError::into_inner).len()
    }

    /// Loads the `tombstones` column family into memory (at open).
    pub(crate) fn load_tombstones(&self) -> Result<(), StoreError> {
        let mut map = std::collections::HashMap::new();
        for item in self.db.iterator_cf(self.cf(cf::TOMBSTONES), IteratorMode::Start) {
            let (k, v) = item?;
            let did = String::from_utf8(k.to_vec()).map_err(|_| corrupt(cf::TOMBSTONES, &k))?;
            map.insert(did, be_u64(&v).ok_or_else(|| corrupt(cf::TOMBSTONES, &k))?);
        }
        *self.tombstones.write().unwrap_or_else(std::sync::PoisonError::into_inner) = map;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CommitBatch, StoreOptions};
    use wire::Did;
    use wire::frame::{AccountEvent, Event};

    fn frame(seq: u64, did: &str) -> Bytes {
        let ev = Event::Account(AccountEvent {
            seq: seq as i64,
            did: Did::new(did).unwrap(),
            time: "2026-01-01T00:00:00Z".into(),
            active: true,
            status: None,
        });
        Bytes::from(ev.encode().unwrap())
    }

    fn seqs(chunk: &ReplayChunk) -> Vec<u64> {
        chunk.events.iter().map(|(s, _)| s.0).collect()
    }

    /// Retention deleting an account's old tombstone while a group commit writes a newer one for the
    /// same account: the newer one survives, in memory and on disk, whichever comes first.
    #[test]
    fn a_tombstone_written_during_a_trim_survives_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(
            Store::open(dir.path(), &StoreOptions { sync_writes: false, ..Default::default() }).unwrap(),
        );
        let mut seq = 0u64;
        for round in 0..150u64 {
            let did = format!("did:plc:race{round:0>20}");
            let tombstone = |seq: u64| CommitBatch {
                events: vec![(RelaySeq(seq), frame(seq, &did))],
                tombstones: vec![(Did::new(did.clone()).unwrap(), RelaySeq(seq))],
                ..Default::default()
            };
            seq += 1;
            // Many stale tombstones make the trim's window (choose, write, forget) wide.
            let mut batch = tombstone(seq);
            batch
                .tombstones
                .extend((0..2_000).map(|i| (Did::new(format!("did:plc:other{round}x{i}")).unwrap(), RelaySeq(seq))));
            store.commit(&batch).unwrap();
            let trimming = {
                let store = std::sync::Arc::clone(&store);
                let before = RelaySeq(seq + 1);
                std::thread::spawn(move || store.trim_before(before).unwrap())
            };
            seq += 2;
            store.commit(&tombstone(seq)).unwrap();
            trimming.join().unwrap();
            assert!(store.hides(&did, RelaySeq(seq - 1)), "round {round}: the newer tombstone is in memory");
        }
        drop(store);
        // Each round's trim passes the previous round's tombstones (stale by then); the last one is on
        // disk.
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        assert!(store.hides(&format!("did:plc:race{:0>20}", 149), RelaySeq(seq - 1)), "and on disk");
    }

    #[test]
    fn replay_is_bounded_trims_and_hides_tombstoned_accounts() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let (a, b) = ("did:plc:aaaaaaaaaaaaaaaaaaaaaaaa", "did:plc:bbbbbbbbbbbbbbbbbbbbbbbb");
        for (second, range) in [(100u64, 1..=4u64), (101, 5..=8), (105, 9..=10)] {
            let batch = CommitBatch {
                events: range.clone().map(|s| (RelaySeq(s), frame(s, if s % 2 == 0 { a } else { b }))).collect(),
                time_index: Some((second, RelaySeq(*range.start()))),
                ..CommitBatch::default()
            };
            store.commit(&batch).unwrap();
        }
        assert_eq!(seqs(&store.replay(RelaySeq(0), 3, usize::MAX).unwrap()), [1, 2, 3]);
        let one = store.replay(RelaySeq(0), 100, 1).unwrap();
        assert_eq!(seqs(&one), [1], "a byte bound still gives one event");
        assert_eq!(store.last_indexed_second().unwrap(), Some(105));
        assert_eq!(store.seq_at(99).unwrap(), None);
        assert_eq!(store.seq_at(101).unwrap(), Some(RelaySeq(5)));
        assert_eq!(store.seq_at(104).unwrap(), Some(RelaySeq(5)));
        assert_eq!(store.time_entry_at(104).unwrap(), Some((101, RelaySeq(5))));
        assert_eq!(store.time_entry_after(101).unwrap(), Some((105, RelaySeq(9))));
        assert_eq!(store.time_entry_after(105).unwrap(), None);
        let covering = |from, to| store.time_entries_covering(RelaySeq(from), RelaySeq(to)).unwrap();
        assert_eq!(covering(1, 1), [(100, RelaySeq(1))]);
        assert_eq!(covering(3, 9), [(100, RelaySeq(1)), (101, RelaySeq(5)), (105, RelaySeq(9))]);
        assert_eq!(covering(6, 8), [(101, RelaySeq(5))]);
        assert_eq!(covering(10, 10), [(105, RelaySeq(9))]);

        // A tombstone for `a` at seq 8: its events 2, 4, 6 leave replay; 8 (the event) and later stay.
        store
            .commit(&CommitBatch { tombstones: vec![(Did::new(a).unwrap(), RelaySeq(8))], ..Default::default() })
            .unwrap();
        let all = store.replay(RelaySeq(0), 100, usize::MAX).unwrap();
        assert_eq!((seqs(&all), all.hidden, all.last_scanned), (vec![1, 3, 5, 7, 8, 9, 10], 3, Some(RelaySeq(10))));
        assert!(store.hides(a, RelaySeq(6)) && !store.hides(a, RelaySeq(8)) && !store.hides(b, RelaySeq(1)));

        // Trim before 5: events 1-4 and the index entry of second 100 go; the tombstone (8) stays.
        assert_eq!(store.trim_before(RelaySeq(5)).unwrap(), 4);
        assert_eq!(store.first_seq().unwrap(), Some(RelaySeq(5)));
        assert_eq!(seqs(&store.replay(RelaySeq(0), 100, usize::MAX).unwrap()), [5, 7, 8, 9, 10]);
        assert_eq!(store.seq_at(100).unwrap(), None);
        assert_eq!(store.tombstone_count(), 1);
        // Trim past the tombstone: it is no longer needed, and it stays gone after a reopen.
        store.trim_before(RelaySeq(9)).unwrap();
        assert_eq!(store.tombstone_count(), 0);
        assert_eq!(store.trim_before(RelaySeq(9)).unwrap(), 0, "nothing left to trim");
        drop(store);
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        assert_eq!((store.tombstone_count(), store.retained_from().unwrap()), (0, RelaySeq(9)));
        assert_eq!(seqs(&store.replay(RelaySeq(3), 100, usize::MAX).unwrap()), [9, 10]);
        assert_eq!(store.last_seq().unwrap(), Some(RelaySeq(10)));
        assert!(store.events_disk_bytes().unwrap() > 0);
    }
}
