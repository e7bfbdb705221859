//! skiff-scheduler against a real etcd and apiserver. Nodes are plain Node
//! objects with a Ready condition and allocatable resources (no kubelet):
//! pods land only where they fit; a pod no node fits is told why and waits
//! for a node that fits; two replicas bind every pod exactly once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};
use skiff_client::{Client, ListParams, WatchEvent};
use skiff_testkit::{eventually, Cluster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NS: &str = "default";

fn node(name: &str, allocatable: Value, labels: Value, spec: Value, ready: bool) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "spec": spec,
        "status": {
            "capacity": allocatable.clone(),
            "allocatable": allocatable,
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }, "reason": "Test"}],
        },
    })
}

fn pod(name: &str, requests: Value, spec: Value) -> Value {
    let mut spec = if spec.is_null() { json!({}) } else { spec };
    spec["containers"] = json!([{"name": "c", "image": "busybox", "resources": {"requests": requests}}]);
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec})
}

async fn create_nodes(client: &Client, nodes: &[Value]) {
    for n in nodes {
        client.create("Node", "", n).await.expect("create node");
    }
}

async fn node_of(client: &Client, name: &str) -> Option<String> {
    let p = client.get("Pod", NS, name).await.ok()?;
    p.pointer("/spec/nodeName").and_then(Value::as_str).filter(|n| !n.is_empty()).map(str::to_string)
}

/// GET http://addr/path, the body.
async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect to metrics");
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()
}

/// The value of one sample (`name{labels}`) in a /metrics body.
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// A replica that competes for the lease. Short timings, but a renew
/// deadline a loaded CI machine meets: a replica that misses it exits.
fn scheduler_args(identity: &str) -> Vec<String> {
    vec![
        format!("--leader-elect-identity={identity}"),
        "--lease-duration=6s".into(),
        "--renew-deadline=4s".into(),
        "--retry-period=500ms".into(),
    ]
}

#[tokio::test]
async fn pods_land_only_on_nodes_that_fit() {
    let mut cluster = Cluster::start().await.expect("cluster");
    let client = cluster.client();
    let cpu = |c: &str| json!({"cpu": c, "memory": "16Gi", "pods": "110"});
    create_nodes(
        &client,
        &[
            node("small", cpu("1"), json!({}), json!({}), true),
            node("big", cpu("8"), json!({"zone": "b", "disk": "ssd"}), json!({}), true),
            node(
                "gpu",
                json!({"cpu": "8", "memory": "16Gi", "pods": "110", "nvidia.com/gpu": "2"}),
                json!({"accel": "gpu"}),
                json!({}),
                true,
            ),
            node(
                "infra",
                cpu("16"),
                json!({"role": "infra"}),
                json!({"taints": [{"key": "dedicated", "value": "infra", "effect": "NoSchedule"}]}),
                true,
            ),
            node("notready", cpu("64"), json!({}), json!({}), false),
            node("cordoned", cpu("64"), json!({"name": "cordoned"}), json!({"unschedulable": true}), true),
        ],
    )
    .await;
    // One replica, no lease to lose (a missed renewal would end the scheduler).
    let metrics =
        cluster.start_service("scheduler", "skiff-scheduler", &["--leader-elect=false".into()]).await.expect("start");
    eventually("/readyz", || async { (http_get(metrics, "/readyz").await == "ok").then_some(()) }).await;

    let mut expected: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for i in 0..3 {
        let name = format!("cpu2-{i}");
        client.create("Pod", NS, &pod(&name, json!({"cpu": "2"}), Value::Null)).await.unwrap();
        expected.insert(name, vec!["big", "gpu"]);
    }
    let cases = [
        ("gpu-pod", json!({"nvidia.com/gpu": "1"}), json!({}), "gpu"),
        (
            "tolerant",
            json!({"cpu": "100m"}),
            json!({"nodeSelector": {"role": "infra"},
                   "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}]}),
            "infra",
        ),
        ("selector", json!({"cpu": "100m"}), json!({"nodeSelector": {"disk": "ssd"}}), "big"),
        (
            "affinity",
            json!({"cpu": "100m"}),
            json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "zone", "operator": "In", "values": ["a", "b"]},
                    {"key": "accel", "operator": "DoesNotExist"},
                ]}]
            }}}}),
            "big",
        ),
        (
            "cordon-tolerant",
            json!({"cpu": "10"}),
            json!({"nodeSelector": {"name": "cordoned"},
                   "tolerations": [{"key": "node.kubernetes.io/unschedulable", "operator": "Exists"}]}),
            "cordoned",
        ),
    ];
    for (name, requests, spec, node) in cases {
        client.create("Pod", NS, &pod(name, requests, spec)).await.unwrap();
        expected.insert(name.to_string(), vec![node]);
    }
    // Tainted node, no toleration: only the infra node matches the
    // selector, so this one must stay pending.
    client.create("Pod", NS, &pod("intolerant", json!({}), json!({"nodeSelector": {"role": "infra"}}))).await.unwrap();

    for (name, allowed) in &expected {
        let bound = eventually(&format!("{name} bound"), || node_of(&client, name)).await;
        assert!(allowed.contains(&bound.as_str()), "{name} landed on {bound}, allowed {allowed:?}");
        let p = client.get("Pod", NS, name).await.unwrap();
        let scheduled = p["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "PodScheduled");
        assert_eq!(scheduled.unwrap()["status"], "True", "{name}");
    }
    let message = eventually("intolerant reported unschedulable", || async {
        let p = client.get("Pod", NS, "intolerant").await.ok()?;
        let c = p["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "PodScheduled")?.clone();
        (c["status"] == "False").then(|| c["message"].as_str().unwrap_or_default().to_string())
    })
    .await;
    assert!(message.starts_with("0/6 nodes are available: "), "{message}");
    assert!(message.contains("1 node(s) had untolerated taint {dedicated: infra}"), "{message}");
    assert!(message.contains("3 node(s) didn't match Pod's node affinity/selector"), "{message}");
    assert!(message.contains("1 node(s) were not ready"), "{message}");
    assert!(message.contains("1 node(s) were unschedulable"), "{message}");
    assert_eq!(node_of(&client, "intolerant").await, None);

    let body = http_get(metrics, "/metrics").await;
    assert_eq!(
        sample(&body, "skiff_scheduler_schedule_attempts_total{result=\"scheduled\"}"),
        Some(expected.len() as f64)
    );
    assert_eq!(sample(&body, "skiff_scheduler_schedule_attempts_total{result=\"error\"}"), Some(0.0));
    assert_eq!(sample(&body, "skiff_scheduler_leader"), Some(1.0));
}

#[tokio::test]
async fn unschedulable_pod_is_told_why_and_scheduled_once_a_node_fits() {
    let mut cluster = Cluster::start().await.expect("cluster");
    let client = cluster.client();
    let cpu = |c: &str| json!({"cpu": c, "memory": "8Gi", "pods": "110"});
    create_nodes(
        &client,
        &[
            node("a", cpu("1"), json!({}), json!({}), true),
            node("b", cpu("1"), json!({}), json!({}), true),
            node(
                "t",
                cpu("8"),
                json!({}),
                json!({"taints": [{"key": "key", "value": "value", "effect": "NoSchedule"}]}),
                true,
            ),
        ],
    )
    .await;
    // A condition of someone else's, which the scheduler must keep.
    client.create("Pod", NS, &pod("big", json!({"cpu": "4"}), Value::Null)).await.unwrap();
    let mut p = client.get("Pod", NS, "big").await.unwrap();
    p["status"]["conditions"] = json!([{"type": "Custom", "status": "True"}]);
    client.update_status("Pod", NS, &p).await.unwrap();
    // This one runs without leader election.
    let metrics =
        cluster.start_service("scheduler", "skiff-scheduler", &["--leader-elect=false".into()]).await.expect("start");

    let want = "0/3 nodes are available: 2 Insufficient cpu, 1 node(s) had untolerated taint {key: value}.";
    let conditions = eventually("PodScheduled=False", || async {
        let p = client.get("Pod", NS, "big").await.ok()?;
        let cs = p["status"]["conditions"].as_array()?.clone();
        cs.iter().any(|c| c["type"] == "PodScheduled" && c["status"] == "False").then_some(cs)
    })
    .await;
    let scheduled = conditions.iter().find(|c| c["type"] == "PodScheduled").unwrap();
    assert_eq!(scheduled["reason"], "Unschedulable");
    assert_eq!(scheduled["message"], want);

    // Matched on the message: each attempt records an Event, and one from
    // an earlier attempt may say something else.
    let event = eventually(&format!("FailedScheduling event {want:?}"), || async {
        let events = client.list("Event", NS, &ListParams::default()).await.ok()?;
        events
            .items
            .into_iter()
            .find(|e| e["involvedObject"]["name"] == "big" && e["reason"] == "FailedScheduling" && e["message"] == want)
    })
    .await;
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["source"]["component"], "default-scheduler");

    // Parked, not retried in a loop: with nothing changing, a few seconds
    // bring no new attempts.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let body = http_get(metrics, "/metrics").await;
    let attempts = sample(&body, "skiff_scheduler_schedule_attempts_total{result=\"unschedulable\"}").unwrap();
    assert!((1.0..=2.0).contains(&attempts), "unschedulable attempts: {attempts}");
    assert_eq!(sample(&body, "skiff_scheduler_pending_pods{queue=\"unschedulable\"}"), Some(1.0));
    assert_eq!(node_of(&client, "big").await, None);

    create_nodes(&client, &[node("c", cpu("8"), json!({}), json!({}), true)]).await;
    let bound = eventually("big bound after node c came", || node_of(&client, "big")).await;
    assert_eq!(bound, "c");
    let p = client.get("Pod", NS, "big").await.unwrap();
    let cs = p["status"]["conditions"].as_array().unwrap();
    assert!(cs.iter().any(|c| c["type"] == "PodScheduled" && c["status"] == "True"), "{cs:?}");
    assert!(cs.iter().any(|c| c["type"] == "Custom"), "other conditions kept: {cs:?}");
}

#[tokio::test]
async fn two_replicas_bind_every_pod_exactly_once() {
    const PODS: usize = 200;
    let mut cluster = Cluster::start().await.expect("cluster");
    let client = cluster.client();
    let nodes: Vec<Value> = (0..10)
        .map(|i| {
            node(&format!("n{i}"), json!({"cpu": "100", "memory": "100Gi", "pods": "110"}), json!({}), json!({}), true)
        })
        .collect();
    create_nodes(&client, &nodes).await;
    let a = cluster.start_service("sched-a", "skiff-scheduler", &scheduler_args("sched-a")).await.expect("start a");
    let b = cluster.start_service("sched-b", "skiff-scheduler", &scheduler_args("sched-b")).await.expect("start b");

    // Watch every pod change from before the first pod exists.
    let start = client.list("Pod", NS, &ListParams::default()).await.unwrap();
    let mut watch = client.watch("Pod", NS, &ListParams::default(), &start.resource_version).await.unwrap();
    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel::<()>();
    let watcher = tokio::spawn(async move {
        // name → every distinct nodeName it had, in order.
        let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
        loop {
            tokio::select! {
                _ = &mut done_rx => break,
                ev = watch.next() => match ev {
                    Some(Ok(WatchEvent::Added(p) | WatchEvent::Modified(p))) => {
                        let name = p["metadata"]["name"].as_str().unwrap_or_default().to_string();
                        let node = p.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or_default();
                        let history = seen.entry(name).or_default();
                        if !node.is_empty() && history.last().map(String::as_str) != Some(node) {
                            history.push(node.to_string());
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => panic!("pod watch failed: {e}"),
                    None => panic!("pod watch ended"),
                },
            }
        }
        seen
    });

    let leader = || async {
        let lease = client.get("Lease", "kube-system", "skiff-scheduler").await.ok()?;
        lease["spec"]["holderIdentity"].as_str().map(str::to_string)
    };
    let first = eventually("a leader", leader).await;
    assert!(first == "sched-a" || first == "sched-b", "{first}");

    for i in 0..PODS / 2 {
        client.create("Pod", NS, &pod(&format!("p{i:03}"), json!({"cpu": "100m"}), Value::Null)).await.unwrap();
    }
    // Let the leader bind some, then kill it mid-stream: the other replica
    // must take over without binding anything twice.
    eventually("some pods bound", || async {
        let list = client.list("Pod", NS, &ListParams::default().fields("spec.nodeName!=")).await.ok()?;
        (list.items.len() >= PODS / 4).then_some(())
    })
    .await;
    cluster.kill_service(&first);
    let survivor = if first == "sched-a" { ("sched-b", b) } else { ("sched-a", a) };
    for i in PODS / 2..PODS {
        client.create("Pod", NS, &pod(&format!("p{i:03}"), json!({"cpu": "100m"}), Value::Null)).await.unwrap();
    }
    eventually("every pod bound", || async {
        let list = client.list("Pod", NS, &ListParams::default()).await.ok()?;
        let bound = list.items.iter().filter(|p| !p["spec"]["nodeName"].as_str().unwrap_or_default().is_empty());
        (bound.count() == PODS).then_some(())
    })
    .await;
    assert_eq!(eventually("new leader", leader).await, survivor.0);

    // Give the watch a moment to deliver the last binds, then stop it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = done_tx.send(());
    let seen = watcher.await.unwrap();
    assert_eq!(seen.len(), PODS);
    for (name, nodes) in &seen {
        assert_eq!(nodes.len(), 1, "{name} changed node: {nodes:?}");
    }
    let per_node = seen.values().fold(BTreeMap::<&str, usize>::new(), |mut m, n| {
        *m.entry(n[0].as_str()).or_default() += 1;
        m
    });
    assert!(per_node.len() >= 5, "pods spread over nodes: {per_node:?}");

    let body = http_get(survivor.1, "/metrics").await;
    assert_eq!(sample(&body, "skiff_scheduler_schedule_attempts_total{result=\"error\"}"), Some(0.0));
    assert_eq!(sample(&body, "skiff_scheduler_leader"), Some(1.0));
    let events = client.list("Event", NS, &ListParams::default()).await.unwrap();
    let failed: Vec<&Value> = events.items.iter().filter(|e| e["reason"] == "FailedScheduling").collect();
    assert!(failed.is_empty(), "FailedScheduling events: {failed:?}");
}
