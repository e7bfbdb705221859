//! skiff-overlay's Service data plane on real network namespaces: a proxy
//! host runs skiff-overlay (WireGuard off) against a real apiserver; two
//! backend hosts on the same LAN run skiff-testserver, each in its own UTS
//! namespace so it answers with its own hostname. The test writes the
//! Node, Service and Endpoints itself (no controllers run) and checks what
//! actually answers through the ClusterIP and the NodePort.
//!
//! Needs root (namespaces, nft) and the binaries:
//! `cargo build -p skiff-apiserver -p skiff-overlay -p skiff-testserver --bins`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use skiff_client::Client;
use skiff_testkit::netns::{Host, Lan};
use skiff_testkit::{eventually, free_port, Cluster, ClusterOptions, Process};

#[path = "support/metrics.rs"]
mod metrics;
use metrics::scrape;

const CLUSTER_IP: &str = "10.43.7.10";
const NODE_PORT: u16 = 30780;
const BACKEND_PORT: u16 = 8080;

/// `skiff-testserver` in `host`, answering with hostname `name`.
fn backend(host: &Host, name: &str, dir: &Path) -> Process {
    let server = skiff_testkit::binary("skiff-testserver").expect("build skiff-testserver");
    let script = format!("hostname {name} && exec \"$0\"");
    let args = ["--uts", "sh", "-c", &script, &server.to_string_lossy()];
    host.spawn(name, Path::new("unshare"), &args, dir, false, false).expect("start a backend")
}

/// Why a GET through the proxy got no backend's answer.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Failure {
    /// curl's exit code (7: connection refused).
    Curl(i32),
    /// Something answered, but not as skiff-testserver does.
    NotABackend(String),
}

/// The hostname of the backend that answered a GET of `url` from `host`.
fn get(host: &Host, url: &str) -> Result<String, Failure> {
    let out = host.command("curl").args(["-sS", "--max-time", "3", url]).output().expect("run curl");
    if !out.status.success() {
        return Err(Failure::Curl(out.status.code().unwrap_or(-1)));
    }
    let body = String::from_utf8_lossy(&out.stdout);
    let hostname = body.lines().find_map(|l| l.strip_prefix("hostname: ")).filter(|h| !h.is_empty());
    hostname.map(str::to_string).ok_or_else(|| Failure::NotABackend(body.into_owned()))
}

/// What answered `tries` GETs: backends by hostname, and each kind of failure.
fn answered(host: &Host, url: &str, tries: usize) -> BTreeSet<Result<String, Failure>> {
    (0..tries).map(|_| get(host, url)).collect()
}

/// Only these backends, and no failure.
fn set(names: &[&str]) -> BTreeSet<Result<String, Failure>> {
    names.iter().map(|n| Ok(n.to_string())).collect()
}

async fn write_endpoints(client: &Client, addresses: &[&Host]) {
    let addresses: Vec<_> = addresses.iter().map(|h| json!({"ip": h.ip().to_string()})).collect();
    let subsets = if addresses.is_empty() {
        json!([])
    } else {
        json!([{"addresses": addresses, "ports": [{"name": "http", "port": BACKEND_PORT}]}])
    };
    let mut eps = client.get("Endpoints", "default", "web").await.expect("read Endpoints");
    eps["subsets"] = subsets;
    client.update("Endpoints", "default", &eps).await.expect("update Endpoints");
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_ip_node_port_no_endpoints_and_affinity() {
    let mut lan = Lan::create().expect("create the LAN (needs root)");
    let proxy = lan.add_host("px").unwrap();
    let (b1, b2) = (lan.add_host("b1").unwrap(), lan.add_host("b2").unwrap());
    let outside = lan.add_host("out").unwrap();
    let apiserver = SocketAddr::new(lan.gateway().into(), free_port());
    let mut cluster = Cluster::start_with(ClusterOptions { apiserver_listen: Some(apiserver), ..Default::default() })
        .await
        .expect("start etcd and the apiserver");
    let _backends = [backend(&b1, "b1", cluster.dir()), backend(&b2, "b2", cluster.dir())];
    let client = cluster.client();

    client
        .create(
            "Node",
            "",
            &json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
                                     "spec": {"podCIDR": "10.42.1.0/24"}}),
        )
        .await
        .expect("create Node n1");
    client
        .create(
            "Service",
            "default",
            &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
            "spec": {"type": "NodePort", "clusterIP": CLUSTER_IP,
                     "ports": [{"name": "http", "port": 80, "targetPort": BACKEND_PORT, "nodePort": NODE_PORT}]}}),
        )
        .await
        .expect("create Service web");
    client
        .create(
            "Endpoints",
            "default",
            &json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "web"},
            "subsets": [{"addresses": [{"ip": b1.ip().to_string()}, {"ip": b2.ip().to_string()}],
                         "ports": [{"name": "http", "port": BACKEND_PORT}]}]}),
        )
        .await
        .expect("create Endpoints web");

    let state_dir = cluster.dir().join("overlay-state");
    let args = ["--wireguard=off", "--node-name=n1", "--nft-table=skiff"].map(String::from).to_vec();
    let args = [args, vec![format!("--state-dir={}", state_dir.display())]].concat();
    let metrics =
        cluster.start_service_in(&proxy, "overlay", "skiff-overlay", &args, false).await.expect("start skiff-overlay");
    // Until the first sync, the ClusterIP would be routed off the machine.
    eventually("the first sync programs the service", || async {
        scrape(&proxy, metrics).contains("skiff_overlay_proxy_services_programmed 1").then_some(())
    })
    .await;

    // Both backends answer through the ClusterIP.
    let url = format!("http://{CLUSTER_IP}/");
    eventually("both backends answer through the ClusterIP", || async {
        (answered(&proxy, &url, 30) == set(&["b1", "b2"])).then_some(())
    })
    .await;

    // The NodePort on the proxy host's address, from another host.
    let node_url = format!("http://{}:{NODE_PORT}/", proxy.ip());
    eventually("both backends answer through the NodePort from another host", || async {
        (answered(&outside, &node_url, 30) == set(&["b1", "b2"])).then_some(())
    })
    .await;

    // One address left: only it answers.
    write_endpoints(&client, &[&b2]).await;
    eventually("only b2 answers once b1 left the Endpoints", || async {
        (answered(&proxy, &url, 20) == set(&["b2"])).then_some(())
    })
    .await;

    // No address: refused at once, not a timeout.
    write_endpoints(&client, &[]).await;
    let refused = eventually("the ClusterIP refuses connections without endpoints", || async {
        let start = Instant::now();
        (get(&proxy, &url) == Err(Failure::Curl(7))).then(|| start.elapsed())
    })
    .await;
    assert!(refused < Duration::from_secs(1), "refusing took {refused:?}");
    assert_eq!(get(&outside, &node_url), Err(Failure::Curl(7)), "the NodePort refuses too");

    // Session affinity: one client, one backend.
    write_endpoints(&client, &[&b1, &b2]).await;
    eventually("both backends are back", || async { (answered(&proxy, &url, 30) == set(&["b1", "b2"])).then_some(()) })
        .await;
    client
        .patch("Service", "default", "web", &json!({"spec": {"sessionAffinity": "ClientIP"}}))
        .await
        .expect("set sessionAffinity");
    let kept = eventually("with ClientIP affinity one backend answers every request", || async {
        let seen = answered(&proxy, &url, 20);
        (seen.len() == 1 && seen.iter().all(Result::is_ok)).then_some(seen)
    })
    .await;
    assert!(kept == set(&["b1"]) || kept == set(&["b2"]), "{kept:?}");
    assert_eq!(answered(&proxy, &url, 40), kept, "the client stays on its backend");

    let metrics = scrape(&proxy, metrics);
    assert!(metrics.contains("skiff_overlay_proxy_services_programmed 1"), "{metrics}");
    assert!(metrics.contains("skiff_overlay_proxy_sync_errors_total 0"), "{metrics}");
}
