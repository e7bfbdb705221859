//! Informers: a local cache of one kind kept current by list + watch, and a
//! feed of its changes for controllers.
//!
//! The layers follow kube-rs' watcher → reflector and client-go's shared
//! informer:
//! - [`Informer::run`] lists, then watches from the list's resourceVersion,
//!   resuming from the last version seen (bookmarks included) when the stream
//!   breaks, with jittered exponential back-off. When the version has been
//!   compacted away it relists and swaps the cache in one step, sending
//!   synthetic events for what changed while it was not looking, so a
//!   subscriber never misses a deletion.
//! - [`Store`] is the cache's read side: one writer (the run loop), any number
//!   of cheap readers.
//! - [`Store::subscribe`] hands out an unbounded channel per subscriber. A
//!   controller must see every change, so a slow subscriber is never dropped
//!   or skipped; it only buffers. A late subscriber first gets the cache's
//!   current objects as `Added`, exactly as if it had been there from the
//!   start.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::{mpsc, watch};

use crate::{Api, Backoff, Error, ListParams, Result, Retry, WatchEvent};

/// What an informer can cache: any k8s-openapi resource with standard
/// metadata. Implemented for every such type; it only names the bounds once.
pub trait Object:
    k8s_openapi::Resource
    + k8s_openapi::Metadata<Ty = ObjectMeta>
    + Clone
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
}

impl<K> Object for K where
    K: k8s_openapi::Resource
        + k8s_openapi::Metadata<Ty = ObjectMeta>
        + Clone
        + Serialize
        + DeserializeOwned
        + Send
        + Sync
        + 'static
{
}

/// The cache key of an object: "namespace/name", or "name" when
/// cluster-scoped. Work queues hold these.
pub fn key_of<K: Object>(obj: &K) -> String {
    let meta = obj.metadata();
    skiff_api::meta::object_key(meta.namespace.as_deref().unwrap_or(""), meta.name.as_deref().unwrap_or(""))
}

/// A change to the cache, as a subscriber sees it.
#[derive(Debug, Clone)]
pub enum InformerEvent<K> {
    Added(Arc<K>),
    Modified {
        old: Arc<K>,
        new: Arc<K>,
    },
    /// The object's last state: from the watch, or after a relist the last
    /// state the cache held (the final one may have been missed).
    Deleted(Arc<K>),
}

impl<K: Object> InformerEvent<K> {
    /// The object as it is now, or as it was when deleted.
    pub fn object(&self) -> &Arc<K> {
        match self {
            InformerEvent::Added(o) | InformerEvent::Deleted(o) => o,
            InformerEvent::Modified { new, .. } => new,
        }
    }

    pub fn key(&self) -> String {
        key_of(self.object().as_ref())
    }
}

/// A relist or reconnect waits 100ms, doubling on each failure in a row up
/// to 10s, jittered so that informers cut off at once do not reconnect in
/// step; any event received ends the streak.
const WATCH_BACKOFF: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));

// === Store ===

/// Read access to an informer's cache and its event feed. Cheap to clone;
/// readers never block the informer for longer than a map lookup.
pub struct Store<K> {
    shared: Arc<Shared<K>>,
    synced: watch::Receiver<bool>,
}

impl<K> Clone for Store<K> {
    fn clone(&self) -> Self {
        Self { shared: self.shared.clone(), synced: self.synced.clone() }
    }
}

struct Shared<K> {
    cache: RwLock<HashMap<String, Arc<K>>>,
    /// Held while the cache changes and the change is sent out, so that a new
    /// subscriber's snapshot and the events after it line up exactly.
    subscribers: Mutex<Subscribers<K>>,
}

struct Subscribers<K> {
    senders: Vec<mpsc::UnboundedSender<InformerEvent<K>>>,
    /// The informer has stopped: no more events will come.
    closed: bool,
}

impl<K: Object> Store<K> {
    /// The object under `key` ("namespace/name" or "name").
    pub fn get(&self, key: &str) -> Option<Arc<K>> {
        self.read().get(key).cloned()
    }

    pub fn list(&self) -> Vec<Arc<K>> {
        self.read().values().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// Whether the first list has reached the cache.
    pub fn has_synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// Waits until the first list has reached the cache. Fails if the
    /// informer stops (or is dropped without running) before that.
    pub async fn wait_synced(&self) -> Result<()> {
        let mut synced = self.synced.clone();
        // Fails only once the writer is gone and the cache never synced.
        let reached = synced.wait_for(|s| *s).await.is_ok();
        if reached {
            Ok(())
        } else {
            Err(Error::InformerStopped { kind: K::KIND })
        }
    }

    /// A feed of every change from now on, preceded by an `Added` for each
    /// object already cached. The channel closes when the informer stops.
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<InformerEvent<K>> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut subs = self.shared.lock_subscribers();
        if subs.closed {
            return rx;
        }
        for obj in self.read().values() {
            // The receiver is in hand, so the send cannot fail.
            let _ = tx.send(InformerEvent::Added(obj.clone()));
        }
        subs.senders.push(tx);
        rx
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<K>>> {
        // The writer never panics half way through a change (every change
        // is a single map operation or swap), so poisoned data is intact.
        self.shared.cache.read().unwrap_or_else(|e| e.into_inner())
    }
}

impl<K> Shared<K> {
    fn lock_subscribers(&self) -> MutexGuard<'_, Subscribers<K>> {
        self.subscribers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

// === Writer ===

/// The cache's only writer; lives inside the informer's run loop.
struct Writer<K> {
    shared: Arc<Shared<K>>,
    synced: watch::Sender<bool>,
}

impl<K: Object> Writer<K> {
    fn new() -> Self {
        let shared = Arc::new(Shared {
            cache: RwLock::new(HashMap::new()),
            subscribers: Mutex::new(Subscribers { senders: Vec::new(), closed: false }),
        });
        Self { shared, synced: watch::Sender::new(false) }
    }

    fn store(&self) -> Store<K> {
        Store { shared: self.shared.clone(), synced: self.synced.subscribe() }
    }

    /// Applies one watch event. The cache, not the event type, decides what
    /// subscribers see: an `Added` for a key already cached is a
    /// modification, as in client-go.
    fn apply(&self, event: WatchEvent<K>) {
        let mut subs = self.shared.lock_subscribers();
        let out = {
            let mut cache = self.shared.cache.write().unwrap_or_else(|e| e.into_inner());
            match event {
                WatchEvent::Added(obj) | WatchEvent::Modified(obj) => {
                    let new = Arc::new(obj);
                    match cache.insert(key_of(new.as_ref()), new.clone()) {
                        Some(old) => InformerEvent::Modified { old, new },
                        None => InformerEvent::Added(new),
                    }
                }
                WatchEvent::Deleted(obj) => {
                    let gone = Arc::new(obj);
                    cache.remove(&key_of(gone.as_ref()));
                    InformerEvent::Deleted(gone)
                }
                WatchEvent::Bookmark(_) => return,
            }
        };
        send_all(&mut subs, [out]);
    }

    /// Replaces the cache with a fresh list in one step, telling subscribers
    /// what differs from what they were told before.
    fn replace(&self, items: Vec<K>) {
        let mut fresh: HashMap<String, Arc<K>> = items.into_iter().map(|obj| (key_of(&obj), Arc::new(obj))).collect();
        let mut subs = self.shared.lock_subscribers();
        let mut events = Vec::new();
        {
            let mut cache = self.shared.cache.write().unwrap_or_else(|e| e.into_inner());
            for (key, old) in cache.iter() {
                match fresh.get(key) {
                    None => events.push(InformerEvent::Deleted(old.clone())),
                    // An unchanged resourceVersion means an unchanged object:
                    // keep the old Arc so readers holding it see no churn.
                    Some(new) if resource_version(new.as_ref()) == resource_version(old.as_ref()) => {
                        fresh.insert(key.clone(), old.clone());
                    }
                    Some(new) => events.push(InformerEvent::Modified { old: old.clone(), new: new.clone() }),
                }
            }
            for (key, new) in &fresh {
                if !cache.contains_key(key) {
                    events.push(InformerEvent::Added(new.clone()));
                }
            }
            *cache = fresh;
        }
        send_all(&mut subs, events);
        self.synced.send_replace(true);
    }

    /// Closes every subscriber's channel: the informer has stopped.
    fn close(&self) {
        let mut subs = self.shared.lock_subscribers();
        subs.closed = true;
        subs.senders.clear();
    }
}

fn send_all<K: Clone>(subs: &mut Subscribers<K>, events: impl IntoIterator<Item = InformerEvent<K>>) {
    for event in events {
        // A subscriber whose receiver is gone has stopped listening.
        subs.senders.retain(|tx| tx.send(event.clone()).is_ok());
    }
}

fn resource_version<K: Object>(obj: &K) -> Option<&str> {
    obj.metadata().resource_version.as_deref()
}

// === Informer ===

/// Keeps a [`Store`] of one kind (in one namespace, or all with "") current.
pub struct Informer<K> {
    api: Api<K>,
    params: ListParams,
    writer: Writer<K>,
}

impl<K: Object> Informer<K> {
    pub fn new(api: Api<K>, params: ListParams) -> Self {
        Self { api, params, writer: Writer::new() }
    }

    pub fn store(&self) -> Store<K> {
        self.writer.store()
    }

    /// Same as `self.store().subscribe()`.
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<InformerEvent<K>> {
        self.store().subscribe()
    }

    pub fn has_synced(&self) -> bool {
        *self.writer.synced.borrow()
    }

    /// Waits until the first list is in the cache. As the informer must run
    /// for that to happen, call it on a [`Store`] once `run` has the informer.
    pub async fn wait_synced(&self) -> Result<()> {
        self.store().wait_synced().await
    }

    /// Lists and watches until `shutdown` completes, retrying every failure.
    /// Afterwards subscribers' channels close; the store keeps its last
    /// contents.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Informer { api, params, writer } = self;
        tokio::select! {
            _ = shutdown => {}
            _ = sync_forever(&api, &params, &writer) => {}
        }
        writer.close();
    }
}

/// The list/watch loop. It never returns; the caller stops it by dropping
/// it, which is safe at any await since each cache change is synchronous.
async fn sync_forever<K: Object>(api: &Api<K>, params: &ListParams, writer: &Writer<K>) {
    let mut backoff = Retry::new(WATCH_BACKOFF);
    // None: the cache must be (re)built from a list.
    let mut version: Option<String> = None;
    loop {
        let from = match &version {
            Some(v) => v.clone(),
            None => match api.list(params).await {
                Ok(list) => {
                    tracing::debug!(kind = K::KIND, items = list.items.len(), "informer listed");
                    writer.replace(list.items);
                    backoff.reset();
                    version = Some(list.resource_version.clone());
                    list.resource_version
                }
                Err(error) => {
                    tracing::warn!(kind = K::KIND, %error, "informer list failed, retrying");
                    backoff.wait().await;
                    continue;
                }
            },
        };
        let mut stream = match api.watch(params, &from).await {
            Ok(stream) => stream,
            Err(error) if error.is_expired() => {
                tracing::info!(kind = K::KIND, version = %from, "watch version expired, relisting");
                version = None;
                continue;
            }
            Err(error) => {
                tracing::warn!(kind = K::KIND, %error, "informer watch failed, reconnecting");
                backoff.wait().await;
                continue;
            }
        };
        loop {
            match stream.next().await {
                Some(Ok(event)) => {
                    backoff.reset();
                    let seen = match &event {
                        WatchEvent::Bookmark(v) => Some(v.clone()),
                        other => other.object().and_then(|o| resource_version(o).map(str::to_string)),
                    };
                    writer.apply(event);
                    if let Some(v) = seen.filter(|v| !v.is_empty()) {
                        version = Some(v);
                    }
                }
                Some(Err(error)) if error.is_expired() => {
                    tracing::info!(kind = K::KIND, "watch version expired, relisting");
                    version = None;
                    break;
                }
                Some(Err(error)) => {
                    tracing::warn!(kind = K::KIND, %error, "informer watch broke, reconnecting");
                    backoff.wait().await;
                    break;
                }
                None => {
                    // The server ended the stream (a restart, a timeout):
                    // resume where we were. The back-off only grows if it
                    // keeps happening without events in between.
                    tracing::debug!(kind = K::KIND, "watch stream ended, resuming");
                    backoff.wait().await;
                    break;
                }
            }
        }
    }
}

/// Jittered exponential back-off between reconnects.
#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;

    fn pod(ns: &str, name: &str, rv: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                resource_version: Some(rv.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn drain(rx: &mut mpsc::UnboundedReceiver<InformerEvent<Pod>>) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(ev) = rx.try_recv() {
            out.push(match ev {
                InformerEvent::Added(p) => format!("added {} {}", key_of(p.as_ref()), rv(&p)),
                InformerEvent::Modified { old, new } => {
                    format!("modified {} {}->{}", key_of(new.as_ref()), rv(&old), rv(&new))
                }
                InformerEvent::Deleted(p) => format!("deleted {} {}", key_of(p.as_ref()), rv(&p)),
            });
        }
        out.sort();
        out
    }

    fn rv(p: &Pod) -> &str {
        p.metadata.resource_version.as_deref().unwrap_or("")
    }

    #[test]
    fn keys_are_namespace_slash_name() {
        assert_eq!(key_of(&pod("ns", "a", "1")), "ns/a");
        let node = k8s_openapi::api::core::v1::Node {
            metadata: ObjectMeta { name: Some("n1".into()), ..Default::default() },
            ..Default::default()
        };
        assert_eq!(key_of(&node), "n1");
    }

    #[test]
    fn watch_events_update_cache_and_subscribers() {
        let w = Writer::<Pod>::new();
        let store = w.store();
        let mut rx = store.subscribe();
        w.apply(WatchEvent::Added(pod("ns", "a", "1")));
        w.apply(WatchEvent::Modified(pod("ns", "a", "2")));
        w.apply(WatchEvent::Added(pod("ns", "b", "3")));
        w.apply(WatchEvent::Deleted(pod("ns", "b", "4")));
        w.apply(WatchEvent::Bookmark("9".into()));
        assert_eq!(drain(&mut rx), ["added ns/a 1", "added ns/b 3", "deleted ns/b 4", "modified ns/a 1->2"]);
        assert_eq!(store.len(), 1);
        assert_eq!(rv(&store.get("ns/a").unwrap()), "2");
        assert!(store.get("ns/b").is_none());
    }

    #[test]
    fn relist_emits_only_the_differences() {
        let w = Writer::<Pod>::new();
        let store = w.store();
        w.replace(vec![pod("ns", "keep", "1"), pod("ns", "change", "2"), pod("ns", "gone", "3")]);
        assert!(store.has_synced());
        let kept = store.get("ns/keep").unwrap();
        let mut rx = store.subscribe();
        assert_eq!(drain(&mut rx), ["added ns/change 2", "added ns/gone 3", "added ns/keep 1"]);

        w.replace(vec![pod("ns", "keep", "1"), pod("ns", "change", "5"), pod("ns", "new", "6")]);
        assert_eq!(drain(&mut rx), ["added ns/new 6", "deleted ns/gone 3", "modified ns/change 2->5"]);
        let mut keys: Vec<_> = store.list().iter().map(|p| key_of(p.as_ref())).collect();
        keys.sort();
        assert_eq!(keys, ["ns/change", "ns/keep", "ns/new"]);
        // Unchanged objects keep their allocation.
        assert!(Arc::ptr_eq(&kept, &store.get("ns/keep").unwrap()));
    }

    #[test]
    fn late_subscriber_gets_the_cache_then_changes() {
        let w = Writer::<Pod>::new();
        w.replace(vec![pod("ns", "a", "1")]);
        let mut rx = w.store().subscribe();
        w.apply(WatchEvent::Modified(pod("ns", "a", "2")));
        assert_eq!(drain(&mut rx), ["added ns/a 1", "modified ns/a 1->2"]);
    }

    #[test]
    fn dropped_subscribers_are_pruned_and_close_ends_feeds() {
        let w = Writer::<Pod>::new();
        let store = w.store();
        let gone = store.subscribe();
        let mut kept = store.subscribe();
        drop(gone);
        w.apply(WatchEvent::Added(pod("ns", "a", "1")));
        assert_eq!(w.shared.lock_subscribers().senders.len(), 1);
        w.close();
        assert_eq!(drain(&mut kept), ["added ns/a 1"]);
        assert!(matches!(kept.try_recv(), Err(mpsc::error::TryRecvError::Disconnected)));
        let mut late = store.subscribe();
        assert!(matches!(late.try_recv(), Err(mpsc::error::TryRecvError::Disconnected)));
    }

    #[tokio::test]
    async fn wait_synced_fails_when_the_informer_is_gone() {
        let w = Writer::<Pod>::new();
        let store = w.store();
        assert!(!store.has_synced());
        drop(w);
        assert!(matches!(store.wait_synced().await, Err(Error::InformerStopped { .. })));
    }

    #[tokio::test]
    async fn wait_synced_returns_after_first_list() {
        let w = Writer::<Pod>::new();
        let store = w.store();
        let waiter = tokio::spawn(async move { store.wait_synced().await.is_ok() });
        tokio::task::yield_now().await;
        w.replace(Vec::new());
        assert!(waiter.await.unwrap());
    }

    // === run loop, against the in-memory apiserver ===

    use crate::fake_server::FakeApiserver;
    use k8s_openapi::api::core::v1::ConfigMap;

    fn config_map(name: &str, value: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta { name: Some(name.into()), namespace: Some("ns".into()), ..Default::default() },
            data: Some([("v".to_string(), value.to_string())].into()),
            ..Default::default()
        }
    }

    /// The next event as "added|modified|deleted name value".
    async fn next_event(rx: &mut mpsc::UnboundedReceiver<InformerEvent<ConfigMap>>) -> String {
        let ev = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("an event within 10s")
            .expect("informer running");
        let describe = |cm: &ConfigMap| {
            let value = cm.data.as_ref().and_then(|d| d.get("v")).cloned().unwrap_or_default();
            format!("{} {value}", cm.metadata.name.as_deref().unwrap_or(""))
        };
        match ev {
            InformerEvent::Added(cm) => format!("added {}", describe(&cm)),
            InformerEvent::Modified { old, new } => format!("modified {} (was {})", describe(&new), describe(&old)),
            InformerEvent::Deleted(cm) => format!("deleted {}", describe(&cm)),
        }
    }

    fn names(store: &Store<ConfigMap>) -> Vec<String> {
        let mut names: Vec<_> = store.list().iter().filter_map(|cm| cm.metadata.name.clone()).collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn informer_follows_the_server_through_disconnects_and_compaction() {
        let server = FakeApiserver::start().await;
        let api = server.client.api::<ConfigMap>("ns");
        api.create(&config_map("a", "1")).await.unwrap();

        let informer = Informer::new(api.clone(), ListParams::default());
        let store = informer.store();
        let mut rx = informer.subscribe();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(informer.run(async move {
            let _ = stopped.await;
        }));
        store.wait_synced().await.unwrap();
        assert_eq!(next_event(&mut rx).await, "added a 1");

        // Live changes.
        api.create(&config_map("b", "1")).await.unwrap();
        assert_eq!(next_event(&mut rx).await, "added b 1");
        let mut a = api.get("a").await.unwrap();
        a.data = config_map("a", "2").data;
        api.update(&a).await.unwrap();
        assert_eq!(next_event(&mut rx).await, "modified a 2 (was a 1)");
        api.delete("b").await.unwrap();
        assert_eq!(next_event(&mut rx).await, "deleted b 1");

        // A cut watch resumes from the last version: nothing is missed.
        server.fake.disconnect_watches();
        api.create(&config_map("c", "1")).await.unwrap();
        assert_eq!(next_event(&mut rx).await, "added c 1");

        // A deletion the watch never saw, with history compacted: the
        // informer relists and reports it.
        server.fake.delete_unseen("ConfigMap", "ns", "a");
        api.create(&config_map("d", "1")).await.unwrap();
        let mut relisted = vec![next_event(&mut rx).await, next_event(&mut rx).await];
        relisted.sort();
        assert_eq!(relisted, ["added d 1", "deleted a 2"]);
        assert_eq!(names(&store), ["c", "d"]);
        assert_eq!(server.fake.names("ConfigMap"), ["c", "d"]);

        // An outage: the informer backs off, then catches up.
        server.fake.set_unavailable(true);
        tokio::time::sleep(Duration::from_millis(300)).await;
        server.fake.set_unavailable(false);
        api.delete("c").await.unwrap();
        assert_eq!(next_event(&mut rx).await, "deleted c 1");

        let _ = stop.send(());
        task.await.unwrap();
        assert!(rx.recv().await.is_none(), "feed closes when the informer stops");
        assert_eq!(names(&store), ["d"], "the store keeps its last contents");
    }
}
