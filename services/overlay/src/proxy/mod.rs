//! The Service data plane: one nftables table kept equal to the Services
//! and Endpoints in the API.
//!
//! Level-triggered: any change wakes the loop, which drains every queued
//! event, computes the whole desired state ([`model`]), renders it
//! ([`rules`]) and applies only the difference from what it installed
//! ([`script`], [`nft`]) as one transaction. The table is left in place on
//! exit, so traffic keeps flowing while the agent restarts; the first sync
//! after start replaces it.

pub mod model;
pub mod nft;
pub mod rules;
pub mod script;
mod sync;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::future::Future;
use std::time::Instant;

use k8s_openapi::api::core::v1::{Endpoints, Node, Service};
use skiff_api::cidr::Cidr;
use skiff_client::{InformerEvent, Store};
use skiff_telemetry::Metrics;
use tokio::sync::mpsc::UnboundedReceiver;

use self::model::Skipped;
use self::nft::Nftables;
use self::rules::Network;
use self::sync::Syncer;
use crate::metrics::ProxyMetrics;
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

impl Events {
    /// Waits for an event that can change the rules: any Service or
    /// Endpoints, and only this node's Node. False once every feed closed.
    async fn changed(&mut self, node_name: &str) -> bool {
        let mut open = [true; 3];
        while open.iter().any(|o| *o) {
            tokio::select! {
                e = self.nodes.recv(), if open[0] => match e {
                    Some(e) if e.object().metadata.name.as_deref() == Some(node_name) => return true,
                    Some(_) => {}
                    None => open[0] = false,
                },
                e = self.services.recv(), if open[1] => match e {
                    Some(_) => return true,
                    None => open[1] = false,
                },
                e = self.endpoints.recv(), if open[2] => match e {
                    Some(_) => return true,
                    None => open[2] = false,
                },
            }
        }
        false
    }

    /// Drops what is queued: the next sync reads the caches, which already
    /// hold every change these events announced.
    fn drain(&mut self) {
        while self.nodes.try_recv().is_ok() {}
        while self.services.try_recv().is_ok() {}
        while self.endpoints.try_recv().is_ok() {}
    }
}

pub struct Proxier {
    options: Options,
    stores: Stores,
    nft: Box<dyn Nftables>,
    metrics: ProxyMetrics,
    syncer: Syncer,
    /// Ports already reported as inexpressible, so each is logged once.
    skipped: HashSet<Skipped>,
}

impl Proxier {
    /// A proxier that applies its scripts through `nft` (the real
    /// [`nft::NftCommand`], or a fake in unit tests).
    pub fn new(options: Options, stores: Stores, nft: Box<dyn Nftables>, metrics: &Metrics) -> Result<Self, Error> {
        let metrics = ProxyMetrics::register(metrics)?;
        let syncer = Syncer::new(options.table.clone());
        Ok(Self { options, stores, nft, metrics, syncer, skipped: HashSet::new() })
    }

    /// Subscribes to the informers; call before they run so no change is missed.
    pub fn subscribe(&self) -> Events {
        Events {
            nodes: self.stores.nodes.subscribe(),
            services: self.stores.services.subscribe(),
            endpoints: self.stores.endpoints.subscribe(),
        }
    }

    /// Syncs the table after every batch of changes until `shutdown`. A
    /// failed transaction is retried in full after a back-off; events that
    /// arrive meanwhile wait for it.
    pub async fn run(mut self, mut events: Events, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        tokio::pin!(shutdown);
        loop {
            events.drain();
            let retry_after = self.sync().await;
            tokio::select! {
                _ = &mut shutdown => return Ok(()),
                _ = tokio::time::sleep(retry_after.unwrap_or_default()), if retry_after.is_some() => {}
                open = events.changed(&self.options.node_name), if retry_after.is_none() => if !open {
                    shutdown.await;
                    return Ok(());
                },
            }
        }
    }

    /// One sync; on failure, how long to wait before the next.
    async fn sync(&mut self) -> Option<std::time::Duration> {
        let start = Instant::now();
        let node = self.stores.nodes.get(&self.options.node_name);
        let desired = model::desired(&self.stores.services.list(), &self.stores.endpoints.list(), node.as_deref());
        self.report_skipped(&desired.skipped);
        let net = Network {
            cluster_cidr: self.options.cluster_cidr,
            wireguard_interface: self.options.wireguard_interface.as_deref(),
        };
        let ruleset = rules::render(&desired, &net);
        let Some(script) = self.syncer.plan(&ruleset) else {
            self.metrics.synced(start.elapsed(), desired.ports.len());
            return None;
        };
        match self.nft.apply(&script).await {
            Ok(()) => {
                self.syncer.applied(ruleset);
                self.metrics.synced(start.elapsed(), desired.ports.len());
                tracing::debug!(ports = desired.ports.len(), bytes = script.len(), elapsed = ?start.elapsed(), "synced");
                None
            }
            Err(error) => {
                let backoff = self.syncer.failed();
                self.metrics.failed(start.elapsed());
                tracing::warn!(%error, table = %self.options.table, ?backoff, "nft transaction failed; full resync next");
                Some(backoff)
            }
        }
    }

    fn report_skipped(&mut self, skipped: &[Skipped]) {
        let now: HashSet<Skipped> = skipped.iter().cloned().collect();
        for s in now.difference(&self.skipped) {
            tracing::warn!(service = %s.key, reason = %s.reason, "service port not programmed");
        }
        self.skipped = now;
    }
}
