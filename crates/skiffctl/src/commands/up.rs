//! `skiffctl up` and `skiffctl down`: a local cluster in the background,
//! started by the same launcher the integration tests use.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use skiff_client::config::ClientConfig;
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
    let stopped = skiff_testkit::stop_detached(&state_dir)?;
    if !stopped.is_empty() {
        eprintln!("stopped the previous cluster ({})", stopped.join(", "));
    }
    let options = ClusterOptions {
        state_dir: Some(state_dir.clone()),
        detach: true,
        apiserver_listen: Some(args.listen),
        etcd_ports: Some(ETCD_PORTS),
        ..Default::default()
    };
    let mut cluster = Cluster::start_with(options).await.context("starting the cluster")?;
    cluster.start_service("scheduler", "skiff-scheduler", &[]).await.context("starting the scheduler")?;
    cluster
        .start_service("controller-manager", "skiff-controller-manager", &[])
        .await
        .context("starting the controller-manager")?;
    if args.hollow_nodes > 0 {
        let nodes = format!("--hollow-nodes={}", args.hollow_nodes);
        cluster.start_service("kubelet", "skiff-kubelet", &[nodes]).await.context("starting hollow nodes")?;
    }
    let config = ClientConfig { server: cluster.server() };
    let path = config.save()?;
    println!("skiff is up: apiserver {} (address written to {})", cluster.server(), path.display());
    println!("running: etcd, skiff-apiserver, skiff-scheduler, skiff-controller-manager");
    if args.hollow_nodes > 0 {
        println!("{} hollow nodes (simulated: pods on them run no containers)", args.hollow_nodes);
    }
    println!("state and logs: {}; stop with `skiffctl down`", state_dir.display());
    Ok(())
}

pub async fn down(args: DownArgs) -> Result<()> {
    let state_dir = args.state_dir.unwrap_or_else(default_state_dir);
    let stopped = skiff_testkit::stop_detached(&state_dir)?;
    if stopped.is_empty() {
        println!("nothing running under {}", state_dir.display());
    } else {
        println!("stopped {}", stopped.join(", "));
    }
    Ok(())
}
