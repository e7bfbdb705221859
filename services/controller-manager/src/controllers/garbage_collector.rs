//! The garbage collector: deletes objects whose owners are gone, and
//! carries out foreground and orphan deletion of owners.
//!
//! Covered: the owner and dependent kinds of
//! [`COLLECTED_OWNERS`](skiff_api::well_known::COLLECTED_OWNERS) (Pods of
//! ReplicaSets, DaemonSets, StatefulSets and Jobs; ReplicaSets of
//! Deployments; Jobs of CronJobs; PersistentVolumeClaims of StatefulSets
//! and Pods). Owner references of other kinds are left
//! alone. The collector reads every kind alike, as metadata from the shared
//! caches, and writes through the untyped client.
//!
//! - Background: a dependent none of whose owners exists any more (no live
//!   object of that kind and name with that uid) is deleted; dangling
//!   references next to a live owner are removed. "Gone" is confirmed with
//!   a read from the API, never judged from the cache alone, since a cache
//!   may not have seen an owner created a moment ago.
//! - Foreground: an owner being deleted with the `foregroundDeletion`
//!   finalizer has its dependents deleted (those that own others in turn,
//!   in foreground too), and loses the finalizer once no dependent with
//!   `blockOwnerDeletion` remains.
//! - Orphan: an owner being deleted with the `orphan` finalizer has its
//!   reference removed from every dependent, then loses the finalizer.
//!
//! Keys are `Kind/namespace/name`.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use serde_json::json;
use skiff_client::{Action, Client, InformerEvent, Object, Reconcile, Store, WorkQueue};

use super::{Context, Wiring};
use crate::error::{Error, Result};
use crate::util;

pub use skiff_api::well_known::{FOREGROUND_DELETION as FOREGROUND, ORPHAN_FINALIZER as ORPHAN};

/// The owner kinds collected, and their dependents' kind.
const OWNER_KINDS: &[(&str, &str)] = skiff_api::well_known::COLLECTED_OWNERS;

/// A cache the collector reads, as metadata, whatever its kind.
trait MetaCache: Send + Sync {
    fn meta(&self, key: &str) -> Option<ObjectMeta>;
    /// Objects in `ns` with an owner reference to `uid`.
    fn owned_by(&self, ns: &str, uid: &str) -> Vec<ObjectMeta>;
}

impl<K: Object> MetaCache for Store<K> {
    fn meta(&self, key: &str) -> Option<ObjectMeta> {
        self.get(key).map(|o| o.metadata().clone())
    }
    fn owned_by(&self, ns: &str, uid: &str) -> Vec<ObjectMeta> {
        self.list()
            .iter()
            .map(|o| o.metadata())
            .filter(|m| util::namespace(m) == ns && m.owner_references.iter().flatten().any(|r| r.uid == uid))
            .cloned()
            .collect()
    }
}

/// Every collected kind's cache, by kind.
type Caches = Arc<BTreeMap<&'static str, Arc<dyn MetaCache>>>;

pub struct GarbageCollector {
    client: Client,
    caches: Caches,
}

fn gc_key(kind: &str, meta: &ObjectMeta) -> String {
    format!("{kind}/{}/{}", util::namespace(meta), util::name(meta))
}

fn tracked_refs(meta: &ObjectMeta) -> impl Iterator<Item = &OwnerReference> {
    meta.owner_references.iter().flatten().filter(|r| is_owner_kind(&r.kind))
}

fn is_owner_kind(kind: &str) -> bool {
    OWNER_KINDS.iter().any(|(owner, _)| *owner == kind)
}

fn dependent_kinds(owner: &str) -> impl Iterator<Item = &'static str> + '_ {
    OWNER_KINDS.iter().filter(move |(o, _)| *o == owner).map(|(_, d)| *d)
}

fn owner_finalizing(meta: &ObjectMeta) -> bool {
    meta.deletion_timestamp.is_some() && meta.finalizers.iter().flatten().any(|f| f == FOREGROUND || f == ORPHAN)
}

pub fn start(ctx: &Context, w: &mut Wiring<'_>) {
    let queue = WorkQueue::new();
    let c = &ctx.caches;
    let mut caches: BTreeMap<&'static str, Arc<dyn MetaCache>> = BTreeMap::new();
    caches.insert("Pod", Arc::new(c.pods.clone()));
    caches.insert("ReplicaSet", Arc::new(c.replicasets.clone()));
    caches.insert("Deployment", Arc::new(c.deployments.clone()));
    caches.insert("DaemonSet", Arc::new(c.daemonsets.clone()));
    caches.insert("StatefulSet", Arc::new(c.statefulsets.clone()));
    caches.insert("Job", Arc::new(c.jobs.clone()));
    caches.insert("CronJob", Arc::new(c.cronjobs.clone()));
    caches.insert("PersistentVolumeClaim", Arc::new(c.persistent_volume_claims.clone()));
    let caches: Caches = Arc::new(caches);
    follow(w, &queue, &c.pods, &caches);
    follow(w, &queue, &c.replicasets, &caches);
    follow(w, &queue, &c.deployments, &caches);
    follow(w, &queue, &c.daemonsets, &caches);
    follow(w, &queue, &c.statefulsets, &caches);
    follow(w, &queue, &c.jobs, &caches);
    follow(w, &queue, &c.cronjobs, &caches);
    follow(w, &queue, &c.persistent_volume_claims, &caches);
    w.run(ctx, GarbageCollector { client: ctx.client.clone(), caches }, queue);
}

/// Feeds `store`'s events to the queue in the roles its kind plays.
fn follow<K: Object>(w: &mut Wiring<'_>, queue: &WorkQueue<String>, store: &Store<K>, caches: &Caches) {
    let (queue, caches) = (queue.clone(), caches.clone());
    w.on_events(store, move |ev| {
        if is_owner_kind(K::KIND) {
            on_owner_event(&queue, &ev, &caches);
        }
        on_dependent_event(&queue, ev);
    });
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
/// dependents' keys, found by uid).
fn on_owner_event<K: Object>(queue: &WorkQueue<String>, ev: &InformerEvent<K>, caches: &Caches) {
    match ev {
        InformerEvent::Added(obj) | InformerEvent::Modified { new: obj, .. } => {
            if owner_finalizing(obj.metadata()) {
                queue.add(gc_key(K::KIND, obj.metadata()));
            }
        }
        InformerEvent::Deleted(obj) => {
            let meta = obj.metadata();
            let uid = meta.uid.clone().unwrap_or_default();
            for kind in dependent_kinds(K::KIND) {
                for dep in caches.get(kind).map(|c| c.owned_by(util::namespace(meta), &uid)).unwrap_or_default() {
                    queue.add(gc_key(kind, &dep));
                }
            }
        }
    }
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
        let Some(meta) = self.caches.get(kind).and_then(|c| c.meta(&skiff_api::meta::object_key(ns, name))) else {
            return Ok(Action::done());
        };
        let action = if is_owner_kind(kind) { self.finalize_owner(kind, &meta).await? } else { Action::done() };
        self.collect_if_orphaned(kind, &meta).await?;
        Ok(action)
    }
}

impl GarbageCollector {
    /// Background deletion: deletes the object when every tracked owner is
    /// gone, drops the dangling references when only some are.
    async fn collect_if_orphaned(&self, kind: &str, meta: &ObjectMeta) -> Result<Action> {
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
        let (ns, name) = (util::namespace(meta), util::name(meta));
        let key = || skiff_api::meta::object_key(ns, name);
        if dangling.len() == all_refs.len() {
            tracing::info!(kind, key = %key(), "owner gone, deleting");
            return match self.client.delete(kind, ns, name).await {
                Ok(_) => Ok(Action::done()),
                Err(e) if e.is_not_found() => Ok(Action::done()),
                Err(source) => Err(Error::Delete { kind: kind.into(), key: key(), source }),
            };
        }
        let kept: Vec<OwnerReference> = all_refs.iter().filter(|r| !dangling.contains(&r.uid)).cloned().collect();
        self.patch(kind, meta, &util::owner_refs_patch(meta, kept)).await?;
        Ok(Action::done())
    }

    /// Whether the owner `r` names is alive: in the cache with that uid, or
    /// failing that, in the API.
    async fn owner_exists(&self, ns: &str, r: &OwnerReference) -> Result<bool> {
        let key = util::ref_key(ns, r);
        let Some(cache) = self.caches.get(r.kind.as_str()) else {
            return Ok(true);
        };
        if cache.meta(&key).and_then(|m| m.uid).as_deref() == Some(r.uid.as_str()) {
            return Ok(true);
        }
        match self.client.get(&r.kind, ns, &r.name).await {
            Ok(live) => Ok(live.pointer("/metadata/uid").and_then(|u| u.as_str()) == Some(r.uid.as_str())),
            Err(e) if e.is_not_found() => Ok(false),
            Err(source) => Err(Error::Get { kind: "owner", key, source }),
        }
    }

    /// Foreground or orphan deletion of an owner.
    async fn finalize_owner(&self, kind: &str, meta: &ObjectMeta) -> Result<Action> {
        if !owner_finalizing(meta) {
            return Ok(Action::done());
        }
        let ns = util::namespace(meta);
        let uid = meta.uid.clone().unwrap_or_default();
        let deps: Vec<(&'static str, ObjectMeta)> = dependent_kinds(kind)
            .flat_map(|d| {
                let owned = self.caches.get(d).map(|c| c.owned_by(ns, &uid)).unwrap_or_default();
                owned.into_iter().map(move |m| (d, m))
            })
            .collect();
        if meta.finalizers.iter().flatten().any(|f| f == ORPHAN) {
            for (dep_kind, dm) in &deps {
                let kept: Vec<_> = dm.owner_references.iter().flatten().filter(|r| r.uid != uid).cloned().collect();
                self.patch(dep_kind, dm, &util::owner_refs_patch(dm, kept)).await?;
            }
            return self.remove_finalizer(kind, meta, ORPHAN).await;
        }
        // Foreground.
        let mut blocking = 0;
        for (dep_kind, dm) in &deps {
            let blocks =
                dm.owner_references.iter().flatten().any(|r| r.uid == uid && r.block_owner_deletion == Some(true));
            if blocks {
                blocking += 1;
            }
            if dm.deletion_timestamp.is_some() {
                continue;
            }
            if is_owner_kind(dep_kind) {
                // An owner itself: delete it in the foreground too, so the
                // chain waits for the leaves.
                let patch = json!({"metadata": {"finalizers": with(dm, FOREGROUND)}});
                if !self.patch(dep_kind, dm, &patch).await? {
                    continue;
                }
            }
            let name = util::name(dm);
            match self.client.delete(dep_kind, ns, name).await {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(source) => {
                    let key = skiff_api::meta::object_key(ns, name);
                    return Err(Error::Delete { kind: (*dep_kind).into(), key, source });
                }
            }
        }
        if blocking > 0 {
            // Dependents' deletions bring the owner back.
            return Ok(Action::done());
        }
        self.remove_finalizer(kind, meta, FOREGROUND).await
    }

    async fn remove_finalizer(&self, kind: &str, meta: &ObjectMeta, finalizer: &str) -> Result<Action> {
        let rest: Vec<&String> = meta.finalizers.iter().flatten().filter(|f| *f != finalizer).collect();
        let patch = json!({"metadata": {"finalizers": rest, "resourceVersion": meta.resource_version}});
        if self.patch(kind, meta, &patch).await? {
            let key = skiff_api::meta::object_key(util::namespace(meta), util::name(meta));
            tracing::info!(kind, %key, finalizer, "finalized");
        }
        Ok(Action::done())
    }

    /// Patches the object `meta` describes; false if it is gone.
    async fn patch(&self, kind: &str, meta: &ObjectMeta, patch: &serde_json::Value) -> Result<bool> {
        let (ns, name) = (util::namespace(meta), util::name(meta));
        match self.client.patch(kind, ns, name, patch).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(source) => {
                Err(Error::Patch { kind: static_kind(kind), key: skiff_api::meta::object_key(ns, name), source })
            }
        }
    }
}

/// The kind's name as the error type keeps it.
fn static_kind(kind: &str) -> &'static str {
    skiff_api::KindInfo::by_kind(kind).map(|info| info.kind).unwrap_or("object")
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
    use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
    use k8s_openapi::api::core::v1::Pod;
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

    async fn world(objects: &[Value]) -> (Running, GarbageCollector, Store<ReplicaSet>) {
        let server = FakeApiserver::start().await;
        for o in objects {
            server.client.create(o["kind"].as_str().unwrap(), "default", o).await.unwrap();
        }
        let pods: Store<Pod> = server.store("").await;
        let replicasets: Store<ReplicaSet> = server.store("").await;
        let deployments: Store<Deployment> = server.store("").await;
        let mut caches: BTreeMap<&'static str, Arc<dyn MetaCache>> = BTreeMap::new();
        caches.insert("Pod", Arc::new(pods));
        caches.insert("ReplicaSet", Arc::new(replicasets.clone()));
        caches.insert("Deployment", Arc::new(deployments));
        let gc = GarbageCollector { client: server.client.clone(), caches: Arc::new(caches) };
        (server, gc, replicasets)
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
        let (server, gc, _) = world(&[
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
        let (server, gc, _) = world(&[
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
        let (server, gc, _) =
            world(&[rs, object("Pod", "kept", "p1", &[owner_ref("ReplicaSet", "web", "rs-uid", true)])]).await;

        assert_eq!(gc.reconcile("ReplicaSet/default/web").await.unwrap(), Action::done());

        assert_eq!(owner_uids(&get(&server, "Pod", "kept").await.unwrap()), Vec::<&str>::new());
        assert_eq!(finalizers(&get(&server, "ReplicaSet", "web").await.unwrap()), Vec::<&str>::new());
    }

    #[tokio::test]
    async fn foreground_deletion_keeps_the_owner_until_its_blocking_dependents_are_gone() {
        let deployment = finalizing(object("Deployment", "app", "d-uid", &[]), FOREGROUND);
        let rs = object("ReplicaSet", "app-1", "rs-uid", &[owner_ref("Deployment", "app", "d-uid", true)]);
        let (server, gc, replicasets) = world(&[deployment, rs]).await;

        gc.reconcile("Deployment/default/app").await.unwrap();

        // The fake apiserver deletes at once where a real one would wait
        // for the ReplicaSet's own foreground finalizer.
        assert_eq!(get(&server, "ReplicaSet", "app-1").await, None);
        assert_eq!(finalizers(&get(&server, "Deployment", "app").await.unwrap()), [FOREGROUND]);

        eventually("the ReplicaSet cache to see the delete", || replicasets.is_empty()).await;
        gc.reconcile("Deployment/default/app").await.unwrap();
        assert_eq!(finalizers(&get(&server, "Deployment", "app").await.unwrap()), Vec::<&str>::new());
    }
}
