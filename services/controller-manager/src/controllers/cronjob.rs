//! The CronJob controller, after Kubernetes' `cronjob_controllerv2.go`:
//! creates a Job from the template each time the schedule comes round.
//!
//! - **When.** The schedule is read in `spec.timeZone` (UTC without one).
//!   On each sync the most recent scheduled time not yet run (after
//!   `status.lastScheduleTime`, or the CronJob's creation) is the one
//!   considered: missed runs are caught up at most once, and more than 100
//!   missed are reported with a TooManyMissedTimes Event. A time older than
//!   `startingDeadlineSeconds` is skipped (MissSchedule).
//! - **Concurrency.** Allow runs Jobs side by side; Forbid skips a time
//!   while a Job is running (it may still start late, inside the deadline,
//!   once that Job ends, as in Kubernetes); Replace deletes the running Jobs
//!   first.
//! - **The Job.** Named `CRONJOB-<minutes since the epoch>`, so a time is
//!   never run twice, with the scheduled time in the
//!   `batch.kubernetes.io/cronjob-scheduled-timestamp` annotation and a
//!   controller reference to the CronJob.
//! - **Status.** `active` lists the running Jobs, `lastScheduleTime` and
//!   `lastSuccessfulTime` tell the last run and success; finished Jobs
//!   beyond `successfulJobsHistoryLimit` / `failedJobsHistoryLimit` are
//!   deleted, oldest first.
//! - A suspended CronJob creates nothing; its Jobs run on.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{CronJob, CronJobStatus, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::tz::TimeZone;
use k8s_openapi::jiff::Timestamp;
use skiff_api::cron::{time_zone, Schedule};
use skiff_api::well_known::CRONJOB_SCHEDULED_TIMESTAMP;
use skiff_client::{key_of, Action, Client, EventRecorder, EventType, InformerEvent, Reconcile, Store, WorkQueue};

use super::{Context, Wiring};
use crate::error::{Error, Result};
use crate::util::{self, controller_ref, millis};

const KIND: &str = "CronJob";

/// Missed times past this many are reported rather than counted.
const MISSED_LIMIT: usize = 100;

pub struct CronJobController {
    client: Client,
    cronjobs: Store<CronJob>,
    jobs: Store<Job>,
    recorder: EventRecorder,
}

pub fn start(ctx: &Context, w: &mut Wiring<'_>) {
    let queue = WorkQueue::new();
    {
        let queue = queue.clone();
        w.on_events(&ctx.caches.cronjobs, move |ev| queue.add(ev.key()));
    }
    {
        // A Job starting, finishing or going changes its CronJob's status.
        let queue = queue.clone();
        w.on_events(&ctx.caches.jobs, move |ev: InformerEvent<Job>| {
            let job = ev.object();
            if let Some(r) = controller_ref(&job.metadata).filter(|r| r.kind == KIND) {
                queue.add(util::ref_key(util::namespace(&job.metadata), r));
            }
        });
    }
    let controller = CronJobController {
        client: ctx.client.clone(),
        cronjobs: ctx.caches.cronjobs.clone(),
        jobs: ctx.caches.jobs.clone(),
        recorder: EventRecorder::new(ctx.client.clone(), "cronjob-controller"),
    };
    w.run(ctx, controller, queue);
}

impl Reconcile for CronJobController {
    const NAME: &'static str = "cronjob";
    type Error = Error;

    async fn reconcile(&self, key: &str) -> Result<Action> {
        let Some(cj) = self.cronjobs.get(key) else {
            return Ok(Action::done());
        };
        let jobs = self.owned_jobs(&cj);
        let mut status = cj.status.clone().unwrap_or_default();
        self.track_jobs(&cj, &jobs, &mut status).await;
        self.clean_history(&cj, &jobs).await?;
        let action = if cj.metadata.deletion_timestamp.is_some() || cj.spec.suspend == Some(true) {
            Action::done()
        } else {
            self.run_schedule(&cj, &jobs, &mut status).await?
        };
        if cj.status.as_ref() != Some(&status) {
            let mut updated = (*cj).clone();
            updated.status = Some(status);
            match self.client.api::<CronJob>(util::namespace(&cj.metadata)).update_status(&updated).await {
                Ok(_) => {}
                Err(e) if e.is_not_found() => return Ok(Action::done()),
                Err(source) => return Err(Error::UpdateStatus { kind: KIND, key: key.into(), source }),
            }
        }
        Ok(action)
    }
}

impl CronJobController {
    /// The Jobs this CronJob controls, oldest first.
    fn owned_jobs(&self, cj: &CronJob) -> Vec<Arc<Job>> {
        let (ns, uid) = (util::namespace(&cj.metadata), cj.metadata.uid.as_deref());
        let mut jobs: Vec<Arc<Job>> = self
            .jobs
            .list()
            .into_iter()
            .filter(|j| util::namespace(&j.metadata) == ns)
            .filter(|j| controller_ref(&j.metadata).is_some_and(|r| Some(r.uid.as_str()) == uid))
            .collect();
        jobs.sort_by_key(|j| (scheduled_or_created(j), util::name(&j.metadata).to_string()));
        jobs
    }

    /// `status.active` becomes the running Jobs; `lastSuccessfulTime` the
    /// latest success.
    async fn track_jobs(&self, cj: &CronJob, jobs: &[Arc<Job>], status: &mut CronJobStatus) {
        for job in jobs {
            let name = util::name(&job.metadata);
            let was_active = status.active.iter().flatten().any(|r| r.uid.as_deref() == job.metadata.uid.as_deref());
            match finish(job) {
                Some(Finish::Complete(at)) => {
                    if status.last_successful_time.as_ref().is_none_or(|t| t.0 < at.0) {
                        status.last_successful_time = Some(at);
                    }
                    if was_active {
                        self.recorder
                            .report(
                                cj,
                                EventType::Normal,
                                "SawCompletedJob",
                                &format!("Saw completed job: {name}, status: Complete"),
                            )
                            .await;
                    }
                }
                Some(Finish::Failed) if was_active => {
                    self.recorder
                        .report(
                            cj,
                            EventType::Normal,
                            "SawCompletedJob",
                            &format!("Saw completed job: {name}, status: Failed"),
                        )
                        .await;
                }
                _ => {}
            }
        }
        let active: Vec<ObjectReference> = jobs
            .iter()
            .filter(|j| finish(j).is_none() && j.metadata.deletion_timestamp.is_none())
            .map(|j| job_ref(j))
            .collect();
        status.active = (!active.is_empty()).then_some(active);
    }

    /// Deletes finished Jobs beyond the history limits, oldest first.
    async fn clean_history(&self, cj: &CronJob, jobs: &[Arc<Job>]) -> Result<()> {
        let limits = [
            (true, cj.spec.successful_jobs_history_limit.unwrap_or(3)),
            (false, cj.spec.failed_jobs_history_limit.unwrap_or(1)),
        ];
        for (succeeded, limit) in limits {
            let done: Vec<&Arc<Job>> = jobs
                .iter()
                .filter(|j| j.metadata.deletion_timestamp.is_none())
                .filter(|j| match finish(j) {
                    Some(Finish::Complete(_)) => succeeded,
                    Some(Finish::Failed) => !succeeded,
                    None => false,
                })
                .collect();
            let surplus = done.len().saturating_sub(limit.max(0) as usize);
            for job in &done[..surplus] {
                self.delete_job(cj, job).await?;
            }
        }
        Ok(())
    }

    /// Starts the Job of the most recent unrun scheduled time, if it is
    /// due and allowed; returns when to look again.
    async fn run_schedule(&self, cj: &CronJob, jobs: &[Arc<Job>], status: &mut CronJobStatus) -> Result<Action> {
        let schedule = match Schedule::parse(&cj.spec.schedule) {
            Ok(s) => s,
            Err(why) => {
                self.recorder
                    .report(cj, EventType::Warning, "UnparseableSchedule", &format!("unparseable schedule: {why}"))
                    .await;
                return Ok(Action::done());
            }
        };
        let tz = match time_zone(cj.spec.time_zone.as_deref()) {
            Ok(tz) => tz,
            Err(why) => {
                self.recorder.report(cj, EventType::Warning, "UnknownTimeZone", &why).await;
                return Ok(Action::done());
            }
        };
        let now = util::now();
        let next = |after: Timestamp| match schedule.next_after(after, &tz) {
            // A little past the time, so that it is due when we look.
            Some(t) => Action::requeue(util::until(millis(&t)) + Duration::from_millis(100)),
            None => Action::done(),
        };
        let since = status.last_schedule_time.as_ref().or(cj.metadata.creation_timestamp.as_ref()).map(|t| t.0);
        let Some(since) = since else {
            return Ok(next(now));
        };
        let (missed, too_many) = schedule.times_between(since, now, &tz, MISSED_LIMIT);
        if too_many {
            let message = format!("too many missed start times (> {MISSED_LIMIT}): the most recent is run");
            self.recorder.report(cj, EventType::Warning, "TooManyMissedTimes", &message).await;
        }
        let scheduled = match (too_many, missed.last()) {
            (true, _) => schedule.times_between(since, now, &tz, usize::MAX).0.last().copied(),
            (false, last) => last.copied(),
        };
        let Some(scheduled) = scheduled else {
            return Ok(next(now));
        };
        if let Some(deadline) = cj.spec.starting_deadline_seconds {
            if millis(&scheduled) + deadline * 1000 < millis(&now) {
                let message = format!("Missed scheduled time to start a job: {}", scheduled);
                self.recorder.report(cj, EventType::Warning, "MissSchedule", &message).await;
                return Ok(next(now));
            }
        }
        let name = job_name(cj, scheduled);
        if jobs.iter().any(|j| util::name(&j.metadata) == name) {
            // Run already; the status write below may have been lost.
            status.last_schedule_time = Some(Time(scheduled));
            return Ok(next(now));
        }
        let active = status.active.clone().unwrap_or_default();
        match cj.spec.concurrency_policy.as_deref().unwrap_or("Allow") {
            "Forbid" if !active.is_empty() => {
                let message = "Not starting job because prior execution is running and concurrency policy is Forbid";
                self.recorder.report(cj, EventType::Normal, "JobAlreadyActive", message).await;
                return Ok(next(now));
            }
            "Replace" => {
                for job in jobs.iter().filter(|j| active.iter().any(|a| a.uid.as_deref() == j.metadata.uid.as_deref()))
                {
                    self.delete_job(cj, job).await?;
                }
            }
            _ => {}
        }
        let job = self.create_job(cj, &name, scheduled, &tz).await?;
        status.active.get_or_insert_with(Vec::new).push(job_ref(&job));
        status.last_schedule_time = Some(Time(scheduled));
        Ok(next(now))
    }

    async fn create_job(&self, cj: &CronJob, name: &str, scheduled: Timestamp, tz: &TimeZone) -> Result<Job> {
        let ns = util::namespace(&cj.metadata);
        let template = cj.spec.job_template.clone();
        let meta = template.metadata.unwrap_or_default();
        let mut annotations = meta.annotations.unwrap_or_default();
        let offset = tz.to_offset(scheduled);
        annotations.insert(CRONJOB_SCHEDULED_TIMESTAMP.into(), scheduled.display_with_offset(offset).to_string());
        let job = Job {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                labels: meta.labels,
                annotations: Some(annotations),
                owner_references: Some(vec![util::owner_ref(cj)]),
                ..Default::default()
            },
            spec: template.spec,
            status: None,
        };
        match self.client.api::<Job>(ns).create(&job).await {
            Ok(created) => {
                self.recorder.report(cj, EventType::Normal, "SuccessfulCreate", &format!("Created job {name}")).await;
                Ok(created)
            }
            Err(e) if e.is_already_exists() => match self.client.api::<Job>(ns).get(name).await {
                Ok(existing) => Ok(existing),
                Err(source) => Err(Error::Get { kind: "Job", key: format!("{ns}/{name}"), source }),
            },
            Err(source) => {
                self.recorder
                    .report(cj, EventType::Warning, "FailedCreate", &format!("Error creating job: {source}"))
                    .await;
                Err(Error::Create { kind: "Job", namespace: ns.into(), source })
            }
        }
    }

    async fn delete_job(&self, cj: &CronJob, job: &Job) -> Result<()> {
        let name = util::name(&job.metadata);
        match self.client.api::<Job>(util::namespace(&job.metadata)).delete(name).await {
            Ok(_) => {
                self.recorder.report(cj, EventType::Normal, "SuccessfulDelete", &format!("Deleted job {name}")).await;
                Ok(())
            }
            Err(e) if e.is_not_found() => Ok(()),
            Err(source) => Err(Error::Delete { kind: "Job".into(), key: key_of(job), source }),
        }
    }
}

enum Finish {
    Complete(Time),
    Failed,
}

fn finish(job: &Job) -> Option<Finish> {
    let status = job.status.as_ref()?;
    let done = |t: &str| status.conditions.iter().flatten().find(|c| c.type_ == t && c.status == "True");
    if let Some(c) = done("Complete") {
        let at = status.completion_time.clone().or_else(|| c.last_transition_time.clone());
        return Some(Finish::Complete(at.unwrap_or_else(util::now_time)));
    }
    done("Failed").map(|_| Finish::Failed)
}

/// `CRONJOB-<minutes since the epoch of the scheduled time>`, as Kubernetes
/// names them.
fn job_name(cj: &CronJob, scheduled: Timestamp) -> String {
    format!("{}-{}", util::name(&cj.metadata), scheduled.as_second() / 60)
}

fn scheduled_or_created(job: &Job) -> i64 {
    let annotated = job.metadata.annotations.as_ref().and_then(|a| a.get(CRONJOB_SCHEDULED_TIMESTAMP));
    annotated
        .and_then(|t| t.parse::<Timestamp>().ok())
        .or_else(|| job.metadata.creation_timestamp.as_ref().map(|t| t.0))
        .map(|t| millis(&t))
        .unwrap_or(0)
}

fn job_ref(job: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: job.metadata.name.clone(),
        namespace: job.metadata.namespace.clone(),
        uid: job.metadata.uid.clone(),
        resource_version: job.metadata.resource_version.clone(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_names_are_the_scheduled_minute() {
        let cj: CronJob = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "backup"},
            "spec": {"schedule": "* * * * *", "jobTemplate": {}}
        }))
        .unwrap();
        let at: Timestamp = "2026-01-01T00:05:00Z".parse().unwrap();
        assert_eq!(job_name(&cj, at), "backup-29453765");
    }

    #[test]
    fn finished_jobs_are_told_apart() {
        let job = |conditions: serde_json::Value| -> Job {
            serde_json::from_value(serde_json::json!({"metadata": {"name": "j"}, "status": {"conditions": conditions,
                "completionTime": "2026-01-01T00:00:00Z"}}))
            .unwrap()
        };
        assert!(matches!(
            finish(&job(serde_json::json!([{"type": "Complete", "status": "True"}]))),
            Some(Finish::Complete(_))
        ));
        assert!(matches!(
            finish(&job(serde_json::json!([{"type": "Failed", "status": "True"}]))),
            Some(Finish::Failed)
        ));
        assert!(finish(&job(serde_json::json!([{"type": "Suspended", "status": "True"}]))).is_none());
    }
}
