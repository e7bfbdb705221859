//! `Proxier::sync` against fakes: a fake apiserver feeds the informers, a
//! fake nftables takes the scripts.

use std::time::Duration;

use serde_json::{json, Value};
use skiff_client::fake_server::{eventually, FakeApiserver, Running};
use skiff_telemetry::Metrics;

use super::nft::FakeNftables;
use super::*;

const TABLE: &str = "skiff-test";

struct World {
    server: Running,
    stores: Stores,
    nft: FakeNftables,
    proxier: Proxier,
}

fn service(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"}, "spec": spec})
}

fn endpoints(name: &str, ips: &[&str], port: u16) -> Value {
    let addresses: Vec<Value> = ips.iter().map(|ip| json!({"ip": ip})).collect();
    json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": name, "namespace": "default"},
        "subsets": [{"addresses": addresses, "ports": [{"port": port}]}],
    })
}

impl World {
    /// A proxier over a cluster holding `objects` (kind from each), its caches synced.
    async fn start(objects: &[Value]) -> Self {
        let server = FakeApiserver::start().await;
        server
            .client
            .create("Node", "", &json!({"metadata": {"name": "a"}, "spec": {"podCIDR": "10.42.1.0/24"}}))
            .await
            .unwrap();
        for o in objects {
            server.client.create(o["kind"].as_str().unwrap(), "default", o).await.unwrap();
        }
        let stores = Stores {
            nodes: server.store("").await,
            services: server.store("").await,
            endpoints: server.store("").await,
        };
        let options = Options {
            table: TABLE.into(),
            node_name: "a".into(),
            cluster_cidr: "10.42.0.0/16".parse().unwrap(),
            wireguard_interface: Some("wg-test".into()),
            delete_table_on_exit: false,
        };
        let nft = FakeNftables::default();
        let proxier = Proxier::new(options, stores.clone(), Box::new(nft.clone()), &Metrics::new()).unwrap();
        Self { server, stores, nft, proxier }
    }

    /// Writes `ips` as the Endpoints `name` and waits until the cache has them.
    async fn set_endpoints(&self, name: &str, ips: &[&str], port: u16) {
        let mut object = endpoints(name, ips, port);
        let stored = self.server.client.get("Endpoints", "default", name).await.unwrap();
        object["metadata"]["resourceVersion"] = stored["metadata"]["resourceVersion"].clone();
        let written = self.server.client.update("Endpoints", "default", &object).await.unwrap();
        let version = written["metadata"]["resourceVersion"].as_str().unwrap().to_string();
        let key = format!("default/{name}");
        let cached = || self.stores.endpoints.get(&key).and_then(|e| e.metadata.resource_version.clone());
        eventually("the Endpoints cache to catch up", || cached().as_deref() == Some(version.as_str())).await;
    }

    fn last_script(&self) -> String {
        self.nft.applied().last().cloned().unwrap_or_default()
    }
}

/// Service `web` (10.43.0.10:80) with one ready endpoint, 10.42.1.5:8080.
fn one_web_endpoint() -> [Value; 2] {
    [
        service("web", json!({"clusterIP": "10.43.0.10", "ports": [{"port": 80}]})),
        endpoints("web", &["10.42.1.5"], 8080),
    ]
}

fn is_full(script: &str) -> bool {
    script.starts_with(&format!("add table ip {TABLE}\ndelete table ip {TABLE}\n"))
}

#[tokio::test]
async fn cluster_ips_and_node_ports_go_to_their_endpoints_and_ports_without_any_are_rejected() {
    let mut w = World::start(&[
        service("web", json!({"clusterIP": "10.43.0.10", "ports": [{"port": 80}]})),
        endpoints("web", &["10.42.1.5"], 8080),
        service(
            "np",
            json!({"type": "NodePort", "clusterIP": "10.43.0.11", "ports": [{"port": 81, "nodePort": 30081}]}),
        ),
        endpoints("np", &["10.42.2.5", "10.42.3.5"], 8081),
        service(
            "empty",
            json!({"type": "NodePort", "clusterIP": "10.43.0.12", "ports": [{"port": 82, "nodePort": 30082}]}),
        ),
    ])
    .await;

    assert_eq!(w.proxier.sync().await, None);

    let script = w.last_script();
    assert!(is_full(&script), "the first sync replaces the table:\n{script}");
    for expected in [
        "10.43.0.10 . tcp . 80 : goto svc-",
        "meta l4proto tcp dnat to 10.42.1.5:8080",
        "10.43.0.11 . tcp . 81 : goto svc-",
        "tcp . 30081 : goto ext-",
        "dnat to numgen random mod 2 map { 0 : 10.42.2.5 . 8081, 1 : 10.42.3.5 . 8081 }",
        "add element ip skiff-test no-endpoint-services { 10.43.0.12 . tcp . 82 : goto reject-chain }",
        "add element ip skiff-test no-endpoint-nodeports { tcp . 30082 : goto reject-chain }",
    ] {
        assert!(script.contains(expected), "no {expected:?} in\n{script}");
    }
    assert!(!script.contains("10.43.0.12 . tcp . 82 : goto svc-"), "a port without endpoints has no DNAT");
}

#[tokio::test]
async fn only_changes_are_sent_and_nothing_when_nothing_changed() {
    let mut w = World::start(&one_web_endpoint()).await;
    assert_eq!(w.proxier.sync().await, None);
    assert_eq!(w.proxier.sync().await, None);
    assert_eq!(w.nft.applied().len(), 1, "an unchanged state sends no transaction");

    w.set_endpoints("web", &["10.42.1.6"], 8080).await;
    assert_eq!(w.proxier.sync().await, None);

    let script = w.last_script();
    assert!(!is_full(&script), "a change sends a difference:\n{script}");
    assert!(script.contains("dnat to 10.42.1.6:8080"), "{script}");
}

#[tokio::test]
async fn a_failed_transaction_is_followed_by_a_full_resync_after_a_back_off() {
    let mut w = World::start(&one_web_endpoint()).await;
    assert_eq!(w.proxier.sync().await, None);

    w.set_endpoints("web", &["10.42.1.6"], 8080).await;
    w.nft.fail_next(2);
    assert_eq!(w.proxier.sync().await, Some(Duration::from_secs(1)));
    assert_eq!(w.proxier.sync().await, Some(Duration::from_secs(2)), "the back-off grows while failures go on");
    assert_eq!(w.nft.applied().len(), 1);

    assert_eq!(w.proxier.sync().await, None);
    let script = w.last_script();
    assert!(is_full(&script), "after a failure the kernel's state is unknown: the whole table goes in\n{script}");
    assert!(script.contains("dnat to 10.42.1.6:8080"), "{script}");
}

#[tokio::test]
async fn the_table_is_deleted_on_shutdown_only_when_asked() {
    for delete in [false, true] {
        let mut w = World::start(&one_web_endpoint()).await;
        w.proxier.options.delete_table_on_exit = delete;
        let changes = w.proxier.subscribe();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let nft = w.nft.clone();
        let run = tokio::spawn(w.proxier.run(changes, async move {
            let _ = stopped.await;
        }));
        eventually("the first sync", || !nft.applied().is_empty()).await;
        stop.send(()).unwrap();
        run.await.unwrap().unwrap();

        let applied = nft.applied();
        let last = applied.last().unwrap();
        let deleted = format!("add table ip {TABLE}\ndelete table ip {TABLE}\n");
        if delete {
            assert_eq!(applied.len(), 2, "{applied:?}");
            assert_eq!(last, &deleted, "the last transaction removes the table");
        } else {
            assert_eq!(applied.len(), 1, "the table stays for the next run: {applied:?}");
            assert!(is_full(last), "{last}");
        }
    }
}
