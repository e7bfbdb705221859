//! The ResourceQuota controller, as Kubernetes' resourcequota controller:
//! each quota's `status.hard` follows `spec.hard`, and `status.used` is
//! recounted from what its namespace holds (`skiff_api::quota::usage`).
//!
//! The apiserver charges each new object to `status.used` at admission, and
//! enforces `status.hard` from the first time this controller writes it. So
//! the recount is for giving back: it runs when a quota is made or its
//! limits change, when a pod or Service goes (or a pod ends), and every
//! `RECOUNT` for the kinds counted by listing. It never runs because
//! something was created: a recount then could miss an object charged but
//! not yet stored, and hand its share out twice (Kubernetes' replenishment
//! works the same way).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, ResourceQuota, ResourceQuotaStatus, Service};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;
use skiff_api::kinds::{KindInfo, KINDS};
use skiff_api::quota::{format_milli, usage};
use skiff_client::{Action, Client, InformerEvent, Object, Reconcile, Store, WorkQueue};

use super::{Context, Wiring};
use crate::error::{Error, Result};
use crate::util;

const KIND: &str = "ResourceQuota";
/// How often every quota is recounted, for what goes unseen (a Secret
/// deleted): Kubernetes' default `--resource-quota-sync-period`.
const RECOUNT: Duration = Duration::from_secs(300);

pub struct ResourceQuotaController {
    client: Client,
    quotas: Store<ResourceQuota>,
    pods: Store<Pod>,
    services: Store<Service>,
}

pub fn start(ctx: &Context, w: &mut Wiring<'_>) {
    let queue = WorkQueue::new();
    {
        let queue = queue.clone();
        w.on_events(&ctx.caches.resource_quotas, move |ev| {
            // Not for status changes: those are the apiserver's charges.
            let recount = match &ev {
                InformerEvent::Added(_) => true,
                InformerEvent::Modified { old, new } => old.spec != new.spec,
                InformerEvent::Deleted(_) => false,
            };
            if recount {
                queue.add(ev.key());
            }
        });
    }
    {
        let (queue, quotas) = (queue.clone(), ctx.caches.resource_quotas.clone());
        w.on_events(&ctx.caches.pods, move |ev| {
            let gives_back = match &ev {
                InformerEvent::Deleted(_) => true,
                InformerEvent::Modified { old, new } => !ended(old) && ended(new),
                InformerEvent::Added(_) => false,
            };
            if gives_back {
                enqueue_namespace(&queue, &quotas, &ev.object().metadata);
            }
        });
    }
    {
        let (queue, quotas) = (queue.clone(), ctx.caches.resource_quotas.clone());
        w.on_events(&ctx.caches.services, move |ev| {
            if let InformerEvent::Deleted(service) = &ev {
                enqueue_namespace(&queue, &quotas, &service.metadata);
            }
        });
    }
    let controller = ResourceQuotaController {
        client: ctx.client.clone(),
        quotas: ctx.caches.resource_quotas.clone(),
        pods: ctx.caches.pods.clone(),
        services: ctx.caches.services.clone(),
    };
    w.run(ctx, controller, queue);
}

fn ended(pod: &Pod) -> bool {
    matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

fn enqueue_namespace(queue: &WorkQueue<String>, quotas: &Store<ResourceQuota>, meta: &ObjectMeta) {
    let namespace = util::namespace(meta);
    for quota in quotas.list().iter().filter(|q| util::namespace(&q.metadata) == namespace) {
        queue.add(skiff_client::key_of(quota.as_ref()));
    }
}

impl Reconcile for ResourceQuotaController {
    const NAME: &'static str = "resourcequota";
    type Error = Error;

    async fn reconcile(&self, key: &str) -> Result<Action> {
        let Some(quota) = self.quotas.get(key) else { return Ok(Action::done()) };
        let namespace = util::namespace(&quota.metadata).to_string();
        let hard = quota.spec.as_ref().and_then(|s| s.hard.clone()).unwrap_or_default();
        let mut used: BTreeMap<String, i128> = hard.keys().map(|r| (r.clone(), 0)).collect();
        for info in KINDS.iter().filter(|k| k.namespaced) {
            let resources: Vec<&String> = hard.keys().filter(|r| applies(info, r)).collect();
            if resources.is_empty() {
                continue;
            }
            let objects = self.objects(info, &namespace).await?;
            for object in &objects {
                for resource in &resources {
                    let e = used.entry((*resource).clone()).or_insert(0);
                    *e = e.saturating_add(usage(info, object, resource).unwrap_or(0));
                }
            }
        }
        let status = ResourceQuotaStatus {
            hard: Some(hard),
            used: Some(used.into_iter().map(|(k, v)| (k, Quantity(format_milli(v)))).collect()),
        };
        if quota.status.as_ref() != Some(&status) {
            let mut updated = (*quota).clone();
            updated.status = Some(status);
            match self.client.api::<ResourceQuota>(&namespace).update_status(&updated).await {
                Ok(_) => {}
                Err(e) if e.is_not_found() => return Ok(Action::done()),
                Err(source) => return Err(Error::UpdateStatus { kind: KIND, key: key.into(), source }),
            }
        }
        Ok(Action::requeue(RECOUNT))
    }
}

impl ResourceQuotaController {
    /// The objects of `info`'s kind in `namespace`, as JSON.
    async fn objects(&self, info: &KindInfo, namespace: &str) -> Result<Vec<Value>> {
        Ok(match info.kind {
            "Pod" => in_namespace(&self.pods, namespace),
            "Service" => in_namespace(&self.services, namespace),
            kind => {
                let list = self.client.list(kind, namespace, &Default::default()).await;
                list.map_err(|source| Error::List { kind: kind.into(), namespace: namespace.into(), source })?.items
            }
        })
    }
}

/// Whether quota resource `resource` counts anything of `info`'s kind.
fn applies(info: &KindInfo, resource: &str) -> bool {
    usage(info, &Value::Object(Default::default()), resource).is_some()
}

fn in_namespace<K: Object>(store: &Store<K>, namespace: &str) -> Vec<Value> {
    store
        .list()
        .iter()
        .filter(|o| util::namespace(o.metadata()) == namespace)
        .filter_map(|o| serde_json::to_value(o.as_ref()).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counted_resource_finds_its_kind() {
        let applies = |resource: &str| -> Vec<&str> {
            KINDS.iter().filter(|k| k.namespaced && applies(k, resource)).map(|k| k.kind).collect()
        };
        assert_eq!(applies("pods"), ["Pod"]);
        assert_eq!(applies("requests.cpu"), ["Pod"]);
        assert_eq!(applies("services.nodeports"), ["Service"]);
        assert_eq!(applies("secrets"), ["Secret"]);
        assert_eq!(applies("count/deployments.apps"), ["Deployment"]);
        assert!(applies("example.com/unknown").is_empty());
    }
}
