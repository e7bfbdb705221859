//! The watch cache: one etcd watch per kind fans out to every client watch,
//! and lists are served from memory at a consistent revision.
//!
//! The cache keeps the objects of one kind and a ring of recent events. A
//! client watch from revision R replays the ring after R and then follows the
//! live feed; one older than the ring (after an apiserver restart, say) is
//! served by its own etcd watch from R, which fails as expired once etcd has
//! compacted R away.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use serde_json::Value;
use skiff_api::{meta, FieldSelector, KindInfo, LabelSelector};
use tokio::sync::{broadcast, watch};

use crate::storage::{Change, Storage, Watched};
use crate::Error;

/// One object as lists and watches hand it out: encoded once, with the
/// labels and selectable fields kept beside it for filtering.
#[derive(Debug)]
pub struct CachedObject {
    pub key: String,
    pub json: Bytes,
    pub revision: i64,
    /// metadata.deletionTimestamp is set.
    pub deleting: bool,
    labels: BTreeMap<String, String>,
    fields: Vec<(&'static str, String)>,
}

impl CachedObject {
    /// Decodes a stored value and stamps it with the revision clients see as
    /// its resourceVersion.
    pub fn decode(info: &KindInfo, key: String, stored: &[u8], revision: i64) -> Result<Self, Error> {
        let mut value: Value =
            serde_json::from_slice(stored).map_err(|source| Error::Corrupt { key: key.clone(), source })?;
        meta::set(&mut value, "resourceVersion", revision.to_string());
        let labels = meta::labels(&value)
            .map(|l| l.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
            .unwrap_or_default();
        let fields = skiff_api::selector::field_values(info.kind, &value);
        let deleting = !meta::str_field(&value, "deletionTimestamp").is_empty();
        let json = serde_json::to_vec(&value).map_err(|source| Error::Corrupt { key: key.clone(), source })?.into();
        Ok(Self { key, json, revision, deleting, labels, fields })
    }

    /// The value of a selectable field (`spec.nodeName`), if set.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.iter().find(|(f, _)| *f == name).map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

#[derive(Debug)]
pub struct CacheEvent {
    pub kind: EventType,
    pub revision: i64,
    pub object: Arc<CachedObject>,
    pub prev: Option<Arc<CachedObject>>,
}

/// What one client watch or list asks for.
#[derive(Debug, Clone)]
pub struct Filter {
    pub key_prefix: String,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Filter {
    pub fn matches(&self, o: &CachedObject) -> bool {
        o.key.starts_with(&self.key_prefix)
            && self.labels.matches(&o.labels)
            && self.fields.matches(|f| {
                std::borrow::Cow::Borrowed(o.fields.iter().find(|(n, _)| *n == f).map_or("", |(_, v)| v.as_str()))
            })
    }

    /// The event this watcher sees, if any: an object that stops matching is
    /// deleted from its point of view, one that starts matching is added.
    pub fn view(&self, ev: &CacheEvent) -> Option<(EventType, Arc<CachedObject>)> {
        let now = self.matches(&ev.object);
        let before = ev.prev.as_ref().is_some_and(|p| self.matches(p));
        match (ev.kind, before, now) {
            (EventType::Deleted, _, true) => Some((EventType::Deleted, ev.object.clone())),
            (EventType::Deleted, _, false) => None,
            (_, false, true) => Some((EventType::Added, ev.object.clone())),
            (_, true, true) => Some((EventType::Modified, ev.object.clone())),
            (_, true, false) => Some((EventType::Deleted, ev.object.clone())),
            (_, false, false) => None,
        }
    }
}

struct State {
    objects: BTreeMap<String, Arc<CachedObject>>,
    revision: i64,
    history: VecDeque<Arc<CacheEvent>>,
    /// Every event after this revision is in `history` or still to come.
    floor: i64,
    feed: broadcast::Sender<Arc<CacheEvent>>,
}

/// One page of a list.
pub struct Page {
    pub items: Vec<Bytes>,
    pub revision: i64,
    /// Where the next page starts (inclusive), when more may follow.
    pub next: Option<String>,
}

/// A client watch attached to the cache: events to replay, then the feed.
pub struct Subscription {
    pub replay: Vec<Arc<CacheEvent>>,
    pub feed: broadcast::Receiver<Arc<CacheEvent>>,
}

pub struct WatchCache {
    pub info: &'static KindInfo,
    state: RwLock<State>,
    revision: watch::Sender<i64>,
    capacity: usize,
}

const FEED_CAPACITY: usize = 4096;

impl WatchCache {
    pub fn new(info: &'static KindInfo, capacity: usize) -> Arc<Self> {
        let (feed, _) = broadcast::channel(FEED_CAPACITY);
        let state = State { objects: BTreeMap::new(), revision: 0, history: VecDeque::new(), floor: i64::MAX, feed };
        Arc::new(Self { info, state: RwLock::new(state), revision: watch::channel(0).0, capacity: capacity.max(1) })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn revision(&self) -> i64 {
        *self.revision.borrow()
    }

    /// Waits until the cache has seen `revision` (a write this apiserver
    /// made), so a client reads its own writes; gives up after `timeout`.
    pub async fn wait_for(&self, revision: i64, timeout: Duration) -> bool {
        let mut rx = self.revision.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|r| *r >= revision)).await.is_ok_and(|r| r.is_ok())
    }

    /// Every object under `key_prefix`, shared rather than copied, and the
    /// cache's revision.
    pub fn objects(&self, key_prefix: &str) -> (Vec<Arc<CachedObject>>, i64) {
        let state = self.read();
        let objects = state
            .objects
            .range(key_prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(key_prefix))
            .map(|(_, o)| o.clone())
            .collect();
        (objects, state.revision)
    }

    /// Up to `limit` objects passing `filter`, from key `start` on, and the
    /// key the next page starts at if any keys remain. With `at` set, only
    /// if the cache still shows that revision (a later page of a list must
    /// show the same snapshot as its first).
    pub fn page(&self, filter: &Filter, start: &str, limit: usize, at: Option<i64>) -> Option<Page> {
        let state = self.read();
        if at.is_some_and(|r| r != state.revision) {
            return None;
        }
        let mut items = Vec::new();
        let mut next = None;
        let mut range = state.objects.range(start.to_string()..).take_while(|(k, _)| k.starts_with(&filter.key_prefix));
        for (key, o) in range.by_ref() {
            if filter.matches(o) {
                items.push(o.json.clone());
                if items.len() >= limit {
                    next = Some(format!("{key}\0"));
                    break;
                }
            }
        }
        // Past the last key of the range there is nothing to continue with.
        if next.is_some() && range.next().is_none() {
            next = None;
        }
        Some(Page { items, revision: state.revision, next })
    }

    pub fn get(&self, key: &str) -> Option<Arc<CachedObject>> {
        self.read().objects.get(key).cloned()
    }

    /// Attaches a watch that resumes after `from`; `None` when the cache no
    /// longer holds the events after it.
    pub fn subscribe(&self, from: i64) -> Option<Subscription> {
        let state = self.read();
        if from < state.floor {
            return None;
        }
        let replay = state.history.iter().filter(|e| e.revision > from).cloned().collect();
        Some(Subscription { replay, feed: state.feed.subscribe() })
    }

    /// Replaces the contents with a fresh list. Watches attached to the old
    /// contents are closed, so they resume and see what changed in between.
    fn reset(&self, objects: BTreeMap<String, Arc<CachedObject>>, revision: i64) {
        let mut state = self.write();
        let (feed, _) = broadcast::channel(FEED_CAPACITY);
        *state = State { objects, revision, history: VecDeque::new(), floor: revision, feed };
        drop(state);
        self.revision.send_replace(revision);
    }

    pub(crate) fn apply(&self, kind: EventType, object: Arc<CachedObject>) {
        let revision = object.revision;
        let mut state = self.write();
        let prev = match kind {
            EventType::Deleted => state.objects.remove(&object.key),
            _ => state.objects.insert(object.key.clone(), object.clone()),
        };
        let kind = match (kind, &prev) {
            (EventType::Deleted, _) => EventType::Deleted,
            (_, None) => EventType::Added,
            (_, Some(_)) => EventType::Modified,
        };
        let event = Arc::new(CacheEvent { kind, revision, object, prev });
        if state.history.len() >= self.capacity {
            if let Some(old) = state.history.pop_front() {
                state.floor = old.revision;
            }
        }
        state.history.push_back(event.clone());
        state.revision = revision;
        let _ = state.feed.send(event);
        drop(state);
        self.revision.send_replace(revision);
    }

    /// Keeps the cache in step with etcd until `shutdown` fires: list, then
    /// watch from the list's revision; a lost connection re-watches from the
    /// last revision seen, a compacted one relists.
    pub async fn run(
        self: Arc<Self>,
        storage: Arc<dyn Storage>,
        ready: watch::Sender<bool>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let prefix = self.info.key_prefix(None);
        let mut backoff = Duration::from_millis(100);
        let mut listed = false;
        loop {
            if *shutdown.borrow() {
                return;
            }
            if !listed {
                match self.relist(storage.as_ref(), &prefix).await {
                    Ok(()) => {
                        listed = true;
                        ready.send_replace(true);
                    }
                    Err(e) => {
                        tracing::warn!(kind = self.info.kind, error = %e, "watch cache list failed; retrying");
                        if sleep_or_shutdown(backoff, &mut shutdown).await {
                            return;
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                }
            }
            let outcome = tokio::select! {
                o = self.follow(storage.as_ref(), &prefix) => o,
                _ = shutdown.changed() => return,
            };
            match outcome {
                Follow::Compacted => listed = false,
                Follow::Failed(e) => {
                    tracing::warn!(kind = self.info.kind, error = %e, "watch cache lost its etcd watch; resuming");
                    if sleep_or_shutdown(backoff, &mut shutdown).await {
                        return;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn relist(&self, storage: &dyn Storage, prefix: &str) -> Result<(), Error> {
        let (items, revision) = storage.list(prefix).await?;
        let mut objects = BTreeMap::new();
        for (key, stored) in items {
            match CachedObject::decode(self.info, key.clone(), &stored.value, stored.mod_revision) {
                Ok(o) => {
                    objects.insert(key, Arc::new(o));
                }
                Err(e) => tracing::error!(key, error = %e, "skipping an undecodable object"),
            }
        }
        self.reset(objects, revision);
        Ok(())
    }

    async fn follow(&self, storage: &dyn Storage, prefix: &str) -> Follow {
        let from = self.read().revision + 1;
        let mut stream = match storage.watch(prefix, from).await {
            Ok(s) => s,
            Err(e) => return Follow::Failed(e),
        };
        loop {
            let changes = match stream.next().await {
                Some(Ok(Watched::Changes(changes))) => changes,
                Some(Ok(Watched::Compacted { .. })) => return Follow::Compacted,
                Some(Err(e)) => return Follow::Failed(e),
                None => return Follow::Failed(Error::WatchClosed),
            };
            for ev in &changes {
                match decode_event(self.info, ev) {
                    Ok(Some((kind, object, _))) => self.apply(kind, Arc::new(object)),
                    Ok(None) => {}
                    Err(e) => tracing::error!(kind = self.info.kind, error = %e, "skipping an undecodable event"),
                }
            }
        }
    }
}

enum Follow {
    Compacted,
    Failed(Error),
}

/// True when shutdown fired during the sleep.
async fn sleep_or_shutdown(d: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => *shutdown.borrow(),
        _ = shutdown.changed() => true,
    }
}

/// Turns one change into the object it leaves behind (for a delete: the
/// last state, stamped with the deletion's revision) and the previous state.
pub fn decode_event(
    info: &KindInfo,
    ev: &Change,
) -> Result<Option<(EventType, CachedObject, Option<CachedObject>)>, Error> {
    let prev = match &ev.prev {
        Some(p) => Some(CachedObject::decode(info, ev.key.clone(), &p.value, p.mod_revision)?),
        None => None,
    };
    let out = match (&ev.value, &ev.prev) {
        (Some(value), _) => {
            let kind = if ev.created { EventType::Added } else { EventType::Modified };
            (kind, CachedObject::decode(info, ev.key.clone(), value, ev.revision)?)
        }
        (None, Some(p)) => (EventType::Deleted, CachedObject::decode(info, ev.key.clone(), &p.value, ev.revision)?),
        (None, None) => return Ok(None),
    };
    Ok(Some((out.0, out.1, prev)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(name: &str, labels: Value, rev: i64) -> Arc<CachedObject> {
        let info = KindInfo::by_kind("Pod").unwrap();
        let v = json!({"metadata": {"name": name, "namespace": "default", "labels": labels}});
        let key = info.key("default", name);
        Arc::new(CachedObject::decode(info, key, &serde_json::to_vec(&v).unwrap(), rev).unwrap())
    }

    fn filter(labels: &str) -> Filter {
        Filter {
            key_prefix: "/registry/pods/default/".into(),
            labels: LabelSelector::parse(labels).unwrap(),
            fields: FieldSelector::default(),
        }
    }

    #[test]
    fn stamps_resource_version() {
        let o = obj("a", json!({}), 42);
        let v: Value = serde_json::from_slice(&o.json).unwrap();
        assert_eq!(v["metadata"]["resourceVersion"], "42");
    }

    #[test]
    fn label_changes_become_adds_and_deletes_for_a_filtered_watch() {
        let f = filter("app=web");
        let web = obj("a", json!({"app": "web"}), 2);
        let db = obj("a", json!({"app": "db"}), 3);
        let ev = |kind, o: &Arc<CachedObject>, p: Option<&Arc<CachedObject>>| CacheEvent {
            kind,
            revision: o.revision,
            object: o.clone(),
            prev: p.cloned(),
        };
        assert_eq!(f.view(&ev(EventType::Modified, &web, Some(&db))).unwrap().0, EventType::Added);
        assert_eq!(f.view(&ev(EventType::Modified, &db, Some(&web))).unwrap().0, EventType::Deleted);
        assert_eq!(f.view(&ev(EventType::Modified, &web, Some(&web))).unwrap().0, EventType::Modified);
        assert!(f.view(&ev(EventType::Modified, &db, Some(&db))).is_none());
        assert!(f.view(&ev(EventType::Deleted, &db, None)).is_none());
    }

    #[test]
    fn history_ring_sets_the_resume_floor() {
        let cache = WatchCache::new(KindInfo::by_kind("Pod").unwrap(), 2);
        cache.reset(BTreeMap::new(), 10);
        assert!(cache.subscribe(9).is_none(), "before the list revision");
        for (i, rev) in [11, 12, 13].into_iter().enumerate() {
            cache.apply(EventType::Added, obj(&format!("p{i}"), json!({}), rev));
        }
        assert!(cache.subscribe(10).is_none(), "event 11 fell out of the ring");
        let sub = cache.subscribe(11).unwrap();
        assert_eq!(sub.replay.iter().map(|e| e.revision).collect::<Vec<_>>(), vec![12, 13]);
        let (items, rev) = cache.objects("");
        assert_eq!((items.len(), rev), (3, 13));
    }
}
