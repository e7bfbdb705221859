//! The HorizontalPodAutoscaler controller (autoscaling/v2), after
//! Kubernetes' `horizontal.go`: scales a Deployment, ReplicaSet or
//! StatefulSet to keep its pods' CPU or memory use at a target.
//!
//! - **Metrics.** Resource metrics of the target's pods, read from their
//!   kubelets through the apiserver's PodProxy Stats (what `top` shows):
//!   `Utilization` (percent of the pods' requests) or `AverageValue`.
//!   Without metrics the default is 80% CPU utilization. A pod without
//!   requests for the resource makes Utilization unusable: ScalingActive
//!   False, with an Event, and no change.
//! - **Recommendation.** `ceil(ratio × pods)` per metric, the largest
//!   wins; within `--horizontal-pod-autoscaler-tolerance` (0.1) of the
//!   target nothing changes. Running pods without figures count as using
//!   nothing when scaling up and their whole target when scaling down, as
//!   Kubernetes does, so a missing figure never exaggerates a change.
//! - **Behavior.** Scale-down takes the highest recommendation of the
//!   stabilization window (`behavior.scaleDown.stabilizationWindowSeconds`,
//!   else `--horizontal-pod-autoscaler-downscale-stabilization`, 5 min);
//!   scale-up the lowest of its own window (0 by default). Policies bound
//!   one step: by default up to double or +4 pods (the larger), down to any
//!   size; `Pods`/`Percent` policies with `selectPolicy` Max, Min or
//!   Disabled are applied to the current size. Then minReplicas and
//!   maxReplicas (ScalingLimited when they bind).
//! - **Status.** currentReplicas, desiredReplicas, currentMetrics,
//!   lastScaleTime, and the conditions AbleToScale, ScalingActive and
//!   ScalingLimited; a SuccessfulRescale Event per change.
//! - Every HPA is looked at again each `--horizontal-pod-autoscaler-sync-period`
//!   (15 s).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::autoscaling::v2::{
    HPAScalingRules, HorizontalPodAutoscaler, HorizontalPodAutoscalerCondition, HorizontalPodAutoscalerStatus,
    MetricSpec, MetricStatus, MetricValueStatus, ResourceMetricStatus,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde_json::{json, Value};
use skiff_api::proto::pod_proxy_client::PodProxyClient;
use skiff_api::proto::StatsRequest;
use skiff_api::quantity::parse_milli;
use skiff_api::LabelSelector;
use skiff_client::config::AuthedChannel;
use skiff_client::{Action, Client, EventRecorder, EventType, InformerEvent, Reconcile, Store, WorkQueue};

use super::{Context, Wiring};
use crate::error::{Error, Result};
use crate::util;

const KIND: &str = "HorizontalPodAutoscaler";

/// The tunables Kubernetes' controller-manager has flags for.
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    pub sync_period: Duration,
    pub tolerance: f64,
    pub downscale_stabilization: Duration,
}

pub struct HorizontalPodAutoscalerController {
    client: Client,
    pod_proxy: PodProxyClient<AuthedChannel>,
    autoscalers: Store<HorizontalPodAutoscaler>,
    pods: Store<Pod>,
    tuning: Tuning,
    /// Each HPA's recent recommendations, for the stabilization windows.
    history: Mutex<HashMap<String, Vec<(Instant, i32)>>>,
    recorder: EventRecorder,
}

pub fn start(ctx: &Context, w: &mut Wiring<'_>) {
    let queue = WorkQueue::new();
    {
        // Its own status writes are no news: the sync period brings it back.
        let queue = queue.clone();
        w.on_events(&ctx.caches.autoscalers, move |ev| match &ev {
            InformerEvent::Modified { old, new } if old.spec == new.spec => {}
            _ => queue.add(ev.key()),
        });
    }
    let controller = HorizontalPodAutoscalerController {
        client: ctx.client.clone(),
        pod_proxy: ctx.pod_proxy.clone(),
        autoscalers: ctx.caches.autoscalers.clone(),
        pods: ctx.caches.pods.clone(),
        tuning: ctx.autoscaling,
        history: Mutex::default(),
        recorder: EventRecorder::new(ctx.client.clone(), "horizontal-pod-autoscaler"),
    };
    w.run(ctx, controller, queue);
}

/// One metric's reading and what it recommends.
#[derive(Debug, Clone, PartialEq)]
struct Reading {
    resource: String,
    /// Percent of requests, for a Utilization target.
    utilization: Option<i32>,
    /// Per-pod average, in the resource's unit (milli-units).
    average_milli: i128,
    replicas: i32,
}

impl Reconcile for HorizontalPodAutoscalerController {
    const NAME: &'static str = "horizontalpodautoscaler";
    type Error = Error;

    async fn reconcile(&self, key: &str) -> Result<Action> {
        let Some(hpa) = self.autoscalers.get(key) else {
            self.lock_history().remove(key);
            return Ok(Action::done());
        };
        let mut status = hpa.status.clone().unwrap_or_default();
        let outcome = self.sync(key, &hpa, &mut status).await;
        if hpa.status.as_ref() != Some(&status) {
            let mut updated = (*hpa).clone();
            updated.status = Some(status);
            match self
                .client
                .api::<HorizontalPodAutoscaler>(util::namespace(&hpa.metadata))
                .update_status(&updated)
                .await
            {
                Ok(_) => {}
                Err(e) if e.is_not_found() => return Ok(Action::done()),
                Err(source) => return Err(Error::UpdateStatus { kind: KIND, key: key.into(), source }),
            }
        }
        outcome?;
        Ok(Action::requeue(self.tuning.sync_period))
    }
}

impl HorizontalPodAutoscalerController {
    fn lock_history(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<(Instant, i32)>>> {
        self.history.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn sync(
        &self,
        key: &str,
        hpa: &HorizontalPodAutoscaler,
        status: &mut HorizontalPodAutoscalerStatus,
    ) -> Result<()> {
        let ns = util::namespace(&hpa.metadata);
        let target_ref = &hpa.spec.scale_target_ref;
        let target = match self.client.get(&target_ref.kind, ns, &target_ref.name).await {
            Ok(t) => t,
            Err(e) if e.is_not_found() => {
                let message = format!(
                    "the HPA controller was unable to get the target's current scale: {} {:?} not found",
                    target_ref.kind, target_ref.name
                );
                set_condition(status, "AbleToScale", "False", "FailedGetScale", &message);
                self.recorder.report(hpa, EventType::Warning, "FailedGetScale", &message).await;
                return Ok(());
            }
            Err(source) => {
                return Err(Error::Get { kind: "scale target", key: format!("{ns}/{}", target_ref.name), source })
            }
        };
        let current = target.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1) as i32;
        status.current_replicas =
            Some(target.pointer("/status/replicas").and_then(Value::as_i64).unwrap_or(current as i64) as i32);
        if current == 0 {
            set_condition(
                status,
                "ScalingActive",
                "False",
                "ScalingDisabled",
                "scaling is disabled since the replica count of the target is zero",
            );
            return Ok(());
        }
        let pods = match self.target_pods(&target, ns) {
            Ok(pods) => pods,
            Err(message) => {
                set_condition(status, "ScalingActive", "False", "InvalidSelector", &message);
                return Ok(());
            }
        };
        let usage = self.usage(ns).await;
        let metrics = hpa.spec.metrics.clone().unwrap_or_else(default_metrics);
        let mut readings = Vec::new();
        for metric in &metrics {
            match self.read(metric, &pods, &usage, current) {
                Ok(reading) => readings.push(reading),
                Err(message) => {
                    set_condition(status, "ScalingActive", "False", "FailedGetResourceMetric", &message);
                    self.recorder.report(hpa, EventType::Warning, "FailedGetResourceMetric", &message).await;
                    return Ok(());
                }
            }
        }
        set_condition(
            status,
            "AbleToScale",
            "True",
            "SucceededGetScale",
            "the HPA controller was able to get the target's current scale",
        );
        set_condition(
            status,
            "ScalingActive",
            "True",
            "ValidMetricFound",
            "the HPA was able to successfully calculate a replica count from resource metrics",
        );
        status.current_metrics = Some(readings.iter().map(metric_status).collect());
        let (recommended, reason) = readings
            .iter()
            .map(|r| {
                let what = if r.utilization.is_some() { " utilization (percentage of request)" } else { "" };
                (r.replicas, format!("{} resource{what}", r.resource))
            })
            .max_by_key(|(n, _)| *n)
            .unwrap_or((current, String::new()));
        let desired = self.stabilize(key, hpa, current, recommended);
        let (desired, limited) = self.limit(hpa, current, desired);
        match limited {
            Some((reason, message)) => set_condition(status, "ScalingLimited", "True", reason, &message),
            None => set_condition(
                status,
                "ScalingLimited",
                "False",
                "DesiredWithinRange",
                "the desired count is within the acceptable range",
            ),
        }
        status.desired_replicas = desired;
        if desired != current {
            let patch = json!({"spec": {"replicas": desired}});
            if let Err(source) = self.client.patch(&target_ref.kind, ns, &target_ref.name, &patch).await {
                let message = format!("failed to rescale {} {}: {source}", target_ref.kind, target_ref.name);
                set_condition(status, "AbleToScale", "False", "FailedUpdateScale", &message);
                self.recorder.report(hpa, EventType::Warning, "FailedRescale", &message).await;
                return Ok(());
            }
            let direction = if desired > current { "above" } else { "below" };
            let message = format!("New size: {desired}; reason: {reason} {direction} target");
            self.recorder.report(hpa, EventType::Normal, "SuccessfulRescale", &message).await;
            status.last_scale_time = Some(util::now_time());
            tracing::info!(hpa = key, from = current, to = desired, "rescaled");
        }
        Ok(())
    }

    /// The target's running pods, by its selector.
    fn target_pods(&self, target: &Value, ns: &str) -> std::result::Result<Vec<Arc<Pod>>, String> {
        let selector = target.pointer("/spec/selector").cloned().unwrap_or(Value::Null);
        let selector: k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector =
            serde_json::from_value(selector).map_err(|e| format!("the target's selector is unreadable: {e}"))?;
        let selector = LabelSelector::from_k8s(&selector).map_err(|e| e.to_string())?;
        let empty = BTreeMap::new();
        Ok(self
            .pods
            .list()
            .into_iter()
            .filter(|p| util::namespace(&p.metadata) == ns && p.metadata.deletion_timestamp.is_none())
            .filter(|p| util::phase(p) == "Running" || util::phase(p) == "Pending")
            .filter(|p| selector.matches(p.metadata.labels.as_ref().unwrap_or(&empty)))
            .collect())
    }

    /// CPU (milli-cores) and memory (milli-bytes) per pod name in `ns`, as
    /// the kubelets measure them; an unreachable apiserver or kubelet leaves
    /// pods out (they count as pods without figures).
    async fn usage(&self, ns: &str) -> HashMap<String, (i128, i128)> {
        let request = StatsRequest { namespace: ns.into(), ..Default::default() };
        match self.pod_proxy.clone().stats(request).await {
            Ok(reply) => reply
                .into_inner()
                .pods
                .into_iter()
                .map(|p| {
                    let cpu = p.cpu.map(|c| c.usage_nano_cores as i128 / 1_000_000).unwrap_or(0);
                    let memory = p.memory.map(|m| m.working_set_bytes as i128 * 1000).unwrap_or(0);
                    (p.name, (cpu, memory))
                })
                .collect(),
            Err(status) => {
                tracing::debug!(namespace = ns, %status, "pod stats unavailable");
                HashMap::new()
            }
        }
    }

    /// One metric's reading over the pods, and the replica count it asks for.
    fn read(
        &self,
        metric: &MetricSpec,
        pods: &[Arc<Pod>],
        usage: &HashMap<String, (i128, i128)>,
        current: i32,
    ) -> std::result::Result<Reading, String> {
        let resource = metric.resource.as_ref().ok_or("only Resource metrics are supported")?;
        let name = resource.name.as_str();
        let target = &resource.target;
        let mut measured = Vec::new();
        let mut missing = Vec::new();
        for pod in pods.iter().filter(|p| util::phase(p) == "Running") {
            let request = request_of(pod, name);
            match usage.get(util::name(&pod.metadata)) {
                Some((cpu, memory)) => measured.push((if name == "cpu" { *cpu } else { *memory }, request)),
                None => missing.push(request),
            }
        }
        if measured.is_empty() {
            return Err(format!("did not receive metrics for any ready pods of the target ({name})"));
        }
        let utilization = target.type_ == "Utilization";
        if utilization && measured.iter().map(|(_, r)| *r).chain(missing.iter().copied()).any(|r| r <= 0) {
            return Err(format!("missing request for {name} on a pod of the target"));
        }
        // The figure per pod a ratio is taken of, and its target.
        let per_pod_target = |request: i128| -> f64 {
            if utilization {
                request as f64 * f64::from(target.average_utilization.unwrap_or(80)) / 100.0
            } else {
                target.average_value.as_ref().and_then(|q| parse_milli(&q.0).ok()).unwrap_or(0) as f64
            }
        };
        let ratio_of = |samples: &[(i128, i128)]| -> f64 {
            let used: f64 = samples.iter().map(|(u, _)| *u as f64).sum();
            let wanted: f64 = samples.iter().map(|(_, r)| per_pod_target(*r)).sum();
            if wanted <= 0.0 {
                0.0
            } else {
                used / wanted
            }
        };
        let mut ratio = ratio_of(&measured);
        if !missing.is_empty() {
            // Missing figures never exaggerate: nothing used when going up,
            // the whole target when going down.
            let mut all = measured.clone();
            for request in &missing {
                let assumed = if ratio > 1.0 { 0 } else { per_pod_target(*request) as i128 };
                all.push((assumed, *request));
            }
            let adjusted = ratio_of(&all);
            if (ratio > 1.0) != (adjusted > 1.0) || (adjusted - 1.0).abs() <= self.tuning.tolerance {
                ratio = 1.0;
            } else {
                ratio = adjusted;
            }
        }
        let counted = measured.len() + missing.len();
        let replicas =
            if (ratio - 1.0).abs() <= self.tuning.tolerance { current } else { (ratio * counted as f64).ceil() as i32 };
        let used: i128 = measured.iter().map(|(u, _)| *u).sum();
        let requested: i128 = measured.iter().map(|(_, r)| *r).sum();
        Ok(Reading {
            resource: name.to_string(),
            utilization: (utilization && requested > 0).then(|| (used * 100 / requested) as i32),
            average_milli: used / measured.len() as i128,
            replicas,
        })
    }

    /// The stabilization windows: down, the highest recommendation of the
    /// window; up, the lowest of its own (none by default).
    fn stabilize(&self, key: &str, hpa: &HorizontalPodAutoscaler, current: i32, recommended: i32) -> i32 {
        let behavior = hpa.spec.behavior.as_ref();
        let window = |rules: Option<&HPAScalingRules>, default: Duration| {
            rules.and_then(|r| r.stabilization_window_seconds).map_or(default, |s| Duration::from_secs(s.max(0) as u64))
        };
        let down = window(behavior.and_then(|b| b.scale_down.as_ref()), self.tuning.downscale_stabilization);
        let up = window(behavior.and_then(|b| b.scale_up.as_ref()), Duration::ZERO);
        let now = Instant::now();
        let mut history = self.lock_history();
        let entries = history.entry(key.to_string()).or_default();
        entries.push((now, recommended));
        let longest = down.max(up);
        entries.retain(|(at, _)| now.duration_since(*at) <= longest);
        let within = |w: Duration| entries.iter().filter(move |(at, _)| now.duration_since(*at) <= w).map(|(_, n)| *n);
        let up_bound = within(up).min().unwrap_or(recommended);
        let down_bound = within(down).max().unwrap_or(recommended);
        if recommended > current {
            up_bound.max(current)
        } else {
            down_bound.min(current)
        }
    }

    /// The scaling policies and minReplicas/maxReplicas: the count to go
    /// to, and why it was held back, if it was.
    fn limit(
        &self,
        hpa: &HorizontalPodAutoscaler,
        current: i32,
        desired: i32,
    ) -> (i32, Option<(&'static str, String)>) {
        let behavior = hpa.spec.behavior.as_ref();
        let mut bounded = desired;
        if desired > current {
            let allowed = step_limit(behavior.and_then(|b| b.scale_up.as_ref()), current, true);
            bounded = desired.min(allowed);
        } else if desired < current {
            let allowed = step_limit(behavior.and_then(|b| b.scale_down.as_ref()), current, false);
            bounded = desired.max(allowed);
        }
        let (min, max) = (hpa.spec.min_replicas.unwrap_or(1), hpa.spec.max_replicas);
        if bounded > max {
            return (
                max,
                Some(("TooManyReplicas", "the desired replica count is more than the maximum replica count".into())),
            );
        }
        if bounded < min {
            return (
                min,
                Some(("TooFewReplicas", "the desired replica count is less than the minimum replica count".into())),
            );
        }
        if bounded != desired {
            return (
                bounded,
                Some(("ScaleUpLimit", "the desired replica count is limited by the scaling policies".into())),
            );
        }
        (bounded, None)
    }
}

/// How far one step may go from `current` (up: the most; down: the
/// least), by the rules' policies, or Kubernetes' defaults without them.
fn step_limit(rules: Option<&HPAScalingRules>, current: i32, up: bool) -> i32 {
    let policies = rules.and_then(|r| r.policies.as_deref());
    let select = rules.and_then(|r| r.select_policy.as_deref()).unwrap_or("Max");
    if select == "Disabled" {
        return current;
    }
    let candidates: Vec<i32> = match policies {
        Some(policies) if !policies.is_empty() => policies
            .iter()
            .map(|p| match (p.type_.as_str(), up) {
                ("Pods", true) => current + p.value,
                ("Pods", false) => current - p.value,
                (_, true) => (f64::from(current) * (1.0 + f64::from(p.value) / 100.0)).ceil() as i32,
                (_, false) => (f64::from(current) * (1.0 - f64::from(p.value) / 100.0)).floor() as i32,
            })
            .collect(),
        // Kubernetes' defaults: up by 100% or 4 pods, down by 100%.
        _ if up => vec![current * 2, current + 4],
        _ => vec![0],
    };
    // Max lets the biggest change through: the highest going up, the
    // lowest going down; Min the smallest.
    let pick_highest = (select == "Max") == up;
    let pick = if pick_highest { candidates.iter().max() } else { candidates.iter().min() };
    pick.copied().unwrap_or(current).max(0)
}

/// What a container asks for of `resource`, summed over the pod, in milli-units.
fn request_of(pod: &Pod, resource: &str) -> i128 {
    let containers = pod.spec.as_ref().map(|s| s.containers.as_slice()).unwrap_or_default();
    containers
        .iter()
        .map(|c| {
            let requests = c.resources.as_ref().and_then(|r| r.requests.as_ref());
            requests.and_then(|r| r.get(resource)).and_then(|q| parse_milli(&q.0).ok()).unwrap_or(0)
        })
        .sum()
}

fn default_metrics() -> Vec<MetricSpec> {
    serde_json::from_value(json!([{"type": "Resource", "resource": {"name": "cpu",
        "target": {"type": "Utilization", "averageUtilization": 80}}}]))
    .expect("a valid default metric")
}

fn metric_status(reading: &Reading) -> MetricStatus {
    let value = if reading.resource == "cpu" {
        format!("{}m", reading.average_milli)
    } else {
        (reading.average_milli / 1000).to_string()
    };
    MetricStatus {
        type_: "Resource".into(),
        resource: Some(ResourceMetricStatus {
            name: reading.resource.clone(),
            current: MetricValueStatus {
                average_utilization: reading.utilization,
                average_value: Some(Quantity(value)),
                value: None,
            },
        }),
        ..Default::default()
    }
}

/// Sets a condition; the transition time moves only when its status does.
fn set_condition(status: &mut HorizontalPodAutoscalerStatus, type_: &str, value: &str, reason: &str, message: &str) {
    let condition = HorizontalPodAutoscalerCondition {
        type_: type_.into(),
        status: value.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_transition_time: Some(util::now_time()),
        ..Default::default()
    };
    util::put_condition(status.conditions.get_or_insert_with(Vec::new), condition);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(v: Value) -> HPAScalingRules {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn default_steps_double_or_add_four_up_and_go_anywhere_down() {
        assert_eq!(step_limit(None, 1, true), 5);
        assert_eq!(step_limit(None, 10, true), 20);
        assert_eq!(step_limit(None, 10, false), 0);
    }

    #[test]
    fn policies_bound_a_step_by_their_select_policy() {
        let up = rules(json!({"policies": [{"type": "Pods", "value": 1, "periodSeconds": 60},
                                           {"type": "Percent", "value": 50, "periodSeconds": 60}]}));
        assert_eq!(step_limit(Some(&up), 10, true), 15, "Max: the larger change");
        let min = rules(json!({"selectPolicy": "Min", "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60},
                                           {"type": "Percent", "value": 50, "periodSeconds": 60}]}));
        assert_eq!(step_limit(Some(&min), 10, true), 11, "Min: the smaller change");
        let down = rules(json!({"policies": [{"type": "Percent", "value": 10, "periodSeconds": 60}]}));
        assert_eq!(step_limit(Some(&down), 10, false), 9);
        assert_eq!(step_limit(Some(&rules(json!({"selectPolicy": "Disabled"}))), 10, false), 10);
    }

    #[test]
    fn requests_are_summed_over_containers() {
        let pod: Pod = serde_json::from_value(json!({"spec": {"containers": [
            {"name": "a", "resources": {"requests": {"cpu": "100m"}}},
            {"name": "b", "resources": {"requests": {"cpu": "0.25", "memory": "1Mi"}}}]}}))
        .unwrap();
        assert_eq!(request_of(&pod, "cpu"), 350);
        assert_eq!(request_of(&pod, "memory"), 1_048_576_000);
    }
}
