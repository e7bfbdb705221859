//! Deployment status: replica counts summed over its ReplicaSets, and the
//! Available and Progressing conditions (with ProgressDeadlineExceeded).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet};
use skiff_client::Action;

use super::Sync;
use crate::util::{self, millis};

pub(super) fn is_complete(d: &Deployment, status: &DeploymentStatus) -> bool {
    let replicas = d.spec.replicas.unwrap_or(1);
    status.updated_replicas == Some(replicas)
        && status.replicas == Some(replicas)
        && status.available_replicas == Some(replicas)
        && status.observed_generation >= d.metadata.generation
}

fn condition<'a>(status: &'a DeploymentStatus, type_: &str) -> Option<&'a DeploymentCondition> {
    status.conditions.as_ref()?.iter().find(|c| c.type_.as_deref() == Some(type_))
}

/// Sets a condition; the transition time moves only when the status does,
/// the update time whenever `refresh` or the reason changes.
fn set_condition(
    status: &mut DeploymentStatus,
    type_: &str,
    value: &str,
    reason: &str,
    message: String,
    refresh: bool,
) {
    if let Some(c) = condition(status, type_) {
        if c.status.as_deref() == Some(value) && c.reason.as_deref() == Some(reason) && !refresh {
            return;
        }
    }
    let now = util::now_time();
    let condition = DeploymentCondition {
        type_: Some(type_.into()),
        status: Some(value.into()),
        reason: Some(reason.into()),
        message: Some(message),
        last_transition_time: Some(now.clone()),
        last_update_time: Some(now),
    };
    util::put_condition(status.conditions.get_or_insert_with(Vec::new), condition);
}

pub(super) fn calculate_status(
    s: &Sync<'_>,
    d: &Deployment,
    new_rs: Option<&ReplicaSet>,
    olds: &[Arc<ReplicaSet>],
    paused: bool,
) -> DeploymentStatus {
    let all: Vec<&ReplicaSet> = new_rs.into_iter().chain(olds.iter().map(|rs| rs.as_ref())).collect();
    let sum = |f: &dyn Fn(&ReplicaSet) -> i32| all.iter().map(|rs| f(rs)).sum::<i32>();
    let old = d.status.clone().unwrap_or_default();
    let mut status = old.clone();
    status.replicas = Some(sum(&|rs| rs.status.as_ref().map_or(0, |st| st.replicas)));
    status.updated_replicas = Some(new_rs.and_then(|rs| rs.status.as_ref()).map_or(0, |st| st.replicas));
    status.ready_replicas = Some(sum(&|rs| rs.status.as_ref().and_then(|st| st.ready_replicas).unwrap_or(0)));
    let available = sum(&|rs| rs.status.as_ref().and_then(|st| st.available_replicas).unwrap_or(0));
    status.available_replicas = Some(available);
    status.unavailable_replicas = Some((s.replicas - available).max(0));
    status.observed_generation = d.metadata.generation;

    if available >= s.replicas - s.unavailable {
        set_condition(
            &mut status,
            "Available",
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.".into(),
            false,
        );
    } else {
        set_condition(
            &mut status,
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.".into(),
            false,
        );
    }

    let rs_name = new_rs.map(|rs| util::name(&rs.metadata).to_string()).unwrap_or_default();
    let old_pods = |st: &DeploymentStatus| st.replicas.unwrap_or(0) - st.updated_replicas.unwrap_or(0);
    let progressed = s.changed
        || old.observed_generation < d.metadata.generation
        || status.updated_replicas > old.updated_replicas
        || old_pods(&status) < old_pods(&old)
        || status.ready_replicas > old.ready_replicas
        || status.available_replicas > old.available_replicas;
    let deadline = d.spec.progress_deadline_seconds.unwrap_or(600);
    if paused {
        set_condition(&mut status, "Progressing", "Unknown", "DeploymentPaused", "Deployment is paused".into(), false);
    } else if is_complete(d, &status) {
        let msg = format!("ReplicaSet \"{rs_name}\" has successfully progressed.");
        set_condition(&mut status, "Progressing", "True", "NewReplicaSetAvailable", msg, false);
    } else if progressed {
        let msg = format!("ReplicaSet \"{rs_name}\" is progressing.");
        set_condition(&mut status, "Progressing", "True", "ReplicaSetUpdated", msg, true);
    } else if let Some(since) = condition(&status, "Progressing")
        .filter(|c| c.reason.as_deref() != Some("ProgressDeadlineExceeded"))
        .and_then(|c| c.last_update_time.as_ref())
    {
        if millis(&since.0) + i64::from(deadline) * 1000 <= millis(&util::now()) {
            let msg = format!("ReplicaSet \"{rs_name}\" has timed out progressing.");
            set_condition(&mut status, "Progressing", "False", "ProgressDeadlineExceeded", msg, false);
        }
    } else if condition(&status, "Progressing").is_none() {
        let msg = format!("Found new replica set \"{rs_name}\"");
        set_condition(&mut status, "Progressing", "True", "NewReplicaSetCreated", msg, true);
    }
    status
}

/// When to look again without an event: when the progress deadline would
/// run out.
pub(super) fn next_check(d: &Deployment, status: &DeploymentStatus, paused: bool, complete: bool) -> Action {
    if paused || complete {
        return Action::done();
    }
    let deadline = i64::from(d.spec.progress_deadline_seconds.unwrap_or(600)) * 1000;
    match condition(status, "Progressing") {
        Some(c) if c.reason.as_deref() != Some("ProgressDeadlineExceeded") => {
            let since = c.last_update_time.as_ref().map_or(0, |t| millis(&t.0));
            Action::requeue(util::until(since + deadline) + Duration::from_secs(1))
        }
        _ => Action::done(),
    }
}
