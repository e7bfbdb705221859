//! The gateway role (`--role gateway`): a host that is not a node but must
//! reach pods at their own addresses, such as skiff-ingress's container in
//! docker-compose. It routes each node's podCIDR via that node's
//! InternalIP (host-gw: the nodes are on the gateway's own network), kept
//! equal to the Node cache on every change, as the mesh keeps its peers.
//!
//! Nothing is published and nothing is tunnelled: this hop is the one link
//! of the private network the hosts share. Pods' traffic between nodes
//! still crosses WireGuard, and a pod's reply to the gateway goes straight
//! back (the node routes the gateway's address on that same link).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::Ipv4Addr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use skiff_api::cidr::Cidr;
use skiff_client::{Changes, Store};
use skiff_telemetry::Metrics;

use crate::link::{Links, Netlink};
use crate::metrics::GatewayMetrics;
use crate::nodes::{internal_ip, pod_cidr};
use crate::Error;

/// How often the routes are checked without a change (someone removed one).
const RESYNC: Duration = Duration::from_secs(10);
/// Retry after a failed reconcile.
const RETRY: Duration = Duration::from_secs(1);

pub struct Gateway {
    nodes: Store<Node>,
    links: Box<dyn Links>,
    cluster_cidr: Cidr,
    metrics: GatewayMetrics,
}

impl Gateway {
    pub fn new(nodes: Store<Node>, cluster_cidr: Cidr, metrics: &Metrics) -> Result<Self, Error> {
        Self::on(Box::new(Netlink::connect()?), nodes, cluster_cidr, metrics)
    }

    /// A gateway driving `links` (real, or a fake in unit tests).
    pub(crate) fn on(
        links: Box<dyn Links>,
        nodes: Store<Node>,
        cluster_cidr: Cidr,
        metrics: &Metrics,
    ) -> Result<Self, Error> {
        Ok(Self { nodes, links, cluster_cidr, metrics: GatewayMetrics::register(metrics)? })
    }

    pub fn subscribe(&self) -> Changes {
        Changes::new().watch(self.nodes.subscribe())
    }

    /// Keeps the routes equal to the nodes until `shutdown`. The routes
    /// stay when it stops, so the ingress keeps reaching pods across a
    /// restart; the next start replaces whatever changed meanwhile.
    pub async fn run(self, mut changes: Changes, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        tokio::pin!(shutdown);
        loop {
            let wait = match self.reconcile().await {
                Ok(()) => RESYNC,
                Err(error) => {
                    self.metrics.errors.inc();
                    tracing::warn!(error = format!("{error:#}"), "reconciling the gateway's routes");
                    RETRY
                }
            };
            tokio::select! {
                _ = &mut shutdown => return Ok(()),
                open = changes.changed() => if !open { return Ok(()) },
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn reconcile(&self) -> Result<(), Error> {
        let nodes = self.nodes.list();
        let routes = desired_routes(nodes.iter().map(|n| n.as_ref()), self.cluster_cidr);
        self.links.sync_gateway_routes(&routes).await?;
        self.metrics.routes.set(routes.len() as i64);
        Ok(())
    }
}

/// podCIDR → InternalIP of every node that has both, the podCIDR inside
/// `cluster_cidr` (a route for anything else would be hijacking it).
pub fn desired_routes<'a>(nodes: impl IntoIterator<Item = &'a Node>, cluster_cidr: Cidr) -> BTreeMap<Cidr, Ipv4Addr> {
    nodes
        .into_iter()
        .filter(|node| node.metadata.deletion_timestamp.is_none())
        .filter_map(|node| {
            let cidr = pod_cidr(node).filter(|c| within(c, cluster_cidr))?;
            let via: Ipv4Addr = internal_ip(node)?.parse().ok()?;
            Some((cidr, via))
        })
        .collect()
}

fn within(cidr: &Cidr, outer: Cidr) -> bool {
    cidr.prefix() >= outer.prefix() && cidr.nth(0).is_some_and(|base| outer.contains(base))
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};
    use skiff_client::fake_server::{eventually, FakeApiserver};

    use super::*;
    use crate::wireguard::fake::FakeLinks;

    fn node(name: &str, cidr: Option<&str>, ip: Option<&str>) -> Node {
        let mut node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}});
        if let Some(cidr) = cidr {
            node["spec"] = json!({"podCIDR": cidr});
        }
        if let Some(ip) = ip {
            node["status"] = json!({"addresses": [{"type": "InternalIP", "address": ip}]});
        }
        serde_json::from_value(node).unwrap()
    }

    fn cluster() -> Cidr {
        "10.42.0.0/16".parse().unwrap()
    }

    #[test]
    fn each_node_with_a_pod_cidr_and_address_gets_a_route_via_itself() {
        let nodes = [
            node("a", Some("10.42.1.0/24"), Some("172.30.0.21")),
            node("b", Some("10.42.2.0/24"), Some("172.30.0.22")),
            node("no-cidr-yet", None, Some("172.30.0.23")),
            node("no-address-yet", Some("10.42.4.0/24"), None),
            node("outside", Some("192.168.0.0/24"), Some("172.30.0.25")),
            node("bad-address", Some("10.42.6.0/24"), Some("not-an-ip")),
        ];
        let routes = desired_routes(&nodes, cluster());
        let want: BTreeMap<Cidr, Ipv4Addr> = [
            ("10.42.1.0/24".parse().unwrap(), Ipv4Addr::new(172, 30, 0, 21)),
            ("10.42.2.0/24".parse().unwrap(), Ipv4Addr::new(172, 30, 0, 22)),
        ]
        .into();
        assert_eq!(routes, want);
    }

    #[test]
    fn a_node_being_deleted_loses_its_route() {
        let mut leaving = node("a", Some("10.42.1.0/24"), Some("172.30.0.21"));
        leaving.metadata.deletion_timestamp = Some(skiff_api::clock::now_time());
        assert!(desired_routes(&[leaving], cluster()).is_empty());
    }

    #[tokio::test]
    async fn the_routes_follow_the_nodes_and_a_failed_sync_is_retried() {
        let server = FakeApiserver::start().await;
        let create = |v: Value| {
            let client = server.client.clone();
            async move { client.create("Node", "", &v).await.unwrap() }
        };
        create(serde_json::to_value(node("a", Some("10.42.1.0/24"), Some("172.30.0.21"))).unwrap()).await;
        let nodes = server.store::<Node>("").await;

        let links = FakeLinks::with_link("unused");
        links.fail_next_route_syncs(1);
        let gateway = Gateway::on(Box::new(links.clone()), nodes, cluster(), &Metrics::new()).unwrap();
        let changes = gateway.subscribe();
        let (quit, quitting) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(gateway.run(changes, async move {
            let _ = quitting.await;
        }));
        eventually("the first node's route", || links.gateway_routes().len() == 1).await;

        create(serde_json::to_value(node("b", Some("10.42.2.0/24"), Some("172.30.0.22"))).unwrap()).await;
        eventually("the second node's route", || links.gateway_routes().len() == 2).await;
        server.client.delete("Node", "", "a").await.unwrap();
        eventually("the deleted node's route to go", || {
            let routes = links.gateway_routes();
            routes.len() == 1 && routes.values().all(|via| *via == Ipv4Addr::new(172, 30, 0, 22))
        })
        .await;

        quit.send(()).unwrap();
        running.await.unwrap().unwrap();
    }
}
