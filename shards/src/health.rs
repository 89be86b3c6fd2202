//! What the relay reports about itself (`/xrpc/_health`): conditions that pause its work, shared by
//! every executor.

use std::sync::atomic::{AtomicBool, Ordering};

/// The relay's health, written by the role that detects a condition and read by the API.
#[derive(Debug, Default)]
pub struct Health {
    disk_short: AtomicBool,
    upstream_stopped: AtomicBool,
}

impl Health {
    /// Records whether the data directory is short of free space (the sequencer pauses). Returns
    /// whether this changed the condition.
    pub fn set_disk_short(&self, short: bool) -> bool {
        self.disk_short.swap(short, Ordering::AcqRel) != short
    }

    /// Records whether a splitter's ingest is stopped (its upstream's sequence went back, or it
    /// answered `FutureCursor`) until an operator resets the cursor. Returns whether this changed
    /// the condition.
    pub fn set_upstream_stopped(&self, stopped: bool) -> bool {
        self.upstream_stopped.swap(stopped, Ordering::AcqRel) != stopped
    }

    /// Why the relay is degraded, when it is: `disk_full` while the sequencer waits for free space;
    /// `upstream_stopped` while a splitter waits for an operator's cursor reset.
    pub fn degraded(&self) -> Option<&'static str> {
        if self.disk_short.load(Ordering::Acquire) {
            Some("disk_full")
        } else {
            self.upstream_stopped.load(Ordering::Acquire).then_some("upstream_stopped")
        }
    }
}
