//! The DaemonSet controller, after Kubernetes' daemon controller: one pod
//! of the template on every node that should run it.
//!
//! - A node should run it when it matches the template's nodeSelector and
//!   required node affinity and its NoSchedule/NoExecute taints are
//!   tolerated, counting the tolerations every daemon pod gets (not-ready,
//!   unreachable, the pressure conditions, unschedulable), as Kubernetes
//!   adds them (`skiff_api::scheduling`).
//! - Each pod is placed through the scheduler, pinned to its node by a
//!   required node affinity term on `metadata.name`, as Kubernetes does.
//! - A node that joins gets its pod; a pod on a node that is gone or no
//!   longer fits is deleted, and so is a second pod on one node.
//! - RollingUpdate (the default) replaces pods of an older template, at
//!   most `maxUnavailable` (default 1) nodes without a ready pod at a time;
//!   OnDelete leaves them until someone deletes them. A pod's template is
//!   told by its `controller-revision-hash` label.
//! - Expectations, as the ReplicaSet controller's: nothing more is created
//!   or deleted for a DaemonSet until the informer has seen the last round.
//! - Status: desired, current, misscheduled, ready, updated, available and
//!   unavailable counts, observedGeneration.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures::future::join_all;
use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use skiff_api::scheduling::{node_matches, untolerated};
use skiff_api::well_known::{NOT_READY_TAINT, REVISION_HASH_LABEL, UNREACHABLE_TAINT, UNSCHEDULABLE_TAINT};
use skiff_client::{key_of, Action, Client, InformerEvent, ObjectRef, Reconcile, Store, WorkQueue};

use super::deployment::template_hash;
use super::{Context, Wiring};
use crate::error::{Error, Result};
use crate::expectations::Expectations;
use crate::pod_control::PodControl;
use crate::util::{self, controller_ref, millis};

const KIND: &str = "DaemonSet";

pub struct DaemonSetController {
    client: Client,
    daemonsets: Store<DaemonSet>,
    pods: Store<Pod>,
    nodes: Store<Node>,
    expectations: Arc<Expectations>,
    pod_control: PodControl,
}

pub fn start(ctx: &Context, w: &mut Wiring<'_>) {
    let queue = WorkQueue::new();
    let expectations = Arc::new(Expectations::new());
    {
        let queue = queue.clone();
        w.on_events(&ctx.caches.daemonsets, move |ev| queue.add(ev.key()));
    }
    {
        let (queue, expectations) = (queue.clone(), expectations.clone());
        w.on_events(&ctx.caches.pods, move |ev| on_pod_event(&queue, &expectations, ev));
    }
    {
        // A node coming, going or changing labels or taints may change
        // where every DaemonSet runs.
        let (queue, daemonsets) = (queue.clone(), ctx.caches.daemonsets.clone());
        w.on_events(&ctx.caches.nodes, move |ev| {
            let matters = match &ev {
                InformerEvent::Modified { old, new } => {
                    old.metadata.labels != new.metadata.labels || old.spec != new.spec
                }
                _ => true,
            };
            if matters {
                for ds in daemonsets.list() {
                    queue.add(key_of(ds.as_ref()));
                }
            }
        });
    }
    let controller = DaemonSetController {
        client: ctx.client.clone(),
        daemonsets: ctx.caches.daemonsets.clone(),
        pods: ctx.caches.pods.clone(),
        nodes: ctx.caches.nodes.clone(),
        expectations,
        pod_control: PodControl::new(ctx.client.clone(), "daemonset-controller"),
    };
    w.run(ctx, controller, queue);
}

fn owner_key(pod: &Pod) -> Option<String> {
    controller_ref(&pod.metadata).filter(|r| r.kind == KIND).map(|r| util::ref_key(util::namespace(&pod.metadata), r))
}

fn on_pod_event(queue: &WorkQueue<String>, expectations: &Expectations, ev: InformerEvent<Pod>) {
    let Some(ds) = owner_key(ev.object()) else { return };
    match &ev {
        InformerEvent::Added(pod) if pod.metadata.deletion_timestamp.is_none() => {
            expectations.creations_observed(&ds, 1)
        }
        InformerEvent::Added(pod) | InformerEvent::Deleted(pod) => {
            expectations.deletion_observed(&ds, &key_of(pod.as_ref()))
        }
        InformerEvent::Modified { old, new } => {
            if new.metadata.deletion_timestamp.is_some() && old.metadata.deletion_timestamp.is_none() {
                expectations.deletion_observed(&ds, &key_of(new.as_ref()));
            }
        }
    }
    queue.add(ds);
}

impl Reconcile for DaemonSetController {
    const NAME: &'static str = "daemonset";
    type Error = Error;

    async fn reconcile(&self, key: &str) -> Result<Action> {
        let Some(ds) = self.daemonsets.get(key) else {
            self.expectations.forget(key);
            return Ok(Action::done());
        };
        if ds.metadata.deletion_timestamp.is_some() {
            // The garbage collector deletes its pods.
            return Ok(Action::done());
        }
        let hash = template_hash(&ds.spec.template, 0);
        let plan = Plan::new(&ds, &self.nodes.list(), &self.owned(&ds), &hash);
        if self.expectations.satisfied(key) {
            self.create(key, &ds, &hash, &plan.to_create).await?;
            self.pod_control.delete(key, &ObjectRef::of(ds.as_ref()), &plan.to_delete, &self.expectations).await?;
        }
        let status = plan.status(&ds, &hash, millis(&util::now()));
        if ds.status.as_ref() != Some(&status) {
            let mut updated = (*ds).clone();
            updated.status = Some(status);
            match self.client.api::<DaemonSet>(util::namespace(&ds.metadata)).update_status(&updated).await {
                Ok(_) => {}
                Err(e) if e.is_not_found() => return Ok(Action::done()),
                Err(source) => return Err(Error::UpdateStatus { kind: KIND, key: key.into(), source }),
            }
        }
        Ok(Action::done())
    }
}

impl DaemonSetController {
    /// The active pods this DaemonSet controls.
    fn owned(&self, ds: &DaemonSet) -> Vec<Arc<Pod>> {
        let uid = ds.metadata.uid.as_deref();
        self.pods
            .list()
            .into_iter()
            .filter(|p| util::is_active(p) && controller_ref(&p.metadata).is_some_and(|r| Some(r.uid.as_str()) == uid))
            .collect()
    }

    async fn create(&self, key: &str, ds: &DaemonSet, hash: &str, nodes: &[String]) -> Result<()> {
        if nodes.is_empty() {
            return Ok(());
        }
        self.expectations.expect_creations(key, nodes.len());
        let owner = ObjectRef::of(ds);
        let results = join_all(nodes.iter().map(|node| async {
            let created = self.pod_control.create(&owner, &pod_for_node(ds, hash, node)).await;
            if created.is_err() {
                // No informer event will come for it.
                self.expectations.creations_observed(key, 1);
            }
            created
        }))
        .await;
        results.into_iter().find_map(Result::err).map_or(Ok(()), Err)
    }
}

/// What one reconcile decides: which nodes get a pod, which pods go.
struct Plan {
    /// Nodes that should run the daemon.
    eligible: BTreeSet<String>,
    /// The pods on each node, oldest first.
    by_node: BTreeMap<String, Vec<Arc<Pod>>>,
    to_create: Vec<String>,
    to_delete: Vec<Arc<Pod>>,
}

impl Plan {
    fn new(ds: &DaemonSet, nodes: &[Arc<Node>], owned: &[Arc<Pod>], hash: &str) -> Self {
        let spec = daemon_pod_spec(ds);
        let eligible: BTreeSet<String> =
            nodes.iter().filter(|n| should_run(&spec, n)).filter_map(|n| n.metadata.name.clone()).collect();
        let mut by_node: BTreeMap<String, Vec<Arc<Pod>>> = BTreeMap::new();
        for pod in owned {
            by_node.entry(target_node(pod)).or_default().push(pod.clone());
        }
        for pods in by_node.values_mut() {
            pods.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| millis(&t.0)).unwrap_or(0));
        }
        let to_create = eligible.iter().filter(|n| !by_node.contains_key(*n)).cloned().collect();
        let mut to_delete = Vec::new();
        for (node, pods) in &by_node {
            if eligible.contains(node) {
                // One pod a node: the oldest stays.
                to_delete.extend(pods.iter().skip(1).cloned());
            } else {
                to_delete.extend(pods.iter().cloned());
            }
        }
        let mut plan = Self { eligible, by_node, to_create, to_delete };
        plan.roll(ds, hash);
        plan
    }

    /// RollingUpdate: with the pods where they belong, replace old-template
    /// pods while at most maxUnavailable nodes lack a ready pod.
    fn roll(&mut self, ds: &DaemonSet, hash: &str) {
        let strategy = ds.spec.update_strategy.as_ref();
        if strategy.and_then(|s| s.type_.as_deref()) == Some("OnDelete") || !self.to_create.is_empty() {
            return;
        }
        let max = strategy
            .and_then(|s| s.rolling_update.as_ref())
            .and_then(|r| r.max_unavailable.as_ref())
            .map_or(1, |m| scaled(m, self.eligible.len()))
            .max(1);
        let unavailable = self.eligible.iter().filter(|n| !self.ready_on(n)).count();
        let mut budget = max.saturating_sub(unavailable);
        let mut old: Vec<Arc<Pod>> = self
            .eligible
            .iter()
            .filter_map(|n| self.by_node.get(n).and_then(|pods| pods.first()))
            .filter(|p| !is_current(p, hash))
            .cloned()
            .collect();
        // Not-ready ones first: replacing them costs no availability.
        old.sort_by_key(|p| util::is_ready(p));
        for pod in old {
            if !util::is_ready(&pod) {
                self.to_delete.push(pod);
            } else if budget > 0 {
                budget -= 1;
                self.to_delete.push(pod);
            }
        }
    }

    fn ready_on(&self, node: &str) -> bool {
        self.by_node.get(node).and_then(|pods| pods.first()).is_some_and(|p| util::is_ready(p))
    }

    fn status(&self, ds: &DaemonSet, hash: &str, now_ms: i64) -> DaemonSetStatus {
        let min_ready = ds.spec.min_ready_seconds.unwrap_or(0);
        let placed: Vec<&Arc<Pod>> =
            self.eligible.iter().filter_map(|n| self.by_node.get(n).and_then(|pods| pods.first())).collect();
        let count = |f: &dyn Fn(&Pod) -> bool| placed.iter().filter(|p| f(p)).count() as i32;
        let desired = self.eligible.len() as i32;
        let available = count(&|p| util::is_available(p, min_ready, now_ms));
        let misscheduled = self.by_node.keys().filter(|n| !self.eligible.contains(*n)).count() as i32;
        DaemonSetStatus {
            desired_number_scheduled: desired,
            current_number_scheduled: placed.len() as i32,
            number_misscheduled: misscheduled,
            number_ready: count(&util::is_ready),
            updated_number_scheduled: Some(count(&|p| is_current(p, hash))),
            number_available: Some(available),
            number_unavailable: Some(desired - available),
            observed_generation: ds.metadata.generation,
            ..ds.status.clone().unwrap_or_default()
        }
    }
}

fn is_current(pod: &Pod, hash: &str) -> bool {
    pod.metadata.labels.as_ref().and_then(|l| l.get(REVISION_HASH_LABEL)).is_some_and(|h| h == hash)
}

/// `maxUnavailable` as a count of `total` nodes (a percentage rounds up).
fn scaled(value: &IntOrString, total: usize) -> usize {
    match value {
        IntOrString::Int(n) => usize::try_from(*n).unwrap_or(0),
        IntOrString::String(s) => {
            let percent = s.trim_end_matches('%').parse::<usize>().unwrap_or(0);
            (total * percent).div_ceil(100)
        }
    }
}

/// The node a daemon pod is for: where it is bound, else the node its
/// affinity pins it to.
fn target_node(pod: &Pod) -> String {
    if let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()).filter(|n| !n.is_empty()) {
        return node;
    }
    let terms = pod
        .spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| a.required_during_scheduling_ignored_during_execution.as_ref())
        .map(|r| r.node_selector_terms.as_slice())
        .unwrap_or_default();
    terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|f| f.key == "metadata.name" && f.operator == "In")
        .and_then(|f| f.values.as_ref()?.first().cloned())
        .unwrap_or_default()
}

fn should_run(spec: &k8s_openapi::api::core::v1::PodSpec, node: &Node) -> bool {
    let taints = node.spec.as_ref().and_then(|s| s.taints.as_deref()).unwrap_or_default();
    node_matches(spec, node) && untolerated(taints, spec.tolerations.as_deref().unwrap_or_default()).is_none()
}

/// The template's pod spec with the tolerations every daemon pod gets.
fn daemon_pod_spec(ds: &DaemonSet) -> k8s_openapi::api::core::v1::PodSpec {
    let mut spec = ds.spec.template.spec.clone().unwrap_or_default();
    let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
    let toleration = |key: &str, effect: &str| Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some(effect.into()),
        ..Default::default()
    };
    for (key, effect) in [
        (NOT_READY_TAINT, "NoExecute"),
        (UNREACHABLE_TAINT, "NoExecute"),
        ("node.kubernetes.io/disk-pressure", "NoSchedule"),
        ("node.kubernetes.io/memory-pressure", "NoSchedule"),
        ("node.kubernetes.io/pid-pressure", "NoSchedule"),
        (UNSCHEDULABLE_TAINT, "NoSchedule"),
    ] {
        if !tolerations.iter().any(|t| t.key.as_deref() == Some(key) && t.effect.as_deref() == Some(effect)) {
            tolerations.push(toleration(key, effect));
        }
    }
    spec
}

/// A pod of `ds`'s template for `node`: the daemon tolerations, pinned to
/// the node by a required affinity term (replacing the template's
/// required terms, as Kubernetes does), labelled with the template's hash.
fn pod_for_node(ds: &DaemonSet, hash: &str, node: &str) -> Pod {
    let template = &ds.spec.template;
    let meta = template.metadata.clone().unwrap_or_default();
    let mut labels = meta.labels.unwrap_or_default();
    labels.insert(REVISION_HASH_LABEL.into(), hash.into());
    let mut spec = daemon_pod_spec(ds);
    let pin = NodeSelectorTerm {
        match_fields: Some(vec![NodeSelectorRequirement {
            key: "metadata.name".into(),
            operator: "In".into(),
            values: Some(vec![node.into()]),
        }]),
        ..Default::default()
    };
    let affinity = spec.affinity.get_or_insert_with(Affinity::default);
    let node_affinity = affinity.node_affinity.get_or_insert_with(NodeAffinity::default);
    node_affinity.required_during_scheduling_ignored_during_execution =
        Some(NodeSelector { node_selector_terms: vec![pin] });
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", util::name(&ds.metadata))),
            namespace: ds.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: meta.annotations,
            owner_references: Some(vec![util::owner_ref(ds)]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ds(extra: serde_json::Value) -> DaemonSet {
        let mut v = json!({"metadata": {"name": "agent", "namespace": "default", "uid": "u1", "generation": 2},
            "spec": {"selector": {"matchLabels": {"app": "agent"}},
                "template": {"metadata": {"labels": {"app": "agent"}}, "spec": {"containers": [{"name": "c", "image": "a:1"}]}}}});
        if let Some(spec) = extra.as_object() {
            for (k, val) in spec {
                v["spec"][k] = val.clone();
            }
        }
        serde_json::from_value(v).unwrap()
    }

    fn node(name: &str, labels: serde_json::Value, taints: serde_json::Value) -> Arc<Node> {
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}, "spec": {"taints": taints}}))
                .unwrap(),
        )
    }

    fn pod(node: &str, hash: &str, ready: bool, created: i64) -> Arc<Pod> {
        Arc::new(serde_json::from_value(json!({
            "metadata": {"name": format!("agent-{node}-{created}"), "namespace": "default", "labels": {REVISION_HASH_LABEL: hash},
                "creationTimestamp": format!("2026-01-01T00:00:{created:02}Z")},
            "spec": {"nodeName": node, "containers": []},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
        })).unwrap())
    }

    #[test]
    fn one_pod_on_every_fitting_node_and_none_elsewhere() {
        let d = ds(json!({"template": {"metadata": {"labels": {"app": "agent"}},
            "spec": {"nodeSelector": {"role": "worker"}, "containers": [{"name": "c", "image": "a:1"}]}}}));
        let nodes = vec![
            node("w1", json!({"role": "worker"}), json!([])),
            node("w2", json!({"role": "worker"}), json!([{"key": "dedicated", "effect": "NoSchedule"}])),
            node("w3", json!({"role": "worker"}), json!([{"key": NOT_READY_TAINT, "effect": "NoExecute"}])),
            node("m1", json!({"role": "master"}), json!([])),
        ];
        let hash = template_hash(&d.spec.template, 0);
        let owned = vec![pod("m1", &hash, true, 1), pod("w1", &hash, true, 1), pod("w1", &hash, true, 2)];
        let plan = Plan::new(&d, &nodes, &owned, &hash);
        assert_eq!(plan.to_create, ["w3"], "w2's taint is not tolerated; not-ready is, as for every daemon");
        let deleted: Vec<&str> = plan.to_delete.iter().map(|p| util::name(&p.metadata)).collect();
        assert_eq!(deleted, ["agent-m1-1", "agent-w1-2"], "the misplaced one and the younger twin");
        let status = plan.status(&d, &hash, 0);
        assert_eq!(
            (status.desired_number_scheduled, status.current_number_scheduled, status.number_misscheduled),
            (2, 1, 1)
        );
    }

    #[test]
    fn a_rolling_update_replaces_one_ready_pod_at_a_time() {
        let d = ds(json!({}));
        let nodes =
            vec![node("a", json!({}), json!([])), node("b", json!({}), json!([])), node("c", json!({}), json!([]))];
        let hash = template_hash(&d.spec.template, 0);
        let owned = vec![pod("a", "old", true, 1), pod("b", "old", true, 1), pod("c", &hash, true, 1)];
        let plan = Plan::new(&d, &nodes, &owned, &hash);
        assert_eq!(plan.to_delete.len(), 1, "maxUnavailable 1");
        let broken = vec![pod("a", "old", false, 1), pod("b", "old", true, 1), pod("c", &hash, true, 1)];
        let plan = Plan::new(&d, &nodes, &broken, &hash);
        let deleted: Vec<&str> = plan.to_delete.iter().map(|p| util::name(&p.metadata)).collect();
        assert_eq!(deleted, ["agent-a-1"], "the not-ready one goes; a is already the unavailable one");
        let on_delete = ds(json!({"updateStrategy": {"type": "OnDelete"}}));
        assert!(Plan::new(&on_delete, &nodes, &owned, &hash).to_delete.is_empty());
    }

    #[test]
    fn a_daemon_pod_is_pinned_to_its_node_and_tolerates_node_conditions() {
        let p = pod_for_node(&ds(json!({})), "h1", "n7");
        assert_eq!(target_node(&p), "n7");
        assert_eq!(p.metadata.labels.as_ref().unwrap()[REVISION_HASH_LABEL], "h1");
        let tolerations = p.spec.as_ref().unwrap().tolerations.as_ref().unwrap();
        assert!(tolerations.iter().any(|t| t.key.as_deref() == Some(UNREACHABLE_TAINT)));
        assert_eq!(scaled(&IntOrString::String("25%".into()), 5), 2);
    }
}
