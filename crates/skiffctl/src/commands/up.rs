//! `skiffctl up` and `skiffctl down`: a local cluster in the background,
//! started by the same launcher the integration tests use.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::json;
use skiff_testkit::netns::Host;
use skiff_testkit::runtime::{ensure_test_images, RuntimeOptions};
use skiff_testkit::{stop_detached_cluster, Cluster, ClusterOptions, NetworkOptions};

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Where etcd data, logs and pid files live.
    #[arg(long, env = "SKIFF_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Address of the apiserver's gRPC API.
    #[arg(long, default_value = "127.0.0.1:6443")]
    pub listen: SocketAddr,
    /// Also start this many hollow (simulated) nodes: pods scheduled to them
    /// are reported Running without containers.
    #[arg(long, default_value_t = 0)]
    pub hollow_nodes: usize,
    /// Run no real node (no registry, containerd, kubelet, skiff-overlay or
    /// skiff-dns): a control plane only, for machines without root or
    /// containerd. Without it (and without --nodes) this machine is the one
    /// node, its Service rules in nftables table `ip skiff-local`.
    #[arg(long, conflicts_with = "nodes")]
    pub no_node: bool,
    /// Run this many nodes, each a host of its own (a network namespace)
    /// with containerd, a kubelet and skiff-overlay: pods reach each other
    /// across hosts over WireGuard, Services by ClusterIP and through
    /// skiff-dns. The apiserver then listens on the hosts' LAN, at the
    /// port of --listen.
    #[arg(long)]
    pub nodes: Option<usize>,
    /// Port skiff-ingress serves HTTP on (default 80 where it is free, else
    /// any free port; printed either way).
    #[arg(long)]
    pub http_port: Option<u16>,
    /// Port skiff-ingress serves HTTPS on (default 443 where it is free,
    /// else any free port).
    #[arg(long)]
    pub https_port: Option<u16>,
}

#[derive(Debug, clap::Args)]
pub struct DownArgs {
    #[arg(long, env = "SKIFF_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
}

/// `$XDG_DATA_HOME/skiff`, else `~/.local/share/skiff`.
fn default_state_dir() -> PathBuf {
    std::env::var_os("XDG_DATA_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("skiff")
}

/// etcd's ports for the local cluster: fixed, so that a restart finds its
/// data under the same member addresses.
const ETCD_PORTS: (u16, u16) = skiff_testkit::LOCAL_CLUSTER_ETCD_PORTS;

pub async fn up(args: UpArgs) -> Result<()> {
    let state_dir = args.state_dir.unwrap_or_else(default_state_dir);
    // A cluster left running by an earlier `up` is replaced, keeping its data.
    let stopped = stop_detached_cluster(&state_dir).await?;
    if !stopped.is_empty() {
        eprintln!("stopped the previous cluster ({})", stopped.join(", "));
    }
    if let Some(nodes) = args.nodes {
        return up_hosts(state_dir, nodes, args.listen.port(), (args.http_port, args.https_port)).await;
    }
    let options = ClusterOptions {
        state_dir: Some(state_dir.clone()),
        detach: true,
        apiserver_listen: Some(args.listen),
        etcd_ports: Some(ETCD_PORTS),
        rest_port: Some(rest_port(args.listen)),
        runtime: (!args.no_node).then(RuntimeOptions::local_node),
        ..Default::default()
    };
    let mut cluster = Cluster::start_with(options).await.context("starting the cluster")?;
    cluster.start_service("scheduler", "skiff-scheduler", &[]).await.context("starting the scheduler")?;
    cluster
        .start_service("controller-manager", "skiff-controller-manager", &[])
        .await
        .context("starting the controller-manager")?;
    if let Some(runtime) = cluster.runtime() {
        ensure_test_images(runtime.registry()).await.context("loading the sample images into the local registry")?;
        let node = hostname();
        cluster
            .start_local_node(&node, LOCAL_NFT_TABLE, &[])
            .await
            .context("starting the node (skiff-dns, the kubelet, skiff-overlay)")?;
    }
    if args.hollow_nodes > 0 {
        let nodes = format!("--hollow-nodes={}", args.hollow_nodes);
        cluster.start_service("hollow-nodes", "skiff-kubelet", &[nodes]).await.context("starting hollow nodes")?;
    }
    let any = Ipv4Addr::UNSPECIFIED;
    let http = SocketAddr::from((any, port_or(args.http_port, any, 80)));
    let https = SocketAddr::from((any, port_or(args.https_port, any, 443)));
    start_ingress(&mut cluster, None, (http, https), Ipv4Addr::LOCALHOST).await?;
    let config = cluster.admin_config().clone();
    let path = config.save()?;
    write_kubeconfig(&cluster)?;
    outln!("skiff is up: apiserver {} (address written to {})", cluster.server(), path.display());
    let node_services = if cluster.runtime().is_some() { ", skiff-dns, skiff-overlay" } else { "" };
    outln!("running: etcd, skiff-apiserver, skiff-scheduler, skiff-controller-manager, skiff-ingress{node_services}");
    outln!(
        "ingress: http://127.0.0.1:{}/ https://127.0.0.1:{}/ (skiff-ingress, IngressClass {INGRESS_CLASS})",
        http.port(),
        https.port()
    );
    if let Some(runtime) = cluster.runtime() {
        let pod_cidr = runtime.containerd().pod_cidr();
        outln!(
            "node {} (skiff-kubelet on containerd, pods on {pod_cidr}; skiff-overlay's Service rules in nftables table ip {LOCAL_NFT_TABLE})",
            hostname(),
        );
        let dns =
            skiff_testkit::bridge_gateway(pod_cidr).map(|ip| format!(" (skiff-dns on {ip}:53)")).unwrap_or_default();
        outln!(
            "cluster DNS {}{dns}; registry {} holds busybox:latest and testserver:latest",
            skiff_testkit::DNS_SERVICE_IP,
            runtime.registry().host()
        );
    }
    if args.hollow_nodes > 0 {
        outln!("{} hollow nodes (simulated: pods on them run no containers)", args.hollow_nodes);
    }
    outln!("state and logs: {}; stop with `skiffctl down`", state_dir.display());
    Ok(())
}

/// `up --nodes N`: N hosts as network namespaces, the control plane and
/// skiff-dns in this one, the apiserver on the hosts' LAN at `port`.
async fn up_hosts(state_dir: PathBuf, nodes: usize, port: u16, ports: (Option<u16>, Option<u16>)) -> Result<()> {
    anyhow::ensure!((1..=9).contains(&nodes), "--nodes: between 1 and 9 hosts, not {nodes}");
    let options = ClusterOptions {
        state_dir: Some(state_dir.clone()),
        detach: true,
        etcd_ports: Some(ETCD_PORTS),
        network: Some(NetworkOptions { hosts: nodes, ..Default::default() }),
        apiserver_port: Some(port),
        rest_port: Some(rest_port(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))),
        ..Default::default()
    };
    let mut cluster = Cluster::start_with(options).await.context("starting the cluster")?;
    // The ingress runs on the first node, as on a real cluster: there it
    // reaches every pod over the overlay.
    let first = cluster.network().and_then(|n| n.hosts().first()).map(|n| n.host.clone());
    let first = first.context("the cluster has no hosts")?;
    let http = SocketAddr::from((first.ip(), ports.0.unwrap_or(80)));
    let https = SocketAddr::from((first.ip(), ports.1.unwrap_or(443)));
    start_ingress(&mut cluster, Some(&first), (http, https), first.ip()).await?;
    let config = cluster.admin_config().clone();
    let path = config.save()?;
    write_kubeconfig(&cluster)?;
    let network = cluster.network().context("the cluster has no hosts")?;
    outln!("skiff is up: apiserver {} (address written to {})", cluster.server(), path.display());
    outln!("running: etcd, skiff-apiserver, skiff-scheduler, skiff-controller-manager, skiff-dns");
    outln!(
        "ingress: http://{http}/ https://{https}/ (skiff-ingress on node {}, IngressClass {INGRESS_CLASS})",
        first.name()
    );
    let nodes = cluster.client().api::<k8s_openapi::api::core::v1::Node>("");
    for node in network.hosts() {
        let pod_cidr = nodes.get(node.host.name()).await.ok().and_then(|n| n.spec?.pod_cidr).unwrap_or_default();
        outln!(
            "node {} at {} (network namespace {}): containerd, skiff-kubelet, skiff-overlay; pods on {pod_cidr}",
            node.host.name(),
            node.host.ip(),
            node.host.netns(),
        );
    }
    outln!(
        "cluster DNS {} (skiff-dns on {}:53); registry {} holds busybox:latest and testserver:latest",
        skiff_testkit::DNS_SERVICE_IP,
        network.lan().gateway(),
        network.registry().host()
    );
    outln!("state and logs: {}; stop with `skiffctl down`", state_dir.display());
    Ok(())
}

/// The REST API's port: 6445 beside the default gRPC port 6443 where that
/// is free, else any free port (never "the gRPC port plus two", which may
/// be a port the caller picked for something else).
fn rest_port(grpc: SocketAddr) -> u16 {
    let ip = match grpc.ip() {
        std::net::IpAddr::V4(ip) => ip,
        std::net::IpAddr::V6(_) => Ipv4Addr::LOCALHOST,
    };
    if grpc.port() == DEFAULT_GRPC_PORT {
        port_or(None, ip, DEFAULT_REST_PORT)
    } else {
        skiff_testkit::free_port()
    }
}

const DEFAULT_GRPC_PORT: u16 = 6443;
const DEFAULT_REST_PORT: u16 = 6445;

/// Points kubectl at the cluster: context `skiff` in the kubeconfig
/// (`$KUBECONFIG`'s first file, else `~/.kube/config`), made current.
fn write_kubeconfig(cluster: &Cluster) -> Result<()> {
    let path = skiff_client::config::kubeconfig_path();
    cluster.write_kubeconfig(&path, KUBECONFIG_CONTEXT).context("writing the kubeconfig")?;
    outln!("kubectl: context {KUBECONFIG_CONTEXT} in {} (REST API {})", path.display(), cluster.rest_server());
    Ok(())
}

/// The kubeconfig context (and cluster and user) `up` writes.
const KUBECONFIG_CONTEXT: &str = "skiff";

/// The one-node cluster's nftables table (family ip): a name of its own,
/// so that no other skiff-overlay's table on this machine is touched.
pub const LOCAL_NFT_TABLE: &str = "skiff-local";

/// The IngressClass `up` creates, marked default, and skiff-ingress serves.
const INGRESS_CLASS: &str = "skiff";

/// The port flag's value, else `default` if it can be bound on `ip`, else
/// any free port.
fn port_or(flag: Option<u16>, ip: Ipv4Addr, default: u16) -> u16 {
    flag.unwrap_or_else(|| match std::net::TcpListener::bind((ip, default)) {
        Ok(_) => default,
        Err(_) => skiff_testkit::free_port(),
    })
}

/// Creates the default IngressClass and starts skiff-ingress serving it on
/// `(http, https)` (in `host`, else here), publishing `publish` in Ingress
/// status.
async fn start_ingress(
    cluster: &mut Cluster,
    host: Option<&Host>,
    (http, https): (SocketAddr, SocketAddr),
    publish: Ipv4Addr,
) -> Result<()> {
    let class = json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
        "metadata": {"name": INGRESS_CLASS, "annotations": {"ingressclass.kubernetes.io/is-default-class": "true"}},
        "spec": {"controller": "skiff.io/ingress-controller"},
    });
    match cluster.client().create("IngressClass", "", &class).await {
        Err(e) if !e.is_already_exists() => return Err(e).context("creating the default IngressClass"),
        _ => {}
    }
    let args = [
        format!("--http-listen={http}"),
        format!("--https-listen={https}"),
        format!("--publish-address={publish}"),
        format!("--ingress-class={INGRESS_CLASS}"),
    ];
    let started = match host {
        Some(host) => cluster.start_service_in(host, "ingress", "skiff-ingress", &args, false).await,
        None => cluster.start_service("ingress", "skiff-ingress", &args).await,
    };
    started.with_context(|| format!("starting skiff-ingress on {http}"))?;
    Ok(())
}

pub async fn down(args: DownArgs) -> Result<()> {
    let state_dir = args.state_dir.unwrap_or_else(default_state_dir);
    let stopped = stop_detached_cluster(&state_dir).await?;
    if stopped.is_empty() {
        outln!("nothing running under {}", state_dir.display());
    } else {
        outln!("stopped {}", stopped.join(", "));
    }
    Ok(())
}

/// This machine's name, as the local node's name (lower-cased: node names
/// are DNS names).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_ascii_lowercase())
        .ok()
        .filter(|h| skiff_api::validation_problem_for_name(h).is_none())
        .unwrap_or_else(|| "local-node".to_string())
}
