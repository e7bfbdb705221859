//! The namespace controller: empties a terminating namespace, then lets it
//! go.
//!
//! The apiserver gives every Namespace the finalizer `kubernetes` in
//! `spec.finalizers`, and a delete of a non-empty namespace only marks it
//! (deletionTimestamp, phase Terminating; creates in it are refused). This
//! controller deletes every namespaced object in it, of every kind the
//! apiserver serves, listing from the API rather than the caches (which hold
//! only some kinds), and once everything is gone clears its finalizer through
//! UpdateStatus (the `finalize` subresource of Kubernetes), after which the
//! apiserver deletes the namespace.

use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use skiff_client::{Action, Client, ListParams, Reconcile, Store, WorkQueue};

use super::{Context, Wiring};
use crate::error::{Error, Result};
use crate::util;
use skiff_api::well_known::NAMESPACE_FINALIZER;

/// How soon to look again while objects (held by their own finalizers, or
/// being recreated by a controller that has not noticed yet) remain.
const RECHECK: Duration = Duration::from_secs(1);

pub struct NamespaceController {
    client: Client,
    namespaces: Store<Namespace>,
}

pub fn start(ctx: &Context, w: &mut Wiring<'_>) {
    let queue = WorkQueue::new();
    {
        let queue = queue.clone();
        w.on_events(&ctx.caches.namespaces, move |ev| {
            if ev.object().metadata.deletion_timestamp.is_some() {
                queue.add(ev.key());
            }
        });
    }
    let controller = NamespaceController { client: ctx.client.clone(), namespaces: ctx.caches.namespaces.clone() };
    w.run(ctx, controller, queue);
}

impl Reconcile for NamespaceController {
    const NAME: &'static str = "namespace";
    type Error = Error;

    async fn reconcile(&self, name: &str) -> Result<Action> {
        let Some(ns) = self.namespaces.get(name) else { return Ok(Action::done()) };
        if ns.metadata.deletion_timestamp.is_none() {
            return Ok(Action::done());
        }
        let mut remaining = 0;
        for info in skiff_api::KINDS.iter().filter(|k| k.namespaced) {
            let list = self
                .client
                .list(info.kind, name, &ListParams::default())
                .await
                .map_err(|source| Error::List { kind: info.kind.into(), namespace: name.into(), source })?;
            for obj in &list.items {
                remaining += 1;
                if !skiff_api::meta::str_field(obj, "deletionTimestamp").is_empty() {
                    continue;
                }
                let obj_name = skiff_api::meta::name(obj);
                match self.client.delete(info.kind, name, obj_name).await {
                    Ok(_) => {}
                    Err(e) if e.is_not_found() => {}
                    Err(source) => {
                        return Err(Error::Delete { kind: info.kind.into(), key: format!("{name}/{obj_name}"), source })
                    }
                }
            }
        }
        if remaining > 0 {
            tracing::debug!(namespace = name, remaining, "namespace not empty yet");
            return Ok(Action::requeue(RECHECK));
        }
        let finalizers = ns.spec.as_ref().and_then(|s| s.finalizers.as_ref());
        if !finalizers.is_some_and(|f| f.iter().any(|f| f == NAMESPACE_FINALIZER)) {
            return Ok(Action::done());
        }
        let mut finalized = (*ns).clone();
        if let Some(spec) = finalized.spec.as_mut() {
            spec.finalizers =
                Some(finalizers.into_iter().flatten().filter(|f| *f != NAMESPACE_FINALIZER).cloned().collect());
        }
        match self.client.api::<Namespace>("").update_status(&finalized).await {
            Ok(_) => {
                tracing::info!(namespace = name, "namespace emptied and finalized");
                Ok(Action::done())
            }
            Err(e) if e.is_not_found() => Ok(Action::done()),
            Err(source) => Err(Error::UpdateStatus { kind: "Namespace", key: util::name(&ns.metadata).into(), source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};
    use skiff_client::fake_server::{FakeApiserver, Running};

    use super::*;

    /// A namespace `doomed` being deleted, holding `objects`, and the
    /// controller watching namespaces on a fake apiserver.
    async fn world(objects: &[Value]) -> (Running, NamespaceController) {
        let server = FakeApiserver::start().await;
        let ns = json!({"apiVersion": "v1", "kind": "Namespace",
                        "metadata": {"name": "doomed", "deletionTimestamp": "2026-01-01T00:00:00Z"},
                        "spec": {"finalizers": [NAMESPACE_FINALIZER]}});
        server.client.create("Namespace", "", &ns).await.unwrap();
        for o in objects {
            server.client.create(o["kind"].as_str().unwrap(), "doomed", o).await.unwrap();
        }
        let namespaces = server.store::<Namespace>("").await;
        let controller = NamespaceController { client: server.client.clone(), namespaces };
        (server, controller)
    }

    fn object(kind: &str, name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": kind, "metadata": {"name": name, "namespace": "doomed"}})
    }

    async fn finalizers(server: &Running) -> Vec<String> {
        let ns = server.client.api::<Namespace>("").get("doomed").await.unwrap();
        ns.spec.and_then(|s| s.finalizers).unwrap_or_default()
    }

    #[tokio::test]
    async fn a_terminating_namespace_is_emptied_before_its_finalizer_goes() {
        let (server, controller) = world(&[object("ConfigMap", "settings"), object("Service", "web")]).await;

        assert_eq!(controller.reconcile("doomed").await.unwrap(), Action::requeue(RECHECK));
        assert!(server.fake.names("ConfigMap").is_empty() && server.fake.names("Service").is_empty());
        assert_eq!(finalizers(&server).await, [NAMESPACE_FINALIZER], "kept while objects were still there");

        assert_eq!(controller.reconcile("doomed").await.unwrap(), Action::done());
        assert_eq!(finalizers(&server).await, Vec::<String>::new());
    }

    #[tokio::test]
    async fn an_object_held_by_its_own_finalizer_holds_the_namespace() {
        let mut held = object("ConfigMap", "held");
        held["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        held["metadata"]["finalizers"] = json!(["example.com/keep"]);
        let (server, controller) = world(&[held]).await;

        assert_eq!(controller.reconcile("doomed").await.unwrap(), Action::requeue(RECHECK));
        assert_eq!(server.fake.names("ConfigMap"), ["held"], "not deleted again");
        assert_eq!(finalizers(&server).await, [NAMESPACE_FINALIZER]);

        // Its finalizer released, the apiserver removes it.
        server.client.delete("ConfigMap", "doomed", "held").await.unwrap();
        assert_eq!(controller.reconcile("doomed").await.unwrap(), Action::done());
        assert_eq!(finalizers(&server).await, Vec::<String>::new());
    }

    #[tokio::test]
    async fn a_namespace_not_being_deleted_is_left_alone() {
        let server = FakeApiserver::start().await;
        server.client.create("Namespace", "", &json!({"metadata": {"name": "live"}})).await.unwrap();
        server.client.create("ConfigMap", "live", &object("ConfigMap", "settings")).await.unwrap();
        let controller =
            NamespaceController { client: server.client.clone(), namespaces: server.store::<Namespace>("").await };

        assert_eq!(controller.reconcile("live").await.unwrap(), Action::done());
        assert_eq!(server.fake.names("ConfigMap"), ["settings"]);
    }
}
