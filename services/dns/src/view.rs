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
use skiff_client::{InformerEvent, Store};
use skiff_telemetry::prometheus::IntGauge;
use tokio::sync::mpsc::UnboundedReceiver;

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
        let sync = |kind| move |source| Error::CacheSync { kind, source };
        self.services.wait_synced().await.map_err(sync("Service"))?;
        self.endpoints.wait_synced().await.map_err(sync("Endpoints"))?;
        self.pods.wait_synced().await.map_err(sync("Pod"))
    }
}

/// The three informer feeds.
pub struct Events {
    services: UnboundedReceiver<InformerEvent<Service>>,
    endpoints: UnboundedReceiver<InformerEvent<Endpoints>>,
    pods: UnboundedReceiver<InformerEvent<Pod>>,
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
    pub fn subscribe(&self) -> Events {
        Events {
            services: self.stores.services.subscribe(),
            endpoints: self.stores.endpoints.subscribe(),
            pods: self.stores.pods.subscribe(),
        }
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
    /// the informers stop.
    pub async fn run(self, mut events: Events, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let open = tokio::select! {
                _ = &mut shutdown => return,
                e = events.services.recv() => e.is_some(),
                e = events.endpoints.recv() => e.is_some(),
                e = events.pods.recv() => e.is_some(),
            };
            if !open {
                return;
            }
            // Everything queued so far is in the stores already.
            while events.services.try_recv().is_ok() {}
            while events.endpoints.try_recv().is_ok() {}
            while events.pods.try_recv().is_ok() {}
            self.rebuild();
        }
    }
}
