//! RocksDB persistence for the relay.
//!
//! This crate owns the column families, their key/value byte layouts (below), group-commit batches,
//! the replay reader and recovery of the relay sequence at start. It must not decide protocol policy
//! (what is valid, what is dropped) or own sockets; the shards call it.
//!
//! # Layout (format version 1)
//!
//! All integers are big-endian. CIDs are in their binary form. The format version is stored in
//! `meta`; opening a store of another version fails with [`StoreError::UnsupportedFormat`].
//!
//! ## `events`: relay sequence → frame
//!
//! | part  | offset | bytes | field |
//! |-------|--------|-------|-------|
//! | key   | 0      | 8     | relay `seq` (u64) |
//! | value | 0      | n     | the complete event-stream frame (DAG-CBOR header ‖ body) carrying that `seq` |
//!
//! ## `repos`: account DID → account state
//!
//! | part  | offset  | bytes | field |
//! |-------|---------|-------|-------|
//! | key   | 0       | n     | DID (UTF-8) |
//! | value | 0       | 1     | upstream status: 0 active, 1 deactivated, 2 deleted, 3 desynchronized, 4 suspended, 5 takendown, 6 throttled, 255 other |
//! |       | 1       | 1     | local status bits: 1 taken down on this relay, 2 throttled (host account limit) |
//! |       | 2       | 8     | `rev` of the last relayed commit as the TID's 64-bit integer; 0 when none |
//! |       | 10      | 1     | `a` = length of the commit CID (0 when none) |
//! |       | 11      | a     | commit CID |
//! |       | 11+a    | 1     | `b` = length of the data (MST root) CID (0 when none) |
//! |       | 12+a    | b     | data CID |
//! |       | 12+a+b  | rest  | hostname the account was last relayed from (UTF-8) |
//!
//! ## `hosts`: hostname → upstream state
//!
//! | part  | offset | bytes | field |
//! |-------|--------|-------|-------|
//! | key   | 0      | n     | hostname, lowercase, with `:port` when not default (UTF-8) |
//! | value | 0      | 8     | cursor: the last upstream `seq` fully processed (u64) |
//! |       | 8      | 8     | accounts on this host that are not deleted (u64) |
//! |       | 16     | 8     | Sync 1.1 discontinuities relayed from this host (u64); absent in values written before it (read as 0) |
//! |       | 24     | 8     | `high`: the highest upstream `seq` handed over to the sequencer (u64); absent in older values (read as the cursor) |
//! |       | 32     | 2     | `n`: holes, seqs below `high` read and not handed over (u16) |
//! |       | 34     | 8n    | the holes, ascending (u64 each); the cursor at offset 0 is below the lowest (or `high`) |
//!
//! ## `host_info`: hostname → connection status (written only by the host's ingest shard)
//!
//! | part  | offset | bytes | field |
//! |-------|--------|-------|-------|
//! | key   | 0      | n     | hostname (UTF-8) |
//! | value | 0      | 1     | status: 0 active, 1 idle, 2 offline, 3 throttled, 4 banned |
//! |       | 1      | 8     | last successful connection, ms since the UNIX epoch (u64; 0 never) |
//! |       | 9      | 4     | consecutive failed connection attempts (u32) |
//!
//! ## `host_config`: hostname → how the relay treats the host (added by `--host`, `requestCrawl` or `pull-hosts`; changed by the admin API)
//!
//! | part  | offset | bytes | field |
//! |-------|--------|-------|-------|
//! | key   | 0      | n     | hostname (UTF-8) |
//! | value | 0      | 1     | flags: 1 TLS, 2 trusted, 4 banned |
//! |       | 1      | 8     | account limit (u64) |
//! |       | 9      | 8     | added at, ms since the UNIX epoch (u64) |
//!
//! ## `domain_bans`: domain → ban
//!
//! | part  | offset | bytes | field |
//! |-------|--------|-------|-------|
//! | key   | 0      | n     | domain, lowercase (UTF-8); bans it and every subdomain |
//! | value | 0      | 8     | banned at, ms since the UNIX epoch (u64) |
//!
//! ## `identities`: DID → resolved identity cache
//!
//! | part  | offset | bytes | field |
//! |-------|--------|-------|-------|
//! | key   | 0      | n     | DID (UTF-8) |
//! | value | 0      | 8     | fetched-at, milliseconds since the UNIX epoch (u64) |
//! |       | 8      | 1     | key type: 1 = secp256k1, 2 = P-256 |
//! |       | 9      | 33    | SEC1 compressed public key |
//! |       | 42     | 2     | `e` = length of the PDS endpoint (u16) |
//! |       | 44     | e     | PDS endpoint URL (UTF-8), empty when the document has none |
//! |       | 44+e   | rest  | handle (UTF-8), empty when none |
//!
//! ## `time_index`: unix second → first relay seq of that second (for retention)
//!
//! | part  | offset | bytes | field |
//! |-------|--------|-------|-------|
//! | key   | 0      | 8     | unix second (u64) in which the sequencer committed `seq` |
//! | value | 0      | 8     | the first relay `seq` of that second (u64) |
//!
//! ## `tombstones`: DID → relay seq (takedowns and deletions leave replay)
//!
//! | part  | offset | bytes | field |
//! |-------|--------|-------|-------|
//! | key   | 0      | n     | DID (UTF-8) |
//! | value | 0      | 8     | relay `seq` of the `#account` event that took the account down or deleted it (u64); the account's events with a lower seq are not replayed |
//!
//! ## `collections`: collection → accounts holding records of it (`listReposByCollection`)
//!
//! | part  | offset | bytes | field |
//! |-------|--------|-------|-------|
//! | key   | 0      | n     | collection NSID (UTF-8) |
//! |       | n      | 1     | 0x00 |
//! |       | n+1    | m     | DID (UTF-8) |
//! | value | 0      | 8     | relay `seq` of a relayed commit that created or updated a record of that collection in that account, when the relay noted the pair (u64) |
//!
//! ## `meta`
//!
//! | key              | value |
//! |------------------|-------|
//! | `format_version` | u32, currently 1 |
//! | `last_seq`       | u64: the highest relay `seq` ever assigned (survives retention) |
//! | `retained_from`  | u64: the lowest relay `seq` retention has not deleted (absent: none deleted) |
//! | `crawl_enabled`  | u8: 0 when an operator disabled public `requestCrawl`; absent = enabled |
//! | `crawl_quota`    | u64 UTC day number ‖ u32 hosts public `requestCrawl` added that day |

#![cfg_attr(not(test), deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, clippy::panic))]

mod accounts;
mod error;
mod events;
mod hosts;
mod layout;
pub mod repo_cache;
pub mod retention;
mod store;

pub use error::StoreError;
pub use events::ReplayChunk;
pub use hosts::{ConfigChange, HostRow};
pub use layout::{HostConfig, HostInfo, HostState, IdentityRecord, RepoState, ResumePoint};
pub use store::{CommitBatch, DiskUsage, RocksStats, Store, StoreOptions, dir_usage};

/// The on-disk format version this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// Column family names.
pub mod cf {
    /// Relay seq → frame.
    pub const EVENTS: &str = "events";
    /// DID → last relayed commit.
    pub const REPOS: &str = "repos";
    /// Hostname → upstream cursor.
    pub const HOSTS: &str = "hosts";
    /// DID → cached identity.
    pub const IDENTITIES: &str = "identities";
    /// Store-wide values.
    pub const META: &str = "meta";
    /// Hostname → connection status (written by the host's ingest shard).
    pub const HOST_INFO: &str = "host_info";
    /// Hostname → operator settings (TLS, trusted, banned, account limit).
    pub const HOST_CONFIG: &str = "host_config";
    /// Banned domain → when.
    pub const DOMAIN_BANS: &str = "domain_bans";
    /// Unix second → first relay seq assigned in it (retention maps time to seq with it).
    pub const TIME_INDEX: &str = "time_index";
    /// DID → relay seq from which on the account's earlier events are not replayed.
    pub const TOMBSTONES: &str = "tombstones";
    /// Collection ‖ 0 ‖ DID → first relay seq seen (`listReposByCollection`).
    pub const COLLECTIONS: &str = "collections";
    /// All of them, in creation order.
    pub const ALL: [&str; 11] = [
        EVENTS,
        REPOS,
        HOSTS,
        IDENTITIES,
        META,
        HOST_INFO,
        HOST_CONFIG,
        DOMAIN_BANS,
        TIME_INDEX,
        TOMBSTONES,
        COLLECTIONS,
    ];
}
