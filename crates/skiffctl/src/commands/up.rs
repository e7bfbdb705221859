//! `skiffctl up` and `skiffctl down`: a local cluster in the background,
//! started by the same launcher the integration tests use.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use skiff_client::config::ClientConfig;
use skiff_testkit::runtime::{ensure_test_images, stop_detached_runtime, RuntimeOptions};
use skiff_testkit::{Cluster, ClusterOptions};

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
    /// Run no real node (no registry, containerd or kubelet): a control plane
    /// only, for machines without root or containerd.
    #[arg(long)]
    pub no_node: bool,
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
const ETCD_PORTS: (u16, u16) = (23790, 23800);

pub async fn up(args: UpArgs) -> Result<()> {
    let state_dir = args.state_dir.unwrap_or_else(default_state_dir);
    // A cluster left running by an earlier `up` is replaced, keeping its data.
    stop_detached_runtime(&state_dir).await?;
    let stopped = skiff_testkit::stop_detached(&state_dir)?;
    if !stopped.is_empty() {
        eprintln!("stopped the previous cluster ({})", stopped.join(", "));
    }
    let options = ClusterOptions {
        state_dir: Some(state_dir.clone()),
        detach: true,
        apiserver_listen: Some(args.listen),
        etcd_ports: Some(ETCD_PORTS),
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
        cluster.start_kubelet(&node, &[]).await.context("starting the kubelet")?;
    }
    if args.hollow_nodes > 0 {
        let nodes = format!("--hollow-nodes={}", args.hollow_nodes);
        cluster.start_service("hollow-nodes", "skiff-kubelet", &[nodes]).await.context("starting hollow nodes")?;
    }
    let config = ClientConfig { server: cluster.server() };
    let path = config.save()?;
    println!("skiff is up: apiserver {} (address written to {})", cluster.server(), path.display());
    println!("running: etcd, skiff-apiserver, skiff-scheduler, skiff-controller-manager");
    if let Some(runtime) = cluster.runtime() {
        println!(
            "node {} (skiff-kubelet on containerd, pods on {}); registry {} holds busybox:latest and testserver:latest",
            hostname(),
            runtime.containerd().pod_cidr(),
            runtime.registry().host()
        );
    }
    if args.hollow_nodes > 0 {
        println!("{} hollow nodes (simulated: pods on them run no containers)", args.hollow_nodes);
    }
    println!("state and logs: {}; stop with `skiffctl down`", state_dir.display());
    Ok(())
}

pub async fn down(args: DownArgs) -> Result<()> {
    let state_dir = args.state_dir.unwrap_or_else(default_state_dir);
    // Pods first (over CRI, so CNI releases their addresses), then the rest.
    stop_detached_runtime(&state_dir).await?;
    let stopped = skiff_testkit::stop_detached(&state_dir)?;
    if stopped.is_empty() {
        println!("nothing running under {}", state_dir.display());
    } else {
        println!("stopped {}", stopped.join(", "));
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
