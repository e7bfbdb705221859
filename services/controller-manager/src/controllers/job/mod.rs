//! The Job controller, after Kubernetes' `job_controller.go`: runs a Job's
//! pods until enough of them succeed, or the Job fails.
//!
//! - **Counting exactly once.** Every pod is created with the
//!   `batch.kubernetes.io/job-tracking` finalizer. A pod that ends is first
//!   written into `status.uncountedTerminatedPods`, then loses the
//!   finalizer, and only once the cache shows it without one (or gone) moves
//!   into `succeeded` or `failed`. A finished pod deleted at once, or a
//!   controller restart mid-way, still counts once. A pod deleted before it
//!   succeeded has failed.
//! - **Completion.** NonIndexed: `completions` pods succeeded (with none
//!   given, a work queue: one succeeded and none left running). Indexed:
//!   every index 0..completions succeeded once, in `status.completedIndexes`;
//!   each index's pod gets `JOB_COMPLETION_INDEX` and hostname `JOB-INDEX`.
//! - **Failure.** More failures (plus container restarts, under
//!   restartPolicy OnFailure) than `backoffLimit`; running longer than
//!   `activeDeadlineSeconds`; or a failed pod matching a podFailurePolicy
//!   rule with action FailJob. A rule with Ignore does not count the pod.
//!   The decision is kept as a FailureTarget condition until the last
//!   ended pods are counted; then the Job gets Failed. After a failure that
//!   does not end the Job, the next pod waits 10 s, doubling to at most
//!   6 min.
//! - **Suspend.** A suspended Job's running pods are removed (and not
//!   counted); resuming starts the clock of activeDeadlineSeconds again.
//! - **Finished.** The Job gets Complete or Failed, completionTime, and its
//!   running pods are removed; once `ttlSecondsAfterFinished` has passed it
//!   is deleted with its pods.
//! - Pods are created and deleted through [`PodControl`] with expectations,
//!   as the ReplicaSet controller does.

mod indexes;
mod pods;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus, UncountedTerminatedPods};
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;
use skiff_api::well_known::JOB_TRACKING_FINALIZER;
use skiff_api::LabelSelector;
use skiff_client::{
    key_of, trace_parent_of, Action, Client, EventRecorder, EventType, InformerEvent, ObjectRef, Reconcile, Store,
    WorkQueue,
};

use self::pods::{has_tracking_finalizer, outcome, Outcome};
use super::{Context, Wiring};
use crate::error::{Error, Result};
use crate::expectations::Expectations;
use crate::pod_control::PodControl;
use crate::util::{self, controller_ref, millis, Claimer};

const KIND: &str = "Job";

/// The delay before a pod replaces a failed one: 10 s after the first
/// failure, doubling, at most 6 minutes (Kubernetes' values).
const BACKOFF_BASE: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(360);

pub struct JobController {
    client: Client,
    jobs: Store<Job>,
    pods: Store<Pod>,
    expectations: Arc<Expectations>,
    pod_control: PodControl,
    recorder: EventRecorder,
}

pub fn start(ctx: &Context, w: &mut Wiring<'_>) {
    let queue = WorkQueue::new();
    let expectations = Arc::new(Expectations::new());
    {
        let queue = queue.clone();
        w.on_events(&ctx.caches.jobs, move |ev| queue.add(ev.key()));
    }
    {
        let (queue, expectations) = (queue.clone(), expectations.clone());
        w.on_events(&ctx.caches.pods, move |ev| on_pod_event(&queue, &expectations, ev));
    }
    let controller = JobController {
        client: ctx.client.clone(),
        jobs: ctx.caches.jobs.clone(),
        pods: ctx.caches.pods.clone(),
        expectations,
        pod_control: PodControl::new(ctx.client.clone(), "job-controller"),
        recorder: EventRecorder::new(ctx.client.clone(), "job-controller"),
    };
    w.run(ctx, controller, queue);
}

/// The key of the Job that controls `pod`, if one does.
fn owner_key(pod: &Pod) -> Option<String> {
    controller_ref(&pod.metadata).filter(|r| r.kind == KIND).map(|r| util::ref_key(util::namespace(&pod.metadata), r))
}

/// Every change of a Job's pod matters to it (its phase is the Job's
/// progress); expectations are counted down on the way.
fn on_pod_event(queue: &WorkQueue<String>, expectations: &Expectations, ev: InformerEvent<Pod>) {
    match &ev {
        InformerEvent::Added(pod) => {
            if let Some(job) = owner_key(pod) {
                if pod.metadata.deletion_timestamp.is_some() {
                    expectations.deletion_observed(&job, &key_of(pod.as_ref()));
                } else {
                    expectations.creations_observed(&job, 1);
                }
                queue.add(job);
            }
        }
        InformerEvent::Modified { old, new } => {
            if let Some(job) = owner_key(new) {
                if new.metadata.deletion_timestamp.is_some() && old.metadata.deletion_timestamp.is_none() {
                    expectations.deletion_observed(&job, &key_of(new.as_ref()));
                }
                queue.add(job);
            }
        }
        InformerEvent::Deleted(pod) => {
            if let Some(job) = owner_key(pod) {
                expectations.deletion_observed(&job, &key_of(pod.as_ref()));
                queue.add(job);
            }
        }
    }
}

impl Reconcile for JobController {
    const NAME: &'static str = "job";
    type Error = Error;

    fn trace_parent(&self, key: &str) -> Option<String> {
        trace_parent_of(&self.jobs.get(key)?.metadata)
    }

    async fn reconcile(&self, key: &str) -> Result<Action> {
        let Some(job) = self.jobs.get(key) else {
            self.expectations.forget(key);
            // The Job is gone: its pods must not wait on it for good.
            self.release(&self.strays(key, None)).await?;
            return Ok(Action::done());
        };
        self.release(&self.strays(key, job.metadata.uid.as_deref())).await?;
        let owned = self.claim(key, &job).await?;
        if finished(&job).is_some() || job.metadata.deletion_timestamp.is_some() {
            let running: Vec<Arc<Pod>> = owned.iter().filter(|p| outcome(p) == Outcome::Running).cloned().collect();
            self.remove_pods(key, &job, &running).await?;
            self.release(&owned).await?;
            return self.expire(&job).await;
        }
        self.sync(key, job, owned).await
    }
}

/// What one sync decided the Job's pods need.
struct Plan {
    status: JobStatus,
    /// Why the Job failed (reason, message), if it did.
    failure: Option<(&'static str, String)>,
    requeue: Option<Duration>,
}

impl JobController {
    async fn sync(&self, key: &str, job: Arc<Job>, owned: Vec<Arc<Pod>>) -> Result<Action> {
        let spec = job.spec.clone().unwrap_or_default();
        // Read before anything else: a pod seen after this point is at
        // least as new as the expectations it might satisfy.
        let needs_sync = self.expectations.satisfied(key);

        let (job, fail_by_policy) = self.track_finished(key, job, &owned).await?;
        let mut status = job.status.clone().unwrap_or_default();
        let now = util::now();
        let now_ms = millis(&now);
        let running: Vec<Arc<Pod>> = owned.iter().filter(|p| outcome(p) == Outcome::Running).cloned().collect();
        let suspended = spec.suspend == Some(true);
        let mut plan = Plan { status: status.clone(), failure: None, requeue: None };

        // Suspension stops the clock and the pods.
        if suspended {
            if condition_true(&status, "Suspended") {
                plan.status.start_time = None;
            } else {
                set_condition(&mut plan.status, "Suspended", "True", "JobSuspended", "Job suspended");
                plan.status.start_time = None;
                self.recorder.report(&*job, EventType::Normal, "Suspended", "Job suspended").await;
            }
        } else {
            if condition_true(&status, "Suspended") {
                set_condition(&mut plan.status, "Suspended", "False", "JobResumed", "Job resumed");
                self.recorder.report(&*job, EventType::Normal, "Resumed", "Job resumed").await;
                plan.status.start_time = None;
            }
            if plan.status.start_time.is_none() {
                plan.status.start_time = Some(util::now_time());
            }
        }
        status.start_time = plan.status.start_time.clone();

        // Failure first: it ends the Job whatever else happened.
        let restarts: i32 = if template_restart_policy(&job) == "OnFailure" {
            running.iter().map(|p| pods::restarts(p)).sum()
        } else {
            0
        };
        let backoff_limit = spec.backoff_limit.unwrap_or(6);
        let (_, failed) = totals(&job, &status);
        if let Some(target) = condition(&status, "FailureTarget") {
            // Decided earlier, waiting for the last pods to be counted.
            let reason = FAILURE_REASONS.iter().find(|r| Some(**r) == target.reason.as_deref()).unwrap_or(&"Failed");
            plan.failure = Some((reason, target.message.clone().unwrap_or_default()));
        } else if let Some(message) = fail_by_policy {
            plan.failure = Some(("PodFailurePolicy", message));
        } else if failed + restarts > backoff_limit {
            plan.failure = Some(("BackoffLimitExceeded", "Job has reached the specified backoff limit".into()));
        } else if let (Some(deadline), Some(start)) = (spec.active_deadline_seconds, &status.start_time) {
            let ends = millis(&start.0) + deadline * 1000;
            if now_ms >= ends && !suspended {
                plan.failure = Some(("DeadlineExceeded", "Job was active longer than specified deadline".into()));
            } else if !suspended {
                plan.requeue = Some(util::until(ends));
            }
        }

        let complete = plan.failure.is_none() && self.is_complete(&job, &status, &running);
        if plan.failure.is_some() || complete || suspended {
            // Nothing more runs: remove what does, uncounted.
            self.remove_pods(key, &job, &running).await?;
        } else if needs_sync {
            let (wait, result) = self.manage(key, &job, &status, &owned, &running, now_ms).await;
            if let Some(wait) = wait {
                plan.requeue = Some(plan.requeue.map_or(wait, |r| r.min(wait)));
            }
            result?;
        }

        // A terminal condition waits until every ended pod is counted, so
        // the counts it reports are final.
        let uncounted = status
            .uncounted_terminated_pods
            .as_ref()
            .map_or(0, |u| u.succeeded.as_ref().map_or(0, Vec::len) + u.failed.as_ref().map_or(0, Vec::len));
        if let Some((reason, message)) = plan.failure.as_ref().filter(|_| uncounted > 0) {
            // Remember the decision until the counting is done (Kubernetes'
            // FailureTarget): nothing more starts meanwhile.
            set_condition(&mut plan.status, "FailureTarget", "True", reason, message);
        }
        if uncounted == 0 {
            if let Some((reason, message)) = &plan.failure {
                set_condition(&mut plan.status, "Failed", "True", reason, message);
                self.recorder.report(&*job, EventType::Warning, reason, message).await;
            } else if complete {
                set_condition(
                    &mut plan.status,
                    "Complete",
                    "True",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                );
                plan.status.completion_time = Some(util::now_time());
                self.recorder.report(&*job, EventType::Normal, "Completed", "Job completed").await;
            }
        }
        let finished = finished_status(&plan.status);
        plan.status.active = Some(if finished { 0 } else { running.len() as i32 });
        plan.status.ready =
            Some(if finished { 0 } else { running.iter().filter(|p| util::is_ready(p)).count() as i32 });
        self.write_status(key, &job, plan.status).await?;
        Ok(plan.requeue.map_or(Action::done(), Action::requeue))
    }

    /// Whether the Job has all the successes it needs.
    fn is_complete(&self, job: &Job, status: &JobStatus, running: &[Arc<Pod>]) -> bool {
        let spec = job.spec.as_ref();
        let (succeeded, _) = totals(job, status);
        match spec.and_then(|s| s.completions) {
            Some(completions) if indexed(job) => {
                indexes::parse(status.completed_indexes.as_deref(), completions).len() as i32 >= completions
            }
            Some(completions) => succeeded >= completions,
            // A work queue: done when one succeeded and the rest have stopped.
            None => succeeded > 0 && running.is_empty(),
        }
    }

    /// Step one of counting: pods that ended and still carry the tracking
    /// finalizer go into uncountedTerminatedPods (written before anything
    /// else), lose the finalizer, and those the cache shows without it move
    /// into the counts. Returns the Job as stored, and the message of a
    /// podFailurePolicy rule that fails it.
    async fn track_finished(&self, key: &str, job: Arc<Job>, owned: &[Arc<Pod>]) -> Result<(Arc<Job>, Option<String>)> {
        let mut status = job.status.clone().unwrap_or_default();
        let mut uncounted = status.uncounted_terminated_pods.clone().unwrap_or_default();
        let listed = |list: &Option<Vec<String>>, uid: &str| list.iter().flatten().any(|u| u == uid);
        let completions = job.spec.as_ref().and_then(|s| s.completions).unwrap_or(0);
        let mut completed = indexes::parse(status.completed_indexes.as_deref(), completions);
        let mut fail_by_policy = None;
        let mut ignored = Vec::new();
        let mut changed = false;
        for pod in owned.iter().filter(|p| has_tracking_finalizer(p)) {
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            if listed(&uncounted.succeeded, &uid) || listed(&uncounted.failed, &uid) {
                continue;
            }
            match outcome(pod) {
                Outcome::Running => {}
                Outcome::Succeeded => {
                    if let Some(i) = pods::index(pod).filter(|i| indexed(&job) && *i < completions) {
                        completed.insert(i);
                    }
                    uncounted.succeeded.get_or_insert_with(Vec::new).push(uid);
                    changed = true;
                }
                Outcome::Failed => match pods::matching_rule(&job, pod) {
                    Some((_, rule, _)) if rule.action == "Ignore" => ignored.push(pod.clone()),
                    matched => {
                        if let Some((i, rule, why)) = matched.filter(|(_, r, _)| r.action == "FailJob") {
                            let pod_key = key_of(pod.as_ref());
                            fail_by_policy = Some(format!(
                                "Pod {pod_key} failed: {why}, matching the FailJob rule at index {i} ({})",
                                rule.action
                            ));
                        }
                        uncounted.failed.get_or_insert_with(Vec::new).push(uid);
                        changed = true;
                    }
                },
            }
        }
        let mut job = job;
        if changed {
            status.uncounted_terminated_pods = Some(uncounted.clone());
            status.completed_indexes = indexes::format(&completed);
            if indexed(&job) {
                status.succeeded = Some(completed.len() as i32);
            }
            job = self.write_status(key, &job, status.clone()).await?;
        }

        // Release every pod now recorded (and those the policy ignores).
        let recorded: Vec<Arc<Pod>> = owned
            .iter()
            .filter(|p| {
                let uid = p.metadata.uid.as_deref().unwrap_or("");
                listed(&uncounted.succeeded, uid) || listed(&uncounted.failed, uid)
            })
            .cloned()
            .chain(ignored)
            .collect();
        self.release(&recorded).await?;

        // Count those the cache shows released, or gone.
        let carrying: HashSet<&str> =
            owned.iter().filter(|p| has_tracking_finalizer(p)).filter_map(|p| p.metadata.uid.as_deref()).collect();
        let mut status = job.status.clone().unwrap_or_default();
        let (succeeded, still_succeeded) = split(uncounted.succeeded.take(), &carrying);
        let (failed, still_failed) = split(uncounted.failed.take(), &carrying);
        if succeeded > 0 || failed > 0 {
            if !indexed(&job) {
                status.succeeded = Some(status.succeeded.unwrap_or(0) + succeeded);
            }
            status.failed = Some(status.failed.unwrap_or(0) + failed);
            status.uncounted_terminated_pods =
                Some(UncountedTerminatedPods { succeeded: still_succeeded, failed: still_failed });
            job = self.write_status(key, &job, status).await?;
        }
        Ok((job, fail_by_policy))
    }

    /// Creates or removes running pods towards what the Job wants now.
    /// Returns how long to wait before creating more (a failure back-off).
    async fn manage(
        &self,
        key: &str,
        job: &Job,
        status: &JobStatus,
        owned: &[Arc<Pod>],
        running: &[Arc<Pod>],
        now_ms: i64,
    ) -> (Option<Duration>, Result<()>) {
        let spec = job.spec.clone().unwrap_or_default();
        let parallelism = spec.parallelism.unwrap_or(1).max(0) as usize;
        let (succeeded, failed) = totals(job, status);

        let (surplus, wanted): (Vec<Arc<Pod>>, Vec<Option<i32>>) = if indexed(job) {
            let completions = spec.completions.unwrap_or(0);
            let completed = indexes::parse(status.completed_indexes.as_deref(), completions);
            plan_indexed(running, &completed, completions, parallelism)
        } else {
            let want = match spec.completions {
                Some(completions) => parallelism.min((completions - succeeded).max(0) as usize),
                None if succeeded > 0 => running.len().min(parallelism),
                None => parallelism,
            };
            let mut extra: Vec<Arc<Pod>> = running.to_vec();
            // The least far along go first: not ready, then the newest.
            extra.sort_by_key(|p| (util::is_ready(p), std::cmp::Reverse(created(p))));
            let surplus = extra.into_iter().take(running.len().saturating_sub(want)).collect();
            (surplus, vec![None; want.saturating_sub(running.len())])
        };
        if !surplus.is_empty() {
            return (None, self.remove_pods(key, job, &surplus).await);
        }
        if wanted.is_empty() {
            return (None, Ok(()));
        }
        if let Some(wait) = failure_backoff(failed, owned, now_ms) {
            return (Some(wait), Ok(()));
        }
        (None, self.create_pods(key, job, wanted).await)
    }

    /// Creates one pod per entry (its index, for an Indexed Job) in batches
    /// of 1, 2, 4, …; stops at the first batch with a failure.
    async fn create_pods(&self, key: &str, job: &Job, wanted: Vec<Option<i32>>) -> Result<()> {
        self.expectations.expect_creations(key, wanted.len());
        let owner = ObjectRef::of(job);
        let mut rest = wanted.as_slice();
        let mut batch = 1;
        while !rest.is_empty() {
            let (now, later) = rest.split_at(batch.min(rest.len()));
            rest = later;
            let new_pods: Vec<Pod> = now.iter().map(|i| pods::new_pod(job, *i)).collect();
            let results = join_all(new_pods.iter().map(|pod| self.pod_control.create(&owner, pod))).await;
            let failed = results.iter().filter(|r| r.is_err()).count();
            if failed > 0 {
                self.expectations.creations_observed(key, failed + rest.len());
                return results.into_iter().find_map(Result::err).map_or(Ok(()), Err);
            }
            batch *= 2;
        }
        Ok(())
    }

    /// Removes pods the Job no longer wants (surplus, suspended, finished):
    /// released first, so that they are not counted as failures.
    async fn remove_pods(&self, key: &str, job: &Job, pods: &[Arc<Pod>]) -> Result<()> {
        let going: Vec<Arc<Pod>> = pods.iter().filter(|p| p.metadata.deletion_timestamp.is_none()).cloned().collect();
        self.release(&going).await?;
        self.pod_control.delete(key, &ObjectRef::of(job), &going, &self.expectations).await
    }

    /// Removes the tracking finalizer from each pod that has it.
    async fn release(&self, pods: &[Arc<Pod>]) -> Result<()> {
        let results = join_all(pods.iter().filter(|p| has_tracking_finalizer(p)).map(|pod| async move {
            let meta = &pod.metadata;
            let rest: Vec<&String> =
                meta.finalizers.iter().flatten().filter(|f| *f != JOB_TRACKING_FINALIZER).collect();
            let patch = json!({"metadata": {"finalizers": rest, "resourceVersion": meta.resource_version}});
            match self.client.api::<Pod>(util::namespace(meta)).patch(util::name(meta), &patch).await {
                Ok(_) => Ok(()),
                Err(e) if e.is_not_found() => Ok(()),
                Err(source) => Err(Error::Patch { kind: "Pod", key: key_of(pod.as_ref()), source }),
            }
        }))
        .await;
        results.into_iter().find_map(Result::err).map_or(Ok(()), Err)
    }

    /// Pods still carrying the tracking finalizer for a Job of this name
    /// that is not the one alive now (`uid`): deleted, or replaced by a
    /// namesake.
    fn strays(&self, key: &str, uid: Option<&str>) -> Vec<Arc<Pod>> {
        self.pods
            .list()
            .into_iter()
            .filter(|p| has_tracking_finalizer(p) && owner_key(p).as_deref() == Some(key))
            .filter(|p| controller_ref(&p.metadata).is_some_and(|r| Some(r.uid.as_str()) != uid))
            .collect()
    }

    /// The Job's pods: matching orphans adopted, strays released, ended
    /// pods included.
    async fn claim(&self, key: &str, job: &Arc<Job>) -> Result<Vec<Arc<Pod>>> {
        let ns = util::namespace(&job.metadata).to_string();
        let selector = job.spec.as_ref().and_then(|s| s.selector.clone()).unwrap_or_default();
        let selector = LabelSelector::from_k8s(&selector).map_err(|source| Error::Selector {
            kind: KIND,
            key: key.into(),
            source,
        })?;
        if selector.is_empty() {
            return Err(Error::Invalid { kind: KIND, key: key.into(), reason: "empty selector".into() });
        }
        let candidates: Vec<Arc<Pod>> =
            self.pods.list().into_iter().filter(|p| util::namespace(&p.metadata) == ns).collect();
        let claimer = Claimer {
            api: self.client.api::<Pod>(&ns),
            owner_ref: util::owner_ref(job.as_ref()),
            selector: &selector,
            deleting: job.metadata.deletion_timestamp.is_some(),
        };
        claimer.claim(candidates, || util::still_exists(&self.client, job.as_ref())).await
    }

    /// A finished Job past `ttlSecondsAfterFinished` is deleted, its pods
    /// with it (in the background, by the garbage collector).
    async fn expire(&self, job: &Job) -> Result<Action> {
        let (Some(ttl), Some(finished_at)) =
            (job.spec.as_ref().and_then(|s| s.ttl_seconds_after_finished), finished(job))
        else {
            return Ok(Action::done());
        };
        if job.metadata.deletion_timestamp.is_some() {
            return Ok(Action::done());
        }
        let expires = finished_at + i64::from(ttl) * 1000;
        if millis(&util::now()) < expires {
            return Ok(Action::requeue(util::until(expires)));
        }
        tracing::info!(job = %key_of(job), ttl, "finished job expired, deleting");
        match self.client.api::<Job>(util::namespace(&job.metadata)).delete(util::name(&job.metadata)).await {
            Ok(_) => Ok(Action::done()),
            Err(e) if e.is_not_found() => Ok(Action::done()),
            Err(source) => Err(Error::Delete { kind: KIND.into(), key: key_of(job), source }),
        }
    }

    /// Writes `status` over the Job's if it differs; returns the Job as stored.
    async fn write_status(&self, key: &str, job: &Arc<Job>, status: JobStatus) -> Result<Arc<Job>> {
        if job.status.as_ref() == Some(&status) {
            return Ok(job.clone());
        }
        let mut updated = (**job).clone();
        updated.status = Some(status);
        match self.client.api::<Job>(util::namespace(&job.metadata)).update_status(&updated).await {
            Ok(stored) => Ok(Arc::new(stored)),
            Err(source) => Err(Error::UpdateStatus { kind: KIND, key: key.into(), source }),
        }
    }
}

/// For an Indexed Job: running pods to remove (a second pod of one index,
/// an index already done or out of range, more than `parallelism`), and
/// the indexes to start, lowest first.
fn plan_indexed(
    running: &[Arc<Pod>],
    completed: &BTreeSet<i32>,
    completions: i32,
    parallelism: usize,
) -> (Vec<Arc<Pod>>, Vec<Option<i32>>) {
    let mut by_index: BTreeMap<i32, Vec<Arc<Pod>>> = BTreeMap::new();
    let mut surplus = Vec::new();
    for pod in running {
        match pods::index(pod).filter(|i| *i < completions && !completed.contains(i)) {
            Some(i) => by_index.entry(i).or_default().push(pod.clone()),
            None => surplus.push(pod.clone()),
        }
    }
    let mut kept = 0;
    for pods in by_index.values_mut() {
        // The oldest of an index stays.
        pods.sort_by_key(|p| created(p));
        surplus.extend(pods.drain(1..));
        kept += 1;
    }
    if kept > parallelism {
        // Too many at once: the highest indexes wait.
        let over: Vec<i32> = by_index.keys().rev().take(kept - parallelism).copied().collect();
        for i in over {
            surplus.extend(by_index.remove(&i).into_iter().flatten());
        }
        return (surplus, Vec::new());
    }
    let wanted = (0..completions)
        .filter(|i| !completed.contains(i) && !by_index.contains_key(i))
        .take(parallelism - kept)
        .map(Some)
        .collect();
    (surplus, wanted)
}

/// How long new pods must still wait after the latest failure, if at all.
fn failure_backoff(failures: i32, owned: &[Arc<Pod>], now_ms: i64) -> Option<Duration> {
    if failures <= 0 {
        return None;
    }
    let last = owned.iter().filter(|p| util::phase(p) == "Failed").filter_map(|p| pods::finished_at(p)).max()?;
    let delay = BACKOFF_BASE.saturating_mul(1 << (failures - 1).min(16)).min(BACKOFF_MAX);
    let ready_at = last + delay.as_millis() as i64;
    (ready_at > now_ms).then(|| Duration::from_millis((ready_at - now_ms) as u64))
}

/// Succeeded and failed pods, counted or still being counted. (An Indexed
/// Job's succeeded count is its completed indexes, which take a pod in as
/// soon as it is recorded.)
fn totals(job: &Job, status: &JobStatus) -> (i32, i32) {
    let uncounted = status.uncounted_terminated_pods.as_ref();
    let pending = |list: Option<&Vec<String>>| list.map_or(0, Vec::len) as i32;
    let succeeded_pending = if indexed(job) { 0 } else { pending(uncounted.and_then(|u| u.succeeded.as_ref())) };
    (
        status.succeeded.unwrap_or(0) + succeeded_pending,
        status.failed.unwrap_or(0) + pending(uncounted.and_then(|u| u.failed.as_ref())),
    )
}

/// Counts the uids no longer carrying the finalizer; returns the rest.
fn split(uids: Option<Vec<String>>, carrying: &HashSet<&str>) -> (i32, Option<Vec<String>>) {
    let (still, done): (Vec<String>, Vec<String>) =
        uids.unwrap_or_default().into_iter().partition(|u| carrying.contains(u.as_str()));
    (done.len() as i32, (!still.is_empty()).then_some(still))
}

fn created(pod: &Pod) -> i64 {
    pod.metadata.creation_timestamp.as_ref().map(|t| millis(&t.0)).unwrap_or(0)
}

fn indexed(job: &Job) -> bool {
    job.spec.as_ref().and_then(|s| s.completion_mode.as_deref()) == Some("Indexed")
}

fn template_restart_policy(job: &Job) -> &str {
    job.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Never")
}

/// The reasons a Job fails for.
const FAILURE_REASONS: &[&str] = &["PodFailurePolicy", "BackoffLimitExceeded", "DeadlineExceeded"];

fn condition<'a>(status: &'a JobStatus, type_: &str) -> Option<&'a JobCondition> {
    status.conditions.iter().flatten().find(|c| c.type_ == type_ && c.status == "True")
}

fn condition_true(status: &JobStatus, type_: &str) -> bool {
    condition(status, type_).is_some()
}

fn finished_status(status: &JobStatus) -> bool {
    condition_true(status, "Complete") || condition_true(status, "Failed")
}

/// When the Job finished (Complete or Failed), in milliseconds.
fn finished(job: &Job) -> Option<i64> {
    let status = job.status.as_ref()?;
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        .map(|c| c.last_transition_time.as_ref().map(|t| millis(&t.0)).unwrap_or(0))
}

/// Sets a condition; the transition time moves only when its status does.
fn set_condition(status: &mut JobStatus, type_: &str, value: &str, reason: &str, message: &str) {
    let now = util::now_time();
    let condition = JobCondition {
        type_: type_.into(),
        status: value.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(now.clone()),
        last_transition_time: Some(now),
    };
    util::put_condition(status.conditions.get_or_insert_with(Vec::new), condition);
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    use k8s_openapi::jiff::Timestamp;
    use skiff_api::well_known::JOB_COMPLETION_INDEX;

    fn indexed_pod(name: &str, index: i32, created: i64) -> Arc<Pod> {
        Arc::new(Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                annotations: Some([(JOB_COMPLETION_INDEX.to_string(), index.to_string())].into()),
                creation_timestamp: Some(Time(Timestamp::from_second(created).unwrap())),
                ..Default::default()
            },
            ..Default::default()
        })
    }

    fn names(pods: &[Arc<Pod>]) -> Vec<&str> {
        pods.iter().map(|p| util::name(&p.metadata)).collect()
    }

    #[test]
    fn indexed_jobs_start_the_lowest_missing_indexes() {
        let running = [indexed_pod("a", 1, 1)];
        let (surplus, wanted) = plan_indexed(&running, &[0].into(), 5, 2);
        assert!(surplus.is_empty());
        assert_eq!(wanted, [Some(2)]);
        let (_, wanted) = plan_indexed(&[], &[0, 1, 2, 3].into(), 5, 2);
        assert_eq!(wanted, [Some(4)], "only what is left");
    }

    #[test]
    fn indexed_jobs_remove_twins_done_indexes_and_excess() {
        let running =
            [indexed_pod("old", 1, 1), indexed_pod("twin", 1, 2), indexed_pod("done", 0, 1), indexed_pod("x", 9, 1)];
        let (surplus, wanted) = plan_indexed(&running, &[0].into(), 5, 3);
        assert_eq!(names(&surplus), ["done", "x", "twin"]);
        assert_eq!(wanted, [Some(2), Some(3)]);

        let running = [indexed_pod("a", 0, 1), indexed_pod("b", 1, 1), indexed_pod("c", 2, 1)];
        let (surplus, wanted) = plan_indexed(&running, &BTreeSet::new(), 5, 1);
        assert_eq!(names(&surplus), ["c", "b"], "parallelism lowered: the highest indexes go");
        assert!(wanted.is_empty());
    }

    #[test]
    fn failures_back_off_exponentially() {
        let failed: Arc<Pod> = Arc::new(
            serde_json::from_value(json!({"status": {"phase": "Failed", "containerStatuses": [
                {"name": "c", "ready": false, "restartCount": 0, "image": "i", "imageID": "",
                 "state": {"terminated": {"exitCode": 1, "finishedAt": "2026-01-01T00:00:00Z"}}}]}}))
            .unwrap(),
        );
        let at = 1_767_225_600_000;
        assert_eq!(failure_backoff(1, std::slice::from_ref(&failed), at + 4_000), Some(Duration::from_secs(6)));
        assert_eq!(failure_backoff(3, std::slice::from_ref(&failed), at + 4_000), Some(Duration::from_secs(36)));
        assert_eq!(failure_backoff(1, std::slice::from_ref(&failed), at + 10_000), None);
        assert_eq!(failure_backoff(30, std::slice::from_ref(&failed), at), Some(BACKOFF_MAX));
        assert_eq!(failure_backoff(0, &[failed], at), None);
    }

    #[test]
    fn counted_uids_leave_the_uncounted_list() {
        let carrying: HashSet<&str> = ["b"].into();
        let (n, rest) = split(Some(vec!["a".into(), "b".into(), "c".into()]), &carrying);
        assert_eq!((n, rest), (2, Some(vec!["b".to_string()])));
        assert_eq!(split(None, &carrying), (0, None));
    }
}
