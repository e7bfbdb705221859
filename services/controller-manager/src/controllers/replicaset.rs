//! The ReplicaSet controller, after Kubernetes' `replica_set.go`: keeps
//! `spec.replicas` pods matching the selector, owned through a controller
//! reference.
//!
//! - Claims pods: adopts orphans whose labels match, releases owned pods
//!   whose labels no longer do.
//! - Creates missing pods in slow-start batches (1, 2, 4, …) so a large
//!   scale-up is fast but a failing create stops after a few tries; deletes
//!   surplus pods preferring unscheduled, then pending, then not-ready, then
//!   the newest.
//! - Records expectations before every create or delete and does nothing
//!   more for that ReplicaSet until the informer has seen them, so a stale
//!   cache never causes duplicate pods.
//! - Writes status: replicas, fullyLabeledReplicas, readyReplicas,
//!   availableReplicas (ready for minReadySeconds), observedGeneration.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use skiff_api::LabelSelector;
use skiff_client::{key_of, trace_parent_of, Action, Client, InformerEvent, ObjectRef, Reconcile, Store, WorkQueue};

use super::{Context, Wiring};
use crate::error::{Error, Result};
use crate::expectations::Expectations;
use crate::pod_control::PodControl;
use crate::util::{self, controller_ref, millis, Claimer};

pub struct ReplicaSetController {
    client: Client,
    pods: Store<Pod>,
    replicasets: Store<ReplicaSet>,
    expectations: Arc<Expectations>,
    pod_control: PodControl,
    burst: usize,
}

pub fn start(ctx: &Context, w: &mut Wiring<'_>) {
    let queue = WorkQueue::new();
    let expectations = Arc::new(Expectations::new());
    {
        let queue = queue.clone();
        w.on_events(&ctx.caches.replicasets, move |ev| queue.add(ev.key()));
    }
    {
        let queue = queue.clone();
        let expectations = expectations.clone();
        let replicasets = ctx.caches.replicasets.clone();
        w.on_events(&ctx.caches.pods, move |ev| on_pod_event(&queue, &expectations, &replicasets, ev));
    }
    let controller = ReplicaSetController {
        client: ctx.client.clone(),
        pods: ctx.caches.pods.clone(),
        replicasets: ctx.caches.replicasets.clone(),
        expectations,
        pod_control: PodControl::new(ctx.client.clone(), "replicaset-controller"),
        burst: ctx.burst_replicas,
    };
    w.run(ctx, controller, queue);
}

/// The key of the ReplicaSet that controls `pod`, if one does.
fn owner_key(pod: &Pod) -> Option<String> {
    controller_ref(&pod.metadata)
        .filter(|r| r.kind == "ReplicaSet")
        .map(|r| util::ref_key(util::namespace(&pod.metadata), r))
}

/// Maps a pod change to the ReplicaSets it matters to, counting down
/// expectations on the way.
fn on_pod_event(
    queue: &WorkQueue<String>,
    expectations: &Expectations,
    replicasets: &Store<ReplicaSet>,
    ev: InformerEvent<Pod>,
) {
    match ev {
        InformerEvent::Added(pod) => match owner_key(&pod) {
            Some(rs) => {
                if pod.metadata.deletion_timestamp.is_some() {
                    expectations.deletion_observed(&rs, &key_of(pod.as_ref()));
                } else {
                    expectations.creations_observed(&rs, 1);
                }
                queue.add(rs);
            }
            None => enqueue_matching(queue, replicasets, &pod),
        },
        InformerEvent::Modified { old, new } => {
            let (old_rs, new_rs) = (owner_key(&old), owner_key(&new));
            if new.metadata.deletion_timestamp.is_some() && old.metadata.deletion_timestamp.is_none() {
                if let Some(rs) = &new_rs {
                    expectations.deletion_observed(rs, &key_of(new.as_ref()));
                }
            }
            if old_rs != new_rs {
                if let Some(rs) = old_rs.clone() {
                    queue.add(rs);
                }
            }
            match new_rs {
                Some(rs) => queue.add(rs),
                None if old_rs.is_some() || old.metadata.labels != new.metadata.labels => {
                    enqueue_matching(queue, replicasets, &new)
                }
                None => {}
            }
        }
        InformerEvent::Deleted(pod) => {
            if let Some(rs) = owner_key(&pod) {
                expectations.deletion_observed(&rs, &key_of(pod.as_ref()));
                queue.add(rs);
            }
        }
    }
}

/// An orphan: every ReplicaSet in its namespace that could adopt it.
fn enqueue_matching(queue: &WorkQueue<String>, replicasets: &Store<ReplicaSet>, pod: &Pod) {
    let ns = util::namespace(&pod.metadata);
    let empty = BTreeMap::new();
    let labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
    for rs in replicasets.list() {
        if util::namespace(&rs.metadata) != ns {
            continue;
        }
        let selector = LabelSelector::from_k8s(&rs.spec.selector);
        if selector.is_ok_and(|s| !s.is_empty() && s.matches(labels)) {
            queue.add(key_of(rs.as_ref()));
        }
    }
}

impl Reconcile for ReplicaSetController {
    const NAME: &'static str = "replicaset";
    type Error = Error;

    fn trace_parent(&self, key: &str) -> Option<String> {
        trace_parent_of(&self.replicasets.get(key)?.metadata)
    }

    async fn reconcile(&self, key: &str) -> Result<Action> {
        let Some(rs) = self.replicasets.get(key) else {
            self.expectations.forget(key);
            return Ok(Action::done());
        };
        let ns = util::namespace(&rs.metadata).to_string();
        let spec = rs.spec.clone();
        let selector = LabelSelector::from_k8s(&spec.selector).map_err(|source| Error::Selector {
            kind: "ReplicaSet",
            key: key.into(),
            source,
        })?;
        if selector.is_empty() {
            return Err(Error::Invalid { kind: "ReplicaSet", key: key.into(), reason: "empty selector".into() });
        }
        // Read before anything else: a pod seen after this point is at
        // least as new as the expectations it might satisfy.
        let needs_sync = self.expectations.satisfied(key);
        let candidates: Vec<Arc<Pod>> =
            self.pods.list().into_iter().filter(|p| util::namespace(&p.metadata) == ns && util::is_active(p)).collect();
        let deleting = rs.metadata.deletion_timestamp.is_some();
        let claimer = Claimer {
            api: self.client.api::<Pod>(&ns),
            owner_ref: util::owner_ref(rs.as_ref()),
            selector: &selector,
            deleting,
        };
        let owned = claimer.claim(candidates, || util::still_exists(&self.client, rs.as_ref())).await?;

        let managed = if needs_sync && !deleting {
            self.manage_replicas(key, &rs, spec.replicas.unwrap_or(1).max(0) as usize, &owned).await
        } else {
            Ok(())
        };

        let now_ms = millis(&util::now());
        let min_ready = spec.min_ready_seconds.unwrap_or(0);
        let status = calculate_status(&rs, &owned, now_ms);
        if rs.status.as_ref() != Some(&status) {
            let mut updated = (*rs).clone();
            updated.status = Some(status.clone());
            match self.client.api::<ReplicaSet>(&ns).update_status(&updated).await {
                Ok(_) => {}
                // Deleted meanwhile: its Deleted event ends the matter.
                Err(e) if e.is_not_found() => return Ok(Action::done()),
                Err(source) => return Err(Error::UpdateStatus { kind: "ReplicaSet", key: key.into(), source }),
            }
        }
        managed?;
        if min_ready > 0 && status.ready_replicas != status.available_replicas {
            // A pod becomes available by the clock, not by an event.
            return Ok(Action::requeue(Duration::from_secs(min_ready as u64)));
        }
        Ok(Action::done())
    }
}

impl ReplicaSetController {
    async fn manage_replicas(&self, key: &str, rs: &ReplicaSet, want: usize, owned: &[Arc<Pod>]) -> Result<()> {
        if owned.len() < want {
            let n = (want - owned.len()).min(self.burst);
            self.create_pods(key, rs, n).await
        } else if owned.len() > want {
            let n = (owned.len() - want).min(self.burst);
            self.delete_pods(key, rs, owned, n).await
        } else {
            Ok(())
        }
    }

    /// Creates `n` pods in batches of 1, 2, 4, …; stops at the first batch
    /// with a failure.
    async fn create_pods(&self, key: &str, rs: &ReplicaSet, n: usize) -> Result<()> {
        self.expectations.expect_creations(key, n);
        let pod = pod_from_template(rs);
        let owner = ObjectRef::of(rs);
        let mut remaining = n;
        let mut batch = 1;
        while remaining > 0 {
            let size = batch.min(remaining);
            remaining -= size;
            let results = join_all((0..size).map(|_| self.pod_control.create(&owner, &pod))).await;
            let failed = results.iter().filter(|r| r.is_err()).count();
            if failed > 0 {
                // Neither the failures nor the creates never tried will be
                // seen by the informer.
                tracing::info!(
                    replicaset = key,
                    failed,
                    skipped = remaining,
                    "pod creation failed, stopping this burst"
                );
                self.expectations.creations_observed(key, failed + remaining);
                return results.into_iter().find_map(Result::err).map_or(Ok(()), Err);
            }
            batch *= 2;
        }
        Ok(())
    }

    async fn delete_pods(&self, key: &str, rs: &ReplicaSet, owned: &[Arc<Pod>], n: usize) -> Result<()> {
        let mut victims: Vec<Arc<Pod>> = owned.to_vec();
        victims.sort_by_key(|p| deletion_rank(p));
        victims.truncate(n);
        self.pod_control.delete(key, &ObjectRef::of(rs), &victims, &self.expectations).await
    }
}

/// Which surplus pod goes first (smallest first): unscheduled before
/// scheduled, pending before running, not ready before ready, newest first.
fn deletion_rank(pod: &Pod) -> (bool, u8, bool, Reverse<i64>) {
    let scheduled = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).is_some_and(|n| !n.is_empty());
    let phase = match util::phase(pod) {
        "Pending" => 0,
        "Running" => 2,
        _ => 1,
    };
    let created = pod.metadata.creation_timestamp.as_ref().map(|t| millis(&t.0)).unwrap_or(0);
    (scheduled, phase, util::is_ready(pod), Reverse(created))
}

/// A new pod for `rs`: the template's labels, annotations and spec, a
/// generated name, and a controller reference.
pub fn pod_from_template(rs: &ReplicaSet) -> Pod {
    let template = rs.spec.template.clone().unwrap_or_default();
    let meta = template.metadata.unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", util::name(&rs.metadata))),
            namespace: rs.metadata.namespace.clone(),
            labels: meta.labels,
            annotations: meta.annotations,
            finalizers: meta.finalizers,
            owner_references: Some(vec![util::owner_ref(rs)]),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    }
}

pub fn calculate_status(rs: &ReplicaSet, owned: &[Arc<Pod>], now_ms: i64) -> ReplicaSetStatus {
    let template_labels = rs.spec.template.as_ref().and_then(|t| t.metadata.as_ref()).and_then(|m| m.labels.as_ref());
    let min_ready = rs.spec.min_ready_seconds.unwrap_or(0);
    let count = |f: &dyn Fn(&Pod) -> bool| owned.iter().filter(|p| f(p)).count() as i32;
    let mut status = rs.status.clone().unwrap_or_default();
    status.replicas = owned.len() as i32;
    status.fully_labeled_replicas = Some(count(&|p| util::labels_contain(p.metadata.labels.as_ref(), template_labels)));
    status.ready_replicas = Some(count(&util::is_ready));
    status.available_replicas = Some(count(&|p| util::is_available(p, min_ready, now_ms)));
    status.observed_generation = rs.metadata.generation;
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    fn pod(name: &str, node: &str, phase: &str, ready: bool, created: i64) -> Arc<Pod> {
        Arc::new(Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                creation_timestamp: Some(Time(Timestamp::from_second(created).unwrap())),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some(node.into()).filter(|n: &String| !n.is_empty()),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        })
    }

    #[test]
    fn deletes_unscheduled_then_pending_then_not_ready_then_newest() {
        let mut pods = [
            pod("ready-old", "n", "Running", true, 100),
            pod("ready-new", "n", "Running", true, 200),
            pod("not-ready", "n", "Running", false, 50),
            pod("pending", "n", "Pending", false, 10),
            pod("unscheduled", "", "Pending", false, 5),
        ];
        pods.sort_by_key(|p| deletion_rank(p));
        let names: Vec<_> = pods.iter().map(|p| util::name(&p.metadata).to_string()).collect();
        assert_eq!(names, ["unscheduled", "pending", "not-ready", "ready-new", "ready-old"]);
    }

    #[test]
    fn pods_from_the_template_are_owned_and_labelled() {
        let rs: ReplicaSet = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-abc", "namespace": "ns", "uid": "u1"},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "c", "image": "i"}]}}}
        }))
        .unwrap();
        let pod = pod_from_template(&rs);
        assert_eq!(pod.metadata.generate_name.as_deref(), Some("web-abc-"));
        assert_eq!(pod.metadata.labels.unwrap()["app"], "web");
        let owner = &pod.metadata.owner_references.unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller, owner.block_owner_deletion),
            ("ReplicaSet", "u1", Some(true), Some(true))
        );

        let owned = vec![pod_ready("a", true), pod_ready("b", false)];
        let status = calculate_status(&rs, &owned, 0);
        assert_eq!((status.replicas, status.ready_replicas, status.available_replicas), (2, Some(1), Some(1)));
    }

    fn pod_ready(name: &str, ready: bool) -> Arc<Pod> {
        pod(name, "n", "Running", ready, 1)
    }
}
