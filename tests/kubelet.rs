//! The real kubelet against a real cluster: etcd, the apiserver, a local
//! registry with the test images and containerd (CRI, runc, CNI). Pods are
//! created already bound (spec.nodeName), so no scheduler is needed.
//!
//! Needs root and `scripts/install-deps`; build first:
//! `cargo build -p skiff-kubelet -p skiff-apiserver -p skiff-testserver && cargo test -p skiff-tests --test kubelet`.

use std::time::Duration;

use serde_json::{json, Value};
use skiff_client::Client;
use skiff_testkit::runtime::cri::v1::runtime_service_client::RuntimeServiceClient;
use skiff_testkit::runtime::cri::v1::{ContainerFilter, ListContainersRequest};
use skiff_testkit::runtime::{RuntimeOptions, BUSYBOX_IMAGE, TESTSERVER_IMAGE};
use skiff_testkit::{eventually, Cluster, ClusterOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NODE: &str = "kubelet-node";
const NS: &str = "default";

async fn cluster() -> Cluster {
    let mut cluster =
        Cluster::start_with(ClusterOptions { runtime: Some(RuntimeOptions::default()), ..Default::default() })
            .await
            .expect("start a cluster with a runtime");
    start_kubelet(&mut cluster).await;
    cluster
}

async fn start_kubelet(cluster: &mut Cluster) {
    let short_timings: Vec<String> = [
        "--crash-backoff-initial=1s",
        "--crash-backoff-max=4s",
        "--heartbeat-interval=1s",
        "--status-interval=5s",
        "--relist-interval=500ms",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    cluster.start_kubelet(NODE, &short_timings).await.expect("start the kubelet");
}

fn image(cluster: &Cluster, name: &str) -> String {
    cluster.runtime().unwrap().registry().image(name)
}

/// Creates a pod bound to the test node.
async fn create_pod(client: &Client, name: &str, spec: Value) {
    let mut spec = spec;
    spec["nodeName"] = NODE.into();
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS}, "spec": spec});
    client.create("Pod", NS, &pod).await.unwrap_or_else(|e| panic!("create pod {name}: {e}"));
}

async fn get_pod(client: &Client, name: &str) -> Option<Value> {
    client.get("Pod", NS, name).await.ok()
}

fn container(pod: &Value, i: usize) -> &Value {
    &pod["status"]["containerStatuses"][i]
}

fn condition<'a>(pod: &'a Value, ty: &str) -> Option<&'a str> {
    pod["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == ty)?["status"].as_str()
}

/// Waits until the pod is Running, Ready and has an IP; returns it.
async fn wait_ready(client: &Client, name: &str) -> (Value, String) {
    eventually(&format!("pod {name} ready"), || async {
        let pod = get_pod(client, name).await?;
        let ip = pod["status"]["podIP"].as_str()?.to_string();
        (pod["status"]["phase"] == "Running" && condition(&pod, "Ready") == Some("True")).then_some((pod, ip))
    })
    .await
}

/// One HTTP/1.1 request to the pod: (status, body).
async fn http(method: &str, ip: &str, path: &str) -> std::io::Result<(u16, String)> {
    let connect = tokio::net::TcpStream::connect((ip, 8080));
    let mut stream = tokio::time::timeout(Duration::from_secs(2), connect).await??;
    let req = format!("{method} {path} HTTP/1.1\r\nHost: {ip}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf)).await??;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

async fn http_ok(method: &str, ip: &str, path: &str) -> String {
    eventually(&format!("{method} http://{ip}:8080{path}"), || async {
        match http(method, ip, path).await {
            Ok((200, body)) => Some(body),
            _ => None,
        }
    })
    .await
}

/// Every message a container's statuses carry, joined.
fn messages(c: &Value) -> String {
    ["/state/waiting/message", "/state/terminated/message", "/lastState/terminated/message"]
        .iter()
        .filter_map(|p| c.pointer(p).and_then(Value::as_str))
        .collect::<Vec<_>>()
        .join(" | ")
}

/// The runtime's containers of pod `uid`.
async fn cri_containers(cluster: &Cluster, uid: &str) -> usize {
    let socket = cluster.runtime().unwrap().containerd().socket_path().to_path_buf();
    let mut cri = RuntimeServiceClient::new(skiff_testkit::runtime::cri_dial(&socket));
    let filter = ContainerFilter {
        label_selector: [("io.kubernetes.pod.uid".to_string(), uid.to_string())].into(),
        ..Default::default()
    };
    cri.list_containers(ListContainersRequest { filter: Some(filter) }).await.unwrap().into_inner().containers.len()
}

#[tokio::test]
async fn node_registers_and_a_pod_serves_with_config_and_readiness() {
    let cluster = cluster().await;
    let client = cluster.client();

    // The node: Ready from the runtime, real capacity, its CIDR, a Lease.
    let node = eventually("node ready", || async {
        let node = client.get("Node", "", NODE).await.ok()?;
        (condition(&node, "Ready") == Some("True")).then_some(node)
    })
    .await;
    assert!(node["status"]["capacity"]["cpu"].as_str().unwrap().parse::<u32>().unwrap() >= 1);
    assert!(node["status"]["capacity"]["memory"].as_str().unwrap().ends_with("Ki"));
    assert_eq!(node["status"]["capacity"]["pods"], "110");
    assert_eq!(node["spec"]["podCIDR"], cluster.runtime().unwrap().containerd().pod_cidr());
    assert_eq!(condition(&node, "PIDPressure"), Some("False"));
    assert!(node["status"]["addresses"][0]["address"].as_str().is_some_and(|a| !a.is_empty()));
    // The kubelet creates its Lease after the Node: wait for it.
    let lease =
        eventually("the node's Lease", || async { client.get("Lease", "kube-node-lease", NODE).await.ok() }).await;
    assert_eq!(lease["spec"]["holderIdentity"], NODE);

    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "web-config", "namespace": NS},
                    "data": {"greeting.txt": "hello"}});
    client.create("ConfigMap", NS, &cm).await.unwrap();
    create_pod(
        &client,
        "web",
        json!({
            "containers": [{
                "name": "server",
                "image": image(&cluster, TESTSERVER_IMAGE),
                "env": [
                    {"name": "MY_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "MY_GREETING", "valueFrom": {"configMapKeyRef": {"name": "web-config", "key": "greeting.txt"}}}
                ],
                "volumeMounts": [{"name": "config", "mountPath": "/config"}],
                "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1, "failureThreshold": 1}
            }],
            "volumes": [{"name": "config", "configMap": {"name": "web-config"}}]
        }),
    )
    .await;
    let (pod, ip) = wait_ready(&client, "web").await;
    let prefix = cluster.runtime().unwrap().containerd().pod_cidr().rsplit_once(".0/").unwrap().0.to_string();
    assert!(ip.starts_with(&format!("{prefix}.")), "pod IP {ip} outside the node's CIDR");
    assert_eq!(pod["status"]["hostIP"], node["status"]["addresses"][0]["address"]);
    let c = container(&pod, 0);
    assert_eq!((&c["ready"], &c["started"], &c["restartCount"]), (&json!(true), &json!(true), &json!(0)));
    assert!(c["containerID"].as_str().unwrap().starts_with("containerd://"));
    assert!(c["imageID"].as_str().is_some_and(|i| !i.is_empty()));

    let echo = http_ok("GET", &ip, "/").await;
    assert!(echo.contains("hostname: web"), "{echo}");
    let env = http_ok("GET", &ip, "/env").await;
    assert!(env.lines().any(|l| l == "MY_POD_NAME=web"), "{env}");
    assert!(env.lines().any(|l| l == "MY_GREETING=hello"), "{env}");
    assert_eq!(http_ok("GET", &ip, "/file?path=/config/greeting.txt").await, "hello");

    // A changed ConfigMap shows up in the running container's files.
    let mut cm = client.get("ConfigMap", NS, "web-config").await.unwrap();
    cm["data"]["greeting.txt"] = "bonjour".into();
    client.update("ConfigMap", NS, &cm).await.unwrap();
    eventually("the configMap volume updated", || async {
        matches!(http("GET", &ip, "/file?path=/config/greeting.txt").await, Ok((200, b)) if b == "bonjour")
            .then_some(())
    })
    .await;

    // Readiness gates Ready, without restarting anything.
    http_ok("POST", &ip, "/fail-health").await;
    eventually("pod not ready", || async {
        let pod = get_pod(&client, "web").await?;
        (condition(&pod, "Ready") == Some("False") && condition(&pod, "ContainersReady") == Some("False")).then_some(())
    })
    .await;
    http_ok("POST", &ip, "/heal").await;
    let (pod, _) = wait_ready(&client, "web").await;
    assert_eq!(container(&pod, 0)["restartCount"], 0, "readiness never restarts");
}

#[tokio::test]
async fn crashes_back_off_oom_kills_and_liveness_restart() {
    let cluster = cluster().await;
    let client = cluster.client();
    let busybox = image(&cluster, BUSYBOX_IMAGE);
    let testserver = image(&cluster, TESTSERVER_IMAGE);
    create_pod(
        &client,
        "crasher",
        json!({"containers": [{"name": "c", "image": busybox, "command": ["sh", "-c", "exit 1"]}]}),
    )
    .await;
    create_pod(
        &client,
        "hog",
        json!({"containers": [{"name": "c", "image": testserver, "resources": {"limits": {"memory": "32Mi"}}}]}),
    )
    .await;
    create_pod(
        &client,
        "live",
        json!({"terminationGracePeriodSeconds": 5, "containers": [{
            "name": "c", "image": testserver,
            "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1, "failureThreshold": 2}
        }]}),
    )
    .await;

    // exit 1, again and again: CrashLoopBackOff while waiting, restartCount up.
    let crashed = eventually("crasher in back-off after two restarts", || async {
        let pod = get_pod(&client, "crasher").await?;
        let c = container(&pod, 0);
        (c["state"]["waiting"]["reason"] == "CrashLoopBackOff" && c["restartCount"].as_i64()? >= 2).then_some(pod)
    })
    .await;
    let c = container(&crashed, 0);
    assert_eq!(c["lastState"]["terminated"]["exitCode"], 1, "{c}");
    assert_eq!(c["lastState"]["terminated"]["reason"], "Error");
    assert_eq!(crashed["status"]["phase"], "Running", "restartPolicy Always keeps it Running");
    assert_eq!(condition(&crashed, "Ready"), Some("False"), "a container waiting to restart is not ready");
    assert!(c["state"]["waiting"]["message"].as_str().unwrap().starts_with("back-off"), "{c}");

    // Past its memory limit: OOMKilled, then started again.
    let (_, hog_ip) = wait_ready(&client, "hog").await;
    // No readiness probe: Ready doesn't mean the server listens yet.
    http_ok("GET", &hog_ip, "/healthz").await;
    let _ = http("POST", &hog_ip, "/alloc?mb=64").await;
    let hog = eventually("hog OOMKilled and restarted", || async {
        let pod = get_pod(&client, "hog").await?;
        let c = container(&pod, 0);
        (c["lastState"]["terminated"]["reason"] == "OOMKilled" && c["restartCount"].as_i64()? >= 1).then_some(pod)
    })
    .await;
    assert_eq!(container(&hog, 0)["lastState"]["terminated"]["exitCode"], 137);

    // A failing liveness probe restarts the container.
    let (live, live_ip) = wait_ready(&client, "live").await;
    let first_id = container(&live, 0)["containerID"].as_str().unwrap().to_string();
    http_ok("POST", &live_ip, "/fail-health").await;
    let live = eventually("live restarted by its liveness probe", || async {
        let pod = get_pod(&client, "live").await?;
        let c = container(&pod, 0);
        (c["restartCount"].as_i64()? >= 1 && c["state"]["running"].is_object()).then_some(pod)
    })
    .await;
    assert_ne!(container(&live, 0)["containerID"].as_str().unwrap(), first_id);
    // The new container is healthy again (the failure was in the old one's memory).
    assert_eq!(http_ok("GET", &live_ip, "/healthz").await.trim(), "ok");
}

#[tokio::test]
async fn bad_images_and_missing_commands_say_why() {
    let cluster = cluster().await;
    let client = cluster.client();
    create_pod(&client, "badimage", json!({"containers": [{"name": "c", "image": image(&cluster, "nosuch:latest")}]}))
        .await;
    create_pod(
        &client,
        "nocmd",
        json!({"containers": [{"name": "c", "image": image(&cluster, BUSYBOX_IMAGE), "command": ["/no/such/binary"]}]}),
    )
    .await;

    let reasons = std::sync::Mutex::new(std::collections::BTreeSet::new());
    let pod = eventually("badimage in ImagePullBackOff", || async {
        let pod = get_pod(&client, "badimage").await?;
        let reason = container(&pod, 0)["state"]["waiting"]["reason"].as_str()?.to_string();
        reasons.lock().unwrap().insert(reason.clone());
        (reason == "ImagePullBackOff").then_some(pod)
    })
    .await;
    let reasons = reasons.into_inner().unwrap();
    assert!(
        reasons.iter().all(|r| r == "ErrImagePull" || r == "ImagePullBackOff" || r == "ContainerCreating"),
        "{reasons:?}"
    );
    assert_eq!(pod["status"]["phase"], "Pending");
    let message = container(&pod, 0)["state"]["waiting"]["message"].as_str().unwrap_or_default().to_string();
    assert!(message.contains("nosuch"), "the registry's message names the image: {message}");

    // A volume naming a missing ConfigMap holds the pod with an Event
    // naming it, until the ConfigMap appears.
    create_pod(
        &client,
        "needs-config",
        json!({
            "containers": [{"name": "c", "image": image(&cluster, TESTSERVER_IMAGE),
                            "volumeMounts": [{"name": "cfg", "mountPath": "/cfg"}]}],
            "volumes": [{"name": "cfg", "configMap": {"name": "late-config"}}]
        }),
    )
    .await;
    let event = eventually("a FailedMount event", || async {
        let events = client.list("Event", NS, &Default::default()).await.ok()?.items;
        events.into_iter().find(|e| e["reason"] == "FailedMount" && e["involvedObject"]["name"] == "needs-config")
    })
    .await;
    assert!(event["message"].as_str().unwrap().contains("configmap \"late-config\" not found"), "{event}");
    let waiting = get_pod(&client, "needs-config").await.unwrap();
    assert_eq!(waiting["status"]["phase"], "Pending");
    assert_eq!(container(&waiting, 0)["state"]["waiting"]["reason"], "ContainerCreating", "{waiting}");
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "late-config", "namespace": NS},
                    "data": {"k": "v"}});
    client.create("ConfigMap", NS, &cm).await.unwrap();
    let (_, ip) = wait_ready(&client, "needs-config").await;
    assert_eq!(http_ok("GET", &ip, "/file?path=/cfg/k").await, "v");

    let nocmd = eventually("nocmd says its command is missing", || async {
        let pod = get_pod(&client, "nocmd").await?;
        let text = messages(container(&pod, 0));
        text.contains("/no/such/binary").then_some(pod)
    })
    .await;
    let c = container(&nocmd, 0);
    assert!(
        messages(c).contains("no such file") || messages(c).contains("not found"),
        "the runtime's reason is kept: {c}"
    );
    assert_ne!(c["ready"], true);
}

#[tokio::test]
async fn a_restarted_kubelet_keeps_containers_and_deletion_stops_them() {
    let mut cluster = cluster().await;
    let client = cluster.client();
    let testserver = image(&cluster, TESTSERVER_IMAGE);
    create_pod(
        &client,
        "keep",
        json!({"terminationGracePeriodSeconds": 5, "containers": [{"name": "c", "image": testserver}]}),
    )
    .await;
    let (pod, ip) = wait_ready(&client, "keep").await;
    let id = container(&pod, 0)["containerID"].as_str().unwrap().to_string();
    let uid = pod["metadata"]["uid"].as_str().unwrap().to_string();
    create_pod(&client, "orphan", json!({"containers": [{"name": "c", "image": testserver}]})).await;
    let (orphan, _) = wait_ready(&client, "orphan").await;
    let orphan_uid = orphan["metadata"]["uid"].as_str().unwrap().to_string();

    // While the kubelet is down, "orphan" is removed from the API for good.
    cluster.stop_service("kubelet");
    client.delete_with_grace("Pod", NS, "orphan", Some(0)).await.unwrap();
    assert_eq!(cri_containers(&cluster, &orphan_uid).await, 1, "its container outlives the kubelet");
    start_kubelet(&mut cluster).await;

    eventually("the orphan's containers removed", || async {
        (cri_containers(&cluster, &orphan_uid).await == 0).then_some(())
    })
    .await;
    // A new pod proves the restarted kubelet acts; meanwhile "keep" ran on.
    create_pod(
        &client,
        "after",
        json!({"containers": [{"name": "c", "image": image(&cluster, BUSYBOX_IMAGE),
        "command": ["sleep", "3600"]}]}),
    )
    .await;
    wait_ready(&client, "after").await;
    let (pod, _) = wait_ready(&client, "keep").await;
    let c = container(&pod, 0);
    assert_eq!(c["containerID"].as_str().unwrap(), id, "the running container was adopted, not replaced");
    assert_eq!(c["restartCount"], 0);
    assert!(http_ok("GET", &ip, "/").await.contains("hostname: keep"));

    // Deleting marks the pod; the kubelet stops it and deletes it for good.
    let marked = client.delete("Pod", NS, "keep").await.unwrap();
    assert!(marked["metadata"]["deletionTimestamp"].is_string(), "a bound pod is deleted gracefully: {marked}");
    assert_eq!(marked["metadata"]["deletionGracePeriodSeconds"], 5);
    eventually("pod keep gone", || async { get_pod(&client, "keep").await.is_none().then_some(()) }).await;
    assert_eq!(cri_containers(&cluster, &uid).await, 0, "its containers are removed");
    assert!(http("GET", &ip, "/").await.is_err(), "nothing answers on the old pod IP");
}

/// The apiserver's side of pod deletion, without a runtime: a bound pod is
/// only marked until its kubelet's final delete (grace 0); an unbound one
/// goes at once.
#[tokio::test]
async fn bound_pods_wait_for_the_kubelets_final_delete() {
    let cluster = Cluster::start().await.expect("start a cluster");
    let client = cluster.client();
    let pod = |name: &str, node: Option<&str>| {
        let mut spec = json!({"terminationGracePeriodSeconds": 7, "containers": [{"name": "c", "image": "x"}]});
        if let Some(node) = node {
            spec["nodeName"] = node.into();
        }
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS}, "spec": spec})
    };
    client.create("Pod", NS, &pod("unbound", None)).await.unwrap();
    client.delete("Pod", NS, "unbound").await.unwrap();
    assert!(get_pod(&client, "unbound").await.is_none(), "an unbound pod is deleted at once");
    client.create("Pod", NS, &pod("nodeless", Some("missing-node"))).await.unwrap();
    client.delete("Pod", NS, "nodeless").await.unwrap();
    assert!(get_pod(&client, "nodeless").await.is_none(), "no kubelet would finish it: deleted at once");

    let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
        "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]}});
    client.create("Node", "", &node).await.unwrap();

    client.create("Pod", NS, &pod("bound", Some("n1"))).await.unwrap();
    let marked = client.delete("Pod", NS, "bound").await.unwrap();
    assert!(marked["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(marked["metadata"]["deletionGracePeriodSeconds"], 7, "the pod's terminationGracePeriodSeconds");
    // The kubelet's status writes while it stops the pod keep it.
    let mut status = get_pod(&client, "bound").await.expect("still there");
    status["status"]["phase"] = "Running".into();
    client.update_status("Pod", NS, &status).await.expect("status of a terminating pod");
    let again = client.delete("Pod", NS, "bound").await.unwrap();
    assert_eq!(
        again["metadata"]["deletionTimestamp"], marked["metadata"]["deletionTimestamp"],
        "a second delete waits too"
    );
    client.delete_with_grace("Pod", NS, "bound", Some(0)).await.unwrap();
    assert!(get_pod(&client, "bound").await.is_none(), "grace 0 deletes for good");

    client.create("Pod", NS, &pod("shorter", Some("n1"))).await.unwrap();
    let marked = client.delete_with_grace("Pod", NS, "shorter", Some(2)).await.unwrap();
    assert_eq!(marked["metadata"]["deletionGracePeriodSeconds"], 2);

    // A node that stopped answering may still be running the pod: it waits
    // (a StatefulSet's ordinal must not run twice), unless the operator
    // says the node is shut down with the out-of-service taint.
    let lost = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "lost"},
        "spec": {"taints": [{"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}]},
        "status": {"conditions": [{"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown"}]}});
    client.create("Node", "", &lost).await.unwrap();
    client.create("Pod", NS, &pod("stranded", Some("lost"))).await.unwrap();
    let marked = client.delete("Pod", NS, "stranded").await.unwrap();
    assert!(marked["metadata"]["deletionTimestamp"].is_string(), "waits for the lost node's kubelet");
    let taints = json!({"spec": {"taints": [{"key": "node.kubernetes.io/out-of-service", "effect": "NoExecute"}]}});
    client.patch("Node", "", "lost", &taints).await.unwrap();
    eventually("the out-of-service taint in the apiserver's cache", || async {
        client.delete("Pod", NS, "stranded").await.ok()?;
        get_pod(&client, "stranded").await.is_none().then_some(())
    })
    .await;
}

#[tokio::test]
async fn logs_and_exec_reach_containers_through_the_apiserver_and_kubelet() {
    let cluster = cluster().await;
    let client = cluster.client();
    let busybox = image(&cluster, BUSYBOX_IMAGE);
    create_pod(
        &client,
        "talker",
        json!({"containers": [{"name": "app", "image": busybox,
            "command": ["sh", "-c", "echo hello; echo world; sleep 3600"]}]}),
    )
    .await;
    wait_ready(&client, "talker").await;
    let logs = eventually("both lines in the log", || async {
        let out = cluster.skiffctl(&["logs", "talker"], None).unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.success() && text == "hello\nworld\n").then_some(text)
    })
    .await;
    assert_eq!(logs, "hello\nworld\n");
    let out = cluster.skiffctl(&["logs", "talker", "--tail", "1"], None).unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "world\n");

    let out =
        cluster.skiffctl(&["exec", "talker", "--", "sh", "-c", "echo hi from $(hostname); exit 4"], None).unwrap();
    assert_eq!(out.status.code(), Some(4), "exec passes the command's exit status on");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi from talker\n");
}

/// The output of `skiffctl args` with `stdin`: (exit code, stdout, stderr).
fn skiffctl_with(cluster: &Cluster, args: &[&str], stdin: &str) -> (Option<i32>, String, String) {
    let out = cluster.skiffctl(args, Some(stdin)).unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

#[tokio::test]
async fn interactive_exec_and_top_through_the_apiserver_and_kubelet() {
    let cluster = cluster().await;
    let client = cluster.client();
    let busybox = image(&cluster, BUSYBOX_IMAGE);
    create_pod(
        &client,
        "shell",
        json!({"containers": [{"name": "app", "image": busybox, "command": ["sleep", "3600"]}]}),
    )
    .await;
    wait_ready(&client, "shell").await;

    // -i: stdin reaches the command, and its end is the command's EOF.
    let (code, out, err) = skiffctl_with(&cluster, &["exec", "-i", "shell", "--", "cat"], "hello\n");
    assert_eq!((code, out.as_str()), (Some(0), "hello\n"), "stderr: {err}");
    let (code, _, err) =
        skiffctl_with(&cluster, &["exec", "-i", "shell", "--", "sh", "-c", "read x; exit 7"], "line\n");
    assert_eq!(code, Some(7), "the exit status passes through: {err}");
    let (code, out, err) =
        skiffctl_with(&cluster, &["exec", "-i", "shell", "--", "sh", "-c", "cat; echo oops >&2; exit 2"], "a\nb\n");
    assert_eq!((code, out.as_str(), err.as_str()), (Some(2), "a\nb\n", "oops\n"), "stdout and stderr apart");
    // More than one SPDY frame, and more than a flow-control window, of input.
    let big = "x".repeat(300_000);
    let (code, out, err) = skiffctl_with(&cluster, &["exec", "-i", "shell", "--", "wc", "-c"], &big);
    assert_eq!((code, out.trim()), (Some(0), "300000"), "stderr: {err}");

    // -t without a local terminal: the command still gets a terminal (its
    // output comes with the terminal's \r\n); nothing local goes raw.
    let (code, out, err) =
        skiffctl_with(&cluster, &["exec", "-t", "shell", "--", "sh", "-c", "test -t 1 && echo tty"], "");
    assert_eq!((code, out.as_str()), (Some(0), "tty\r\n"), "stderr: {err}");
    let (code, out, err) =
        skiffctl_with(&cluster, &["exec", "-it", "shell", "--", "sh", "-c", "read x; echo \"got $x\"; exit 3"], "hi\n");
    assert_eq!(code, Some(3), "stderr: {err}");
    assert!(out.contains("got hi\r\n"), "stdout: {out:?}");
    // Without -i/-t the non-interactive path still answers.
    let (code, out, _) = skiffctl_with(&cluster, &["exec", "shell", "--", "echo", "plain"], "");
    assert_eq!((code, out.as_str()), (Some(0), "plain\n"));

    // top: the pod, its CPU in millicores and a memory working set above 0.
    let memory_of = |out: &str| -> Option<String> {
        let line = out.lines().find(|l| l.starts_with("shell "))?;
        let cells: Vec<&str> = line.split_whitespace().collect();
        (cells.len() == 3 && cells[1].ends_with('m')).then(|| cells[2].to_string())
    };
    let (header, memory) = eventually("skiffctl top pod shows memory", || async {
        let (code, out, _) = skiffctl_with(&cluster, &["top", "pod", "shell"], "");
        let memory = memory_of(&out).filter(|m| code == Some(0) && !m.starts_with('0'))?;
        Some((out.lines().next().unwrap_or_default().to_string(), memory))
    })
    .await;
    assert_eq!(header.split_whitespace().collect::<Vec<_>>(), ["NAME", "CPU(cores)", "MEMORY(bytes)"]);
    assert!(memory.ends_with("Ki") || memory.ends_with("Mi"), "memory {memory:?}");
    let (code, out, err) = skiffctl_with(&cluster, &["top", "pod"], "");
    assert_eq!(code, Some(0), "stderr: {err}");
    assert!(memory_of(&out).is_some(), "the namespace's pods include shell: {out}");
    let (code, _, err) = skiffctl_with(&cluster, &["top", "pod", "nope"], "");
    assert_eq!(code, Some(1));
    assert!(err.contains("not found"), "stderr: {err}");

    // The node's host as a whole, against its allocatable.
    let (code, out, err) = skiffctl_with(&cluster, &["top", "node"], "");
    assert_eq!(code, Some(0), "stderr: {err}");
    let row: Vec<&str> = out.lines().nth(1).unwrap_or_default().split_whitespace().collect();
    assert_eq!(row.len(), 5, "{out}");
    assert!(row[1].ends_with('m') && row[2].ends_with('%') && row[3].ends_with("Mi") && row[4].ends_with('%'), "{out}");
}

/// The CPU quota the container's cgroup holds, as (quota, period) in µs:
/// cgroup v2's cpu.max, or v1's cfs files, whichever this host mounts.
async fn cpu_quota(ip: &str) -> Option<(i64, i64)> {
    if let Ok((200, max)) = http("GET", ip, "/file?path=/sys/fs/cgroup/cpu.max").await {
        let (quota, period) = max.trim().split_once(' ')?;
        return Some((quota.parse().ok()?, period.parse().ok()?));
    }
    let v1 = |file: &str| format!("/file?path=/sys/fs/cgroup/cpu/cpu.cfs_{file}_us");
    let (Ok((200, quota)), Ok((200, period))) =
        (http("GET", ip, &v1("quota")).await, http("GET", ip, &v1("period")).await)
    else {
        return None;
    };
    Some((quota.trim().parse().ok()?, period.trim().parse().ok()?))
}

#[tokio::test]
async fn init_containers_secrets_host_paths_startup_probes_and_cpu_limits() {
    let cluster = cluster().await;
    let client = cluster.client();
    let host_dir = cluster.dir().join("host-data");
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::write(host_dir.join("hello.txt"), "from the host").unwrap();
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds", "namespace": NS},
                        "data": {"password": "czNjcmV0"}}); // "s3cret"
    client.create("Secret", NS, &secret).await.unwrap();

    // Each init container appends its name; the second fails unless the
    // first ran before it, and holds until the test releases it.
    let busybox = image(&cluster, BUSYBOX_IMAGE);
    let init = |name: &str, script: &str| {
        json!({"name": name, "image": busybox, "command": ["sh", "-c", script],
               "volumeMounts": [{"name": "work", "mountPath": "/work"}, {"name": "host", "mountPath": "/host"}]})
    };
    create_pod(
        &client,
        "features",
        json!({
            "terminationGracePeriodSeconds": 5,
            "initContainers": [
                init("first", "echo first >> /work/order"),
                init(
                    "second",
                    "test \"$(cat /work/order)\" = first && echo second >> /work/order && \
                     until [ -f /host/release ]; do sleep 0.2; done"
                ),
            ],
            "containers": [{
                "name": "app",
                "image": image(&cluster, TESTSERVER_IMAGE),
                "env": [{"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}}],
                "envFrom": [{"prefix": "ALL_", "secretRef": {"name": "creds"}}],
                "resources": {"limits": {"cpu": "250m", "memory": "64Mi"}},
                // Fails until the test creates the file: the kubelet kills
                // and restarts the container meanwhile.
                "startupProbe": {"httpGet": {"path": "/file?path=/host/started", "port": 8080},
                                 "periodSeconds": 1, "failureThreshold": 2},
                "volumeMounts": [
                    {"name": "work", "mountPath": "/work"},
                    {"name": "secret", "mountPath": "/secret"},
                    {"name": "host", "mountPath": "/host"}
                ]
            }],
            "volumes": [
                {"name": "work", "emptyDir": {}},
                {"name": "secret", "secret": {"secretName": "creds"}},
                {"name": "host", "hostPath": {"path": host_dir.to_str().unwrap(), "type": "Directory"}}
            ]
        }),
    )
    .await;

    let held = eventually("the second init container running", || async {
        let pod = get_pod(&client, "features").await?;
        pod["status"]["initContainerStatuses"][1]["state"]["running"].is_object().then_some(pod)
    })
    .await;
    assert_eq!(held["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"], 0, "{held}");
    assert!(!container(&held, 0)["state"]["running"].is_object(), "the app waits for the inits: {held}");
    assert_eq!(condition(&held, "Initialized"), Some("False"));
    std::fs::write(host_dir.join("release"), "").unwrap();

    let killed = eventually("the app restarted by its failing startup probe, never started", || async {
        let pod = get_pod(&client, "features").await?;
        let c = container(&pod, 0);
        (c["restartCount"].as_i64()? >= 1 && c["started"] == false).then_some(pod)
    })
    .await;
    assert_eq!(condition(&killed, "Ready"), Some("False"), "not ready before the startup probe passes");
    std::fs::write(host_dir.join("started"), "").unwrap();
    let (pod, ip) = wait_ready(&client, "features").await;
    assert_eq!(container(&pod, 0)["started"], true);

    let inits = &pod["status"]["initContainerStatuses"];
    assert_eq!(inits[1]["state"]["terminated"]["exitCode"], 0, "{inits}");
    assert_eq!(http_ok("GET", &ip, "/file?path=/work/order").await, "first\nsecond\n", "in order, once each");

    let env = http_ok("GET", &ip, "/env").await;
    for var in ["PASSWORD=s3cret", "ALL_password=s3cret"] {
        assert!(env.lines().any(|l| l == var), "{var} in {env}");
    }
    assert_eq!(http_ok("GET", &ip, "/file?path=/secret/password").await, "s3cret");
    assert_eq!(http_ok("GET", &ip, "/file?path=/host/hello.txt").await, "from the host");
    assert_eq!(cpu_quota(&ip).await, Some((25_000, 100_000)), "250m of a 100ms period");
}

#[tokio::test]
async fn a_private_image_pulls_only_with_its_pull_secret() {
    use k8s_openapi::api::core::v1::Secret;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use k8s_openapi::ByteString;
    use skiff_testkit::runtime::{PRIVATE_PASSWORD, PRIVATE_USER};

    let cluster = cluster().await;
    let client = cluster.client();
    let private = cluster.runtime().unwrap().start_private_registry().await.expect("start the private registry");
    let config = json!({"auths": {private.host(): {"username": PRIVATE_USER, "password": PRIVATE_PASSWORD}}});
    let secret = Secret {
        metadata: ObjectMeta { name: Some("regcred".into()), namespace: Some(NS.into()), ..Default::default() },
        type_: Some("kubernetes.io/dockerconfigjson".into()),
        data: Some([(".dockerconfigjson".to_string(), ByteString(config.to_string().into_bytes()))].into()),
        ..Default::default()
    };
    client.create("Secret", NS, &serde_json::to_value(&secret).unwrap()).await.unwrap();
    let sleeper = |pull_secrets: Value| {
        json!({"imagePullSecrets": pull_secrets, "terminationGracePeriodSeconds": 1, "containers": [{
            "name": "c", "image": private.image(BUSYBOX_IMAGE), "command": ["sleep", "3600"]}]})
    };
    create_pod(&client, "without", sleeper(json!([]))).await;
    create_pod(&client, "with", sleeper(json!([{"name": "regcred"}]))).await;

    let refused = eventually("the pull without credentials refused", || async {
        let pod = get_pod(&client, "without").await?;
        let c = container(&pod, 0);
        matches!(c["state"]["waiting"]["reason"].as_str(), Some("ErrImagePull" | "ImagePullBackOff"))
            .then(|| messages(c))
    })
    .await;
    assert!(refused.contains("401") || refused.to_lowercase().contains("unauthorized"), "{refused}");
    eventually("the pod with the pull secret running", || async {
        let pod = get_pod(&client, "with").await?;
        container(&pod, 0)["state"]["running"].is_object().then_some(())
    })
    .await;
}

/// A pod's ServiceAccount token, projected by the kubelet, can do what the
/// ServiceAccount's Role allows and nothing else, and dies with the pod.
#[tokio::test]
async fn a_pods_service_account_token_does_what_its_role_allows() {
    let mut cluster = cluster().await;
    cluster.start_service("controller-manager", "skiff-controller-manager", &[]).await.unwrap();
    let client = cluster.client();
    let default =
        eventually("the default ServiceAccount", || async { client.get("ServiceAccount", NS, "default").await.ok() })
            .await;
    assert_eq!(default["metadata"]["name"], "default");
    client.create("ServiceAccount", NS, &json!({"metadata": {"name": "reader"}})).await.unwrap();
    let role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "pod-reader"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}],
    });
    client.create("Role", NS, &role).await.unwrap();
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": NS}],
    });
    client.create("RoleBinding", NS, &binding).await.unwrap();
    client.create("Secret", NS, &json!({"metadata": {"name": "hidden"}, "stringData": {"k": "v"}})).await.unwrap();
    let busybox = image(&cluster, BUSYBOX_IMAGE);
    create_pod(
        &client,
        "reader",
        json!({"serviceAccountName": "reader",
               "containers": [{"name": "app", "image": busybox, "command": ["sleep", "3600"]}]}),
    )
    .await;
    wait_ready(&client, "reader").await;

    let read = |file: &str| {
        let path = format!("/var/run/secrets/kubernetes.io/serviceaccount/{file}");
        let out = cluster.skiffctl(&["exec", "reader", "--", "cat", &path], None).unwrap();
        assert!(out.status.success(), "cat {path}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(read("namespace"), NS);
    let ca = cluster.pki().unwrap().ca_file();
    assert_eq!(read("ca.crt"), std::fs::read_to_string(&ca).unwrap());
    let token = read("token");
    assert_eq!(token.matches('.').count(), 2, "a JWT: {token}");

    let as_pod = Client::connect(&skiff_client::ClientConfig {
        server: cluster.server(),
        certificate_authority: Some(ca),
        token: Some(token),
        ..Default::default()
    })
    .unwrap();
    let pods = as_pod.list("Pod", NS, &Default::default()).await.expect("its Role lets it list pods");
    assert!(pods.items.iter().any(|p| p["metadata"]["name"] == "reader"));
    let code = |r: Result<Value, skiff_client::Error>| r.unwrap_err().code();
    assert_eq!(code(as_pod.get("Secret", NS, "hidden").await), Some(tonic::Code::PermissionDenied));
    assert_eq!(code(as_pod.get("Pod", "kube-system", "any").await), Some(tonic::Code::PermissionDenied));
    let denied = as_pod.create("ConfigMap", NS, &json!({"metadata": {"name": "x"}})).await.unwrap_err();
    assert!(denied.to_string().contains("system:serviceaccount:default:reader"), "{denied}");

    // Bound to the pod: once the pod is gone, so is the token's worth.
    client.delete("Pod", NS, "reader").await.unwrap();
    eventually("the token refused once its pod is gone", || async {
        let e = as_pod.list("Pod", NS, &Default::default()).await.err()?;
        (e.code() == Some(tonic::Code::Unauthenticated)).then_some(())
    })
    .await;
}
