//! Reconnect backoff for host connections: exponential with full jitter, reset on progress.
//!
//! A pure state machine: it takes a random source and returns delays; the caller sleeps. Tested
//! without sockets or clocks.

use std::time::Duration;

/// Exponential backoff with jitter.
///
/// The n-th consecutive failure waits a random duration in `[cap/2, cap]` where
/// `cap = min(max, base * 2^(n-1))`. [`Backoff::reset`] after a connection made progress (delivered
/// at least one frame) starts over.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    failures: u32,
    rng: fastrand::Rng,
}

impl Backoff {
    /// A backoff from `base` (default 1 s) doubling up to `max` (default 60 s); `seed` makes the jitter
    /// deterministic per host.
    pub fn new(base: Duration, max: Duration, seed: u64) -> Self {
        Self { base, max: max.max(base), failures: 0, rng: fastrand::Rng::with_seed(seed) }
    }

    /// Records a failure and returns how long to wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let exp = self.failures.saturating_sub(1).min(30);
        let cap = self.base.saturating_mul(1u32 << exp).min(self.max);
        let half = cap / 2;
        let jitter_ns = self.rng.u64(0..=u64::try_from((cap - half).as_nanos()).unwrap_or(u64::MAX));
        half + Duration::from_nanos(jitter_ns)
    }

    /// Consecutive failures since the last reset.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Forgets past failures.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_caps_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60), 7);
        let delays: Vec<Duration> = (0..10).map(|_| b.next_delay()).collect();
        for (i, d) in delays.iter().enumerate() {
            let cap = Duration::from_secs(1 << i.min(6)).min(Duration::from_secs(60));
            assert!(*d >= cap / 2 && *d <= cap, "attempt {i}: {d:?} not in [{:?}, {cap:?}]", cap / 2);
        }
        assert_eq!(b.failures(), 10);
        b.reset();
        assert!(b.next_delay() <= Duration::from_secs(1));
    }

    #[test]
    fn jitter_is_deterministic_per_seed() {
        let run = |seed| {
            let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5), seed);
            (0..5).map(|_| b.next_delay()).collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }
}
