//! Cluster networking on the multi-host harness: three hosts (network
//! namespaces on one bridge), each with containerd, a kubelet and
//! skiff-overlay; pods on them talk across hosts over WireGuard, reach
//! Services by name and ClusterIP, and NodePorts answer on every host.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Endpoints, Event, Node, Pod, Service};
use skiff_testkit::{eventually, Cluster, ClusterOptions, NetworkOptions};

#[path = "support/upstream.rs"]
mod upstream;
#[path = "support/wire.rs"]
mod wire;
use wire::{count_wire, wire_packets};

async fn networked(hosts: usize, options: NetworkOptions) -> Cluster {
    let network = NetworkOptions { hosts, ..options };
    Cluster::start_with(ClusterOptions { network: Some(network), ..Default::default() })
        .await
        .expect("start a networked cluster")
}

fn apply(cluster: &Cluster, yaml: &str) {
    let out = cluster.skiffctl(&["apply", "-f", "-"], Some(yaml)).unwrap();
    assert!(out.status.success(), "apply failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Runs `sh -c script` in pod `ns/name`; its stdout when it exits 0.
fn exec(cluster: &Cluster, ns: &str, pod: &str, script: &str) -> Option<String> {
    let out = cluster.skiffctl(&["exec", "-n", ns, pod, "--", "sh", "-c", script], None).ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A GET from inside pod `ns/pod`; busybox 1.35's `wget -T` crashes, so
/// `timeout` bounds it.
fn pod_get(cluster: &Cluster, ns: &str, pod: &str, url: &str) -> Option<String> {
    exec(cluster, ns, pod, &format!("timeout 5 wget -qO- {url}"))
}

fn busybox_pod(cluster: &Cluster, ns: &str, name: &str, node: &str) -> String {
    let image = cluster.network().unwrap().registry().image("busybox:latest");
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  nodeName: {node}\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: sh\n    image: {image}\n    command: [sleep, '3600']\n"
    )
}

async fn running_pod(cluster: &Cluster, ns: &str, name: &str) -> Pod {
    let api = cluster.client().api::<Pod>(ns);
    eventually(&format!("pod {ns}/{name} running with an IP"), || async {
        let pod = api.get(name).await.ok()?;
        let status = pod.status.as_ref()?;
        (status.phase.as_deref() == Some("Running") && status.pod_ip.is_some()).then_some(pod)
    })
    .await
}

fn pod_ip(pod: &Pod) -> String {
    pod.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap()
}

fn node_of(pod: &Pod) -> String {
    pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default()
}

/// A pod on host-1 reaches a pod on host-2 by its IP, and what crossed
/// the LAN was WireGuard only.
#[tokio::test]
async fn pods_reach_pods_on_other_hosts_over_wireguard() {
    let cluster = networked(2, NetworkOptions::default()).await;
    let ns = "default";
    let server_image = cluster.network().unwrap().registry().image("testserver:latest");
    apply(
        &cluster,
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: server, namespace: {ns}}}\nspec:\n  nodeName: host-2\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: web\n    image: {server_image}\n    ports: [{{containerPort: 8080}}]\n"
        ),
    );
    apply(&cluster, &busybox_pod(&cluster, ns, "client", "host-1"));
    let server = running_pod(&cluster, ns, "server").await;
    running_pod(&cluster, ns, "client").await;
    let host1 = cluster.network().unwrap().host("host-1").unwrap().host.clone();
    count_wire(&host1);

    let url = format!("http://{}:8080/", pod_ip(&server));
    let body =
        eventually("client on host-1 reaches the server on host-2", || async { pod_get(&cluster, ns, "client", &url) })
            .await;
    assert!(body.contains("server"), "the answer names the server pod: {body}");
    assert_eq!(wire_packets(&host1, "plain"), 0, "pod traffic left host-1 unencrypted");
    assert!(wire_packets(&host1, "wireguard") > 0, "no WireGuard packets left host-1");

    // A node joining is peered and routed; leaving, unrouted.
    let routes = || String::from_utf8_lossy(&host1.run("ip", &["route"]).unwrap().stdout).into_owned();
    let ghost_key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="; // any 32 bytes
    create_node(&cluster, "ghost", ghost_key, "10.42.200.0/24").await;
    eventually("host-1 routes the new node's pod CIDR into WireGuard", || async {
        routes().contains("10.42.200.0/24 dev wg-skiff").then_some(())
    })
    .await;
    cluster.client().api::<Node>("").delete("ghost").await.unwrap();
    eventually("the route goes with the node", || async { (!routes().contains("10.42.200.0/24")).then_some(()) }).await;

    // A node with a malformed key is reported and skipped; the mesh works on.
    create_node(&cluster, "bogus", "not-a-key", "10.42.201.0/24").await;
    eventually("a Warning Event about the bogus key", || async {
        let events = cluster.client().api::<Event>("default").list(&Default::default()).await.ok()?;
        events
            .items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("InvalidWireGuardKey") && e.involved_object.name.as_deref() == Some("bogus")
            })
            .then_some(())
    })
    .await;
    assert!(pod_get(&cluster, ns, "client", &url).is_some_and(|b| b.contains("server")), "the mesh broke");
}

/// A Node as an overlay would publish it, with `key` as its WireGuard key.
async fn create_node(cluster: &Cluster, name: &str, key: &str, pod_cidr: &str) {
    let node: Node = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "annotations": {
            "skiff.io/wireguard-public-key": key, "skiff.io/wireguard-endpoint": "172.31.254.1:51820"}},
        "spec": {"podCIDR": pod_cidr},
    }))
    .unwrap();
    cluster.client().api::<Node>("").create(&node).await.unwrap();
}

/// Raw HTTP/1.0 GET from this (root) namespace; None when nothing answers.
fn http_get(addr: SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET / HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.starts_with("HTTP/1.1 200").then_some(out)
}

/// The backend pod that answered: testserver's body starts with
/// `hostname: NAME`, and a pod's hostname is its name.
fn answered_by(body: &str) -> String {
    body.lines().find_map(|l| l.strip_prefix("hostname: ")).unwrap_or("").trim().to_string()
}

/// Which backends answer `url` from pod `client` over `tries` requests.
fn backends_seen(cluster: &Cluster, ns: &str, client: &str, url: &str, tries: usize) -> BTreeSet<String> {
    let script = format!("for i in $(seq {tries}); do timeout 5 wget -qO- {url} | head -n 1; done");
    let out = exec(cluster, ns, client, &script).unwrap_or_default();
    out.lines().map(answered_by).filter(|l| !l.is_empty()).collect()
}

async fn ready_addresses(cluster: &Cluster, ns: &str, name: &str) -> Vec<String> {
    let eps = cluster.client().api::<Endpoints>(ns).get(name).await.ok();
    let subsets = eps.and_then(|e| e.subsets).unwrap_or_default();
    let mut ips: Vec<String> =
        subsets.iter().flat_map(|s| s.addresses.iter().flatten().map(|a| a.ip.clone())).collect();
    ips.sort();
    ips
}

/// A Deployment across three hosts behind a NodePort Service: found by
/// name through cluster DNS, balanced over every ready backend through the
/// ClusterIP, reachable on every host's NodePort; an unready pod leaves the
/// rotation, a killed host's pods leave the Endpoints, and names outside
/// the cluster resolve through forwarding.
// Multi-threaded: the fake upstream answers on this runtime while the test
// waits on skiffctl exec, which blocks its thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_dns_and_node_ports_across_hosts() {
    let (upstream, upstream_task) = upstream::fake_upstream().await;
    let options = NetworkOptions {
        dns_upstream: vec![upstream.to_string()],
        // Heartbeats well inside the grace period: a live node never looks dead.
        kubelet_args: vec!["--heartbeat-interval=1s".into()],
        controller_manager_args: vec![
            "--node-monitor-grace-period=6s".into(),
            "--default-unreachable-toleration-seconds=2".into(),
        ],
        ..Default::default()
    };
    let mut cluster = networked(3, options).await;
    let ns = "default";
    let image = cluster.network().unwrap().registry().image("testserver:latest");
    apply(
        &cluster,
        &format!(
            r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: {ns}}}
spec:
  replicas: 3
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: web
        image: {image}
        ports: [{{name: http, containerPort: 8080}}]
        readinessProbe: {{httpGet: {{path: /healthz, port: 8080}}, periodSeconds: 1, failureThreshold: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: {ns}}}
spec:
  type: NodePort
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: http}}]
"#
        ),
    );
    apply(&cluster, &busybox_pod(&cluster, ns, "client", "host-1"));
    running_pod(&cluster, ns, "client").await;
    let pods = cluster.client().api::<Pod>(ns);
    let web: Vec<Pod> = eventually("three ready web pods", || async {
        let list = pods.list(&Default::default()).await.ok()?;
        let web: Vec<Pod> =
            list.items.into_iter().filter(|p| p.metadata.name.as_deref().unwrap_or("").starts_with("web-")).collect();
        (web.len() == 3 && ready_addresses(&cluster, ns, "web").await.len() == 3).then_some(web)
    })
    .await;
    let names: BTreeSet<String> = web.iter().filter_map(|p| p.metadata.name.clone()).collect();
    let hosts: BTreeSet<String> = web.iter().map(node_of).collect();
    assert!(hosts.len() >= 2, "the web pods were spread over hosts: {hosts:?}");
    let svc = cluster.client().api::<Service>(ns).get("web").await.unwrap();
    let spec = svc.spec.unwrap();
    let cluster_ip = spec.cluster_ip.clone().unwrap();
    let node_port = spec.ports.unwrap()[0].node_port.unwrap();

    // DNS: the full name and the short one (search path) give the ClusterIP.
    let lookup = eventually("web.default.svc.cluster.local resolves in a pod", || async {
        exec(&cluster, ns, "client", "nslookup web.default.svc.cluster.local").filter(|o| o.contains(&cluster_ip))
    })
    .await;
    assert!(lookup.contains("10.43.0.10"), "the pod asked the cluster DNS service: {lookup}");
    let resolv = exec(&cluster, ns, "client", "cat /etc/resolv.conf").unwrap();
    assert!(resolv.contains("nameserver 10.43.0.10"), "{resolv}");
    assert!(resolv.contains("search default.svc.cluster.local svc.cluster.local cluster.local"), "{resolv}");
    assert!(resolv.contains("ndots:5"), "{resolv}");

    // Every ready backend answers through the ClusterIP, from any host.
    let url = format!("http://{cluster_ip}/");
    let seen = eventually("all three backends answer through the ClusterIP", || async {
        let seen = backends_seen(&cluster, ns, "client", &url, 30);
        (seen == names).then_some(seen)
    })
    .await;
    assert_eq!(seen, names);

    // Hairpin: a pod reaches itself through a Service whose only backend it is.
    let mirror = web[0].metadata.name.clone().unwrap();
    let labels = serde_json::json!({"metadata": {"labels": {"mirror": "yes"}}});
    cluster.client().patch("Pod", ns, &mirror, &labels).await.expect("label the mirror pod");
    apply(
        &cluster,
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: mirror, namespace: {ns}}}\nspec:\n  selector: {{mirror: 'yes'}}\n  ports: [{{port: 80, targetPort: 8080}}]\n"
        ),
    );
    let mirror_ip = cluster.client().api::<Service>(ns).get("mirror").await.unwrap().spec.unwrap().cluster_ip.unwrap();
    let body = eventually(&format!("{mirror} reaches itself through its Service {mirror_ip}"), || async {
        pod_get(&cluster, ns, &mirror, &format!("http://{mirror_ip}/"))
    })
    .await;
    assert_eq!(answered_by(&body), mirror, "{body}");

    // The NodePort answers on every host's address.
    for host in cluster.network().unwrap().hosts() {
        let addr = SocketAddr::new(host.host.ip().into(), node_port as u16);
        let body = eventually(&format!("NodePort {addr}"), || async { http_get(addr) }).await;
        assert!(names.contains(&answered_by(&body)), "{addr} answered from a web pod: {body}");
    }

    // An unready backend leaves the rotation.
    let sick = web.iter().find(|p| node_of(p) == "host-1").unwrap_or(&web[0]);
    let sick_name = sick.metadata.name.clone().unwrap();
    let sick_url = format!("http://{}:8080/fail-health", pod_ip(sick));
    exec(&cluster, ns, "client", &format!("timeout 5 wget -qO- --post-data=x {sick_url}")).expect("fail-health");
    eventually("the unready pod leaves the Endpoints", || async {
        (!ready_addresses(&cluster, ns, "web").await.contains(&pod_ip(sick))).then_some(())
    })
    .await;
    // The client's host updates its rules on its own after the Endpoints
    // change: wait until a sample leaves the sick pod out, then take another.
    eventually("the ClusterIP stops sending to the unready pod", || async {
        let seen = backends_seen(&cluster, ns, "client", &url, 20);
        (!seen.is_empty() && !seen.contains(&sick_name)).then_some(())
    })
    .await;
    let seen = backends_seen(&cluster, ns, "client", &url, 20);
    assert!(!seen.contains(&sick_name), "an unready pod still answered: {seen:?}");
    assert!(!seen.is_empty(), "nothing answered through the ClusterIP");

    // A killed host's pods leave the Endpoints: one that runs a ready
    // backend, not the client's.
    let victim = web
        .iter()
        .find(|p| p.metadata.name != sick.metadata.name && node_of(p) != "host-1")
        .map(node_of)
        .expect("a ready backend off the client's host");
    let on_victim: Vec<String> = web.iter().filter(|p| node_of(p) == victim).map(pod_ip).collect();
    eprintln!("killing {victim} with backends {on_victim:?}");
    cluster.kill_service(&format!("kubelet-{victim}"));
    cluster.kill_service(&format!("overlay-{victim}"));
    eventually(&format!("{victim}'s pods leave the Endpoints"), || async {
        let ready = ready_addresses(&cluster, ns, "web").await;
        on_victim.iter().all(|ip| !ready.contains(ip)).then_some(())
    })
    .await;

    // Names outside the cluster go to the upstream resolver.
    let external = eventually("www.example.test resolves through forwarding", || async {
        exec(&cluster, ns, "client", "nslookup www.example.test").filter(|o| o.contains("192.0.2.1"))
    })
    .await;
    assert!(external.contains("192.0.2.1"));
    upstream_task.abort();
}
