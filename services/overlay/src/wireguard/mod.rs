//! The pod network between nodes over WireGuard.
//!
//! Each node publishes its public key and endpoint (`InternalIP:port`) on
//! its Node; every node peers with every other published node, the peer's
//! allowed IPs being its podCIDR, and routes that CIDR into the interface.
//! The interface carries a /32 of the node's own podCIDR (its network
//! address: the CNI bridge takes .1) so that traffic the host itself sends
//! into the tunnel has a source the peer's allowed IPs accept.
//!
//! Level-triggered: each batch of Node changes (and a periodic tick, which
//! also notices a dead wireguard-go) reconciles annotations, peers and
//! routes against the whole Node cache.

mod device;
#[cfg(test)]
pub(crate) mod fake;
mod key;
pub mod peers;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use serde_json::json;
use skiff_api::cidr::Cidr;
use skiff_client::{Changes, Client, EventRecorder, EventType, Store};
use skiff_telemetry::Metrics;
use wireguard_control::Key;

use crate::link::{Links, Netlink};
use crate::metrics::MeshMetrics;
use crate::nodes::{internal_ip, pod_cidr};
use crate::Error;
use device::{Device, WireGuard};
use peers::{desired_peers, Peer};
use skiff_api::well_known::{WIREGUARD_ENDPOINT_ANNOTATION, WIREGUARD_PUBLIC_KEY_ANNOTATION};

/// How often the mesh is checked without a change (a dead wireguard-go,
/// routes someone removed).
const RESYNC: Duration = Duration::from_secs(10);
/// Retry after a failed reconcile.
const RETRY: Duration = Duration::from_secs(1);

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
    client: Client,
    recorder: EventRecorder,
    nodes: Store<Node>,
    key: Key,
    device: Box<dyn WireGuard>,
    links: Box<dyn Links>,
    metrics: MeshMetrics,
    /// What the device was last configured with; None forces a configure.
    applied: Option<Vec<Peer>>,
    /// Rejections already reported, so each bad value gets one Event.
    reported: HashSet<(String, String)>,
}

/// What the mesh drives on this host: the node's key, its WireGuard
/// interface and the host's links and routes.
pub(crate) struct Host {
    pub key: Key,
    pub device: Box<dyn WireGuard>,
    pub links: Box<dyn Links>,
}

impl Mesh {
    /// Loads (or creates) the node's key and creates the interface.
    pub async fn new(
        options: Options,
        client: Client,
        recorder: EventRecorder,
        nodes: Store<Node>,
        metrics: &Metrics,
    ) -> Result<Self, Error> {
        let host = Host {
            key: key::load_or_create(&options.state_dir)?,
            device: Box::new(Device::create(options.mode, &options.interface).await?),
            links: Box::new(Netlink::connect()?),
        };
        Self::on(host, options, client, recorder, nodes, metrics)
    }

    /// A mesh driving `host` (real, or fakes in unit tests).
    pub(crate) fn on(
        host: Host,
        options: Options,
        client: Client,
        recorder: EventRecorder,
        nodes: Store<Node>,
        metrics: &Metrics,
    ) -> Result<Self, Error> {
        let metrics = MeshMetrics::register(metrics)?;
        metrics.info.with_label_values(&[host.device.mode()]).set(1);
        Ok(Self {
            options,
            client,
            recorder,
            nodes,
            key: host.key,
            device: host.device,
            links: host.links,
            metrics,
            applied: None,
            reported: HashSet::new(),
        })
    }

    pub fn subscribe(&self) -> Changes {
        Changes::new().watch(self.nodes.subscribe())
    }

    /// Keeps peers and routes equal to the other nodes until `shutdown`.
    pub async fn run(mut self, mut changes: Changes, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        tokio::pin!(shutdown);
        loop {
            let wait = match self.reconcile().await {
                Ok(()) => RESYNC,
                Err(error) => {
                    self.metrics.errors.inc();
                    tracing::warn!(error = format!("{error:#}"), "reconciling the WireGuard mesh");
                    RETRY
                }
            };
            tokio::select! {
                _ = &mut shutdown => return Ok(()),
                open = changes.changed() => if !open { return Ok(()) },
                _ = tokio::time::sleep(wait) => {}
                // Its interface, peers and routes went with it: redo them now.
                _ = self.device.exited() => {}
            }
        }
    }

    async fn reconcile(&mut self) -> Result<(), Error> {
        // Before anything that may return early: a dead wireguard-go must be
        // restarted even while this node waits for its podCIDR.
        if self.device.gone() {
            self.device.restart().await?;
            self.applied = None;
        }
        let Some(node) = self.nodes.get(&self.options.node_name) else {
            tracing::debug!(node = %self.options.node_name, "waiting for this node to be registered");
            return Ok(());
        };
        let (Some(own_cidr), Some(ip)) = (pod_cidr(&node), internal_ip(&node)) else {
            tracing::debug!(node = %self.options.node_name, "waiting for this node's podCIDR and InternalIP");
            return Ok(());
        };
        self.publish(&node, &format!("{ip}:{}", self.options.listen_port)).await?;

        let nodes = self.nodes.list();
        let (peers, rejected) = desired_peers(nodes.iter().map(|n| n.as_ref()), &self.options.node_name);
        self.report(&rejected).await;
        if self.applied.as_ref() != Some(&peers) {
            self.device.configure(&self.key, self.options.listen_port, &peers, self.applied.as_deref()).await?;
            tracing::info!(peers = ?peers.iter().map(|p| p.node.as_str()).collect::<Vec<_>>(), "WireGuard peers set");
            self.applied = Some(peers.clone());
        }
        self.metrics.peers.set(peers.len() as i64);

        let interface = self.device.interface();
        let index = self
            .links
            .index(&interface)
            .await?
            .ok_or_else(|| Error::WireGuard { what: format!("interface {interface} vanished") })?;
        self.links.up(index, self.options.mtu).await?;
        let own = own_cidr.nth(0).unwrap_or(std::net::Ipv4Addr::UNSPECIFIED);
        self.links.ensure_address(index, own).await?;
        let routes: BTreeSet<Cidr> = peers.iter().map(|p| p.pod_cidr).collect();
        self.links.sync_routes(index, &routes).await
    }

    /// Puts this node's public key and endpoint on its Node, if they differ.
    async fn publish(&self, node: &Node, endpoint: &str) -> Result<(), Error> {
        let public = self.key.get_public().to_base64();
        let annotations = node.metadata.annotations.as_ref();
        let current = |k: &str| annotations.and_then(|a| a.get(k)).map(String::as_str);
        if current(WIREGUARD_PUBLIC_KEY_ANNOTATION) == Some(public.as_str())
            && current(WIREGUARD_ENDPOINT_ANNOTATION) == Some(endpoint)
        {
            return Ok(());
        }
        let patch = json!({"metadata": {"annotations": {WIREGUARD_PUBLIC_KEY_ANNOTATION: public, WIREGUARD_ENDPOINT_ANNOTATION: endpoint}}});
        self.client.api::<Node>("").patch(&self.options.node_name, &patch).await.map_err(|source| Error::Api {
            what: format!("publishing node {}'s WireGuard key", self.options.node_name),
            source,
        })?;
        tracing::info!(endpoint, "published this node's WireGuard key and endpoint");
        Ok(())
    }

    /// One Warning Event per node and bad value; never fails the reconcile.
    async fn report(&mut self, rejected: &[peers::Rejected]) {
        for r in rejected {
            if !self.reported.insert((r.node.clone(), r.message.clone())) {
                continue;
            }
            tracing::warn!(node = %r.node, reason = r.reason, "{}: left out of the WireGuard mesh", r.message);
            let Some(node) = self.nodes.get(&r.node) else { continue };
            let message = format!("{} (seen by {}): left out of the WireGuard mesh", r.message, self.options.node_name);
            self.recorder.report(&*node, EventType::Warning, r.reason, &message).await;
        }
    }
}
