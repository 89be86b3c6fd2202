//! The seconds of a Jetstream replay chunk: the `time_index` entries covering its events, read with
//! the chunk off the executor, so that each replayed event gets the `time_us` it had live
//! ([`wire::jetstream::time_us`]).

use storage::{ReplayChunk, Store, StoreError};
use wire::RelaySeq;

/// The `time_index` entries (second, first relay seq) covering a chunk, sorted, and how far the
/// chunk's events have moved through them.
#[derive(Debug, Default)]
pub(crate) struct Seconds {
    entries: Vec<(u64, RelaySeq)>,
    at: usize,
}

impl Seconds {
    /// The entries covering `chunk` (none for an empty chunk).
    ///
    /// # Errors
    /// The store's.
    pub(crate) fn read(store: &Store, chunk: &ReplayChunk) -> Result<Self, StoreError> {
        let entries = match (chunk.events.first(), chunk.events.last()) {
            (Some((first, _)), Some((last, _))) => store.time_entries_covering(*first, *last)?,
            _ => Vec::new(),
        };
        Ok(Self { entries, at: 0 })
    }

    /// The second relay seq `seq` was committed in and that second's first seq; `seq`s are asked
    /// in increasing order. `(0, 0)` when no entry covers it.
    pub(crate) fn of(&mut self, seq: RelaySeq) -> (u64, u64) {
        while self.entries.get(self.at + 1).is_some_and(|(_, first)| *first <= seq) {
            self.at += 1;
        }
        self.entries.get(self.at).map_or((0, 0), |(s, f)| (*s, f.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_are_found_in_order() {
        let mut s = Seconds { entries: vec![(100, RelaySeq(1)), (101, RelaySeq(5)), (105, RelaySeq(9))], at: 0 };
        assert_eq!(s.of(RelaySeq(1)), (100, 1));
        assert_eq!(s.of(RelaySeq(4)), (100, 1));
        assert_eq!(s.of(RelaySeq(5)), (101, 5));
        assert_eq!(s.of(RelaySeq(20)), (105, 9));
        assert_eq!(Seconds::default().of(RelaySeq(3)), (0, 0));
    }
}
