//! skiff-controller-manager: the built-in controllers that turn
//! Deployments into ReplicaSets into Pods, collect garbage, watch node
//! heartbeats, empty terminating namespaces, keep each Service's Endpoints
//! and give every Node a pod CIDR.
//!
//! One set of informers feeds every controller ([`informers`]); the
//! controllers run only while this replica holds the
//! `kube-system/skiff-controller-manager` lease, so several replicas may run
//! and exactly one acts. Each controller is a [`skiff_client::Reconcile`]
//! in its own file under [`controllers`].
#![forbid(unsafe_code)]

pub mod controllers;
mod error;
mod expectations;
mod informers;
mod metrics;
mod pod_control;
mod util;

use skiff_api::parse_duration;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use skiff_client::LeaderElectionFlags;
use skiff_telemetry::ServiceOps;

pub use error::Error;

/// The Lease replicas compete for, unless `--lease-name` says otherwise.
pub const LEASE_NAME: &str = skiff_api::well_known::CONTROLLER_MANAGER_LEASE;

/// Flags of `skiff-controller-manager`.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    #[command(flatten)]
    pub api: skiff_client::ApiFlags,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "127.0.0.1:10257")]
    pub metrics_listen: SocketAddr,
    #[command(flatten)]
    pub election: LeaderElectionFlags,
    /// Workers per controller (keys reconciled at once).
    #[arg(long, default_value_t = 5)]
    pub workers: usize,
    /// Pods a ReplicaSet creates or deletes in one sync at most.
    #[arg(long, default_value_t = 500)]
    pub burst_replicas: usize,
    /// A node whose lease is older than this is marked Ready=Unknown and tainted unreachable.
    #[arg(long, default_value = "40s", value_parser = parse_duration)]
    pub node_monitor_grace_period: Duration,
    /// How long pods without their own toleration stay on an unreachable node.
    #[arg(long, default_value_t = 300)]
    pub default_unreachable_toleration_seconds: i64,
    /// How long pods without their own toleration stay on a not-ready node.
    #[arg(long, default_value_t = 300)]
    pub default_not_ready_toleration_seconds: i64,
    /// The pod network; each node gets a subnet of it as spec.podCIDR.
    #[arg(long, default_value = "10.42.0.0/16")]
    pub cluster_cidr: skiff_api::cidr::Cidr,
    /// The prefix length of each node's pod subnet.
    #[arg(long, default_value_t = 24)]
    pub node_cidr_mask_size: u8,
    /// The cluster CA's certificate (PEM), to sign nodes' certificate
    /// requests with; with `--cluster-signing-key-file`.
    #[arg(long, requires = "cluster_signing_key_file")]
    pub cluster_signing_cert_file: Option<std::path::PathBuf>,
    /// The cluster CA's private key (PEM).
    #[arg(long, requires = "cluster_signing_cert_file")]
    pub cluster_signing_key_file: Option<std::path::PathBuf>,
    /// The longest a certificate signed here is valid; a request asking
    /// for less (spec.expirationSeconds) gets less.
    #[arg(long, default_value = "8760h", value_parser = parse_duration)]
    pub cluster_signing_duration: Duration,
    /// The folder on each node under which the built-in `local-path`
    /// provisioner makes its volumes (the node's kubelet creates them).
    #[arg(long, default_value = "/var/lib/skiff/local-path")]
    pub local_path_root: std::path::PathBuf,
    /// How often each HorizontalPodAutoscaler is looked at.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub horizontal_pod_autoscaler_sync_period: Duration,
    /// How far from its target a metric may be before anything is scaled
    /// (a fraction: 0.1 is 10%).
    #[arg(long, default_value_t = 0.1)]
    pub horizontal_pod_autoscaler_tolerance: f64,
    /// How long scaling down waits for the recommendations to stay lower,
    /// unless an HPA's behavior says otherwise.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub horizontal_pod_autoscaler_downscale_stabilization: Duration,
}

/// Runs until `shutdown` resolves (or leadership is lost, which is an error:
/// the process exits and a supervisor restarts it as a fresh candidate).
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), Error> {
    let node_ipam = node_ipam_ranges(&config)?;
    let signing_ca = signing_ca(&config)?;
    let client = config.api.client().map_err(Error::Connect)?;
    let pod_proxy = config.api.pod_proxy().map_err(Error::Connect)?;
    let ops = ServiceOps::start(config.metrics_listen).await?;
    let reconcile_metrics = metrics::ReconcileMetrics::register(&ops.metrics)?;
    ops.readiness.set_not_ready("caches not synced");

    let (informers, runners) = informers::Informers::start(&client, ops.stop.clone());
    let ready = {
        let informers = informers.clone();
        let readiness = ops.readiness.clone();
        async move {
            if informers.wait_synced().await.is_ok() {
                tracing::info!("caches synced");
                readiness.set_ready();
            }
        }
    };
    let ready = tokio::spawn(ready);

    let controllers = controllers::Context {
        client: client.clone(),
        caches: informers,
        metrics: reconcile_metrics,
        workers: config.workers,
        burst_replicas: config.burst_replicas.max(1),
        node_monitor_grace_period: config.node_monitor_grace_period,
        default_unreachable_toleration_seconds: config.default_unreachable_toleration_seconds,
        default_not_ready_toleration_seconds: config.default_not_ready_toleration_seconds,
        node_ipam,
        signing_ca,
        signing_duration: config.cluster_signing_duration,
        local_path_root: config.local_path_root.clone(),
        pod_proxy,
        autoscaling: controllers::horizontal_pod_autoscaler::Tuning {
            sync_period: config.horizontal_pod_autoscaler_sync_period,
            tolerance: config.horizontal_pod_autoscaler_tolerance,
            downscale_stabilization: config.horizontal_pod_autoscaler_downscale_stabilization,
        },
    };
    let on_leading = controllers::run_all(controllers, ops.stop.clone());

    let result = match config.election.elector(&client, LEASE_NAME).map_err(Error::LeaderConfig)? {
        Some(elector) => {
            tracing::info!(identity = elector.identity(), lease = %elector.lease_key(), "waiting for leadership");
            let lease = elector.lease_key();
            elector.run(on_leading, shutdown).await.map_err(|source| Error::Leadership { lease, source })
        }
        None => {
            tokio::select! {
                _ = on_leading => {}
                _ = shutdown => {}
            }
            Ok(())
        }
    };
    tracing::info!("shutting down");
    ops.shutdown().await;
    ready.abort();
    for runner in runners {
        let _ = runner.await;
    }
    result
}

/// The CA of `--cluster-signing-cert-file` and `--cluster-signing-key-file`.
fn signing_ca(config: &Config) -> Result<Option<std::sync::Arc<skiff_pki::Ca>>, Error> {
    let (Some(cert), Some(key)) = (&config.cluster_signing_cert_file, &config.cluster_signing_key_file) else {
        return Ok(None);
    };
    let read = |flag: &'static str, path: &std::path::Path| {
        std::fs::read_to_string(path).map_err(|e| Error::Flag { flag, reason: format!("{}: {e}", path.display()) })
    };
    let ca =
        skiff_pki::Ca::load(&read("--cluster-signing-cert-file", cert)?, &read("--cluster-signing-key-file", key)?)
            .map_err(|e| Error::Flag { flag: "--cluster-signing-key-file", reason: e.to_string() })?;
    Ok(Some(std::sync::Arc::new(ca)))
}

/// `--cluster-cidr` split into `--node-cidr-mask-size` subnets: at least
/// one, at most 2^16 of them (as Kubernetes allows).
fn node_ipam_ranges(config: &Config) -> Result<controllers::node_ipam::Ranges, Error> {
    let (cidr, mask) = (config.cluster_cidr, config.node_cidr_mask_size);
    if mask > 32 || mask < cidr.prefix() || mask - cidr.prefix() > 16 {
        return Err(Error::Flag {
            flag: "--node-cidr-mask-size",
            reason: format!(
                "/{mask} subnets of {cidr}: must be between /{} and /{}",
                cidr.prefix(),
                (cidr.prefix() + 16).min(32)
            ),
        });
    }
    Ok(controllers::node_ipam::Ranges { cluster_cidr: cidr, node_mask: mask })
}
