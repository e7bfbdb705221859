//! The controller-manager against a real etcd and apiserver: Deployments
//! become ReplicaSets become pods, rolling updates keep within maxSurge and
//! maxUnavailable, rollbacks reuse the old ReplicaSet, the garbage collector
//! removes what a deleted owner leaves, orphans are adopted, nodes that stop
//! sending heartbeats are tainted and drained, and deleting a namespace
//! deletes its contents.
//!
//! No scheduler or kubelet runs here: a small stand-in ([`FakeKubelet`])
//! binds pods and marks them Running and Ready, as hollow nodes would.
//!
//! Build first: `cargo build -p skiff-apiserver -p skiff-controller-manager`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};
use skiff_client::{Client, ListParams, WatchEvent};
use skiff_testkit::{eventually, Cluster, EVENTUALLY};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

/// A cluster with a controller-manager using short node timings. Its
/// leader election keeps the defaults: no test here fails over, and a short
/// renew deadline missed on a loaded machine would stop the controllers.
async fn cluster() -> (Cluster, SocketAddr) {
    let mut cluster = Cluster::start().await.expect("cluster");
    let args: Vec<String> = ["--node-monitor-grace-period=3s", "--default-unreachable-toleration-seconds=2"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let metrics = cluster
        .start_service("controller-manager", "skiff-controller-manager", &args)
        .await
        .expect("controller-manager starts (build it with `cargo build -p skiff-controller-manager`)");
    (cluster, metrics)
}

fn name(obj: &Value) -> &str {
    obj["metadata"]["name"].as_str().unwrap_or_default()
}

fn uid(obj: &Value) -> &str {
    obj["metadata"]["uid"].as_str().unwrap_or_default()
}

fn controller_uid(obj: &Value) -> Option<&str> {
    obj["metadata"]["ownerReferences"]
        .as_array()?
        .iter()
        .find(|r| r["controller"] == true)
        .and_then(|r| r["uid"].as_str())
}

fn is_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

/// Reads, changes and writes back a Deployment as `kubectl edit` does,
/// reading again when the write loses to the controller's own status write.
async fn edit_deployment(client: &Client, name: &str, change: impl Fn(&mut Value)) {
    for _ in 0..20 {
        let mut d = client.get("Deployment", "default", name).await.unwrap();
        change(&mut d);
        match client.update("Deployment", "default", &d).await {
            Ok(_) => return,
            Err(e) if e.is_conflict() => continue,
            Err(e) => panic!("updating deployment {name}: {e}"),
        }
    }
    panic!("deployment {name}: 20 conflicts in a row");
}

fn image(pod: &Value) -> &str {
    pod["spec"]["containers"][0]["image"].as_str().unwrap_or_default()
}

fn deployment(name: &str, replicas: i64, image: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": image}]}
            }
        }
    })
}

async fn list(client: &Client, kind: &str, ns: &str, labels: &str) -> Vec<Value> {
    client.list(kind, ns, &ListParams::default().labels(labels)).await.expect("list").items
}

/// Pods, ReplicaSets, … of `kind` in `ns` controlled by the object with `owner_uid`.
async fn owned(client: &Client, kind: &str, ns: &str, owner_uid: &str) -> Vec<Value> {
    list(client, kind, ns, "").await.into_iter().filter(|o| controller_uid(o) == Some(owner_uid)).collect()
}

/// Binds a pod to `node` (if not bound yet) and reports it Running and Ready.
async fn make_ready(client: &Client, ns: &str, pod: &Value, node: &str) {
    let mut pod = pod.clone();
    if pod["spec"]["nodeName"].as_str().unwrap_or_default().is_empty() {
        match client.bind(ns, name(&pod), node, uid(&pod)).await {
            Ok(bound) => pod = bound,
            Err(_) => return, // deleted or bound meanwhile: the next round sees it
        }
    }
    let now = "2024-01-01T00:00:00Z";
    pod["status"]["phase"] = json!("Running");
    pod["status"]["conditions"] = json!([
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
        {"type": "Ready", "status": "True", "lastTransitionTime": now},
    ]);
    let _ = client.update_status("Pod", ns, &pod).await;
}

/// Stands in for the scheduler and the kubelets: every pod matching
/// `labels` in `ns` is bound and marked Ready shortly after it appears.
struct FakeKubelet(JoinHandle<()>);

impl FakeKubelet {
    fn start(client: Client, ns: &'static str, labels: &'static str) -> Self {
        Self(tokio::spawn(async move {
            loop {
                for pod in list(&client, "Pod", ns, labels).await {
                    if !is_ready(&pod) && pod["metadata"]["deletionTimestamp"].is_null() {
                        make_ready(&client, ns, &pod, "node-1").await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }))
    }
}

impl Drop for FakeKubelet {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One HTTP GET, for the controller-manager's /metrics and /readyz.
async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.expect("write");
    let mut body = String::new();
    stream.read_to_string(&mut body).await.expect("read");
    body
}

#[tokio::test]
async fn deployment_creates_and_scales_pods_through_a_replicaset() {
    let (cluster, metrics) = cluster().await;
    let client = cluster.client();
    let d = client.create("Deployment", "default", &deployment("web", 50, "web:1")).await.unwrap();

    let rs = eventually("one replica set owned by the deployment", || async {
        let rses = owned(&client, "ReplicaSet", "default", uid(&d)).await;
        (rses.len() == 1).then(|| rses[0].clone())
    })
    .await;
    let hash = rs["metadata"]["labels"]["pod-template-hash"].as_str().expect("pod-template-hash label").to_string();
    assert_eq!(name(&rs), format!("web-{hash}"));
    assert_eq!(rs["spec"]["replicas"], 50);
    assert_eq!(rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"], "1");
    assert_eq!(rs["metadata"]["ownerReferences"][0]["blockOwnerDeletion"], true);

    eventually("50 pods", || async { (owned(&client, "Pod", "default", uid(&rs)).await.len() == 50).then_some(()) })
        .await;
    // Expectations keep a lagging cache from creating more.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pods = owned(&client, "Pod", "default", uid(&rs)).await;
    assert_eq!(pods.len(), 50, "no duplicates");
    assert_eq!(list(&client, "Pod", "default", "").await.len(), 50);
    for pod in &pods {
        assert!(name(pod).starts_with(&format!("{}-", name(&rs))), "{}", name(pod));
        assert_eq!(pod["metadata"]["labels"]["app"], "web");
        assert_eq!(pod["metadata"]["labels"]["pod-template-hash"], hash.as_str());
        assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "ReplicaSet");
    }

    // Make 10 ready: the statuses follow.
    for pod in &pods[..10] {
        make_ready(&client, "default", pod, "node-1").await;
    }
    eventually("replica set and deployment status", || async {
        let rs = client.get("ReplicaSet", "default", name(&rs)).await.unwrap();
        let d = client.get("Deployment", "default", "web").await.unwrap();
        let ok = rs["status"]["replicas"] == 50
            && rs["status"]["readyReplicas"] == 10
            && rs["status"]["availableReplicas"] == 10
            && rs["status"]["fullyLabeledReplicas"] == 50
            && d["status"]["replicas"] == 50
            && d["status"]["updatedReplicas"] == 50
            && d["status"]["availableReplicas"] == 10
            && d["status"]["unavailableReplicas"] == 40
            && d["status"]["observedGeneration"] == d["metadata"]["generation"];
        ok.then_some(())
    })
    .await;

    // Scale down: the not-ready ones go first.
    edit_deployment(&client, "web", |d| d["spec"]["replicas"] = json!(12)).await;
    let left = eventually("12 pods", || async {
        let pods = owned(&client, "Pod", "default", uid(&rs)).await;
        (pods.len() == 12).then_some(pods)
    })
    .await;
    assert_eq!(left.iter().filter(|p| is_ready(p)).count(), 10, "the ready pods were kept");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(owned(&client, "Pod", "default", uid(&rs)).await.len(), 12);

    // Events, metrics, readiness and the lease.
    let events = list(&client, "Event", "default", "").await;
    let reasons: Vec<&str> = events.iter().filter_map(|e| e["reason"].as_str()).collect();
    for reason in ["ScalingReplicaSet", "SuccessfulCreate", "SuccessfulDelete"] {
        assert!(reasons.contains(&reason), "event {reason} in {reasons:?}");
    }
    let body = http_get(metrics, "/metrics").await;
    assert!(body.contains(r#"skiff_controller_reconcile_total{controller="replicaset",result="success"}"#), "{body}");
    assert!(body.contains(r#"skiff_controller_reconcile_duration_seconds_count{controller="deployment"}"#));
    assert!(http_get(metrics, "/readyz").await.starts_with("HTTP/1.1 200"));
    let lease = client.get("Lease", "kube-system", "skiff-controller-manager").await.unwrap();
    assert!(!lease["spec"]["holderIdentity"].as_str().unwrap_or_default().is_empty());
}

/// A controller-manager that competes for the lease: timings short enough
/// for a failover in a test, and a renew deadline a loaded machine meets.
fn candidate_args() -> Vec<String> {
    ["--lease-duration=6s", "--renew-deadline=4s", "--retry-period=500ms"].map(String::from).to_vec()
}

fn replica_set(name: &str, replicas: i64) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [{"name": "c", "image": format!("{name}:1")}]}}}})
}

/// Whether the controller-manager serving `metrics` has reconciled a
/// ReplicaSet: only the lease holder runs the controllers.
async fn has_reconciled_replicasets(metrics: SocketAddr) -> bool {
    http_get(metrics, "/metrics").await.contains(r#"skiff_controller_reconcile_total{controller="replicaset""#)
}

#[tokio::test]
async fn a_standby_controller_manager_takes_over_when_the_leader_dies() {
    let mut cluster = Cluster::start().await.expect("cluster");
    let mut metrics = HashMap::new();
    for id in ["cm-a", "cm-b"] {
        let mut args = candidate_args();
        args.push(format!("--leader-elect-identity={id}"));
        let addr = cluster.start_service(id, "skiff-controller-manager", &args).await.expect("start");
        metrics.insert(id, addr);
    }
    let client = cluster.client();
    let holder = || async {
        let lease = client.get("Lease", "kube-system", "skiff-controller-manager").await.ok()?;
        lease["spec"]["holderIdentity"].as_str().filter(|h| !h.is_empty()).map(str::to_string)
    };
    let before = client.create("ReplicaSet", "default", &replica_set("before", 2)).await.unwrap();
    eventually("2 pods of the first ReplicaSet", || async {
        (owned(&client, "Pod", "default", uid(&before)).await.len() == 2).then_some(())
    })
    .await;
    // The lease names the leader (a loaded machine may already have moved
    // it once; the holder now is the one to kill).
    let leader = eventually("a leader", holder).await;
    let standby = if leader == "cm-a" { "cm-b" } else { "cm-a" };
    eventually("the lease holder running the controllers", || async {
        has_reconciled_replicasets(metrics[leader.as_str()]).await.then_some(())
    })
    .await;

    cluster.kill_service(&leader);
    eventually("the lease taken by the standby", || async {
        (holder().await.as_deref() == Some(standby)).then_some(())
    })
    .await;
    let after = client.create("ReplicaSet", "default", &replica_set("after", 2)).await.unwrap();
    eventually("2 pods of a ReplicaSet created after the failover", || async {
        (owned(&client, "Pod", "default", uid(&after)).await.len() == 2).then_some(())
    })
    .await;
    assert!(has_reconciled_replicasets(metrics[standby]).await, "{standby} runs the controllers now");
}

/// Pod counts seen through a watch during a rollout.
#[derive(Debug, Default)]
struct Observed {
    max_pods: usize,
    min_ready: usize,
    events: usize,
}

/// Follows the pods matching `labels` from `version` on, recording the
/// most pods and the fewest ready ones at any point, until `stop`.
fn observe(
    client: Client,
    labels: &'static str,
    version: String,
    initial: Vec<Value>,
) -> (tokio::sync::oneshot::Sender<()>, JoinHandle<Observed>) {
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let mut pods: HashMap<String, bool> = initial.iter().map(|p| (name(p).to_string(), is_ready(p))).collect();
        let mut seen = Observed { max_pods: pods.len(), min_ready: pods.values().filter(|r| **r).count(), events: 0 };
        let params = ListParams::default().labels(labels);
        let mut watch = Box::pin(client.watch("Pod", "default", &params, &version).await.expect("watch"));
        loop {
            tokio::select! {
                _ = &mut stopped => return seen,
                ev = watch.next() => {
                    match ev.expect("watch open").expect("watch event") {
                        WatchEvent::Added(p) | WatchEvent::Modified(p) => {
                            pods.insert(name(&p).to_string(), is_ready(&p));
                        }
                        WatchEvent::Deleted(p) => {
                            pods.remove(name(&p));
                        }
                        WatchEvent::Bookmark(_) => continue,
                    }
                    seen.events += 1;
                    seen.max_pods = seen.max_pods.max(pods.len());
                    seen.min_ready = seen.min_ready.min(pods.values().filter(|r| **r).count());
                }
            }
        }
    });
    (stop, task)
}

#[tokio::test]
async fn rolling_update_stays_within_surge_and_unavailability_and_undo_restores_the_old_replicaset() {
    let (cluster, _) = cluster().await;
    let client = cluster.client();
    let _kubelet = FakeKubelet::start(client.clone(), "default", "app=roll");
    // 10 replicas, 25%/25%: at most 13 pods, at least 8 ready.
    client.create("Deployment", "default", &deployment("roll", 10, "roll:1")).await.unwrap();
    let d = eventually("first rollout complete", || async {
        let d = client.get("Deployment", "default", "roll").await.unwrap();
        let ready = list(&client, "Pod", "default", "app=roll").await.iter().filter(|p| is_ready(p)).count();
        (d["status"]["availableReplicas"] == 10 && ready == 10).then_some(d)
    })
    .await;
    let first_rs = owned(&client, "ReplicaSet", "default", uid(&d)).await.remove(0);
    assert_eq!(d["metadata"]["annotations"]["deployment.kubernetes.io/revision"], "1");
    let available = d["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Available").cloned();
    assert_eq!(available.unwrap()["status"], "True");

    let start = client.list("Pod", "default", &ListParams::default().labels("app=roll")).await.unwrap();
    let (stop, observer) = observe(client.clone(), "app=roll", start.resource_version, start.items);
    edit_deployment(&client, "roll", |d| d["spec"]["template"]["spec"]["containers"][0]["image"] = json!("roll:2"))
        .await;

    eventually("rollout to roll:2 complete", || async {
        let pods = list(&client, "Pod", "default", "app=roll").await;
        let d = client.get("Deployment", "default", "roll").await.unwrap();
        let done = pods.len() == 10
            && pods.iter().all(|p| image(p) == "roll:2" && is_ready(p))
            && d["status"]["updatedReplicas"] == 10
            && d["status"]["availableReplicas"] == 10
            && d["status"]["replicas"] == 10;
        done.then_some(())
    })
    .await;
    stop.send(()).unwrap();
    let seen = observer.await.unwrap();
    assert!(seen.events > 20, "the watch saw the rollout: {seen:?}");
    assert!(seen.max_pods <= 13, "never more than replicas + maxSurge pods: {seen:?}");
    assert!(seen.min_ready >= 8, "never fewer than replicas - maxUnavailable ready: {seen:?}");

    let rses = owned(&client, "ReplicaSet", "default", uid(&d)).await;
    assert_eq!(rses.len(), 2);
    let old = rses.iter().find(|rs| name(rs) == name(&first_rs)).unwrap();
    assert_eq!(old["spec"]["replicas"], 0);
    let new = rses.iter().find(|rs| name(rs) != name(&first_rs)).unwrap();
    assert_eq!(new["metadata"]["annotations"]["deployment.kubernetes.io/revision"], "2");
    let d = client.get("Deployment", "default", "roll").await.unwrap();
    assert_eq!(d["metadata"]["annotations"]["deployment.kubernetes.io/revision"], "2");
    let progressing =
        d["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Progressing").cloned();
    assert_eq!(progressing.unwrap()["reason"], "NewReplicaSetAvailable");

    // Undo: the old template back (as `skiffctl rollout undo` writes it).
    let mut template = old["spec"]["template"].clone();
    template["metadata"]["labels"].as_object_mut().unwrap().remove("pod-template-hash");
    edit_deployment(&client, "roll", |d| d["spec"]["template"] = template.clone()).await;
    eventually("rolled back to roll:1 on the first replica set", || async {
        let pods = list(&client, "Pod", "default", "app=roll").await;
        let rs = client.get("ReplicaSet", "default", name(&first_rs)).await.ok()?;
        let done = pods.len() == 10
            && pods.iter().all(|p| image(p) == "roll:1" && is_ready(p) && controller_uid(p) == Some(uid(&first_rs)))
            && rs["spec"]["replicas"] == 10;
        done.then_some(())
    })
    .await;
    let rses = owned(&client, "ReplicaSet", "default", uid(&d)).await;
    assert_eq!(rses.len(), 2, "the old replica set was reused, not recreated");
    let reused = rses.iter().find(|rs| name(rs) == name(&first_rs)).unwrap();
    assert_eq!(reused["metadata"]["annotations"]["deployment.kubernetes.io/revision"], "3");
    let d = eventually("deployment revision 3", || async {
        let d = client.get("Deployment", "default", "roll").await.unwrap();
        (d["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "3").then_some(d)
    })
    .await;
    assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["image"], "roll:1");
}

#[tokio::test]
async fn recreate_paused_and_history_limit() {
    let (cluster, _) = cluster().await;
    let client = cluster.client();
    let _kubelet = FakeKubelet::start(client.clone(), "default", "app=rec");
    let mut body = deployment("rec", 4, "rec:1");
    body["spec"]["strategy"] = json!({"type": "Recreate"});
    body["spec"]["revisionHistoryLimit"] = json!(1);
    let d = client.create("Deployment", "default", &body).await.unwrap();
    eventually("4 ready", || async {
        let pods = list(&client, "Pod", "default", "app=rec").await;
        (pods.len() == 4 && pods.iter().all(is_ready)).then_some(())
    })
    .await;

    // Recreate: the old pods are all gone before a new one exists.
    let start = client.list("Pod", "default", &ListParams::default().labels("app=rec")).await.unwrap();
    let mut watch = watch_from(&client, "Pod", "app=rec", &start.resource_version).await;
    for version in ["rec:2", "rec:3"] {
        edit_deployment(&client, "rec", |d| d["spec"]["template"]["spec"]["containers"][0]["image"] = json!(version))
            .await;
        eventually("recreated", || async {
            let pods = list(&client, "Pod", "default", "app=rec").await;
            (pods.len() == 4 && pods.iter().all(|p| image(p) == version && is_ready(p))).then_some(())
        })
        .await;
    }
    let mut live: HashMap<String, String> =
        start.items.iter().map(|p| (name(p).to_string(), image(p).to_string())).collect();
    let (mut created, mut deleted) = (HashMap::<String, usize>::new(), HashMap::<String, usize>::new());
    let every_version_replaced = |created: &HashMap<String, usize>, deleted: &HashMap<String, usize>| {
        let count = |m: &HashMap<String, usize>, v: &str| m.get(v).copied().unwrap_or_default();
        count(deleted, "rec:1") == 4
            && count(created, "rec:2") == 4
            && count(deleted, "rec:2") == 4
            && count(created, "rec:3") == 4
    };
    follow(&mut watch, "4 pods of rec:1 and rec:2 deleted, 4 of rec:2 and rec:3 created", |event| {
        match event {
            WatchEvent::Added(p) => {
                assert!(live.values().all(|img| img == image(&p)), "a {} pod while {live:?} live", image(&p));
                live.insert(name(&p).to_string(), image(&p).to_string());
                *created.entry(image(&p).to_string()).or_default() += 1;
            }
            WatchEvent::Deleted(p) => {
                live.remove(name(&p));
                *deleted.entry(image(&p).to_string()).or_default() += 1;
            }
            _ => {}
        }
        every_version_replaced(&created, &deleted)
    })
    .await;

    // History limit 1: rec:1's replica set is gone, rec:2's kept.
    let rses = eventually("old replica sets cleaned up", || async {
        let rses = owned(&client, "ReplicaSet", "default", uid(&d)).await;
        (rses.len() == 2).then_some(rses)
    })
    .await;
    let images: Vec<&str> = rses.iter().map(|rs| image(&rs["spec"]["template"])).collect();
    assert!(images.contains(&"rec:2") && images.contains(&"rec:3"), "{images:?}");

    // Paused: a template change rolls nothing, a scale still applies. The
    // window watched ends when the controller has acted on a later change
    // (a second scale), so it has seen the paused template more than once.
    let rs_start = client.list("ReplicaSet", "default", &ListParams::default().labels("app=rec")).await.unwrap();
    let templates: HashMap<String, Value> =
        rs_start.items.iter().map(|rs| (name(rs).to_string(), rs["spec"]["template"].clone())).collect();
    let mut rs_watch = watch_from(&client, "ReplicaSet", "app=rec", &rs_start.resource_version).await;
    let pod_start = client.list("Pod", "default", &ListParams::default().labels("app=rec")).await.unwrap();
    let mut pod_watch = watch_from(&client, "Pod", "app=rec", &pod_start.resource_version).await;
    edit_deployment(&client, "rec", |d| {
        d["spec"]["paused"] = json!(true);
        d["spec"]["replicas"] = json!(6);
        d["spec"]["template"]["spec"]["containers"][0]["image"] = json!("rec:4");
    })
    .await;
    eventually("Progressing=DeploymentPaused", || async {
        let d = client.get("Deployment", "default", "rec").await.ok()?;
        let progressing = d["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "Progressing")?.clone();
        (progressing["reason"] == "DeploymentPaused").then_some(())
    })
    .await;
    edit_deployment(&client, "rec", |d| d["spec"]["replicas"] = json!(5)).await;

    follow(&mut rs_watch, "rec:3's ReplicaSet scaled to 6, then 5, while paused", |event| {
        let (WatchEvent::Added(rs) | WatchEvent::Modified(rs)) = event else { return false };
        let Some(template) = templates.get(name(&rs)) else { panic!("a new ReplicaSet while paused: {rs}") };
        assert_eq!(&rs["spec"]["template"], template, "{} changed its template while paused", name(&rs));
        image(&rs["spec"]["template"]) == "rec:3" && rs["spec"]["replicas"] == 5
    })
    .await;
    let mut pods: usize = pod_start.items.len();
    let mut most = pods;
    follow(&mut pod_watch, "pods scaled to 6, then 5, while paused", |event| {
        match event {
            WatchEvent::Added(p) => {
                assert_eq!(image(&p), "rec:3", "no rollout while paused");
                pods += 1;
            }
            WatchEvent::Deleted(_) => pods -= 1,
            _ => {}
        }
        most = most.max(pods);
        most == 6 && pods == 5
    })
    .await;
}

/// A watch on the `kind` objects in `default` matching `labels`, from `version` on.
async fn watch_from(
    client: &Client,
    kind: &str,
    labels: &str,
    version: &str,
) -> impl futures::Stream<Item = skiff_client::Result<WatchEvent<Value>>> + Unpin {
    let params = ListParams::default().labels(labels);
    Box::pin(client.watch(kind, "default", &params, version).await.expect("watch"))
}

/// Feeds `watch`'s events to `done` until it returns true; panics naming
/// `what` when the watch ends or fails first, or after [`EVENTUALLY`].
async fn follow(
    watch: &mut (impl futures::Stream<Item = skiff_client::Result<WatchEvent<Value>>> + Unpin),
    what: &str,
    mut done: impl FnMut(WatchEvent<Value>) -> bool,
) {
    let deadline = tokio::time::Instant::now() + EVENTUALLY;
    loop {
        let next = tokio::time::timeout_at(deadline, watch.next()).await;
        let event = next.unwrap_or_else(|_| panic!("timed out waiting for {what}"));
        let event = event.unwrap_or_else(|| panic!("the watch ended before {what}"));
        if done(event.unwrap_or_else(|e| panic!("watch failed before {what}: {e}"))) {
            return;
        }
    }
}

#[tokio::test]
async fn progress_deadline_exceeded_when_pods_never_become_ready() {
    let (cluster, _) = cluster().await;
    let client = cluster.client();
    let mut body = deployment("stuck", 2, "stuck:1");
    body["spec"]["progressDeadlineSeconds"] = json!(2);
    client.create("Deployment", "default", &body).await.unwrap();
    let condition = eventually("ProgressDeadlineExceeded", || async {
        let d = client.get("Deployment", "default", "stuck").await.unwrap();
        let c = d["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "Progressing")?.clone();
        (c["reason"] == "ProgressDeadlineExceeded").then_some(c)
    })
    .await;
    assert_eq!(condition["status"], "False");
    let d = client.get("Deployment", "default", "stuck").await.unwrap();
    let available = d["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Available").cloned();
    assert_eq!(available.unwrap()["status"], "False");
}

#[tokio::test]
async fn deleting_a_deployment_collects_its_replicasets_and_pods() {
    let (cluster, _) = cluster().await;
    let client = cluster.client();
    let d = client.create("Deployment", "default", &deployment("gone", 5, "gone:1")).await.unwrap();
    eventually("5 pods", || async { (list(&client, "Pod", "default", "app=gone").await.len() == 5).then_some(()) })
        .await;
    assert_eq!(owned(&client, "ReplicaSet", "default", uid(&d)).await.len(), 1);
    client.delete("Deployment", "default", "gone").await.unwrap();
    eventually("replica sets and pods collected", || async {
        let rses = list(&client, "ReplicaSet", "default", "app=gone").await;
        let pods = list(&client, "Pod", "default", "app=gone").await;
        (rses.is_empty() && pods.is_empty()).then_some(())
    })
    .await;

    // Orphan propagation: the finalizer makes the collector strip the
    // references instead, and the pods stay.
    let d = client.create("Deployment", "default", &deployment("kept", 3, "kept:1")).await.unwrap();
    eventually("3 pods", || async { (list(&client, "Pod", "default", "app=kept").await.len() == 3).then_some(()) })
        .await;
    let rs = owned(&client, "ReplicaSet", "default", uid(&d)).await.remove(0);
    client.patch("ReplicaSet", "default", name(&rs), &json!({"metadata": {"finalizers": ["orphan"]}})).await.unwrap();
    client.delete("ReplicaSet", "default", name(&rs)).await.unwrap();
    // The deployment makes a new replica set, which adopts the orphans.
    eventually("orphaned pods adopted by the replacement replica set", || async {
        // The replacement has the same name (the same template hash).
        let gone = match client.get("ReplicaSet", "default", name(&rs)).await {
            Ok(now) => uid(&now) != uid(&rs),
            Err(e) => e.is_not_found(),
        };
        let pods = list(&client, "Pod", "default", "app=kept").await;
        let adopted = pods.len() == 3 && pods.iter().all(|p| controller_uid(p).is_some_and(|u| u != uid(&rs)));
        (gone && adopted).then_some(())
    })
    .await;

    // Foreground: the deployment stays until its replica sets and pods are gone.
    client
        .patch("Deployment", "default", "kept", &json!({"metadata": {"finalizers": ["foregroundDeletion"]}}))
        .await
        .unwrap();
    let marked = client.delete("Deployment", "default", "kept").await.unwrap();
    assert!(marked["metadata"]["deletionTimestamp"].is_string());
    eventually("foreground deletion finished", || async {
        let gone = client.get("Deployment", "default", "kept").await.is_err_and(|e| e.is_not_found());
        let rses = list(&client, "ReplicaSet", "default", "app=kept").await;
        let pods = list(&client, "Pod", "default", "app=kept").await;
        if gone {
            assert!(rses.is_empty() && pods.is_empty(), "owner went before its dependents");
        }
        gone.then_some(())
    })
    .await;
}

#[tokio::test]
async fn replicaset_adopts_a_matching_orphan_and_releases_a_relabelled_pod() {
    let (cluster, _) = cluster().await;
    let client = cluster.client();
    let orphan = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "orphan", "labels": {"app": "adopt"}},
        "spec": {"containers": [{"name": "c", "image": "adopt:1"}]}});
    client.create("Pod", "default", &orphan).await.unwrap();
    let rs = json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": "adopter"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "adopt"}},
                 "template": {"metadata": {"labels": {"app": "adopt"}},
                              "spec": {"containers": [{"name": "c", "image": "adopt:1"}]}}}});
    let rs = client.create("ReplicaSet", "default", &rs).await.unwrap();
    eventually("orphan adopted and one pod created", || async {
        let pods = list(&client, "Pod", "default", "app=adopt").await;
        let adopted = client.get("Pod", "default", "orphan").await.ok()?;
        let owner = adopted["metadata"]["ownerReferences"][0].clone();
        let ok = pods.len() == 2
            && owner["uid"] == uid(&rs)
            && owner["controller"] == true
            && owner["blockOwnerDeletion"] == true
            && pods.iter().all(|p| controller_uid(p) == Some(uid(&rs)));
        ok.then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(list(&client, "Pod", "default", "app=adopt").await.len(), 2);

    // Relabelled: released, and replaced.
    client.patch("Pod", "default", "orphan", &json!({"metadata": {"labels": {"app": "elsewhere"}}})).await.unwrap();
    eventually("released and replaced", || async {
        let released = client.get("Pod", "default", "orphan").await.ok()?;
        let pods = list(&client, "Pod", "default", "app=adopt").await;
        (controller_uid(&released).is_none() && pods.len() == 2).then_some(())
    })
    .await;
}

/// Keeps a node's lease fresh until dropped.
struct Heartbeat(JoinHandle<()>);

impl Heartbeat {
    fn start(client: Client, node: &'static str) -> Self {
        Self(tokio::spawn(async move {
            loop {
                let now = chrono_now();
                let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": node},
                    "spec": {"holderIdentity": node, "leaseDurationSeconds": 40, "renewTime": now}});
                match client.get("Lease", "kube-node-lease", node).await {
                    Ok(mut current) => {
                        current["spec"]["renewTime"] = json!(now);
                        let _ = client.update("Lease", "kube-node-lease", &current).await;
                    }
                    Err(_) => {
                        let _ = client.create("Lease", "kube-node-lease", &lease).await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }))
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Now as a MicroTime string.
fn chrono_now() -> String {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let secs = since.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        since.subsec_micros()
    )
}

fn node_pod(name: &str, tolerations: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "on-node"}},
        "spec": {"nodeName": "node-a", "tolerations": tolerations,
                 "containers": [{"name": "c", "image": "x:1"}]}})
}

fn taints(node: &Value) -> Vec<String> {
    node["spec"]["taints"]
        .as_array()
        .map(|t| {
            t.iter()
                .map(|t| format!("{}:{}", t["key"].as_str().unwrap_or(""), t["effect"].as_str().unwrap_or("")))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_node_without_heartbeats_is_tainted_and_its_pods_evicted() {
    let (cluster, _) = cluster().await;
    let client = cluster.client();
    let beat = Heartbeat::start(client.clone(), "node-a");
    let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"},
        "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]}});
    client.create("Node", "", &node).await.unwrap();
    client.create("Pod", "default", &node_pod("plain", json!([]))).await.unwrap();
    let forever = json!([{"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"}]);
    let stays = client.create("Pod", "default", &node_pod("stays", forever)).await.unwrap();
    make_ready(&client, "default", &stays, "node-a").await;
    let briefly = json!([{"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 1}]);
    client.create("Pod", "default", &node_pod("brief", briefly)).await.unwrap();

    // While the lease is renewed nothing happens.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let n = client.get("Node", "", "node-a").await.unwrap();
    assert!(taints(&n).is_empty(), "{:?}", taints(&n));
    assert_eq!(list(&client, "Pod", "default", "app=on-node").await.len(), 3);

    drop(beat);
    let n = eventually("Ready=Unknown and the unreachable taint", || async {
        let n = client.get("Node", "", "node-a").await.unwrap();
        let ready = n["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "Ready")?.clone();
        (ready["status"] == "Unknown" && taints(&n).contains(&"node.kubernetes.io/unreachable:NoExecute".into()))
            .then_some((n, ready))
    })
    .await;
    assert_eq!(n.1["reason"], "NodeStatusUnknown");
    assert!(n.0["spec"]["taints"][0]["timeAdded"].is_string());
    // Its pods stop counting as ready at once, before any eviction.
    eventually("the tolerating pod marked not ready", || async {
        let pod = client.get("Pod", "default", "stays").await.ok()?;
        let ready = pod["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "Ready")?.clone();
        (ready["status"] == "False" && ready["reason"] == "NodeNotReady").then_some(())
    })
    .await;

    // Evicted: deleted, though only marked so while the node's kubelet is
    // away to confirm it (as in Kubernetes).
    eventually("pods without a lasting toleration evicted", || async {
        let pods = list(&client, "Pod", "default", "app=on-node").await;
        let mut names: Vec<String> =
            pods.iter().filter(|p| p["metadata"]["deletionTimestamp"].is_null()).map(|p| name(p).to_string()).collect();
        names.sort();
        (names == ["stays"]).then_some(())
    })
    .await;
    let events = list(&client, "Event", "", "").await;
    assert!(events.iter().any(|e| e["reason"] == "NodeNotReady"), "NodeNotReady event");
    assert!(events.iter().any(|e| e["reason"] == "TaintManagerEviction"), "eviction event");

    // Heartbeats again: the taint goes, the tolerating pod is still there.
    let _beat = Heartbeat::start(client.clone(), "node-a");
    eventually("taint removed", || async {
        let n = client.get("Node", "", "node-a").await.unwrap();
        taints(&n).is_empty().then_some(())
    })
    .await;
    assert!(client.get("Pod", "default", "stays").await.is_ok());
}

#[tokio::test]
async fn deleting_a_namespace_deletes_its_contents_then_the_namespace() {
    let (cluster, _) = cluster().await;
    let client = cluster.client();
    let ns = client.create("Namespace", "", &json!({"metadata": {"name": "doomed"}})).await.unwrap();
    assert_eq!(ns["spec"]["finalizers"], json!(["kubernetes"]));
    assert_eq!(ns["status"]["phase"], "Active");
    client.create("Deployment", "doomed", &deployment("app", 3, "app:1")).await.unwrap();
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"k": "v"}});
    client.create("ConfigMap", "doomed", &cm).await.unwrap();
    eventually("3 pods in the namespace", || async {
        (list(&client, "Pod", "doomed", "").await.len() == 3).then_some(())
    })
    .await;

    let marked = client.delete("Namespace", "", "doomed").await.unwrap();
    assert!(marked["metadata"]["deletionTimestamp"].is_string(), "a namespace with contents is only marked");
    assert_eq!(marked["status"]["phase"], "Terminating");
    let err = client.create("ConfigMap", "doomed", &json!({"metadata": {"name": "late"}})).await.unwrap_err();
    assert!(err.is_precondition_failed(), "{err}");

    eventually("namespace and its contents gone", || async {
        let gone = client.get("Namespace", "", "doomed").await.is_err_and(|e| e.is_not_found());
        gone.then_some(())
    })
    .await;
    for kind in ["Pod", "ReplicaSet", "Deployment", "ConfigMap"] {
        assert!(list(&client, kind, "doomed", "").await.is_empty(), "{kind} left behind");
    }
}

/// A namespace's LimitRange fills its pods' resources and its ResourceQuota
/// bounds them: the controller-manager keeps the quota's usage, the
/// apiserver charges each new pod and refuses the one that would pass the
/// limit, naming the quota; a deleted pod gives its share back. skiffctl
/// shows both as kubectl does.
#[tokio::test]
async fn a_namespace_quota_bounds_its_pods_and_a_limit_range_fills_them() {
    let (cluster, _) = cluster().await;
    let client = cluster.client();
    client.create("Namespace", "", &json!({"metadata": {"name": "team"}})).await.unwrap();
    let range = json!({"metadata": {"name": "bounds"}, "spec": {"limits": [{"type": "Container",
        "default": {"cpu": "400m", "memory": "64Mi"}, "defaultRequest": {"cpu": "400m"}, "max": {"cpu": "1"}}]}});
    client.create("LimitRange", "team", &range).await.unwrap();
    let quota = json!({"metadata": {"name": "compute"}, "spec": {"hard": {"pods": "3", "requests.cpu": "1"}}});
    client.create("ResourceQuota", "team", &quota).await.unwrap();
    eventually("the quota's status", || async {
        let q = client.get("ResourceQuota", "team", "compute").await.ok()?;
        (q["status"]["used"]["pods"] == "0").then_some(())
    })
    .await;

    let pod =
        |name: &str| json!({"metadata": {"name": name}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
    let first = client.create("Pod", "team", &pod("a")).await.unwrap();
    assert_eq!(first["spec"]["containers"][0]["resources"]["requests"]["cpu"], "400m", "the LimitRange's default");
    client.create("Pod", "team", &pod("b")).await.unwrap();
    let refused = client.create("Pod", "team", &pod("c")).await.unwrap_err();
    let why = refused.to_string();
    assert!(
        why.contains(
            "exceeded quota: compute, requested: requests.cpu=400m, used: requests.cpu=800m, limited: requests.cpu=1"
        ),
        "{why}"
    );
    let too_big = json!({"metadata": {"name": "big"}, "spec": {"containers": [{"name": "c", "image": "busybox",
        "resources": {"limits": {"cpu": "2"}}}]}});
    let why = client.create("Pod", "team", &too_big).await.unwrap_err().to_string();
    assert!(why.contains("maximum cpu usage per Container is 1, but limit is 2"), "{why}");

    let out = cluster.skiffctl(&["get", "quota", "-n", "team"], None).unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("pods: 2/3, requests.cpu: 800m/1"), "{table}");
    let out = cluster.skiffctl(&["describe", "limitrange", "bounds", "-n", "team"], None).unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Container  cpu"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // A deleted pod's share comes back once the controller recounts.
    client.delete("Pod", "team", "a").await.unwrap();
    eventually("the quota to give back pod a's share", || async {
        let q = client.get("ResourceQuota", "team", "compute").await.ok()?;
        (q["status"]["used"]["requests.cpu"] == "400m").then_some(())
    })
    .await;
    client.create("Pod", "team", &pod("c")).await.expect("room again");
}

/// Hollow nodes for the DaemonSet test: `n` of them named `PREFIX0000`….
fn hollow_args(n: usize, prefix: &str) -> Vec<String> {
    [format!("--hollow-nodes={n}"), format!("--node-name-prefix={prefix}"), "--heartbeat-interval=1s".into()].to_vec()
}

/// The DaemonSet's live pods by node.
async fn daemon_pods(client: &Client, ds: &str) -> BTreeMap<String, Value> {
    let pods = client.list("Pod", "default", &Default::default()).await.map(|l| l.items).unwrap_or_default();
    pods.into_iter()
        .filter(|p| p["metadata"]["ownerReferences"][0]["name"] == ds && p["metadata"]["deletionTimestamp"].is_null())
        .filter_map(|p| Some((p["spec"]["nodeName"].as_str().filter(|n| !n.is_empty())?.to_string(), p)))
        .collect()
}

/// A DaemonSet runs one pod on every node, through the scheduler: on a node
/// that joins later too; a removed node's pod goes; a new template rolls
/// over every node.
#[tokio::test]
async fn a_daemon_set_runs_on_every_node_including_one_that_joins_later() {
    let (mut cluster, _) = cluster().await;
    cluster.start_service("scheduler", "skiff-scheduler", &[]).await.unwrap();
    cluster.start_service("hollow", "skiff-kubelet", &hollow_args(2, "base-")).await.unwrap();
    let client = cluster.client();
    let ds = json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent"},
        "spec": {"selector": {"matchLabels": {"app": "agent"}},
            "template": {"metadata": {"labels": {"app": "agent"}}, "spec": {"containers": [{"name": "c", "image": "busybox:1"}]}}}});
    client.create("DaemonSet", "default", &ds).await.unwrap();
    let placed = eventually("a daemon pod on each of the two nodes", || async {
        let pods = daemon_pods(&client, "agent").await;
        (pods.keys().collect::<Vec<_>>() == ["base-0000", "base-0001"]).then_some(pods)
    })
    .await;
    assert!(placed.values().all(|p| p["spec"]["affinity"]["nodeAffinity"].is_object()), "pinned through the scheduler");

    cluster.start_service("late", "skiff-kubelet", &hollow_args(1, "late-")).await.unwrap();
    eventually("the joining node's pod", || async {
        daemon_pods(&client, "agent").await.contains_key("late-0000").then_some(())
    })
    .await;
    let status = eventually("status counting three nodes", || async {
        let ds = client.get("DaemonSet", "default", "agent").await.ok()?;
        (ds["status"]["desiredNumberScheduled"] == 3 && ds["status"]["currentNumberScheduled"] == 3).then_some(ds)
    })
    .await;
    assert_eq!(status["status"]["numberMisscheduled"], 0);

    // The late node goes away: so does its pod.
    cluster.stop_service("late");
    client.delete("Node", "", "late-0000").await.unwrap();
    eventually("the removed node's pod gone", || async {
        let pods = daemon_pods(&client, "agent").await;
        (pods.keys().collect::<Vec<_>>() == ["base-0000", "base-0001"]).then_some(())
    })
    .await;

    // A new template rolls over both nodes.
    let mut live = client.get("DaemonSet", "default", "agent").await.unwrap();
    live["spec"]["template"]["spec"]["containers"][0]["image"] = json!("busybox:2");
    client.update("DaemonSet", "default", &live).await.unwrap();
    eventually("every node on the new template", || async {
        let pods = daemon_pods(&client, "agent").await;
        let updated = pods.values().filter(|p| p["spec"]["containers"][0]["image"] == "busybox:2").count();
        (pods.len() == 2 && updated == 2).then_some(())
    })
    .await;
    let out = cluster.skiffctl(&["rollout", "status", "ds/agent", "--timeout", "60s"], None).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("daemon set \"agent\" successfully rolled out"), "{text}");
}

async fn job_pods(client: &Client, job_uid: &str) -> Vec<Value> {
    owned(client, "Pod", "default", job_uid).await
}

fn condition(obj: &Value, type_: &str) -> bool {
    obj["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == type_ && c["status"] == "True")
}

/// A Job on hollow nodes (whose job pods succeed as soon as they run):
/// every pod counted once, the tracking finalizers gone, Complete, and
/// deleted with its pods once its TTL after finishing has passed.
#[tokio::test]
async fn a_job_counts_each_pod_once_completes_and_expires() {
    let (mut cluster, _) = cluster().await;
    cluster.start_service("scheduler", "skiff-scheduler", &[]).await.unwrap();
    cluster.start_service("hollow", "skiff-kubelet", &hollow_args(2, "job-")).await.unwrap();
    let client = cluster.client();
    let job = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "count"},
        "spec": {"completions": 5, "parallelism": 2,
            "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox:1"}]}}}});
    let created = client.create("Job", "default", &job).await.unwrap();
    let job_uid = uid(&created).to_string();
    let done = eventually("the Job Complete", || async {
        let job = client.get("Job", "default", "count").await.ok()?;
        condition(&job, "Complete").then_some(job)
    })
    .await;
    assert_eq!(done["status"]["succeeded"], 5, "{done}");
    assert!(done["status"]["failed"].is_null() || done["status"]["failed"] == 0, "{done}");
    assert_eq!(done["status"]["active"], 0);
    assert!(done["status"]["completionTime"].is_string());
    let uncounted = &done["status"]["uncountedTerminatedPods"];
    assert!(uncounted["succeeded"].as_array().is_none_or(Vec::is_empty), "{uncounted}");
    let pods = job_pods(&client, &job_uid).await;
    assert_eq!(pods.len(), 5, "one pod per completion, none extra");
    for pod in &pods {
        assert_eq!(pod["status"]["phase"], "Succeeded", "{pod}");
        assert!(pod["metadata"]["finalizers"].as_array().is_none_or(Vec::is_empty), "released: {pod}");
        assert_eq!(pod["metadata"]["labels"]["batch.kubernetes.io/job-name"], "count");
    }
    let out = cluster.skiffctl(&["get", "jobs"], None).unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("COMPLETIONS") && table.contains("Complete") && table.contains("5/5"), "{table}");

    // A TTL after finishing: the Job goes, and its pods with it.
    client.patch("Job", "default", "count", &json!({"spec": {"ttlSecondsAfterFinished": 1}})).await.unwrap();
    eventually("the expired Job and its pods gone", || async {
        let gone = client.get("Job", "default", "count").await.is_err_and(|e| e.is_not_found());
        (gone && job_pods(&client, &job_uid).await.is_empty()).then_some(())
    })
    .await;
}

/// A CronJob firing every minute with concurrencyPolicy Forbid: its first
/// Job never ends (it is suspended), so the next minute is skipped
/// (JobAlreadyActive); once that Job is let go and completes, the missed
/// run starts late, as Kubernetes catches up at most one. A Job made by
/// hand from it (`create job --from`) carries the template.
#[tokio::test]
async fn a_cron_job_runs_every_minute_and_forbid_skips_while_one_runs() {
    let (mut cluster, _) = cluster().await;
    cluster.start_service("scheduler", "skiff-scheduler", &[]).await.unwrap();
    cluster.start_service("hollow", "skiff-kubelet", &hollow_args(1, "cron-")).await.unwrap();
    let client = cluster.client();
    let cj = json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "tick"},
        "spec": {"schedule": "* * * * *", "concurrencyPolicy": "Forbid",
            "jobTemplate": {"metadata": {"labels": {"app": "tick"}}, "spec": {"suspend": true,
                "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox:1"}]}}}}}});
    let created = client.create("CronJob", "default", &cj).await.unwrap();
    let cj_uid = uid(&created).to_string();
    let first = eventually("the first scheduled Job", || async {
        let jobs = owned(&client, "Job", "default", &cj_uid).await;
        jobs.into_iter().next()
    })
    .await;
    let first_name = name(&first).to_string();
    let minutes: i64 = first_name.strip_prefix("tick-").unwrap().parse().unwrap();
    assert_eq!(first["metadata"]["labels"]["app"], "tick");
    let scheduled =
        first["metadata"]["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"].as_str().unwrap();
    assert_eq!(chrono::DateTime::parse_from_rfc3339(scheduled).unwrap().timestamp(), minutes * 60);
    let status = client.get("CronJob", "default", "tick").await.unwrap();
    assert_eq!(status["status"]["active"][0]["name"], first_name.as_str(), "{status}");

    eventually("a JobAlreadyActive event at the next minute", || async {
        let events = client.list("Event", "default", &ListParams::default()).await.ok()?.items;
        events.iter().any(|e| e["involvedObject"]["name"] == "tick" && e["reason"] == "JobAlreadyActive").then_some(())
    })
    .await;
    assert_eq!(owned(&client, "Job", "default", &cj_uid).await.len(), 1, "Forbid: no second Job while one runs");

    // Let the first Job run: it completes, and the missed minute runs late.
    client.patch("Job", "default", &first_name, &json!({"spec": {"suspend": false}})).await.unwrap();
    let second = eventually("the missed run started once the first Job completed", || async {
        let jobs = owned(&client, "Job", "default", &cj_uid).await;
        jobs.into_iter().find(|j| name(j) != first_name)
    })
    .await;
    let second_minutes: i64 = name(&second).strip_prefix("tick-").unwrap().parse().unwrap();
    assert!(second_minutes > minutes, "{} after {first_name}", name(&second));
    let status = eventually("lastSuccessfulTime set", || async {
        let cj = client.get("CronJob", "default", "tick").await.ok()?;
        cj["status"]["lastSuccessfulTime"].is_string().then_some(cj)
    })
    .await;
    assert!(status["status"]["lastScheduleTime"].is_string(), "{status}");

    let out = cluster.skiffctl(&["create", "job", "tick-now", "--from=cronjob/tick"], None).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let manual = client.get("Job", "default", "tick-now").await.unwrap();
    assert_eq!(manual["metadata"]["annotations"]["cronjob.kubernetes.io/instantiate"], "manual");
    assert_eq!(manual["metadata"]["ownerReferences"][0]["uid"], cj_uid.as_str());
    let out = cluster.skiffctl(&["get", "cronjobs"], None).unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("SCHEDULE") && table.contains("* * * * *"), "{table}");
}

async fn set_pods(client: &Client) -> BTreeMap<String, Value> {
    let pods = list(client, "Pod", "default", "app=db").await;
    pods.into_iter().map(|p| (name(&p).to_string(), p)).collect()
}

async fn claim_names(client: &Client) -> Vec<String> {
    let mut names: Vec<String> =
        list(client, "PersistentVolumeClaim", "default", "app=db").await.iter().map(|c| name(c).to_string()).collect();
    names.sort();
    names
}

fn ready_since(pod: &Value) -> Option<&str> {
    let conditions = pod["status"]["conditions"].as_array()?;
    let ready = conditions.iter().find(|c| c["type"] == "Ready" && c["status"] == "True")?;
    ready["lastTransitionTime"].as_str()
}

/// A StatefulSet on hollow nodes: pods `db-0..2` made in order, each with
/// its hostname, subdomain and claim, listed by hostname in the headless
/// Service's Endpoints; scaled down from the top (claims going with them
/// under `whenScaled: Delete`); a partitioned rolling update; and, when a
/// node is lost, its ordinal not made again until the old pod is gone (and,
/// its local volume being on that node, its claim deleted).
#[tokio::test]
async fn a_stateful_set_keeps_one_pod_per_ordinal_in_order_with_its_claims() {
    let (mut cluster, _) = cluster().await;
    cluster.start_service("scheduler", "skiff-scheduler", &[]).await.unwrap();
    cluster.start_service("hollow-a", "skiff-kubelet", &hollow_args(1, "sa-")).await.unwrap();
    cluster.start_service("hollow-b", "skiff-kubelet", &hollow_args(1, "sb-")).await.unwrap();
    let client = cluster.client();
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "db"},
        "spec": {"clusterIP": "None", "selector": {"app": "db"}, "ports": [{"name": "sql", "port": 5432}]}});
    client.create("Service", "default", &svc).await.unwrap();
    let set = json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db"},
        "spec": {"replicas": 3, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
            "persistentVolumeClaimRetentionPolicy": {"whenScaled": "Delete"},
            "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "c", "image": "busybox:1"}]}},
            "volumeClaimTemplates": [{"metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}});
    client.create("StatefulSet", "default", &set).await.unwrap();
    let pods = eventually("db-0, db-1 and db-2 ready", || async {
        let pods = set_pods(&client).await;
        (pods.len() == 3 && pods.values().all(is_ready)).then_some(pods)
    })
    .await;
    assert_eq!(pods.keys().collect::<Vec<_>>(), ["db-0", "db-1", "db-2"]);
    for (i, pair) in ["db-0", "db-1", "db-2"].windows(2).enumerate() {
        let before = ready_since(&pods[pair[0]]).unwrap();
        let after = pods[pair[1]]["metadata"]["creationTimestamp"].as_str().unwrap();
        assert!(after >= before, "ordinal {} made at {after}, before {} was ready at {before}", i + 1, pair[0]);
    }
    for (n, pod) in &pods {
        assert_eq!(
            (pod["spec"]["hostname"].as_str(), pod["spec"]["subdomain"].as_str()),
            (Some(n.as_str()), Some("db"))
        );
        assert_eq!(pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"], format!("data-{n}"));
    }
    assert_eq!(claim_names(&client).await, ["data-db-0", "data-db-1", "data-db-2"]);
    eventually("the headless Service's endpoints named by hostname", || async {
        let eps = client.get("Endpoints", "default", "db").await.ok()?;
        let mut hosts: Vec<&str> =
            eps["subsets"][0]["addresses"].as_array()?.iter().filter_map(|a| a["hostname"].as_str()).collect();
        hosts.sort();
        (hosts == ["db-0", "db-1", "db-2"]).then_some(())
    })
    .await;

    // Down to one: from the top, and the claims go with their pods.
    client.patch("StatefulSet", "default", "db", &json!({"spec": {"replicas": 1}})).await.unwrap();
    eventually("scaled down to db-0 with its claim alone", || async {
        let pods = set_pods(&client).await;
        (pods.keys().collect::<Vec<_>>() == ["db-0"] && claim_names(&client).await == ["data-db-0"]).then_some(())
    })
    .await;

    // Back to three, then a new template above partition 1.
    client.patch("StatefulSet", "default", "db", &json!({"spec": {"replicas": 3}})).await.unwrap();
    eventually("three ready again", || async {
        let pods = set_pods(&client).await;
        (pods.len() == 3 && pods.values().all(is_ready)).then_some(())
    })
    .await;
    let update = json!({"spec": {"updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 1}},
        "template": {"spec": {"containers": [{"name": "c", "image": "busybox:2"}]}}}});
    client.patch("StatefulSet", "default", "db", &update).await.unwrap();
    let out = cluster.skiffctl(&["rollout", "status", "sts/db", "--timeout", "90s"], None).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("partitioned roll out complete: 2 new pods have been updated"), "{text}");
    let pods = set_pods(&client).await;
    let images: Vec<&str> = pods.values().map(image).collect();
    assert_eq!(images, ["busybox:1", "busybox:2", "busybox:2"], "db-0 stays below the partition");

    // db-0's node is lost: its pod is evicted but not confirmed gone, so no
    // second db-0 is made until it is removed for good.
    let old = &pods["db-0"];
    let old_uid = uid(old).to_string();
    let node = old["spec"]["nodeName"].as_str().unwrap().to_string();
    cluster.kill_service(if node.starts_with("sa-") { "hollow-a" } else { "hollow-b" });
    let evicted = eventually("db-0 evicted from the lost node", || async {
        let pod = client.get("Pod", "default", "db-0").await.ok()?;
        pod["metadata"]["deletionTimestamp"].is_string().then_some(pod)
    })
    .await;
    assert_eq!(uid(&evicted), old_uid, "the old pod holds the ordinal until it is gone");
    eventually("the StatefulSet no longer counting it ready", || async {
        let set = client.get("StatefulSet", "default", "db").await.ok()?;
        (set["status"]["readyReplicas"].as_i64()? < 3).then_some(())
    })
    .await;
    assert_eq!(uid(&client.get("Pod", "default", "db-0").await.unwrap()), old_uid);
    // Its claim's local volume lives on the lost node: as with Kubernetes'
    // local volumes, the operator lets the ordinal start over elsewhere by
    // deleting the claim, and the pod for good.
    client.delete("PersistentVolumeClaim", "default", "data-db-0").await.unwrap();
    client.delete_with_grace("Pod", "default", "db-0", Some(0)).await.unwrap();
    let replacement = eventually("a new db-0 on the live node", || async {
        let pod = client.get("Pod", "default", "db-0").await.ok()?;
        (uid(&pod) != old_uid && is_ready(&pod)).then_some(pod)
    })
    .await;
    assert_ne!(replacement["spec"]["nodeName"].as_str(), Some(node.as_str()));
    assert_eq!(replacement["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"], "data-db-0");
}
