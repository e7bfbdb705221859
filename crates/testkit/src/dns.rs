//! Cluster DNS and the local node's Service network, the same way for every
//! cluster that runs them: skiff-dns on an address pods can reach,
//! published as the selector-less Service `kube-system/kube-dns` at the
//! fixed ClusterIP [`DNS_SERVICE_IP`] with an Endpoints object written
//! here; kubelets hand that IP to pods, and skiff-overlay's rules carry it
//! to skiff-dns.

use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Endpoints, Service};
use serde_json::json;

use crate::{Cluster, Error, Result};

/// The cluster DNS service's ClusterIP, which kubelets write into pods.
pub const DNS_SERVICE_IP: &str = "10.43.0.10";

impl Cluster {
    /// skiff-dns on `ip`:53 as service `dns` (`extra` flags appended), and
    /// the `kube-dns` Service and Endpoints that point at it. `ip` must be
    /// reachable from every pod once DNATed by the overlay.
    pub async fn start_cluster_dns(&mut self, ip: Ipv4Addr, extra: &[String]) -> Result<()> {
        let mut args = vec![format!("--listen={ip}:53")];
        args.extend(extra.iter().cloned());
        self.start_service("dns", "skiff-dns", &args).await?;
        self.publish_dns_service(ip).await
    }

    /// Makes this cluster's one local node (the runtime's containerd, in
    /// this network namespace) a networked node: skiff-dns on the pod
    /// bridge's gateway, the kubelet `node` with `--cluster-dns`, and
    /// skiff-overlay for the Service rules in nftables table `nft_table`
    /// (no WireGuard: there are no peers), deleted when the overlay stops.
    /// `kubelet_args` come last, so they can override.
    pub async fn start_local_node(&mut self, node: &str, nft_table: &str, kubelet_args: &[String]) -> Result<()> {
        let containerd = self.runtime().ok_or(Error::NoRuntime)?.containerd();
        let pod_cidr = containerd.pod_cidr().to_string();
        let gateway = bridge_gateway(&pod_cidr).ok_or_else(|| Error::Io {
            what: "reading the runtime's pod CIDR",
            path: pod_cidr.clone(),
            source: std::io::Error::other("not an IPv4 CIDR"),
        })?;
        // The bridge, and with it the gateway address, appears with the
        // first pod: skiff-dns binds the address before that.
        self.start_cluster_dns(gateway, &["--freebind".to_string()]).await?;
        let mut args = vec![format!("--cluster-dns={DNS_SERVICE_IP}")];
        args.extend(kubelet_args.iter().cloned());
        self.start_kubelet(node, &args).await?;
        let args = [
            format!("--node-name={node}"),
            format!("--state-dir={}", self.dir.join("overlay").display()),
            "--wireguard=off".to_string(),
            // Only this node's pods: the machine may run other pod networks
            // under 10.42.0.0/16 (tests' containerds) that are none of ours.
            format!("--cluster-cidr={pod_cidr}"),
            format!("--nft-table={nft_table}"),
            "--delete-table-on-exit".to_string(),
        ];
        self.start_service("overlay", "skiff-overlay", &args).await?;
        Ok(())
    }

    /// `kube-system/kube-dns`: the fixed ClusterIP and, having no selector,
    /// Endpoints naming skiff-dns at `ip`.
    async fn publish_dns_service(&self, ip: Ipv4Addr) -> Result<()> {
        let ports =
            json!([{"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]);
        let service: Service = from_json(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}},
            "spec": {"clusterIP": DNS_SERVICE_IP, "ports": ports},
        }))?;
        let endpoints: Endpoints = from_json(json!({
            "apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": "kube-dns", "namespace": "kube-system"},
            "subsets": [{"addresses": [{"ip": ip.to_string()}], "ports": ports}],
        }))?;
        let client = self.client();
        create_or_keep(client.api::<Service>("kube-system").create(&service).await)?;
        create_or_keep(client.api::<Endpoints>("kube-system").create(&endpoints).await)?;
        Ok(())
    }
}

/// The address the CNI bridge plugin gives the bridge on `pod_cidr`: the
/// range's first host (host-local's default gateway).
pub fn bridge_gateway(pod_cidr: &str) -> Option<Ipv4Addr> {
    let (ip, prefix) = pod_cidr.split_once('/')?;
    let (ip, prefix): (Ipv4Addr, u32) = (ip.parse().ok()?, prefix.parse().ok()?);
    let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
    (prefix < 31).then(|| Ipv4Addr::from((u32::from(ip) & mask) + 1))
}

fn from_json<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T> {
    serde_json::from_value(value).map_err(|e| Error::Io {
        what: "building an object",
        path: "kube-dns".into(),
        source: std::io::Error::other(e),
    })
}

/// Ok when created, or when it exists already (a restarted detached cluster).
fn create_or_keep<T>(result: Result<T, skiff_client::Error>) -> Result<()> {
    match result {
        Ok(_) => Ok(()),
        Err(e) if e.is_already_exists() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateway_is_the_ranges_first_host() {
        assert_eq!(bridge_gateway("10.42.0.0/24"), Some(Ipv4Addr::new(10, 42, 0, 1)));
        assert_eq!(bridge_gateway("10.42.7.9/24"), Some(Ipv4Addr::new(10, 42, 7, 1)));
        assert_eq!(bridge_gateway("10.42.0.0/16"), Some(Ipv4Addr::new(10, 42, 0, 1)));
        assert_eq!(bridge_gateway("10.42.0.0/32"), None);
        assert_eq!(bridge_gateway("fd00::/64"), None);
    }
}
