//! What the relay reports about itself (`/xrpc/_health`): conditions that pause its work, shared by
//! every executor.

use std::sync::atomic::{AtomicBool, Ordering};

/// The relay's health, written by the role that detects a condition and read by the API.
#[derive(Debug, Default)]
pub struct Health {
    disk_short: AtomicBool,
}

impl Health {
    /// Records whether the data directory is short of free space (the sequencer pauses). Returns
    /// whether this changed the condition.
    pub fn set_disk_short(&self, short: bool) -> bool {
        self.disk_short.swap(short, Ordering::AcqRel) != short
    }

    /// Why the relay is degraded, when it is: `disk_full` while the sequencer waits for free space.
    pub fn degraded(&self) -> Option<&'static str> {
        self.disk_short.load(Ordering::Acquire).then_some("disk_full")
    }
}
