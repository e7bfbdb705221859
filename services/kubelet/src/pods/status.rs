//! The pod status the kubelet reports, from what the runtime shows: the
//! phase, addresses, conditions, and one status per container (state,
//! lastState, restartCount, ready, started, image and container ids).
//!
//! The status is built as JSON and read back through k8s-openapi's
//! `PodStatus`, so it compares equal to the stored one when nothing
//! changed and the kubelet writes only changes.

use chrono::{SecondsFormat, TimeZone, Utc};
use k8s_openapi::api::core::v1::{Container, Pod, PodStatus};
use serde_json::{json, Value};

use crate::runtime::proto;

/// What the kubelet knows of one container of the spec.
#[derive(Debug)]
pub struct ContainerView<'a> {
    pub spec: &'a Container,
    /// The runtime's containers of this name, newest attempt first.
    pub history: Vec<proto::ContainerStatus>,
    /// Why the newest attempt is not running when that is not plain from
    /// the runtime: ErrImagePull, CrashLoopBackOff, CreateContainerError…
    pub waiting: Option<(String, String)>,
    /// The container exited and will be started again.
    pub restarting: bool,
    pub ready: bool,
    pub started: bool,
}

impl ContainerView<'_> {
    pub fn latest(&self) -> Option<&proto::ContainerStatus> {
        self.history.first()
    }

    fn state_of(&self) -> i32 {
        self.latest().map_or(-1, |c| c.state)
    }

    pub fn running(&self) -> bool {
        self.state_of() == proto::ContainerState::ContainerRunning as i32
    }

    pub fn exited(&self) -> bool {
        self.state_of() == proto::ContainerState::ContainerExited as i32
    }

    pub fn exited_ok(&self) -> bool {
        self.exited() && self.latest().is_some_and(|c| c.exit_code == 0)
    }
}

/// Everything the status is made from.
pub struct Observed<'a> {
    pub init: Vec<ContainerView<'a>>,
    pub containers: Vec<ContainerView<'a>>,
    pub initialized: bool,
    /// An init container failed for good (restartPolicy Never).
    pub init_failed: bool,
    pub pod_ip: Option<String>,
    pub host_ip: String,
}

/// The phase Kubernetes' kubelet would report.
pub fn phase(obs: &Observed<'_>) -> &'static str {
    if obs.init_failed {
        return "Failed";
    }
    if !obs.initialized {
        return "Pending";
    }
    let (mut running, mut waiting, mut failed) = (0, 0, 0);
    for v in &obs.containers {
        if v.running() || (v.restarting && v.exited()) {
            running += 1;
        } else if v.exited() {
            if !v.exited_ok() {
                failed += 1;
            }
        } else {
            waiting += 1;
        }
    }
    if waiting > 0 {
        "Pending"
    } else if running > 0 {
        "Running"
    } else if failed > 0 {
        "Failed"
    } else {
        "Succeeded"
    }
}

/// The pod's new status; `current` gives the times to keep (startTime,
/// conditions' lastTransitionTime) and the fields the kubelet does not own.
pub fn build(pod: &Pod, obs: &Observed<'_>, now: &str) -> PodStatus {
    let current = pod.status.as_ref().and_then(|s| serde_json::to_value(s).ok()).unwrap_or_else(|| json!({}));
    let mut status = current.clone();
    let phase = phase(obs);
    status["phase"] = phase.into();
    status["hostIP"] = obs.host_ip.clone().into();
    status["hostIPs"] = json!([{"ip": obs.host_ip}]);
    if let Some(ip) = &obs.pod_ip {
        status["podIP"] = ip.clone().into();
        status["podIPs"] = json!([{"ip": ip}]);
    }
    if current.get("startTime").is_none() {
        status["startTime"] = now.into();
    }
    let terminal = matches!(phase, "Succeeded" | "Failed");
    let unready: Vec<&str> = obs.containers.iter().filter(|v| !v.ready).map(|v| v.spec.name.as_str()).collect();
    let uninit: Vec<&str> = obs.init.iter().filter(|v| !v.exited_ok()).map(|v| v.spec.name.as_str()).collect();
    let mut conditions = Vec::new();
    let condition = |ty: &str, ok: bool, reason: &str, message: String| {
        let old = current["conditions"].as_array().and_then(|cs| cs.iter().find(|c| c["type"] == ty));
        let status = if ok { "True" } else { "False" };
        let since = old
            .filter(|c| c["status"] == status)
            .and_then(|c| c.get("lastTransitionTime").cloned())
            .unwrap_or_else(|| now.into());
        let mut c = json!({"type": ty, "status": status, "lastTransitionTime": since});
        if !ok {
            c["reason"] = reason.into();
            c["message"] = message.into();
        }
        c
    };
    let scheduled = current["conditions"].as_array().and_then(|cs| cs.iter().find(|c| c["type"] == "PodScheduled"));
    conditions.push(scheduled.cloned().unwrap_or_else(|| condition("PodScheduled", true, "", String::new())));
    let not_ready_reason = if terminal { "PodCompleted" } else { "ContainersNotReady" };
    conditions.push(condition(
        "Initialized",
        obs.initialized,
        "ContainersNotInitialized",
        format!("containers with incomplete status: [{}]", uninit.join(" ")),
    ));
    let ready = unready.is_empty() && !terminal;
    let message = format!("containers with unready status: [{}]", unready.join(" "));
    conditions.push(condition("ContainersReady", ready, not_ready_reason, message.clone()));
    conditions.push(condition("Ready", ready, not_ready_reason, message));
    status["conditions"] = conditions.into();
    status["containerStatuses"] = obs.containers.iter().map(container_status).collect::<Vec<_>>().into();
    if obs.init.is_empty() {
        if let Some(s) = status.as_object_mut() {
            s.remove("initContainerStatuses");
        }
    } else {
        status["initContainerStatuses"] = obs.init.iter().map(container_status).collect::<Vec<_>>().into();
    }
    serde_json::from_value(status).unwrap_or_default()
}

/// A container's status as the API shows it.
fn container_status(v: &ContainerView<'_>) -> Value {
    let latest = v.latest();
    let previous = v.history.get(1);
    let waiting = |reason: &str, message: &str| {
        let mut w = json!({"reason": reason});
        if !message.is_empty() {
            w["message"] = message.into();
        }
        json!({"waiting": w})
    };
    let (state, last) = match latest {
        Some(c) if v.running() => (json!({"running": {"startedAt": time(c.started_at)}}), previous.map(terminated)),
        Some(c) if v.exited() => match &v.waiting {
            Some((reason, message)) => (waiting(reason, message), Some(terminated(c))),
            None => (terminated(c), previous.map(terminated)),
        },
        _ => {
            let (reason, message) = v.waiting.clone().unwrap_or_else(|| ("ContainerCreating".into(), String::new()));
            (waiting(&reason, &message), previous.map(terminated))
        }
    };
    let mut s = json!({
        "name": v.spec.name,
        "image": v.spec.image.clone().unwrap_or_default(),
        "imageID": latest.map(|c| c.image_ref.clone()).unwrap_or_default(),
        "state": state,
        "lastState": last.unwrap_or_else(|| json!({})),
        "ready": v.ready,
        "started": v.started,
        "restartCount": latest.and_then(|c| c.metadata.as_ref()).map_or(0, |m| m.attempt),
    });
    if let Some(c) = latest {
        s["containerID"] = format!("containerd://{}", c.id).into();
    }
    s
}

/// The `terminated` state of an exited container.
fn terminated(c: &proto::ContainerStatus) -> Value {
    let reason = if !c.reason.is_empty() {
        c.reason.clone()
    } else if c.exit_code == 0 {
        "Completed".into()
    } else {
        "Error".into()
    };
    let mut t = json!({
        "exitCode": c.exit_code,
        "reason": reason,
        "startedAt": time(c.started_at),
        "finishedAt": time(c.finished_at),
        "containerID": format!("containerd://{}", c.id),
    });
    if !c.message.is_empty() {
        t["message"] = c.message.clone().into();
    }
    json!({"terminated": t})
}

/// CRI nanoseconds as a metav1.Time (whole seconds); the epoch when unset.
pub fn time(nanos: i64) -> String {
    Utc.timestamp_nanos(nanos.max(0)).to_rfc3339_opts(SecondsFormat::Secs, true)
}
