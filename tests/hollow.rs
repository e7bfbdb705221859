//! Hollow nodes against a real etcd and apiserver: `skiff-kubelet
//! --hollow-nodes` registers Ready nodes with the asked-for capacity, keeps
//! their Leases fresh, runs and removes the pods bound to them, and stops a
//! node on request through the `hollow-control` ConfigMap. Then the
//! skiffctl operations commands (cordon, drain, scale, rollout pause) on
//! them. Neither the scheduler nor the controllers are needed: the tests
//! bind pods themselves.

use std::net::SocketAddr;
use std::process::Output;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use serde_json::json;
use skiff_client::{Client, ListParams};
use skiff_testkit::{eventually, Cluster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NODES: usize = 5;

/// A cluster with five hollow nodes (the first with GPUs) renewing their
/// Leases every second; returns it with the kubelet's metrics address.
async fn hollow_cluster() -> (Cluster, SocketAddr) {
    let mut cluster = Cluster::start().await.expect("cluster");
    let metrics = cluster.start_service("kubelet", "skiff-kubelet", &hollow_args()).await.expect("hollow kubelet");
    (cluster, metrics)
}

fn hollow_args() -> Vec<String> {
    [
        "--hollow-nodes=5",
        "--gpu-nodes=1",
        "--heartbeat-interval=1s",
        "--status-interval=2s",
        "--pod-cidr-base=10.42.0.0/16",
        "--node-labels=skiff.io/pool=hollow",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn name(i: usize) -> String {
    format!("hollow-{i:04}")
}

fn is_ready(node: &Node) -> bool {
    let conditions = node.status.as_ref().and_then(|s| s.conditions.as_ref());
    conditions.into_iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True")
}

async fn wait_all_ready(client: &Client) -> Vec<Node> {
    let nodes = client.api::<Node>("");
    eventually("all hollow nodes Ready", || async {
        let list = nodes.list(&ListParams::default()).await.ok()?;
        let mut ready: Vec<Node> = list.items.into_iter().filter(is_ready).collect();
        ready.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        (ready.len() == NODES).then_some(ready)
    })
    .await
}

async fn renew_time(client: &Client, node: &str) -> Option<MicroTime> {
    let lease = client.api::<Lease>("kube-node-lease").get(node).await.ok()?;
    lease.spec?.renew_time
}

/// Waits until `node`'s Lease is renewed after `after`; returns the new time.
async fn renewed_after(client: &Client, node: &str, after: &MicroTime) -> MicroTime {
    eventually(&format!("a renewal of {node}'s lease"), || async {
        renew_time(client, node).await.filter(|t| t > after)
    })
    .await
}

fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "app", "image": "busybox"}]}
    }))
    .unwrap()
}

/// Creates pod `name` in default and binds it to `node`.
async fn create_bound(client: &Client, name: &str, node: &str) {
    let created = client.api::<Pod>("default").create(&pod(name)).await.expect("create pod");
    let uid = created.metadata.uid.unwrap();
    client.bind("default", name, node, &uid).await.expect("bind");
}

async fn wait_running(client: &Client, name: &str) -> Pod {
    let pods = client.api::<Pod>("default");
    eventually(&format!("pod {name} Running"), || async {
        let p = pods.get(name).await.ok()?;
        let status = p.status.as_ref()?;
        (status.phase.as_deref() == Some("Running")).then_some(())?;
        Some(p)
    })
    .await
}

/// A plain HTTP/1.0 GET against the kubelet's metrics port: (status, body).
async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await.unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).await.unwrap();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn nodes_register_ready_with_capacity_and_keep_their_leases() {
    let (cluster, metrics) = hollow_cluster().await;
    let client = cluster.client();
    let nodes = wait_all_ready(&client).await;
    let names: Vec<String> = nodes.iter().map(|n| n.metadata.name.clone().unwrap()).collect();
    assert_eq!(names, (0..NODES).map(name).collect::<Vec<_>>());

    for (i, node) in nodes.iter().enumerate() {
        let labels = node.metadata.labels.as_ref().unwrap();
        assert_eq!(labels["kubernetes.io/hostname"], name(i));
        assert_eq!(labels["kubernetes.io/os"], "linux");
        assert_eq!(labels["node.kubernetes.io/instance-type"], "hollow");
        assert_eq!(labels["skiff.io/pool"], "hollow", "--node-labels");
        let status = node.status.as_ref().unwrap();
        let capacity = status.capacity.as_ref().unwrap();
        let allocatable = status.allocatable.as_ref().unwrap();
        assert_eq!(capacity["cpu"].0, "8");
        assert_eq!(capacity["memory"].0, "32Gi");
        assert_eq!(allocatable["pods"].0, "110");
        assert!(capacity.contains_key("ephemeral-storage"));
        let gpus = allocatable.get("nvidia.com/gpu").map(|q| q.0.as_str());
        if i == 0 {
            assert_eq!(gpus, Some("4"), "the first node has GPUs");
            assert_eq!(labels["skiff.io/gpu"], "true");
        } else {
            assert_eq!(gpus, None, "{} has no GPUs", name(i));
            assert!(!labels.contains_key("skiff.io/gpu"));
        }
        let conditions = status.conditions.as_ref().unwrap();
        let ready = conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.reason.as_deref(), Some("KubeletReady"));
        for pressure in ["MemoryPressure", "DiskPressure", "PIDPressure"] {
            assert_eq!(conditions.iter().find(|c| c.type_ == pressure).unwrap().status, "False", "{pressure}");
        }
        let addresses = status.addresses.as_ref().unwrap();
        assert!(addresses.iter().any(|a| a.type_ == "InternalIP" && !a.address.is_empty()));
        assert_eq!(status.node_info.as_ref().unwrap().kubelet_version, "skiff-hollow");
    }

    // Every node's Lease is held by the node and keeps being renewed.
    for i in 0..NODES {
        let lease =
            eventually("a lease", || async { client.api::<Lease>("kube-node-lease").get(&name(i)).await.ok() }).await;
        let spec = lease.spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some(name(i).as_str()));
        assert_eq!(spec.lease_duration_seconds, Some(40));
    }
    let first = renew_time(&client, &name(3)).await.expect("renewTime");
    let second = renewed_after(&client, &name(3), &first).await;
    renewed_after(&client, &name(3), &second).await;

    // Ready once every node is registered, with the counts on /metrics.
    eventually("/readyz", || async { (http_get(metrics, "/readyz").await.0 == 200).then_some(()) }).await;
    let (_, body) = http_get(metrics, "/metrics").await;
    assert!(body.contains("skiff_hollow_nodes_registered 5"), "{body}");
    assert!(body.contains("skiff_hollow_heartbeats_total"), "{body}");
}

#[tokio::test]
async fn pods_bound_to_hollow_nodes_run_and_are_removed_when_deleted() {
    let (mut cluster, _) = hollow_cluster().await;
    let client = cluster.client();
    wait_all_ready(&client).await;

    create_bound(&client, "web-1", &name(2)).await;
    create_bound(&client, "web-2", &name(2)).await;
    let one = wait_running(&client, "web-1").await;
    let two = wait_running(&client, "web-2").await;
    for p in [&one, &two] {
        let status = p.status.as_ref().unwrap();
        let ip = status.pod_ip.as_deref().unwrap_or("");
        assert!(ip.starts_with("10.42.2."), "a pod IP from node 2's slice of --pod-cidr-base: {ip:?}");
        assert!(status.host_ip.as_deref().is_some_and(|h| !h.is_empty()));
        assert!(status.start_time.is_some());
        let conditions = status.conditions.as_ref().unwrap();
        for ty in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
            assert!(conditions.iter().any(|c| c.type_ == ty && c.status == "True"), "{ty} True");
        }
        let container = &status.container_statuses.as_ref().unwrap()[0];
        assert!(container.ready && container.started == Some(true));
        assert_eq!(container.restart_count, 0);
        assert!(container.container_id.as_deref().unwrap().starts_with("hollow://"));
        assert!(container.state.as_ref().unwrap().running.is_some());
    }
    assert_ne!(
        one.status.as_ref().unwrap().pod_ip,
        two.status.as_ref().unwrap().pod_ip,
        "pod IPs are unique on a node"
    );

    // A pod bound while the kubelet is down starts once it is back, with an
    // address none of the pods already running there has.
    cluster.stop_service("kubelet");
    create_bound(&client, "web-3", &name(2)).await;
    let metrics = cluster.start_service("kubelet", "skiff-kubelet", &hollow_args()).await.expect("restart");
    let three = wait_running(&client, "web-3").await;
    let ip = three.status.unwrap().pod_ip.unwrap();
    assert!(ip.starts_with("10.42.2.") && Some(&ip) != one.status.as_ref().unwrap().pod_ip.as_ref());
    assert_ne!(Some(&ip), two.status.as_ref().unwrap().pod_ip.as_ref(), "no address handed out twice after a restart");

    // A pod that nobody binds stays Pending: hollow nodes only run their own.
    client.api::<Pod>("default").create(&pod("unbound")).await.unwrap();

    let pods = client.api::<Pod>("default");
    pods.delete("web-1").await.unwrap();
    eventually("web-1 gone", || async { pods.get("web-1").await.err().filter(|e| e.is_not_found()).map(|_| ()) }).await;

    // A pod being deleted (held by a finalizer here, so it lingers with a
    // deletionTimestamp) is deleted again by its kubelet, and goes once
    // the finalizer is removed.
    let mut held = pod("held");
    held.metadata.finalizers = Some(vec!["skiff.io/test".into()]);
    let uid = pods.create(&held).await.unwrap().metadata.uid.unwrap();
    client.bind("default", "held", &name(4), &uid).await.unwrap();
    wait_running(&client, "held").await;
    // (web-1's graceful deletion may or may not have gone through the
    // kubelet too: count from what the metric says now.)
    let deleted_total = || async {
        let (_, body) = http_get(metrics, "/metrics").await;
        body.lines()
            .find_map(|l| l.strip_prefix("skiff_hollow_pods_deleted_total "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let before = deleted_total().await;
    let deleting = pods.delete("held").await.unwrap();
    assert!(deleting.metadata.deletion_timestamp.is_some());
    eventually("the kubelet's delete of held", || async { (deleted_total().await > before).then_some(()) }).await;
    pods.patch("held", &json!({"metadata": {"finalizers": null}})).await.unwrap();
    eventually("held gone", || async { pods.get("held").await.err().filter(|e| e.is_not_found()).map(|_| ()) }).await;

    let unbound = pods.get("unbound").await.unwrap();
    assert_ne!(unbound.status.and_then(|s| s.phase).as_deref(), Some("Running"));
    // web-2 was left alone.
    assert_eq!(pods.get("web-2").await.unwrap().status.unwrap().phase.as_deref(), Some("Running"));
}

#[tokio::test]
async fn a_node_stopped_through_hollow_control_stops_heartbeats_until_revived() {
    let (cluster, metrics) = hollow_cluster().await;
    let client = cluster.client();
    wait_all_ready(&client).await;
    let stopped = name(1);
    let first = eventually("a lease", || renew_time(&client, &stopped)).await;
    renewed_after(&client, &stopped, &first).await;

    let control: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "hollow-control", "namespace": "kube-system"},
        "data": {"stopped": stopped}
    }))
    .unwrap();
    let config_maps = client.api::<ConfigMap>("kube-system");
    config_maps.create(&control).await.unwrap();

    // The kubelet has taken it in once it counts the node stopped (a still
    // quiet Lease alone could be a slow apiserver). A renewal already in
    // flight may land after that; then the Lease stays where it was while
    // another node's keeps moving.
    eventually("the kubelet to count one node stopped", || async {
        http_get(metrics, "/metrics").await.1.lines().any(|l| l == "skiff_hollow_nodes_stopped 1").then_some(())
    })
    .await;
    let frozen = eventually("the lease to stop moving", || async {
        let before = renew_time(&client, &stopped).await?;
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let after = renew_time(&client, &stopped).await?;
        (before == after).then_some(after)
    })
    .await;
    let other_before = renew_time(&client, &name(2)).await.unwrap();
    create_bound(&client, "on-dead-node", &stopped).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(renew_time(&client, &stopped).await.unwrap(), frozen, "a stopped node renews nothing");
    assert!(renew_time(&client, &name(2)).await.unwrap() > other_before, "the others carry on");
    let pending = client.api::<Pod>("default").get("on-dead-node").await.unwrap();
    assert_ne!(pending.status.and_then(|s| s.phase).as_deref(), Some("Running"), "a dead host starts nothing");

    // Off the list: heartbeats resume and its pod starts.
    config_maps.patch("hollow-control", &json!({"data": {"stopped": ""}})).await.unwrap();
    renewed_after(&client, &stopped, &frozen).await;
    let running = wait_running(&client, "on-dead-node").await;
    assert!(running.status.unwrap().pod_ip.unwrap().starts_with("10.42.1."));
}

// === skiffctl ===

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "skiffctl failed: {}{}", text(&out.stdout), text(&out.stderr));
    text(&out.stdout)
}

async fn unschedulable(client: &Client, node: &str) -> bool {
    let node = client.api::<Node>("").get(node).await.unwrap();
    node.spec.and_then(|s| s.unschedulable) == Some(true)
}

#[tokio::test]
async fn skiffctl_cordons_drains_scales_and_pauses() {
    let (cluster, _) = hollow_cluster().await;
    let client = cluster.client();
    wait_all_ready(&client).await;
    let node = name(0);

    assert_eq!(ok(&cluster.skiffctl(&["cordon", &node], None).unwrap()), format!("node/{node} cordoned\n"));
    assert!(unschedulable(&client, &node).await);
    let table = ok(&cluster.skiffctl(&["get", "nodes"], None).unwrap());
    assert!(table.lines().next().unwrap().split_whitespace().eq(["NAME", "STATUS", "ROLES", "AGE", "VERSION"]));
    let row = table.lines().find(|l| l.starts_with(&node)).unwrap().split_whitespace().collect::<Vec<_>>();
    assert_eq!((row[1], row[2], row[4]), ("Ready,SchedulingDisabled", "<none>", "skiff-hollow"), "{table}");
    assert_eq!(ok(&cluster.skiffctl(&["uncordon", &node], None).unwrap()), format!("node/{node} uncordoned\n"));
    assert!(!unschedulable(&client, &node).await);

    // Drain: a pod without a controller holds it up unless --force.
    let drained = name(3);
    create_bound(&client, "bare", &drained).await;
    let out = cluster.skiffctl(&["drain", &drained, "--timeout", "60s"], None).unwrap();
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("cannot delete Pods that declare no controller"), "{}", text(&out.stderr));
    assert!(unschedulable(&client, &drained).await, "drain cordons first");
    assert!(client.api::<Pod>("default").get("bare").await.is_ok(), "nothing deleted when refused");
    let stdout = ok(&cluster
        .skiffctl(&["drain", &drained, "--force", "--ignore-daemonsets", "--timeout", "60s"], None)
        .unwrap());
    assert!(stdout.contains("pod/bare deleted") && stdout.contains(&format!("node/{drained} drained")), "{stdout}");
    assert!(client.api::<Pod>("default").get("bare").await.unwrap_err().is_not_found());

    // scale and rollout pause|resume on a Deployment.
    let web: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "busybox"}]}}
        }
    }))
    .unwrap();
    let deployments = client.api::<Deployment>("default");
    deployments.create(&web).await.unwrap();
    assert_eq!(
        ok(&cluster.skiffctl(&["scale", "deploy", "web", "--replicas", "3"], None).unwrap()),
        "deployment.apps/web scaled\n"
    );
    assert_eq!(deployments.get("web").await.unwrap().spec.replicas, Some(3));
    assert_eq!(
        ok(&cluster.skiffctl(&["scale", "deployment/web", "--replicas=2"], None).unwrap()),
        "deployment.apps/web scaled\n"
    );
    assert_eq!(deployments.get("web").await.unwrap().spec.replicas, Some(2));

    assert_eq!(
        ok(&cluster.skiffctl(&["rollout", "pause", "deploy/web"], None).unwrap()),
        "deployment.apps/web paused\n"
    );
    assert_eq!(deployments.get("web").await.unwrap().spec.paused, Some(true));
    let out = cluster.skiffctl(&["rollout", "undo", "deployment", "web"], None).unwrap();
    assert!(!out.status.success() && text(&out.stderr).contains("paused"), "{}", text(&out.stderr));
    assert_eq!(
        ok(&cluster.skiffctl(&["rollout", "resume", "deployment", "web"], None).unwrap()),
        "deployment.apps/web resumed\n"
    );
    assert_ne!(deployments.get("web").await.unwrap().spec.paused, Some(true));

    let out = cluster.skiffctl(&["scale", "svc", "web", "--replicas", "1"], None).unwrap();
    assert!(!out.status.success());
}
