//! Small helpers the controllers share: time, pod readiness, status
//! conditions, owner references and claiming children (adopt orphans,
//! release strays).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::DeploymentCondition;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscalerCondition;
use k8s_openapi::api::batch::v1::JobCondition;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use serde_json::json;
use skiff_api::LabelSelector;
use skiff_client::{key_of, Api, Client, Object};

use crate::error::{Error, Result};

// === time ===

pub use skiff_api::clock::{now, now_time};

pub fn millis(t: &Timestamp) -> i64 {
    t.as_millisecond()
}

/// Time from now until `at_ms`, zero if past.
pub fn until(at_ms: i64) -> Duration {
    Duration::from_millis((at_ms - millis(&now())).max(0) as u64)
}

// === pods ===

/// Not finished and not being deleted: counts towards a ReplicaSet.
pub fn is_active(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("");
    pod.metadata.deletion_timestamp.is_none() && phase != "Succeeded" && phase != "Failed"
}

pub fn phase(pod: &Pod) -> &str {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Pending")
}

/// The Ready condition's status, and when it last changed.
fn ready_condition(pod: &Pod) -> Option<(&str, Option<&Time>)> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status.as_str(), c.last_transition_time.as_ref()))
}

pub fn is_ready(pod: &Pod) -> bool {
    ready_condition(pod).is_some_and(|(s, _)| s == "True")
}

/// Ready for at least `min_ready_seconds`.
pub fn is_available(pod: &Pod, min_ready_seconds: i32, now_ms: i64) -> bool {
    match ready_condition(pod) {
        Some(("True", since)) => {
            min_ready_seconds <= 0 || since.is_none_or(|t| millis(&t.0) + i64::from(min_ready_seconds) * 1000 <= now_ms)
        }
        _ => false,
    }
}

/// A status condition of one of the kinds whose status the controllers
/// write (Job, Deployment, HorizontalPodAutoscaler).
pub trait Condition {
    fn type_(&self) -> Option<&str>;
    fn status(&self) -> Option<&str>;
    fn transition(&mut self) -> &mut Option<Time>;
}

/// Puts `new` in place of the condition of its type (or adds it). The
/// transition time stays the old one's while the status is the same, as
/// Kubernetes' condition helpers keep it.
pub fn put_condition<C: Condition>(conditions: &mut Vec<C>, mut new: C) {
    match conditions.iter_mut().find(|c| c.type_() == new.type_()) {
        Some(old) => {
            if old.status() == new.status() && old.transition().is_some() {
                *new.transition() = old.transition().clone();
            }
            *old = new;
        }
        None => conditions.push(new),
    }
}

/// [`Condition`] for the kinds whose type and status are plain strings.
macro_rules! condition_with_string_fields {
    ($($kind:ty),*) => {$(
        impl Condition for $kind {
            fn type_(&self) -> Option<&str> {
                Some(&self.type_)
            }
            fn status(&self) -> Option<&str> {
                Some(&self.status)
            }
            fn transition(&mut self) -> &mut Option<Time> {
                &mut self.last_transition_time
            }
        }
    )*};
}

condition_with_string_fields!(JobCondition, HorizontalPodAutoscalerCondition);

impl Condition for DeploymentCondition {
    fn type_(&self) -> Option<&str> {
        self.type_.as_deref()
    }
    fn status(&self) -> Option<&str> {
        self.status.as_deref()
    }
    fn transition(&mut self) -> &mut Option<Time> {
        &mut self.last_transition_time
    }
}

/// `selector` ⊆ `labels`.
pub fn labels_contain(labels: Option<&BTreeMap<String, String>>, wanted: Option<&BTreeMap<String, String>>) -> bool {
    let empty = BTreeMap::new();
    let labels = labels.unwrap_or(&empty);
    wanted.unwrap_or(&empty).iter().all(|(k, v)| labels.get(k) == Some(v))
}

// === owner references ===

pub fn controller_ref(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references.as_ref()?.iter().find(|r| r.controller == Some(true))
}

/// A controller reference to `owner`, blocking its foreground deletion.
pub fn owner_ref<K: Object>(owner: &K) -> OwnerReference {
    let meta = owner.metadata();
    OwnerReference {
        api_version: K::API_VERSION.to_string(),
        kind: K::KIND.to_string(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The key of the object `r` names, in namespace `ns`.
pub fn ref_key(ns: &str, r: &OwnerReference) -> String {
    skiff_api::meta::object_key(ns, &r.name)
}

pub fn namespace(meta: &ObjectMeta) -> &str {
    meta.namespace.as_deref().unwrap_or("")
}

pub fn name(meta: &ObjectMeta) -> &str {
    meta.name.as_deref().unwrap_or("")
}

/// A merge patch that replaces `ownerReferences`, refused if the object
/// changed since `meta` was read.
pub fn owner_refs_patch(meta: &ObjectMeta, refs: Vec<OwnerReference>) -> serde_json::Value {
    json!({"metadata": {"ownerReferences": refs, "resourceVersion": meta.resource_version}})
}

// === claiming ===

/// A fresh read, for [`Claimer::claim`]'s `can_adopt`: does `owner` still
/// exist (same uid) and is it not being deleted? Read from the API, not a
/// cache, so a deleted owner never adopts.
pub async fn still_exists<O: Object>(client: &Client, owner: &O) -> Result<bool> {
    let meta = owner.metadata();
    match client.api::<O>(namespace(meta)).get(name(meta)).await {
        Ok(fresh) => Ok(fresh.metadata().uid == meta.uid && fresh.metadata().deletion_timestamp.is_none()),
        Err(e) if e.is_not_found() => Ok(false),
        Err(source) => Err(Error::Get { kind: O::KIND, key: key_of(owner), source }),
    }
}

/// The owner side of a claim.
pub struct Claimer<'a, K> {
    pub api: Api<K>,
    pub owner_ref: OwnerReference,
    pub selector: &'a LabelSelector,
    /// The owner is being deleted: adopt nothing, release nothing.
    pub deleting: bool,
}

impl<K: Object> Claimer<'_, K> {
    /// Sorts `candidates` (objects in the owner's namespace) into those the
    /// owner controls, adopting matching orphans and releasing owned objects
    /// whose labels no longer match, as client-go's ControllerRefManager
    /// does. `can_adopt` is asked (once, and only if there is an orphan to
    /// adopt) whether the owner really still exists, from the API rather
    /// than the cache, so a deleted owner never adopts.
    pub async fn claim<F, Fut>(&self, candidates: Vec<Arc<K>>, can_adopt: F) -> Result<Vec<Arc<K>>>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<bool>>,
    {
        let mut owned = Vec::new();
        let mut can_adopt = Some(can_adopt);
        let mut adopt_ok: Option<bool> = None;
        for obj in candidates {
            let meta = obj.metadata();
            let matches = self.selector.matches(meta.labels.as_ref().unwrap_or(&BTreeMap::new()));
            match controller_ref(meta) {
                Some(r) if r.uid == self.owner_ref.uid => {
                    if matches || self.deleting {
                        owned.push(obj);
                    } else {
                        self.release(&obj).await?;
                    }
                }
                Some(_) => {}
                None => {
                    if !matches || self.deleting || meta.deletion_timestamp.is_some() {
                        continue;
                    }
                    if adopt_ok.is_none() {
                        let check = can_adopt.take().expect("asked once");
                        adopt_ok = Some(check().await?);
                    }
                    if adopt_ok == Some(true) {
                        if let Some(adopted) = self.adopt(&obj).await? {
                            owned.push(Arc::new(adopted));
                        }
                    }
                }
            }
        }
        Ok(owned)
    }

    async fn adopt(&self, obj: &K) -> Result<Option<K>> {
        let meta = obj.metadata();
        let mut refs = meta.owner_references.clone().unwrap_or_default();
        refs.push(self.owner_ref.clone());
        match self.api.patch(name(meta), &owner_refs_patch(meta, refs)).await {
            Ok(adopted) => {
                tracing::info!(kind = K::KIND, key = %key_of(obj), owner = %self.owner_ref.name, "adopted");
                Ok(Some(adopted))
            }
            Err(e) if e.is_not_found() => Ok(None),
            Err(source) => Err(Error::Patch { kind: K::KIND, key: key_of(obj), source }),
        }
    }

    async fn release(&self, obj: &K) -> Result<()> {
        let meta = obj.metadata();
        let refs: Vec<_> =
            meta.owner_references.iter().flatten().filter(|r| r.uid != self.owner_ref.uid).cloned().collect();
        match self.api.patch(name(meta), &owner_refs_patch(meta, refs)).await {
            Ok(_) => {
                tracing::info!(kind = K::KIND, key = %key_of(obj), owner = %self.owner_ref.name, "released");
                Ok(())
            }
            Err(e) if e.is_not_found() => Ok(()),
            Err(source) => Err(Error::Patch { kind: K::KIND, key: key_of(obj), source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};

    fn pod_ready_since(ms: i64) -> Pod {
        Pod {
            status: Some(PodStatus {
                phase: Some("Running".into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    last_transition_time: Some(Time(Timestamp::from_millisecond(ms).unwrap())),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn availability_waits_for_min_ready_seconds() {
        let pod = pod_ready_since(1_000_000);
        assert!(is_ready(&pod));
        assert!(is_available(&pod, 0, 1_000_000));
        assert!(!is_available(&pod, 5, 1_004_999));
        assert!(is_available(&pod, 5, 1_005_000));
        assert!(!is_available(&Pod::default(), 0, 0));
        assert!(is_active(&pod));
    }

    #[test]
    fn label_subsets() {
        let labels: BTreeMap<_, _> = [("a".to_string(), "1".to_string()), ("b".into(), "2".into())].into();
        let wanted: BTreeMap<_, _> = [("a".to_string(), "1".to_string())].into();
        assert!(labels_contain(Some(&labels), Some(&wanted)));
        assert!(!labels_contain(Some(&wanted), Some(&labels)));
        assert!(labels_contain(None, None));
    }

    #[test]
    fn a_condition_keeps_its_transition_time_until_its_status_changes() {
        let at = |s: i64| Some(Time(Timestamp::from_second(s).unwrap()));
        let job = |status: &str, reason: &str, when: i64| JobCondition {
            type_: "Failed".into(),
            status: status.into(),
            reason: Some(reason.into()),
            last_transition_time: at(when),
            ..Default::default()
        };
        let mut conditions = vec![job("False", "a", 10)];
        put_condition(&mut conditions, job("False", "b", 20));
        assert_eq!((conditions[0].reason.as_deref(), &conditions[0].last_transition_time), (Some("b"), &at(10)));
        put_condition(&mut conditions, job("True", "c", 30));
        assert_eq!(conditions[0].last_transition_time, at(30), "the status changed");
        put_condition(&mut conditions, JobCondition { type_: "Complete".into(), ..job("True", "d", 40) });
        assert_eq!(conditions.len(), 2, "another type is added");
    }
}
