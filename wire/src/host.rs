//! Upstream host status, with the lexicon's values (`com.atproto.sync.defs#hostStatus`).

use std::fmt;

/// The state of an upstream host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HostStatus {
    /// Connected (or connecting) and delivering.
    Active,
    /// Connected but silent for longer than the idle timeout.
    Idle,
    /// Unreachable after repeated failures; retried on a slow schedule.
    Offline,
    /// Held back by rate or account limits.
    Throttled,
    /// Banned by an operator.
    Banned,
}

impl HostStatus {
    /// Every status.
    pub const ALL: [HostStatus; 5] =
        [HostStatus::Active, HostStatus::Idle, HostStatus::Offline, HostStatus::Throttled, HostStatus::Banned];

    /// The lexicon string.
    pub fn as_str(self) -> &'static str {
        match self {
            HostStatus::Active => "active",
            HostStatus::Idle => "idle",
            HostStatus::Offline => "offline",
            HostStatus::Throttled => "throttled",
            HostStatus::Banned => "banned",
        }
    }

    /// A stable one-byte code for storage.
    pub fn code(self) -> u8 {
        match self {
            HostStatus::Active => 0,
            HostStatus::Idle => 1,
            HostStatus::Offline => 2,
            HostStatus::Throttled => 3,
            HostStatus::Banned => 4,
        }
    }

    /// The inverse of [`HostStatus::code`].
    pub fn from_code(c: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.code() == c)
    }
}

impl fmt::Display for HostStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for s in HostStatus::ALL {
            assert_eq!(HostStatus::from_code(s.code()), Some(s));
        }
        assert_eq!(HostStatus::from_code(9), None);
    }
}
