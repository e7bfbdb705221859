//! Delete: at once, or marked with deletionTimestamp while finalizers (or
//! a bound Pod's kubelet) hold the object back.

use bytes::Bytes;
use serde_json::Value;
use skiff_api::{meta, well_known, KindInfo};

use super::rules::{awaits_kubelet, has_finalizers, termination_grace};
use super::{stamped, Registry, CAS_ATTEMPTS, SYSTEM_NAMESPACES};
use crate::storage::Swap;
use crate::Error;

/// The longest grace a delete grants. Clients may send any i64, which
/// chrono's arithmetic panics on; a thousand years is past any real
/// shutdown and keeps deletionTimestamp a four-digit-year RFC 3339 time
/// that every client parses.
const MAX_GRACE_SECONDS: i64 = 1000 * 365 * 24 * 60 * 60;

/// How a delete is carried out.
#[derive(Debug, Default, Clone, Copy)]
pub struct DeleteOptions<'a> {
    /// Fail with a conflict unless the stored resourceVersion is this one.
    pub precondition: &'a str,
    /// Seconds a bound Pod gets to stop; None: its own grace period.
    pub grace: Option<i64>,
    /// `Foreground` or `Orphan` put the garbage collector's finalizer on an
    /// owner it collects for; anything else deletes in the background.
    pub propagation: &'a str,
    /// Decide everything, write nothing.
    pub dry_run: bool,
}

impl Registry {
    /// Deletes an object, or marks it with deletionTimestamp while
    /// finalizers remain; returns its last state.
    ///
    /// A Pod bound to a Ready node is deleted gracefully, as in Kubernetes:
    /// the Delete only marks it (deletionTimestamp `grace` seconds ahead,
    /// deletionGracePeriodSeconds), its kubelet stops the containers within
    /// that time and then deletes it for good with `grace` 0. `grace` None
    /// (or negative) means the pod's terminationGracePeriodSeconds.
    pub async fn delete(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        options: &DeleteOptions<'_>,
    ) -> Result<Bytes, Error> {
        let DeleteOptions { precondition, grace, propagation, dry_run } = *options;
        let grace = grace.filter(|g| *g >= 0);
        let info = KindInfo::by_kind(kind)?;
        if info.kind == "Namespace" && SYSTEM_NAMESPACES.contains(&name) {
            return Err(Error::Forbidden(format!("namespace {name:?} is a system namespace and may not be deleted")));
        }
        for _ in 0..CAS_ATTEMPTS {
            let (key, stored, mut current) = self.read(info, namespace, name).await?;
            if !precondition.is_empty() && precondition != stored.mod_revision.to_string() {
                return Err(Error::conflict(info, name));
            }
            if meta::str_field(&current, "deletionTimestamp").is_empty() {
                add_propagation_finalizer(info, &mut current, propagation);
            }
            // An empty namespace has nothing for the namespace controller to
            // clean up, so its `kubernetes` finalizer would only add a round trip.
            let empty_namespace = info.kind == "Namespace"
                && meta::finalizers(&current).is_empty()
                && self.namespace_is_empty(name).await;
            // Only a kubelet can stop a bound pod's containers, so only its
            // final delete (grace 0) removes the pod.
            let graceful = info.kind == "Pod" && grace != Some(0) && self.node_finishes_deletion(&current).await;
            if dry_run {
                return Ok(stamped(current, stored.mod_revision));
            }
            let swap = if (!has_finalizers(info, &current) && !graceful) || empty_namespace {
                self.storage.delete_if(&key, stored.mod_revision).await?
            } else if meta::str_field(&current, "deletionTimestamp").is_empty() {
                let asked = if graceful { grace.unwrap_or_else(|| termination_grace(&current)) } else { 0 };
                let seconds = asked.min(MAX_GRACE_SECONDS);
                let at = chrono::Utc::now() + chrono::Duration::seconds(seconds);
                meta::set(&mut current, "deletionTimestamp", at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
                meta::set(&mut current, "deletionGracePeriodSeconds", seconds);
                if info.kind == "Namespace" {
                    current["status"]["phase"] = Value::String("Terminating".into());
                }
                let encoded =
                    serde_json::to_vec(&current).map_err(|source| Error::Corrupt { key: key.clone(), source })?;
                self.storage.put_if(&key, encoded, stored.mod_revision).await?
            } else if grace == Some(0) && awaits_kubelet(info, &current) {
                // The kubelet is done but finalizers remain: the update that
                // removes the last one deletes the pod.
                meta::set(&mut current, "deletionGracePeriodSeconds", 0);
                let encoded =
                    serde_json::to_vec(&current).map_err(|source| Error::Corrupt { key: key.clone(), source })?;
                self.storage.put_if(&key, encoded, stored.mod_revision).await?
            } else {
                return Ok(stamped(current, stored.mod_revision));
            };
            match swap {
                Swap::Done { revision } => {
                    self.note_write(info, revision);
                    if empty_namespace {
                        self.delete_default_service_account(name).await;
                    }
                    return Ok(stamped(current, revision));
                }
                Swap::Lost if precondition.is_empty() => continue,
                Swap::Lost => break,
            }
        }
        Err(Error::conflict(info, name))
    }

    /// Whether a pod is bound to a node whose kubelet is to finish its
    /// deletion: the Node exists, reachable or not, as in Kubernetes. A pod
    /// on an unreachable node stays terminating until its kubelet comes back
    /// or someone deletes it with grace 0: only then may a StatefulSet make
    /// its ordinal again. A pod on a Node that no longer exists, or on one
    /// tainted `node.kubernetes.io/out-of-service` (the operator's word that
    /// it is shut down), is deleted at once, as Kubernetes' pod garbage
    /// collector does.
    async fn node_finishes_deletion(&self, pod: &Value) -> bool {
        let node = pod.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or_default();
        if node.is_empty() {
            return false;
        }
        let Ok(info) = KindInfo::by_kind("Node") else { return false };
        let Some(cached) = self.cache_with_own_writes(info).await.get(&info.key("", node)) else { return false };
        let Ok(node) = serde_json::from_slice::<Value>(&cached.json) else { return false };
        let out_of_service = node.pointer("/spec/taints").and_then(Value::as_array).is_some_and(|ts| {
            ts.iter().any(|t| t["key"] == well_known::OUT_OF_SERVICE_TAINT && t["effect"] == "NoExecute")
        });
        !out_of_service
    }

    /// Whether the watch caches hold no object in namespace `ns` but the
    /// `default` ServiceAccount every namespace comes with.
    async fn namespace_is_empty(&self, ns: &str) -> bool {
        for info in skiff_api::KINDS.iter().filter(|info| info.namespaced) {
            let prefix = info.key_prefix(Some(ns));
            let own_account = info.key(ns, "default");
            let (objects, _) = self.cache_with_own_writes(info).await.objects(&prefix);
            let own = |key: &str| info.kind == "ServiceAccount" && key == own_account;
            if objects.iter().any(|o| !own(&o.key)) {
                return false;
            }
        }
        true
    }

    /// Removes the `default` ServiceAccount of a namespace deleted at once.
    async fn delete_default_service_account(&self, ns: &str) {
        let Ok(info) = KindInfo::by_kind("ServiceAccount") else { return };
        if let Ok((key, stored, _)) = self.read(info, ns, "default").await {
            if let Ok(Swap::Done { revision }) = self.storage.delete_if(&key, stored.mod_revision).await {
                self.note_write(info, revision);
            }
        }
    }
}

/// Puts the finalizer of a Foreground or Orphan delete on an owner the
/// garbage collector collects for; the delete then only marks it.
fn add_propagation_finalizer(info: &KindInfo, object: &mut Value, propagation: &str) {
    let finalizer = match propagation {
        "Foreground" => well_known::FOREGROUND_DELETION,
        "Orphan" => well_known::ORPHAN_FINALIZER,
        _ => return,
    };
    if !well_known::COLLECTED_OWNERS.iter().any(|(owner, _)| *owner == info.kind) {
        return;
    }
    let mut finalizers: Vec<Value> = meta::finalizers(object).into_iter().map(Value::from).collect();
    if !finalizers.iter().any(|f| f == finalizer) {
        finalizers.push(finalizer.into());
        meta::set(object, "finalizers", Value::Array(finalizers));
    }
}
