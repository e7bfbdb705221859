//! skiff-overlay's own metrics, next to the shared ones in skiff-telemetry.

use skiff_telemetry::prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, IntGaugeVec, Opts};
use skiff_telemetry::Metrics;

use crate::Error;

fn err(name: &'static str) -> impl FnOnce(skiff_telemetry::prometheus::Error) -> Error {
    move |source| Error::CreateMetric { name, source }
}

/// The WireGuard mesh.
#[derive(Clone)]
pub struct MeshMetrics {
    /// `skiff_overlay_wireguard_peers`: peers configured now.
    pub peers: IntGauge,
    /// `skiff_overlay_wireguard_reconcile_errors_total`.
    pub errors: IntCounter,
    /// `skiff_overlay_wireguard_info{mode}`: 1 for the implementation in use.
    pub info: IntGaugeVec,
}

impl MeshMetrics {
    pub fn register(metrics: &Metrics) -> Result<Self, Error> {
        const PEERS: &str = "skiff_overlay_wireguard_peers";
        const ERRORS: &str = "skiff_overlay_wireguard_reconcile_errors_total";
        const INFO: &str = "skiff_overlay_wireguard_info";
        let peers = IntGauge::new(PEERS, "WireGuard peers (other nodes) configured.").map_err(err(PEERS))?;
        let errors = IntCounter::new(ERRORS, "Failed reconciles of the WireGuard mesh.").map_err(err(ERRORS))?;
        let info = IntGaugeVec::new(
            Opts::new(INFO, "The WireGuard implementation in use (mode=kernel|userspace)."),
            &["mode"],
        )
        .map_err(err(INFO))?;
        Ok(Self { peers: metrics.register(peers)?, errors: metrics.register(errors)?, info: metrics.register(info)? })
    }
}

/// The service proxy.
#[derive(Clone)]
pub struct ProxyMetrics {
    /// `skiff_overlay_proxy_sync_duration_seconds`: one sync, computing and
    /// applying the nft transaction.
    pub sync_duration: Histogram,
    /// `skiff_overlay_proxy_service_ports`: service ports programmed.
    pub service_ports: IntGauge,
    /// `skiff_overlay_proxy_sync_errors_total`.
    pub errors: IntCounter,
    /// `skiff_overlay_proxy_last_sync_timestamp_seconds`.
    pub last_sync: IntGauge,
    /// `skiff_overlay_proxy_syncs_total`: successful syncs.
    pub syncs: IntCounter,
}

impl ProxyMetrics {
    pub fn register(metrics: &Metrics) -> Result<Self, Error> {
        const DURATION: &str = "skiff_overlay_proxy_sync_duration_seconds";
        const PORTS: &str = "skiff_overlay_proxy_service_ports";
        const ERRORS: &str = "skiff_overlay_proxy_sync_errors_total";
        const LAST: &str = "skiff_overlay_proxy_last_sync_timestamp_seconds";
        const SYNCS: &str = "skiff_overlay_proxy_syncs_total";
        let buckets = vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
        let sync_duration = Histogram::with_opts(
            HistogramOpts::new(DURATION, "Service proxy syncs (rules computed and applied), in seconds.")
                .buckets(buckets),
        )
        .map_err(err(DURATION))?;
        let service_ports = IntGauge::new(PORTS, "Service ports with rules in nftables.").map_err(err(PORTS))?;
        let errors = IntCounter::new(ERRORS, "Service proxy syncs that failed.").map_err(err(ERRORS))?;
        let last_sync = IntGauge::new(LAST, "Unix time of the last successful sync.").map_err(err(LAST))?;
        let syncs = IntCounter::new(SYNCS, "Successful service proxy syncs.").map_err(err(SYNCS))?;
        Ok(Self {
            sync_duration: metrics.register(sync_duration)?,
            service_ports: metrics.register(service_ports)?,
            errors: metrics.register(errors)?,
            last_sync: metrics.register(last_sync)?,
            syncs: metrics.register(syncs)?,
        })
    }
}
