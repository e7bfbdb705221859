//! An in-memory [`Storage`] for unit tests: a store-wide revision,
//! compare-and-swap on mod_revision, reads at past revisions and watches
//! that replay from a revision — etcd as far as the apiserver relies on it,
//! without compaction. A knob makes another write slip in before the next
//! compare-and-swaps, as a concurrent client's would.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{Change, Storage, Stored, Swap, WatchStream, Watched};
use crate::Error;

/// Clones share the store.
#[derive(Clone, Default)]
pub struct FakeStorage {
    state: Arc<Mutex<State>>,
}

type Watcher = (String, mpsc::UnboundedSender<Result<Watched, Error>>);

#[derive(Default)]
struct State {
    revision: i64,
    objects: BTreeMap<String, Stored>,
    /// Every change, oldest first, for watches and reads at a revision.
    history: Vec<Change>,
    watchers: Vec<Watcher>,
    /// Compare-and-swaps still to lose to a write slipped in before them.
    interleaved: u32,
}

impl FakeStorage {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Before each of the next `n` compare-and-swaps on an existing key,
    /// rewrites that key unchanged, so the swap finds a newer mod_revision.
    pub fn interleave_writes(&self, n: u32) {
        self.lock().interleaved = n;
    }

    /// How many writes (puts and deletes) the store has taken.
    pub fn revision(&self) -> i64 {
        self.lock().revision
    }
}

impl State {
    fn commit(&mut self, key: &str, value: Option<Bytes>) -> i64 {
        self.revision += 1;
        let revision = self.revision;
        let prev = match &value {
            Some(v) => self.objects.insert(key.into(), Stored { value: v.clone(), mod_revision: revision }),
            None => self.objects.remove(key),
        };
        let created = prev.is_none() && value.is_some();
        let change = Change { key: key.into(), revision, value, created, prev };
        self.watchers.retain(|(prefix, tx)| {
            !key.starts_with(prefix.as_str()) || tx.send(Ok(Watched::Changes(vec![change.clone()]))).is_ok()
        });
        self.history.push(change);
        revision
    }

    fn swap(&mut self, key: &str, expected: i64, value: Option<Bytes>) -> Swap {
        if self.interleaved > 0 {
            if let Some(current) = self.objects.get(key).cloned() {
                self.interleaved -= 1;
                self.commit(key, Some(current.value));
            }
        }
        let actual = self.objects.get(key).map_or(0, |s| s.mod_revision);
        if actual != expected || (value.is_none() && actual == 0) {
            return Swap::Lost;
        }
        Swap::Done { revision: self.commit(key, value) }
    }

    /// The objects as they were at `revision`.
    fn at(&self, revision: i64) -> BTreeMap<String, Stored> {
        let mut objects = BTreeMap::new();
        for change in self.history.iter().take_while(|c| c.revision <= revision) {
            match &change.value {
                Some(v) => {
                    objects.insert(change.key.clone(), Stored { value: v.clone(), mod_revision: change.revision })
                }
                None => objects.remove(&change.key),
            };
        }
        objects
    }
}

#[async_trait::async_trait]
impl Storage for FakeStorage {
    async fn get(&self, key: &str) -> Result<Option<Stored>, Error> {
        Ok(self.lock().objects.get(key).cloned())
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<(String, Stored)>, i64), Error> {
        let st = self.lock();
        let items = st.objects.iter().filter(|(k, _)| k.starts_with(prefix)).map(|(k, v)| (k.clone(), v.clone()));
        Ok((items.collect(), st.revision))
    }

    async fn list_range(
        &self,
        start: &str,
        end: &str,
        limit: i64,
        revision: i64,
    ) -> Result<(Vec<(String, Stored)>, bool), Error> {
        let st = self.lock();
        if revision > st.revision {
            return Err(Error::TooNew { requested: revision });
        }
        let revision = if revision > 0 { revision } else { st.revision };
        let objects = st.at(revision);
        let mut items: Vec<(String, Stored)> =
            objects.range(start.to_string()..end.to_string()).map(|(k, v)| (k.clone(), v.clone())).collect();
        let limit = usize::try_from(limit).unwrap_or(0);
        let more = limit > 0 && items.len() > limit;
        if more {
            items.truncate(limit);
        }
        Ok((items, more))
    }

    async fn put_if(&self, key: &str, value: Vec<u8>, expected: i64) -> Result<Swap, Error> {
        Ok(self.lock().swap(key, expected, Some(value.into())))
    }

    async fn delete_if(&self, key: &str, expected: i64) -> Result<Swap, Error> {
        Ok(self.lock().swap(key, expected, None))
    }

    async fn watch(&self, prefix: &str, start_revision: i64) -> Result<WatchStream, Error> {
        let mut st = self.lock();
        let (tx, rx) = mpsc::unbounded_channel();
        let replay: Vec<Change> =
            st.history.iter().filter(|c| c.revision >= start_revision && c.key.starts_with(prefix)).cloned().collect();
        if !replay.is_empty() {
            let _ = tx.send(Ok(Watched::Changes(replay)));
        }
        st.watchers.push((prefix.to_string(), tx));
        Ok(Box::pin(tokio_stream::wrappers::UnboundedReceiverStream::new(rx)))
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    #[tokio::test]
    async fn swaps_compare_mod_revisions_and_reads_and_watches_go_back_in_time() {
        let store = FakeStorage::default();
        assert!(matches!(store.put_if("/a/1", b"one".to_vec(), 0).await.unwrap(), Swap::Done { revision: 1 }));
        assert!(matches!(store.put_if("/a/1", b"again".to_vec(), 0).await.unwrap(), Swap::Lost));
        assert!(matches!(store.put_if("/a/1", b"two".to_vec(), 1).await.unwrap(), Swap::Done { revision: 2 }));
        assert!(matches!(store.delete_if("/a/1", 1).await.unwrap(), Swap::Lost));

        let (then, _) = store.list_range("/a/", "/a0", 10, 1).await.unwrap();
        assert_eq!(then[0].1.value, Bytes::from_static(b"one"));
        let mut watch = store.watch("/a/", 2).await.unwrap();
        assert!(matches!(store.delete_if("/a/1", 2).await.unwrap(), Swap::Done { revision: 3 }));
        let Some(Ok(Watched::Changes(replayed))) = watch.next().await else { panic!("no replay") };
        assert_eq!(replayed.iter().map(|c| c.revision).collect::<Vec<_>>(), [2]);
        let Some(Ok(Watched::Changes(live))) = watch.next().await else { panic!("no delete") };
        assert_eq!((live[0].value.is_none(), live[0].prev.as_ref().map(|p| p.mod_revision)), (true, Some(2)));
    }
}
