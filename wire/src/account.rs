//! Account hosting status, with the lexicon's values (`com.atproto.sync.subscribeRepos#account`,
//! <https://atproto.com/specs/account>).

use std::fmt;

/// An account's hosting status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AccountStatus {
    /// Active: its commits are relayed.
    Active,
    /// Deactivated by its owner.
    Deactivated,
    /// Deleted.
    Deleted,
    /// Out of sync with its host.
    Desynchronized,
    /// Suspended by a moderation service.
    Suspended,
    /// Taken down.
    Takendown,
    /// Throttled.
    Throttled,
    /// Inactive for a reason this relay does not know.
    Other,
}

impl AccountStatus {
    /// Every status, for tables and tests.
    pub const ALL: [AccountStatus; 8] = [
        AccountStatus::Active,
        AccountStatus::Deactivated,
        AccountStatus::Deleted,
        AccountStatus::Desynchronized,
        AccountStatus::Suspended,
        AccountStatus::Takendown,
        AccountStatus::Throttled,
        AccountStatus::Other,
    ];

    /// From the fields of an `#account` event (or `getRepoStatus`): `active: true` is active whatever
    /// the status; otherwise the status string, `Other` when absent or unknown.
    pub fn from_fields(active: bool, status: Option<&str>) -> Self {
        if active {
            return AccountStatus::Active;
        }
        match status {
            Some("deactivated") => AccountStatus::Deactivated,
            Some("deleted") => AccountStatus::Deleted,
            Some("desynchronized") => AccountStatus::Desynchronized,
            Some("suspended") => AccountStatus::Suspended,
            Some("takendown") => AccountStatus::Takendown,
            Some("throttled") => AccountStatus::Throttled,
            _ => AccountStatus::Other,
        }
    }

    /// Whether commits of the account are relayed.
    pub fn is_active(self) -> bool {
        self == AccountStatus::Active
    }

    /// The lexicon string; `None` for `Active` and `Other`.
    pub fn as_lexicon(self) -> Option<&'static str> {
        match self {
            AccountStatus::Active | AccountStatus::Other => None,
            AccountStatus::Deactivated => Some("deactivated"),
            AccountStatus::Deleted => Some("deleted"),
            AccountStatus::Desynchronized => Some("desynchronized"),
            AccountStatus::Suspended => Some("suspended"),
            AccountStatus::Takendown => Some("takendown"),
            AccountStatus::Throttled => Some("throttled"),
        }
    }

    /// A stable one-byte code for storage (`storage` byte tables).
    pub fn code(self) -> u8 {
        match self {
            AccountStatus::Active => 0,
            AccountStatus::Deactivated => 1,
            AccountStatus::Deleted => 2,
            AccountStatus::Desynchronized => 3,
            AccountStatus::Suspended => 4,
            AccountStatus::Takendown => 5,
            AccountStatus::Throttled => 6,
            AccountStatus::Other => 255,
        }
    }

    /// The inverse of [`AccountStatus::code`]; unknown codes are `Other`.
    pub fn from_code(c: u8) -> Self {
        Self::ALL.into_iter().find(|s| s.code() == c).unwrap_or(AccountStatus::Other)
    }
}

impl fmt::Display for AccountStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AccountStatus::Active => "active",
            AccountStatus::Other => "inactive",
            s => s.as_lexicon().unwrap_or("inactive"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_fields_round_trip() {
        for s in AccountStatus::ALL {
            assert_eq!(AccountStatus::from_code(s.code()), s);
            if s != AccountStatus::Other {
                assert_eq!(AccountStatus::from_fields(s.is_active(), s.as_lexicon()), s);
            }
        }
        assert_eq!(AccountStatus::from_fields(false, Some("weird")), AccountStatus::Other);
        assert_eq!(AccountStatus::from_fields(true, Some("deleted")), AccountStatus::Active);
    }
}
