//! The ConfigMaps, Secrets and PersistentVolumeClaims this node's pods
//! use, each watched on its own (`metadata.name=NAME` in its namespace),
//! as Kubernetes' kubelet watches them: the apiserver's Node authorizer
//! lets a kubelet read only what the pods bound to it name, so nothing
//! here lists a kind whole. A watch opens when a pod naming the object
//! comes, and closes when the last such pod has gone.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolume, PersistentVolumeClaim, Pod, Secret};
use skiff_api::references::{references, Referenced};
use skiff_client::{CacheSync, Client, Informer, ListParams, Object, Store};
use tokio::sync::{mpsc, oneshot};

use super::Objects;
use crate::Error;

/// How long a sync waits for an object's first read before it fails (and
/// is retried): a read the apiserver refuses never completes.
const FIRST_READ: Duration = Duration::from_secs(10);

/// An object a pod names: its kind, and `namespace/name`.
pub type UsedKey = (Referenced, String);

/// The objects this node's pods use, read through their own watches.
pub struct UsedObjects {
    client: Client,
    config_maps: Watches<ConfigMap>,
    secrets: Watches<Secret>,
    claims: Watches<PersistentVolumeClaim>,
    /// Every PersistentVolume: a pod's claim names one, and local volumes
    /// of this node are cleaned up on their deletion.
    volumes: Store<PersistentVolume>,
    /// Where a change of a watched object is told.
    changed: mpsc::UnboundedSender<UsedKey>,
}

impl UsedObjects {
    /// Watches nothing yet; changes of what it will watch go to `changed`.
    pub fn new(client: Client, volumes: Store<PersistentVolume>, changed: mpsc::UnboundedSender<UsedKey>) -> Self {
        Self {
            client,
            config_maps: Watches::new(Referenced::ConfigMap),
            secrets: Watches::new(Referenced::Secret),
            claims: Watches::new(Referenced::Claim),
            volumes,
            changed,
        }
    }

    /// Watches what `pods` (every pod of the node) use, and no more.
    pub fn track(&self, pods: &[Arc<Pod>]) {
        let mut wanted: HashMap<Referenced, HashSet<String>> = HashMap::new();
        for pod in pods {
            let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
            for (kind, name) in references(pod) {
                wanted.entry(kind).or_default().insert(format!("{ns}/{name}"));
            }
        }
        let none = HashSet::new();
        let wanted_of = |kind| wanted.get(&kind).unwrap_or(&none);
        self.config_maps.keep_only(wanted_of(Referenced::ConfigMap));
        self.secrets.keep_only(wanted_of(Referenced::Secret));
        self.claims.keep_only(wanted_of(Referenced::Claim));
        self.open(pods.iter().map(Arc::as_ref));
    }

    /// Waits until everything `pod` uses has been read once (opening the
    /// watches of what is not watched yet), so a sync never takes an object
    /// not read yet for a missing one.
    pub async fn ready(&self, pod: &Pod) -> Result<(), Error> {
        self.open(std::iter::once(pod));
        let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
        for (kind, name) in references(pod) {
            let key = format!("{ns}/{name}");
            let cache = match kind {
                Referenced::ConfigMap => self.config_maps.cache(&key),
                Referenced::Secret => self.secrets.cache(&key),
                Referenced::Claim => self.claims.cache(&key),
            };
            let Some(cache) = cache else { continue };
            match tokio::time::timeout(FIRST_READ, cache.wait_synced()).await {
                Ok(Ok(())) => {}
                _ => return Err(Error::NotRead { what: format!("{kind:?} {key}") }),
            }
        }
        Ok(())
    }

    fn open<'a>(&self, pods: impl Iterator<Item = &'a Pod>) {
        for pod in pods {
            let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
            for (kind, name) in references(pod) {
                let key = format!("{ns}/{name}");
                match kind {
                    Referenced::ConfigMap => self.config_maps.open(&self.client, &key, &self.changed),
                    Referenced::Secret => self.secrets.open(&self.client, &key, &self.changed),
                    Referenced::Claim => self.claims.open(&self.client, &key, &self.changed),
                }
            }
        }
    }
}

impl Objects for UsedObjects {
    fn config_map(&self, namespace: &str, name: &str) -> Option<Arc<ConfigMap>> {
        self.config_maps.get(&format!("{namespace}/{name}"))
    }

    fn secret(&self, namespace: &str, name: &str) -> Option<Arc<Secret>> {
        self.secrets.get(&format!("{namespace}/{name}"))
    }

    fn claim(&self, namespace: &str, name: &str) -> Option<Arc<PersistentVolumeClaim>> {
        self.claims.get(&format!("{namespace}/{name}"))
    }

    fn volume(&self, name: &str) -> Option<Arc<PersistentVolume>> {
        self.volumes.get(name)
    }
}

/// The open watches of one kind, by `namespace/name`.
struct Watches<K> {
    kind: Referenced,
    open: Mutex<HashMap<String, Watch<K>>>,
}

/// One object's watch: its cache, and the informer's stop (dropped, it
/// ends the informer).
struct Watch<K> {
    store: Store<K>,
    _stop: oneshot::Sender<()>,
}

impl<K: Object + Sync + 'static> Watches<K> {
    fn new(kind: Referenced) -> Self {
        Self { kind, open: Mutex::new(HashMap::new()) }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Watch<K>>> {
        // A panic elsewhere while holding it leaves the map whole.
        self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn get(&self, key: &str) -> Option<Arc<K>> {
        self.lock().get(key)?.store.get(key)
    }

    fn keep_only(&self, wanted: &HashSet<String>) {
        self.lock().retain(|key, _| wanted.contains(key));
    }

    /// The cache of `key`'s watch, if it is open.
    fn cache(&self, key: &str) -> Option<Arc<dyn CacheSync>> {
        Some(Arc::new(self.lock().get(key)?.store.clone()))
    }

    fn open(&self, client: &Client, key: &str, changed: &mpsc::UnboundedSender<UsedKey>) {
        let mut open = self.lock();
        if open.contains_key(key) {
            return;
        }
        let Some((ns, name)) = key.split_once('/') else { return };
        let informer =
            Informer::new(client.api::<K>(ns), ListParams::default().fields(&format!("metadata.name={name}")));
        let store = informer.store();
        let mut events = informer.subscribe();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(informer.run(async move {
            let _ = stopped.await;
        }));
        let (kind, key_owned, changed) = (self.kind, key.to_string(), changed.clone());
        // Ends when the informer is gone (its store with it).
        tokio::spawn(async move {
            while events.recv().await.is_some() {
                if changed.send((kind, key_owned.clone())).is_err() {
                    return;
                }
            }
        });
        open.insert(key.to_string(), Watch { store, _stop: stop });
    }
}
