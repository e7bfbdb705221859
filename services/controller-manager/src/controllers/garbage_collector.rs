//! The garbage collector: deletes objects whose owners are gone, and
//! carries out foreground and orphan deletion of owners.
//!
//! Covered: Pods (owned by ReplicaSets) and ReplicaSets (owned by
//! Deployments). Owner references of other kinds are left alone.
//!
//! - Background: a dependent none of whose owners exists any more (no live
//!   object of that kind and name with that uid) is deleted; dangling
//!   references next to a live owner are removed. "Gone" is confirmed with
//!   a read from the API, never judged from the cache alone, since a cache
//!   may not have seen an owner created a moment ago.
//! - Foreground: an owner being deleted with the `foregroundDeletion`
//!   finalizer has its dependents deleted (ReplicaSets in foreground too),
//!   and loses the finalizer once no dependent with `blockOwnerDeletion`
//!   remains.
//! - Orphan: an owner being deleted with the `orphan` finalizer has its
//!   reference removed from every dependent, then loses the finalizer.
//!
//! Keys are `Kind/namespace/name`.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use serde_json::json;
use skiff_client::{key_of, Action, Client, InformerEvent, Object, Reconcile, Store, WorkQueue};

use super::{Context, Wiring};
use crate::error::{Error, Result};
use crate::util;

pub use skiff_api::well_known::{FOREGROUND_DELETION as FOREGROUND, ORPHAN_FINALIZER as ORPHAN};

/// The owner kinds collected, and their dependents' kind.
const OWNER_KINDS: &[(&str, &str)] = skiff_api::well_known::COLLECTED_OWNERS;

pub struct GarbageCollector {
    client: Client,
    pods: Store<Pod>,
    replicasets: Store<ReplicaSet>,
    deployments: Store<Deployment>,
}

fn gc_key(kind: &str, meta: &ObjectMeta) -> String {
    format!("{kind}/{}/{}", util::namespace(meta), util::name(meta))
}

fn tracked_refs(meta: &ObjectMeta) -> impl Iterator<Item = &OwnerReference> {
    meta.owner_references.iter().flatten().filter(|r| OWNER_KINDS.iter().any(|(k, _)| *k == r.kind))
}

fn owner_finalizing(meta: &ObjectMeta) -> bool {
    meta.deletion_timestamp.is_some() && meta.finalizers.iter().flatten().any(|f| f == FOREGROUND || f == ORPHAN)
}

pub fn start(ctx: &Context, w: &mut Wiring<'_>) {
    let queue = WorkQueue::new();
    {
        let queue = queue.clone();
        w.on_events(&ctx.caches.pods, move |ev| on_dependent_event(&queue, ev));
    }
    {
        let queue = queue.clone();
        let pods = ctx.caches.pods.clone();
        w.on_events(&ctx.caches.replicasets, move |ev| {
            on_owner_event(&queue, &ev, &pods);
            on_dependent_event(&queue, ev);
        });
    }
    {
        let queue = queue.clone();
        let replicasets = ctx.caches.replicasets.clone();
        w.on_events(&ctx.caches.deployments, move |ev| on_owner_event(&queue, &ev, &replicasets));
    }
    let gc = GarbageCollector {
        client: ctx.client.clone(),
        pods: ctx.caches.pods.clone(),
        replicasets: ctx.caches.replicasets.clone(),
        deployments: ctx.caches.deployments.clone(),
    };
    w.run(ctx, gc, queue);
}

/// A dependent appeared or its references changed: check its owners. One
/// that went away: its owners may be waiting for it (foreground).
fn on_dependent_event<K: Object>(queue: &WorkQueue<String>, ev: InformerEvent<K>) {
    match ev {
        InformerEvent::Added(obj) => {
            if tracked_refs(obj.metadata()).next().is_some() {
                queue.add(gc_key(K::KIND, obj.metadata()));
            }
        }
        InformerEvent::Modified { old, new } => {
            if old.metadata().owner_references != new.metadata().owner_references
                && tracked_refs(new.metadata()).next().is_some()
            {
                queue.add(gc_key(K::KIND, new.metadata()));
            }
        }
        InformerEvent::Deleted(obj) => {
            let meta = obj.metadata();
            for r in tracked_refs(meta) {
                queue.add(format!("{}/{}/{}", r.kind, util::namespace(meta), r.name));
            }
        }
    }
}

/// An owner started finalizing (its own key) or was deleted (its
/// dependents' keys, found by uid in `dependents`).
fn on_owner_event<K: Object, D: Object>(queue: &WorkQueue<String>, ev: &InformerEvent<K>, dependents: &Store<D>) {
    match ev {
        InformerEvent::Added(obj) | InformerEvent::Modified { new: obj, .. } => {
            if owner_finalizing(obj.metadata()) {
                queue.add(gc_key(K::KIND, obj.metadata()));
            }
        }
        InformerEvent::Deleted(obj) => {
            let uid = obj.metadata().uid.clone().unwrap_or_default();
            for dep in dependents_of(dependents, util::namespace(obj.metadata()), &uid) {
                queue.add(gc_key(D::KIND, dep.metadata()));
            }
        }
    }
}

fn dependents_of<D: Object>(store: &Store<D>, ns: &str, uid: &str) -> Vec<Arc<D>> {
    store
        .list()
        .into_iter()
        .filter(|d| {
            util::namespace(d.metadata()) == ns && d.metadata().owner_references.iter().flatten().any(|r| r.uid == uid)
        })
        .collect()
}

impl Reconcile for GarbageCollector {
    const NAME: &'static str = "garbagecollector";
    type Error = Error;

    async fn reconcile(&self, key: &str) -> Result<Action> {
        let mut parts = key.splitn(3, '/');
        let (kind, ns, name) = match (parts.next(), parts.next(), parts.next()) {
            (Some(k), Some(ns), Some(n)) => (k, ns, n),
            _ => return Ok(Action::done()),
        };
        let cache_key = skiff_api::meta::object_key(ns, name);
        match kind {
            "Pod" => match self.pods.get(&cache_key) {
                Some(pod) => self.collect_if_orphaned(pod.as_ref()).await,
                None => Ok(Action::done()),
            },
            "ReplicaSet" => match self.replicasets.get(&cache_key) {
                Some(rs) => {
                    let action = self.finalize_owner(rs.as_ref(), &self.pods).await?;
                    self.collect_if_orphaned(rs.as_ref()).await?;
                    Ok(action)
                }
                None => Ok(Action::done()),
            },
            "Deployment" => match self.deployments.get(&cache_key) {
                Some(d) => self.finalize_owner(d.as_ref(), &self.replicasets).await,
                None => Ok(Action::done()),
            },
            _ => Ok(Action::done()),
        }
    }
}

impl GarbageCollector {
    /// Background deletion: deletes `obj` when every tracked owner is gone,
    /// drops the dangling references when only some are.
    async fn collect_if_orphaned<K: Object>(&self, obj: &K) -> Result<Action> {
        let meta = obj.metadata();
        if meta.deletion_timestamp.is_some() {
            return Ok(Action::done());
        }
        let refs: Vec<&OwnerReference> = tracked_refs(meta).collect();
        if refs.is_empty() {
            return Ok(Action::done());
        }
        let mut dangling = Vec::new();
        for r in &refs {
            if !self.owner_exists(util::namespace(meta), r).await? {
                dangling.push(r.uid.clone());
            }
        }
        if dangling.is_empty() {
            return Ok(Action::done());
        }
        let all_refs = meta.owner_references.as_deref().unwrap_or_default();
        let api = self.client.api::<K>(util::namespace(meta));
        if dangling.len() == all_refs.len() {
            tracing::info!(kind = K::KIND, key = %key_of(obj), "owner gone, deleting");
            return match api.delete(util::name(meta)).await {
                Ok(_) => Ok(Action::done()),
                Err(e) if e.is_not_found() => Ok(Action::done()),
                Err(source) => Err(Error::Delete { kind: K::KIND.into(), key: key_of(obj), source }),
            };
        }
        let kept: Vec<OwnerReference> = all_refs.iter().filter(|r| !dangling.contains(&r.uid)).cloned().collect();
        match api.patch(util::name(meta), &util::owner_refs_patch(meta, kept)).await {
            Ok(_) => Ok(Action::done()),
            Err(e) if e.is_not_found() => Ok(Action::done()),
            Err(source) => Err(Error::Patch { kind: K::KIND, key: key_of(obj), source }),
        }
    }

    /// Whether the owner `r` names is alive: in the cache with that uid, or
    /// failing that, in the API.
    async fn owner_exists(&self, ns: &str, r: &OwnerReference) -> Result<bool> {
        let key = util::ref_key(ns, r);
        let cached_uid = match r.kind.as_str() {
            "ReplicaSet" => self.replicasets.get(&key).and_then(|o| o.metadata.uid.clone()),
            "Deployment" => self.deployments.get(&key).and_then(|o| o.metadata.uid.clone()),
            _ => return Ok(true),
        };
        if cached_uid.as_deref() == Some(r.uid.as_str()) {
            return Ok(true);
        }
        let live = match r.kind.as_str() {
            "ReplicaSet" => self.client.api::<ReplicaSet>(ns).get(&r.name).await.map(|o| o.metadata.uid),
            _ => self.client.api::<Deployment>(ns).get(&r.name).await.map(|o| o.metadata.uid),
        };
        match live {
            Ok(uid) => Ok(uid.as_deref() == Some(r.uid.as_str())),
            Err(e) if e.is_not_found() => Ok(false),
            Err(source) => Err(Error::Get { kind: "owner", key, source }),
        }
    }

    /// Foreground or orphan deletion of an owner whose dependents live in
    /// `dependents`.
    async fn finalize_owner<K: Object, D: Object>(&self, owner: &K, dependents: &Store<D>) -> Result<Action> {
        let meta = owner.metadata();
        if !owner_finalizing(meta) {
            return Ok(Action::done());
        }
        let ns = util::namespace(meta);
        let uid = meta.uid.clone().unwrap_or_default();
        let deps = dependents_of(dependents, ns, &uid);
        let api = self.client.api::<D>(ns);
        let finalizers: Vec<String> = meta.finalizers.clone().unwrap_or_default();
        if finalizers.iter().any(|f| f == ORPHAN) {
            for dep in &deps {
                let dm = dep.metadata();
                let kept: Vec<_> = dm.owner_references.iter().flatten().filter(|r| r.uid != uid).cloned().collect();
                match api.patch(util::name(dm), &util::owner_refs_patch(dm, kept)).await {
                    Ok(_) => {}
                    Err(e) if e.is_not_found() => {}
                    Err(source) => return Err(Error::Patch { kind: D::KIND, key: key_of(dep.as_ref()), source }),
                }
            }
            return self.remove_finalizer(owner, ORPHAN).await;
        }
        // Foreground.
        let mut blocking = 0;
        for dep in &deps {
            let dm = dep.metadata();
            let blocks =
                dm.owner_references.iter().flatten().any(|r| r.uid == uid && r.block_owner_deletion == Some(true));
            if blocks {
                blocking += 1;
            }
            if dm.deletion_timestamp.is_some() {
                continue;
            }
            if OWNER_KINDS.iter().any(|(k, _)| *k == D::KIND) {
                // An owner itself: delete it in the foreground too, so the
                // chain waits for the leaves.
                let patch = json!({"metadata": {"finalizers": with(dm, FOREGROUND)}});
                match api.patch(util::name(dm), &patch).await {
                    Ok(_) => {}
                    Err(e) if e.is_not_found() => continue,
                    Err(source) => return Err(Error::Patch { kind: D::KIND, key: key_of(dep.as_ref()), source }),
                }
            }
            match api.delete(util::name(dm)).await {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(source) => return Err(Error::Delete { kind: D::KIND.into(), key: key_of(dep.as_ref()), source }),
            }
        }
        if blocking > 0 {
            // Dependents' deletions bring the owner back.
            return Ok(Action::done());
        }
        self.remove_finalizer(owner, FOREGROUND).await
    }

    async fn remove_finalizer<K: Object>(&self, owner: &K, finalizer: &str) -> Result<Action> {
        let meta = owner.metadata();
        let rest: Vec<&String> = meta.finalizers.iter().flatten().filter(|f| *f != finalizer).collect();
        let patch = json!({"metadata": {"finalizers": rest, "resourceVersion": meta.resource_version}});
        match self.client.api::<K>(util::namespace(meta)).patch(util::name(meta), &patch).await {
            Ok(_) => {
                tracing::info!(kind = K::KIND, key = %key_of(owner), finalizer, "finalized");
                Ok(Action::done())
            }
            Err(e) if e.is_not_found() => Ok(Action::done()),
            Err(source) => Err(Error::Patch { kind: K::KIND, key: key_of(owner), source }),
        }
    }
}

fn with(meta: &ObjectMeta, finalizer: &str) -> Vec<String> {
    let mut all = meta.finalizers.clone().unwrap_or_default();
    if !all.iter().any(|f| f == finalizer) {
        all.push(finalizer.to_string());
    }
    all
}

#[cfg(test)]
mod tests {
    use serde_json::Value;
    use skiff_client::fake_server::{eventually, FakeApiserver, Running};

    use super::*;

    fn owner_ref(kind: &str, name: &str, uid: &str, blocks: bool) -> Value {
        let api_version = "apps/v1";
        json!({"apiVersion": api_version, "kind": kind, "name": name, "uid": uid,
               "controller": true, "blockOwnerDeletion": blocks})
    }

    fn object(kind: &str, name: &str, uid: &str, owners: &[Value]) -> Value {
        let api_version = if kind == "Pod" { "v1" } else { "apps/v1" };
        json!({"apiVersion": api_version, "kind": kind,
               "metadata": {"name": name, "namespace": "default", "uid": uid, "ownerReferences": owners}})
    }

    /// `object` being deleted with `finalizer`.
    fn finalizing(mut obj: Value, finalizer: &str) -> Value {
        obj["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        obj["metadata"]["finalizers"] = json!([finalizer]);
        obj
    }

    async fn world(objects: &[Value]) -> (Running, GarbageCollector) {
        let server = FakeApiserver::start().await;
        for o in objects {
            server.client.create(o["kind"].as_str().unwrap(), "default", o).await.unwrap();
        }
        let gc = GarbageCollector {
            client: server.client.clone(),
            pods: server.store("").await,
            replicasets: server.store("").await,
            deployments: server.store("").await,
        };
        (server, gc)
    }

    async fn get(server: &Running, kind: &str, name: &str) -> Option<Value> {
        server.client.get(kind, "default", name).await.ok()
    }

    fn owner_uids(obj: &Value) -> Vec<&str> {
        let refs = obj["metadata"]["ownerReferences"].as_array();
        refs.into_iter().flatten().filter_map(|r| r["uid"].as_str()).collect()
    }

    fn finalizers(obj: &Value) -> Vec<&str> {
        obj["metadata"]["finalizers"].as_array().into_iter().flatten().filter_map(Value::as_str).collect()
    }

    #[tokio::test]
    async fn a_dependent_whose_owners_are_all_gone_is_deleted_and_a_live_owner_keeps_it() {
        let live = owner_ref("ReplicaSet", "web", "rs-uid", true);
        let gone = owner_ref("ReplicaSet", "old", "gone-uid", true);
        let (server, gc) = world(&[
            object("ReplicaSet", "web", "rs-uid", &[]),
            object("Pod", "orphan", "p1", std::slice::from_ref(&gone)),
            object("Pod", "owned", "p2", std::slice::from_ref(&live)),
            object("Pod", "half", "p3", &[live, gone]),
        ])
        .await;

        for pod in ["orphan", "owned", "half"] {
            assert_eq!(gc.reconcile(&format!("Pod/default/{pod}")).await.unwrap(), Action::done());
        }

        assert_eq!(get(&server, "Pod", "orphan").await, None);
        assert_eq!(owner_uids(&get(&server, "Pod", "owned").await.unwrap()), ["rs-uid"]);
        assert_eq!(owner_uids(&get(&server, "Pod", "half").await.unwrap()), ["rs-uid"], "the dangling reference goes");
    }

    #[tokio::test]
    async fn an_owner_recreated_under_the_same_name_does_not_keep_the_old_ones_dependents() {
        let old = owner_ref("ReplicaSet", "web", "old-uid", true);
        let (server, gc) = world(&[
            object("ReplicaSet", "web", "new-uid", &[]),
            object("Pod", "stale", "p1", std::slice::from_ref(&old)),
        ])
        .await;

        gc.reconcile("Pod/default/stale").await.unwrap();

        assert_eq!(get(&server, "Pod", "stale").await, None);
    }

    #[tokio::test]
    async fn orphan_deletion_releases_the_dependents_then_the_owner() {
        let rs = finalizing(object("ReplicaSet", "web", "rs-uid", &[]), ORPHAN);
        let (server, gc) =
            world(&[rs, object("Pod", "kept", "p1", &[owner_ref("ReplicaSet", "web", "rs-uid", true)])]).await;

        assert_eq!(gc.reconcile("ReplicaSet/default/web").await.unwrap(), Action::done());

        assert_eq!(owner_uids(&get(&server, "Pod", "kept").await.unwrap()), Vec::<&str>::new());
        assert_eq!(finalizers(&get(&server, "ReplicaSet", "web").await.unwrap()), Vec::<&str>::new());
    }

    #[tokio::test]
    async fn foreground_deletion_keeps_the_owner_until_its_blocking_dependents_are_gone() {
        let deployment = finalizing(object("Deployment", "app", "d-uid", &[]), FOREGROUND);
        let rs = object("ReplicaSet", "app-1", "rs-uid", &[owner_ref("Deployment", "app", "d-uid", true)]);
        let (server, gc) = world(&[deployment, rs]).await;

        gc.reconcile("Deployment/default/app").await.unwrap();

        // The fake apiserver deletes at once where a real one would wait
        // for the ReplicaSet's own foreground finalizer.
        assert_eq!(get(&server, "ReplicaSet", "app-1").await, None);
        assert_eq!(finalizers(&get(&server, "Deployment", "app").await.unwrap()), [FOREGROUND]);

        eventually("the ReplicaSet cache to see the delete", || gc.replicasets.is_empty()).await;
        gc.reconcile("Deployment/default/app").await.unwrap();
        assert_eq!(finalizers(&get(&server, "Deployment", "app").await.unwrap()), Vec::<&str>::new());
    }
}
