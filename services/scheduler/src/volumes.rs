//! What a pod's PersistentVolumeClaims ask of its node, after
//! kube-scheduler's VolumeBinding plugin: read from the claim, volume and
//! StorageClass caches once per scheduling cycle.
//!
//! - A claim bound to a volume: the node must be one the volume allows
//!   (a local volume's node affinity).
//! - A pending claim whose class waits for its first consumer: any node;
//!   once the pod's node is chosen the scheduler writes it on the claim
//!   (`volume.kubernetes.io/selected-node`) before binding the pod, and the
//!   volume is provisioned or bound there. The kubelet starts the pod once
//!   the claim is bound.
//! - A missing claim, or a pending one that binds immediately: the pod
//!   waits, fitting no node, until the claim changes.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use skiff_client::Store;

/// The caches the scheduler reads claims through.
#[derive(Clone)]
pub struct Volumes {
    pub claims: Store<PersistentVolumeClaim>,
    pub volumes: Store<PersistentVolume>,
    pub classes: Store<StorageClass>,
}

/// A pod's claims, as the VolumeBinding filter needs them.
#[derive(Debug, Clone, Default)]
pub struct VolumeNeeds {
    /// The volumes of bound claims: each must allow the node.
    pub bound: Vec<Arc<PersistentVolume>>,
    /// Claims (names, in the pod's namespace) that wait for their first
    /// consumer: the chosen node is written on them.
    pub waiting: Vec<String>,
    /// Why no node can take the pod now, if so.
    pub problem: Option<String>,
}

impl Volumes {
    pub fn needs(&self, pod: &Pod) -> VolumeNeeds {
        let mut needs = VolumeNeeds::default();
        let ns = pod.metadata.namespace.as_deref().unwrap_or("");
        let volumes = pod.spec.as_ref().and_then(|s| s.volumes.as_deref()).unwrap_or_default();
        for claim_name in volumes.iter().filter_map(|v| v.persistent_volume_claim.as_ref()).map(|c| &c.claim_name) {
            let Some(claim) = self.claims.get(&skiff_api::meta::object_key(ns, claim_name)) else {
                needs.problem = Some(format!("persistentvolumeclaim {claim_name:?} not found"));
                return needs;
            };
            if claim.metadata.deletion_timestamp.is_some() {
                needs.problem = Some(format!("persistentvolumeclaim {claim_name:?} is being deleted"));
                return needs;
            }
            let spec = claim.spec.as_ref();
            match spec.and_then(|s| s.volume_name.as_deref()).filter(|v| !v.is_empty()) {
                Some(volume) => match self.volumes.get(volume) {
                    Some(pv) => needs.bound.push(pv),
                    None => {
                        needs.problem = Some(format!("persistentvolume {volume:?} not found"));
                        return needs;
                    }
                },
                None => {
                    let class = spec.and_then(|s| s.storage_class_name.as_deref()).and_then(|c| self.classes.get(c));
                    let waits =
                        class.and_then(|c| c.volume_binding_mode.clone()).as_deref() == Some("WaitForFirstConsumer");
                    if !waits {
                        needs.problem = Some("pod has unbound immediate PersistentVolumeClaims".into());
                        return needs;
                    }
                    needs.waiting.push(claim_name.clone());
                }
            }
        }
        needs
    }
}
