//! What the data plane should do, computed from the informers' caches:
//! one [`ServicePort`] per port of every Service with a ClusterIP, with the
//! ready endpoints the endpoints controller resolved for it.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Endpoints, Node, Service};
use skiff_api::cidr::Cidr;

/// The L4 protocols a Service port may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    fn parse(s: Option<&str>) -> Option<Self> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Self::Tcp),
            "UDP" => Some(Self::Udp),
            "SCTP" => Some(Self::Sctp),
            _ => None,
        }
    }

    /// The name nft's `inet_proto` and `meta l4proto` take.
    pub fn nft(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Sctp => "sctp",
        }
    }
}

/// One port of one Service, as the data plane programs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// `namespace/name/portname` (portname empty for an unnamed port).
    pub key: String,
    pub protocol: Protocol,
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    /// For types NodePort and LoadBalancer.
    pub node_port: Option<u16>,
    /// sessionAffinity: ClientIP.
    pub client_ip_affinity: bool,
    /// Ready endpoints, sorted and without duplicates.
    pub endpoints: Vec<SocketAddrV4>,
}

/// A Service port the data plane cannot express, and why.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Skipped {
    pub key: String,
    pub reason: String,
}

/// The whole desired state of the node's Service data plane.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// Sorted by key.
    pub ports: Vec<ServicePort>,
    /// This node's pod network (spec.podCIDR), for the hairpin masquerade;
    /// None until the node has one.
    pub pod_cidr: Option<Cidr>,
    pub skipped: Vec<Skipped>,
}

/// Computes the desired state from the caches' contents.
pub fn desired(services: &[Arc<Service>], endpoints: &[Arc<Endpoints>], node: Option<&Node>) -> Desired {
    let by_key: HashMap<(&str, &str), &Endpoints> =
        endpoints.iter().map(|e| ((namespace(&e.metadata), name(&e.metadata)), e.as_ref())).collect();
    let mut out = Desired { pod_cidr: pod_cidr(node), ..Default::default() };
    for svc in services {
        let eps = by_key.get(&(namespace(&svc.metadata), name(&svc.metadata))).copied();
        service_ports(svc, eps, &mut out);
    }
    out.ports.sort_by(|a, b| a.key.cmp(&b.key));
    out
}

fn namespace(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> &str {
    meta.namespace.as_deref().unwrap_or("default")
}

fn name(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> &str {
    meta.name.as_deref().unwrap_or("")
}

fn pod_cidr(node: Option<&Node>) -> Option<Cidr> {
    node?.spec.as_ref()?.pod_cidr.as_deref()?.parse().ok()
}

/// Adds the ports of `svc` to `out` (or to its skipped list).
fn service_ports(svc: &Service, eps: Option<&Endpoints>, out: &mut Desired) {
    let Some(spec) = svc.spec.as_ref() else { return };
    if spec.type_.as_deref() == Some("ExternalName") {
        return;
    }
    let ip = match spec.cluster_ip.as_deref() {
        None | Some("") | Some("None") => return,
        Some(ip) => ip,
    };
    let prefix = format!("{}/{}", namespace(&svc.metadata), name(&svc.metadata));
    let Ok(cluster_ip) = ip.parse::<Ipv4Addr>() else {
        out.skipped.push(Skipped { key: prefix, reason: format!("clusterIP {ip:?} is not an IPv4 address") });
        return;
    };
    let with_node_port = matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer"));
    let client_ip_affinity = spec.session_affinity.as_deref() == Some("ClientIP");
    for p in spec.ports.iter().flatten() {
        let port_name = p.name.as_deref().unwrap_or("");
        let key = format!("{prefix}/{port_name}");
        let Some(protocol) = Protocol::parse(p.protocol.as_deref()) else {
            let reason = format!("protocol {:?} is not TCP, UDP or SCTP", p.protocol.as_deref().unwrap_or(""));
            out.skipped.push(Skipped { key, reason });
            continue;
        };
        let Some(port) = u16::try_from(p.port).ok().filter(|p| *p > 0) else {
            out.skipped.push(Skipped { key, reason: format!("port {} is out of range", p.port) });
            continue;
        };
        let node_port =
            if with_node_port { p.node_port.and_then(|n| u16::try_from(n).ok()).filter(|n| *n > 0) } else { None };
        out.ports.push(ServicePort {
            key,
            protocol,
            cluster_ip,
            port,
            node_port,
            client_ip_affinity,
            endpoints: ready_endpoints(eps, port_name),
        });
    }
}

/// The ready addresses × the subset port named like the service port. The
/// endpoints controller already resolved targetPorts, so the name is the
/// whole match; notReadyAddresses never take traffic.
fn ready_endpoints(eps: Option<&Endpoints>, port_name: &str) -> Vec<SocketAddrV4> {
    let mut out = Vec::new();
    for subset in eps.into_iter().flat_map(|e| e.subsets.iter().flatten()) {
        let port = subset
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref().unwrap_or("") == port_name)
            .and_then(|p| u16::try_from(p.port).ok())
            .filter(|p| *p > 0);
        let Some(port) = port else { continue };
        for addr in subset.addresses.iter().flatten() {
            // An address that is not IPv4 can't be a target in an `ip` table.
            if let Ok(ip) = addr.ip.parse::<Ipv4Addr>() {
                out.push(SocketAddrV4::new(ip, port));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(v: serde_json::Value) -> Arc<Service> {
        Arc::new(serde_json::from_value(v).unwrap())
    }

    fn eps(v: serde_json::Value) -> Arc<Endpoints> {
        Arc::new(serde_json::from_value(v).unwrap())
    }

    fn web() -> Arc<Service> {
        svc(json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"type": "NodePort", "clusterIP": "10.43.0.10", "sessionAffinity": "ClientIP",
                     "ports": [{"name": "http", "port": 80, "nodePort": 30080},
                               {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053}]},
        }))
    }

    fn web_endpoints() -> Arc<Endpoints> {
        eps(json!({
            "metadata": {"name": "web", "namespace": "default"},
            "subsets": [
                {"addresses": [{"ip": "10.42.1.3"}, {"ip": "10.42.1.2"}],
                 "notReadyAddresses": [{"ip": "10.42.1.9"}],
                 "ports": [{"name": "http", "port": 8080}, {"name": "dns", "port": 5353, "protocol": "UDP"}]},
                {"addresses": [{"ip": "10.42.2.2"}], "ports": [{"name": "http", "port": 8081}]},
            ],
        }))
    }

    #[test]
    fn ports_get_their_ready_endpoints_by_port_name() {
        let node: Node =
            serde_json::from_value(json!({"metadata": {"name": "n1"}, "spec": {"podCIDR": "10.42.1.0/24"}})).unwrap();
        let d = desired(&[web()], &[web_endpoints()], Some(&node));
        assert_eq!(d.pod_cidr, Some("10.42.1.0/24".parse().unwrap()));
        assert_eq!(d.ports.len(), 2);
        let dns = &d.ports[0];
        assert_eq!(dns.key, "default/web/dns");
        assert_eq!(dns.protocol, Protocol::Udp);
        assert_eq!(dns.node_port, Some(30053));
        assert_eq!(dns.endpoints, vec!["10.42.1.2:5353".parse().unwrap(), "10.42.1.3:5353".parse().unwrap()]);
        let http = &d.ports[1];
        assert_eq!(http.key, "default/web/http");
        assert_eq!((http.cluster_ip, http.port, http.protocol), ("10.43.0.10".parse().unwrap(), 80, Protocol::Tcp));
        assert!(http.client_ip_affinity);
        let want: Vec<SocketAddrV4> =
            ["10.42.1.2:8080", "10.42.1.3:8080", "10.42.2.2:8081"].iter().map(|s| s.parse().unwrap()).collect();
        assert_eq!(http.endpoints, want, "ready addresses only, from every subset with the port");
    }

    #[test]
    fn headless_external_name_and_cluster_ip_only_services() {
        let headless = svc(json!({"metadata": {"name": "h"}, "spec": {"clusterIP": "None", "ports": [{"port": 80}]}}));
        let external =
            svc(json!({"metadata": {"name": "x"}, "spec": {"type": "ExternalName", "externalName": "example.com"}}));
        let plain = svc(json!({"metadata": {"name": "p", "namespace": "ns"},
                               "spec": {"clusterIP": "10.43.0.5", "ports": [{"port": 80, "nodePort": 30001}]}}));
        let d = desired(&[headless, external, plain], &[], None);
        assert_eq!(d.ports.len(), 1);
        let p = &d.ports[0];
        assert_eq!(p.key, "ns/p/");
        assert_eq!(p.node_port, None, "a ClusterIP service has no node port even if one is written");
        assert!(p.endpoints.is_empty(), "no Endpoints object: no endpoints");
        assert_eq!(d.pod_cidr, None);
    }

    #[test]
    fn inexpressible_ports_are_skipped_with_a_reason() {
        let v6 = svc(json!({"metadata": {"name": "v6"}, "spec": {"clusterIP": "fd00::1", "ports": [{"port": 80}]}}));
        let odd = svc(json!({"metadata": {"name": "odd"},
                             "spec": {"clusterIP": "10.43.0.6", "ports": [{"name": "a", "port": 80, "protocol": "DCCP"}]}}));
        let d = desired(&[v6, odd], &[], None);
        assert!(d.ports.is_empty());
        let keys: Vec<&str> = d.skipped.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(keys, ["default/v6", "default/odd/a"]);
    }
}
