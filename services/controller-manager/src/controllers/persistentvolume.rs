//! The PersistentVolume controller, after Kubernetes' `pv_controller.go`:
//! binds claims to volumes, provisions `local-path` volumes, and reclaims
//! volumes whose claims are gone.
//!
//! - **Binding.** A pending claim takes the smallest Available volume of
//!   its class (`""` for none) whose access modes cover the claim's, whose
//!   capacity covers its request and whose labels match its selector; a
//!   volume made for it (claimRef naming it) first. The volume's claimRef
//!   is written first, then the claim's volumeName, then both statuses
//!   (Bound), so a crash between leaves a half-bound pair the next sync
//!   completes.
//! - **Waiting for the consumer.** A class with `volumeBindingMode:
//!   WaitForFirstConsumer` binds only once the scheduler has chosen a node
//!   for the claim's first pod (`volume.kubernetes.io/selected-node`), and
//!   only to volumes that node can reach.
//! - **local-path.** A claim of a class whose provisioner is
//!   `skiff.io/local-path` (the built-in default class) with no volume to
//!   take gets one made: a `local` volume at `--local-path-root/NAME` on the
//!   selected node, pinned to it by node affinity, pre-bound to the claim.
//!   The node's kubelet creates the folder when a pod mounts it and removes
//!   it when the volume is deleted.
//! - **Reclaiming.** A volume whose claim is gone is Released; with
//!   `persistentVolumeReclaimPolicy: Delete` it is deleted, with Retain it
//!   stays Released until someone clears its claimRef.
//!
//! Keys are `claim/NS/NAME` and `volume/NAME`.

use std::path::PathBuf;

use k8s_openapi::api::core::v1::{
    LocalVolumeSource, Node, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, ObjectReference,
    PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimStatus, PersistentVolumeSpec, PersistentVolumeStatus,
    VolumeNodeAffinity,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::json;
use skiff_api::quantity::parse_milli;
use skiff_api::scheduling::volume_allows;
use skiff_api::well_known::{LOCAL_PATH_PROVISIONER, PROVISIONED_BY_ANNOTATION, SELECTED_NODE_ANNOTATION};
use skiff_api::LabelSelector;
use skiff_client::{key_of, Action, Client, EventRecorder, EventType, InformerEvent, Reconcile, Store, WorkQueue};

use super::{Context, Wiring};
use crate::error::{Error, Result};
use crate::util;

pub struct PersistentVolumeController {
    client: Client,
    claims: Store<PersistentVolumeClaim>,
    volumes: Store<PersistentVolume>,
    classes: Store<StorageClass>,
    nodes: Store<Node>,
    local_path_root: PathBuf,
    recorder: EventRecorder,
}

pub fn start(ctx: &Context, w: &mut Wiring<'_>) {
    let queue = WorkQueue::new();
    {
        let queue = queue.clone();
        w.on_events(&ctx.caches.persistent_volume_claims, move |ev: InformerEvent<PersistentVolumeClaim>| {
            let claim = ev.object();
            queue.add(format!("claim/{}", key_of(claim.as_ref())));
            // A claim going releases its volume.
            if let Some(volume) = claim.spec.as_ref().and_then(|s| s.volume_name.as_deref()).filter(|v| !v.is_empty()) {
                queue.add(format!("volume/{volume}"));
            }
        });
    }
    {
        let queue = queue.clone();
        w.on_events(&ctx.caches.persistent_volumes, move |ev: InformerEvent<PersistentVolume>| {
            let volume = ev.object();
            queue.add(format!("volume/{}", util::name(&volume.metadata)));
            if let Some(r) = volume.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) {
                let (ns, name) = (r.namespace.as_deref().unwrap_or(""), r.name.as_deref().unwrap_or(""));
                queue.add(format!("claim/{}", skiff_api::meta::object_key(ns, name)));
            }
        });
    }
    let controller = PersistentVolumeController {
        client: ctx.client.clone(),
        claims: ctx.caches.persistent_volume_claims.clone(),
        volumes: ctx.caches.persistent_volumes.clone(),
        classes: ctx.caches.storage_classes.clone(),
        nodes: ctx.caches.nodes.clone(),
        local_path_root: ctx.local_path_root.clone(),
        recorder: EventRecorder::new(ctx.client.clone(), "persistentvolume-controller"),
    };
    w.run(ctx, controller, queue);
}

impl Reconcile for PersistentVolumeController {
    const NAME: &'static str = "persistentvolume";
    type Error = Error;

    async fn reconcile(&self, key: &str) -> Result<Action> {
        match key.split_once('/') {
            Some(("claim", claim)) => self.sync_claim(claim).await?,
            Some(("volume", volume)) => self.sync_volume(volume).await?,
            _ => {}
        }
        Ok(Action::done())
    }
}

fn request(claim: &PersistentVolumeClaim) -> i128 {
    let requests = claim.spec.as_ref().and_then(|s| s.resources.as_ref()).and_then(|r| r.requests.as_ref());
    requests.and_then(|r| r.get("storage")).and_then(|q| parse_milli(&q.0).ok()).unwrap_or(0)
}

fn capacity(volume: &PersistentVolume) -> i128 {
    let capacity = volume.spec.as_ref().and_then(|s| s.capacity.as_ref());
    capacity.and_then(|c| c.get("storage")).and_then(|q| parse_milli(&q.0).ok()).unwrap_or(0)
}

fn class_of_claim(claim: &PersistentVolumeClaim) -> &str {
    claim.spec.as_ref().and_then(|s| s.storage_class_name.as_deref()).unwrap_or("")
}

fn class_of_volume(volume: &PersistentVolume) -> &str {
    volume.spec.as_ref().and_then(|s| s.storage_class_name.as_deref()).unwrap_or("")
}

fn claim_ref(volume: &PersistentVolume) -> Option<&ObjectReference> {
    volume.spec.as_ref()?.claim_ref.as_ref()
}

/// Whether `volume` is made for, or bound to, `claim`.
fn refers_to(volume: &PersistentVolume, claim: &PersistentVolumeClaim) -> bool {
    claim_ref(volume).is_some_and(|r| {
        r.namespace.as_deref() == claim.metadata.namespace.as_deref()
            && r.name.as_deref() == claim.metadata.name.as_deref()
            && r.uid.as_deref().is_none_or(|uid| uid.is_empty() || Some(uid) == claim.metadata.uid.as_deref())
    })
}

/// Whether `volume` can serve `claim` (ignoring where).
fn fits(volume: &PersistentVolume, claim: &PersistentVolumeClaim) -> bool {
    let phase = volume.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Available");
    if volume.metadata.deletion_timestamp.is_some() || !matches!(phase, "Available" | "Pending") {
        return false;
    }
    if claim_ref(volume).is_some() && !refers_to(volume, claim) {
        return false;
    }
    let spec = claim.spec.as_ref();
    let wanted = spec.and_then(|s| s.access_modes.as_deref()).unwrap_or_default();
    let offered = volume.spec.as_ref().and_then(|s| s.access_modes.as_deref()).unwrap_or_default();
    let selector_matches = match spec.and_then(|s| s.selector.as_ref()).map(LabelSelector::from_k8s) {
        None => true,
        Some(Ok(selector)) => selector.matches(volume.metadata.labels.as_ref().unwrap_or(&Default::default())),
        Some(Err(_)) => false,
    };
    class_of_volume(volume) == class_of_claim(claim)
        && wanted.iter().all(|m| offered.contains(m))
        && capacity(volume) >= request(claim)
        && selector_matches
}

impl PersistentVolumeController {
    async fn sync_claim(&self, key: &str) -> Result<()> {
        let Some(claim) = self.claims.get(key) else { return Ok(()) };
        if claim.metadata.deletion_timestamp.is_some() {
            return Ok(());
        }
        let bound_to = claim.spec.as_ref().and_then(|s| s.volume_name.clone()).filter(|v| !v.is_empty());
        if let Some(volume_name) = bound_to {
            return self.complete_binding(&claim, &volume_name).await;
        }
        let class_name = class_of_claim(&claim).to_string();
        let class = (!class_name.is_empty()).then(|| self.classes.get(&class_name)).flatten();
        let waits = class.as_ref().and_then(|c| c.volume_binding_mode.as_deref()) == Some("WaitForFirstConsumer");
        let selected = claim.metadata.annotations.as_ref().and_then(|a| a.get(SELECTED_NODE_ANNOTATION)).cloned();
        if waits && selected.is_none() {
            return self.set_claim_phase(&claim, "Pending").await;
        }
        let node = selected.as_deref().map(|n| (n, self.nodes.get(n)));
        let reachable = |v: &PersistentVolume| match &node {
            None => true,
            Some((name, node)) => volume_allows(v, node.as_ref().and_then(|n| n.metadata.labels.as_ref()), name),
        };
        let mut candidates: Vec<_> =
            self.volumes.list().into_iter().filter(|v| fits(v, &claim) && reachable(v)).collect();
        // Made for this claim first, then the smallest that fits.
        candidates.sort_by_key(|v| (!refers_to(v, &claim), capacity(v)));
        if let Some(volume) = candidates.first() {
            return self.bind(&claim, volume).await;
        }
        match (class.as_ref().map(|c| c.provisioner.as_str()), selected) {
            (Some(LOCAL_PATH_PROVISIONER), Some(node)) => {
                self.provision(&claim, class.as_ref().expect("matched"), &node).await
            }
            (Some(LOCAL_PATH_PROVISIONER), None) => {
                let message = "local-path volumes live on one node: use volumeBindingMode WaitForFirstConsumer";
                self.recorder.report(&*claim, EventType::Warning, "ProvisioningFailed", message).await;
                self.set_claim_phase(&claim, "Pending").await
            }
            (Some(other), _) => {
                let message = format!("waiting for a volume to be created by the external provisioner {other:?}");
                self.recorder.report(&*claim, EventType::Normal, "ExternalProvisioning", &message).await;
                self.set_claim_phase(&claim, "Pending").await
            }
            (None, _) => {
                let message = if class_name.is_empty() {
                    "no persistent volumes available for this claim and no storage class is set".to_string()
                } else {
                    format!("storageclass.storage.k8s.io {class_name:?} not found")
                };
                self.recorder.report(&*claim, EventType::Normal, "FailedBinding", &message).await;
                self.set_claim_phase(&claim, "Pending").await
            }
        }
    }

    /// Binds: the volume's claimRef, the claim's volumeName, both statuses.
    async fn bind(&self, claim: &PersistentVolumeClaim, volume: &PersistentVolume) -> Result<()> {
        let name = util::name(&volume.metadata).to_string();
        let named =
            refers_to(volume, claim) && claim_ref(volume).and_then(|r| r.uid.as_deref()).is_some_and(|u| !u.is_empty());
        if !named && !self.write_claim_ref(claim, volume).await? {
            return Ok(());
        }
        let ns = util::namespace(&claim.metadata);
        let patch = json!({"metadata": {"resourceVersion": claim.metadata.resource_version,
            "annotations": {"pv.kubernetes.io/bind-completed": "yes"}}, "spec": {"volumeName": name}});
        let bound = match self.client.api::<PersistentVolumeClaim>(ns).patch(util::name(&claim.metadata), &patch).await
        {
            Ok(bound) => bound,
            Err(e) if e.is_conflict() || e.is_not_found() => return Ok(()),
            Err(source) => return Err(Error::Patch { kind: "PersistentVolumeClaim", key: key_of(claim), source }),
        };
        self.recorder.report(claim, EventType::Normal, "Bound", &format!("bound to volume {name}")).await;
        self.complete_binding(&bound, &name).await
    }

    /// A claim that names its volume: the volume's side and both statuses
    /// made to agree, or the claim Lost when its volume is gone or taken.
    async fn complete_binding(&self, claim: &PersistentVolumeClaim, volume_name: &str) -> Result<()> {
        let volume = match self.volumes.get(volume_name) {
            Some(v) => v,
            None => match self.client.api::<PersistentVolume>("").get(volume_name).await {
                Ok(v) => std::sync::Arc::new(v),
                Err(e) if e.is_not_found() => return self.set_claim_phase(claim, "Lost").await,
                Err(source) => return Err(Error::Get { kind: "PersistentVolume", key: volume_name.into(), source }),
            },
        };
        if claim_ref(&volume).is_some() && !refers_to(&volume, claim) {
            return self.set_claim_phase(claim, "Lost").await;
        }
        if claim_ref(&volume).is_none() && !self.write_claim_ref(claim, &volume).await? {
            return Ok(());
        }
        self.set_volume_phase(&volume, "Bound").await?;
        let spec = volume.spec.as_ref();
        let status = PersistentVolumeClaimStatus {
            phase: Some("Bound".into()),
            access_modes: spec.and_then(|s| s.access_modes.clone()),
            capacity: spec.and_then(|s| s.capacity.clone()),
            ..claim.status.clone().unwrap_or_default()
        };
        self.write_claim_status(claim, status).await
    }

    /// Points the volume at the claim; false when it changed meanwhile or
    /// is gone (the next event brings the news).
    async fn write_claim_ref(&self, claim: &PersistentVolumeClaim, volume: &PersistentVolume) -> Result<bool> {
        let name = util::name(&volume.metadata);
        let reference = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "namespace": claim.metadata.namespace, "name": claim.metadata.name, "uid": claim.metadata.uid,
            "resourceVersion": claim.metadata.resource_version});
        let patch =
            json!({"metadata": {"resourceVersion": volume.metadata.resource_version}, "spec": {"claimRef": reference}});
        match self.client.api::<PersistentVolume>("").patch(name, &patch).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_conflict() || e.is_not_found() => Ok(false),
            Err(source) => Err(Error::Patch { kind: "PersistentVolume", key: name.into(), source }),
        }
    }

    /// A `local` volume for `claim` on `node`, pre-bound to it.
    async fn provision(&self, claim: &PersistentVolumeClaim, class: &StorageClass, node: &str) -> Result<()> {
        let uid = claim.metadata.uid.clone().unwrap_or_default();
        let name = format!("pvc-{uid}");
        let ns = util::namespace(&claim.metadata);
        let folder = format!("{name}_{ns}_{}", util::name(&claim.metadata));
        let spec = claim.spec.clone().unwrap_or_default();
        let storage = spec.resources.as_ref().and_then(|r| r.requests.as_ref()).and_then(|r| r.get("storage")).cloned();
        let volume = PersistentVolume {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                annotations: Some([(PROVISIONED_BY_ANNOTATION.to_string(), LOCAL_PATH_PROVISIONER.to_string())].into()),
                ..Default::default()
            },
            spec: Some(PersistentVolumeSpec {
                capacity: storage.map(|q| [("storage".to_string(), q)].into()),
                access_modes: spec.access_modes.clone(),
                storage_class_name: spec.storage_class_name.clone(),
                persistent_volume_reclaim_policy: class.reclaim_policy.clone().or_else(|| Some("Delete".into())),
                volume_mode: Some("Filesystem".into()),
                local: Some(LocalVolumeSource {
                    path: self.local_path_root.join(folder).to_string_lossy().into_owned(),
                    fs_type: None,
                }),
                node_affinity: Some(VolumeNodeAffinity {
                    required: Some(NodeSelector {
                        node_selector_terms: vec![NodeSelectorTerm {
                            match_fields: Some(vec![NodeSelectorRequirement {
                                key: "metadata.name".into(),
                                operator: "In".into(),
                                values: Some(vec![node.into()]),
                            }]),
                            ..Default::default()
                        }],
                    }),
                }),
                claim_ref: Some(ObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("PersistentVolumeClaim".into()),
                    namespace: Some(ns.into()),
                    name: claim.metadata.name.clone(),
                    uid: Some(uid),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: None,
        };
        match self.client.api::<PersistentVolume>("").create(&volume).await {
            Ok(_) => {
                let message = format!("Successfully provisioned volume {name} on node {node}");
                self.recorder.report(claim, EventType::Normal, "ProvisioningSucceeded", &message).await;
                Ok(())
            }
            Err(e) if e.is_already_exists() => Ok(()),
            Err(source) => {
                let message =
                    format!("failed to provision volume with StorageClass {:?}: {source}", util::name(&class.metadata));
                self.recorder.report(claim, EventType::Warning, "ProvisioningFailed", &message).await;
                Err(Error::Create { kind: "PersistentVolume", namespace: String::new(), source })
            }
        }
    }

    /// A volume's phase from its claim: Available, Bound, or Released (and
    /// deleted under the Delete reclaim policy).
    async fn sync_volume(&self, name: &str) -> Result<()> {
        let Some(volume) = self.volumes.get(name) else { return Ok(()) };
        if volume.metadata.deletion_timestamp.is_some() {
            return Ok(());
        }
        let Some(reference) = claim_ref(&volume) else {
            return self.set_volume_phase(&volume, "Available").await;
        };
        let (ns, claim_name) = (reference.namespace.as_deref().unwrap_or(""), reference.name.as_deref().unwrap_or(""));
        let uid = reference.uid.as_deref().unwrap_or("");
        let claim = match self.claims.get(&skiff_api::meta::object_key(ns, claim_name)) {
            Some(c) => Some(c),
            // Not cached is not gone: a claim made a moment ago may not be.
            None => match self.client.api::<PersistentVolumeClaim>(ns).get(claim_name).await {
                Ok(c) => Some(std::sync::Arc::new(c)),
                Err(e) if e.is_not_found() => None,
                Err(source) => {
                    return Err(Error::Get { kind: "PersistentVolumeClaim", key: format!("{ns}/{claim_name}"), source })
                }
            },
        };
        let same_claim = claim.as_ref().is_some_and(|c| uid.is_empty() || c.metadata.uid.as_deref() == Some(uid));
        if same_claim {
            let bound =
                claim.as_ref().and_then(|c| c.spec.as_ref()).and_then(|s| s.volume_name.as_deref()) == Some(name);
            return self.set_volume_phase(&volume, if bound { "Bound" } else { "Available" }).await;
        }
        if uid.is_empty() {
            // Made for a claim that does not exist yet.
            return self.set_volume_phase(&volume, "Available").await;
        }
        let policy =
            volume.spec.as_ref().and_then(|s| s.persistent_volume_reclaim_policy.as_deref()).unwrap_or("Retain");
        if policy == "Delete" {
            tracing::info!(volume = name, "claim gone, deleting the volume");
            return match self.client.api::<PersistentVolume>("").delete(name).await {
                Ok(_) => Ok(()),
                Err(e) if e.is_not_found() => Ok(()),
                Err(source) => Err(Error::Delete { kind: "PersistentVolume".into(), key: name.into(), source }),
            };
        }
        self.set_volume_phase(&volume, "Released").await
    }

    async fn set_volume_phase(&self, volume: &PersistentVolume, phase: &str) -> Result<()> {
        if volume.status.as_ref().and_then(|s| s.phase.as_deref()) == Some(phase) {
            return Ok(());
        }
        let mut updated = volume.clone();
        updated.status =
            Some(PersistentVolumeStatus { phase: Some(phase.into()), ..volume.status.clone().unwrap_or_default() });
        match self.client.api::<PersistentVolume>("").update_status(&updated).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_conflict() || e.is_not_found() => Ok(()),
            Err(source) => Err(Error::UpdateStatus { kind: "PersistentVolume", key: key_of(volume), source }),
        }
    }

    async fn set_claim_phase(&self, claim: &PersistentVolumeClaim, phase: &str) -> Result<()> {
        let status =
            PersistentVolumeClaimStatus { phase: Some(phase.into()), ..claim.status.clone().unwrap_or_default() };
        self.write_claim_status(claim, status).await
    }

    async fn write_claim_status(
        &self,
        claim: &PersistentVolumeClaim,
        status: PersistentVolumeClaimStatus,
    ) -> Result<()> {
        if claim.status.as_ref() == Some(&status) {
            return Ok(());
        }
        let mut updated = claim.clone();
        updated.status = Some(status);
        match self.client.api::<PersistentVolumeClaim>(util::namespace(&claim.metadata)).update_status(&updated).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(source) => Err(Error::UpdateStatus { kind: "PersistentVolumeClaim", key: key_of(claim), source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(spec: serde_json::Value) -> PersistentVolumeClaim {
        serde_json::from_value(json!({"metadata": {"name": "data", "namespace": "ns", "uid": "c1"}, "spec": spec}))
            .unwrap()
    }

    fn volume(spec: serde_json::Value, labels: serde_json::Value) -> PersistentVolume {
        serde_json::from_value(json!({"metadata": {"name": "pv", "labels": labels}, "spec": spec})).unwrap()
    }

    #[test]
    fn a_volume_fits_by_class_modes_size_and_selector() {
        let c = claim(json!({"accessModes": ["ReadWriteOnce"], "storageClassName": "",
            "selector": {"matchLabels": {"tier": "fast"}}, "resources": {"requests": {"storage": "1Gi"}}}));
        let spec = json!({"accessModes": ["ReadWriteOnce", "ReadOnlyMany"], "capacity": {"storage": "2Gi"},
            "hostPath": {"path": "/x"}});
        assert!(fits(&volume(spec.clone(), json!({"tier": "fast"})), &c));
        assert!(!fits(&volume(spec.clone(), json!({"tier": "slow"})), &c), "selector");
        let mut small = spec.clone();
        small["capacity"]["storage"] = json!("512Mi");
        assert!(!fits(&volume(small, json!({"tier": "fast"})), &c), "capacity");
        let mut classed = spec.clone();
        classed["storageClassName"] = json!("gold");
        assert!(!fits(&volume(classed, json!({"tier": "fast"})), &c), "class");
        let mut taken = spec.clone();
        taken["claimRef"] = json!({"namespace": "ns", "name": "other", "uid": "c2"});
        assert!(!fits(&volume(taken, json!({"tier": "fast"})), &c), "bound elsewhere");
        let mut made_for = spec;
        made_for["claimRef"] = json!({"namespace": "ns", "name": "data"});
        let v = volume(made_for, json!({"tier": "fast"}));
        assert!(fits(&v, &c) && refers_to(&v, &c), "pre-bound to this claim by name");
    }
}
