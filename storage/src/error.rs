//! Storage errors.

/// An error from the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// RocksDB returned an error (I/O, corruption, options).
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    /// The data directory could not be read (listing its files for [`crate::Store::disk_usage`]).
    #[error("reading the data directory: {0}")]
    Io(std::io::Error),
    /// A previous write failed; the store refuses further writes until reopened, so nothing is
    /// acknowledged that might not be durable.
    #[error("store is poisoned by an earlier failed write")]
    Poisoned,
    /// The store was written by a build with another on-disk format.
    #[error("unsupported store format version {found} (this build reads {want})")]
    UnsupportedFormat {
        /// Version found in `meta`.
        found: u32,
        /// Version this build supports.
        want: u32,
    },
    /// A value does not match its documented layout.
    #[error("corrupt {cf} value for key {key:?}")]
    Corrupt {
        /// Column family.
        cf: &'static str,
        /// The key, lossily as text.
        key: String,
    },
}
