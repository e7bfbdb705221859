//! The scheduler's own metrics, next to the shared ones in skiff-telemetry.

use std::time::Duration;

use skiff_telemetry::prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts};
use skiff_telemetry::Metrics;

use crate::Error;

/// How a scheduling attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Scheduled,
    Unschedulable,
    Error,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Scheduled => "scheduled",
            Outcome::Unschedulable => "unschedulable",
            Outcome::Error => "error",
        }
    }
}

#[derive(Clone)]
pub struct SchedulerMetrics {
    /// `skiff_scheduler_schedule_attempts_total{result}`.
    attempts: IntCounterVec,
    /// `skiff_scheduler_scheduling_attempt_duration_seconds{result}`: from
    /// the start of the cycle to the Bind's answer (or the verdict that no
    /// node fits).
    duration: HistogramVec,
    /// `skiff_scheduler_pending_pods{queue=active|unschedulable}`.
    pending: IntGaugeVec,
    /// `skiff_scheduler_leader`: 1 while this replica holds the lease.
    pub leader: IntGauge,
}

const ATTEMPTS: &str = "skiff_scheduler_schedule_attempts_total";
const DURATION: &str = "skiff_scheduler_scheduling_attempt_duration_seconds";
const PENDING: &str = "skiff_scheduler_pending_pods";
const LEADER: &str = "skiff_scheduler_leader";

impl SchedulerMetrics {
    pub fn register(metrics: &Metrics) -> Result<Self, Error> {
        let err = |name| move |source| Error::CreateMetric { name, source };
        let attempts = IntCounterVec::new(
            Opts::new(ATTEMPTS, "Scheduling attempts by result (scheduled, unschedulable, error)."),
            &["result"],
        )
        .map_err(err(ATTEMPTS))?;
        let duration = HistogramVec::new(
            HistogramOpts::new(DURATION, "Scheduling attempt latency in seconds, including the Bind, by result.")
                .buckets(skiff_telemetry::DURATION_BUCKETS.to_vec()),
            &["result"],
        )
        .map_err(err(DURATION))?;
        let pending = IntGaugeVec::new(
            Opts::new(PENDING, "Pending pods by queue: active (ready to schedule) or unschedulable (parked)."),
            &["queue"],
        )
        .map_err(err(PENDING))?;
        let leader = IntGauge::new(LEADER, "1 while this replica is the leader and schedules.").map_err(err(LEADER))?;
        // Export every result from the start, so rates work before the first of each.
        for outcome in [Outcome::Scheduled, Outcome::Unschedulable, Outcome::Error] {
            attempts.with_label_values(&[outcome.label()]);
        }
        Ok(Self {
            attempts: metrics.register(attempts)?,
            duration: metrics.register(duration)?,
            pending: metrics.register(pending)?,
            leader: metrics.register(leader)?,
        })
    }

    pub fn attempt(&self, outcome: Outcome, elapsed: Duration) {
        self.attempts.with_label_values(&[outcome.label()]).inc();
        self.duration.with_label_values(&[outcome.label()]).observe(elapsed.as_secs_f64());
    }

    pub fn set_pending(&self, active: usize, unschedulable: usize) {
        self.pending.with_label_values(&["active"]).set(active as i64);
        self.pending.with_label_values(&["unschedulable"]).set(unschedulable as i64);
    }
}
