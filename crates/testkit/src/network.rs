//! A networked cluster: N hosts on one machine (network namespaces on a
//! [`Lan`]), each with its own containerd, kubelet and skiff-overlay, and
//! one control plane in the root namespace — scheduler, controller-manager
//! and skiff-dns — reachable from every host at the LAN's gateway address.
//! What `skiffctl up --nodes N` and every networked test start.
//!
//! Host `host-i` has address `172.31.N.(10+i)` and the podCIDR the
//! controller-manager assigns, which its kubelet writes into the CNI config;
//! the registry, the apiserver and cluster DNS listen on the gateway
//! `172.31.N.1`. The DNS Service `kube-system/kube-dns` points at skiff-dns
//! on the gateway (see [`crate::dns`]).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;

use crate::dns::DNS_SERVICE_IP;
use crate::netns::{Host, Lan};
use crate::runtime::{ensure_test_images, Containerd, ContainerdOptions, Registry};
use crate::{Cluster, Error, Result};

/// The LAN slot of a detached networked cluster, under its state dir.
const LAN_FILE: &str = "network/lan";
/// How long the hosts' nodes may take to turn Ready.
const NODES_READY_TIMEOUT: Duration = Duration::from_secs(120);

/// How to start a networked cluster ([`crate::ClusterOptions::network`]).
#[derive(Debug, Clone, Default)]
pub struct NetworkOptions {
    /// How many hosts (nodes), each a network namespace.
    pub hosts: usize,
    /// Resolvers skiff-dns forwards other names to (`IP[:PORT]`); default
    /// the root namespace's resolv.conf.
    pub dns_upstream: Vec<String>,
    /// Extra flags for every kubelet (shorter back-offs in tests, say).
    pub kubelet_args: Vec<String>,
    /// Extra flags for the controller-manager (shorter node grace periods).
    pub controller_manager_args: Vec<String>,
}

/// The hosts of a networked cluster and what runs beneath their kubelets.
///
/// Fields drop in order: containerds (removing their pods), the registry,
/// then the LAN with the namespaces.
pub struct Network {
    hosts: Vec<NodeHost>,
    registry: Registry,
    lan: Lan,
}

/// One host and its containerd.
pub struct NodeHost {
    pub host: Host,
    pub containerd: Containerd,
}

impl Network {
    pub fn lan(&self) -> &Lan {
        &self.lan
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn hosts(&self) -> &[NodeHost] {
        &self.hosts
    }

    /// The host whose node is `name`.
    pub fn host(&self, name: &str) -> Option<&NodeHost> {
        self.hosts.iter().find(|h| h.host.name() == name)
    }
}

impl Cluster {
    /// Brings up the hosts of `options` on `lan`: registry, containerds,
    /// control-plane services, skiff-dns, then a kubelet and an overlay per
    /// host; returns once every node is Ready.
    pub(crate) async fn start_network(&mut self, mut lan: Lan, options: &NetworkOptions) -> Result<()> {
        let gateway = lan.gateway();
        let registry =
            Registry::start(&self.dir, SocketAddr::new(gateway.into(), crate::free_port()), self.detach).await?;
        ensure_test_images(&registry).await?;
        let mut hosts = Vec::new();
        for i in 1..=options.hosts {
            let host = lan.add_host(&format!("host-{i}"))?;
            let dir = self.host_dir(&host)?;
            let containerd_options = ContainerdOptions { host: Some(host.clone()), ..Default::default() };
            let containerd = Containerd::start(&dir, &registry, &containerd_options, self.detach).await?;
            hosts.push(NodeHost { host, containerd });
        }
        if self.detach {
            // The namespaces outlive us; the slot is held by etcd, the
            // last process a detached cluster stops.
            let n = lan.detach(self.etcd.pid().unwrap_or_default());
            let file = self.dir.join(LAN_FILE);
            if let Some(parent) = file.parent() {
                std::fs::create_dir_all(parent).map_err(crate::runtime::io_err("creating", parent))?;
            }
            std::fs::write(&file, n.to_string()).map_err(crate::runtime::io_err("writing", &file))?;
        }
        self.network = Some(Network { hosts, registry, lan });

        self.start_service("scheduler", "skiff-scheduler", &[]).await?;
        self.start_service("controller-manager", "skiff-controller-manager", &options.controller_manager_args).await?;
        let mut dns_args = Vec::new();
        if !options.dns_upstream.is_empty() {
            dns_args.push(format!("--upstream={}", options.dns_upstream.join(",")));
        }
        self.start_cluster_dns(gateway, &dns_args).await?;

        let hosts: Vec<Host> = self.network.iter().flat_map(|n| n.hosts.iter().map(|h| h.host.clone())).collect();
        for host in &hosts {
            self.start_node_agents(host, &options.kubelet_args).await?;
        }
        self.wait_nodes_ready(&hosts).await
    }

    /// The networked cluster's hosts, when [`crate::ClusterOptions::network`]
    /// asked for them.
    pub fn network(&self) -> Option<&Network> {
        self.network.as_ref()
    }

    /// `<dir>/hosts/NAME`, with the logs and pids folders processes need.
    fn host_dir(&self, host: &Host) -> Result<std::path::PathBuf> {
        let dir = self.dir.join("hosts").join(host.name());
        for sub in ["logs", "pids"] {
            let p = dir.join(sub);
            std::fs::create_dir_all(&p).map_err(crate::runtime::io_err("creating", &p))?;
        }
        Ok(dir)
    }

    /// The kubelet and skiff-overlay of `host`, as services
    /// `kubelet-NAME` and `overlay-NAME`.
    pub async fn start_node_agents(&mut self, host: &Host, kubelet_args: &[String]) -> Result<()> {
        let node = self.network.as_ref().and_then(|n| n.host(host.name())).ok_or(Error::NoRuntime)?;
        let containerd = &node.containerd;
        let dir = self.dir.join("hosts").join(host.name());
        let mut args = vec![
            format!("--node-name={}", host.name()),
            format!("--node-ip={}", host.ip()),
            "--kubelet-port=10250".to_string(),
            format!("--container-runtime-endpoint={}", containerd.endpoint()),
            format!("--cni-conf-dir={}", containerd.cni_conf_dir().display()),
            format!("--cni-ipam-dir={}", containerd.cni_ipam_dir().display()),
            format!("--pod-log-dir={}", containerd.pod_log_dir().display()),
            format!("--root-dir={}", dir.join("kubelet").display()),
            format!("--cluster-dns={DNS_SERVICE_IP}"),
        ];
        args.extend(kubelet_args.iter().cloned());
        self.start_service_in(host, &format!("kubelet-{}", host.name()), "skiff-kubelet", &args, false).await?;
        let args = vec![
            format!("--node-name={}", host.name()),
            format!("--state-dir={}", dir.join("overlay").display()),
            "--wireguard=auto".to_string(),
        ];
        self.start_service_in(host, &format!("overlay-{}", host.name()), "skiff-overlay", &args, true).await?;
        Ok(())
    }

    async fn wait_nodes_ready(&self, hosts: &[Host]) -> Result<()> {
        let deadline = Instant::now() + NODES_READY_TIMEOUT;
        let api = self.client().api::<Node>("");
        loop {
            let mut waiting = Vec::new();
            for host in hosts {
                let ready = api.get(host.name()).await.ok().is_some_and(|n| node_ready(&n));
                if !ready {
                    waiting.push(host.name().to_string());
                }
            }
            if waiting.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::NotReady {
                    name: format!("nodes {}", waiting.join(", ")),
                    timeout: NODES_READY_TIMEOUT,
                    log_tail: String::new(),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn node_ready(node: &Node) -> bool {
    let conditions = node.status.as_ref().and_then(|s| s.conditions.as_ref());
    conditions.is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Stops each host's containerd a detached networked cluster (`skiffctl up
/// --nodes`) left under `state_dir`, its pods removed through CRI first.
/// Returns what it stopped.
pub(crate) async fn stop_detached_hosts(state_dir: &std::path::Path) -> Result<Vec<String>> {
    let mut stopped = Vec::new();
    if let Ok(hosts) = std::fs::read_dir(state_dir.join("hosts")) {
        for host in hosts.flatten() {
            if crate::runtime::stop_detached_containerd(&host.path()).await? {
                stopped.push(format!("containerd on {}", host.file_name().to_string_lossy()));
            }
        }
    }
    Ok(stopped)
}

/// Removes the hosts' namespaces and LAN a detached networked cluster left
/// under `state_dir`, once nothing runs in them. False if it left none.
pub(crate) fn remove_detached_lan(state_dir: &std::path::Path) -> bool {
    let lan = state_dir.join(LAN_FILE);
    let Some(n) = std::fs::read_to_string(&lan).ok().and_then(|s| s.trim().parse::<u16>().ok()) else {
        return false;
    };
    crate::netns::remove_detached(n);
    let _ = std::fs::remove_file(&lan);
    true
}
