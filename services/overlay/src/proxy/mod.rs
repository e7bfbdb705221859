//! The Service data plane: one nftables table kept equal to the Services
//! and Endpoints in the API.
//!
//! Level-triggered: any change wakes the loop (one wake-up however many
//! events queued, [`Changes`]), which computes the whole desired state ([`model`]), renders it
//! ([`rules`]) and applies only the difference from what it installed
//! ([`script`], [`nft`]) as one transaction. The table is left in place on
//! exit, so traffic keeps flowing while the agent restarts; the first sync
//! after start replaces it. Where the node goes away with the agent (a
//! one-node local cluster) [`Options::delete_table_on_exit`] removes it.

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
use skiff_client::{wait_all_synced, Changes, Store};
use skiff_telemetry::Metrics;

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
        wait_all_synced(&[&self.nodes, &self.services, &self.endpoints]).await.map_err(Error::CacheSync)
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
    /// Delete the table on graceful shutdown instead of leaving it to the
    /// next run: for a node that does not outlive its agent.
    pub delete_table_on_exit: bool,
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
    /// Any Service or Endpoints change can change the rules, and only this
    /// node's Node.
    pub fn subscribe(&self) -> Changes {
        let node_name = self.options.node_name.clone();
        Changes::new()
            .watch_where(self.stores.nodes.subscribe(), move |e| {
                e.object().metadata.name.as_deref() == Some(node_name.as_str())
            })
            .watch(self.stores.services.subscribe())
            .watch(self.stores.endpoints.subscribe())
    }

    /// Syncs the table after every batch of changes until `shutdown`. A
    /// failed transaction is retried in full after a back-off; events that
    /// arrive meanwhile wait for it.
    pub async fn run(mut self, mut changes: Changes, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        tokio::pin!(shutdown);
        loop {
            let retry_after = self.sync().await;
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(retry_after.unwrap_or_default()), if retry_after.is_some() => {}
                open = changes.changed(), if retry_after.is_none() => if !open {
                    shutdown.await;
                    break;
                },
            }
        }
        if self.options.delete_table_on_exit {
            self.delete_table().await?;
        }
        Ok(())
    }

    /// Removes the table, whether or not a sync ever created it.
    async fn delete_table(&mut self) -> Result<(), Error> {
        self.nft.apply(&script::delete(&self.options.table)).await?;
        tracing::info!(table = %self.options.table, "deleted the nftables table");
        Ok(())
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
