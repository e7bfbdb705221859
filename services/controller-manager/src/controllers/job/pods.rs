//! What a Job's pods are and say: the pod made from the template (with
//! its index for an Indexed Job), whether a pod has finished and how, and
//! which podFailurePolicy rule a failed pod matches.

use k8s_openapi::api::batch::v1::{Job, PodFailurePolicyRule};
use k8s_openapi::api::core::v1::{EnvVar, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use skiff_api::well_known::{JOB_COMPLETION_INDEX, JOB_TRACKING_FINALIZER};

use crate::util;

/// How a pod of a Job ended, or that it has not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Running,
    Succeeded,
    /// Failed, or deleted before it succeeded (it will never succeed now).
    Failed,
}

pub fn outcome(pod: &Pod) -> Outcome {
    match util::phase(pod) {
        "Succeeded" => Outcome::Succeeded,
        "Failed" => Outcome::Failed,
        _ if pod.metadata.deletion_timestamp.is_some() => Outcome::Failed,
        _ => Outcome::Running,
    }
}

pub fn has_tracking_finalizer(pod: &Pod) -> bool {
    pod.metadata.finalizers.iter().flatten().any(|f| f == JOB_TRACKING_FINALIZER)
}

/// The completion index of an Indexed Job's pod, from its annotation.
pub fn index(pod: &Pod) -> Option<i32> {
    pod.metadata.annotations.as_ref()?.get(JOB_COMPLETION_INDEX)?.parse().ok().filter(|i| *i >= 0)
}

/// When a failed pod stopped: the latest end among its containers, else
/// when it was last changed to its phase.
pub fn finished_at(pod: &Pod) -> Option<i64> {
    let status = pod.status.as_ref()?;
    let ended = status
        .container_statuses
        .iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(|t| util::millis(&t.0))
        .max();
    ended.or_else(|| pod.metadata.deletion_timestamp.as_ref().map(|t: &Time| util::millis(&t.0)))
}

/// Container restarts: with restartPolicy OnFailure a failing container
/// restarts in place, and each restart counts towards the backoff limit.
pub fn restarts(pod: &Pod) -> i32 {
    let status = pod.status.as_ref();
    status.and_then(|s| s.container_statuses.as_ref()).into_iter().flatten().map(|c| c.restart_count).sum()
}

/// The first podFailurePolicy rule a failed pod matches, with its index.
pub fn matching_rule<'a>(job: &'a Job, pod: &Pod) -> Option<(usize, &'a PodFailurePolicyRule, String)> {
    let rules = &job.spec.as_ref()?.pod_failure_policy.as_ref()?.rules;
    rules.iter().enumerate().find_map(|(i, rule)| rule_matches(rule, pod).map(|why| (i, rule, why)))
}

/// Why `pod` matches `rule` (a container's exit code or a pod condition).
fn rule_matches(rule: &PodFailurePolicyRule, pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    if let Some(codes) = &rule.on_exit_codes {
        let exits = status.container_statuses.iter().flatten().filter_map(|c| {
            let terminated = c.state.as_ref()?.terminated.as_ref()?;
            let named = codes.container_name.as_deref().is_none_or(|n| n == c.name);
            (named && terminated.exit_code != 0).then_some((c.name.as_str(), terminated.exit_code))
        });
        for (container, code) in exits {
            let listed = codes.values.contains(&code);
            if listed == (codes.operator == "In") {
                return Some(format!("container {container} exited with code {code}"));
            }
        }
        return None;
    }
    let conditions = rule.on_pod_conditions.as_deref().unwrap_or_default();
    status.conditions.iter().flatten().find_map(|have| {
        conditions
            .iter()
            .any(|want| want.type_ == have.type_ && want.status.as_deref().unwrap_or("True") == have.status)
            .then(|| format!("pod condition {} is {}", have.type_, have.status))
    })
}

/// A new pod of `job`: the template, a controller reference, the tracking
/// finalizer, and for an Indexed Job its index (annotation, label,
/// `JOB_COMPLETION_INDEX` in every container, hostname `JOB-INDEX`).
pub fn new_pod(job: &Job, index: Option<i32>) -> Pod {
    let name = util::name(&job.metadata);
    let template = job.spec.as_ref().map(|s| s.template.clone()).unwrap_or_default();
    let meta = template.metadata.unwrap_or_default();
    let mut finalizers = meta.finalizers.unwrap_or_default();
    finalizers.push(JOB_TRACKING_FINALIZER.to_string());
    let mut pod = Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{name}-")),
            namespace: job.metadata.namespace.clone(),
            labels: meta.labels,
            annotations: meta.annotations,
            finalizers: Some(finalizers),
            owner_references: Some(vec![util::owner_ref(job)]),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    };
    if let Some(index) = index {
        let value = index.to_string();
        pod.metadata.generate_name = Some(format!("{name}-{index}-"));
        pod.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(JOB_COMPLETION_INDEX.into(), value.clone());
        pod.metadata.labels.get_or_insert_with(Default::default).insert(JOB_COMPLETION_INDEX.into(), value.clone());
        if let Some(spec) = pod.spec.as_mut() {
            spec.hostname.get_or_insert_with(|| format!("{name}-{index}"));
            let env = EnvVar { name: "JOB_COMPLETION_INDEX".into(), value: Some(value), value_from: None };
            for c in spec.containers.iter_mut().chain(spec.init_containers.iter_mut().flatten()) {
                c.env.get_or_insert_with(Vec::new).push(env.clone());
            }
        }
    }
    pod
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(policy: serde_json::Value) -> Job {
        serde_json::from_value(json!({
            "metadata": {"name": "work", "namespace": "ns", "uid": "j1"},
            "spec": {"completions": 3, "completionMode": "Indexed", "podFailurePolicy": policy,
                     "template": {"metadata": {"labels": {"app": "w"}},
                                  "spec": {"restartPolicy": "Never",
                                           "containers": [{"name": "main", "image": "busybox"}]}}}
        }))
        .unwrap()
    }

    fn failed_pod(exit_code: i32, conditions: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "work-1-abc"},
            "status": {"phase": "Failed", "conditions": conditions, "containerStatuses": [
                {"name": "main", "ready": false, "restartCount": 0, "image": "busybox", "imageID": "",
                 "state": {"terminated": {"exitCode": exit_code, "finishedAt": "2026-01-01T00:00:10Z"}}}
            ]}
        }))
        .unwrap()
    }

    #[test]
    fn an_indexed_pod_carries_its_index_everywhere() {
        let pod = new_pod(&job(json!(null)), Some(2));
        assert_eq!(pod.metadata.generate_name.as_deref(), Some("work-2-"));
        assert_eq!(index(&pod), Some(2));
        assert_eq!(pod.metadata.labels.as_ref().unwrap()[JOB_COMPLETION_INDEX], "2");
        assert!(has_tracking_finalizer(&pod));
        let spec = pod.spec.unwrap();
        assert_eq!(spec.hostname.as_deref(), Some("work-2"));
        let env = &spec.containers[0].env.as_ref().unwrap()[0];
        assert_eq!((env.name.as_str(), env.value.as_deref()), ("JOB_COMPLETION_INDEX", Some("2")));
        assert_eq!(pod.metadata.owner_references.unwrap()[0].uid, "j1");
    }

    #[test]
    fn failure_policy_rules_match_exit_codes_and_conditions_in_order() {
        let j = job(json!({"rules": [
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [42]}},
            {"action": "Count", "onExitCodes": {"operator": "NotIn", "values": [42]}},
        ]}));
        let (i, rule, why) = matching_rule(&j, &failed_pod(42, json!([]))).unwrap();
        assert_eq!((i, rule.action.as_str(), why.as_str()), (1, "FailJob", "container main exited with code 42"));
        let (i, ..) = matching_rule(&j, &failed_pod(1, json!([]))).unwrap();
        assert_eq!(i, 2);
        let disrupted = failed_pod(42, json!([{"type": "DisruptionTarget", "status": "True"}]));
        assert_eq!(matching_rule(&j, &disrupted).unwrap().1.action, "Ignore");
        assert!(matching_rule(&job(json!(null)), &failed_pod(1, json!([]))).is_none());
        assert_eq!(finished_at(&failed_pod(1, json!([]))), Some(1_767_225_610_000));
    }

    #[test]
    fn a_pod_deleted_before_it_succeeded_has_failed() {
        let mut pod = failed_pod(0, json!([]));
        pod.status.as_mut().unwrap().phase = Some("Running".into());
        assert_eq!(outcome(&pod), Outcome::Running);
        pod.metadata.deletion_timestamp = Some(util::now_time());
        assert_eq!(outcome(&pod), Outcome::Failed);
        pod.status.as_mut().unwrap().phase = Some("Succeeded".into());
        assert_eq!(outcome(&pod), Outcome::Succeeded);
    }
}
