//! The scheduler proper: informer events update the cache and the queue;
//! the scheduling loop takes one pod at a time, picks a node, assumes the
//! pod there and binds it in the background.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod, PodCondition};
use skiff_client::{key_of, trace_parent_of, Client, EventRecorder, EventType, InformerEvent, Store};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::Instrument as _;

use crate::algorithm::Algorithm;
use crate::cache::Cache;
use crate::framework::{Framework, PodInfo};
use crate::metrics::{Outcome, SchedulerMetrics};
use crate::queue::SchedulingQueue;
use crate::volumes::Volumes;
use skiff_api::well_known::SELECTED_NODE_ANNOTATION;

/// The Event source and the scheduler name pods ask for by default.
pub const COMPONENT: &str = "default-scheduler";
/// `spec.schedulerName` values this scheduler serves.
const SCHEDULER_NAMES: [&str; 3] = ["", "default-scheduler", "skiff"];
/// Attempts at writing the PodScheduled condition when it keeps conflicting.
const STATUS_ATTEMPTS: usize = 3;

/// Whether `pod` waits for this scheduler: unbound, ours, alive.
pub fn is_pending(pod: &Pod) -> bool {
    let Some(spec) = &pod.spec else { return false };
    let unbound = spec.node_name.as_deref().unwrap_or("").is_empty();
    let ours = SCHEDULER_NAMES.contains(&spec.scheduler_name.as_deref().unwrap_or(""));
    let finished = matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"));
    unbound && ours && pod.metadata.deletion_timestamp.is_none() && !finished
}

/// Settings of the scheduling loop.
#[derive(Debug, Clone)]
pub struct Options {
    pub bind_workers: usize,
    pub percentage_of_nodes_to_score: u32,
    pub unschedulable_flush_interval: Duration,
    pub record_scheduled_events: bool,
}

pub struct Scheduler {
    client: Client,
    pods: Store<Pod>,
    volumes: Volumes,
    cache: Mutex<Cache>,
    queue: SchedulingQueue,
    framework: Framework,
    recorder: EventRecorder,
    metrics: SchedulerMetrics,
    options: Options,
}

impl Scheduler {
    pub fn new(
        client: Client,
        pods: Store<Pod>,
        volumes: Volumes,
        metrics: SchedulerMetrics,
        options: Options,
    ) -> Self {
        Self {
            recorder: EventRecorder::new(client.clone(), COMPONENT),
            client,
            pods,
            volumes,
            cache: Mutex::new(Cache::new()),
            queue: SchedulingQueue::new(crate::queue::POD_BACKOFF),
            framework: Framework::default(),
            metrics,
            options,
        }
    }

    fn cache(&self) -> MutexGuard<'_, Cache> {
        // Cache changes are plain map updates that do not panic half way.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops the scheduling loop's queue (at shutdown).
    pub fn shutdown(&self) {
        self.queue.shutdown();
    }
}

// === Events: informer changes into cache updates and queue moves ===

impl Scheduler {
    /// Loads every node and pod the informers hold into the cache. Called
    /// once they have synced, before the first scheduling cycle: the events
    /// carrying the same objects are applied by another task, and a cycle
    /// that ran ahead of them would see no nodes, or nodes without the
    /// requests of the pods already on them. Applying those events again
    /// afterwards changes nothing.
    pub fn prime(&self, nodes: &[Arc<Node>], pods: &[Arc<Pod>]) {
        let mut cache = self.cache();
        for node in nodes {
            cache.set_node(node.clone());
        }
        for pod in pods {
            cache.update_pod(pod);
        }
    }

    /// Applies informer events until both feeds close or `shutdown`
    /// resolves, and retries long-parked pods every so often.
    pub async fn handle_events(
        self: Arc<Self>,
        mut pods: mpsc::UnboundedReceiver<InformerEvent<Pod>>,
        mut nodes: mpsc::UnboundedReceiver<InformerEvent<Node>>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                Some(ev) = nodes.recv() => self.on_node(ev),
                Some(ev) = pods.recv() => self.on_pod(ev),
                _ = tick.tick() => {
                    let flushed = self.queue.flush_parked_older_than(self.options.unschedulable_flush_interval);
                    if flushed > 0 {
                        tracing::debug!(pods = flushed, "retrying long-unschedulable pods");
                    }
                    let (active, parked) = self.queue.lens();
                    self.metrics.set_pending(active, parked);
                }
            }
        }
    }

    /// Retries unschedulable pods on every event of `events` (claims and
    /// volumes: one may now be bound, or exist).
    pub async fn retry_on_change<K: skiff_client::Object>(
        self: Arc<Self>,
        mut events: mpsc::UnboundedReceiver<InformerEvent<K>>,
    ) {
        while events.recv().await.is_some() {
            self.queue.move_all();
        }
    }

    fn on_node(&self, event: InformerEvent<Node>) {
        let moved = match event {
            InformerEvent::Added(node) => {
                self.cache().set_node(node);
                self.queue.move_all()
            }
            InformerEvent::Modified { old, new } => {
                let relevant = node_change_matters(&old, &new);
                self.cache().set_node(new);
                if relevant {
                    self.queue.move_all()
                } else {
                    0
                }
            }
            InformerEvent::Deleted(node) => {
                self.cache().remove_node(node.metadata.name.as_deref().unwrap_or(""));
                0
            }
        };
        if moved > 0 {
            tracing::debug!(pods = moved, "node change: retrying unschedulable pods");
        }
    }

    fn on_pod(&self, event: InformerEvent<Pod>) {
        let key = event.key();
        let freed = match &event {
            InformerEvent::Added(pod) => {
                let freed = self.cache().update_pod(pod);
                if is_pending(pod) {
                    self.queue.add(key);
                }
                freed
            }
            InformerEvent::Modified { old, new } => {
                let freed = self.cache().update_pod(new);
                if !is_pending(new) {
                    self.queue.remove(&key);
                } else if !is_pending(old) || pod_change_matters(old, new) {
                    // A status-only change (our own PodScheduled=False among
                    // them) cannot make the pod fit: leave it parked.
                    self.queue.add(key);
                }
                freed
            }
            InformerEvent::Deleted(pod) => {
                self.queue.remove(&key);
                self.cache().remove_pod(&key_of(pod.as_ref()))
            }
        };
        if freed {
            let moved = self.queue.move_all();
            if moved > 0 {
                tracing::debug!(pods = moved, "pod left a node: retrying unschedulable pods");
            }
        }
    }
}

/// Whether a node update could let a parked pod fit: not a heartbeat, but
/// labels, taints, cordon, allocatable or readiness.
fn node_change_matters(old: &Node, new: &Node) -> bool {
    let ready = |n: &Node| {
        n.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status.clone())
    };
    let allocatable = |n: &Node| crate::resources::node_allocatable(n);
    old.metadata.labels != new.metadata.labels
        || old.spec != new.spec
        || ready(old) != ready(new)
        || allocatable(old) != allocatable(new)
}

/// Whether a pending pod changed in a way that may change where it fits.
fn pod_change_matters(old: &Pod, new: &Pod) -> bool {
    old.spec != new.spec || old.metadata.labels != new.metadata.labels
}

// === The scheduling loop ===

impl Scheduler {
    /// Schedules pods one at a time until the queue shuts down; binds and
    /// status reports run concurrently, at most `bind_workers` at once.
    /// Dropping the future (leadership lost) aborts them.
    pub async fn schedule_loop(self: Arc<Self>) {
        let _leader = LeaderGauge::set(&self.metrics);
        tracing::info!("scheduling");
        let mut algorithm = Algorithm::new(self.options.percentage_of_nodes_to_score);
        let permits = Arc::new(Semaphore::new(self.options.bind_workers.max(1)));
        let mut tasks = JoinSet::new();
        while let Some(popped) = self.queue.pop().await {
            while tasks.try_join_next().is_some() {}
            // Waiting here when every worker is busy is the back-pressure
            // that keeps the API from being flooded.
            let Ok(permit) = permits.clone().acquire_owned().await else { break };
            self.schedule_one(&popped, &mut algorithm, &mut tasks, permit);
            self.queue.done(&popped);
        }
        // Let the writes already started finish.
        while tasks.join_next().await.is_some() {}
    }

    fn schedule_one(
        self: &Arc<Self>,
        popped: &crate::queue::Popped,
        algorithm: &mut Algorithm,
        tasks: &mut JoinSet<()>,
        permit: OwnedSemaphorePermit,
    ) {
        let key = popped.key.as_str();
        let Some(pod) = self.pods.get(key) else {
            self.queue.forget(key);
            return;
        };
        if !is_pending(&pod) {
            self.queue.forget(key);
            return;
        }
        let started = Instant::now();
        // One span per decision, in the trace of the request that made the pod.
        let span = tracing::info_span!("schedule", pod = %key);
        if let Some(parent) = trace_parent_of(&pod.metadata) {
            skiff_telemetry::set_parent_from_traceparent(&span, &parent);
        }
        let _entered = span.enter();
        let mut info = PodInfo::new(pod);
        info.volumes = self.volumes.needs(&info.pod);
        let verdict = {
            let mut cache = self.cache();
            // Assumed already: its Bind is in flight.
            if cache.has_pod(key) {
                return;
            }
            let verdict = algorithm.schedule(&self.framework, &info, &cache);
            if let Ok(node) = &verdict {
                cache.assume(&info, node);
            }
            verdict
        };
        match verdict {
            Ok(node) => {
                tasks.spawn(self.clone().bind(info, node, started, permit).instrument(span.clone()));
            }
            Err(fit) => {
                let message = fit.to_string();
                tracing::debug!(pod = %key, %message, "pod is unschedulable");
                self.metrics.attempt(Outcome::Unschedulable, started.elapsed());
                self.queue.park_unschedulable(popped);
                tasks.spawn(self.clone().report_unschedulable(info.pod, message, permit).instrument(span.clone()));
            }
        }
    }

    async fn bind(self: Arc<Self>, pod: PodInfo, node: String, started: Instant, _permit: OwnedSemaphorePermit) {
        let namespace = pod.pod.metadata.namespace.as_deref().unwrap_or("");
        let name = pod.pod.metadata.name.as_deref().unwrap_or("");
        let bound = match self.select_node_for_claims(&pod, &node).await {
            Ok(()) => self.client.bind(namespace, name, &node, &pod.uid).await,
            Err(error) => Err(error),
        };
        match bound {
            Ok(_) => {
                self.queue.forget(&pod.key);
                self.metrics.attempt(Outcome::Scheduled, started.elapsed());
                tracing::debug!(pod = %pod.key, %node, "bound");
                if self.options.record_scheduled_events {
                    let message = format!("Successfully assigned {} to {node}", pod.key);
                    self.recorder.report(pod.pod.as_ref(), EventType::Normal, "Scheduled", &message).await;
                }
            }
            Err(error) if error.is_precondition_failed() || error.is_not_found() => {
                // Bound by someone else, replaced or gone: nothing to retry.
                // The watch brings the pod's real state.
                self.cache().forget(&pod.key, &pod.uid, &node);
                self.queue.forget(&pod.key);
                tracing::debug!(pod = %pod.key, %node, %error, "pod no longer bindable");
            }
            Err(error) => {
                self.cache().forget(&pod.key, &pod.uid, &node);
                self.metrics.attempt(Outcome::Error, started.elapsed());
                tracing::warn!(pod = %pod.key, %node, %error, "bind failed, retrying");
                self.queue.requeue_backoff(&pod.key);
                let message = format!("Binding rejected: {error}");
                self.recorder.report(pod.pod.as_ref(), EventType::Warning, "FailedScheduling", &message).await;
            }
        }
    }

    /// Writes the chosen node on each claim of the pod that waits for its
    /// first consumer, so its volume is made or bound there.
    async fn select_node_for_claims(&self, pod: &PodInfo, node: &str) -> skiff_client::Result<()> {
        let namespace = pod.pod.metadata.namespace.as_deref().unwrap_or("");
        for claim in &pod.volumes.waiting {
            let patch = serde_json::json!({"metadata": {"annotations": {SELECTED_NODE_ANNOTATION: node}}});
            self.client.patch("PersistentVolumeClaim", namespace, claim, &patch).await?;
        }
        Ok(())
    }

    /// Sets PodScheduled=False (keeping the other conditions) and records
    /// a FailedScheduling Event.
    async fn report_unschedulable(self: Arc<Self>, pod: Arc<Pod>, message: String, _permit: OwnedSemaphorePermit) {
        if let Err(error) = self.set_unschedulable_condition(&pod, &message).await {
            tracing::warn!(pod = %key_of(pod.as_ref()), %error, "could not set PodScheduled=False");
        }
        self.recorder.report(pod.as_ref(), EventType::Warning, "FailedScheduling", &message).await;
    }

    async fn set_unschedulable_condition(&self, pod: &Pod, message: &str) -> skiff_client::Result<()> {
        let api = self.client.api::<Pod>(pod.metadata.namespace.as_deref().unwrap_or(""));
        let name = pod.metadata.name.as_deref().unwrap_or("");
        let uid = pod.metadata.uid.clone();
        let mut current = pod.clone();
        for _ in 0..STATUS_ATTEMPTS {
            if current.metadata.uid != uid || !is_pending(&current) {
                return Ok(());
            }
            if !set_condition(&mut current, message) {
                return Ok(());
            }
            match api.update_status(&current).await {
                Ok(_) => return Ok(()),
                Err(e) if e.is_conflict() => current = api.get(name).await?,
                Err(e) if e.is_not_found() => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Sets PodScheduled=False/Unschedulable with `message` in the pod's
/// status, keeping other conditions; false when it already says so.
pub fn set_condition(pod: &mut Pod, message: &str) -> bool {
    let conditions = pod.status.get_or_insert_with(Default::default).conditions.get_or_insert_with(Vec::new);
    let existing = conditions.iter_mut().find(|c| c.type_ == "PodScheduled");
    if let Some(c) = &existing {
        if c.status == "False" && c.reason.as_deref() == Some("Unschedulable") && c.message.as_deref() == Some(message)
        {
            return false;
        }
    }
    let now = skiff_api::clock::now_time();
    match existing {
        Some(c) => {
            if c.status != "False" {
                c.last_transition_time = Some(now);
            }
            c.status = "False".into();
            c.reason = Some("Unschedulable".into());
            c.message = Some(message.into());
        }
        None => conditions.push(PodCondition {
            type_: "PodScheduled".into(),
            status: "False".into(),
            reason: Some("Unschedulable".into()),
            message: Some(message.into()),
            last_transition_time: Some(now),
            ..Default::default()
        }),
    }
    true
}

/// Holds `skiff_scheduler_leader` at 1 for as long as the loop runs.
struct LeaderGauge(SchedulerMetrics);

impl LeaderGauge {
    fn set(metrics: &SchedulerMetrics) -> Self {
        metrics.leader.set(1);
        Self(metrics.clone())
    }
}

impl Drop for LeaderGauge {
    fn drop(&mut self) {
        self.0.leader.set(0);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn pending_means_unbound_ours_and_alive() {
        let base = json!({"metadata": {"name": "p"}, "spec": {"containers": [], "schedulerName": "default-scheduler"}});
        assert!(is_pending(&pod(base.clone())));
        let mut v = base.clone();
        v["spec"]["nodeName"] = json!("n1");
        assert!(!is_pending(&pod(v)));
        let mut v = base.clone();
        v["spec"]["schedulerName"] = json!("other");
        assert!(!is_pending(&pod(v)));
        let mut v = base.clone();
        v["metadata"]["deletionTimestamp"] = json!("2024-01-01T00:00:00Z");
        assert!(!is_pending(&pod(v)));
        let mut v = base;
        v["status"] = json!({"phase": "Failed"});
        assert!(!is_pending(&pod(v)));
    }

    #[test]
    fn condition_is_set_once_and_others_are_kept() {
        let mut p = pod(json!({
            "metadata": {"name": "p"},
            "spec": {"containers": []},
            "status": {"conditions": [{"type": "Initialized", "status": "True"}]},
        }));
        assert!(set_condition(&mut p, "0/1 nodes are available: 1 Insufficient cpu."));
        assert!(!set_condition(&mut p, "0/1 nodes are available: 1 Insufficient cpu."));
        assert!(set_condition(&mut p, "0/2 nodes are available: 2 Insufficient cpu."));
        let conditions = p.status.unwrap().conditions.unwrap();
        assert_eq!(conditions.len(), 2);
        assert_eq!(conditions[1].reason.as_deref(), Some("Unschedulable"));
        assert_eq!(conditions[1].message.as_deref(), Some("0/2 nodes are available: 2 Insufficient cpu."));
    }
}
