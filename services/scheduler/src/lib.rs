//! skiff-scheduler: places pending pods on nodes, after kube-scheduler and
//! built for throughput.
//!
//! - Informers on Pods (all of them: bound ones fill the node cache,
//!   pending ones feed the queue) and Nodes; handlers in `scheduler` only
//!   update the [`cache`] and the [`queue`].
//! - One scheduling cycle at a time: [`algorithm`] runs the [`framework`]'s
//!   filter and score [`plugins`] over enough feasible nodes (not all of
//!   them on big clusters), the pod is assumed on the winner at once, and
//!   the Bind runs in the background, several at a time.
//! - A pod no node fits gets PodScheduled=False and a FailedScheduling
//!   Event, and waits parked until a node or pod change may make it fit.
//! - Only the holder of the `skiff-scheduler` Lease schedules.
#![forbid(unsafe_code)]

pub mod algorithm;
pub mod cache;
mod error;
pub mod framework;
mod metrics;
pub mod plugins;
pub mod queue;
pub mod resources;
mod scheduler;
pub mod volumes;

use skiff_api::parse_duration;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use skiff_client::{wait_all_synced, Informer, LeaderElectionFlags, ListParams};
use skiff_telemetry::ServiceOps;
use tokio::task::JoinSet;

pub use error::Error;
pub use scheduler::{is_pending, Options, Scheduler};

/// The Lease scheduler replicas compete for, unless `--lease-name` says otherwise.
pub const LEASE_NAME: &str = skiff_api::well_known::SCHEDULER_LEASE;

/// Flags of `skiff-scheduler`.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    #[command(flatten)]
    pub api: skiff_client::ApiFlags,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "127.0.0.1:10259")]
    pub metrics_listen: SocketAddr,
    #[command(flatten)]
    pub election: LeaderElectionFlags,
    /// Binds and status writes in flight at once.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..))]
    pub bind_workers: u16,
    /// Share of nodes to find feasible before scoring, 1-100; 0 adapts to
    /// the cluster size (50% less 1% per 125 nodes, at least 5%), and at
    /// least 100 nodes are always looked at.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub percentage_of_nodes_to_score: u32,
    /// Unschedulable pods parked this long are retried even if no event
    /// suggested they might fit now.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub unschedulable_flush_interval: Duration,
    /// Record a Normal `Scheduled` Event for each bound pod (one more write per pod).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub record_scheduled_events: bool,
}

/// Runs the scheduler until `shutdown` resolves, or until it loses the
/// lease (an error: the process should exit and start over, as
/// kube-scheduler does, since its cache may hold assumptions of a leader).
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), Error> {
    let client = config.api.client().map_err(Error::Connect)?;
    let ops = ServiceOps::start(config.metrics_listen).await.map_err(Error::from)?;
    let scheduler_metrics = metrics::SchedulerMetrics::register(&ops.metrics)?;

    let pod_informer = Informer::new(client.api::<Pod>(""), ListParams::default());
    let node_informer = Informer::new(client.api::<Node>(""), ListParams::default());
    let (pod_store, node_store) = (pod_informer.store(), node_informer.store());
    let claim_informer = Informer::new(client.api::<PersistentVolumeClaim>(""), ListParams::default());
    let volume_informer = Informer::new(client.api::<PersistentVolume>(""), ListParams::default());
    let class_informer = Informer::new(client.api::<StorageClass>(""), ListParams::default());
    let volumes = volumes::Volumes {
        claims: claim_informer.store(),
        volumes: volume_informer.store(),
        classes: class_informer.store(),
    };
    let options = Options {
        bind_workers: usize::from(config.bind_workers),
        percentage_of_nodes_to_score: config.percentage_of_nodes_to_score,
        unschedulable_flush_interval: config.unschedulable_flush_interval,
        record_scheduled_events: config.record_scheduled_events,
    };
    let scheduler =
        Arc::new(Scheduler::new(client.clone(), pod_store.clone(), volumes.clone(), scheduler_metrics, options));

    let mut tasks = JoinSet::new();
    let (pod_events, node_events) = (pod_informer.subscribe(), node_informer.subscribe());
    // A claim or volume changing may let a waiting pod fit.
    tasks.spawn(scheduler.clone().retry_on_change(claim_informer.subscribe()));
    tasks.spawn(scheduler.clone().retry_on_change(volume_informer.subscribe()));
    tasks.spawn(pod_informer.run(ops.stop.raised()));
    tasks.spawn(node_informer.run(ops.stop.raised()));
    tasks.spawn(claim_informer.run(ops.stop.raised()));
    tasks.spawn(volume_informer.run(ops.stop.raised()));
    tasks.spawn(class_informer.run(ops.stop.raised()));
    tasks.spawn(scheduler.clone().handle_events(pod_events, node_events, ops.stop.raised()));

    let result = async {
        tokio::pin!(shutdown);
        let synced = async {
            wait_all_synced(&[&pod_store, &node_store, &volumes.claims, &volumes.volumes, &volumes.classes])
                .await
                .map_err(Error::CacheSync)
        };
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            synced = synced => synced?,
        }
        scheduler.prime(&node_store.list(), &pod_store.list());
        ops.readiness.set_ready();
        tracing::info!(pods = pod_store.len(), nodes = node_store.len(), "caches synced");

        let Some(elector) = config.election.elector(&client, LEASE_NAME).map_err(Error::LeaderConfig)? else {
            tokio::select! {
                _ = &mut shutdown => {}
                _ = scheduler.clone().schedule_loop() => {}
            }
            return Ok(());
        };
        tracing::info!(identity = elector.identity(), lease = %elector.lease_key(), "waiting for leadership");
        let lease = elector.lease_key();
        elector
            .run(scheduler.clone().schedule_loop(), &mut shutdown)
            .await
            .map_err(|source| Error::Leadership { lease, source })
    }
    .await;

    scheduler.shutdown();
    ops.shutdown().await;
    while tasks.join_next().await.is_some() {}
    result
}
