//! skiff-kubelet: the node agent.
//!
//! Two modes share this crate:
//!
//! - the real kubelet (the default): registers this host as a Node and runs
//!   the pods bound to it in containerd through CRI. [`kubelet`] wires it:
//!   [`node`] (registration, Lease, conditions), [`pods`] (informer, work
//!   queue, one sync of a pod at a time), [`runtime`] (the CRI calls behind
//!   a trait), [`probes`] and [`volumes`];
//! - hollow mode (as kwok does it): `--hollow-nodes N` registers N fake
//!   Nodes from one process, keeps their Leases and status fresh, and marks
//!   pods bound to them Running without starting anything. It lets the
//!   scheduler, controllers and apiserver be driven at 5,000 nodes and
//!   150,000 pods on one machine.
#![forbid(unsafe_code)]

pub mod bootstrap;
mod error;
pub mod hollow;
pub mod kubelet;
pub mod node;
pub mod pods;
pub mod probes;
pub mod runtime;
pub mod server;
pub mod serviceaccount;
pub mod volumes;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

pub use error::Error;

/// Flags of `skiff-kubelet`.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    #[command(flatten)]
    pub api: skiff_client::ApiFlags,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "127.0.0.1:10248")]
    pub metrics_listen: SocketAddr,
    /// Run N hollow (fake) nodes in this process instead of a real kubelet.
    #[arg(long, default_value_t = 0)]
    pub hollow_nodes: usize,
    /// Hollow node names are this prefix and a four-digit index: hollow-0000.
    #[arg(long, default_value = "hollow-")]
    pub node_name_prefix: String,
    /// CPU capacity of each hollow node.
    #[arg(long, default_value = "8")]
    pub cpu: String,
    /// Memory capacity of each hollow node.
    #[arg(long, default_value = "32Gi")]
    pub memory: String,
    /// Pods each hollow node takes.
    #[arg(long, default_value_t = 110)]
    pub max_pods: u32,
    /// The first K hollow nodes have 4 `nvidia.com/gpu` and the label skiff.io/gpu=true.
    #[arg(long, default_value_t = 0)]
    pub gpu_nodes: usize,
    /// Extra labels on every hollow node: k=v,k2=v2.
    #[arg(long, value_parser = parse_labels, default_value = "")]
    pub node_labels: Labels,
    /// How often each node renews its Lease in kube-node-lease.
    #[arg(long, default_value = "10s", value_parser = skiff_api::parse_period)]
    pub heartbeat_interval: Duration,
    /// How often each node writes its status (Ready's lastHeartbeatTime).
    #[arg(long, default_value = "60s", value_parser = skiff_api::parse_period)]
    pub status_interval: Duration,
    /// The range fake pod IPs come from; each node gets its own slice of it.
    #[arg(long, default_value = "10.128.0.0/9")]
    pub pod_cidr_base: String,
    /// The range hollow nodes' InternalIPs come from, one address per node.
    #[arg(long, default_value = "172.16.0.0/12")]
    pub node_ip_base: String,

    // --- the real kubelet ---
    /// This node's name (default: the host name).
    #[arg(long)]
    pub node_name: Option<String>,
    /// This node's InternalIP (default: the first non-loopback IPv4 address).
    #[arg(long)]
    pub node_ip: Option<std::net::Ipv4Addr>,
    /// Port of the kubelet API (logs, exec, stats) on the node's IP; 0 picks
    /// a free one. The apiserver finds it on the Node (daemonEndpoints).
    #[arg(long, default_value_t = 10250)]
    pub kubelet_port: u16,
    /// The CRI socket of containerd.
    #[arg(long, default_value = "unix:///run/containerd/containerd.sock")]
    pub container_runtime_endpoint: String,
    /// This node's pod CIDR (spec.podCIDR), as the CNI config hands out.
    #[arg(long)]
    pub pod_cidr: Option<String>,
    /// Write the node's CNI config (a bridge with host-local IPAM on
    /// spec.podCIDR) into this dir — the runtime's CNI conf dir — once the
    /// controller-manager assigns the podCIDR. Unset: the runtime's CNI
    /// config is someone else's.
    #[arg(long)]
    pub cni_conf_dir: Option<std::path::PathBuf>,
    /// Bridge of the written CNI config.
    #[arg(long, default_value = "cni0")]
    pub cni_bridge: String,
    /// MTU of the written CNI config: the overlay's (WireGuard takes 80 bytes).
    #[arg(long, default_value_t = 1420)]
    pub cni_mtu: u32,
    /// host-local IPAM's dataDir in the written CNI config.
    #[arg(long, default_value = "/var/lib/cni/networks")]
    pub cni_ipam_dir: std::path::PathBuf,
    /// Where container logs go: <dir>/<namespace>_<pod>_<uid>/<container>/<restarts>.log.
    #[arg(long, default_value = "/var/log/pods")]
    pub pod_log_dir: std::path::PathBuf,
    /// The kubelet's own state: pod volumes under <dir>/pods/<uid>/volumes.
    #[arg(long, default_value = "/var/lib/skiff-kubelet")]
    pub root_dir: std::path::PathBuf,
    /// The cluster DNS service's IP(s), written into pods' resolv.conf
    /// (dnsPolicy ClusterFirst). Empty: pods get the node's resolv.conf.
    #[arg(long, value_delimiter = ',')]
    pub cluster_dns: Vec<std::net::Ipv4Addr>,
    /// The cluster's DNS domain, the end of the pods' search path.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// The node's resolver config, for dnsPolicy Default and hostNetwork pods.
    #[arg(long, default_value = "/etc/resolv.conf")]
    pub resolv_conf: std::path::PathBuf,
    /// Extended resources this node offers beside what it detects: k=v,k2=v2.
    #[arg(long, value_parser = parse_resources, default_value = "")]
    pub extended_resources: Labels,
    /// First wait before restarting a crashed container; doubles per crash.
    #[arg(long, default_value = "10s", value_parser = skiff_api::parse_period)]
    pub crash_backoff_initial: Duration,
    /// Longest wait before restarting a crashed container.
    #[arg(long, default_value = "5m", value_parser = skiff_api::parse_period)]
    pub crash_backoff_max: Duration,
    /// How often the containers' states are listed from the runtime to see
    /// exits (as Kubernetes' PLEG relist).
    #[arg(long, default_value = "1s", value_parser = skiff_api::parse_period)]
    pub relist_interval: Duration,
    /// MemoryPressure is True when less memory than this is available.
    #[arg(long, default_value = "100Mi")]
    pub eviction_memory_available: String,
    /// DiskPressure is True when less than this percentage of the root
    /// dir's filesystem is free.
    #[arg(long, default_value_t = 10)]
    pub eviction_disk_free_percent: u8,
    #[command(flatten)]
    pub tls: skiff_pki::serve::TlsFlags,
    #[command(flatten)]
    pub bootstrap: bootstrap::BootstrapFlags,
    /// Let callers without a certificate in as `system:anonymous`
    /// (authorization still decides). Off: they are refused.
    #[arg(long, num_args = 0..=1, default_value_t = false, default_missing_value = "true")]
    pub anonymous_auth: bool,
    /// Who decides what callers of the kubelet API may do: `Webhook` (the
    /// apiserver, asked per user) or `AlwaysAllow`.
    #[arg(long, value_enum, default_value = "Webhook")]
    pub authorization_mode: server::auth::AuthorizationMode,
}

/// Node labels from `--node-labels`, sorted by key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Labels(pub BTreeMap<String, String>);

/// Runs the kubelet until `shutdown` resolves: hollow nodes with
/// `--hollow-nodes N`, else the real kubelet.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), Error> {
    if config.hollow_nodes == 0 {
        return kubelet::run(config, shutdown).await;
    }
    hollow::run(config, shutdown).await
}

/// Parses extended resources `vendor.example/thing=4,…`: the names as
/// label keys, the values as quantities.
pub fn parse_resources(s: &str) -> Result<Labels, String> {
    let labels = parse_labels(s)?;
    for (k, v) in &labels.0 {
        skiff_api::quantity::parse_milli(v).map_err(|e| format!("resource {k}: {e}"))?;
    }
    Ok(labels)
}

/// Parses `k=v,k2=v2` (empty for none), checking keys and values as label
/// keys and values.
pub fn parse_labels(s: &str) -> Result<Labels, String> {
    let mut labels = BTreeMap::new();
    for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').ok_or_else(|| format!("{pair:?} is not key=value"))?;
        // The label selector parser applies the apiserver's own rules.
        skiff_api::selector::LabelSelector::parse(&format!("{k}={v}")).map_err(|e| format!("label {pair:?}: {e}"))?;
        labels.insert(k.to_string(), v.to_string());
    }
    Ok(Labels(labels))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        let l = parse_labels("zone=a, tier=web").unwrap();
        assert_eq!(l.0.into_iter().collect::<Vec<_>>(), [("tier".into(), "web".into()), ("zone".into(), "a".into())]);
        assert_eq!(parse_labels("").unwrap(), Labels::default());
        assert!(parse_labels("novalue").is_err());
        assert!(parse_labels("bad key=x").is_err());
    }

    #[test]
    fn extended_resources() {
        let r = parse_resources("example.com/fpga=2").unwrap();
        assert_eq!(r.0.get("example.com/fpga").map(String::as_str), Some("2"));
        assert!(parse_resources("example.com/fpga=lots").is_err());
    }

    #[tokio::test]
    async fn a_bad_runtime_endpoint_is_refused() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            config: Config,
        }
        let cli =
            Cli::parse_from(["skiff-kubelet", "--container-runtime-endpoint=tcp://x", "--server=http://127.0.0.1:1"]);
        let err = run(cli.config, async {}).await.unwrap_err();
        assert!(err.to_string().starts_with("--container-runtime-endpoint:"), "{err}");
    }
}
