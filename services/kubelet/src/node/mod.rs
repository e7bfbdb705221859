//! This host as a Node: registration, the Lease in `kube-node-lease`
//! renewed every `--heartbeat-interval`, and the status (capacity,
//! addresses, conditions) written every `--status-interval` and at once
//! when a condition changes.
//!
//! Ready follows the runtime: True while CRI `Status` says RuntimeReady and
//! NetworkReady. MemoryPressure and DiskPressure compare what /proc/meminfo
//! and statvfs of `--root-dir` say with the eviction thresholds.

pub mod cni;
pub mod resources;

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use skiff_client::{Backoff, Client, Retry};
use skiff_telemetry::Stop;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use crate::runtime::ContainerRuntime;
use crate::{Config, Error};
use skiff_api::clock;
use skiff_api::well_known::NODE_LEASE_NAMESPACE;

/// How long a Lease holds without renewal: Kubernetes' default.
pub const LEASE_DURATION_SECONDS: i64 = 40;

/// What the node reports, and the conditions' transition times.
pub struct NodeAgent {
    pub name: String,
    pub ip: Ipv4Addr,
    /// Where the kubelet API listens, reported in daemonEndpoints.
    pub kubelet_port: u16,
    pod_cidr: Option<String>,
    labels: BTreeMap<String, String>,
    max_pods: u32,
    extended: BTreeMap<String, String>,
    root_dir: PathBuf,
    memory_threshold: u64,
    disk_free_percent: u8,
    /// Condition type → (status, lastTransitionTime).
    transitions: Mutex<HashMap<&'static str, (bool, String)>>,
}

/// One reading of the node's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub ready: bool,
    pub ready_message: String,
    pub memory_pressure: bool,
    pub disk_pressure: bool,
}

impl NodeAgent {
    pub fn new(config: &Config) -> Result<Self, Error> {
        let invalid = |flag, reason: String| Error::InvalidFlag { flag, reason };
        let name = config.node_name.clone().unwrap_or_else(resources::hostname);
        if let Some(problem) = skiff_api::validation_problem_for_name(&name) {
            return Err(invalid("node-name", format!("{name:?}: {problem}")));
        }
        let ip = match config.node_ip {
            Some(ip) => ip,
            None => resources::first_ipv4()
                .ok_or_else(|| invalid("node-ip", "no non-loopback IPv4 address found; set it".into()))?,
        };
        let memory_threshold = skiff_api::quantity::parse_milli(&config.eviction_memory_available)
            .map_err(|e| invalid("eviction-memory-available", e))?
            / 1000;
        if config.eviction_disk_free_percent > 100 {
            return Err(invalid("eviction-disk-free-percent", "must be at most 100".into()));
        }
        Ok(Self {
            name,
            ip,
            kubelet_port: config.kubelet_port,
            pod_cidr: config.pod_cidr.clone(),
            labels: config.node_labels.0.clone(),
            max_pods: config.max_pods,
            extended: config.extended_resources.0.clone(),
            root_dir: config.root_dir.clone(),
            memory_threshold: u64::try_from(memory_threshold.max(0)).unwrap_or(u64::MAX),
            disk_free_percent: config.eviction_disk_free_percent,
            transitions: Mutex::new(HashMap::new()),
        })
    }

    /// Reads the runtime's and the host's health now.
    pub async fn health(&self, runtime: &dyn ContainerRuntime) -> Health {
        let (ready, ready_message) = match runtime.health().await {
            Ok(h) if h.runtime_ready && h.network_ready => (true, "kubelet is posting ready status".to_string()),
            Ok(h) => (false, format!("container runtime not ready: {}", h.message)),
            Err(e) => (false, format!("container runtime is down: {e}")),
        };
        let memory_pressure = resources::meminfo("MemAvailable").is_some_and(|a| a < self.memory_threshold);
        let disk_pressure = resources::disk(&self.root_dir)
            .is_some_and(|(total, free)| total > 0 && free * 100 < total * u64::from(self.disk_free_percent));
        Health { ready, ready_message, memory_pressure, disk_pressure }
    }

    /// The Node object this kubelet registers.
    pub fn object(&self, health: &Health, runtime_version: &str) -> Value {
        let mut labels = serde_json::Map::new();
        for (k, v) in &self.labels {
            labels.insert(k.clone(), v.clone().into());
        }
        labels.insert("kubernetes.io/hostname".into(), self.name.clone().into());
        labels.insert("kubernetes.io/os".into(), "linux".into());
        labels.insert("kubernetes.io/arch".into(), arch().into());
        let mut spec = json!({});
        if let Some(cidr) = &self.pod_cidr {
            spec = json!({"podCIDR": cidr, "podCIDRs": [cidr]});
        }
        json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.name, "labels": labels},
            "spec": spec,
            "status": self.status(health, runtime_version),
        })
    }

    /// The whole node status: capacity, conditions with a fresh heartbeat,
    /// addresses and what runs here.
    pub fn status(&self, health: &Health, runtime_version: &str) -> Value {
        let capacity = resources::capacity(&self.root_dir, self.max_pods, &self.extended);
        let now = clock::now_rfc3339();
        let condition = |ty: &'static str, status: bool, reason: &str, message: &str| {
            let since = self.transition(ty, status, &now);
            json!({
                "type": ty, "status": if status { "True" } else { "False" }, "reason": reason, "message": message,
                "lastHeartbeatTime": now, "lastTransitionTime": since,
            })
        };
        let (mem_reason, mem_message) = if health.memory_pressure {
            ("KubeletHasInsufficientMemory", "kubelet has insufficient memory available")
        } else {
            ("KubeletHasSufficientMemory", "kubelet has sufficient memory available")
        };
        let (disk_reason, disk_message) = if health.disk_pressure {
            ("KubeletHasDiskPressure", "kubelet has disk pressure")
        } else {
            ("KubeletHasNoDiskPressure", "kubelet has no disk pressure")
        };
        let ready_reason = if health.ready { "KubeletReady" } else { "KubeletNotReady" };
        let read = |path: &str| std::fs::read_to_string(path).map(|s| s.trim().to_string()).unwrap_or_default();
        json!({
            "capacity": capacity,
            "allocatable": capacity,
            "conditions": [
                condition("MemoryPressure", health.memory_pressure, mem_reason, mem_message),
                condition("DiskPressure", health.disk_pressure, disk_reason, disk_message),
                condition("PIDPressure", false, "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                condition("Ready", health.ready, ready_reason, &health.ready_message),
            ],
            "addresses": [
                {"type": "InternalIP", "address": self.ip.to_string()},
                {"type": "Hostname", "address": self.name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.kubelet_port}},
            "nodeInfo": {
                "machineID": read("/etc/machine-id"),
                "systemUUID": read("/etc/machine-id"),
                "bootID": read("/proc/sys/kernel/random/boot_id"),
                "kernelVersion": read("/proc/sys/kernel/osrelease"),
                "osImage": os_image(),
                "containerRuntimeVersion": runtime_version,
                "kubeletVersion": concat!("skiff-", env!("CARGO_PKG_VERSION")),
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": arch(),
            },
        })
    }

    /// When condition `ty` last changed to `status` (now, if it just did).
    fn transition(&self, ty: &'static str, status: bool, now: &str) -> String {
        let mut map = self.transitions.lock().unwrap_or_else(|e| e.into_inner());
        let entry = map.entry(ty).or_insert_with(|| (status, now.to_string()));
        if entry.0 != status {
            *entry = (status, now.to_string());
        }
        entry.1.clone()
    }
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn os_image() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| t.lines().find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_string())))
        .unwrap_or_else(|| "linux".into())
}

// === the node loop ===

/// How often the node writes what.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub lease: Duration,
    pub status: Duration,
}

/// Registration retries wait 200ms, doubling up to 10s.
const REGISTER_BACKOFF: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));

/// Registers the node (retrying until it succeeds), then renews the Lease
/// and writes the status until stopped. `registered` turns true once the
/// Node exists.
pub async fn run(
    client: Client,
    runtime: Arc<dyn ContainerRuntime>,
    node: Arc<NodeAgent>,
    timing: Timing,
    registered: watch::Sender<bool>,
    stop: Stop,
) {
    let mut retry = Retry::new(REGISTER_BACKOFF);
    loop {
        match register(&client, runtime.as_ref(), &node).await {
            Ok(()) => break,
            Err(error) => {
                let delay = retry.failed();
                tracing::warn!(error = format!("{error:#}"), ?delay, "node registration failed, retrying");
                tokio::select! {
                    _ = stop.raised() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    tracing::info!(node = %node.name, ip = %node.ip, "node registered");
    let _ = registered.send(true);

    let mut lease_tick = tokio::time::interval(timing.lease);
    lease_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_status = tokio::time::Instant::now();
    let mut last_health: Option<Health> = None;
    loop {
        tokio::select! {
            _ = stop.raised() => return,
            _ = lease_tick.tick() => {}
        }
        if let Err(error) = renew_lease(&client, &node.name).await {
            tracing::warn!(error = format!("{error:#}"), "lease renewal failed");
        }
        // The health is read every heartbeat, so a change of Ready shows at
        // once rather than after the status interval.
        let health = node.health(runtime.as_ref()).await;
        let changed = last_health.as_ref() != Some(&health);
        if changed || last_status.elapsed() >= timing.status {
            let version = runtime.version().await.unwrap_or_default();
            match report_status(&client, &node, &health, &version).await {
                Ok(()) => {
                    last_status = tokio::time::Instant::now();
                    last_health = Some(health);
                }
                Err(error) => tracing::warn!(error = format!("{error:#}"), "node status update failed"),
            }
        }
    }
}

/// Creates the Node, or refreshes the one that exists (its labels, a
/// missing podCIDR, its status), then renews the Lease.
async fn register(client: &Client, runtime: &dyn ContainerRuntime, node: &NodeAgent) -> Result<(), Error> {
    let health = node.health(runtime).await;
    let version = runtime.version().await.unwrap_or_default();
    let object = node.object(&health, &version);
    let err = |source| Error::RegisterNode { node: node.name.clone(), source };
    match client.create("Node", "", &object).await {
        Ok(_) => {}
        Err(e) if e.is_already_exists() => {
            let existing = client.get("Node", "", &node.name).await.map_err(err)?;
            let mut patch = json!({"metadata": {"labels": object["metadata"]["labels"]}});
            let has_cidr = existing.pointer("/spec/podCIDR").and_then(Value::as_str).is_some_and(|c| !c.is_empty());
            if !has_cidr && object["spec"].get("podCIDR").is_some() {
                patch["spec"] = object["spec"].clone();
            }
            client.patch("Node", "", &node.name, &patch).await.map_err(err)?;
            report_status(client, node, &health, &version).await?;
        }
        Err(source) => return Err(err(source)),
    }
    renew_lease(client, &node.name).await
}

/// Writes the node's whole status (the kubelet owns it). A node deleted
/// from the API is registered again.
async fn report_status(client: &Client, node: &NodeAgent, health: &Health, version: &str) -> Result<(), Error> {
    // No resourceVersion: the status is this kubelet's alone.
    let obj = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node.name}, "status": node.status(health, version)});
    match client.update_status("Node", "", &obj).await {
        Ok(_) => Ok(()),
        Err(e) if e.is_not_found() => {
            tracing::info!(node = %node.name, "node was deleted from the API, registering it again");
            match client.create("Node", "", &node.object(health, version)).await {
                Ok(_) => Ok(()),
                Err(e) if e.is_already_exists() => Ok(()),
                Err(source) => Err(Error::RegisterNode { node: node.name.clone(), source }),
            }
        }
        Err(source) => Err(Error::UpdateNodeStatus { node: node.name.clone(), source }),
    }
}

/// Renews the node's Lease, creating it if it is missing.
pub(crate) async fn renew_lease(client: &Client, name: &str) -> Result<(), Error> {
    let now = clock::now_rfc3339_micros();
    let spec = json!({"holderIdentity": name, "leaseDurationSeconds": LEASE_DURATION_SECONDS, "renewTime": now});
    let err = |source| Error::RenewLease { node: name.to_string(), source };
    match client.patch("Lease", NODE_LEASE_NAMESPACE, name, &json!({ "spec": spec })).await {
        Ok(_) => Ok(()),
        Err(e) if e.is_not_found() => {
            let mut spec = spec;
            spec["acquireTime"] = now.into();
            let lease = json!({
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": name, "namespace": NODE_LEASE_NAMESPACE},
                "spec": spec,
            });
            match client.create("Lease", NODE_LEASE_NAMESPACE, &lease).await {
                Ok(_) => Ok(()),
                Err(e) if e.is_already_exists() => Ok(()),
                Err(e) => Err(err(e)),
            }
        }
        Err(e) => Err(err(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(args: &[&str]) -> NodeAgent {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            config: Config,
        }
        let cli = Cli::parse_from(std::iter::once("skiff-kubelet").chain(args.iter().copied()));
        NodeAgent::new(&cli.config).unwrap()
    }

    #[test]
    fn node_object_has_capacity_conditions_and_passes_admission() {
        let node = agent(&[
            "--node-name=worker-1",
            "--node-ip=10.9.8.7",
            "--pod-cidr=10.42.3.0/24",
            "--extended-resources=example.com/fpga=2",
            "--node-labels=zone=a",
        ]);
        let health =
            Health { ready: false, ready_message: "runtime down".into(), memory_pressure: false, disk_pressure: true };
        let obj = node.object(&health, "containerd://1.6");
        assert_eq!(obj["metadata"]["name"], "worker-1");
        assert_eq!(obj["metadata"]["labels"]["zone"], "a");
        assert_eq!(obj["spec"]["podCIDR"], "10.42.3.0/24");
        assert_eq!(obj["status"]["addresses"][0], json!({"type": "InternalIP", "address": "10.9.8.7"}));
        assert_eq!(obj["status"]["capacity"]["example.com/fpga"], "2");
        assert_eq!(obj["status"]["capacity"]["pods"], "110");
        let cond = |ty: &str| {
            obj["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == ty).unwrap().clone()
        };
        assert_eq!(cond("Ready")["status"], "False");
        assert_eq!(cond("Ready")["message"], "runtime down");
        assert_eq!(cond("DiskPressure")["status"], "True");
        assert_eq!(cond("PIDPressure")["status"], "False");
        assert_eq!(obj["status"]["nodeInfo"]["containerRuntimeVersion"], "containerd://1.6");
        let info = skiff_api::KindInfo::by_kind("Node").unwrap();
        let size = obj.to_string().len();
        skiff_api::normalize(info, obj, size).expect("a valid Node");
    }

    #[test]
    fn transition_times_move_only_on_change() {
        let node = agent(&["--node-name=n", "--node-ip=10.0.0.1"]);
        assert_eq!(node.transition("Ready", false, "t1"), "t1");
        assert_eq!(node.transition("Ready", false, "t2"), "t1");
        assert_eq!(node.transition("Ready", true, "t3"), "t3");
    }

    #[test]
    fn bad_flags_name_the_flag() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            config: Config,
        }
        let cli = Cli::parse_from(["skiff-kubelet", "--node-name=Bad_Name", "--node-ip=10.0.0.1"]);
        assert!(NodeAgent::new(&cli.config).err().unwrap().to_string().starts_with("--node-name:"));
    }
}
