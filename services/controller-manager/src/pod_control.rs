//! Creating and deleting a controller's pods, as Kubernetes' `PodControl`:
//! each write records the Event that explains it on the owner, and
//! deletions keep the owner's expectations, so every pod-owning controller
//! (ReplicaSet, DaemonSet) does both the same way.

use std::sync::Arc;

use futures::future::join_all;
use k8s_openapi::api::core::v1::Pod;
use skiff_client::{key_of, Client, EventRecorder, EventType, ObjectRef};

use crate::error::{Error, Result};
use crate::expectations::Expectations;
use crate::util;

pub struct PodControl {
    client: Client,
    recorder: EventRecorder,
}

impl PodControl {
    /// Events name `component` as their source (`replicaset-controller`).
    pub fn new(client: Client, component: &str) -> Self {
        Self { recorder: EventRecorder::new(client.clone(), component), client }
    }

    /// Creates `pod` for `owner`, recording SuccessfulCreate or FailedCreate.
    pub async fn create(&self, owner: &ObjectRef, pod: &Pod) -> Result<()> {
        let namespace = util::namespace(&pod.metadata);
        match self.client.api::<Pod>(namespace).create(pod).await {
            Ok(created) => {
                let msg = format!("Created pod: {}", util::name(&created.metadata));
                self.recorder.report_ref(owner, EventType::Normal, "SuccessfulCreate", &msg).await;
                Ok(())
            }
            Err(source) => {
                self.recorder
                    .report_ref(owner, EventType::Warning, "FailedCreate", &format!("Error creating: {source}"))
                    .await;
                Err(Error::Create { kind: "Pod", namespace: namespace.to_string(), source })
            }
        }
    }

    /// Deletes `pods` of `owner` at once, expecting their deletion under
    /// `key` first; a pod already gone, or one whose delete failed, is
    /// observed at once (no informer event will come for it). Returns the
    /// first failure once every delete was tried.
    pub async fn delete(
        &self,
        key: &str,
        owner: &ObjectRef,
        pods: &[Arc<Pod>],
        expectations: &Expectations,
    ) -> Result<()> {
        if pods.is_empty() {
            return Ok(());
        }
        expectations.expect_deletions(key, pods.iter().map(|p| key_of(p.as_ref())));
        let results = join_all(pods.iter().map(|pod| async {
            let name = util::name(&pod.metadata);
            match self.client.api::<Pod>(util::namespace(&pod.metadata)).delete(name).await {
                Ok(_) => {
                    self.recorder
                        .report_ref(owner, EventType::Normal, "SuccessfulDelete", &format!("Deleted pod: {name}"))
                        .await;
                    Ok(())
                }
                Err(e) if e.is_not_found() => {
                    expectations.deletion_observed(key, &key_of(pod.as_ref()));
                    Ok(())
                }
                Err(source) => {
                    expectations.deletion_observed(key, &key_of(pod.as_ref()));
                    Err(Error::Delete { kind: "Pod".into(), key: key_of(pod.as_ref()), source })
                }
            }
        }))
        .await;
        results.into_iter().find_map(Result::err).map_or(Ok(()), Err)
    }
}
