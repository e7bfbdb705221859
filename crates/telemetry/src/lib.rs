//! Observability shared by every skiff binary.
//!
//! This crate owns the process-wide pieces that each service would otherwise
//! set up slightly differently:
//!
//! - [`init`]: the global `tracing` subscriber (stderr logs, text or JSON) and,
//!   when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, span export over OTLP/gRPC with
//!   the W3C TraceContext propagator.
//! - [`Metrics`] and [`GrpcMetrics`]: a Prometheus registry each service adds
//!   its own collectors to, plus the request counters every gRPC server shares.
//! - [`serve_http`] and [`Readiness`]: the `/metrics`, `/healthz` and `/readyz`
//!   endpoints; [`ServiceOps`] starts them with a registry and a [`Stop`]
//!   flag, the one way a service sets up and drains its operational side.
//! - [`inject_trace_context`], [`extract_trace_context`], [`TraceInterceptor`]:
//!   carrying trace context across gRPC hops.
//! - [`shutdown_signal`]: the SIGINT/SIGTERM future that starts a drain.
//!
//! It deliberately holds no service-specific metrics: the apiserver, scheduler
//! and others register theirs through [`Metrics::register`].

#![forbid(unsafe_code)]

mod error;
mod http;
mod logging;
mod metrics;
mod ops;
mod propagation;
mod readiness;
mod signal;
mod status;

pub use crate::error::Error;
pub use crate::http::serve_http;
pub use crate::logging::{init, init_cli, TelemetryGuard};
pub use crate::metrics::{grpc_code_label, GrpcMetrics, Metrics, DURATION_BUCKETS};
pub use crate::ops::{ServiceOps, Stop};
pub use crate::propagation::{
    carries_trace_context, current_traceparent, extract_trace_context, inject_trace_context,
    set_parent_from_traceparent, set_remote_parent, set_remote_parent_from_headers, trace_context_headers,
    TraceInterceptor,
};
pub use crate::readiness::Readiness;
pub use crate::signal::shutdown_signal;
pub use crate::status::status_with_causes;

/// Re-exported so services register collectors without naming the crate
/// version themselves; a second `prometheus` version in the tree would make
/// its `Registry` a different type from the one [`serve_http`] takes.
pub use prometheus;
