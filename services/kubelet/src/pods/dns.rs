//! A pod's /etc/resolv.conf, as Kubernetes writes it: handed to the runtime
//! as the sandbox's DNS config, which containerd writes into the pod.
//!
//! - `ClusterFirst` (the default): the cluster DNS service, the search path
//!   `<ns>.svc.<domain> svc.<domain> <domain>` then the host's, `ndots:5`.
//!   Without `--cluster-dns` it falls back to `Default`, as the kubelet does.
//!   A hostNetwork pod gets `Default` unless it asks for
//!   `ClusterFirstWithHostNet`.
//! - `Default`: the node's own resolv.conf.
//! - `None`: only what `spec.dnsConfig` says.
//!
//! `spec.dnsConfig` is merged on top in every case: its nameservers and
//! searches appended (duplicates dropped), its options replacing same-named
//! ones.

use std::net::Ipv4Addr;

use crate::runtime::proto;
use k8s_openapi::api::core::v1::Pod;

/// Kubernetes' limits: resolvers read at most 3 nameservers and 32 search
/// domains.
const MAX_NAMESERVERS: usize = 3;
const MAX_SEARCHES: usize = 32;

/// The node's DNS settings.
#[derive(Debug, Clone, Default)]
pub struct NodeDns {
    /// The cluster DNS service's IPs (`--cluster-dns`).
    pub cluster_dns: Vec<Ipv4Addr>,
    /// `--cluster-domain`, e.g. `cluster.local`.
    pub cluster_domain: String,
    /// The node's resolv.conf, parsed.
    pub host: HostResolv,
}

/// The nameservers, search domains and options of a resolv.conf.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostResolv {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

impl HostResolv {
    pub fn parse(text: &str) -> Self {
        let mut out = Self::default();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => out.servers.extend(words.next().map(str::to_string)),
                // The last search line wins, as in the resolver.
                Some("search") => out.searches = words.map(str::to_string).collect(),
                Some("options") => out.options.extend(words.map(str::to_string)),
                _ => {}
            }
        }
        out
    }

    /// The file at `path`; empty (logged) when it can't be read.
    pub fn read(path: &std::path::Path) -> Self {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "reading the host's resolv.conf");
                Self::default()
            }
        }
    }
}

/// The sandbox DNS config for `pod`.
pub fn dns_config(pod: &Pod, node: &NodeDns) -> proto::DnsConfig {
    let spec = pod.spec.as_ref();
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    let policy = spec.and_then(|s| s.dns_policy.as_deref()).unwrap_or("ClusterFirst");
    let cluster = !node.cluster_dns.is_empty()
        && match policy {
            "ClusterFirstWithHostNet" => true,
            "ClusterFirst" => !host_network,
            _ => false,
        };
    let mut config = if policy == "None" {
        proto::DnsConfig::default()
    } else if cluster {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let domain = node.cluster_domain.trim_end_matches('.');
        let mut searches = vec![format!("{ns}.svc.{domain}"), format!("svc.{domain}"), domain.to_string()];
        searches.extend(node.host.searches.iter().cloned());
        proto::DnsConfig {
            servers: node.cluster_dns.iter().map(ToString::to_string).collect(),
            searches,
            options: vec!["ndots:5".into()],
        }
    } else {
        proto::DnsConfig {
            servers: node.host.servers.clone(),
            searches: node.host.searches.clone(),
            options: node.host.options.clone(),
        }
    };
    if let Some(extra) = spec.and_then(|s| s.dns_config.as_ref()) {
        append_unique(&mut config.servers, extra.nameservers.iter().flatten().cloned());
        append_unique(&mut config.searches, extra.searches.iter().flatten().cloned());
        for option in extra.options.iter().flatten() {
            let rendered = match &option.value {
                Some(v) => format!("{}:{v}", option.name.as_deref().unwrap_or_default()),
                None => option.name.clone().unwrap_or_default(),
            };
            let name = rendered.split(':').next().unwrap_or_default().to_string();
            config.options.retain(|o| o.split(':').next() != Some(name.as_str()));
            config.options.push(rendered);
        }
    }
    config.servers.truncate(MAX_NAMESERVERS);
    config.searches.truncate(MAX_SEARCHES);
    config
}

fn append_unique(to: &mut Vec<String>, items: impl IntoIterator<Item = String>) {
    for item in items {
        if !to.contains(&item) {
            to.push(item);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node() -> NodeDns {
        NodeDns {
            cluster_dns: vec![Ipv4Addr::new(10, 43, 0, 10)],
            cluster_domain: "cluster.local".into(),
            host: HostResolv::parse("# host\nnameserver 192.0.2.53\nsearch corp.example\noptions edns0\n"),
        }
    }

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "shop"}, "spec": spec})).unwrap()
    }

    #[test]
    fn cluster_first_uses_the_cluster_dns_and_search_path() {
        let c = dns_config(&pod(json!({"containers": []})), &node());
        assert_eq!(c.servers, ["10.43.0.10"]);
        assert_eq!(c.searches, ["shop.svc.cluster.local", "svc.cluster.local", "cluster.local", "corp.example"]);
        assert_eq!(c.options, ["ndots:5"]);
    }

    #[test]
    fn host_network_and_default_use_the_hosts_resolv_conf() {
        let host_net = dns_config(&pod(json!({"containers": [], "hostNetwork": true})), &node());
        assert_eq!(host_net.servers, ["192.0.2.53"]);
        assert_eq!(host_net.options, ["edns0"]);
        let with_host_net = dns_config(
            &pod(json!({"containers": [], "hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet"})),
            &node(),
        );
        assert_eq!(with_host_net.servers, ["10.43.0.10"]);
        let default = dns_config(&pod(json!({"containers": [], "dnsPolicy": "Default"})), &node());
        assert_eq!(default.searches, ["corp.example"]);
    }

    #[test]
    fn without_cluster_dns_cluster_first_falls_back_to_default() {
        let c = dns_config(&pod(json!({"containers": []})), &NodeDns { cluster_dns: vec![], ..node() });
        assert_eq!(c.servers, ["192.0.2.53"]);
    }

    #[test]
    fn dns_config_is_merged_and_none_takes_only_it() {
        let extra = json!({"nameservers": ["192.0.2.1"], "searches": ["a.example"],
            "options": [{"name": "ndots", "value": "2"}, {"name": "rotate"}]});
        let merged = dns_config(&pod(json!({"containers": [], "dnsConfig": extra})), &node());
        assert_eq!(merged.servers, ["10.43.0.10", "192.0.2.1"]);
        assert_eq!(merged.searches.last().unwrap(), "a.example");
        assert_eq!(merged.options, ["ndots:2", "rotate"]);
        let none = dns_config(&pod(json!({"containers": [], "dnsPolicy": "None", "dnsConfig": extra})), &node());
        assert_eq!(none.servers, ["192.0.2.1"]);
        assert_eq!(none.searches, ["a.example"]);
    }
}
