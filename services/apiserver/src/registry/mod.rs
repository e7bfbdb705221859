//! The life of an object: what create, update, patch and delete do to it
//! before and after etcd — server-set metadata, status kept apart from spec,
//! generation, compare-and-swap on resourceVersion, finalizers.
//!
//! The verbs that write one object live here; [`list`] and [`delete`] have
//! their own files, and what belongs to one kind (Namespace finalizers, a
//! bound Pod's graceful deletion) is in [`rules`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use skiff_api::apply::Applier;
use skiff_api::proto::PatchType;
use skiff_api::{clock, meta, normalize, KindInfo, MAX_OBJECT_BYTES};

use crate::allocator::{Allocation, Ranges, ServiceAllocator};
use crate::cache::WatchCache;
use crate::storage::{Storage, Stored, Swap};
use crate::Error;
pub use skiff_api::well_known::SYSTEM_NAMESPACES;

mod delete;
pub use delete::DeleteOptions;
pub use list::ListAt;
mod list;
mod rules;
#[cfg(test)]
mod tests;

use self::rules::{
    add_namespace_finalizer, awaits_kubelet, check_immutable, generate_job_selector, has_finalizers,
    keep_namespace_finalizers, set_condition,
};

/// Attempts at a patch or delete that lost a compare-and-swap race before
/// giving up with a conflict.
const CAS_ATTEMPTS: usize = 8;

/// How long a list waits for the cache to catch up with this apiserver's
/// own last write before serving what it has.
const READ_YOUR_WRITES_WAIT: Duration = Duration::from_secs(3);

pub struct Registry {
    pub storage: Arc<dyn Storage>,
    caches: HashMap<&'static str, Arc<WatchCache>>,
    last_write: HashMap<&'static str, AtomicI64>,
    /// Cluster IPs and node ports of Services (allocator.rs).
    services: ServiceAllocator,
}

fn parse(body: &[u8], what: &'static str) -> Result<Value, Error> {
    serde_json::from_slice(body).map_err(|source| Error::BadJson { what, source })
}

/// `obj` as clients see it: stamped with its resourceVersion.
fn stamped(mut obj: Value, revision: i64) -> Bytes {
    meta::set(&mut obj, "resourceVersion", revision.to_string());
    serde_json::to_vec(&obj).unwrap_or_default().into()
}

/// Random suffix for generateName, from the alphabet Kubernetes uses (no
/// vowels, so no words).
fn name_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    uuid::Uuid::new_v4().as_bytes()[..5].iter().map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char).collect()
}

/// Everything but metadata and status: a change here bumps generation.
fn spec_of(obj: &Value) -> Vec<(&String, &Value)> {
    obj.as_object()
        .map(|m| m.iter().filter(|(k, _)| !matches!(k.as_str(), "metadata" | "status")).collect())
        .unwrap_or_default()
}

impl Registry {
    pub fn new(
        storage: Arc<dyn Storage>,
        caches: HashMap<&'static str, Arc<WatchCache>>,
        service_ranges: Ranges,
    ) -> Self {
        let last_write = caches.keys().map(|k| (*k, AtomicI64::new(0))).collect();
        Self { storage, caches, last_write, services: ServiceAllocator::new(service_ranges) }
    }

    /// For a Service write: the allocator's lock and what other Services hold.
    async fn allocation(&self, info: &'static KindInfo) -> Option<Allocation<'_>> {
        if info.kind != "Service" {
            return None;
        }
        // A delete frees its IP for a create right after, which may ask for
        // it again: the cache must show it.
        Some(self.services.begin(self.cache_with_own_writes(info).await).await)
    }

    pub fn cache(&self, info: &KindInfo) -> &Arc<WatchCache> {
        &self.caches[info.kind]
    }

    /// The kind's watch cache once it shows this apiserver's own latest write
    /// of the kind (waiting at most READ_YOUR_WRITES_WAIT). Every decision
    /// read from a cache goes through here, so a client's write is never
    /// undone by a read that came before it: a create in a namespace just
    /// marked for deletion is refused, a pod on a Node just created waits
    /// for its kubelet.
    async fn cache_with_own_writes(&self, info: &KindInfo) -> &Arc<WatchCache> {
        self.shows_own_writes(info).await;
        self.cache(info)
    }

    /// Waits (at most READ_YOUR_WRITES_WAIT) until the kind's watch cache
    /// shows this apiserver's own latest write of the kind; false if it
    /// still does not.
    async fn shows_own_writes(&self, info: &KindInfo) -> bool {
        let cache = self.cache(info);
        let wanted = self.last_write[info.kind].load(Ordering::Relaxed);
        cache.revision() >= wanted || cache.wait_for(wanted, READ_YOUR_WRITES_WAIT).await
    }

    fn note_write(&self, info: &KindInfo, revision: i64) {
        self.last_write[info.kind].fetch_max(revision, Ordering::Relaxed);
    }

    /// The namespace an object lives in: the request's, which the object's
    /// own `metadata.namespace` must agree with; none for cluster-scoped kinds.
    fn namespace_of(info: &KindInfo, requested: &str, obj: &mut Value) -> Result<String, Error> {
        if !info.namespaced {
            meta::remove(obj, "namespace");
            return Ok(String::new());
        }
        let declared = meta::namespace(obj).to_string();
        let ns = match (requested, declared.as_str()) {
            ("", "") => "default".to_string(),
            ("", d) => d.to_string(),
            (r, "") => r.to_string(),
            (r, d) if r == d => r.to_string(),
            (r, d) => {
                return Err(Error::BadRequest(format!(
                    "metadata.namespace: {d:?} does not match the namespace of the request ({r:?})"
                )))
            }
        };
        meta::set(obj, "namespace", ns.clone());
        Ok(ns)
    }

    fn invalid<'a>(info: &'static KindInfo, name: &'a str) -> impl FnOnce(skiff_api::Error) -> Error + 'a {
        move |source| Error::Invalid { kind: info.kind, name: name.to_string(), source }
    }

    async fn check_namespace(&self, ns: &str) -> Result<(), Error> {
        let info = KindInfo::by_kind("Namespace")?;
        let key = info.key("", ns);
        let deleting = match self.cache_with_own_writes(info).await.get(&key) {
            Some(cached) => cached.deleting,
            // Not cached yet (created a moment ago elsewhere): ask etcd.
            None => match self.storage.get(&key).await? {
                Some(stored) => {
                    !meta::str_field(&parse(&stored.value, "stored namespace")?, "deletionTimestamp").is_empty()
                }
                None => return Err(Error::NamespaceNotFound(ns.into())),
            },
        };
        if deleting {
            return Err(Error::NamespaceTerminating(ns.into()));
        }
        Ok(())
    }

    /// Stores a new object. `trace_context` (a `traceparent`) is kept on it
    /// as [`TRACE_CONTEXT_ANNOTATION`] so that the work done for it later
    /// joins the trace of the request that created it.
    ///
    /// [`TRACE_CONTEXT_ANNOTATION`]: skiff_api::well_known::TRACE_CONTEXT_ANNOTATION
    pub async fn create(
        &self,
        kind: &str,
        namespace: &str,
        body: &[u8],
        trace_context: Option<&str>,
        dry_run: bool,
    ) -> Result<Bytes, Error> {
        let info = KindInfo::by_kind(kind)?;
        if body.len() > MAX_OBJECT_BYTES {
            return Err(skiff_api::Error::TooLarge { size: body.len(), limit: MAX_OBJECT_BYTES }.into());
        }
        let mut obj = parse(body, "the object")?;
        if !obj.is_object() {
            return Err(Error::BadRequest("the object must be a JSON object".into()));
        }
        let ns = Self::namespace_of(info, namespace, &mut obj)?;
        if meta::name(&obj).is_empty() {
            let prefix = meta::str_field(&obj, "generateName").to_string();
            if !prefix.is_empty() {
                meta::set(&mut obj, "name", format!("{prefix}{}", name_suffix()));
            }
        }
        for server_set in ["resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds"] {
            meta::remove(&mut obj, server_set);
        }
        meta::set(&mut obj, "uid", uuid::Uuid::new_v4().to_string());
        meta::set(&mut obj, "creationTimestamp", clock::now_rfc3339());
        meta::set(&mut obj, "generation", 1);
        if let Some(traceparent) = trace_context {
            meta::set_annotation(&mut obj, skiff_api::well_known::TRACE_CONTEXT_ANNOTATION, traceparent);
        }
        // Nodes report their own status when they register; for every
        // other kind status is the controllers' to write.
        if info.has_status && info.kind != "Node" {
            if let Some(root) = obj.as_object_mut() {
                root.remove("status");
            }
        }
        if info.kind == "Namespace" {
            add_namespace_finalizer(&mut obj);
            obj["status"] = serde_json::json!({"phase": "Active"});
        }
        let name = meta::name(&obj).to_string();
        generate_job_selector(info, &mut obj).map_err(Self::invalid(info, &name))?;
        let mut obj = normalize(info, obj, body.len()).map_err(Self::invalid(info, &name))?;
        if info.namespaced {
            self.check_namespace(&ns).await?;
        }
        let key = info.key(&ns, &name);
        if dry_run {
            // Nothing is allocated (cluster IPs, node ports) for an object
            // that will not be stored.
            if self.storage.get(&key).await?.is_some() {
                return Err(Error::already_exists(info, &name));
            }
            return serde_json::to_vec(&obj).map(Bytes::from).map_err(|source| Error::Corrupt { key, source });
        }
        let mut allocation = self.allocation(info).await;
        if let Some(a) = allocation.as_mut() {
            a.assign(&key, &mut obj, None).map_err(Self::invalid(info, &name))?;
        }
        let encoded = serde_json::to_vec(&obj).map_err(|source| Error::Corrupt { key: key.clone(), source })?;
        match self.storage.put_if(&key, encoded, 0).await? {
            Swap::Done { revision } => {
                self.note_write(info, revision);
                if let Some(a) = allocation {
                    a.written(revision, false);
                }
                Ok(stamped(obj, revision))
            }
            Swap::Lost => Err(Error::already_exists(info, &name)),
        }
    }

    /// The stored object, decoded, for a decision made on it (no
    /// resourceVersion stamped, no encoding for a client).
    pub async fn get_value(&self, kind: &str, namespace: &str, name: &str) -> Result<Value, Error> {
        let (_, _, value) = self.read(KindInfo::by_kind(kind)?, namespace, name).await?;
        Ok(value)
    }

    /// [`get_value`](Self::get_value) answered by the watch cache once it
    /// shows this apiserver's own writes, so a check on a hot path (every
    /// kubelet write) costs no etcd round trip. A miss reads etcd: absence
    /// in a lagging cache never passes for absence.
    pub async fn get_value_cached(&self, kind: &str, namespace: &str, name: &str) -> Result<Value, Error> {
        let info = KindInfo::by_kind(kind)?;
        match self.cache_with_own_writes(info).await.get(&info.key(namespace, name)) {
            Some(cached) => parse(&cached.json, "a cached object"),
            None => self.get_value(kind, namespace, name).await,
        }
    }

    /// Every object of `kind` in `namespace` as the watch cache holds them
    /// (once it shows this apiserver's own writes), decoded: for admission
    /// decisions on the few objects that bound a namespace.
    pub async fn cached_in_namespace(&self, kind: &str, namespace: &str) -> Result<Vec<Value>, Error> {
        let info = KindInfo::by_kind(kind)?;
        let (objects, _) = self.cache_with_own_writes(info).await.objects(&info.key_prefix(Some(namespace)));
        objects.iter().map(|o| parse(&o.json, "a cached object")).collect()
    }

    pub async fn get(&self, kind: &str, namespace: &str, name: &str) -> Result<Bytes, Error> {
        let info = KindInfo::by_kind(kind)?;
        let (_, stored, current) = self.read(info, namespace, name).await?;
        Ok(stamped(current, stored.mod_revision))
    }

    async fn read(
        &self,
        info: &'static KindInfo,
        namespace: &str,
        name: &str,
    ) -> Result<(String, Stored, Value), Error> {
        if name.is_empty() {
            return Err(Error::BadRequest("name: required".into()));
        }
        let key = info.key(namespace, name);
        let stored = self.storage.get(&key).await?.ok_or_else(|| Error::not_found(info, name))?;
        let value =
            serde_json::from_slice(&stored.value).map_err(|source| Error::Corrupt { key: key.clone(), source })?;
        Ok((key, stored, value))
    }

    /// Update (spec and metadata) or UpdateStatus (status only).
    pub async fn update(
        &self,
        kind: &str,
        namespace: &str,
        body: &[u8],
        status_only: bool,
        dry_run: bool,
    ) -> Result<Bytes, Error> {
        let info = KindInfo::by_kind(kind)?;
        if body.len() > MAX_OBJECT_BYTES {
            return Err(skiff_api::Error::TooLarge { size: body.len(), limit: MAX_OBJECT_BYTES }.into());
        }
        let mut new = parse(body, "the object")?;
        let ns = Self::namespace_of(info, namespace, &mut new)?;
        let name = meta::name(&new).to_string();
        let (key, stored, current) = self.read(info, &ns, &name).await?;
        let requested = meta::resource_version(&new);
        if !requested.is_empty() && requested != stored.mod_revision.to_string() {
            return Err(Error::conflict(info, &name));
        }
        let next = if status_only {
            let mut next = current.clone();
            set_status(&mut next, new.get("status").cloned());
            // A Namespace's UpdateStatus doubles as Kubernetes' `finalize`
            // subresource: the one way to change spec.finalizers.
            keep_namespace_finalizers(info, &new, &mut next);
            next
        } else {
            if info.has_status {
                set_status(&mut new, current.get("status").cloned());
            }
            keep_namespace_finalizers(info, &current, &mut new);
            new
        };
        self.commit(info, &key, &name, stored, current, next, body.len(), dry_run).await
    }

    /// Applies a patch of `patch_type` to spec and metadata, retrying when
    /// another write slips in between read and write (unless the patch pins
    /// a resourceVersion).
    pub async fn patch(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        body: &[u8],
        patch_type: PatchType,
        dry_run: bool,
    ) -> Result<Bytes, Error> {
        let info = KindInfo::by_kind(kind)?;
        let patch = parse(body, "the patch")?;
        let pinned = match patch_type {
            PatchType::Merge | PatchType::Strategic if !patch.is_object() => {
                return Err(Error::BadRequest("a merge patch must be a JSON object".into()))
            }
            PatchType::Merge | PatchType::Strategic => meta::resource_version(&patch).to_string(),
            PatchType::Json => String::new(),
            PatchType::Apply => return Err(Error::BadRequest("an apply is not a patch: see Registry::apply".into())),
        };
        let operations: Option<json_patch::Patch> = match patch_type {
            PatchType::Json => Some(
                serde_json::from_value(patch.clone())
                    .map_err(|source| Error::BadJson { what: "the JSON patch", source })?,
            ),
            _ => None,
        };
        for _ in 0..CAS_ATTEMPTS {
            let (key, stored, current) = self.read(info, namespace, name).await?;
            if !pinned.is_empty() && pinned != stored.mod_revision.to_string() {
                return Err(Error::conflict(info, name));
            }
            let mut next = current.clone();
            match (&operations, patch_type) {
                (Some(operations), _) => json_patch::patch(&mut next, operations)
                    .map_err(|e| Error::BadRequest(format!("the JSON patch does not apply: {e}")))?,
                (None, PatchType::Strategic) => skiff_api::patch::strategic_merge(&mut next, &patch)?,
                (None, _) => json_patch::merge(&mut next, &patch),
            }
            if info.has_status {
                set_status(&mut next, current.get("status").cloned());
            }
            keep_namespace_finalizers(info, &current, &mut next);
            let size = serde_json::to_vec(&next).map(|v| v.len()).unwrap_or(0);
            match self.commit(info, &key, name, stored, current, next, size, dry_run).await {
                Err(Error::Conflict { .. }) if pinned.is_empty() => continue,
                other => return other,
            }
        }
        Err(Error::conflict(info, name))
    }

    /// Server-side apply of `config` onto the stored object (NotFound when
    /// there is none: creating it is the caller's, through admission),
    /// retrying when another write slips in between read and write.
    pub async fn apply(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        config: &Value,
        applier: &Applier<'_>,
        dry_run: bool,
    ) -> Result<Bytes, Error> {
        let info = KindInfo::by_kind(kind)?;
        let named = meta::name(config);
        if named != name {
            return Err(Error::BadRequest(format!(
                "metadata.name: {named:?} does not match the name on the URL ({name:?})"
            )));
        }
        for _ in 0..CAS_ATTEMPTS {
            let (key, stored, current) = self.read(info, namespace, name).await?;
            let mut next =
                skiff_api::apply::apply(Some(&current), config, applier).map_err(crate::error::from_apply)?;
            if info.has_status {
                set_status(&mut next, current.get("status").cloned());
            }
            keep_namespace_finalizers(info, &current, &mut next);
            let size = serde_json::to_vec(&next).map(|v| v.len()).unwrap_or(0);
            match self.commit(info, &key, name, stored, current, next, size, dry_run).await {
                Err(Error::Conflict { .. }) => continue,
                other => return other,
            }
        }
        Err(Error::conflict(info, name))
    }

    /// Writes `next` over `current` if nothing else wrote in between. Keeps
    /// what the server owns, bumps generation on a spec change, skips
    /// no-op writes, and completes a pending deletion once the last
    /// finalizer is gone.
    #[allow(clippy::too_many_arguments)]
    async fn commit(
        &self,
        info: &'static KindInfo,
        key: &str,
        name: &str,
        stored: Stored,
        current: Value,
        mut next: Value,
        size: usize,
        dry_run: bool,
    ) -> Result<Bytes, Error> {
        for owned in ["uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation"] {
            match current.get("metadata").and_then(|m| m.get(owned)) {
                Some(v) => meta::set(&mut next, owned, v.clone()),
                None => {
                    meta::remove(&mut next, owned);
                }
            }
        }
        meta::set(&mut next, "name", name);
        meta::remove(&mut next, "resourceVersion");
        let mut next = normalize(info, next, size).map_err(Self::invalid(info, name))?;
        check_immutable(info, &current, &next).map_err(Self::invalid(info, name))?;
        let mut allocation = None;
        if spec_of(&next) != spec_of(&current) && !dry_run {
            allocation = self.allocation(info).await;
        }
        if let Some(a) = allocation.as_mut() {
            a.assign(key, &mut next, Some(&current)).map_err(Self::invalid(info, name))?;
        }
        if next == current {
            return Ok(stamped(current, stored.mod_revision));
        }
        let spec_changed = spec_of(&next) != spec_of(&current);
        // Quota usage follows the spec; a status write never adds to it.
        if spec_changed && !dry_run {
            Box::pin(crate::admission::admit_update(self, info, &current, &next)).await?;
        }
        if spec_changed {
            let generation = current.get("metadata").and_then(|m| m.get("generation")).and_then(Value::as_i64);
            meta::set(&mut next, "generation", generation.unwrap_or(0) + 1);
        }
        if dry_run {
            return Ok(stamped(next, stored.mod_revision));
        }
        let deleting = !meta::str_field(&next, "deletionTimestamp").is_empty();
        let removed = deleting && !has_finalizers(info, &next) && !awaits_kubelet(info, &next);
        let swap = if removed {
            self.storage.delete_if(key, stored.mod_revision).await?
        } else {
            let encoded = serde_json::to_vec(&next).map_err(|source| Error::Corrupt { key: key.into(), source })?;
            self.storage.put_if(key, encoded, stored.mod_revision).await?
        };
        match swap {
            Swap::Done { revision } => {
                self.note_write(info, revision);
                if let Some(a) = allocation {
                    a.written(revision, removed);
                }
                Ok(stamped(next, revision))
            }
            Swap::Lost => Err(Error::conflict(info, name)),
        }
    }

    /// Binds a pod to a node: one compare-and-swap that sets spec.nodeName
    /// and PodScheduled=True, refused if the pod is bound already.
    pub async fn bind(&self, namespace: &str, name: &str, node: &str, uid: &str) -> Result<Bytes, Error> {
        let info = KindInfo::by_kind("Pod")?;
        if let Some(problem) = skiff_api::validation_problem_for_name(node) {
            return Err(Error::BadRequest(format!("nodeName: {problem}")));
        }
        for _ in 0..CAS_ATTEMPTS {
            let (key, stored, current) = self.read(info, namespace, name).await?;
            if !uid.is_empty() && meta::str_field(&current, "uid") != uid {
                return Err(Error::Forbidden(format!(
                    "pod {namespace}/{name} has a different uid than the one scheduled"
                )));
            }
            if !meta::str_field(&current, "deletionTimestamp").is_empty() {
                return Err(Error::Forbidden(format!("pod {namespace}/{name} is being deleted")));
            }
            let bound = current.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or_default();
            if !bound.is_empty() {
                return Err(Error::Forbidden(format!("pod {namespace}/{name} is already assigned to node {bound:?}")));
            }
            let mut next = current.clone();
            next["spec"]["nodeName"] = Value::String(node.to_string());
            set_condition(&mut next, "PodScheduled", "True", "", "");
            let encoded = serde_json::to_vec(&next).map_err(|source| Error::Corrupt { key: key.clone(), source })?;
            match self.storage.put_if(&key, encoded, stored.mod_revision).await? {
                Swap::Done { revision } => {
                    self.note_write(info, revision);
                    return Ok(stamped(next, revision));
                }
                Swap::Lost => continue,
            }
        }
        Err(Error::conflict(info, name))
    }

    /// Gives namespace `ns` its ServiceAccount `default`, the one its pods
    /// run as unless they name another (Kubernetes' serviceaccounts
    /// controller does this; here it comes with the namespace, so pods
    /// never wait on a controller for it).
    /// True when it was made now.
    pub async fn ensure_default_service_account(&self, ns: &str) -> Result<bool, Error> {
        let body = serde_json::json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}});
        match self.create("ServiceAccount", ns, body.to_string().as_bytes(), None, false).await {
            Ok(_) => Ok(true),
            Err(Error::AlreadyExists { .. } | Error::NamespaceTerminating(_) | Error::NamespaceNotFound(_)) => {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// [`ensure_default_service_account`](Self::ensure_default_service_account)
    /// for every namespace in the (synced) cache, at start: namespaces
    /// made before it existed.
    pub async fn ensure_default_service_accounts(&self) -> Result<(), Error> {
        let info = KindInfo::by_kind("Namespace")?;
        let (namespaces, _) = self.cache(info).objects(&info.key_prefix(None));
        for ns in namespaces {
            let name = ns.key.rsplit('/').next().unwrap_or_default().to_string();
            self.ensure_default_service_account(&name).await?;
        }
        Ok(())
    }

    /// Brings a namespace's `default` ServiceAccount back when it is
    /// deleted, as Kubernetes' serviceaccounts controller does, until
    /// `stop`. It lives here with its creation, so one owner makes it. After
    /// a gap in the feed (lagging, or the cache relisted), every namespace
    /// is checked again.
    pub async fn keep_default_service_accounts(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let Ok(info) = KindInfo::by_kind("ServiceAccount") else { return };
        let mut gap = false;
        loop {
            let cache = self.cache(info).clone();
            let Some(mut watch) = cache.subscribe(cache.revision()) else { continue };
            if std::mem::take(&mut gap) {
                if let Err(error) = self.ensure_default_service_accounts().await {
                    tracing::warn!(%error, "checking every namespace's default ServiceAccount");
                }
            }
            loop {
                let event = tokio::select! {
                    event = watch.feed.recv() => event,
                    _ = stop.wait_for(|stopping| *stopping) => return,
                };
                let Ok(event) = event else {
                    gap = true;
                    break;
                };
                let mut path = event.object.key.rsplit('/');
                let (Some("default"), Some(ns)) = (path.next(), path.next()) else { continue };
                if event.kind != crate::cache::EventType::Deleted {
                    continue;
                }
                match self.ensure_default_service_account(ns).await {
                    Ok(true) => tracing::info!(namespace = ns, "the default ServiceAccount was deleted: made again"),
                    Ok(false) => {}
                    Err(error) => tracing::warn!(namespace = ns, %error, "making the default ServiceAccount again"),
                }
            }
        }
    }

    /// Creates the built-in `local-path` StorageClass if it is missing: the
    /// cluster's default, provisioning a folder on the node that first runs
    /// a pod of the claim, deleted with the claim.
    pub async fn ensure_default_storage_class(&self) -> Result<(), Error> {
        use skiff_api::well_known::{
            DEFAULT_STORAGE_CLASS_ANNOTATION, LOCAL_PATH_PROVISIONER, LOCAL_PATH_STORAGE_CLASS,
        };
        let body = serde_json::json!({
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": LOCAL_PATH_STORAGE_CLASS, "annotations": {DEFAULT_STORAGE_CLASS_ANNOTATION: "true"}},
            "provisioner": LOCAL_PATH_PROVISIONER,
            "reclaimPolicy": "Delete",
            "volumeBindingMode": "WaitForFirstConsumer",
        });
        match self.create("StorageClass", "", body.to_string().as_bytes(), None, false).await {
            Ok(_) | Err(Error::AlreadyExists { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Creates the system namespaces that are missing, each with its
    /// default ServiceAccount: by name, since the Namespace cache may not
    /// show a namespace created a moment ago.
    pub async fn ensure_system_namespaces(&self) -> Result<(), Error> {
        for ns in SYSTEM_NAMESPACES {
            let body = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            match self.create("Namespace", "", body.to_string().as_bytes(), None, false).await {
                Ok(_) | Err(Error::AlreadyExists { .. }) => {
                    self.ensure_default_service_account(ns).await?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

fn set_status(obj: &mut Value, status: Option<Value>) {
    if let Some(root) = obj.as_object_mut() {
        match status {
            Some(s) => root.insert("status".into(), s),
            None => root.remove("status"),
        };
    }
}

/// Who applies a server-side apply: `fieldManager` is required, as in
/// Kubernetes; the config's apiVersion is recorded with its fields.
pub fn applier<'a>(manager: &'a str, force: bool, config: &'a Value, now: &'a str) -> Result<Applier<'a>, Error> {
    if manager.is_empty() {
        return Err(Error::BadRequest("fieldManager: Required value: is required for apply requests".into()));
    }
    let api_version = config.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    Ok(Applier { manager, force, api_version, now })
}
