//! skiff-overlay's own metrics, next to the shared ones in skiff-telemetry.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use skiff_telemetry::prometheus::{Gauge, Histogram, HistogramOpts, IntCounter, IntGauge, IntGaugeVec, Opts};
use skiff_telemetry::{Metrics, DURATION_BUCKETS};

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

/// The gateway role's routes.
#[derive(Clone)]
pub struct GatewayMetrics {
    /// `skiff_overlay_gateway_routes`: routes to nodes' pod CIDRs now.
    pub routes: IntGauge,
    /// `skiff_overlay_gateway_reconcile_errors_total`.
    pub errors: IntCounter,
}

impl GatewayMetrics {
    pub fn register(metrics: &Metrics) -> Result<Self, Error> {
        const ROUTES: &str = "skiff_overlay_gateway_routes";
        const ERRORS: &str = "skiff_overlay_gateway_reconcile_errors_total";
        let routes = IntGauge::new(ROUTES, "Routes to nodes' pod CIDRs via the nodes.").map_err(err(ROUTES))?;
        let errors = IntCounter::new(ERRORS, "Failed reconciles of the gateway's routes.").map_err(err(ERRORS))?;
        Ok(Self { routes: metrics.register(routes)?, errors: metrics.register(errors)? })
    }
}

/// The service proxy.
#[derive(Clone)]
pub struct ProxyMetrics {
    /// `skiff_overlay_proxy_sync_duration_seconds`: computing and applying one sync.
    duration: Histogram,
    /// `skiff_overlay_proxy_services_programmed`: service ports in the table.
    programmed: IntGauge,
    /// `skiff_overlay_proxy_sync_errors_total`: syncs whose nft transaction failed.
    errors: IntCounter,
    /// `skiff_overlay_proxy_last_sync_timestamp_seconds`.
    last_sync: Gauge,
}

impl ProxyMetrics {
    pub fn register(metrics: &Metrics) -> Result<Self, Error> {
        const DURATION: &str = "skiff_overlay_proxy_sync_duration_seconds";
        const PROGRAMMED: &str = "skiff_overlay_proxy_services_programmed";
        const ERRORS: &str = "skiff_overlay_proxy_sync_errors_total";
        const LAST: &str = "skiff_overlay_proxy_last_sync_timestamp_seconds";
        let duration = Histogram::with_opts(
            HistogramOpts::new(DURATION, "Time to compute and apply one sync of the nftables table, in seconds.")
                .buckets(DURATION_BUCKETS.to_vec()),
        )
        .map_err(err(DURATION))?;
        let programmed =
            IntGauge::new(PROGRAMMED, "Service ports in the nftables table after the last successful sync.")
                .map_err(err(PROGRAMMED))?;
        let errors = IntCounter::new(ERRORS, "Syncs whose nft transaction failed.").map_err(err(ERRORS))?;
        let last_sync = Gauge::new(LAST, "Unix time of the last successful sync.").map_err(err(LAST))?;
        Ok(Self {
            duration: metrics.register(duration)?,
            programmed: metrics.register(programmed)?,
            errors: metrics.register(errors)?,
            last_sync: metrics.register(last_sync)?,
        })
    }

    pub fn synced(&self, elapsed: Duration, service_ports: usize) {
        self.duration.observe(elapsed.as_secs_f64());
        self.programmed.set(service_ports as i64);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        self.last_sync.set(now.as_secs_f64());
    }

    pub fn failed(&self, elapsed: Duration) {
        self.duration.observe(elapsed.as_secs_f64());
        self.errors.inc();
    }
}
