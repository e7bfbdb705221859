//! Reconcile metrics, by controller: how many, how many failed, how long.

use std::time::Duration;

use skiff_client::Outcome;
use skiff_telemetry::prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts};
use skiff_telemetry::{Error, Metrics};

fn created(name: &'static str) -> impl FnOnce(skiff_telemetry::prometheus::Error) -> Error {
    move |source| Error::CreateMetric { name: name.into(), source }
}

#[derive(Clone)]
pub struct ReconcileMetrics {
    total: IntCounterVec,
    errors: IntCounterVec,
    duration: HistogramVec,
}

impl ReconcileMetrics {
    pub fn register(metrics: &Metrics) -> Result<Self, Error> {
        let total = metrics.register(
            IntCounterVec::new(
                Opts::new("skiff_controller_reconcile_total", "Reconciles by controller and result"),
                &["controller", "result"],
            )
            .map_err(created("skiff_controller_reconcile_total"))?,
        )?;
        let errors = metrics.register(
            IntCounterVec::new(
                Opts::new("skiff_controller_reconcile_errors_total", "Failed reconciles by controller"),
                &["controller"],
            )
            .map_err(created("skiff_controller_reconcile_errors_total"))?,
        )?;
        let duration = metrics.register(
            HistogramVec::new(
                HistogramOpts::new("skiff_controller_reconcile_duration_seconds", "Time per reconcile by controller")
                    .buckets(skiff_telemetry::DURATION_BUCKETS.to_vec()),
                &["controller"],
            )
            .map_err(created("skiff_controller_reconcile_duration_seconds"))?,
        )?;
        Ok(Self { total, errors, duration })
    }

    pub fn observe(&self, controller: &str, outcome: Outcome, elapsed: Duration) {
        self.total.with_label_values(&[controller, outcome.as_str()]).inc();
        if outcome == Outcome::Error {
            self.errors.with_label_values(&[controller]).inc();
        }
        self.duration.with_label_values(&[controller]).observe(elapsed.as_secs_f64());
    }
}
