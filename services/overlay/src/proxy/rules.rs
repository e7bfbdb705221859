//! The nftables ruleset the desired state renders to, as data: chains with
//! their rule lines and the elements of the verdict maps. [`super::script`]
//! turns it (or the difference between two) into an nft script.
//!
//! Layout (kube-proxy's nftables mode is the model):
//! - `prerouting` (dstnat) and `output` (nat, `priority -100`: nft 1.0.6
//!   refuses `dstnat` on the output hook) jump to `services`, which looks
//!   the destination up in `service-ips` (ClusterIP . proto . port) and,
//!   for the node's own addresses, `service-nodeports` (proto . port).
//! - One chain per service port with ready endpoints, `svc-HASH-NS/NAME/PORT`,
//!   DNATs to one endpoint: `numgen random`, or `jhash ip saddr` for
//!   sessionAffinity ClientIP. The hash keeps a client on one endpoint
//!   while the endpoint set stays the same; timeoutSeconds is not honoured.
//! - NodePorts enter through `ext-HASH-…`, which marks the packet so that
//!   `postrouting` masquerades it: the reply must come back through this node.
//! - Ports without ready endpoints are rejected from filter chains on the
//!   input, forward and output hooks (`reject` is not allowed in nat
//!   chains), through `no-endpoint-services` / `no-endpoint-nodeports`.

use std::collections::BTreeMap;
use std::fmt::Write;

use skiff_api::cidr::Cidr;

use super::model::{Desired, ServicePort};

/// The verdict maps and their types, in the order they are declared.
pub const MAPS: [(&str, &str); 4] = [
    (SERVICE_IPS, "ipv4_addr . inet_proto . inet_service : verdict"),
    (SERVICE_NODEPORTS, "inet_proto . inet_service : verdict"),
    (NO_ENDPOINT_SERVICES, "ipv4_addr . inet_proto . inet_service : verdict"),
    (NO_ENDPOINT_NODEPORTS, "inet_proto . inet_service : verdict"),
];
pub const SERVICE_IPS: &str = "service-ips";
pub const SERVICE_NODEPORTS: &str = "service-nodeports";
pub const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
pub const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";

/// The packet mark that asks `postrouting` to masquerade.
const MASQ_MARK: &str = "0x4000";
const REJECT_CHAIN: &str = "reject-chain";
/// nft's limit on a chain name is 256 bytes; keys longer than this are cut
/// (the hash in the name keeps them apart).
const MAX_NAME: usize = 200;

/// One chain: the hook line of a base chain, and its rules in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// `type nat hook prerouting priority dstnat ; policy accept ;`
    pub base: Option<&'static str>,
    pub rules: Vec<String>,
}

/// A whole table's contents.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    pub chains: BTreeMap<String, Chain>,
    /// Map name → element key → verdict.
    pub maps: BTreeMap<&'static str, BTreeMap<String, String>>,
}

/// What the rules need beyond the desired services.
#[derive(Debug, Clone)]
pub struct Network<'a> {
    pub cluster_cidr: Cidr,
    pub wireguard_interface: Option<&'a str>,
}

/// Renders the ruleset for `desired`.
pub fn render(desired: &Desired, net: &Network<'_>) -> Ruleset {
    let mut rs = Ruleset::default();
    for (map, _) in MAPS {
        rs.maps.insert(map, BTreeMap::new());
    }
    base_chains(&mut rs, desired.pod_cidr, net);
    for port in &desired.ports {
        service_port(&mut rs, port, net.cluster_cidr);
    }
    rs
}

fn base_chains(rs: &mut Ruleset, pod_cidr: Option<Cidr>, net: &Network<'_>) {
    let mut chain = |name: &str, base: Option<&'static str>, rules: Vec<String>| {
        rs.chains.insert(name.to_string(), Chain { base, rules });
    };
    let jump = |to: &str| vec![format!("jump {to}")];
    chain("prerouting", Some("type nat hook prerouting priority dstnat ; policy accept ;"), jump("services"));
    chain("output", Some("type nat hook output priority -100 ; policy accept ;"), jump("services"));
    chain(
        "postrouting",
        Some("type nat hook postrouting priority srcnat ; policy accept ;"),
        masquerades(pod_cidr, net),
    );
    chain(
        "services",
        None,
        vec![
            format!("ip daddr . meta l4proto . th dport vmap @{SERVICE_IPS}"),
            format!("fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @{SERVICE_NODEPORTS}"),
        ],
    );
    let filter = |hook: &str| match hook {
        "input" => Some("type filter hook input priority -110 ; policy accept ;"),
        "forward" => Some("type filter hook forward priority -110 ; policy accept ;"),
        _ => Some("type filter hook output priority -110 ; policy accept ;"),
    };
    chain(
        "filter-input",
        filter("input"),
        vec![
            format!(
                "ct state new fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @{NO_ENDPOINT_NODEPORTS}"
            ),
            "ct state new jump endpoints-check".into(),
        ],
    );
    chain("filter-forward", filter("forward"), vec!["ct state new jump endpoints-check".into()]);
    chain("filter-output", filter("output"), vec!["ct state new jump endpoints-check".into()]);
    chain("endpoints-check", None, vec![format!("ip daddr . meta l4proto . th dport vmap @{NO_ENDPOINT_SERVICES}")]);
    // A TCP client sees "connection refused" at once; others get ICMP
    // port-unreachable, which UDP and SCTP sockets report the same way.
    chain(REJECT_CHAIN, None, vec!["meta l4proto tcp reject with tcp reset".into(), "reject".into()]);
}

fn masquerades(pod_cidr: Option<Cidr>, net: &Network<'_>) -> Vec<String> {
    let cluster = net.cluster_cidr;
    let mut rules = vec![format!(
        "meta mark & {MASQ_MARK} == {MASQ_MARK} meta mark set meta mark ^ {MASQ_MARK} masquerade fully-random"
    )];
    // A pod reaching itself through its service: without this the reply
    // would come from the pod to itself and never match the connection.
    if let Some(p) = pod_cidr {
        rules.push(format!("ct status dnat ip saddr {p} ip daddr {p} masquerade"));
    }
    // Pods leaving the cluster network: the outside has no route back to pods.
    match net.wireguard_interface {
        Some(wg) => {
            rules.push(format!("ip saddr {cluster} ip daddr != {cluster} oifname != \"{wg}\" masquerade"));
            // Host traffic into the tunnel leaves with the LAN address, which
            // the peers' allowed-ips drop: give it the node's pod-network one.
            rules.push(format!("oifname \"{wg}\" ip saddr != {cluster} masquerade"));
        }
        None => rules.push(format!("ip saddr {cluster} ip daddr != {cluster} masquerade")),
    }
    rules
}

fn service_port(rs: &mut Ruleset, p: &ServicePort, cluster: Cidr) {
    let proto = p.protocol.nft();
    let ip_key = format!("{} . {proto} . {}", p.cluster_ip, p.port);
    let node_key = p.node_port.map(|n| format!("{proto} . {n}"));
    if p.endpoints.is_empty() {
        let reject = format!("goto {REJECT_CHAIN}");
        element(rs, NO_ENDPOINT_SERVICES, ip_key, reject.clone());
        if let Some(k) = node_key {
            element(rs, NO_ENDPOINT_NODEPORTS, k, reject);
        }
        return;
    }
    let svc = chain_name("svc", &p.key);
    let rules = vec![
        // Traffic from outside the pod network (the host itself, another
        // node routing to the ClusterIP) must come back through here.
        format!("ip saddr != {cluster} meta mark set meta mark | {MASQ_MARK}"),
        dnat(p),
    ];
    rs.chains.insert(svc.clone(), Chain { base: None, rules });
    element(rs, SERVICE_IPS, ip_key, format!("goto {svc}"));
    if let Some(k) = node_key {
        let ext = chain_name("ext", &p.key);
        let rules = vec![format!("meta mark set meta mark | {MASQ_MARK} goto {svc}")];
        rs.chains.insert(ext.clone(), Chain { base: None, rules });
        element(rs, SERVICE_NODEPORTS, k, format!("goto {ext}"));
    }
}

/// Two services can't own one key (the apiserver allocates them apart);
/// if they ever do, the first by key keeps it rather than failing the
/// whole transaction.
fn element(rs: &mut Ruleset, map: &'static str, key: String, verdict: String) {
    rs.maps.entry(map).or_default().entry(key).or_insert(verdict);
}

fn dnat(p: &ServicePort) -> String {
    let proto = p.protocol.nft();
    if let [only] = p.endpoints.as_slice() {
        return format!("meta l4proto {proto} dnat to {only}");
    }
    let pick = if p.client_ip_affinity {
        format!("jhash ip saddr mod {} seed 0x{:08x}", p.endpoints.len(), fnv1a(&p.key))
    } else {
        format!("numgen random mod {}", p.endpoints.len())
    };
    let mut map = String::new();
    for (i, ep) in p.endpoints.iter().enumerate() {
        let sep = if i == 0 { "" } else { ", " };
        let _ = write!(map, "{sep}{i} : {} . {}", ep.ip(), ep.port());
    }
    format!("meta l4proto {proto} dnat to {pick} map {{ {map} }}")
}

/// `PREFIX-HASH-KEY`: the key keeps it readable in `nft list`, the hash
/// keeps it unique once characters nft won't take in a name are replaced.
pub fn chain_name(prefix: &str, key: &str) -> String {
    let safe: String = key
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '.') { c } else { '_' })
        .take(MAX_NAME)
        .collect();
    format!("{prefix}-{:08x}-{safe}", fnv1a(key))
}

/// 32-bit FNV-1a: stable across runs and builds, unlike std's hasher.
fn fnv1a(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5u32, |h, b| (h ^ b as u32).wrapping_mul(0x0100_0193))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::model::Protocol;

    pub fn port(key: &str, ip: &str, endpoints: &[&str]) -> ServicePort {
        ServicePort {
            key: key.into(),
            protocol: Protocol::Tcp,
            cluster_ip: ip.parse().unwrap(),
            port: 80,
            node_port: None,
            client_ip_affinity: false,
            endpoints: endpoints.iter().map(|e| e.parse().unwrap()).collect(),
        }
    }

    fn net() -> Network<'static> {
        Network { cluster_cidr: "10.42.0.0/16".parse().unwrap(), wireguard_interface: Some("wg-skiff") }
    }

    #[test]
    fn service_ports_render_to_chains_and_map_elements() {
        let mut web = port("default/web/http", "10.43.0.10", &["10.42.1.2:8080", "10.42.2.2:8080"]);
        web.node_port = Some(30080);
        let mut sticky = port("default/sticky/", "10.43.0.11", &["10.42.1.2:80", "10.42.2.2:80"]);
        sticky.client_ip_affinity = true;
        let one = port("default/one/", "10.43.0.12", &["10.42.1.7:81"]);
        let mut none = port("default/none/", "10.43.0.13", &[]);
        none.node_port = Some(30013);
        let desired =
            Desired { ports: vec![web, sticky, one, none], pod_cidr: "10.42.1.0/24".parse().ok(), skipped: vec![] };
        let rs = render(&desired, &net());

        let svc = chain_name("svc", "default/web/http");
        assert!(svc.starts_with("svc-") && svc.ends_with("-default/web/http"), "{svc}");
        assert_eq!(
            rs.chains[&svc].rules,
            [
                "ip saddr != 10.42.0.0/16 meta mark set meta mark | 0x4000",
                "meta l4proto tcp dnat to numgen random mod 2 map { 0 : 10.42.1.2 . 8080, 1 : 10.42.2.2 . 8080 }",
            ]
        );
        let sticky_rule = &rs.chains[&chain_name("svc", "default/sticky/")].rules[1];
        assert!(sticky_rule.starts_with("meta l4proto tcp dnat to jhash ip saddr mod 2 seed 0x"), "{sticky_rule}");
        assert_eq!(rs.chains[&chain_name("svc", "default/one/")].rules[1], "meta l4proto tcp dnat to 10.42.1.7:81");
        assert!(!rs.chains.contains_key(&chain_name("svc", "default/none/")), "no endpoints: no chain");

        let ext = chain_name("ext", "default/web/http");
        assert_eq!(rs.chains[&ext].rules, [format!("meta mark set meta mark | 0x4000 goto {svc}")]);
        assert_eq!(rs.maps[SERVICE_IPS]["10.43.0.10 . tcp . 80"], format!("goto {svc}"));
        assert_eq!(rs.maps[SERVICE_IPS].len(), 3);
        assert_eq!(rs.maps[SERVICE_NODEPORTS]["tcp . 30080"], format!("goto {ext}"));
        assert_eq!(rs.maps[NO_ENDPOINT_SERVICES]["10.43.0.13 . tcp . 80"], "goto reject-chain");
        assert_eq!(rs.maps[NO_ENDPOINT_NODEPORTS]["tcp . 30013"], "goto reject-chain");

        let post = &rs.chains["postrouting"].rules;
        assert!(post.contains(&"ct status dnat ip saddr 10.42.1.0/24 ip daddr 10.42.1.0/24 masquerade".to_string()));
        assert!(post.contains(&"oifname \"wg-skiff\" ip saddr != 10.42.0.0/16 masquerade".to_string()));
    }

    #[test]
    fn without_wireguard_or_pod_cidr_the_masquerades_shrink() {
        let net = Network { wireguard_interface: None, ..net() };
        let rs = render(&Desired::default(), &net);
        let post = &rs.chains["postrouting"].rules;
        assert_eq!(post.len(), 2, "{post:?}");
        assert_eq!(post[1], "ip saddr 10.42.0.0/16 ip daddr != 10.42.0.0/16 masquerade");
    }

    #[test]
    fn chain_names_are_safe_and_distinct() {
        let a = chain_name("svc", "ns/we b/p");
        let b = chain_name("svc", "ns/we_b/p");
        assert!(a.ends_with("-ns/we_b/p") && b.ends_with("-ns/we_b/p"));
        assert_ne!(a, b);
        assert!(chain_name("svc", &"x".repeat(1000)).len() < 256);
    }
}
