//! A stop flag that tasks on any executor can await instead of polling it on a timer.
//!
//! Set once, from any thread (the signal-watching main thread, an executor that hit a fatal error);
//! every task waiting in [`StopSignal::wait`] is woken at once. Polling an `AtomicBool` every 20-50 ms
//! instead cost each executor 20-50 wake-ups a second when idle (bench/README.md, "CPU per event").

use std::sync::atomic::{AtomicBool, Ordering};

/// A one-way stop flag with waiters ([`event_listener::Event`]).
#[derive(Debug, Default)]
pub struct StopSignal {
    set: AtomicBool,
    event: event_listener::Event,
}

impl StopSignal {
    /// A signal not yet set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the flag and wakes every waiter (idempotent).
    pub fn stop(&self) {
        self.set.store(true, Ordering::Release);
        self.event.notify(usize::MAX);
    }

    /// Whether [`StopSignal::stop`] was called.
    pub fn is_stopped(&self) -> bool {
        self.set.load(Ordering::Acquire)
    }

    /// Resolves once the flag is set (at once when it already is).
    pub async fn wait(&self) {
        loop {
            if self.is_stopped() {
                return;
            }
            // Listen before the second check: a stop between the two wakes this listener.
            let listener = self.event.listen();
            if self.is_stopped() {
                return;
            }
            listener.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_stop_from_another_thread_wakes_waiters_on_an_executor() {
        let signal = Arc::new(StopSignal::new());
        let setter = Arc::clone(&signal);
        let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).make().expect("an executor");
        let waited = ex.run(async move {
            let waiters: Vec<_> = (0..3)
                .map(|_| {
                    let s = Arc::clone(&signal);
                    glommio::spawn_local(async move { s.wait().await }).detach()
                })
                .collect();
            let thread = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                setter.stop();
            });
            let started = std::time::Instant::now();
            for w in waiters {
                w.await;
            }
            thread.join().expect("the setter");
            signal.wait().await; // already set: returns at once
            started.elapsed()
        });
        assert!(waited >= Duration::from_millis(40), "woken before the stop: {waited:?}");
        assert!(waited < Duration::from_secs(5), "not woken by the stop: {waited:?}");
    }
}
