//! Pods on hollow nodes: a bound pod is marked Running (with a pod IP from
//! its node's slice) as if its containers had started, and a pod being
//! deleted is removed for good, as a kubelet does once its containers have
//! stopped. A pod that runs to completion (restartPolicy Never or
//! OnFailure, a Job's) then succeeds at once, its containers exiting 0.
//!
//! One Pod informer watches bound pods in every namespace; its events only
//! map a pod on one of our nodes to its key in a work queue, and a few
//! workers reconcile keys from the informer's cache.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};
use skiff_client::{
    key_of, Action, Backoff, Controller, Informer, InformerEvent, ListParams, Reconcile, Store, WorkQueue,
};
use skiff_telemetry::Stop;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::Hollow;
use crate::Error;
use skiff_api::clock;

/// Workers marking pods Running: enough that a burst of 10,000 bound pods
/// keeps the apiserver busy, few enough not to queue up on it.
const WORKERS: usize = 16;

/// Retries of a failed pod write back off from 5ms to at most 30s.
const BACKOFF: Backoff = Backoff { base: Duration::from_millis(5), max: Duration::from_secs(30) };

/// Follows the pods bound to our nodes until stopped. A node in `revived`
/// has come back from being stopped: its pods are looked at again.
pub(super) async fn run(hollow: Hollow, mut revived: mpsc::UnboundedReceiver<usize>, stop: Stop) {
    // Pending pods are none of a kubelet's business: only bound ones come.
    let params = ListParams::default().fields("spec.nodeName!=");
    let informer = Informer::new(hollow.client.api::<Pod>(""), params);
    let store = informer.store();
    let mut events = informer.subscribe();
    let queue = WorkQueue::<String>::with_backoff(BACKOFF);

    let mut tasks = JoinSet::new();
    tasks.spawn(informer.run(stop.raised()));
    tasks.spawn({
        let (hollow, queue) = (hollow.clone(), queue.clone());
        async move {
            while let Some(event) = events.recv().await {
                if let Some(key) = key_if_ours(&hollow, &event) {
                    queue.add(key);
                }
            }
        }
    });
    tasks.spawn({
        let (hollow, queue, store) = (hollow.clone(), queue.clone(), store.clone());
        async move {
            while let Some(node) = revived.recv().await {
                let name = hollow.fleet.name(node);
                for pod in store.list().iter().filter(|p| node_name(p) == Some(name)) {
                    queue.add(key_of(pod.as_ref()));
                }
            }
        }
    });

    // Workers start once the cache holds every bound pod and the addresses
    // of those already Running (after a restart) are taken, so that no new
    // pod gets one of them.
    tokio::select! {
        _ = stop.raised() => queue.shutdown(),
        synced = store.wait_synced() => {
            if synced.is_ok() {
                tracing::info!(pods = store.len(), "pod cache synced");
                reserve_running(&hollow, &store);
            }
            let worker = Arc::new(HollowPods { hollow, store });
            let _ = Controller::new(worker, queue).workers(WORKERS).run(stop.raised()).await;
        }
    }
    // The informer and the feed end on the stop signal; the revived channel
    // closes with the control loop.
    while tasks.join_next().await.is_some() {}
}

/// Takes note of the addresses pods already Running on our nodes hold (a
/// restart), before any worker hands out new ones that could collide.
fn reserve_running(hollow: &Hollow, store: &Store<Pod>) {
    for pod in store.list() {
        if let (Some(node), Step::Keep(ip)) = (node_name(&pod).and_then(|n| hollow.fleet.index_of(n)), next_step(&pod))
        {
            hollow.fleet.pod_ips.reserve(&key_of(pod.as_ref()), node, ip);
        }
    }
}

fn node_name(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref().and_then(|s| s.node_name.as_deref())
}

/// The key of the pod an event is about, when it is bound to one of ours.
fn key_if_ours(hollow: &Hollow, event: &InformerEvent<Pod>) -> Option<String> {
    let pod = event.object();
    node_name(pod).and_then(|n| hollow.fleet.index_of(n)).map(|_| key_of(pod.as_ref()))
}

/// Marks the pods of our nodes Running or removes them, on the controller
/// runner.
struct HollowPods {
    hollow: Hollow,
    store: Store<Pod>,
}

impl Reconcile for HollowPods {
    const NAME: &'static str = "hollow-pod";
    type Error = Error;

    async fn reconcile(&self, key: &str) -> Result<Action, Error> {
        reconcile(&self.hollow, &self.store, key).await.map(|()| Action::done())
    }

    fn error_policy(&self, _key: &str, _error: &Error) -> Action {
        self.hollow.metrics.errors.with_label_values(&["pod"]).inc();
        Action::backoff()
    }
}

/// Brings one pod where a kubelet would: Running once bound, gone once
/// deleted. Reads the cache; idempotent.
async fn reconcile(hollow: &Hollow, store: &Store<Pod>, key: &str) -> Result<(), Error> {
    let fleet = &hollow.fleet;
    let Some(pod) = store.get(key) else {
        fleet.pod_ips.release(key);
        return Ok(());
    };
    let Some(node) = node_name(&pod).and_then(|n| fleet.index_of(n)) else {
        fleet.pod_ips.release(key);
        return Ok(());
    };
    // A dead host changes nothing; reviving the node queues its pods again.
    if fleet.is_stopped(node) {
        return Ok(());
    }
    let (namespace, name) = key.split_once('/').unwrap_or(("", key));
    match next_step(&pod) {
        Step::Nothing => Ok(()),
        Step::Keep(ip) => {
            fleet.pod_ips.reserve(key, node, ip);
            Ok(())
        }
        Step::Finish => {
            let obj = json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "namespace": namespace, "resourceVersion": pod.metadata.resource_version},
                "status": succeeded_status(&pod, &clock::now_rfc3339()),
            });
            match hollow.client.update_status("Pod", namespace, &obj).await {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(source) => return Err(Error::UpdatePodStatus { pod: key.to_string(), source }),
            }
            fleet.pod_ips.release(key);
            Ok(())
        }
        Step::Delete => {
            // The containers "stopped" at once: remove the pod for good.
            match hollow.client.delete_with_grace("Pod", namespace, name, Some(0)).await {
                Ok(_) => hollow.metrics.pods_deleted.inc(),
                Err(e) if e.is_not_found() => {}
                Err(source) => return Err(Error::DeletePod { pod: key.to_string(), source }),
            }
            fleet.pod_ips.release(key);
            Ok(())
        }
        Step::Start => {
            let ip = fleet.pod_ips.allocate(key, node).ok_or_else(|| Error::PodIpsExhausted {
                node: fleet.name(node).to_string(),
                cidr: fleet.pod_ips.node_cidr(node).to_string(),
            })?;
            let obj = json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": name,
                    "namespace": namespace,
                    // From the cache: a stale copy loses with a conflict and
                    // is retried once the informer has the new one.
                    "resourceVersion": pod.metadata.resource_version,
                },
                "status": running_status(&pod, ip, fleet.node_ip(node), &clock::now_rfc3339()),
            });
            match hollow.client.update_status("Pod", namespace, &obj).await {
                Ok(_) => {
                    hollow.metrics.pods_running.inc();
                    tracing::debug!(pod = key, %ip, "pod running");
                    Ok(())
                }
                Err(e) if e.is_not_found() => {
                    fleet.pod_ips.release(key);
                    Ok(())
                }
                Err(source) => Err(Error::UpdatePodStatus { pod: key.to_string(), source }),
            }
        }
    }
}

/// What a bound pod on a running node needs next.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Finished (Succeeded or Failed): nothing runs any more.
    Nothing,
    /// Running already with this address: remember it is taken.
    Keep(Ipv4Addr),
    /// Running, and its containers run to completion: they exit 0.
    Finish,
    /// Being deleted: delete it for good.
    Delete,
    /// Not started yet: mark it Running.
    Start,
}

fn next_step(pod: &Pod) -> Step {
    if pod.metadata.deletion_timestamp.is_some() {
        return Step::Delete;
    }
    let status = pod.status.as_ref();
    let ip = status.and_then(|s| s.pod_ip.as_deref()).and_then(|ip| ip.parse().ok());
    match (status.and_then(|s| s.phase.as_deref()), ip) {
        (Some("Succeeded" | "Failed"), _) => Step::Nothing,
        (Some("Running"), Some(_)) if runs_to_completion(pod) => Step::Finish,
        (Some("Running"), Some(ip)) => Step::Keep(ip),
        _ => Step::Start,
    }
}

fn runs_to_completion(pod: &Pod) -> bool {
    let policy = pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref());
    matches!(policy, Some("Never" | "OnFailure"))
}

/// The status of a Running pod once all its containers exited 0 at `now`.
fn succeeded_status(pod: &Pod, now: &str) -> Value {
    let mut status = serde_json::to_value(&pod.status).unwrap_or_else(|_| json!({}));
    status["phase"] = "Succeeded".into();
    for condition in status["conditions"].as_array_mut().into_iter().flatten() {
        if condition["type"] == "Ready" || condition["type"] == "ContainersReady" {
            *condition = json!({"type": condition["type"], "status": "False", "reason": "PodCompleted",
                                "lastTransitionTime": now});
        }
    }
    for c in status["containerStatuses"].as_array_mut().into_iter().flatten() {
        let started = c.pointer("/state/running/startedAt").cloned().unwrap_or_else(|| now.into());
        c["ready"] = false.into();
        c["started"] = false.into();
        c["state"] =
            json!({"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": started, "finishedAt": now}});
    }
    status
}

/// The status of a pod whose containers all started at `now` and are ready.
fn running_status(pod: &Pod, ip: Ipv4Addr, host_ip: Ipv4Addr, now: &str) -> Value {
    let uid = pod.metadata.uid.as_deref().unwrap_or("");
    let spec = pod.spec.as_ref();
    let container_id = |name: &str| format!("hollow://{uid}/{name}");
    let image_id = |image: &str| format!("hollow://{image}");
    let containers: Vec<Value> = spec
        .map(|s| s.containers.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|c| {
            let image = c.image.as_deref().unwrap_or("");
            json!({
                "name": c.name, "ready": true, "started": true, "restartCount": 0,
                "state": {"running": {"startedAt": now}},
                "image": image, "imageID": image_id(image), "containerID": container_id(&c.name),
            })
        })
        .collect();
    let init_containers: Vec<Value> = spec
        .and_then(|s| s.init_containers.as_deref())
        .unwrap_or_default()
        .iter()
        .map(|c| {
            let image = c.image.as_deref().unwrap_or("");
            json!({
                "name": c.name, "ready": true, "restartCount": 0,
                "state": {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": now, "finishedAt": now}},
                "image": image, "imageID": image_id(image), "containerID": container_id(&c.name),
            })
        })
        .collect();
    // PodScheduled was set by the bind; keep when that happened.
    let scheduled_at = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "PodScheduled"))
        .and_then(|c| c.last_transition_time.as_ref())
        .and_then(|t| serde_json::to_value(t).ok())
        .unwrap_or_else(|| now.into());
    let condition = |ty: &str, at: &Value| json!({"type": ty, "status": "True", "lastTransitionTime": at});
    let now_value = Value::from(now);
    let mut status = json!({
        "phase": "Running",
        "podIP": ip.to_string(),
        "podIPs": [{"ip": ip.to_string()}],
        "hostIP": host_ip.to_string(),
        "hostIPs": [{"ip": host_ip.to_string()}],
        "startTime": now,
        "conditions": [
            condition("PodScheduled", &scheduled_at),
            condition("Initialized", &now_value),
            condition("ContainersReady", &now_value),
            condition("Ready", &now_value),
        ],
        "containerStatuses": containers,
    });
    if !init_containers.is_empty() {
        status["initContainerStatuses"] = init_containers.into();
    }
    if let Some(qos) = pod.status.as_ref().and_then(|s| s.qos_class.as_deref()) {
        status["qosClass"] = qos.into();
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(value: Value) -> Pod {
        serde_json::from_value(value).unwrap()
    }

    fn bound() -> Value {
        json!({
            "metadata": {"name": "web-1", "namespace": "demo", "uid": "u-1", "resourceVersion": "7"},
            "spec": {
                "nodeName": "hollow-0001",
                "initContainers": [{"name": "setup", "image": "busybox"}],
                "containers": [{"name": "web", "image": "nginx:1"}, {"name": "side", "image": "envoy"}]
            },
            "status": {"phase": "Pending", "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2024-05-01T11:00:00Z"}
            ]}
        })
    }

    #[test]
    fn decides_what_a_kubelet_would_do_next() {
        assert_eq!(next_step(&pod(bound())), Step::Start);
        let mut running = bound();
        running["status"] = json!({"phase": "Running", "podIP": "10.128.1.2"});
        assert_eq!(next_step(&pod(running.clone())), Step::Keep(Ipv4Addr::new(10, 128, 1, 2)));
        running["status"]["podIP"] = json!("");
        assert_eq!(next_step(&pod(running.clone())), Step::Start, "running without an address is fixed");
        running["metadata"]["deletionTimestamp"] = json!("2024-05-01T12:00:00Z");
        assert_eq!(next_step(&pod(running)), Step::Delete);
        let mut done = bound();
        done["status"]["phase"] = json!("Succeeded");
        assert_eq!(next_step(&pod(done)), Step::Nothing);
        let mut job_pod = bound();
        job_pod["spec"]["restartPolicy"] = json!("Never");
        assert_eq!(next_step(&pod(job_pod.clone())), Step::Start);
        job_pod["status"] = json!({"phase": "Running", "podIP": "10.128.1.2"});
        assert_eq!(next_step(&pod(job_pod)), Step::Finish, "a job's pod runs to completion");
    }

    #[test]
    fn a_finished_pod_succeeds_with_its_containers_exited() {
        let p = pod(bound());
        let running =
            running_status(&p, Ipv4Addr::new(10, 128, 1, 2), Ipv4Addr::new(172, 16, 0, 2), "2024-05-01T12:00:00Z");
        let mut value = bound();
        value["status"] = running;
        let s = succeeded_status(&pod(value), "2024-05-01T12:00:05Z");
        assert_eq!(s["phase"], "Succeeded");
        let web = &s["containerStatuses"][0]["state"]["terminated"];
        assert_eq!((&web["exitCode"], &web["startedAt"]), (&json!(0), &json!("2024-05-01T12:00:00Z")));
        let ready = s["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap();
        assert_eq!((&ready["status"], &ready["reason"]), (&json!("False"), &json!("PodCompleted")));
    }

    #[test]
    fn running_status_has_ready_containers_and_addresses() {
        let p = pod(bound());
        let s = running_status(&p, Ipv4Addr::new(10, 128, 1, 2), Ipv4Addr::new(172, 16, 0, 2), "2024-05-01T12:00:00Z");
        assert_eq!(s["phase"], "Running");
        assert_eq!(s["podIP"], "10.128.1.2");
        assert_eq!(s["hostIP"], "172.16.0.2");
        assert_eq!(s["startTime"], "2024-05-01T12:00:00Z");
        let types: Vec<&str> =
            s["conditions"].as_array().unwrap().iter().map(|c| c["type"].as_str().unwrap()).collect();
        assert_eq!(types, ["PodScheduled", "Initialized", "ContainersReady", "Ready"]);
        assert!(s["conditions"].as_array().unwrap().iter().all(|c| c["status"] == "True"));
        assert_eq!(s["conditions"][0]["lastTransitionTime"], "2024-05-01T11:00:00Z", "bind time kept");
        let web = &s["containerStatuses"][0];
        assert_eq!((&web["name"], &web["ready"], &web["started"]), (&json!("web"), &json!(true), &json!(true)));
        assert_eq!(web["containerID"], "hollow://u-1/web");
        assert_eq!(web["imageID"], "hollow://nginx:1");
        assert_eq!(web["state"]["running"]["startedAt"], "2024-05-01T12:00:00Z");
        assert_eq!(s["containerStatuses"].as_array().unwrap().len(), 2);
        assert_eq!(s["initContainerStatuses"][0]["state"]["terminated"]["reason"], "Completed");
    }

    #[test]
    fn running_status_passes_the_apiservers_admission() {
        let mut p = bound();
        p["apiVersion"] = json!("v1");
        p["kind"] = json!("Pod");
        let status = running_status(
            &pod(p.clone()),
            Ipv4Addr::new(10, 0, 0, 2),
            Ipv4Addr::new(10, 0, 0, 1),
            "2024-05-01T12:00:00Z",
        );
        p["status"] = status;
        let size = p.to_string().len();
        let normalized = skiff_api::normalize(skiff_api::KindInfo::by_kind("Pod").unwrap(), p, size).expect("valid");
        assert_eq!(normalized["status"]["containerStatuses"][1]["name"], "side");
    }
}
