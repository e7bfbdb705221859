//! Scheduling and desired state at Kubernetes' scale limits, on hollow
//! nodes: 5,000 nodes, 30,000 pods created and bound, then a 10,000-replica
//! Deployment made fully available; memory of the control plane at the end.
//!
//! There is no kube-scheduler on these machines to measure beside it; its
//! published figure for this kind of run is a few hundred pods/s.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use skiff_client::{Client, ListParams, WatchEvent};
use skiff_testkit::{Cluster, ClusterOptions};
use tokio::sync::Mutex;

use crate::report::{figure, histogram, ms, record};
use crate::usage::usage;
use crate::wait;

#[derive(Debug, clap::Args)]
pub struct Options {
    #[arg(long, default_value_t = 5000)]
    nodes: usize,
    #[arg(long, default_value_t = 30_000)]
    pods: usize,
    #[arg(long, default_value_t = 10_000)]
    replicas: usize,
    /// Concurrent pod creators.
    #[arg(long, default_value_t = 32)]
    clients: usize,
}

const NAMESPACE: &str = "bench";

pub async fn run(o: Options) -> anyhow::Result<()> {
    let mut cluster = Cluster::start_with(ClusterOptions::default()).await?;
    let client = cluster.client();
    client.create("Namespace", "", &json!({"metadata": {"name": NAMESPACE}})).await?;
    println!("# {} hollow nodes, {} pods, a {}-replica Deployment", o.nodes, o.pods, o.replicas);

    let started = Instant::now();
    cluster
        .start_service("kubelet", "skiff-kubelet", &[format!("--hollow-nodes={}", o.nodes), gpu_nodes(o.nodes)])
        .await?;
    wait::until("hollow nodes registered", Duration::from_secs(600), || async {
        let nodes = client.list("Node", "", &ListParams::default()).await.ok()?;
        (nodes.items.len() >= o.nodes).then_some(())
    })
    .await?;
    figure("hollow_nodes_registered_in", started.elapsed().as_secs_f64(), "s")?;

    cluster.start_service("scheduler", "skiff-scheduler", &[]).await?;
    cluster.start_service("controller-manager", "skiff-controller-manager", &[]).await?;

    bind_throughput(&client, &o).await?;
    deployment_rollout(&client, &o).await?;

    for (name, pid) in [
        ("apiserver", cluster.apiserver_pid()),
        ("scheduler", cluster.service("scheduler").and_then(|s| s.process.pid())),
        ("controller_manager", cluster.service("controller-manager").and_then(|s| s.process.pid())),
        ("hollow_kubelet", cluster.service("kubelet").and_then(|s| s.process.pid())),
        ("etcd", cluster.etcd.pid()),
    ] {
        let used = usage(name, pid)?;
        figure(format!("{name}_rss"), used.rss_mib, "MiB")?;
        figure(format!("{name}_cpu"), used.cpu_s, "s")?;
    }
    Ok(())
}

/// A hundred GPU nodes in the fleet, or every node of a smaller one.
fn gpu_nodes(nodes: usize) -> String {
    format!("--gpu-nodes={}", nodes.min(100))
}

/// Creates `o.pods` pods from `o.clients` writers while a watch notes when
/// each is bound: pods/s from the first create to the last bind, the rate
/// of binds alone, and p99 create-to-bound.
async fn bind_throughput(client: &Client, o: &Options) -> anyhow::Result<()> {
    let start = client.list("Pod", NAMESPACE, &ListParams::default()).await?.resource_version;
    let created: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut watch = Box::pin(client.watch("Pod", NAMESPACE, &ListParams::default(), &start).await?);
    let total = o.pods;
    let watcher = {
        let created = created.clone();
        tokio::spawn(async move {
            let mut bound: HashMap<String, Instant> = HashMap::new();
            while bound.len() < total {
                let obj = match wait::next_event(&mut watch).await? {
                    WatchEvent::Added(o) | WatchEvent::Modified(o) => o,
                    _ => continue,
                };
                if obj["spec"]["nodeName"].as_str().is_some_and(|n| !n.is_empty()) {
                    let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
                    bound.entry(name).or_insert_with(Instant::now);
                }
            }
            let created = created.lock().await;
            anyhow::Ok(bound.into_iter().filter_map(|(n, at)| created.get(&n).map(|c| (*c, at))).collect::<Vec<_>>())
        })
    };

    let first_create = Instant::now();
    let mut writers = Vec::new();
    for w in 0..o.clients {
        let client = client.clone();
        let created = created.clone();
        let per = o.pods / o.clients + usize::from(w < o.pods % o.clients);
        writers.push(tokio::spawn(async move {
            for i in 0..per {
                let name = format!("pod-{w}-{i}");
                let pod = json!({"metadata": {"name": name}, "spec": {"containers": [{
                    "name": "c", "image": "busybox:1",
                    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}});
                // Noted before the create: the watcher may see the pod
                // bound, and finish, before the create returns.
                created.lock().await.insert(name, Instant::now());
                client.create("Pod", NAMESPACE, &pod).await?;
            }
            anyhow::Ok(())
        }));
    }
    for w in writers {
        w.await??;
    }
    figure("pod_create_rate", o.pods as f64 / first_create.elapsed().as_secs_f64(), "pods/s")?;
    let pairs = tokio::time::timeout(Duration::from_secs(900), watcher).await???;
    anyhow::ensure!(pairs.len() == o.pods, "only {} of {} pods were bound", pairs.len(), o.pods);
    let mut latency = histogram();
    for (c, b) in &pairs {
        record(&mut latency, b.saturating_duration_since(*c))?;
    }
    let first_bind = pairs.iter().map(|(_, b)| *b).min().unwrap_or(first_create);
    let last_bind = pairs.iter().map(|(_, b)| *b).max().unwrap_or(first_create);
    figure("schedule_throughput_create_to_bound", o.pods as f64 / (last_bind - first_create).as_secs_f64(), "pods/s")?;
    figure("schedule_bind_rate", o.pods as f64 / (last_bind - first_bind).as_secs_f64().max(1e-3), "pods/s")?;
    figure("schedule_create_to_bound_p50", ms(&latency, 0.50)?, "ms")?;
    figure("schedule_create_to_bound_p99", ms(&latency, 0.99)?, "ms")?;
    Ok(())
}

/// A Deployment of `o.replicas` from creation until every replica is
/// available.
async fn deployment_rollout(client: &Client, o: &Options) -> anyhow::Result<()> {
    let deploy = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "big"},
        "spec": {"replicas": o.replicas, "selector": {"matchLabels": {"app": "big"}},
            "template": {"metadata": {"labels": {"app": "big"}}, "spec": {"containers": [{
                "name": "c", "image": "busybox:1", "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}}}});
    let started = Instant::now();
    client.create("Deployment", NAMESPACE, &deploy).await?;
    let want = o.replicas as i64;
    wait::until("the Deployment available", Duration::from_secs(1200), || async {
        let d = client.get("Deployment", NAMESPACE, "big").await.ok()?;
        (d["status"]["availableReplicas"].as_i64() == Some(want)).then_some(())
    })
    .await?;
    figure("deployment_available_in", started.elapsed().as_secs_f64(), "s")?;
    Ok(())
}
