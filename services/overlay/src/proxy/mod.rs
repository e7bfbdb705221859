//! The Service data plane: one nftables table kept equal to the Services
//! and Endpoints in the API. (Skeleton: filled in by the proxy work.)

use std::future::Future;

use k8s_openapi::api::core::v1::{Endpoints, Node, Service};
use skiff_api::cidr::Cidr;
use skiff_client::{InformerEvent, Store};
use skiff_telemetry::Metrics;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::Error;

/// The informers' caches the rules are computed from.
#[derive(Clone)]
pub struct Stores {
    pub nodes: Store<Node>,
    pub services: Store<Service>,
    pub endpoints: Store<Endpoints>,
}

impl Stores {
    pub async fn wait_synced(&self) -> Result<(), Error> {
        let sync = |kind| move |source| Error::CacheSync { kind, source };
        self.nodes.wait_synced().await.map_err(sync("Node"))?;
        self.services.wait_synced().await.map_err(sync("Service"))?;
        self.endpoints.wait_synced().await.map_err(sync("Endpoints"))
    }
}

/// What the proxier needs to know of its node and cluster.
#[derive(Debug, Clone)]
pub struct Options {
    /// The nftables table (family ip) it owns.
    pub table: String,
    pub node_name: String,
    pub cluster_cidr: Cidr,
    /// The WireGuard interface, when the mesh runs: host traffic leaving by
    /// it is masqueraded to the node's pod-network address.
    pub wireguard_interface: Option<String>,
}

/// The informer feeds that wake the proxier.
pub struct Events {
    pub nodes: UnboundedReceiver<InformerEvent<Node>>,
    pub services: UnboundedReceiver<InformerEvent<Service>>,
    pub endpoints: UnboundedReceiver<InformerEvent<Endpoints>>,
}

pub struct Proxier {
    options: Options,
    stores: Stores,
}

impl Proxier {
    pub fn new(options: Options, stores: Stores, _metrics: &Metrics) -> Result<Self, Error> {
        Ok(Self { options, stores })
    }

    /// Subscribes to the informers; call before they run so no change is missed.
    pub fn subscribe(&self) -> Events {
        Events {
            nodes: self.stores.nodes.subscribe(),
            services: self.stores.services.subscribe(),
            endpoints: self.stores.endpoints.subscribe(),
        }
    }

    /// Syncs the table after every batch of changes until `shutdown`.
    pub async fn run(self, _events: Events, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        tracing::warn!(table = %self.options.table, "service proxy not built yet");
        shutdown.await;
        Ok(())
    }
}
