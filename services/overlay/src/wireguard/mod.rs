//! The pod network between nodes over WireGuard. (Skeleton: filled in by
//! the WireGuard work.)

use std::future::Future;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::Node;
use skiff_api::cidr::Cidr;
use skiff_client::{Client, EventRecorder, InformerEvent, Store};
use skiff_telemetry::Metrics;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::Error;

/// Which WireGuard implementation carries the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Kernel WireGuard if the module is there, else userspace.
    Auto,
    Kernel,
    /// `wireguard-go`, driven over its UAPI socket.
    Userspace,
    /// No mesh: this node runs the service proxy only.
    Off,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub mode: Mode,
    pub node_name: String,
    pub interface: String,
    pub listen_port: u16,
    pub mtu: u32,
    pub state_dir: PathBuf,
    pub cluster_cidr: Cidr,
}

pub struct Mesh {
    options: Options,
    nodes: Store<Node>,
}

impl Mesh {
    /// Loads (or creates) the node's key and brings the interface up.
    pub async fn new(
        options: Options,
        _client: Client,
        _recorder: EventRecorder,
        nodes: Store<Node>,
        _metrics: &Metrics,
    ) -> Result<Self, Error> {
        Ok(Self { options, nodes })
    }

    pub fn subscribe(&self) -> UnboundedReceiver<InformerEvent<Node>> {
        self.nodes.subscribe()
    }

    /// Keeps peers and routes equal to the other nodes until `shutdown`.
    pub async fn run(
        self,
        _events: UnboundedReceiver<InformerEvent<Node>>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), Error> {
        tracing::warn!(interface = %self.options.interface, "WireGuard mesh not built yet");
        shutdown.await;
        Ok(())
    }
}
