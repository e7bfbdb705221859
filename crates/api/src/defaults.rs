//! Server-side defaults, as Kubernetes sets them, for the fields later
//! components read without checking (restartPolicy, imagePullPolicy, strategy…).

use k8s_openapi::api::{apps::v1 as apps, batch::v1 as batch, core::v1 as core, rbac::v1 as rbac};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

fn set_if_none<T>(field: &mut Option<T>, value: T) {
    if field.is_none() {
        *field = Some(value);
    }
}

/// `Always` for `:latest` or untagged images, as Kubernetes does, so a moving
/// tag is re-pulled while a pinned one is pulled once.
fn image_pull_policy(image: &str) -> &'static str {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    match last.split_once(':') {
        _ if image.contains('@') => "IfNotPresent",
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

fn container(c: &mut core::Container) {
    if c.image_pull_policy.is_none() {
        c.image_pull_policy = Some(image_pull_policy(c.image.as_deref().unwrap_or("")).to_string());
    }
    set_if_none(&mut c.termination_message_path, "/dev/termination-log".into());
    set_if_none(&mut c.termination_message_policy, "File".into());
    for p in c.ports.iter_mut().flatten() {
        set_if_none(&mut p.protocol, "TCP".into());
    }
}

pub(crate) fn pod_spec(spec: &mut core::PodSpec) {
    set_if_none(&mut spec.restart_policy, "Always".into());
    set_if_none(&mut spec.dns_policy, "ClusterFirst".into());
    set_if_none(&mut spec.scheduler_name, "default-scheduler".into());
    set_if_none(&mut spec.termination_grace_period_seconds, 30);
    set_if_none(&mut spec.security_context, Default::default());
    set_if_none(&mut spec.enable_service_links, true);
    for c in spec.init_containers.iter_mut().flatten().chain(spec.containers.iter_mut()) {
        container(c);
    }
    for t in spec.tolerations.iter_mut().flatten() {
        set_if_none(&mut t.operator, "Equal".into());
    }
}

pub(crate) fn pod_template(t: &mut core::PodTemplateSpec) {
    if let Some(spec) = t.spec.as_mut() {
        pod_spec(spec);
    }
}

pub(crate) fn deployment(d: &mut apps::DeploymentSpec) {
    set_if_none(&mut d.replicas, 1);
    set_if_none(&mut d.revision_history_limit, 10);
    set_if_none(&mut d.progress_deadline_seconds, 600);
    set_if_none(&mut d.min_ready_seconds, 0);
    let strategy = d.strategy.get_or_insert_with(Default::default);
    set_if_none(&mut strategy.type_, "RollingUpdate".into());
    if strategy.type_.as_deref() == Some("RollingUpdate") {
        let ru = strategy.rolling_update.get_or_insert_with(Default::default);
        set_if_none(&mut ru.max_surge, IntOrString::String("25%".into()));
        set_if_none(&mut ru.max_unavailable, IntOrString::String("25%".into()));
    }
    pod_template(&mut d.template);
}

pub(crate) fn replica_set(rs: &mut apps::ReplicaSetSpec) {
    set_if_none(&mut rs.replicas, 1);
    set_if_none(&mut rs.min_ready_seconds, 0);
    if let Some(t) = rs.template.as_mut() {
        pod_template(t);
    }
}

pub(crate) fn daemon_set(ds: &mut apps::DaemonSetSpec) {
    set_if_none(&mut ds.revision_history_limit, 10);
    let strategy = ds.update_strategy.get_or_insert_with(Default::default);
    set_if_none(&mut strategy.type_, "RollingUpdate".into());
    pod_template(&mut ds.template);
}

pub(crate) fn stateful_set(ss: &mut apps::StatefulSetSpec) {
    set_if_none(&mut ss.replicas, 1);
    set_if_none(&mut ss.pod_management_policy, "OrderedReady".into());
    set_if_none(&mut ss.revision_history_limit, 10);
    let strategy = ss.update_strategy.get_or_insert_with(Default::default);
    set_if_none(&mut strategy.type_, "RollingUpdate".into());
    let retention = ss.persistent_volume_claim_retention_policy.get_or_insert_with(Default::default);
    set_if_none(&mut retention.when_deleted, "Retain".into());
    set_if_none(&mut retention.when_scaled, "Retain".into());
    pod_template(&mut ss.template);
}

pub(crate) fn job(j: &mut batch::JobSpec) {
    set_if_none(&mut j.backoff_limit, 6);
    // A Job with a parallelism but no completions is a work queue: it is
    // done when one pod succeeds and none runs (Kubernetes' defaulting).
    if j.completions.is_none() && j.parallelism.is_none() {
        j.completions = Some(1);
    }
    set_if_none(&mut j.parallelism, 1);
    set_if_none(&mut j.suspend, false);
    set_if_none(&mut j.completion_mode, "NonIndexed".into());
    if let Some(spec) = j.template.spec.as_mut() {
        set_if_none(&mut spec.restart_policy, "Never".into());
    }
    pod_template(&mut j.template);
}

pub(crate) fn cron_job(c: &mut batch::CronJobSpec) {
    set_if_none(&mut c.concurrency_policy, "Allow".into());
    set_if_none(&mut c.suspend, false);
    set_if_none(&mut c.successful_jobs_history_limit, 3);
    set_if_none(&mut c.failed_jobs_history_limit, 1);
    if let Some(spec) = c.job_template.spec.as_mut() {
        job(spec);
    }
}

pub(crate) fn service(s: &mut core::ServiceSpec) {
    set_if_none(&mut s.type_, "ClusterIP".into());
    set_if_none(&mut s.session_affinity, "None".into());
    for p in s.ports.iter_mut().flatten() {
        set_if_none(&mut p.protocol, "TCP".into());
        set_if_none(&mut p.target_port, IntOrString::Int(p.port));
    }
}

/// A binding's roleRef and its User and Group subjects are in the RBAC
/// group when they leave it out, as Kubernetes defaults them; a
/// ServiceAccount is in the core group, which is the empty name.
pub(crate) fn binding(role_ref: &mut rbac::RoleRef, subjects: Option<&mut Vec<rbac::Subject>>) {
    let rbac_group = || Some(crate::well_known::RBAC_GROUP.to_string());
    if role_ref.api_group.as_deref().unwrap_or_default().is_empty() {
        role_ref.api_group = rbac_group();
    }
    for s in subjects.into_iter().flatten() {
        if s.api_group.as_deref().unwrap_or_default().is_empty() && matches!(s.kind.as_str(), "User" | "Group") {
            s.api_group = rbac_group();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::image_pull_policy;

    #[test]
    fn pull_policy_follows_the_tag() {
        assert_eq!(image_pull_policy("nginx"), "Always");
        assert_eq!(image_pull_policy("nginx:latest"), "Always");
        assert_eq!(image_pull_policy("nginx:1.27"), "IfNotPresent");
        assert_eq!(image_pull_policy("127.0.0.1:5000/busybox"), "Always");
        assert_eq!(image_pull_policy("127.0.0.1:5000/busybox:1"), "IfNotPresent");
        assert_eq!(image_pull_policy("busybox@sha256:abc"), "IfNotPresent");
    }
}
