//! Hollow nodes: one process registers `--hollow-nodes N` fake Nodes and
//! behaves, through the API, like N kubelets whose containers always start.
//!
//! - [`registration`]: creates each Node (labels, capacity, Ready
//!   conditions, an InternalIP, a podCIDR), or refreshes the status of one
//!   that exists, with at most [`IN_FLIGHT`] writes at once.
//! - [`heartbeat`]: renews each node's Lease in `kube-node-lease` every
//!   `--heartbeat-interval` and rewrites its status every
//!   `--status-interval`, each spread evenly across its interval so 5,000
//!   nodes cost a steady trickle of writes rather than one burst.
//! - [`pods`]: one Pod informer (bound pods only) feeding a work queue;
//!   workers mark pods bound to our nodes Running with a pod IP from the
//!   node's slice ([`ipam`]), and delete for good the ones that are being
//!   deleted, as a kubelet does once their containers have stopped.
//! - [`control`]: failure injection. The ConfigMap `hollow-control` in
//!   `kube-system` has `data.stopped`, a comma-separated list of node names
//!   (`hollow-0003,hollow-0007`). A listed node acts as if its host died:
//!   no more Lease renewals, status updates or pod changes. Taking the name
//!   out revives it: status and Lease are written at once and its pods are
//!   looked at again. Tests create or patch the ConfigMap; nothing else is
//!   needed (the metrics port serves only /metrics, /healthz and /readyz).
//!
//! Memory stays low at 150,000 pods: the informer cache is the only copy
//! of the pods, queues hold keys, and the per-pod state is an address.
//!
//! Metrics: `skiff_hollow_nodes_registered`, `skiff_hollow_nodes_stopped`,
//! `skiff_hollow_heartbeats_total`, `skiff_hollow_node_status_updates_total`,
//! `skiff_hollow_pods_running_total`, `skiff_hollow_pods_deleted_total`,
//! `skiff_hollow_errors_total{operation}`. /readyz answers once every node
//! is registered.

mod control;
mod heartbeat;
mod ipam;
mod metrics;
mod pods;
mod registration;

use std::collections::HashMap;
use std::future::Future;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{SecondsFormat, TimeZone, Utc};
use skiff_client::{Backoff, Client};
use skiff_telemetry::ServiceOps;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::{Config, Error, Labels};
use ipam::{Cidr, PodIps};
use metrics::HollowMetrics;

/// Writes of one kind (registrations, renewals) in flight at once: enough
/// to register 5,000 nodes in seconds, few enough not to swamp the apiserver.
pub const IN_FLIGHT: usize = 64;

/// Runs the hollow nodes until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), Error> {
    let fleet = Arc::new(Fleet::new(&config)?);
    let client = config.api.client()?;
    let ops = ServiceOps::start(config.metrics_listen).await.map_err(Error::from)?;
    let metrics = HollowMetrics::register(&ops.metrics)?;
    ops.readiness.set_not_ready("registering nodes");
    tracing::info!(nodes = fleet.len(), prefix = %config.node_name_prefix, "starting hollow nodes");

    let hollow = Hollow { client, fleet, metrics };
    let (revive_tx, revive_rx) = mpsc::unbounded_channel();
    let mut tasks = JoinSet::new();
    tasks.spawn(control::run(hollow.clone(), revive_tx, ops.stop.clone()));
    tasks.spawn(pods::run(hollow.clone(), revive_rx, ops.stop.clone()));
    tasks.spawn({
        let (hollow, stop, readiness) = (hollow.clone(), ops.stop.clone(), ops.readiness.clone());
        let timing = heartbeat::Timing { lease: config.heartbeat_interval, status: config.status_interval };
        async move {
            if registration::register_all(&hollow, stop.clone()).await {
                tracing::info!(nodes = hollow.fleet.len(), "all hollow nodes registered");
                readiness.set_ready();
                heartbeat::run(hollow, timing, stop).await;
            }
        }
    });

    shutdown.await;
    tracing::info!("shutting down");
    ops.shutdown().await;
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// What every part of hollow mode shares. Cheap to clone.
#[derive(Clone)]
struct Hollow {
    client: Client,
    fleet: Arc<Fleet>,
    metrics: HollowMetrics,
}

// === Fleet ===

/// The hollow nodes: their names, shape, addresses, and which are stopped.
struct Fleet {
    names: Vec<String>,
    index: HashMap<String, usize>,
    stopped: Vec<AtomicBool>,
    /// When each node last became Ready (unix seconds): Ready's
    /// lastTransitionTime.
    ready_since: Vec<AtomicI64>,
    node_ips: Cidr,
    pod_ips: PodIps,
    shape: Shape,
}

/// What every hollow node looks like.
struct Shape {
    cpu: String,
    memory: String,
    max_pods: u32,
    gpu_nodes: usize,
    labels: Labels,
}

impl Fleet {
    fn new(config: &Config) -> Result<Self, Error> {
        let invalid = |flag, reason: String| Error::InvalidFlag { flag, reason };
        let n = config.hollow_nodes;
        for (flag, q) in [("cpu", &config.cpu), ("memory", &config.memory)] {
            match skiff_api::quantity::parse_milli(q) {
                Ok(v) if v > 0 => {}
                Ok(_) => return Err(invalid(flag, format!("{q:?} must be above zero"))),
                Err(e) => return Err(invalid(flag, e)),
            }
        }
        if config.max_pods == 0 {
            return Err(invalid("max-pods", "must be at least 1".into()));
        }
        if config.gpu_nodes > n {
            return Err(invalid("gpu-nodes", format!("{} is more than --hollow-nodes {n}", config.gpu_nodes)));
        }
        let names: Vec<String> = (0..n).map(|i| format!("{}{i:04}", config.node_name_prefix)).collect();
        if let Some(problem) = names.last().and_then(|name| skiff_api::validation_problem_for_name(name)) {
            return Err(invalid("node-name-prefix", format!("{:?} makes bad node names: {problem}", names[0])));
        }
        let pod_base = Cidr::parse(&config.pod_cidr_base).map_err(|e| invalid("pod-cidr-base", e))?;
        let pod_ips = PodIps::new(pod_base, n, config.max_pods).map_err(|e| invalid("pod-cidr-base", e))?;
        let node_ips = Cidr::parse(&config.node_ip_base).map_err(|e| invalid("node-ip-base", e))?;
        if node_ips.size() < n as u64 + 2 {
            return Err(invalid("node-ip-base", format!("{node_ips} has too few addresses for {n} nodes")));
        }
        let now = Utc::now().timestamp();
        Ok(Self {
            index: names.iter().cloned().enumerate().map(|(i, name)| (name, i)).collect(),
            names,
            stopped: (0..n).map(|_| AtomicBool::new(false)).collect(),
            ready_since: (0..n).map(|_| AtomicI64::new(now)).collect(),
            node_ips,
            pod_ips,
            shape: Shape {
                cpu: config.cpu.clone(),
                memory: config.memory.clone(),
                max_pods: config.max_pods,
                gpu_nodes: config.gpu_nodes,
                labels: config.node_labels.clone(),
            },
        })
    }

    fn len(&self) -> usize {
        self.names.len()
    }

    fn name(&self, node: usize) -> &str {
        &self.names[node]
    }

    /// The index of the hollow node called `name`, if it is one of ours.
    fn index_of(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    fn node_ip(&self, node: usize) -> Ipv4Addr {
        // .0 is the network; nodes start at .1.
        self.node_ips.addr(node as u64 + 1)
    }

    fn is_stopped(&self, node: usize) -> bool {
        self.stopped[node].load(Ordering::Relaxed)
    }

    /// Stops or revives a node; returns whether that changed anything.
    fn set_stopped(&self, node: usize, stop: bool) -> bool {
        let was = self.stopped[node].swap(stop, Ordering::Relaxed);
        if was && !stop {
            self.ready_since[node].store(Utc::now().timestamp(), Ordering::Relaxed);
        }
        was != stop
    }

    fn ready_since(&self, node: usize) -> String {
        let secs = self.ready_since[node].load(Ordering::Relaxed);
        Utc.timestamp_opt(secs, 0).single().unwrap_or_else(Utc::now).to_rfc3339_opts(SecondsFormat::Secs, true)
    }

    fn has_gpus(&self, node: usize) -> bool {
        node < self.shape.gpu_nodes
    }
}

/// Retries of a failed registration wait 100ms, doubling up to 10s.
const REGISTER_BACKOFF: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
