//! The apiserver's access to its store: reads, compare-and-swap writes
//! keyed on mod_revision, and watches from a revision — the [`Storage`]
//! trait, what the registry, the watch caches and client watches use.
//! [`Etcd`] is the real store; nothing else in skiff talks to etcd. An
//! in-memory fake stands in for it in unit tests.

mod encrypted;
mod etcd;
#[cfg(test)]
pub mod fake;

use bytes::Bytes;
use futures::stream::BoxStream;

pub use self::encrypted::Encrypted;
pub use self::etcd::{Etcd, EtcdTls};
use crate::Error;

/// One stored object: its JSON and the revision that last wrote it.
#[derive(Debug, Clone)]
pub struct Stored {
    pub value: Bytes,
    pub mod_revision: i64,
}

/// The outcome of a compare-and-swap.
pub enum Swap {
    Done {
        revision: i64,
    },
    /// The key's mod_revision (0: absent) was not what the caller read.
    Lost,
}

/// One change a watch reports.
#[derive(Debug, Clone)]
pub struct Change {
    pub key: String,
    /// The revision of the change.
    pub revision: i64,
    /// The value a put left; None for a delete.
    pub value: Option<Bytes>,
    /// Whether a put created the key.
    pub created: bool,
    /// The value before the change, if the key existed.
    pub prev: Option<Stored>,
}

/// What a watch yields.
#[derive(Debug)]
pub enum Watched {
    /// Changes in revision order.
    Changes(Vec<Change>),
    /// The start revision was compacted away (up to `revision`): relist.
    Compacted { revision: i64 },
}

/// A watch: ends (or fails) when the store drops it.
pub type WatchStream = BoxStream<'static, Result<Watched, Error>>;

/// Objects as JSON under string keys, versioned by a store-wide revision.
#[async_trait::async_trait]
pub trait Storage: Send + Sync + 'static {
    async fn get(&self, key: &str) -> Result<Option<Stored>, Error>;

    /// Every key under `prefix`, and the revision the list was read at.
    async fn list(&self, prefix: &str) -> Result<(Vec<(String, Stored)>, i64), Error>;

    /// Keys in `[start, end)` as they were at `revision`, at most `limit`
    /// of them, and whether more follow. Fails as expired once the store
    /// has compacted `revision`.
    async fn list_range(
        &self,
        start: &str,
        end: &str,
        limit: i64,
        revision: i64,
    ) -> Result<(Vec<(String, Stored)>, bool), Error>;

    /// Writes `value` at `key` if the key's mod_revision is still
    /// `expected` (0 = the key must not exist).
    async fn put_if(&self, key: &str, value: Vec<u8>, expected: i64) -> Result<Swap, Error>;

    /// Deletes `key` if its mod_revision is still `expected`.
    async fn delete_if(&self, key: &str, expected: i64) -> Result<Swap, Error>;

    /// Every change under `prefix` from `start_revision` on, each with the
    /// key's previous value.
    async fn watch(&self, prefix: &str, start_revision: i64) -> Result<WatchStream, Error>;
}
