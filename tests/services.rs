//! Service networking on the control plane, against a real etcd and
//! apiserver (and the controller-manager where controllers are involved):
//! cluster IPs and node ports handed out and checked by the apiserver, the
//! Endpoints controller listing ready and not-ready pods, and node IPAM
//! giving each Node its own pod CIDR.
//!
//! No scheduler or kubelet runs: pods are bound to a Node object the test
//! creates and their status (podIP, Ready) is written by the test.
//!
//! Build first: `cargo build -p skiff-apiserver -p skiff-controller-manager`.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use serde_json::{json, Value};
use skiff_client::Client;
use skiff_testkit::{eventually, Cluster};

async fn with_controller_manager() -> Cluster {
    let mut cluster = Cluster::start().await.expect("cluster");
    cluster
        .start_service("controller-manager", "skiff-controller-manager", &["--leader-elect=false".to_string()])
        .await
        .expect("controller-manager starts (build it with `cargo build -p skiff-controller-manager`)");
    cluster
}

fn service(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec})
}

fn cluster_ip(svc: &Value) -> &str {
    svc["spec"]["clusterIP"].as_str().unwrap_or_default()
}

fn node_ports(svc: &Value) -> Vec<i64> {
    svc["spec"]["ports"].as_array().into_iter().flatten().filter_map(|p| p["nodePort"].as_i64()).collect()
}

/// The error message of a create that must fail as INVALID_ARGUMENT.
async fn invalid(client: &Client, obj: &Value) -> String {
    let err = client.create("Service", "default", obj).await.expect_err("the apiserver should refuse it");
    assert!(err.is_invalid(), "expected INVALID_ARGUMENT, got {err}");
    err.to_string()
}

#[tokio::test]
async fn services_get_cluster_ips_and_node_ports_from_their_ranges() {
    let cluster = Cluster::start().await.expect("cluster");
    let client = cluster.client();
    let range = (Ipv4Addr::new(10, 43, 0, 0), 16);
    let in_range = |ip: &str| {
        let ip: Ipv4Addr = ip.parse().expect("an IPv4 address");
        u32::from(ip) >> (32 - range.1) == u32::from(range.0) >> (32 - range.1)
    };

    let a = client.create("Service", "default", &service("a", json!({"ports": [{"port": 80}]}))).await.unwrap();
    let ip_a = cluster_ip(&a).to_string();
    assert!(in_range(&ip_a) && ip_a != "10.43.0.0" && ip_a != "10.43.0.10", "got {ip_a}");
    assert_eq!(a["spec"]["clusterIPs"], json!([ip_a]));
    assert_eq!(node_ports(&a), Vec::<i64>::new(), "a ClusterIP service has no node ports");

    let msg = invalid(&client, &service("outside", json!({"clusterIP": "10.44.0.1", "ports": [{"port": 80}]}))).await;
    assert!(msg.contains("spec.clusterIP: 10.44.0.1 is not in the service CIDR 10.43.0.0/16"), "{msg}");
    let msg = invalid(&client, &service("taken", json!({"clusterIP": ip_a, "ports": [{"port": 80}]}))).await;
    assert!(msg.contains("spec.clusterIP") && msg.contains("already allocated"), "{msg}");

    let dns = client
        .create("Service", "default", &service("dns", json!({"clusterIP": "10.43.0.10", "ports": [{"port": 53}]})))
        .await
        .unwrap();
    assert_eq!(cluster_ip(&dns), "10.43.0.10");
    let headless = client
        .create("Service", "default", &service("headless", json!({"clusterIP": "None", "ports": [{"port": 80}]})))
        .await
        .unwrap();
    assert_eq!(cluster_ip(&headless), "None");

    // Many services, all distinct.
    let mut ips = BTreeSet::from([ip_a.clone(), "10.43.0.10".to_string()]);
    for i in 0..20 {
        let s = client.create("Service", "default", &service(&format!("s{i}"), json!({"ports": [{"port": 80}]}))).await;
        let ip = cluster_ip(&s.unwrap()).to_string();
        assert!(in_range(&ip));
        assert!(ips.insert(ip.clone()), "{ip} handed out twice");
    }

    let np = client
        .create(
            "Service",
            "default",
            &service(
                "np",
                json!({"type": "NodePort", "ports": [{"name": "http", "port": 80}, {"name": "https", "port": 443}]}),
            ),
        )
        .await
        .unwrap();
    let ports = node_ports(&np);
    assert_eq!(ports.len(), 2);
    assert!(ports.iter().all(|p| (30000..=32767).contains(p)) && ports[0] != ports[1], "{ports:?}");
    let msg =
        invalid(&client, &service("np2", json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": ports[0]}]})))
            .await;
    assert!(msg.contains("spec.ports[0].nodePort") && msg.contains("already allocated"), "{msg}");
    let lb = client
        .create("Service", "default", &service("lb", json!({"type": "LoadBalancer", "ports": [{"port": 80}]})))
        .await
        .unwrap();
    assert_eq!(node_ports(&lb).len(), 1);

    // Update: the IP may not change; leaving it and the node ports out keeps them.
    let mut moved = np.clone();
    moved["spec"]["clusterIP"] = json!("10.43.200.200");
    moved["spec"]["clusterIPs"] = json!(["10.43.200.200"]);
    let err = client.update("Service", "default", &moved).await.expect_err("clusterIP is immutable");
    assert!(err.is_invalid() && err.to_string().contains("spec.clusterIP"), "{err}");
    let mut bare = np.clone();
    for field in ["clusterIP", "clusterIPs"] {
        bare["spec"].as_object_mut().unwrap().remove(field);
    }
    for p in bare["spec"]["ports"].as_array_mut().unwrap() {
        p.as_object_mut().unwrap().remove("nodePort");
    }
    bare["metadata"]["labels"] = json!({"touched": "yes"});
    let kept = client.update("Service", "default", &bare).await.unwrap();
    assert_eq!(cluster_ip(&kept), cluster_ip(&np));
    assert_eq!(node_ports(&kept), ports);
    // A changed node port is checked again.
    let mut clash = kept.clone();
    clash["spec"]["ports"][1]["nodePort"] = json!(node_ports(&lb)[0]);
    let err = client.update("Service", "default", &clash).await.expect_err("the port belongs to lb");
    assert!(err.to_string().contains("spec.ports[1].nodePort"), "{err}");

    // Deleting frees the IP and the node ports.
    client.delete("Service", "default", "a").await.unwrap();
    let again = client
        .create("Service", "default", &service("a2", json!({"clusterIP": ip_a, "ports": [{"port": 80}]})))
        .await
        .expect("a's IP is free once a is gone");
    assert_eq!(cluster_ip(&again), ip_a);
    client.delete("Service", "default", "np").await.unwrap();
    client
        .create(
            "Service",
            "default",
            &service("np3", json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": ports[0]}]})),
        )
        .await
        .expect("np's node port is free once np is gone");
}

/// Creates that reach the apiserver at once, each wanting a free IP and
/// node port, still get distinct ones: in their replies and in storage.
#[tokio::test]
async fn concurrent_creates_never_share_a_cluster_ip_or_node_port() {
    const SERVICES: usize = 40;
    let cluster = Cluster::start().await.expect("cluster");
    let client = cluster.client();
    let creates = (0..SERVICES).map(|i| {
        let client = client.clone();
        let svc = service(&format!("c{i:02}"), json!({"type": "NodePort", "ports": [{"port": 80}]}));
        tokio::spawn(async move { client.create("Service", "default", &svc).await })
    });
    let created: Vec<Value> = futures::future::join_all(creates)
        .await
        .into_iter()
        .map(|joined| joined.expect("create task").expect("every create succeeds"))
        .collect();
    let stored = client.list("Service", "default", &skiff_client::ListParams::default()).await.unwrap().items;
    let stored: Vec<&Value> =
        stored.iter().filter(|s| s["metadata"]["name"].as_str().is_some_and(|n| n.starts_with('c'))).collect();
    for (what, services) in [("replies", created.iter().collect::<Vec<_>>()), ("storage", stored)] {
        assert_eq!(services.len(), SERVICES, "{what}");
        let ips: BTreeSet<&str> = services.iter().map(|s| cluster_ip(s)).collect();
        assert_eq!(ips.len(), SERVICES, "distinct cluster IPs in {what}: {ips:?}");
        assert!(!ips.contains(""), "every Service in {what} has a cluster IP");
        let ports: BTreeSet<i64> = services.iter().flat_map(|s| node_ports(s)).collect();
        assert_eq!(ports.len(), SERVICES, "distinct node ports in {what}: {ports:?}");
    }
}

// === Endpoints ===

fn node(name: &str, pod_cidr: Option<&str>) -> Value {
    let mut n = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}});
    if let Some(c) = pod_cidr {
        n["spec"] = json!({"podCIDR": c, "podCIDRs": [c]});
    }
    n
}

fn pod(name: &str, web_port: Option<i64>) -> Value {
    let ports: Vec<Value> = web_port.map(|p| json!({"name": "web", "containerPort": p})).into_iter().collect();
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "c", "image": "busybox", "ports": ports}]}
    })
}

/// Binds the pod to `node` (once) and reports it Running with `ip`, Ready or not.
async fn set_pod_state(client: &Client, name: &str, node: &str, ip: &str, ready: bool) {
    let mut pod = client.get("Pod", "default", name).await.unwrap();
    if pod["spec"]["nodeName"].as_str().unwrap_or_default().is_empty() {
        let uid = pod["metadata"]["uid"].as_str().unwrap_or_default().to_string();
        pod = client.bind("default", name, node, &uid).await.unwrap();
    }
    let now = "2024-01-01T00:00:00Z";
    pod["status"] = json!({
        "phase": "Running",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
            {"type": "Ready", "status": if ready { "True" } else { "False" }, "lastTransitionTime": now},
        ]
    });
    client.update_status("Pod", "default", &pod).await.unwrap();
}

/// (port, ready IPs, not-ready IPs) for each subset, sorted.
type Subsets = Vec<(i64, Vec<String>, Vec<String>)>;

fn summary(ep: &Value) -> Subsets {
    let ips = |list: &Value| -> Vec<String> {
        list.as_array().into_iter().flatten().filter_map(|a| a["ip"].as_str().map(str::to_string)).collect()
    };
    let mut out: Subsets = ep["subsets"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| (s["ports"][0]["port"].as_i64().unwrap_or(0), ips(&s["addresses"]), ips(&s["notReadyAddresses"])))
        .collect();
    out.sort();
    out
}

async fn endpoints_become(client: &Client, name: &str, want: Subsets) -> Value {
    eventually(&format!("endpoints {name} to be {want:?}"), || async {
        let ep = client.get("Endpoints", "default", name).await.ok()?;
        (summary(&ep) == want).then_some(ep)
    })
    .await
}

fn s(ips: &[&str]) -> Vec<String> {
    ips.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn endpoints_follow_pods_ready_and_not() {
    let cluster = with_controller_manager().await;
    let client = cluster.client();
    client.create("Node", "", &node("n1", None)).await.unwrap();
    for (name, port) in [("p1", Some(8080)), ("p2", Some(9090)), ("p3", None), ("p4", Some(8080))] {
        client.create("Pod", "default", &pod(name, port)).await.unwrap();
    }
    set_pod_state(&client, "p1", "n1", "10.42.0.11", true).await;
    set_pod_state(&client, "p2", "n1", "10.42.0.12", true).await;
    set_pod_state(&client, "p3", "n1", "10.42.0.13", true).await;
    set_pod_state(&client, "p4", "n1", "10.42.0.14", false).await;
    // A pod without an IP yet is left out.
    client.create("Pod", "default", &pod("p5", Some(8080))).await.unwrap();

    client
        .create(
            "Service",
            "default",
            &service(
                "web",
                json!({"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "web"}]}),
            ),
        )
        .await
        .unwrap();
    // The named port resolves per pod; p3 has no such port.
    let ep = endpoints_become(
        &client,
        "web",
        vec![(8080, s(&["10.42.0.11"]), s(&["10.42.0.14"])), (9090, s(&["10.42.0.12"]), vec![])],
    )
    .await;
    let subset = ep["subsets"].as_array().unwrap().iter().find(|s| s["ports"][0]["port"] == 8080).unwrap();
    assert_eq!(subset["ports"][0]["name"], "http");
    let address = &subset["addresses"][0];
    assert_eq!(address["nodeName"], "n1");
    assert_eq!(address["targetRef"]["kind"], "Pod");
    assert_eq!(address["targetRef"]["name"], "p1");
    assert_eq!(address["targetRef"]["namespace"], "default");
    let p1 = client.get("Pod", "default", "p1").await.unwrap();
    assert_eq!(address["targetRef"]["uid"], p1["metadata"]["uid"]);

    // p1 turns unready: it moves to notReadyAddresses.
    set_pod_state(&client, "p1", "n1", "10.42.0.11", false).await;
    endpoints_become(
        &client,
        "web",
        vec![(8080, vec![], s(&["10.42.0.11", "10.42.0.14"])), (9090, s(&["10.42.0.12"]), vec![])],
    )
    .await;
    // p4 turns ready, p2 is deleted.
    set_pod_state(&client, "p4", "n1", "10.42.0.14", true).await;
    client.delete("Pod", "default", "p2").await.unwrap();
    endpoints_become(&client, "web", vec![(8080, s(&["10.42.0.14"]), s(&["10.42.0.11"]))]).await;

    // A numeric targetPort reaches every pod, p3 included.
    client
        .create(
            "Service",
            "default",
            &service("numeric", json!({"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 7000}]})),
        )
        .await
        .unwrap();
    endpoints_become(&client, "numeric", vec![(7000, s(&["10.42.0.13", "10.42.0.14"]), s(&["10.42.0.11"]))]).await;

    // A Service without selector: its Endpoints are the user's.
    client.create("Service", "default", &service("manual", json!({"ports": [{"port": 80}]}))).await.unwrap();
    let manual = json!({
        "apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "manual"},
        "subsets": [{"addresses": [{"ip": "192.168.1.1"}], "ports": [{"port": 80}]}]
    });
    client.create("Endpoints", "default", &manual).await.unwrap();

    // Deleting the Service deletes its Endpoints.
    client.delete("Service", "default", "web").await.unwrap();
    eventually("endpoints web to go with its service", || async {
        client.get("Endpoints", "default", "web").await.err().filter(|e| e.is_not_found())
    })
    .await;
    // By now the controller has had its chance at "manual" too.
    let kept = client.get("Endpoints", "default", "manual").await.expect("user endpoints stay");
    assert_eq!(summary(&kept), vec![(80, s(&["192.168.1.1"]), vec![])]);
    let numeric = client.get("Endpoints", "default", "numeric").await.expect("other endpoints stay");
    assert_eq!(summary(&numeric).len(), 1);
}

// === node IPAM ===

fn pod_cidr(n: &Value) -> Option<String> {
    let c = n["spec"]["podCIDR"].as_str()?.to_string();
    assert_eq!(n["spec"]["podCIDRs"], json!([c]), "podCIDRs matches podCIDR");
    Some(c)
}

#[tokio::test]
async fn nodes_get_distinct_pod_cidrs() {
    let cluster = with_controller_manager().await;
    let client = cluster.client();
    // One node brings its own (as a kubelet with --pod-cidr does): it keeps it.
    client.create("Node", "", &node("fixed", Some("10.42.0.0/24"))).await.unwrap();
    for name in ["n1", "n2", "n3"] {
        client.create("Node", "", &node(name, None)).await.unwrap();
    }
    let cidrs: Vec<String> = eventually("every node to have a pod CIDR", || async {
        let mut out = Vec::new();
        for name in ["fixed", "n1", "n2", "n3"] {
            out.push(pod_cidr(&client.get("Node", "", name).await.ok()?)?);
        }
        Some(out)
    })
    .await;
    assert_eq!(cidrs[0], "10.42.0.0/24");
    let distinct: BTreeSet<&String> = cidrs.iter().collect();
    assert_eq!(distinct.len(), 4, "{cidrs:?}");
    for c in &cidrs {
        let (addr, mask) = c.split_once('/').unwrap();
        let octets: Vec<u8> = addr.split('.').map(|o| o.parse().unwrap()).collect();
        assert_eq!((octets[0], octets[1], octets[3], mask), (10, 42, 0, "24"), "{c}");
    }

    // A deleted node's CIDR goes to the next node (the lowest free one).
    let freed = cidrs[2].clone();
    client.delete("Node", "", "n2").await.unwrap();
    client.create("Node", "", &node("n4", None)).await.unwrap();
    let got =
        eventually("n4 to have a pod CIDR", || async { pod_cidr(&client.get("Node", "", "n4").await.ok()?) }).await;
    let lowest_taken_after = cidrs.iter().filter(|c| **c != freed).all(|c| *c != got);
    assert!(lowest_taken_after, "n4 got {got}, which another node holds");
    assert_eq!(got, freed, "the freed subnet is the lowest free one");
}
