//! The Deployment controller, after Kubernetes' `deployment` package: a
//! Deployment owns ReplicaSets named `<deployment>-<hash of pod template>`
//! (label `pod-template-hash`), one per template it has run, and moves pods
//! from the old ones to the new one.
//!
//! - RollingUpdate: never more than `replicas + maxSurge` pods, never fewer
//!   than `replicas - maxUnavailable` available. Pod counts are taken as the
//!   larger of each ReplicaSet's spec and status, and availability as the
//!   smaller, so a cache that lags the ReplicaSet controller errs on the safe
//!   side; every write is a compare-and-swap on what was read.
//! - Recreate: old ReplicaSets to zero, wait until their pods are gone, then
//!   the new one up.
//! - Revisions: `deployment.kubernetes.io/revision` on ReplicaSets and the
//!   Deployment. Setting the template back to an old one (rollout undo)
//!   makes that ReplicaSet the new one again, with the next revision.
//! - `spec.paused` stops rollouts; scaling still applies (proportionally
//!   across ReplicaSets when several are active).
//! - `revisionHistoryLimit` old ReplicaSets at zero are kept, older ones
//!   deleted once a rollout completes.
//! - Status and the Available and Progressing conditions, including
//!   ProgressDeadlineExceeded after `progressDeadlineSeconds` without progress.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::json;
use skiff_api::LabelSelector;
use skiff_client::{
    key_of, trace_parent_of, Action, Client, EventRecorder, EventType, InformerEvent, Reconcile, Store, WorkQueue,
};

mod status;

use status::{calculate_status, is_complete, next_check};

use super::{Context, Wiring};
use crate::error::{Error, Result};
use crate::util::{self, controller_ref, millis, Claimer};
use skiff_api::well_known::{POD_TEMPLATE_HASH_LABEL, REVISION_ANNOTATION};

pub struct DeploymentController {
    client: Client,
    deployments: Store<Deployment>,
    replicasets: Store<ReplicaSet>,
    pods: Store<Pod>,
    recorder: EventRecorder,
}

pub fn start(ctx: &Context, w: &mut Wiring<'_>) {
    let queue = WorkQueue::new();
    {
        let queue = queue.clone();
        w.on_events(&ctx.caches.deployments, move |ev| queue.add(ev.key()));
    }
    {
        let queue = queue.clone();
        let deployments = ctx.caches.deployments.clone();
        w.on_events(&ctx.caches.replicasets, move |ev| {
            let (rs, labels_changed) = match &ev {
                InformerEvent::Modified { old, new } => (new, old.metadata.labels != new.metadata.labels),
                InformerEvent::Added(rs) => (rs, true),
                InformerEvent::Deleted(rs) => (rs, false),
            };
            match owner_key(&rs.metadata) {
                Some(d) => queue.add(d),
                None if labels_changed => enqueue_matching(&queue, &deployments, rs),
                None => {}
            }
        });
    }
    {
        // Recreate waits for the old pods to be gone.
        let queue = queue.clone();
        let replicasets = ctx.caches.replicasets.clone();
        w.on_events(&ctx.caches.pods, move |ev| {
            if let InformerEvent::Deleted(pod) = ev {
                let rs = controller_ref(&pod.metadata)
                    .filter(|r| r.kind == "ReplicaSet")
                    .and_then(|r| replicasets.get(&util::ref_key(util::namespace(&pod.metadata), r)));
                if let Some(d) = rs.and_then(|rs| owner_key(&rs.metadata)) {
                    queue.add(d);
                }
            }
        });
    }
    let controller = DeploymentController {
        client: ctx.client.clone(),
        deployments: ctx.caches.deployments.clone(),
        replicasets: ctx.caches.replicasets.clone(),
        pods: ctx.caches.pods.clone(),
        recorder: EventRecorder::new(ctx.client.clone(), "deployment-controller"),
    };
    w.run(ctx, controller, queue);
}

fn owner_key(meta: &ObjectMeta) -> Option<String> {
    controller_ref(meta).filter(|r| r.kind == "Deployment").map(|r| util::ref_key(util::namespace(meta), r))
}

fn enqueue_matching(queue: &WorkQueue<String>, deployments: &Store<Deployment>, rs: &ReplicaSet) {
    let empty = BTreeMap::new();
    let labels = rs.metadata.labels.as_ref().unwrap_or(&empty);
    for d in deployments.list() {
        if util::namespace(&d.metadata) == util::namespace(&rs.metadata)
            && LabelSelector::from_k8s(&d.spec.selector).is_ok_and(|s| !s.is_empty() && s.matches(labels))
        {
            queue.add(key_of(d.as_ref()));
        }
    }
}

// === sizes ===

fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.replicas.unwrap_or(1)
}

/// At most this many pods may exist for `rs`: its spec, or more while the
/// ReplicaSet controller has not yet deleted the surplus.
fn pods_at_most(rs: &ReplicaSet) -> i32 {
    spec_replicas(rs).max(rs.status.as_ref().map_or(0, |s| s.replicas))
}

/// At least this many of `rs`'s pods are available: what its status says,
/// but no more than its spec keeps (the surplus goes first when scaled down,
/// not-ready ones before ready ones).
fn available_at_least(rs: &ReplicaSet) -> i32 {
    rs.status.as_ref().and_then(|s| s.available_replicas).unwrap_or(0).min(spec_replicas(rs))
}

fn revision(rs: &ReplicaSet) -> i64 {
    rs.metadata.annotations.as_ref().and_then(|a| a.get(REVISION_ANNOTATION)).and_then(|r| r.parse().ok()).unwrap_or(0)
}

/// `maxSurge` (rounded up) or `maxUnavailable` (rounded down) of `replicas`.
fn resolve(value: Option<&IntOrString>, replicas: i32, round_up: bool) -> i32 {
    match value {
        Some(IntOrString::Int(n)) => (*n).max(0),
        Some(IntOrString::String(s)) => {
            let percent: i64 = s.trim_end_matches('%').parse().unwrap_or(25);
            let scaled = percent * i64::from(replicas);
            let v = if round_up { (scaled + 99) / 100 } else { scaled / 100 };
            v.max(0) as i32
        }
        None => resolve(Some(&IntOrString::String("25%".into())), replicas, round_up),
    }
}

/// (maxSurge, maxUnavailable) for `d`; both zero would stall, so
/// unavailable becomes 1 then, as in Kubernetes.
fn surge_and_unavailable(d: &Deployment, replicas: i32) -> (i32, i32) {
    let rolling = d.spec.strategy.as_ref().and_then(|s| s.rolling_update.as_ref());
    let surge = resolve(rolling.and_then(|r| r.max_surge.as_ref()), replicas, true);
    let unavailable = resolve(rolling.and_then(|r| r.max_unavailable.as_ref()), replicas, false);
    if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable.min(replicas))
    }
}

fn is_recreate(d: &Deployment) -> bool {
    d.spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate")
}

// === templates and hashes ===

fn without_hash(template: &PodTemplateSpec) -> PodTemplateSpec {
    let mut t = template.clone();
    if let Some(labels) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove(POD_TEMPLATE_HASH_LABEL);
    }
    t
}

/// FNV-1a (32 bit) of the template's JSON and the collision count, spelled
/// in the consonant alphabet Kubernetes uses, as `pod-template-hash`.
pub fn template_hash(template: &PodTemplateSpec, collision_count: i32) -> String {
    let mut hash: u32 = 0x811c_9dc5;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            hash ^= u32::from(*b);
            hash = hash.wrapping_mul(0x0100_0193);
        }
    };
    feed(&serde_json::to_vec(&without_hash(template)).unwrap_or_default());
    if collision_count > 0 {
        feed(&(collision_count as u32).to_le_bytes());
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    hash.to_string().bytes().map(|b| ALPHABET[b as usize % ALPHABET.len()] as char).collect()
}

// === reconcile ===

/// What one sync of one Deployment knows.
struct Sync<'a> {
    d: &'a Deployment,
    key: &'a str,
    ns: String,
    replicas: i32,
    surge: i32,
    unavailable: i32,
    template: PodTemplateSpec,
    /// A ReplicaSet was created or scaled in this sync.
    changed: bool,
}

impl Reconcile for DeploymentController {
    const NAME: &'static str = "deployment";
    type Error = Error;

    fn trace_parent(&self, key: &str) -> Option<String> {
        trace_parent_of(&self.deployments.get(key)?.metadata)
    }

    async fn reconcile(&self, key: &str) -> Result<Action> {
        let Some(d) = self.deployments.get(key) else { return Ok(Action::done()) };
        if d.metadata.deletion_timestamp.is_some() {
            return Ok(Action::done());
        }
        let ns = util::namespace(&d.metadata).to_string();
        let selector = LabelSelector::from_k8s(&d.spec.selector).map_err(|source| Error::Selector {
            kind: "Deployment",
            key: key.into(),
            source,
        })?;
        if selector.is_empty() {
            return Err(Error::Invalid { kind: "Deployment", key: key.into(), reason: "empty selector".into() });
        }
        let candidates: Vec<_> =
            self.replicasets.list().into_iter().filter(|rs| util::namespace(&rs.metadata) == ns).collect();
        let claimer = Claimer {
            api: self.client.api::<ReplicaSet>(&ns),
            owner_ref: util::owner_ref(d.as_ref()),
            selector: &selector,
            deleting: false,
        };
        let owned = claimer.claim(candidates, || util::still_exists(&self.client, d.as_ref())).await?;
        let mut owned: Vec<_> = owned.into_iter().filter(|rs| rs.metadata.deletion_timestamp.is_none()).collect();
        owned.sort_by_key(|rs| rs.metadata.creation_timestamp.as_ref().map(|t| millis(&t.0)).unwrap_or(0));

        let replicas = d.spec.replicas.unwrap_or(1).max(0);
        let (surge, unavailable) = surge_and_unavailable(&d, replicas);
        let template = without_hash(&d.spec.template);
        let mut s = Sync { d: &d, key, ns, replicas, surge, unavailable, template, changed: false };
        let new_pos =
            owned.iter().position(|rs| rs.spec.template.as_ref().is_some_and(|t| without_hash(t) == s.template));
        let mut new_rs = new_pos.map(|i| owned.remove(i));
        let mut olds = owned;
        let paused = d.spec.paused.unwrap_or(false);

        if paused {
            self.scale(&mut s, new_rs.as_ref(), &mut olds).await?;
        } else if is_recreate(&d) {
            new_rs = self.rollout_recreate(&mut s, new_rs, &mut olds).await?;
        } else {
            new_rs = Some(self.rollout_rolling(&mut s, new_rs, &mut olds).await?);
        }
        let d = self.sync_revision(&d, new_rs.as_deref()).await?;
        let status = calculate_status(&s, &d, new_rs.as_deref(), &olds, paused);
        let complete = is_complete(&d, &status);
        if complete && !paused && !s.changed {
            self.cleanup(&s, &olds).await?;
        }
        let action = next_check(&d, &status, paused, complete);
        if d.status.as_ref() != Some(&status) {
            let mut updated = (*d).clone();
            updated.status = Some(status);
            match self.client.api::<Deployment>(&s.ns).update_status(&updated).await {
                Ok(_) => {}
                // Deleted meanwhile: its Deleted event ends the matter.
                Err(e) if e.is_not_found() => return Ok(Action::done()),
                Err(source) => return Err(Error::UpdateStatus { kind: "Deployment", key: key.into(), source }),
            }
        }
        Ok(action)
    }
}

impl DeploymentController {
    async fn rollout_rolling(
        &self,
        s: &mut Sync<'_>,
        new_rs: Option<Arc<ReplicaSet>>,
        olds: &mut [Arc<ReplicaSet>],
    ) -> Result<Arc<ReplicaSet>> {
        let old_pods: i32 = olds.iter().map(|rs| pods_at_most(rs)).sum();
        let new_rs = match new_rs {
            Some(rs) => self.bump_revision(s, rs, olds).await?,
            None => {
                let room = (s.replicas + s.surge - old_pods).clamp(0, s.replicas);
                return self.create_new_rs(s, olds, room).await;
            }
        };
        // Scale the new ReplicaSet up within the surge.
        let current = spec_replicas(&new_rs);
        let target = if current >= s.replicas {
            s.replicas
        } else {
            let total = pods_at_most(&new_rs) + old_pods;
            let room = s.replicas + s.surge - total;
            current + room.clamp(0, s.replicas - current)
        };
        if target != current {
            return self.scale_rs(s, &new_rs, target).await;
        }
        self.scale_down_old(s, &new_rs, olds).await?;
        Ok(new_rs)
    }

    /// Scales old ReplicaSets down as far as availability allows: first
    /// their unavailable pods, then (oldest first) as many as keep
    /// `replicas - maxUnavailable` available.
    async fn scale_down_old(&self, s: &mut Sync<'_>, new_rs: &ReplicaSet, olds: &mut [Arc<ReplicaSet>]) -> Result<()> {
        let old_total: i32 = olds.iter().map(|rs| spec_replicas(rs)).sum();
        if old_total == 0 {
            return Ok(());
        }
        let min_available = s.replicas - s.unavailable;
        let new_unavailable = spec_replicas(new_rs) - available_at_least(new_rs);
        let max_scaled_down = spec_replicas(new_rs) + old_total - min_available - new_unavailable;
        if max_scaled_down <= 0 {
            return Ok(());
        }
        let mut cleaned = 0;
        for rs in olds.iter_mut() {
            let size = spec_replicas(rs);
            let unhealthy = size - available_at_least(rs);
            if cleaned >= max_scaled_down || size == 0 || unhealthy <= 0 {
                continue;
            }
            let n = unhealthy.min(max_scaled_down - cleaned);
            *rs = self.scale_rs(s, rs, size - n).await?;
            cleaned += n;
        }
        let available: i32 = available_at_least(new_rs) + olds.iter().map(|rs| available_at_least(rs)).sum::<i32>();
        let can_go = available - min_available;
        let mut gone = 0;
        for rs in olds.iter_mut() {
            let size = spec_replicas(rs);
            if gone >= can_go || size == 0 {
                continue;
            }
            let n = size.min(can_go - gone);
            *rs = self.scale_rs(s, rs, size - n).await?;
            gone += n;
        }
        Ok(())
    }

    async fn rollout_recreate(
        &self,
        s: &mut Sync<'_>,
        new_rs: Option<Arc<ReplicaSet>>,
        olds: &mut [Arc<ReplicaSet>],
    ) -> Result<Option<Arc<ReplicaSet>>> {
        let mut scaled_old = false;
        for rs in olds.iter_mut() {
            if spec_replicas(rs) > 0 {
                *rs = self.scale_rs(s, rs, 0).await?;
                scaled_old = true;
            }
        }
        let old_uids: HashSet<&str> = olds.iter().filter_map(|rs| rs.metadata.uid.as_deref()).collect();
        let old_pods_left = self.pods.list().iter().any(|p| {
            util::namespace(&p.metadata) == s.ns
                && util::is_active(p)
                && controller_ref(&p.metadata).is_some_and(|r| old_uids.contains(r.uid.as_str()))
        });
        if scaled_old || old_pods_left {
            // Pod deletions bring the Deployment back.
            return Ok(new_rs);
        }
        let new_rs = match new_rs {
            Some(rs) => self.bump_revision(s, rs, olds).await?,
            None => return self.create_new_rs(s, olds, s.replicas).await.map(Some),
        };
        if spec_replicas(&new_rs) != s.replicas {
            return self.scale_rs(s, &new_rs, s.replicas).await.map(Some);
        }
        Ok(Some(new_rs))
    }

    /// While paused, or whenever several ReplicaSets are active: apply a
    /// change of `replicas` without rolling anything.
    async fn scale(
        &self,
        s: &mut Sync<'_>,
        new_rs: Option<&Arc<ReplicaSet>>,
        olds: &mut [Arc<ReplicaSet>],
    ) -> Result<()> {
        let active = new_rs.iter().filter(|rs| spec_replicas(rs) > 0).count()
            + olds.iter().filter(|rs| spec_replicas(rs) > 0).count();
        if active <= 1 {
            // One to scale: the active one, else the new one, else the latest.
            let target = new_rs
                .filter(|rs| active == 0 || spec_replicas(rs) > 0)
                .cloned()
                .or_else(|| olds.iter().find(|rs| spec_replicas(rs) > 0).cloned())
                .or_else(|| olds.iter().max_by_key(|rs| revision(rs)).cloned());
            if let Some(rs) = target {
                if spec_replicas(&rs) != s.replicas {
                    let scaled = self.scale_rs(s, &rs, s.replicas).await?;
                    if let Some(slot) = olds.iter_mut().find(|o| o.metadata.uid == scaled.metadata.uid) {
                        *slot = scaled;
                    }
                }
            }
            return Ok(());
        }
        let allowed = s.replicas + if is_recreate(s.d) { 0 } else { s.surge };
        let mut all: Vec<Arc<ReplicaSet>> =
            new_rs.into_iter().cloned().chain(olds.iter().cloned()).filter(|rs| spec_replicas(rs) > 0).collect();
        let total: i32 = all.iter().map(|rs| spec_replicas(rs)).sum();
        let to_add = allowed - total;
        if to_add == 0 || total == 0 {
            return Ok(());
        }
        all.sort_by_key(|rs| std::cmp::Reverse((spec_replicas(rs), revision(rs))));
        let shares: Vec<i32> =
            all.iter().map(|rs| (i64::from(spec_replicas(rs)) * i64::from(to_add) / i64::from(total)) as i32).collect();
        let leftover = to_add - shares.iter().sum::<i32>();
        for (i, rs) in all.iter().enumerate() {
            let share = shares[i] + if i == 0 { leftover } else { 0 };
            let size = (spec_replicas(rs) + share).max(0);
            if size != spec_replicas(rs) {
                self.scale_rs(s, rs, size).await?;
            }
        }
        Ok(())
    }

    /// Creates the ReplicaSet for the current template with `replicas`.
    async fn create_new_rs(
        &self,
        s: &mut Sync<'_>,
        olds: &[Arc<ReplicaSet>],
        replicas: i32,
    ) -> Result<Arc<ReplicaSet>> {
        let d = s.d;
        let collisions = d.status.as_ref().and_then(|st| st.collision_count).unwrap_or(0);
        let hash = template_hash(&s.template, collisions);
        let name = format!("{}-{hash}", util::name(&d.metadata));
        let next_revision = olds.iter().map(|rs| revision(rs)).max().unwrap_or(0) + 1;
        let mut template = s.template.clone();
        let template_meta = template.metadata.get_or_insert_with(Default::default);
        template_meta.labels.get_or_insert_with(BTreeMap::new).insert(POD_TEMPLATE_HASH_LABEL.into(), hash.clone());
        let mut selector = d.spec.selector.clone();
        selector.match_labels.get_or_insert_with(BTreeMap::new).insert(POD_TEMPLATE_HASH_LABEL.into(), hash.clone());
        let rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(s.ns.clone()),
                labels: template_meta.labels.clone(),
                annotations: Some([(REVISION_ANNOTATION.to_string(), next_revision.to_string())].into()),
                owner_references: Some(vec![util::owner_ref(d)]),
                ..Default::default()
            },
            spec: ReplicaSetSpec {
                replicas: Some(replicas),
                min_ready_seconds: d.spec.min_ready_seconds,
                selector,
                template: Some(template),
            },
            status: None,
        };
        let api = self.client.api::<ReplicaSet>(&s.ns);
        match api.create(&rs).await {
            Ok(created) => {
                s.changed = true;
                let msg = format!("Scaled up replica set {name} to {replicas}");
                self.recorder.report(d, EventType::Normal, "ScalingReplicaSet", &msg).await;
                Ok(Arc::new(created))
            }
            Err(e) if e.is_already_exists() => {
                // Ours, and the cache has not seen it yet? Otherwise the hash
                // collides with another template: count the collision so the
                // next sync tries another name.
                let existing = api.get(&name).await.map_err(|source| Error::Get {
                    kind: "ReplicaSet",
                    key: format!("{}/{name}", s.ns),
                    source,
                })?;
                let ours = controller_ref(&existing.metadata).is_some_and(|r| Some(&r.uid) == d.metadata.uid.as_ref());
                let same = existing.spec.template.as_ref().is_some_and(|t| without_hash(t) == s.template);
                if ours && same {
                    return Ok(Arc::new(existing));
                }
                let mut bumped = d.clone();
                let status = bumped.status.get_or_insert_with(Default::default);
                status.collision_count = Some(collisions + 1);
                api_status_update(&self.client, &bumped, s.key).await?;
                Err(Error::HashCollision { key: s.key.into(), existing: name })
            }
            Err(source) => Err(Error::Create { kind: "ReplicaSet", namespace: s.ns.clone(), source }),
        }
    }

    /// The new ReplicaSet carries the highest revision: after a rollback
    /// the reused one gets the next number.
    async fn bump_revision(
        &self,
        s: &mut Sync<'_>,
        rs: Arc<ReplicaSet>,
        olds: &[Arc<ReplicaSet>],
    ) -> Result<Arc<ReplicaSet>> {
        let max_old = olds.iter().map(|o| revision(o)).max().unwrap_or(0);
        if revision(&rs) > max_old {
            return Ok(rs);
        }
        let mut updated = (*rs).clone();
        updated
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(REVISION_ANNOTATION.into(), (max_old + 1).to_string());
        s.changed = true;
        let updated = self.client.api::<ReplicaSet>(&s.ns).update(&updated).await.map_err(|source| Error::Update {
            kind: "ReplicaSet",
            key: key_of(rs.as_ref()),
            source,
        })?;
        Ok(Arc::new(updated))
    }

    async fn scale_rs(&self, s: &mut Sync<'_>, rs: &ReplicaSet, replicas: i32) -> Result<Arc<ReplicaSet>> {
        let from = spec_replicas(rs);
        let mut updated = rs.clone();
        updated.spec.replicas = Some(replicas);
        let updated = self.client.api::<ReplicaSet>(&s.ns).update(&updated).await.map_err(|source| Error::Update {
            kind: "ReplicaSet",
            key: key_of(rs),
            source,
        })?;
        s.changed = true;
        let direction = if replicas > from { "up" } else { "down" };
        let msg = format!("Scaled {direction} replica set {} from {from} to {replicas}", util::name(&rs.metadata));
        self.recorder.report(s.d, EventType::Normal, "ScalingReplicaSet", &msg).await;
        Ok(Arc::new(updated))
    }

    /// Keeps the Deployment's revision annotation equal to its new
    /// ReplicaSet's; returns the Deployment as now stored.
    async fn sync_revision(&self, d: &Arc<Deployment>, new_rs: Option<&ReplicaSet>) -> Result<Arc<Deployment>> {
        let Some(rs) = new_rs else { return Ok(d.clone()) };
        let want = revision(rs).to_string();
        let have = d.metadata.annotations.as_ref().and_then(|a| a.get(REVISION_ANNOTATION));
        if have == Some(&want) {
            return Ok(d.clone());
        }
        let patch = json!({"metadata": {"annotations": {REVISION_ANNOTATION: want}}});
        let patched = self
            .client
            .api::<Deployment>(util::namespace(&d.metadata))
            .patch(util::name(&d.metadata), &patch)
            .await
            .map_err(|source| Error::Patch { kind: "Deployment", key: key_of(d.as_ref()), source })?;
        Ok(Arc::new(patched))
    }

    /// Deletes the oldest old ReplicaSets at zero beyond revisionHistoryLimit.
    async fn cleanup(&self, s: &Sync<'_>, olds: &[Arc<ReplicaSet>]) -> Result<()> {
        let limit = s.d.spec.revision_history_limit.unwrap_or(10).max(0) as usize;
        let mut idle: Vec<_> = olds
            .iter()
            .filter(|rs| {
                spec_replicas(rs) == 0
                    && rs
                        .status
                        .as_ref()
                        .is_none_or(|st| st.replicas == 0 && st.observed_generation >= rs.metadata.generation)
            })
            .collect();
        if idle.len() <= limit {
            return Ok(());
        }
        idle.sort_by_key(|rs| revision(rs));
        let api = self.client.api::<ReplicaSet>(&s.ns);
        for rs in &idle[..idle.len() - limit] {
            match api.delete(util::name(&rs.metadata)).await {
                Ok(_) => {
                    tracing::info!(deployment = s.key, replicaset = util::name(&rs.metadata), "deleted old replica set")
                }
                Err(e) if e.is_not_found() => {}
                Err(source) => {
                    return Err(Error::Delete { kind: "ReplicaSet".into(), key: key_of(rs.as_ref()), source })
                }
            }
        }
        Ok(())
    }
}

async fn api_status_update(client: &Client, d: &Deployment, key: &str) -> Result<()> {
    client
        .api::<Deployment>(util::namespace(&d.metadata))
        .update_status(d)
        .await
        .map(|_| ())
        .map_err(|source| Error::UpdateStatus { kind: "Deployment", key: key.into(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn surge_rounds_up_and_unavailable_rounds_down() {
        let pct = |p: &str| Some(IntOrString::String(p.into()));
        assert_eq!(resolve(pct("25%").as_ref(), 10, true), 3);
        assert_eq!(resolve(pct("25%").as_ref(), 10, false), 2);
        assert_eq!(resolve(Some(&IntOrString::Int(4)), 10, false), 4);
        assert_eq!(resolve(None, 1, true), 1);
        assert_eq!(resolve(None, 1, false), 0);
        let d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "d"},
            "spec": {"replicas": 1, "selector": {}, "template": {},
                     "strategy": {"rollingUpdate": {"maxSurge": 0, "maxUnavailable": 0}}}
        }))
        .unwrap();
        assert_eq!(surge_and_unavailable(&d, 1), (0, 1), "both zero would never progress");
    }

    #[test]
    fn hash_ignores_the_hash_label_and_changes_with_the_template() {
        let t: PodTemplateSpec = serde_json::from_value(json!({
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "a:1"}]}
        }))
        .unwrap();
        let mut labelled = t.clone();
        labelled.metadata.as_mut().unwrap().labels.as_mut().unwrap().insert(POD_TEMPLATE_HASH_LABEL.into(), "x".into());
        assert_eq!(template_hash(&t, 0), template_hash(&labelled, 0));
        let mut other = t.clone();
        other.spec.as_mut().unwrap().containers[0].image = Some("a:2".into());
        assert_ne!(template_hash(&t, 0), template_hash(&other, 0));
        assert_ne!(template_hash(&t, 0), template_hash(&t, 1));
        assert!(template_hash(&t, 0).chars().all(|c| c.is_ascii_alphanumeric()));
    }
}
