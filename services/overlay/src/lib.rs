//! skiff-overlay: the node network agent, one per node.
//!
//! - [`wireguard`]: the pod network between nodes. A WireGuard interface
//!   whose public key and endpoint are published on this node's Node, one
//!   peer per other node with that node's podCIDR as allowed IPs, and a
//!   route per peer CIDR. Kernel WireGuard where the module exists, else
//!   userspace `wireguard-go`.
//! - [`proxy`]: the Service data plane in one nftables table: ClusterIP
//!   and NodePort DNAT to ready endpoints, session affinity, reject when no
//!   endpoint is ready, masquerade where replies would otherwise go astray.
//!   Each change is one nft transaction.
//!
//! - [`gateway`] (`--role gateway`, on a host that is no node): routes to
//!   each node's podCIDR via the node, so that host reaches pods directly.
//!
//! All are fed by informers on Nodes, Services and Endpoints and reconcile
//! the whole desired state on every batch of changes (level-triggered);
//! [`link`] is their one access to the host's links and routes.
#![forbid(unsafe_code)]

mod error;
pub mod gateway;
mod link;
mod metrics;
mod nodes;
pub mod proxy;
pub mod wireguard;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::{Endpoints, Node, Service};
use skiff_api::cidr::Cidr;
use skiff_client::{EventRecorder, Informer, ListParams};
use skiff_telemetry::ServiceOps;
use tokio::task::JoinSet;

pub use error::Error;

/// Flags of `skiff-overlay`.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    #[command(flatten)]
    pub api: skiff_client::ApiFlags,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "127.0.0.1:10256")]
    pub metrics_listen: SocketAddr,
    /// `node`: a node's agent (Service rules and the WireGuard mesh), or
    /// `gateway`: a host that is no node and only routes to the pods.
    #[arg(long, value_enum, default_value = "node")]
    pub role: Role,
    /// This node's name (its Node object, registered by the kubelet);
    /// required for the node role.
    #[arg(long)]
    pub node_name: Option<String>,
    /// The cluster's pod network, from which every node's podCIDR is cut.
    #[arg(long, default_value = "10.42.0.0/16")]
    pub cluster_cidr: String,
    /// Where the WireGuard private key is kept (mode 0600).
    #[arg(long, default_value = "/var/lib/skiff/overlay")]
    pub state_dir: PathBuf,
    /// WireGuard: `auto` (kernel if the module loads, else userspace
    /// wireguard-go), `kernel`, `userspace`, or `off` (services only).
    #[arg(long, default_value = "auto")]
    pub wireguard: wireguard::Mode,
    /// Name of the WireGuard interface.
    #[arg(long, default_value = "wg-skiff")]
    pub wireguard_interface: String,
    /// UDP port WireGuard listens on (published with the node's address).
    #[arg(long, default_value_t = 51820)]
    pub wireguard_port: u16,
    /// MTU of the WireGuard interface (the link's minus 80 bytes of overhead).
    #[arg(long, default_value_t = 1420)]
    pub wireguard_mtu: u32,
    /// The nftables table (family ip) skiff owns; replaced at start.
    #[arg(long, default_value = "skiff")]
    pub nft_table: String,
    /// Delete the nftables table when stopped (SIGTERM). Off by default, so
    /// Services keep working while the agent restarts; on where the node
    /// goes away with the agent, as in a one-node `skiffctl up`.
    #[arg(long)]
    pub delete_table_on_exit: bool,
}

/// What this host is to the pod network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    Node,
    Gateway,
}

/// Runs skiff-overlay until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), Error> {
    let client = config.api.client().map_err(Error::Connect)?;
    let cluster_cidr: Cidr = config.cluster_cidr.parse().map_err(|e| Error::Flag {
        flag: "cluster-cidr",
        value: config.cluster_cidr.clone(),
        reason: e,
    })?;
    // clap's required_if_eq does not see the role's default: checked here.
    let node_name = match (config.role, config.node_name.as_deref()) {
        (Role::Node, None | Some("")) => {
            let reason = "required for the node role".into();
            return Err(Error::Flag { flag: "node-name", value: String::new(), reason });
        }
        (_, name) => name.unwrap_or_default().to_string(),
    };
    let ops = ServiceOps::start(config.metrics_listen).await.map_err(Error::from)?;
    if config.role == Role::Gateway {
        return run_gateway(client, cluster_cidr, ops, shutdown).await;
    }
    let recorder = EventRecorder::new(client.clone(), "skiff-overlay");

    let nodes = Informer::new(client.api::<Node>(""), ListParams::default());
    let services = Informer::new(client.api::<Service>(""), ListParams::default());
    let endpoints = Informer::new(client.api::<Endpoints>(""), ListParams::default());
    let stores = proxy::Stores { nodes: nodes.store(), services: services.store(), endpoints: endpoints.store() };

    let proxier = proxy::Proxier::new(
        proxy::Options {
            table: config.nft_table.clone(),
            node_name: node_name.clone(),
            cluster_cidr,
            wireguard_interface: (config.wireguard != wireguard::Mode::Off).then(|| config.wireguard_interface.clone()),
            delete_table_on_exit: config.delete_table_on_exit,
        },
        stores.clone(),
        Box::new(proxy::nft::NftCommand),
        &ops.metrics,
    )?;
    let proxy_events = proxier.subscribe();
    let mesh = match config.wireguard {
        wireguard::Mode::Off => None,
        mode => Some(
            wireguard::Mesh::new(
                wireguard::Options {
                    mode,
                    node_name: node_name.clone(),
                    interface: config.wireguard_interface.clone(),
                    listen_port: config.wireguard_port,
                    mtu: config.wireguard_mtu,
                    state_dir: config.state_dir.clone(),
                    cluster_cidr,
                },
                client.clone(),
                recorder.clone(),
                stores.nodes.clone(),
                &ops.metrics,
            )
            .await?,
        ),
    };
    let mesh_events = mesh.as_ref().map(wireguard::Mesh::subscribe);

    let mut tasks = JoinSet::new();
    tasks.spawn(nodes.run(ops.stop.raised()));
    tasks.spawn(services.run(ops.stop.raised()));
    tasks.spawn(endpoints.run(ops.stop.raised()));

    let result: Result<(), Error> = async {
        tokio::pin!(shutdown);
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            synced = stores.wait_synced() => synced?,
        }
        let mut loops = JoinSet::new();
        loops.spawn(proxier.run(proxy_events, ops.stop.raised()));
        if let (Some(mesh), Some(events)) = (mesh, mesh_events) {
            loops.spawn(mesh.run(events, ops.stop.raised()));
        }
        ops.readiness.set_ready();
        tracing::info!(node = %node_name, "overlay running");
        let joined = |done: Result<Result<(), Error>, tokio::task::JoinError>| match done {
            Ok(result) => result,
            Err(e) => Err(Error::Io { what: "overlay loop", path: String::new(), source: std::io::Error::other(e) }),
        };
        tokio::select! {
            _ = &mut shutdown => {
                // The loops stop on the flag and may still have work to do
                // on the way out (deleting the table): wait for them
                // rather than dropping them mid-transaction.
                ops.stop.raise();
                let mut result = Ok(());
                while let Some(done) = loops.join_next().await {
                    result = result.and(joined(done));
                }
                result
            }
            Some(done) = loops.join_next() => joined(done),
        }
    }
    .await;

    ops.shutdown().await;
    while tasks.join_next().await.is_some() {}
    result
}

/// The gateway role: the Node informer and the routes it drives.
async fn run_gateway(
    client: skiff_client::Client,
    cluster_cidr: Cidr,
    ops: ServiceOps,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let nodes = Informer::new(client.api::<Node>(""), ListParams::default());
    let gateway = gateway::Gateway::new(nodes.store(), cluster_cidr, &ops.metrics)?;
    let changes = gateway.subscribe();
    let store = nodes.store();
    let informer = tokio::spawn(nodes.run(ops.stop.raised()));
    let result = async {
        tokio::pin!(shutdown);
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            synced = store.wait_synced() => synced.map_err(Error::CacheSync)?,
        }
        ops.readiness.set_ready();
        tracing::info!("overlay running as a gateway");
        gateway.run(changes, shutdown).await
    }
    .await;
    ops.shutdown().await;
    let _ = informer.await;
    result
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: Config,
    }

    #[tokio::test]
    async fn the_node_role_needs_a_node_name() {
        let cli = Cli::parse_from(["skiff-overlay", "--server=http://127.0.0.1:1"]);
        let refused = run(cli.config, async {}).await.unwrap_err();
        assert!(refused.to_string().starts_with("invalid --node-name"), "{refused}");
    }
}
