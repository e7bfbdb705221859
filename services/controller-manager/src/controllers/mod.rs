//! The controllers, one per file, and the wiring that feeds each one keys:
//! every controller gets its own work queue, a task per watched kind that
//! maps informer events to keys (handlers map, they never decide or call
//! the API), and a [`skiff_client::Controller`] running its reconciles.
//!
//! Not here yet: the EndpointSlice controller.

pub mod certificates;
pub mod cronjob;
pub mod csr_cleaner;
pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod garbage_collector;
pub mod horizontal_pod_autoscaler;
pub mod job;
pub mod namespace;
pub mod node_ipam;
pub mod node_lifecycle;
pub mod persistentvolume;
pub mod replicaset;
pub mod resource_quota;
pub mod statefulset;
pub mod taint_eviction;

use std::sync::Arc;
use std::time::Duration;

use skiff_client::{Client, Controller, InformerEvent, Object, Reconcile, Store, WorkQueue};
use skiff_telemetry::Stop;
use tokio::task::JoinSet;

use crate::informers::Informers;
use crate::metrics::ReconcileMetrics;

/// What every controller may need.
#[derive(Clone)]
pub struct Context {
    pub client: Client,
    pub caches: Informers,
    pub metrics: ReconcileMetrics,
    pub workers: usize,
    pub burst_replicas: usize,
    pub node_monitor_grace_period: Duration,
    pub default_unreachable_toleration_seconds: i64,
    pub default_not_ready_toleration_seconds: i64,
    /// The pod network the node IPAM controller splits among nodes.
    pub node_ipam: node_ipam::Ranges,
    /// The CA that signs nodes' certificate requests, when one is given.
    pub signing_ca: Option<Arc<skiff_pki::Ca>>,
    /// The longest a certificate it signs is valid.
    pub signing_duration: Duration,
    /// Where on a node local-path volumes are made.
    pub local_path_root: std::path::PathBuf,
    /// The apiserver's PodProxy, for pods' CPU and memory use.
    pub pod_proxy: skiff_api::proto::pod_proxy_client::PodProxyClient<skiff_client::config::AuthedChannel>,
    /// The HorizontalPodAutoscaler controller's flags.
    pub autoscaling: horizontal_pod_autoscaler::Tuning,
}

/// Runs every controller until `stop` is raised. Dropping the future (the
/// lease was lost) stops them all: every task lives in one `JoinSet`.
pub async fn run_all(ctx: Context, stop: Stop) {
    let mut set = JoinSet::new();
    replicaset::start(&ctx, &mut Wiring { set: &mut set, stop: &stop });
    deployment::start(&ctx, &mut Wiring { set: &mut set, stop: &stop });
    daemonset::start(&ctx, &mut Wiring { set: &mut set, stop: &stop });
    statefulset::start(&ctx, &mut Wiring { set: &mut set, stop: &stop });
    persistentvolume::start(&ctx, &mut Wiring { set: &mut set, stop: &stop });
    horizontal_pod_autoscaler::start(&ctx, &mut Wiring { set: &mut set, stop: &stop });
    job::start(&ctx, &mut Wiring { set: &mut set, stop: &stop });
    cronjob::start(&ctx, &mut Wiring { set: &mut set, stop: &stop });
    garbage_collector::start(&ctx, &mut Wiring { set: &mut set, stop: &stop });
    node_lifecycle::start(&ctx, &mut Wiring { set: &mut set, stop: &stop });
    taint_eviction::start(&ctx, &mut Wiring { set: &mut set, stop: &stop });
    namespace::start(&ctx, &mut Wiring { set: &mut set, stop: &stop });
    endpoints::start(&ctx, &mut Wiring { set: &mut set, stop: &stop });
    node_ipam::start(&ctx, &mut Wiring { set: &mut set, stop: &stop });
    certificates::start(&ctx, &mut Wiring { set: &mut set, stop: &stop });
    csr_cleaner::start(&ctx, &mut Wiring { set: &mut set, stop: &stop });
    resource_quota::start(&ctx, &mut Wiring { set: &mut set, stop: &stop });
    while let Some(done) = set.join_next().await {
        if let Err(error) = done {
            if error.is_panic() {
                tracing::error!(%error, "a controller task panicked");
            }
        }
    }
}

/// Where a controller's tasks go.
pub struct Wiring<'a> {
    set: &'a mut JoinSet<()>,
    stop: &'a Stop,
}

impl Wiring<'_> {
    /// Feeds every event of `store` to `handler` (which enqueues keys) until stop.
    pub fn on_events<K: Object>(&mut self, store: &Store<K>, handler: impl Fn(InformerEvent<K>) + Send + 'static) {
        let mut events = store.subscribe();
        let stopped = self.stop.raised();
        self.set.spawn(async move {
            tokio::pin!(stopped);
            loop {
                tokio::select! {
                    _ = &mut stopped => return,
                    event = events.recv() => match event {
                        Some(event) => handler(event),
                        None => return,
                    },
                }
            }
        });
    }

    /// Runs `reconciler` over `queue` once every cache has synced.
    pub fn run<R: Reconcile>(&mut self, ctx: &Context, reconciler: R, queue: WorkQueue<String>) {
        let metrics = ctx.metrics.clone();
        let mut controller = Controller::new(Arc::new(reconciler), queue)
            .workers(ctx.workers)
            .observe(move |name, outcome, elapsed| metrics.observe(name, outcome, elapsed));
        for cache in ctx.caches.all() {
            controller = controller.wait_for(cache);
        }
        let stopped = self.stop.raised();
        self.set.spawn(async move {
            if let Err(error) = controller.run(stopped).await {
                tracing::error!(controller = R::NAME, %error, "controller stopped");
            }
        });
    }
}
