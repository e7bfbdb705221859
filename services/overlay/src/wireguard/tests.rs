//! `Mesh::reconcile` against fakes: a fake apiserver feeds the Node
//! informer, and a fake WireGuard device and host links take the result.

use std::net::Ipv4Addr;

use serde_json::{json, Value};
use skiff_client::fake_server::{eventually, FakeApiserver, Running};
use skiff_client::Api;

use super::fake::{FakeLinks, FakeWireGuard};
use super::*;

const SELF: &str = "a";
const PORT: u16 = 51820;

struct World {
    server: Running,
    nodes: Store<Node>,
    wg: FakeWireGuard,
    links: FakeLinks,
    mesh: Mesh,
}

fn options() -> Options {
    Options {
        mode: Mode::Userspace,
        node_name: SELF.into(),
        interface: "wg-test".into(),
        listen_port: PORT,
        mtu: 1420,
        state_dir: PathBuf::new(),
        cluster_cidr: "10.42.0.0/16".parse().unwrap(),
    }
}

/// A registered node `n` with pod CIDR 10.42.`n`.0/24 and InternalIP
/// 172.31.0.`n`, having published `key` (unless None).
fn node(name: &str, n: u8, key: Option<&Key>) -> Value {
    let mut node = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name},
        "spec": {"podCIDR": format!("10.42.{n}.0/24")},
        "status": {"addresses": [{"type": "InternalIP", "address": format!("172.31.0.{n}")}]},
    });
    if let Some(key) = key {
        node["metadata"]["annotations"] = json!({
            WIREGUARD_PUBLIC_KEY_ANNOTATION: key.get_public().to_base64(),
            WIREGUARD_ENDPOINT_ANNOTATION: format!("172.31.0.{n}:{PORT}"),
        });
    }
    node
}

impl World {
    /// A mesh for node `a` over a cluster holding `nodes`, its informer synced.
    async fn start(nodes: &[Value]) -> Self {
        let server = FakeApiserver::start().await;
        for n in nodes {
            server.client.create("Node", "", n).await.unwrap();
        }
        let store = server.store::<Node>("").await;
        let (wg, links) = (FakeWireGuard::default(), FakeLinks::with_link("wg-test"));
        let host = Host { key: Key::generate_private(), device: Box::new(wg.clone()), links: Box::new(links.clone()) };
        let recorder = EventRecorder::new(server.client.clone(), "skiff-overlay");
        let mesh = Mesh::on(host, options(), server.client.clone(), recorder, store.clone(), &Metrics::new()).unwrap();
        Self { server, nodes: store, wg, links, mesh }
    }

    fn api(&self) -> Api<Node> {
        self.server.client.api::<Node>("")
    }

    /// Writes `node` over the stored one and waits until the cache has it.
    async fn replace(&self, mut node: Value) {
        let name = node["metadata"]["name"].as_str().unwrap().to_string();
        let stored = self.server.client.get("Node", "", &name).await.unwrap();
        node["metadata"]["resourceVersion"] = stored["metadata"]["resourceVersion"].clone();
        let written = self.server.client.update("Node", "", &node).await.unwrap();
        let version = written["metadata"]["resourceVersion"].as_str().unwrap().to_string();
        self.until(|nodes| {
            nodes.get(&name).is_some_and(|n| n.metadata.resource_version.as_deref() == Some(version.as_str()))
        })
        .await;
    }

    async fn delete(&self, name: &str) {
        self.api().delete(name).await.unwrap();
        self.until(|nodes| nodes.get(name).is_none()).await;
    }

    async fn until(&self, done: impl Fn(&Store<Node>) -> bool) {
        eventually("the Node cache to catch up", || done(&self.nodes)).await;
    }

    fn peer_names(&self) -> Vec<String> {
        self.wg.peers().unwrap_or_default().into_iter().map(|p| p.node).collect()
    }

    fn routes(&self) -> Vec<String> {
        self.links.routes().iter().map(Cidr::to_string).collect()
    }
}

#[tokio::test]
async fn every_other_published_node_is_a_peer_routed_by_its_pod_cidr() {
    let (b, c) = (Key::generate_private(), Key::generate_private());
    let mut w = World::start(&[node(SELF, 1, None), node("b", 2, Some(&b)), node("c", 3, Some(&c))]).await;

    w.mesh.reconcile().await.unwrap();

    let peers = w.wg.peers().unwrap();
    assert_eq!(w.peer_names(), ["b", "c"], "the node itself is no peer");
    assert_eq!(peers[0].public_key, b.get_public());
    assert_eq!(peers[0].endpoint, "172.31.0.2:51820".parse().unwrap());
    assert_eq!(w.wg.listen_port(), Some(PORT));
    assert_eq!(w.routes(), ["10.42.2.0/24", "10.42.3.0/24"]);
    assert_eq!(w.links.up_with_mtu(), Some(1420));
    assert_eq!(w.links.addresses().into_iter().collect::<Vec<_>>(), ["10.42.1.0".parse::<Ipv4Addr>().unwrap()]);
    let own = w.api().get(SELF).await.unwrap();
    let annotations = own.metadata.annotations.unwrap();
    assert_eq!(annotations[WIREGUARD_PUBLIC_KEY_ANNOTATION], w.mesh.key.get_public().to_base64());
    assert_eq!(annotations[WIREGUARD_ENDPOINT_ANNOTATION], "172.31.0.1:51820");
}

#[tokio::test]
async fn peers_and_routes_follow_nodes_that_come_change_and_go() {
    let (b, c, d) = (Key::generate_private(), Key::generate_private(), Key::generate_private());
    let mut w = World::start(&[node(SELF, 1, None), node("b", 2, Some(&b)), node("c", 3, Some(&c))]).await;
    w.mesh.reconcile().await.unwrap();

    let rekeyed = Key::generate_private();
    let mut moved = node("b", 2, Some(&rekeyed));
    moved["metadata"]["annotations"][WIREGUARD_ENDPOINT_ANNOTATION] = json!("172.31.9.2:51821");
    w.replace(moved).await;
    w.delete("c").await;
    w.server.client.create("Node", "", &node("d", 4, Some(&d))).await.unwrap();
    w.until(|nodes| nodes.get("d").is_some()).await;
    w.mesh.reconcile().await.unwrap();

    assert_eq!(w.peer_names(), ["b", "d"]);
    let b_peer = &w.wg.peers().unwrap()[0];
    assert_eq!(
        (b_peer.public_key.clone(), b_peer.endpoint),
        (rekeyed.get_public(), "172.31.9.2:51821".parse().unwrap())
    );
    assert_eq!(w.routes(), ["10.42.2.0/24", "10.42.4.0/24"], "the route of the node that left is gone");
}

#[tokio::test]
async fn an_unchanged_mesh_is_not_configured_again() {
    let b = Key::generate_private();
    let mut w = World::start(&[node(SELF, 1, None), node("b", 2, Some(&b))]).await;
    w.mesh.reconcile().await.unwrap();
    w.mesh.reconcile().await.unwrap();
    assert_eq!(w.wg.configures(), 1);
}

#[tokio::test]
async fn nothing_is_configured_before_this_node_has_a_pod_cidr() {
    let b = Key::generate_private();
    let mut own = node(SELF, 1, None);
    own["spec"] = json!({});
    let mut w = World::start(&[own, node("b", 2, Some(&b))]).await;
    w.mesh.reconcile().await.unwrap();
    assert_eq!((w.wg.peers(), w.routes().len()), (None, 0));
}

#[tokio::test]
async fn a_failed_configure_or_route_sync_is_retried_by_the_next_reconcile() {
    let b = Key::generate_private();
    let mut w = World::start(&[node(SELF, 1, None), node("b", 2, Some(&b))]).await;

    w.wg.fail_next_configures(1);
    assert!(matches!(w.mesh.reconcile().await, Err(Error::WireGuard { .. })));
    assert_eq!(w.wg.peers(), None);
    w.mesh.reconcile().await.unwrap();
    assert_eq!(w.peer_names(), ["b"]);

    w.delete("b").await;
    w.links.fail_next_route_syncs(1);
    assert!(matches!(w.mesh.reconcile().await, Err(Error::Netlink { .. })));
    assert_eq!(w.routes(), ["10.42.2.0/24"]);
    w.mesh.reconcile().await.unwrap();
    assert_eq!(w.routes(), Vec::<String>::new());
}

#[tokio::test]
async fn a_dead_wireguard_is_restarted_and_configured_again() {
    let b = Key::generate_private();
    let mut w = World::start(&[node(SELF, 1, None), node("b", 2, Some(&b))]).await;
    w.mesh.reconcile().await.unwrap();

    w.wg.kill();
    w.mesh.reconcile().await.unwrap();

    assert_eq!(w.wg.restarts(), 1);
    assert_eq!(w.peer_names(), ["b"], "the peers went with the process and are set again");
}
