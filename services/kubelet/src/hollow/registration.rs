//! Registering the hollow nodes: each Node as a kubelet would create it,
//! and its Lease.

use futures::StreamExt;
use serde_json::{json, Map, Value};
use skiff_client::Retry;
use skiff_telemetry::Stop;

use super::{heartbeat, Fleet, Hollow, IN_FLIGHT, REGISTER_BACKOFF};
use crate::Error;
use skiff_api::clock;

/// The extended resource GPU nodes have, and how many.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";
const GPUS_PER_NODE: &str = "4";
/// Disk every hollow node claims.
const EPHEMERAL_STORAGE: &str = "100Gi";

/// Registers every node, [`IN_FLIGHT`] at a time, retrying each until it
/// succeeds. Returns false if stopped first.
pub(super) async fn register_all(hollow: &Hollow, stop: Stop) -> bool {
    let all = futures::stream::iter(0..hollow.fleet.len())
        .map(|node| register_until_done(hollow, node))
        .buffer_unordered(IN_FLIGHT)
        .for_each(|()| async {});
    tokio::select! {
        _ = stop.raised() => false,
        _ = all => true,
    }
}

async fn register_until_done(hollow: &Hollow, node: usize) {
    let mut retry = Retry::new(REGISTER_BACKOFF);
    loop {
        match register(hollow, node).await {
            Ok(()) => {
                hollow.metrics.nodes_registered.inc();
                return;
            }
            Err(error) => {
                hollow.metrics.errors.with_label_values(&["register"]).inc();
                let delay = retry.failed();
                tracing::warn!(error = format!("{error:#}"), ?delay, "node registration failed, retrying");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Creates the Node, or writes the status of the one that exists, then
/// renews its Lease (creating it if need be).
pub(super) async fn register(hollow: &Hollow, node: usize) -> Result<(), Error> {
    let name = hollow.fleet.name(node);
    match hollow.client.create("Node", "", &node_object(&hollow.fleet, node)).await {
        Ok(_) => tracing::debug!(node = name, "node registered"),
        Err(e) if e.is_already_exists() => heartbeat::report_status(hollow, node).await?,
        Err(source) => return Err(Error::RegisterNode { node: name.to_string(), source }),
    }
    heartbeat::renew_lease(hollow, node).await
}

/// The Node a hollow kubelet registers.
pub(super) fn node_object(fleet: &Fleet, node: usize) -> Value {
    let name = fleet.name(node);
    let mut labels = Map::new();
    for (k, v) in &fleet.shape.labels.0 {
        labels.insert(k.clone(), v.clone().into());
    }
    labels.insert("kubernetes.io/hostname".into(), name.into());
    labels.insert("kubernetes.io/os".into(), "linux".into());
    labels.insert("kubernetes.io/arch".into(), "amd64".into());
    labels.insert("node.kubernetes.io/instance-type".into(), "hollow".into());
    if fleet.has_gpus(node) {
        labels.insert("skiff.io/gpu".into(), "true".into());
    }
    let pod_cidr = fleet.pod_ips.node_cidr(node).to_string();
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]},
        "status": node_status(fleet, node),
    })
}

/// The whole status a hollow node reports: capacity, healthy conditions
/// with a fresh heartbeat, its address and what it runs.
pub(super) fn node_status(fleet: &Fleet, node: usize) -> Value {
    let shape = &fleet.shape;
    let mut capacity = Map::new();
    capacity.insert("cpu".into(), shape.cpu.clone().into());
    capacity.insert("memory".into(), shape.memory.clone().into());
    capacity.insert("pods".into(), shape.max_pods.to_string().into());
    capacity.insert("ephemeral-storage".into(), EPHEMERAL_STORAGE.into());
    if fleet.has_gpus(node) {
        capacity.insert(GPU_RESOURCE.into(), GPUS_PER_NODE.into());
    }
    let now = clock::now_rfc3339();
    let since = fleet.ready_since(node);
    let condition = |ty: &str, status: &str, reason: &str, message: &str| {
        json!({
            "type": ty, "status": status, "reason": reason, "message": message,
            "lastHeartbeatTime": now, "lastTransitionTime": since,
        })
    };
    let name = fleet.name(node);
    json!({
        "capacity": capacity.clone(),
        "allocatable": capacity,
        "conditions": [
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            condition("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
        ],
        "addresses": [
            {"type": "InternalIP", "address": fleet.node_ip(node).to_string()},
            {"type": "Hostname", "address": name},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        "nodeInfo": {
            "machineID": format!("hollow-{node:08x}"),
            "systemUUID": format!("hollow-{node:08x}"),
            "bootID": format!("hollow-{node:08x}"),
            "kernelVersion": "hollow",
            "osImage": "skiff hollow node",
            "containerRuntimeVersion": "hollow://1.0",
            "kubeletVersion": "skiff-hollow",
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": "amd64",
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hollow::Fleet;

    fn fleet(args: &[&str]) -> Fleet {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            config: crate::Config,
        }
        let cli = Cli::parse_from(std::iter::once("skiff-kubelet").chain(args.iter().copied()));
        Fleet::new(&cli.config).unwrap()
    }

    #[test]
    fn nodes_have_kubelet_labels_capacity_and_ready_conditions() {
        let f = fleet(&[
            "--hollow-nodes=3",
            "--gpu-nodes=1",
            "--node-labels=zone=a",
            "--cpu=4",
            "--pod-cidr-base=10.42.0.0/16",
        ]);
        let gpu = node_object(&f, 0);
        assert_eq!(gpu["metadata"]["name"], "hollow-0000");
        assert_eq!(gpu["metadata"]["labels"]["skiff.io/gpu"], "true");
        assert_eq!(gpu["metadata"]["labels"]["zone"], "a");
        assert_eq!(gpu["metadata"]["labels"]["kubernetes.io/hostname"], "hollow-0000");
        assert_eq!(gpu["metadata"]["labels"]["node.kubernetes.io/instance-type"], "hollow");
        assert_eq!(gpu["status"]["capacity"]["nvidia.com/gpu"], "4");
        assert_eq!(gpu["status"]["allocatable"]["cpu"], "4");
        assert_eq!(gpu["status"]["allocatable"]["memory"], "32Gi");
        assert_eq!(gpu["status"]["capacity"]["pods"], "110");
        assert_eq!(gpu["spec"]["podCIDR"], "10.42.0.0/24");

        let plain = node_object(&f, 2);
        assert_eq!(plain["metadata"]["name"], "hollow-0002");
        assert!(plain["metadata"]["labels"].get("skiff.io/gpu").is_none());
        assert!(plain["status"]["capacity"].get("nvidia.com/gpu").is_none());
        assert_eq!(plain["spec"]["podCIDR"], "10.42.2.0/24");
        assert_eq!(plain["status"]["addresses"][0], json!({"type": "InternalIP", "address": "172.16.0.3"}));
        let conditions = plain["status"]["conditions"].as_array().unwrap();
        let ready = conditions.iter().find(|c| c["type"] == "Ready").unwrap();
        assert_eq!((&ready["status"], &ready["reason"]), (&json!("True"), &json!("KubeletReady")));
        assert!(conditions.iter().filter(|c| c["type"] != "Ready").all(|c| c["status"] == "False"));
        assert_eq!(plain["status"]["nodeInfo"]["kubeletVersion"], "skiff-hollow");
    }

    #[test]
    fn nodes_pass_the_apiservers_admission() {
        let f = fleet(&["--hollow-nodes=2", "--gpu-nodes=2"]);
        let info = skiff_api::KindInfo::by_kind("Node").unwrap();
        let node = node_object(&f, 1);
        let size = node.to_string().len();
        skiff_api::normalize(info, node, size).expect("a valid Node");
    }

    #[test]
    fn bad_flags_are_refused_with_the_flag_named() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            config: crate::Config,
        }
        let err = |args: &[&str]| {
            let cli = Cli::parse_from(std::iter::once("skiff-kubelet").chain(args.iter().copied()));
            Fleet::new(&cli.config).err().expect("refused").to_string()
        };
        assert!(err(&["--hollow-nodes=2", "--gpu-nodes=3"]).starts_with("--gpu-nodes:"));
        assert!(err(&["--hollow-nodes=2", "--memory=lots"]).starts_with("--memory:"));
        assert!(err(&["--hollow-nodes=300", "--pod-cidr-base=10.42.0.0/16"]).starts_with("--pod-cidr-base:"));
        assert!(err(&["--hollow-nodes=1", "--node-name-prefix=Bad_"]).starts_with("--node-name-prefix:"));
    }
}
