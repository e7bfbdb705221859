//! The pods bound to this node: an informer on them (field selector
//! `spec.nodeName=<node>`), a watch of each ConfigMap, Secret and claim
//! they use ([`used`]), a work queue of pod keys, and workers that each sync one pod at a time
//! ([`sync::PodSyncer`]) and write what the sync reports through the API.
//!
//! Exits are noticed by a relist of the runtime every `--relist-interval`
//! (Kubernetes' PLEG): a sandbox or container whose state changed, came or
//! went queues its pod. The first relist after a start queues every pod
//! the runtime still runs, so containers whose pod was deleted while the
//! kubelet was down are removed, and running ones are adopted as they are.

pub mod dns;
pub mod spec;
pub mod status;
pub mod sync;
pub mod used;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolume, PersistentVolumeClaim, Pod, Secret};
use skiff_client::{
    key_of, trace_parent_of, Action, Backoff, Client, Controller, EventRecorder, EventType, Informer, InformerEvent,
    ListParams, ObjectRef, Reconcile, Store, WorkQueue,
};
use skiff_telemetry::Stop;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::runtime::labels;
use crate::Error;
use sync::PodSyncer;

/// Pods synced at once. A sync can wait out a grace period, so several.
const WORKERS: usize = 8;
/// Retries of a failing pod sync back off from 200ms to at most 30s.
const BACKOFF: Backoff = Backoff { base: Duration::from_millis(200), max: Duration::from_secs(30) };

/// ConfigMaps, Secrets, PersistentVolumeClaims (by namespace and name) and
/// PersistentVolumes, as syncs read them.
pub trait Objects: Send + Sync {
    fn config_map(&self, namespace: &str, name: &str) -> Option<Arc<ConfigMap>>;
    fn secret(&self, namespace: &str, name: &str) -> Option<Arc<Secret>>;
    fn claim(&self, namespace: &str, name: &str) -> Option<Arc<PersistentVolumeClaim>>;
    fn volume(&self, name: &str) -> Option<Arc<PersistentVolume>>;
}

/// Informers for this node's pods and for PersistentVolumes; the objects
/// the pods use are watched one by one ([`used::UsedObjects`]).
pub struct PodInformers {
    pub pods: Informer<Pod>,
    pub volumes: Informer<PersistentVolume>,
}

impl PodInformers {
    pub fn new(client: &Client, node_name: &str) -> Self {
        let all = ListParams::default;
        Self {
            pods: Informer::new(client.api::<Pod>(""), all().fields(&format!("spec.nodeName={node_name}"))),
            volumes: Informer::new(client.api::<PersistentVolume>(""), all()),
        }
    }
}

/// Everything the pod loops share.
pub struct PodLoop {
    pub client: Client,
    pub syncer: Arc<PodSyncer>,
    pub informers: PodInformers,
    /// What the pods use, as the syncer reads it.
    pub used: Arc<used::UsedObjects>,
    /// Changes of what `used` watches.
    pub used_changes: mpsc::UnboundedReceiver<used::UsedKey>,
    pub node_name: String,
    pub relist_interval: Duration,
}

/// Runs the informers, the relist and the workers until stopped.
pub async fn run(pl: PodLoop, stop: Stop) {
    let informers = pl.informers;
    let pod_store = informers.pods.store();
    let queue = WorkQueue::<String>::with_backoff(BACKOFF);
    let mut tasks = JoinSet::new();

    let pod_events = informers.pods.subscribe();
    let volume_events = informers.volumes.subscribe();
    let caches: Vec<Arc<dyn skiff_client::CacheSync>> =
        vec![Arc::new(pod_store.clone()), Arc::new(informers.volumes.store())];
    tasks.spawn(informers.pods.run(stop.raised()));
    tasks.spawn(informers.volumes.run(stop.raised()));
    tasks.spawn(feed_pods(pod_events, pod_store.clone(), pl.used.clone(), queue.clone()));
    tasks.spawn(feed_users(pl.used_changes, pod_store.clone(), queue.clone()));
    tasks.spawn(crate::volumes::remove_deleted_local_paths(volume_events, pl.node_name.clone()));
    // Keys the relist queues wait in the queue until the workers start.
    tasks.spawn(relist(pl.syncer.clone(), queue.clone(), pl.relist_interval, stop.clone()));

    let worker = PodWorker {
        client: pl.client.clone(),
        syncer: pl.syncer,
        used: pl.used,
        recorder: EventRecorder::new(pl.client, "kubelet"),
        store: pod_store.clone(),
        queue: queue.clone(),
    };
    // Workers start once every cache holds what the API has (and each sync
    // waits for what its pod uses): a sync must never take a ConfigMap not
    // read yet for a deleted one.
    let mut controller = Controller::new(Arc::new(worker), queue).workers(WORKERS);
    for cache in caches {
        controller = controller.wait_for(cache);
    }
    if let Err(error) = controller.run(stop.raised()).await {
        tracing::warn!(%error, "pod caches never synced");
    }
    while tasks.join_next().await.is_some() {}
}

/// Queues each pod that changed, after watching what the node's pods now
/// use (and no longer watching what none uses).
async fn feed_pods(
    mut events: mpsc::UnboundedReceiver<InformerEvent<Pod>>,
    pods: Store<Pod>,
    used: Arc<used::UsedObjects>,
    queue: WorkQueue<String>,
) {
    while let Some(event) = events.recv().await {
        used.track(&pods.list());
        queue.add(event.key());
    }
}

/// Queues the pods using an object that changed.
async fn feed_users(mut changes: mpsc::UnboundedReceiver<used::UsedKey>, pods: Store<Pod>, queue: WorkQueue<String>) {
    while let Some((kind, key)) = changes.recv().await {
        let Some((ns, name)) = key.split_once('/') else { continue };
        for pod in pods.list() {
            if pod.metadata.namespace.as_deref() == Some(ns) && skiff_api::references::uses(&pod, kind, name) {
                queue.add(key_of(pod.as_ref()));
            }
        }
    }
}

/// Lists the runtime every `interval` and queues the pods whose
/// sandboxes or containers changed state, appeared or went.
async fn relist(syncer: Arc<PodSyncer>, queue: WorkQueue<String>, interval: Duration, stop: Stop) {
    let mut last: HashMap<String, (i32, String)> = HashMap::new();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.raised() => return,
            _ = tick.tick() => {}
        }
        let rt = syncer.runtime.as_ref();
        let (sandboxes, containers) = match (rt.list_sandboxes(&[]).await, rt.list_containers(&[]).await) {
            (Ok(s), Ok(c)) => (s, c),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "listing the runtime failed");
                continue;
            }
        };
        let key = |l: &std::collections::HashMap<String, String>| {
            Some(format!("{}/{}", l.get(labels::POD_NAMESPACE)?, l.get(labels::POD_NAME)?))
        };
        let mut now: HashMap<String, (i32, String)> = HashMap::new();
        for s in &sandboxes {
            if let Some(k) = key(&s.labels) {
                now.insert(format!("s/{}", s.id), (s.state, k));
            }
        }
        for c in &containers {
            if let Some(k) = key(&c.labels) {
                now.insert(format!("c/{}", c.id), (c.state, k));
            }
        }
        for (id, (state, k)) in &now {
            if last.get(id).map(|(s, _)| s) != Some(state) {
                queue.add(k.clone());
            }
        }
        for (id, (_, k)) in &last {
            if !now.contains_key(id) {
                queue.add(k.clone());
            }
        }
        last = now;
    }
}

/// Syncs the pods of this node, one key at a time, on the controller runner.
struct PodWorker {
    client: Client,
    syncer: Arc<PodSyncer>,
    used: Arc<used::UsedObjects>,
    store: Store<Pod>,
    recorder: EventRecorder,
    /// The worker's own queue: its retry count tells a failure streak's
    /// first failure, which alone records a FailedSync Event.
    queue: WorkQueue<String>,
}

impl Reconcile for PodWorker {
    const NAME: &'static str = "pod";
    type Error = Error;

    fn trace_parent(&self, key: &str) -> Option<String> {
        trace_parent_of(&self.store.get(key)?.metadata)
    }

    async fn reconcile(&self, key: &str) -> Result<Action, Error> {
        match sync_key(&self.client, &self.syncer, &self.used, &self.store, &self.recorder, key).await {
            Ok(requeue) => Ok(requeue.map_or_else(Action::done, Action::requeue)),
            Err(error) => {
                let first = self.queue.num_requeues(&key.to_string()) == 0;
                if let (true, Some(pod)) = (first, self.store.get(key)) {
                    let message = format!("{error:#}");
                    let about = ObjectRef::of(pod.as_ref());
                    self.recorder.report_ref(&about, EventType::Warning, "FailedSync", &message).await;
                }
                Err(error)
            }
        }
    }
}

/// Syncs one pod key and writes the outcome; returns when to sync again.
async fn sync_key(
    client: &Client,
    syncer: &PodSyncer,
    used: &used::UsedObjects,
    store: &Store<Pod>,
    recorder: &EventRecorder,
    key: &str,
) -> Result<Option<Duration>, Error> {
    let (ns, name) = key.split_once('/').unwrap_or(("", key));
    let Some(pod) = store.get(key) else {
        syncer.remove_pod(ns, name).await?;
        return Ok(None);
    };
    // A pod being stopped needs none of them.
    if pod.metadata.deletion_timestamp.is_none() {
        used.ready(&pod).await?;
    }
    let out = syncer.sync(&pod).await?;
    if out.delete {
        record_events(recorder, &pod, &out.events).await;
        match client.delete_with_grace("Pod", ns, name, Some(0)).await {
            Ok(_) => tracing::info!(pod = %key, "pod stopped and deleted"),
            Err(e) if e.is_not_found() => {}
            Err(source) => return Err(Error::DeletePod { pod: key.to_string(), source }),
        }
        return Ok(None);
    }
    if let Some(status) = out.status {
        let mut next = (*pod).clone();
        next.status = Some(status);
        match client.api::<Pod>(ns).update_status(&next).await {
            Ok(_) => {}
            Err(e) if e.is_not_found() => return Ok(None),
            Err(source) => return Err(Error::WritePodStatus { pod: key.to_string(), source }),
        }
    }
    // After the status: whoever sees an Event finds the pod already in the
    // state it explains (a FailedMount pod is ContainerCreating).
    record_events(recorder, &pod, &out.events).await;
    Ok(out.requeue)
}

async fn record_events(recorder: &EventRecorder, pod: &Pod, events: &[sync::PodEvent]) {
    let about = ObjectRef::of(pod);
    for e in events {
        let ty = if e.warning { EventType::Warning } else { EventType::Normal };
        recorder.report_ref(&about, ty, e.reason, &e.message).await;
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    /// [`Objects`] from maps the test fills.
    #[derive(Default)]
    pub struct MapObjects {
        config_maps: Mutex<HashMap<String, Arc<ConfigMap>>>,
        secrets: Mutex<HashMap<String, Arc<Secret>>>,
        pub claims: Mutex<HashMap<String, Arc<PersistentVolumeClaim>>>,
        pub volumes: Mutex<HashMap<String, Arc<PersistentVolume>>>,
    }

    impl MapObjects {
        pub fn put_config_map(&self, ns: &str, name: &str, data: &[(&str, &str)]) {
            let mut cm = ConfigMap::default();
            cm.metadata.name = Some(name.into());
            cm.metadata.namespace = Some(ns.into());
            cm.data = Some(data.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>());
            self.config_maps.lock().unwrap().insert(format!("{ns}/{name}"), Arc::new(cm));
        }

        pub fn put_secret(&self, ns: &str, name: &str, data: &[(&str, &str)]) {
            let mut s = Secret::default();
            s.metadata.name = Some(name.into());
            s.metadata.namespace = Some(ns.into());
            s.data = Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), k8s_openapi::ByteString(v.as_bytes().to_vec())))
                    .collect::<BTreeMap<_, _>>(),
            );
            self.secrets.lock().unwrap().insert(format!("{ns}/{name}"), Arc::new(s));
        }
    }

    impl Objects for MapObjects {
        fn config_map(&self, namespace: &str, name: &str) -> Option<Arc<ConfigMap>> {
            self.config_maps.lock().unwrap().get(&format!("{namespace}/{name}")).cloned()
        }

        fn secret(&self, namespace: &str, name: &str) -> Option<Arc<Secret>> {
            self.secrets.lock().unwrap().get(&format!("{namespace}/{name}")).cloned()
        }

        fn claim(&self, namespace: &str, name: &str) -> Option<Arc<PersistentVolumeClaim>> {
            self.claims.lock().unwrap().get(&format!("{namespace}/{name}")).cloned()
        }

        fn volume(&self, name: &str) -> Option<Arc<PersistentVolume>> {
            self.volumes.lock().unwrap().get(name).cloned()
        }
    }
}
