//! The view loop: turns informer changes into a fresh [`RouteTable`] and
//! swaps it in.
//!
//! Each wake-up drains every change already queued and builds once, so a
//! rollout's burst of Endpoints updates costs one build. Requests keep
//! using the table they loaded; the swap never waits for them.

use std::future::Future;
use std::sync::Arc;

use std::sync::Mutex;

use arc_swap::ArcSwap;
use k8s_openapi::api::core::v1::{Endpoints, Secret, Service};
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use skiff_client::{wait_all_synced, Changes, Store};

use crate::balance::Peers;
use crate::metrics::IngressMetrics;
use crate::proxy::SharedTable;
use crate::routes::{Lookups, RouteTable};
use crate::tls::{Certs, ParsedSecrets};
use crate::Error;

/// Annotation that makes an IngressClass the default for Ingresses that
/// name none.
pub const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";
/// The class annotation Ingresses carried before `ingressClassName`.
pub const LEGACY_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";

/// The informers' caches the routes are built from.
#[derive(Clone)]
pub struct Stores {
    pub ingresses: Store<Ingress>,
    pub classes: Store<IngressClass>,
    pub services: Store<Service>,
    pub endpoints: Store<Endpoints>,
    pub secrets: Store<Secret>,
}

impl Stores {
    pub async fn wait_synced(&self) -> Result<(), Error> {
        wait_all_synced(&[&self.ingresses, &self.classes, &self.services, &self.endpoints, &self.secrets])
            .await
            .map_err(Error::CacheSync)
    }

    /// The Ingresses this controller serves.
    pub fn served(&self, class: &str) -> Vec<Arc<Ingress>> {
        self.ingresses.list().into_iter().filter(|ing| serves(class, ing, &self.classes)).collect()
    }

    /// Runs `f` with lookups into the Service and Endpoints caches.
    pub fn with_lookups<T>(&self, f: impl FnOnce(&Lookups<'_>) -> T) -> T {
        let service = |key: &str| self.services.get(key);
        let endpoints = |key: &str| self.endpoints.get(key);
        f(&Lookups { service: &service, endpoints: &endpoints })
    }
}

/// Whether the Ingress is of class `class`: by `ingressClassName`, else the
/// legacy annotation, else (naming none) when `class` is marked default.
pub fn serves(class: &str, ing: &Ingress, classes: &Store<IngressClass>) -> bool {
    let named =
        ing.spec.as_ref().and_then(|s| s.ingress_class_name.as_deref()).or_else(|| {
            ing.metadata.annotations.as_ref().and_then(|a| a.get(LEGACY_CLASS_ANNOTATION)).map(String::as_str)
        });
    match named {
        Some(name) => name == class,
        None => classes.get(class).is_some_and(|c| {
            c.metadata.annotations.as_ref().and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION)).is_some_and(|v| v == "true")
        }),
    }
}

pub struct View {
    class: String,
    stores: Stores,
    table: SharedTable,
    certs: Arc<ArcSwap<Certs>>,
    peers: Peers,
    parsed: Mutex<ParsedSecrets>,
    metrics: IngressMetrics,
}

impl View {
    pub fn new(
        class: String,
        stores: Stores,
        table: SharedTable,
        certs: Arc<ArcSwap<Certs>>,
        metrics: IngressMetrics,
    ) -> Self {
        Self { class, stores, table, certs, peers: Peers::default(), parsed: Mutex::default(), metrics }
    }

    /// Subscribes to the informers; call before they run so no change is missed.
    pub fn subscribe(&self) -> Changes {
        Changes::new()
            .watch(self.stores.ingresses.subscribe())
            .watch(self.stores.classes.subscribe())
            .watch(self.stores.services.subscribe())
            .watch(self.stores.endpoints.subscribe())
            .watch(self.stores.secrets.subscribe())
    }

    /// Builds the route table and certificates from the caches as they are
    /// and swaps them in.
    pub fn rebuild(&self) {
        let ingresses = self.stores.served(&self.class);
        let count = ingresses.len();
        let certs = {
            let mut parsed = self.parsed.lock().unwrap_or_else(|e| e.into_inner());
            let secret = |key: &str| self.stores.secrets.get(key);
            Certs::build(&ingresses, &secret, &self.certs.load(), &mut parsed)
        };
        self.certs.store(Arc::new(certs));
        let table = self.stores.with_lookups(|lookups| RouteTable::build(ingresses, lookups, &self.peers));
        for c in &table.conflicts {
            tracing::debug!(ignored = %c.ignored, winner = %c.winner, host = %c.host, path = %c.path, "rule defined by an older Ingress");
        }
        self.metrics.hosts.set(i64::try_from(table.hosts()).unwrap_or(i64::MAX));
        self.metrics.rebuilds.inc();
        tracing::debug!(ingresses = count, hosts = table.hosts(), "route table rebuilt");
        self.table.store(Arc::new(table));
        self.peers.prune();
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
