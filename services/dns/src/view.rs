//! The view loop: turns informer changes into a fresh [`Zone`].
//!
//! Each wake-up drains every event already queued and rebuilds once, so a
//! burst of changes (a relist, a rollout) costs one build. A build reads
//! the stores, never the API, and takes milliseconds for thousands of
//! Services; queries keep using the previous zone meanwhile.

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use hickory_proto::rr::Name;
use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use skiff_client::{wait_all_synced, Changes, Store};
use skiff_telemetry::prometheus::IntGauge;

use crate::handler::SharedZone;
use crate::zone::Zone;
use crate::Error;

/// The informers' caches the zone is built from.
#[derive(Clone)]
pub struct Stores {
    pub services: Store<Service>,
    pub endpoints: Store<Endpoints>,
    pub pods: Store<Pod>,
}

impl Stores {
    pub async fn wait_synced(&self) -> Result<(), Error> {
        wait_all_synced(&[&self.services, &self.endpoints, &self.pods]).await.map_err(Error::CacheSync)
    }
}

pub struct View {
    origin: Name,
    ttl: u32,
    stores: Stores,
    zone: SharedZone,
    serial: AtomicU32,
    names: IntGauge,
}

impl View {
    pub fn new(origin: Name, ttl: u32, stores: Stores, zone: SharedZone, names: IntGauge) -> Self {
        Self { origin, ttl, stores, zone, serial: AtomicU32::new(0), names }
    }

    /// Subscribes to the informers; call before they run so no change is missed.
    pub fn subscribe(&self) -> Changes {
        Changes::new()
            .watch(self.stores.services.subscribe())
            .watch(self.stores.endpoints.subscribe())
            .watch(self.stores.pods.subscribe())
    }

    /// Builds the zone from the stores as they are and swaps it in.
    pub fn rebuild(&self) {
        let serial = self.serial.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        let services = self.stores.services.list();
        let pods = self.stores.pods.list();
        let zone = Zone::build(
            &self.origin,
            self.ttl,
            serial,
            services.iter().map(Arc::as_ref),
            |key| self.stores.endpoints.get(key),
            pods.iter().map(Arc::as_ref),
        );
        self.names.set(i64::try_from(zone.len()).unwrap_or(i64::MAX));
        tracing::debug!(
            serial,
            names = zone.len(),
            services = services.len(),
            pods = pods.len(),
            "cluster zone rebuilt"
        );
        *self.zone.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(zone);
    }

    /// Rebuilds after every batch of changes until `shutdown` resolves or
    /// every informer has stopped.
    pub async fn run(self, mut changes: Changes, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        while changes.changed_before(&mut shutdown).await {
            self.rebuild();
        }
    }
}
