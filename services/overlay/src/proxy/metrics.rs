//! The proxier's metrics.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use skiff_telemetry::prometheus::{Gauge, Histogram, HistogramOpts, IntCounter, IntGauge};
use skiff_telemetry::{Metrics, DURATION_BUCKETS};

use crate::Error;

pub const SYNC_DURATION: &str = "skiff_overlay_proxy_sync_duration_seconds";
pub const SERVICES_PROGRAMMED: &str = "skiff_overlay_proxy_services_programmed";
pub const SYNC_ERRORS: &str = "skiff_overlay_proxy_sync_errors_total";
pub const LAST_SYNC: &str = "skiff_overlay_proxy_last_sync_timestamp_seconds";

#[derive(Clone)]
pub struct ProxyMetrics {
    duration: Histogram,
    programmed: IntGauge,
    errors: IntCounter,
    last_sync: Gauge,
}

impl ProxyMetrics {
    pub fn register(metrics: &Metrics) -> Result<Self, Error> {
        let duration = Histogram::with_opts(
            HistogramOpts::new(SYNC_DURATION, "Time to compute and apply one sync of the nftables table, in seconds.")
                .buckets(DURATION_BUCKETS.to_vec()),
        )
        .expect("valid histogram");
        let programmed =
            IntGauge::new(SERVICES_PROGRAMMED, "Service ports in the nftables table after the last successful sync.")
                .expect("valid gauge");
        let errors = IntCounter::new(SYNC_ERRORS, "Syncs whose nft transaction failed.").expect("valid counter");
        let last_sync = Gauge::new(LAST_SYNC, "Unix time of the last successful sync.").expect("valid gauge");
        Ok(Self {
            duration: metrics.register(duration).map_err(Error::Metrics)?,
            programmed: metrics.register(programmed).map_err(Error::Metrics)?,
            errors: metrics.register(errors).map_err(Error::Metrics)?,
            last_sync: metrics.register(last_sync).map_err(Error::Metrics)?,
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
