//! Desired state kept end to end with every real component: apiserver,
//! scheduler, controller-manager and hollow nodes. A Deployment runs, rolls
//! forward and back, survives a node's death, and is removed with all it
//! owns.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};
use skiff_client::{Client, ListParams};
use skiff_testkit::{eventually, Cluster};

/// The one node with GPUs (`--gpu-nodes=1`).
const GPU_NODE: &str = "hollow-0000";

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

async fn full_cluster(nodes: usize) -> Cluster {
    let mut cluster = Cluster::start().await.expect("cluster");
    let hollow = format!("--hollow-nodes={nodes}");
    cluster
        .start_service("kubelet", "skiff-kubelet", &strings(&[&hollow, "--gpu-nodes=1", "--heartbeat-interval=1s"]))
        .await
        .expect("hollow kubelet");
    cluster
        .start_service("scheduler", "skiff-scheduler", &strings(&["--record-scheduled-events=false"]))
        .await
        .expect("scheduler");
    cluster
        .start_service(
            "controller-manager",
            "skiff-controller-manager",
            &strings(&["--node-monitor-grace-period=4s", "--default-unreachable-toleration-seconds=3"]),
        )
        .await
        .expect("controller-manager");
    // Workloads created before every node is Ready would pile on the first.
    let client = cluster.client();
    eventually("all hollow nodes Ready", || async {
        let list = client.list("Node", "", &ListParams::default()).await.ok()?;
        (list.items.iter().filter(|n| ready(n)).count() == nodes).then_some(())
    })
    .await;
    cluster
}

fn deployment(name: &str, replicas: i64, image: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 2, "maxUnavailable": 1}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{
                "name": "c", "image": image, "resources": {"requests": {"cpu": "50m", "memory": "32Mi"}}}]}}}})
}

async fn pods_of(client: &Client, app: &str) -> Vec<Value> {
    client.list("Pod", "default", &ListParams::default().labels(&format!("app={app}"))).await.unwrap().items
}

/// A pod's or a node's Ready condition is True.
fn ready(obj: &Value) -> bool {
    obj["status"]["conditions"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

fn name(obj: &Value) -> &str {
    obj["metadata"]["name"].as_str().unwrap_or_default()
}

fn running_ready(pod: &Value) -> bool {
    pod["status"]["phase"] == "Running" && ready(pod)
}

fn image(pod: &Value) -> &str {
    pod["spec"]["containers"][0]["image"].as_str().unwrap_or_default()
}

/// Waits until the Deployment's pods are exactly `replicas`, all running
/// `image`, Running and Ready; returns them.
async fn settled(client: &Client, app: &str, replicas: usize, want_image: &str) -> Vec<Value> {
    eventually(&format!("{replicas} ready pods of {app} on {want_image}"), || async {
        let pods = pods_of(client, app).await;
        let live: Vec<Value> = pods.into_iter().filter(|p| p["metadata"]["deletionTimestamp"].is_null()).collect();
        (live.len() == replicas && live.iter().all(|p| running_ready(p) && image(p) == want_image)).then_some(live)
    })
    .await
}

#[tokio::test]
async fn a_deployment_runs_rolls_and_is_removed() {
    let cluster = full_cluster(5).await;
    let client = cluster.client();
    client.create("Deployment", "default", &deployment("web", 50, "web:1")).await.unwrap();
    let pods = settled(&client, "web", 50, "web:1").await;
    let nodes: BTreeSet<&str> = pods.iter().filter_map(|p| p["spec"]["nodeName"].as_str()).collect();
    assert!(nodes.len() >= 4, "50 pods spread over the nodes: {nodes:?}");
    let d = eventually("deployment status", || async {
        let d = client.get("Deployment", "default", "web").await.unwrap();
        (d["status"]["availableReplicas"] == 50).then_some(d)
    })
    .await;
    assert_eq!(d["status"]["updatedReplicas"], 50);

    // Roll forward, then back.
    client
        .patch(
            "Deployment",
            "default",
            "web",
            &json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "web:2"}]}}}}),
        )
        .await
        .unwrap();
    settled(&client, "web", 50, "web:2").await;
    let rs = client.list("ReplicaSet", "default", &ListParams::default().labels("app=web")).await.unwrap().items;
    assert_eq!(rs.len(), 2, "one ReplicaSet per template");
    let out = cluster.skiffctl(&["rollout", "undo", "deploy/web"], None).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    settled(&client, "web", 50, "web:1").await;
    let rs_after = client.list("ReplicaSet", "default", &ListParams::default().labels("app=web")).await.unwrap().items;
    assert_eq!(rs_after.len(), 2, "undo reuses the old ReplicaSet");

    client.delete("Deployment", "default", "web").await.unwrap();
    eventually("the Deployment's ReplicaSets and pods to be gone", || async {
        let rs = client.list("ReplicaSet", "default", &ListParams::default().labels("app=web")).await.unwrap().items;
        (rs.is_empty() && pods_of(&client, "web").await.is_empty()).then_some(())
    })
    .await;
}

#[tokio::test]
async fn pods_of_a_dead_node_are_recreated_elsewhere_and_gpu_pods_find_the_gpu_node() {
    let cluster = full_cluster(4).await;
    let client = cluster.client();
    client.create("Deployment", "default", &deployment("svc", 12, "svc:1")).await.unwrap();
    let pods = settled(&client, "svc", 12, "svc:1").await;
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for p in &pods {
        *per_node.entry(p["spec"]["nodeName"].as_str().unwrap().to_string()).or_default() += 1;
    }
    // Not the GPU node: the GPU pod below needs it alive.
    let victim =
        per_node.iter().filter(|(n, _)| n.as_str() != GPU_NODE).max_by_key(|(_, c)| **c).map(|(n, _)| n.clone());
    let victim = victim.expect("12 pods on 4 nodes leave some on a node without GPUs");

    client
        .create(
            "ConfigMap",
            "kube-system",
            &json!({"metadata": {"name": "hollow-control"}, "data": {"stopped": victim}}),
        )
        .await
        .unwrap();
    let node = eventually("the dead node to be marked unreachable", || async {
        let n = client.get("Node", "", &victim).await.unwrap();
        let tainted = n["spec"]["taints"].as_array().is_some_and(|t| {
            t.iter().any(|t| t["key"] == "node.kubernetes.io/unreachable" && t["effect"] == "NoExecute")
        });
        tainted.then_some(n)
    })
    .await;
    let condition = node["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap();
    assert_eq!(condition["status"], "Unknown");
    // Its pods are deleted after the toleration and replaced on live nodes.
    // (The dead node's kubelet can't confirm the deletion, so the old pods may
    // linger with a deletionTimestamp, as in Kubernetes.)
    eventually("all 12 live pods of svc Running and Ready on Ready nodes", || async {
        let nodes = client.list("Node", "", &ListParams::default()).await.ok()?.items;
        let alive: BTreeSet<&str> = nodes.iter().filter(|n| ready(n)).map(name).collect();
        let live: Vec<Value> = pods_of(&client, "svc")
            .await
            .into_iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .collect();
        let moved = live.len() == 12
            && live
                .iter()
                .all(|p| running_ready(p) && p["spec"]["nodeName"].as_str().is_some_and(|n| alive.contains(n)));
        moved.then_some(())
    })
    .await;

    // A GPU pod lands on the GPU node only.
    let gpu_pod = json!({"metadata": {"name": "trainer"}, "spec": {"containers": [{"name": "c", "image": "cuda:1",
        "resources": {"limits": {"nvidia.com/gpu": "1"}, "requests": {"nvidia.com/gpu": "1"}}}]}});
    client.create("Pod", "default", &gpu_pod).await.unwrap();
    let node = eventually("the GPU pod to be scheduled", || async {
        let p = client.get("Pod", "default", "trainer").await.unwrap();
        p["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()).map(str::to_string)
    })
    .await;
    let gpu_node = client.get("Node", "", &node).await.unwrap();
    assert_eq!(gpu_node["status"]["allocatable"]["nvidia.com/gpu"], "4", "{node} has GPUs");
    assert_eq!(node, GPU_NODE);
}
