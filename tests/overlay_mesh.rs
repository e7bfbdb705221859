//! skiff-overlay's WireGuard mesh alone, on real network namespaces: two
//! hosts run skiff-overlay (userspace WireGuard, each with its own
//! /run/wireguard) against a real apiserver. The test writes the Nodes
//! itself (no kubelet, no controller-manager) and checks the mesh from the
//! outside: published keys, `wg show`, pings through the tunnel, what the
//! LAN carried, a node leaving, a malformed Node, and wireguard-go dying.
//!
//! Needs root (namespaces, nft) and the binaries:
//! `cargo build -p skiff-apiserver -p skiff-overlay --bins`.

use std::net::SocketAddr;

use serde_json::{json, Value};
use skiff_client::Client;
use skiff_testkit::netns::{Host, Lan};
use skiff_testkit::{eventually, free_port, Cluster, ClusterOptions};

const IFACE: &str = "wg-skiff";
#[path = "support/metrics.rs"]
mod metrics;
#[path = "support/wire.rs"]
mod wire;
use metrics::scrape;
use wire::{count_wire, wire_packets};

const KEY: &str = "skiff.io/wireguard-public-key";
const ENDPOINT: &str = "skiff.io/wireguard-endpoint";

/// A Node as a kubelet would register it and the controller-manager cut
/// its podCIDR: name, podCIDR and the host's InternalIP.
async fn create_node(client: &Client, name: &str, pod_cidr: &str, ip: &str, annotations: Value) {
    let node = json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "annotations": annotations}, "spec": {"podCIDR": pod_cidr}});
    let mut node = client.create("Node", "", &node).await.expect("create a Node");
    node["status"] = json!({"addresses": [{"type": "InternalIP", "address": ip}]});
    client.update_status("Node", "", &node).await.expect("set the Node's addresses");
}

async fn annotation(client: &Client, node: &str, key: &str) -> Option<String> {
    let node = client.get("Node", "", node).await.ok()?;
    node["metadata"]["annotations"][key].as_str().map(str::to_string)
}

/// `wg show IFACE what` inside the overlay's own mount and network
/// namespaces (its /run/wireguard holds the control socket).
fn wg_show(overlay_pid: u32, what: &str) -> String {
    let pid = overlay_pid.to_string();
    let out = std::process::Command::new("nsenter")
        .args(["-t", &pid, "-m", "-n", "wg", "show", IFACE, what])
        .output()
        .expect("run wg");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One ICMP echo from `from` to `to` answered (busybox's ping: the one
/// install-deps guarantees).
fn pings(from: &Host, to: &str) -> bool {
    from.command("busybox").args(["ping", "-c", "1", "-W", "1", to]).output().is_ok_and(|o| o.status.success())
}

fn routes(host: &Host) -> String {
    String::from_utf8_lossy(&host.run("ip", &["route"]).expect("ip route").stdout).into_owned()
}

/// The wireguard-go that process `pid` started (its child).
fn wireguard_go_of(pid: u32) -> Option<u32> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let children: Vec<u32> = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| c.split_whitespace().filter_map(|p| p.parse().ok()).collect::<Vec<u32>>())
        .collect();
    children
        .into_iter()
        .find(|c| std::fs::read_to_string(format!("/proc/{c}/comm")).is_ok_and(|comm| comm.trim() == "wireguard-go"))
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hosts_mesh_over_userspace_wireguard() {
    let mut lan = Lan::create().expect("create the LAN (needs root)");
    let (a, b) = (lan.add_host("wga").unwrap(), lan.add_host("wgb").unwrap());
    let apiserver = SocketAddr::new(lan.gateway().into(), free_port());
    let mut cluster = Cluster::start_with(ClusterOptions { apiserver_listen: Some(apiserver), ..Default::default() })
        .await
        .expect("start etcd and the apiserver");
    let client = cluster.client();
    create_node(&client, "a", "10.42.1.0/24", &a.ip().to_string(), json!({})).await;
    create_node(&client, "b", "10.42.2.0/24", &b.ip().to_string(), json!({})).await;

    let mut metrics = Vec::new();
    for (host, name) in [(&a, "a"), (&b, "b")] {
        let state_dir = cluster.dir().join(format!("overlay-{name}"));
        let args = [format!("--node-name={name}"), format!("--state-dir={}", state_dir.display())];
        let args = [args.to_vec(), vec!["--wireguard=userspace".to_string()]].concat();
        let id = format!("overlay-{name}");
        metrics.push(cluster.start_service_in(host, &id, "skiff-overlay", &args, true).await.expect("start overlay"));
    }
    let pid = |id: &str| cluster.service(id).and_then(|s| s.process.pid()).expect("overlay pid");
    let (pid_a, pid_b) = (pid("overlay-a"), pid("overlay-b"));

    // Both publish their key and endpoint.
    let key_b = eventually("b publishes its WireGuard key", || annotation(&client, "b", KEY)).await;
    let key_a = eventually("a publishes its WireGuard key", || annotation(&client, "a", KEY)).await;
    assert_eq!(annotation(&client, "a", ENDPOINT).await, Some(format!("{}:51820", a.ip())));
    assert_eq!(annotation(&client, "b", ENDPOINT).await, Some(format!("{}:51820", b.ip())));

    // Each lists the other as its one peer, allowed the other's podCIDR.
    eventually("a peers with b", || async { wg_show(pid_a, "allowed-ips").contains(&key_b).then_some(()) }).await;
    assert_eq!(wg_show(pid_a, "allowed-ips").trim(), format!("{key_b}\t10.42.2.0/24"));
    eventually("b peers with a", || async {
        (wg_show(pid_b, "allowed-ips").trim() == format!("{key_a}\t10.42.1.0/24")).then_some(())
    })
    .await;
    // The overlay routes b's podCIDR after it configures the peer.
    let route = format!("10.42.2.0/24 dev {IFACE}");
    eventually("a routes b's podCIDR into WireGuard", || async { routes(&a).contains(&route).then_some(()) }).await;

    // Through the tunnel: b's WireGuard address, and an address of b's pod
    // network that only b's routing knows (a veth pair stands for a pod's
    // bridge: this kernel has no dummy links).
    b.run("ip", &["link", "add", "skpod0", "type", "veth", "peer", "name", "skpod1"]).unwrap();
    b.run("ip", &["addr", "add", "10.42.2.1/24", "dev", "skpod0"]).unwrap();
    b.run("ip", &["link", "set", "skpod1", "up"]).unwrap();
    b.run("ip", &["link", "set", "skpod0", "up"]).unwrap();
    count_wire(&a);
    eventually("a pings b's WireGuard address", || async { pings(&a, "10.42.2.0").then_some(()) }).await;
    assert!(pings(&a, "10.42.2.1"), "a reaches b's pod network");
    assert_eq!(wire_packets(&a, "plain"), 0, "pod-network traffic left a unencrypted");
    assert!(wire_packets(&a, "wireguard") > 0, "no WireGuard packets left a");

    let scraped = scrape(&a, metrics[0]);
    assert!(scraped.contains("skiff_overlay_wireguard_peers 1"), "{scraped}");
    assert!(scraped.contains("skiff_overlay_wireguard_info{mode=\"userspace\"} 1"), "{scraped}");

    // A Node with a malformed key: reported with an Event, skipped; a keeps b.
    let bad = json!({KEY: "not-a-key", ENDPOINT: "172.31.254.1:51820"});
    create_node(&client, "c", "10.42.3.0/24", "172.31.254.1", bad).await;
    eventually("a Warning Event about c's key", || async {
        let events = client.list("Event", "default", &Default::default()).await.ok()?;
        events
            .items
            .iter()
            .any(|e| e["reason"] == "InvalidWireGuardKey" && e["involvedObject"]["name"] == "c")
            .then_some(())
    })
    .await;
    assert!(pings(&a, "10.42.2.1"), "the mesh broke over a malformed Node");
    assert!(!routes(&a).contains("10.42.3.0/24"), "c was routed");

    // wireguard-go dies: the overlay starts it again and reprograms it.
    let wg_go = wireguard_go_of(pid_a).expect("a's wireguard-go");
    std::process::Command::new("kill").args(["-KILL", &wg_go.to_string()]).status().unwrap();
    eventually("a's mesh is back after wireguard-go died", || async {
        let back = wireguard_go_of(pid_a).is_some_and(|p| p != wg_go) && wg_show(pid_a, "peers").contains(&key_b);
        (back && pings(&a, "10.42.2.1")).then_some(())
    })
    .await;

    // b leaves: a drops its peer and route.
    client.delete("Node", "", "b").await.expect("delete Node b");
    eventually("a forgets b", || async {
        let gone = !wg_show(pid_a, "peers").contains(&key_b) && !routes(&a).contains("10.42.2.0/24");
        gone.then_some(())
    })
    .await;
    let scraped = scrape(&a, metrics[0]);
    assert!(scraped.contains("skiff_overlay_wireguard_peers 0"), "{scraped}");
    drop(cluster);
    drop(lan);
}
