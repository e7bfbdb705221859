//! What hollow mode counts, on /metrics.

use skiff_telemetry::prometheus::{IntCounter, IntCounterVec, IntGauge, Opts};
use skiff_telemetry::Metrics;

use crate::Error;

#[derive(Clone)]
pub(super) struct HollowMetrics {
    pub nodes_registered: IntGauge,
    pub nodes_stopped: IntGauge,
    pub heartbeats: IntCounter,
    pub status_updates: IntCounter,
    pub pods_running: IntCounter,
    pub pods_deleted: IntCounter,
    /// By `operation`: register, heartbeat, status, pod.
    pub errors: IntCounterVec,
}

impl HollowMetrics {
    pub fn register(metrics: &Metrics) -> Result<Self, Error> {
        Ok(Self {
            nodes_registered: metrics.register(IntGauge::new(
                "skiff_hollow_nodes_registered",
                "Hollow nodes registered with the apiserver",
            )?)?,
            nodes_stopped: metrics.register(IntGauge::new(
                "skiff_hollow_nodes_stopped",
                "Hollow nodes stopped through hollow-control",
            )?)?,
            heartbeats: metrics
                .register(IntCounter::new("skiff_hollow_heartbeats_total", "Node Lease renewals written")?)?,
            status_updates: metrics
                .register(IntCounter::new("skiff_hollow_node_status_updates_total", "Node status updates written")?)?,
            pods_running: metrics
                .register(IntCounter::new("skiff_hollow_pods_running_total", "Pods marked Running by hollow nodes")?)?,
            pods_deleted: metrics.register(IntCounter::new(
                "skiff_hollow_pods_deleted_total",
                "Terminating pods deleted by hollow nodes",
            )?)?,
            errors: metrics.register(IntCounterVec::new(
                Opts::new("skiff_hollow_errors_total", "Failed writes by operation"),
                &["operation"],
            )?)?,
        })
    }
}
