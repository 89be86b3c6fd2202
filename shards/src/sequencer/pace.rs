//! How often a group commit may start: the trade between CPU and latency at low load.
//!
//! Each group commit costs one `fdatasync` of the write-ahead log, one hand-off to the blocking
//! thread and back, and one wake-up of every fanout shard, whatever its size. Under load the next
//! batch fills while the previous one is being made durable, so commits are few and large by
//! themselves; below that (the network's ~600-2,000 events/s) every event or two would be a commit
//! of its own. [`CommitPace`] makes a commit that comes less than `interval` after the previous
//! one's start wait for the rest of the interval, so the events of that time share one commit. A
//! commit after a quiet spell starts at once, and a commit that takes longer than the interval is
//! never delayed: the added latency is at most `interval`, only at low load.
//!
//! Sans-I/O: the caller passes `now` and sleeps for what [`CommitPace::wait`] says.

use std::time::{Duration, Instant};

/// The shortest time between the starts of two group commits (`--commit-interval`).
#[derive(Debug, Clone, Copy)]
pub struct CommitPace {
    interval: Duration,
    last_start: Option<Instant>,
}

impl CommitPace {
    /// A pace of at most one commit start per `interval`; `Duration::ZERO` never waits.
    pub fn new(interval: Duration) -> Self {
        Self { interval, last_start: None }
    }

    /// How long a commit that is ready at `now` must wait before it starts (zero: start now).
    pub fn wait(&self, now: Instant) -> Duration {
        match self.last_start {
            Some(last) => (last + self.interval).saturating_duration_since(now),
            None => Duration::ZERO,
        }
    }

    /// Records that a commit started at `now`.
    pub fn started(&mut self, now: Instant) {
        self.last_start = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_commit_after_a_quiet_spell_starts_at_once() {
        let t0 = Instant::now();
        let mut pace = CommitPace::new(5 * MS);
        assert_eq!(pace.wait(t0), Duration::ZERO, "the first commit never waits");
        pace.started(t0);
        assert_eq!(pace.wait(t0 + 5 * MS), Duration::ZERO);
        assert_eq!(pace.wait(t0 + 100 * MS), Duration::ZERO);
    }

    #[test]
    fn a_commit_soon_after_another_waits_for_the_rest_of_the_interval() {
        let t0 = Instant::now();
        let mut pace = CommitPace::new(5 * MS);
        pace.started(t0);
        assert_eq!(pace.wait(t0 + MS), 4 * MS);
        assert_eq!(pace.wait(t0 + 4 * MS), MS);
        // The interval counts from the start: a commit that took longer than it does not wait.
        pace.started(t0 + 10 * MS);
        assert_eq!(pace.wait(t0 + 16 * MS), Duration::ZERO);
    }

    #[test]
    fn a_zero_interval_never_waits() {
        let t0 = Instant::now();
        let mut pace = CommitPace::new(Duration::ZERO);
        pace.started(t0);
        assert_eq!(pace.wait(t0), Duration::ZERO);
    }

    #[test]
    fn at_most_one_commit_per_interval_over_any_arrivals() {
        // Events arrive every 300 µs for a second; each commit takes 200 µs. Commits start only when
        // the pace allows, and never two within one interval.
        let t0 = Instant::now();
        let interval = 5 * MS;
        let mut pace = CommitPace::new(interval);
        let mut starts = Vec::new();
        let mut now = t0;
        while now < t0 + Duration::from_secs(1) {
            let ready = now;
            let start = ready + pace.wait(ready);
            pace.started(start);
            starts.push(start);
            now = start + Duration::from_micros(200) + Duration::from_micros(300);
        }
        assert!(starts.windows(2).all(|w| w[1] - w[0] >= interval));
        assert!((195..=201).contains(&starts.len()), "{} commits in a second", starts.len());
    }
}
