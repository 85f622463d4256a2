//! The metadata DB: one redb file under the root. What the DB says is the truth; disk
//! content that the DB does not reference is garbage that start-up clean-up removes.

pub mod containers;
pub mod images;
pub mod pods;

use std::path::Path;

use redb::ReadableDatabase;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use images::{ImageRecord, LayerRecord};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("metadata store: {0}")]
    Db(#[from] redb::Error),
    #[error("metadata store: corrupt record {key:?} in {table}: {source}")]
    Corrupt {
        table: &'static str,
        key: String,
        source: serde_json::Error,
    },
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::Db(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

pub type Result<T> = std::result::Result<T, Error>;

/// The daemon's metadata store. Cheap to share behind an `Arc`; every method is a short
/// transaction, so callers on the async runtime may call it directly (writes step aside
/// from the runtime themselves, see [`blocking`]).
pub struct Db {
    db: redb::Database,
}

impl Db {
    pub fn open(path: &Path) -> Result<Db> {
        let db = redb::Database::builder()
            // The working set is small (a few thousand records); the default cache is 1 GiB.
            .set_cache_size(4 << 20)
            .create(path)?;
        let db = Db { db };
        db.init()?;
        Ok(db)
    }

    fn init(&self) -> Result<()> {
        let tx = self.db.begin_write()?;
        images::create_tables(&tx)?;
        pods::create_tables(&tx)?;
        containers::create_tables(&tx)?;
        tx.commit()?;
        Ok(())
    }

    pub(crate) fn write(&self) -> Result<redb::WriteTransaction> {
        Ok(self.db.begin_write()?)
    }

    /// A write whose commit is not flushed to disk until the next durable one: for state a
    /// crash may lose because recovery finds it again. Where redb refuses (a persistent
    /// savepoint, a shared database) it is durable.
    pub(crate) fn write_lazily(&self) -> Result<redb::WriteTransaction> {
        let mut tx = self.db.begin_write()?;
        let _ = tx.set_durability(redb::Durability::None);
        Ok(tx)
    }

    pub(crate) fn read(&self) -> Result<redb::ReadTransaction> {
        Ok(self.db.begin_read()?)
    }
}

/// Runs a write where the async runtime can hand this worker's other tasks to another
/// thread: a write waits for redb's single writer and, when durable, for fsync, and under
/// a burst of RPCs (`crictl rmp -fa` on hundreds of pods) commits on both worker threads
/// starved every other RPC for seconds.
pub(crate) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

pub(crate) fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("records serialize")
}

pub(crate) fn decode<T: DeserializeOwned>(
    table: &'static str,
    key: &str,
    bytes: &[u8],
) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|source| Error::Corrupt {
        table,
        key: key.to_string(),
        source,
    })
}
