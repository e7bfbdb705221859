//! The StatefulSet controller, after Kubernetes' `stateful_set_control.go`:
//! pods with stable identities `NAME-0 … NAME-(N-1)`.
//!
//! - **Identity.** Pod `NAME-i` has hostname `NAME-i` and subdomain
//!   `spec.serviceName`, so the headless Service gives it the DNS name
//!   `NAME-i.SERVICE.NS.svc.<domain>`; labels
//!   `statefulset.kubernetes.io/pod-name` and `apps.kubernetes.io/pod-index`.
//!   A pod replaced keeps its name, hostname and claims.
//! - **At most one per ordinal.** A pod is only ever created under its
//!   ordinal's name, so a replacement cannot exist before the old pod is
//!   gone from the API. A pod on a lost node is evicted but not removed
//!   until its kubelet (or a person, with a forced delete) confirms it, and
//!   its ordinal waits until then, as in Kubernetes.
//! - **Claims.** Each volumeClaimTemplate becomes a PersistentVolumeClaim
//!   `TEMPLATE-NAME-i`, created before the pod and mounted in its place.
//!   persistentVolumeClaimRetentionPolicy: `whenDeleted: Delete` makes the
//!   StatefulSet the claims' owner, `whenScaled: Delete` makes a condemned
//!   pod the owner of its claims; the garbage collector does the rest.
//!   Retain (the default for both) leaves them. A pending pod whose claim
//!   is gone gets it made again: with a local volume whose node is lost,
//!   deleting the claim (and the pod, for good) lets the ordinal start over
//!   elsewhere, as in Kubernetes.
//! - **Order.** OrderedReady (the default) creates ordinals one at a time,
//!   each once the one before is Running and Ready, and removes surplus
//!   pods from the highest ordinal down, one at a time; Parallel does both
//!   at once.
//! - **Updates.** RollingUpdate replaces pods of an older template from the
//!   highest ordinal down to `partition`, one at a time, each after the
//!   rest are Ready; OnDelete leaves them until someone deletes them. A
//!   pod's template is told by its `controller-revision-hash` label.
//! - **Status.** replicas, ready, available, current and updated counts,
//!   currentRevision, updateRevision, observedGeneration.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, Volume};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use skiff_api::well_known::{REVISION_HASH_LABEL, STATEFULSET_POD_INDEX_LABEL, STATEFULSET_POD_NAME_LABEL};
use skiff_api::LabelSelector;
use skiff_client::{key_of, Action, Client, EventRecorder, EventType, InformerEvent, Reconcile, Store, WorkQueue};

use super::deployment::template_hash;
use super::{Context, Wiring};
use crate::error::{Error, Result};
use crate::util::{self, controller_ref, millis, Claimer};

const KIND: &str = "StatefulSet";

pub struct StatefulSetController {
    client: Client,
    statefulsets: Store<StatefulSet>,
    pods: Store<Pod>,
    claims: Store<PersistentVolumeClaim>,
    recorder: EventRecorder,
}

pub fn start(ctx: &Context, w: &mut Wiring<'_>) {
    let queue = WorkQueue::new();
    {
        let queue = queue.clone();
        w.on_events(&ctx.caches.statefulsets, move |ev| queue.add(ev.key()));
    }
    {
        let queue = queue.clone();
        w.on_events(&ctx.caches.pods, move |ev: InformerEvent<Pod>| {
            let pod = ev.object();
            if let Some(r) = controller_ref(&pod.metadata).filter(|r| r.kind == KIND) {
                queue.add(util::ref_key(util::namespace(&pod.metadata), r));
            }
        });
    }
    let controller = StatefulSetController {
        client: ctx.client.clone(),
        statefulsets: ctx.caches.statefulsets.clone(),
        pods: ctx.caches.pods.clone(),
        claims: ctx.caches.persistent_volume_claims.clone(),
        recorder: EventRecorder::new(ctx.client.clone(), "statefulset-controller"),
    };
    w.run(ctx, controller, queue);
}

/// `NAME-i` → i, for the pods of the set named `set`.
fn ordinal(set: &str, pod: &Pod) -> Option<i32> {
    let name = util::name(&pod.metadata);
    name.strip_prefix(set)?.strip_prefix('-')?.parse().ok().filter(|i| *i >= 0)
}

/// Running with every container ready.
fn running_and_ready(pod: &Pod) -> bool {
    util::phase(pod) == "Running" && util::is_ready(pod) && pod.metadata.deletion_timestamp.is_none()
}

fn finished(pod: &Pod) -> bool {
    matches!(util::phase(pod), "Succeeded" | "Failed")
}

fn revision(pod: &Pod) -> Option<&str> {
    pod.metadata.labels.as_ref()?.get(REVISION_HASH_LABEL).map(String::as_str)
}

impl Reconcile for StatefulSetController {
    const NAME: &'static str = "statefulset";
    type Error = Error;

    async fn reconcile(&self, key: &str) -> Result<Action> {
        let Some(set) = self.statefulsets.get(key) else {
            return Ok(Action::done());
        };
        let name = util::name(&set.metadata).to_string();
        let pods = self.claim(key, &set).await?;
        let update_revision = format!("{name}-{}", template_hash(&set.spec.template, 0));
        let mut by_ordinal: BTreeMap<i32, Arc<Pod>> = BTreeMap::new();
        for pod in pods {
            if let Some(i) = ordinal(&name, &pod) {
                by_ordinal.insert(i, pod);
            }
        }
        let result = if set.metadata.deletion_timestamp.is_some() {
            Ok(())
        } else {
            self.sync(&set, &by_ordinal, &update_revision).await
        };
        self.write_status(key, &set, &by_ordinal, &update_revision).await?;
        result.map(|()| Action::done())
    }
}

impl StatefulSetController {
    async fn sync(&self, set: &StatefulSet, pods: &BTreeMap<i32, Arc<Pod>>, update_revision: &str) -> Result<()> {
        let spec = &set.spec;
        let start = spec.ordinals.as_ref().and_then(|o| o.start).unwrap_or(0).max(0);
        let replicas = spec.replicas.unwrap_or(1).max(0);
        let wanted = start..start + replicas;
        let ordered = spec.pod_management_policy.as_deref() != Some("Parallel");

        // A finished pod of a wanted ordinal is removed, to be made again.
        for (i, pod) in pods.iter().filter(|(i, _)| wanted.contains(i)) {
            if finished(pod) && pod.metadata.deletion_timestamp.is_none() {
                self.delete_pod(set, pod, &format!("its pod {} finished", i)).await?;
                if ordered {
                    return Ok(());
                }
            }
        }
        // Missing ordinals, lowest first; in order, each waits for the last.
        for i in wanted.clone() {
            match pods.get(&i) {
                None => {
                    self.create_pod(set, i, update_revision).await?;
                    if ordered {
                        return Ok(());
                    }
                }
                Some(pod) => {
                    if util::phase(pod) == "Pending" && pod.metadata.deletion_timestamp.is_none() {
                        // A claim deleted under a waiting pod (its volume's
                        // node gone, say) is made again, as Kubernetes does.
                        for claim in claims_for(set, i) {
                            self.create_claim(set, claim).await?;
                        }
                    }
                    if ordered && !running_and_ready(pod) {
                        return Ok(());
                    }
                }
            }
        }
        // Surplus ordinals, highest first.
        let condemned: Vec<(&i32, &Arc<Pod>)> = pods.iter().rev().filter(|(i, _)| !wanted.contains(i)).collect();
        for (_, pod) in &condemned {
            if pod.metadata.deletion_timestamp.is_some() {
                if ordered {
                    return Ok(());
                }
                continue;
            }
            if scaled_claims_deleted(set) {
                self.hand_claims_to(set, pod).await?;
            }
            self.delete_pod(set, pod, "scale down").await?;
            if ordered {
                return Ok(());
            }
        }
        self.roll(set, pods, &wanted, update_revision).await
    }

    /// RollingUpdate: the highest ordinal at or above the partition still on
    /// an older template is deleted (to come back on the new one), once
    /// every other pod is Running and Ready.
    async fn roll(
        &self,
        set: &StatefulSet,
        pods: &BTreeMap<i32, Arc<Pod>>,
        wanted: &std::ops::Range<i32>,
        update_revision: &str,
    ) -> Result<()> {
        let strategy = set.spec.update_strategy.as_ref();
        if strategy.and_then(|s| s.type_.as_deref()) == Some("OnDelete") {
            return Ok(());
        }
        let partition = strategy.and_then(|s| s.rolling_update.as_ref()).and_then(|r| r.partition).unwrap_or(0);
        if wanted.clone().any(|i| !pods.get(&i).is_some_and(|p| running_and_ready(p))) {
            return Ok(());
        }
        let stale = wanted.clone().rev().filter(|i| *i >= wanted.start + partition).find_map(|i| {
            let pod = pods.get(&i)?;
            (revision(pod) != Some(update_revision)).then_some(pod)
        });
        match stale {
            Some(pod) => self.delete_pod(set, pod, "rolling update").await,
            None => Ok(()),
        }
    }

    /// The pod of ordinal `i` (and its claims first).
    async fn create_pod(&self, set: &StatefulSet, i: i32, update_revision: &str) -> Result<()> {
        let pod = new_pod(set, i, update_revision);
        for claim in claims_for(set, i) {
            self.create_claim(set, claim).await?;
        }
        let ns = util::namespace(&set.metadata);
        let name = util::name(&pod.metadata).to_string();
        match self.client.api::<Pod>(ns).create(&pod).await {
            Ok(_) => {
                let message = format!("create Pod {name} in StatefulSet {} successful", util::name(&set.metadata));
                self.recorder.report(set, EventType::Normal, "SuccessfulCreate", &message).await;
                Ok(())
            }
            // The cache had not seen it yet: the next sync will.
            Err(e) if e.is_already_exists() => Ok(()),
            Err(source) => {
                let message =
                    format!("create Pod {name} in StatefulSet {} failed: {source}", util::name(&set.metadata));
                self.recorder.report(set, EventType::Warning, "FailedCreate", &message).await;
                Err(Error::Create { kind: "Pod", namespace: ns.into(), source })
            }
        }
    }

    async fn create_claim(&self, set: &StatefulSet, claim: PersistentVolumeClaim) -> Result<()> {
        let ns = util::namespace(&set.metadata);
        let key = skiff_api::meta::object_key(ns, util::name(&claim.metadata));
        if self.claims.get(&key).is_some() {
            return Ok(());
        }
        match self.client.api::<PersistentVolumeClaim>(ns).create(&claim).await {
            Ok(_) => {
                let message = format!(
                    "create Claim {} for StatefulSet {} successful",
                    util::name(&claim.metadata),
                    util::name(&set.metadata)
                );
                self.recorder.report(set, EventType::Normal, "SuccessfulCreate", &message).await;
                Ok(())
            }
            Err(e) if e.is_already_exists() => Ok(()),
            Err(source) => Err(Error::Create { kind: "PersistentVolumeClaim", namespace: ns.into(), source }),
        }
    }

    /// Under `whenScaled: Delete`, a condemned pod becomes the owner of its
    /// claims, so they go with it.
    async fn hand_claims_to(&self, set: &StatefulSet, pod: &Pod) -> Result<()> {
        let Some(i) = ordinal(util::name(&set.metadata), pod) else { return Ok(()) };
        let ns = util::namespace(&set.metadata);
        let owner = OwnerReference {
            api_version: "v1".into(),
            kind: "Pod".into(),
            name: util::name(&pod.metadata).into(),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            controller: Some(false),
            block_owner_deletion: Some(false),
        };
        for claim in claims_for(set, i) {
            let key = skiff_api::meta::object_key(ns, util::name(&claim.metadata));
            let Some(live) = self.claims.get(&key) else { continue };
            let mut refs = live.metadata.owner_references.clone().unwrap_or_default();
            if refs.iter().any(|r| r.uid == owner.uid) {
                continue;
            }
            refs.push(owner.clone());
            match self
                .client
                .api::<PersistentVolumeClaim>(ns)
                .patch(util::name(&live.metadata), &util::owner_refs_patch(&live.metadata, refs))
                .await
            {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(source) => return Err(Error::Patch { kind: "PersistentVolumeClaim", key, source }),
            }
        }
        Ok(())
    }

    async fn delete_pod(&self, set: &StatefulSet, pod: &Pod, why: &str) -> Result<()> {
        let name = util::name(&pod.metadata);
        match self.client.api::<Pod>(util::namespace(&pod.metadata)).delete(name).await {
            Ok(_) => {
                let message =
                    format!("delete Pod {name} in StatefulSet {} successful ({why})", util::name(&set.metadata));
                self.recorder.report(set, EventType::Normal, "SuccessfulDelete", &message).await;
                Ok(())
            }
            Err(e) if e.is_not_found() => Ok(()),
            Err(source) => Err(Error::Delete { kind: "Pod".into(), key: key_of(pod), source }),
        }
    }

    /// The set's pods: matching orphans adopted, relabelled pods released.
    async fn claim(&self, key: &str, set: &Arc<StatefulSet>) -> Result<Vec<Arc<Pod>>> {
        let ns = util::namespace(&set.metadata).to_string();
        let selector = LabelSelector::from_k8s(&set.spec.selector).map_err(|source| Error::Selector {
            kind: KIND,
            key: key.into(),
            source,
        })?;
        if selector.is_empty() {
            return Err(Error::Invalid { kind: KIND, key: key.into(), reason: "empty selector".into() });
        }
        let name = util::name(&set.metadata).to_string();
        let candidates: Vec<Arc<Pod>> = self
            .pods
            .list()
            .into_iter()
            .filter(|p| util::namespace(&p.metadata) == ns && ordinal(&name, p).is_some())
            .collect();
        let claimer = Claimer {
            api: self.client.api::<Pod>(&ns),
            owner_ref: util::owner_ref(set.as_ref()),
            selector: &selector,
            deleting: set.metadata.deletion_timestamp.is_some(),
        };
        claimer.claim(candidates, || util::still_exists(&self.client, set.as_ref())).await
    }

    async fn write_status(
        &self,
        key: &str,
        set: &StatefulSet,
        pods: &BTreeMap<i32, Arc<Pod>>,
        update_revision: &str,
    ) -> Result<()> {
        let status = calculate_status(set, pods, update_revision, millis(&util::now()));
        if set.status.as_ref() == Some(&status) {
            return Ok(());
        }
        let mut updated = set.clone();
        updated.status = Some(status);
        match self.client.api::<StatefulSet>(util::namespace(&set.metadata)).update_status(&updated).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(source) => Err(Error::UpdateStatus { kind: KIND, key: key.into(), source }),
        }
    }
}

fn scaled_claims_deleted(set: &StatefulSet) -> bool {
    let policy = set.spec.persistent_volume_claim_retention_policy.as_ref();
    policy.and_then(|p| p.when_scaled.as_deref()) == Some("Delete")
}

/// The claims of ordinal `i`: one per volumeClaimTemplate, named
/// `TEMPLATE-SET-i`, labelled with the set's selector labels, owned by the
/// set under `whenDeleted: Delete`.
fn claims_for(set: &StatefulSet, i: i32) -> Vec<PersistentVolumeClaim> {
    let set_name = util::name(&set.metadata);
    let deleted_with_set =
        set.spec.persistent_volume_claim_retention_policy.as_ref().and_then(|p| p.when_deleted.as_deref())
            == Some("Delete");
    set.spec
        .volume_claim_templates
        .iter()
        .flatten()
        .map(|template| {
            let mut claim = template.clone();
            let template_name = util::name(&template.metadata).to_string();
            let mut labels = claim.metadata.labels.take().unwrap_or_default();
            labels.extend(set.spec.selector.match_labels.clone().unwrap_or_default());
            claim.metadata = ObjectMeta {
                name: Some(format!("{template_name}-{set_name}-{i}")),
                namespace: set.metadata.namespace.clone(),
                labels: Some(labels),
                annotations: claim.metadata.annotations.take(),
                owner_references: deleted_with_set.then(|| {
                    let mut owner = util::owner_ref(set);
                    owner.controller = Some(false);
                    vec![owner]
                }),
                ..Default::default()
            };
            claim.status = None;
            claim
        })
        .collect()
}

/// The pod of ordinal `i`: the template, its identity, its claims.
fn new_pod(set: &StatefulSet, i: i32, update_revision: &str) -> Pod {
    let set_name = util::name(&set.metadata);
    let name = format!("{set_name}-{i}");
    let template = set.spec.template.clone();
    let meta = template.metadata.unwrap_or_default();
    let mut labels = meta.labels.unwrap_or_default();
    labels.insert(STATEFULSET_POD_NAME_LABEL.into(), name.clone());
    labels.insert(STATEFULSET_POD_INDEX_LABEL.into(), i.to_string());
    labels.insert(REVISION_HASH_LABEL.into(), update_revision.into());
    let mut spec = template.spec.unwrap_or_default();
    spec.hostname = Some(name.clone());
    spec.subdomain = Some(set.spec.service_name.clone().unwrap_or_default()).filter(|s| !s.is_empty());
    let claims = claims_for(set, i);
    if !claims.is_empty() {
        let volumes = spec.volumes.get_or_insert_with(Vec::new);
        for (template, claim) in set.spec.volume_claim_templates.iter().flatten().zip(&claims) {
            let volume_name = util::name(&template.metadata).to_string();
            volumes.retain(|v| v.name != volume_name);
            volumes.push(Volume {
                name: volume_name,
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: util::name(&claim.metadata).into(),
                    read_only: None,
                }),
                ..Default::default()
            });
        }
    }
    Pod {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: set.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: meta.annotations,
            finalizers: meta.finalizers,
            owner_references: Some(vec![util::owner_ref(set)]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

fn calculate_status(
    set: &StatefulSet,
    pods: &BTreeMap<i32, Arc<Pod>>,
    update_revision: &str,
    now_ms: i64,
) -> StatefulSetStatus {
    let min_ready = set.spec.min_ready_seconds.unwrap_or(0);
    let live: Vec<&Arc<Pod>> = pods.values().filter(|p| !finished(p)).collect();
    let count = |f: &dyn Fn(&Pod) -> bool| live.iter().filter(|p| f(p)).count() as i32;
    let mut status = set.status.clone().unwrap_or_default();
    let updated = count(&|p| revision(p) == Some(update_revision));
    status.replicas = live.len() as i32;
    status.ready_replicas = Some(count(&running_and_ready));
    status.available_replicas = Some(count(&|p| running_and_ready(p) && util::is_available(p, min_ready, now_ms)));
    status.updated_replicas = Some(updated);
    status.update_revision = Some(update_revision.into());
    let replicas = set.spec.replicas.unwrap_or(1);
    if status.current_revision.is_none() || (updated == replicas && status.replicas == replicas) {
        // Every pod is on the new template: it is the current one now.
        status.current_revision = Some(update_revision.into());
    }
    let current = status.current_revision.clone();
    status.current_replicas = Some(count(&|p| revision(p) == current.as_deref()));
    status.observed_generation = set.metadata.generation;
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(policy: serde_json::Value) -> StatefulSet {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "db", "namespace": "ns", "uid": "s1"},
            "spec": {"replicas": 3, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
                     "persistentVolumeClaimRetentionPolicy": policy,
                     "template": {"metadata": {"labels": {"app": "db"}},
                                  "spec": {"containers": [{"name": "c", "image": "i"}],
                                           "volumes": [{"name": "data", "emptyDir": {}}]}},
                     "volumeClaimTemplates": [{"metadata": {"name": "data"},
                                               "spec": {"accessModes": ["ReadWriteOnce"],
                                                        "resources": {"requests": {"storage": "1Gi"}}}}]}
        }))
        .unwrap()
    }

    #[test]
    fn a_pod_has_its_ordinals_identity_and_claims() {
        let pod = new_pod(&set(serde_json::Value::Null), 2, "db-abc");
        assert_eq!(pod.metadata.name.as_deref(), Some("db-2"));
        let labels = pod.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[STATEFULSET_POD_NAME_LABEL], "db-2");
        assert_eq!(labels[STATEFULSET_POD_INDEX_LABEL], "2");
        assert_eq!(labels[REVISION_HASH_LABEL], "db-abc");
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!((spec.hostname.as_deref(), spec.subdomain.as_deref()), (Some("db-2"), Some("db")));
        let volumes = spec.volumes.as_ref().unwrap();
        assert_eq!(volumes.len(), 1, "the claim replaces the template's volume of that name");
        assert_eq!(volumes[0].persistent_volume_claim.as_ref().unwrap().claim_name, "data-db-2");
        assert_eq!(ordinal("db", &pod), Some(2));
        let other: Pod = serde_json::from_value(serde_json::json!({"metadata": {"name": "db-web-1"}})).unwrap();
        assert_eq!(ordinal("db", &other), None);
    }

    #[test]
    fn claims_are_owned_by_the_set_only_when_deleted_with_it() {
        let kept = claims_for(&set(serde_json::Value::Null), 0);
        assert_eq!(kept[0].metadata.name.as_deref(), Some("data-db-0"));
        assert_eq!(kept[0].metadata.labels.as_ref().unwrap()["app"], "db");
        assert!(kept[0].metadata.owner_references.is_none());
        let deleted = claims_for(&set(serde_json::json!({"whenDeleted": "Delete"})), 0);
        let owner = &deleted[0].metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.uid.as_str(), owner.controller), ("s1", Some(false)));
        assert!(scaled_claims_deleted(&set(serde_json::json!({"whenScaled": "Delete"}))));
    }
}
