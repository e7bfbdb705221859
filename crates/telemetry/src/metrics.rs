//! The Prometheus registry each service fills, and the gRPC metrics they share.

use std::time::Duration;

use prometheus::core::Collector;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

use crate::Error;

/// Latency buckets in seconds, 100µs to 10s.
///
/// Roughly 1-2.5-5 per decade: fine enough to tell a cache hit from an etcd
/// round trip, and few enough that the series count per label set stays low.
pub const DURATION_BUCKETS: &[f64] =
    &[0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

// === impl Metrics ===

/// A service's metric registry.
///
/// Cloning is cheap and every clone shares the same collectors, so the HTTP
/// server and the service's components can each hold one.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a collector, e.g. an apiserver's etcd latency histogram or
    /// watcher gauge. Fails if a metric of the same name is already there.
    pub fn register<C>(&self, collector: C) -> Result<C, Error>
    where
        C: Collector + Clone + 'static,
    {
        self.registry
            .register(Box::new(collector.clone()))
            .map_err(|source| Error::RegisterMetric { name: collector_name(&collector), source })?;
        Ok(collector)
    }

    /// The underlying registry, to hand to [`serve_http`](crate::serve_http).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

impl From<Registry> for Metrics {
    fn from(registry: Registry) -> Self {
        Self { registry }
    }
}

fn collector_name(collector: &dyn Collector) -> String {
    collector.desc().iter().map(|d| d.fq_name.as_str()).collect::<Vec<_>>().join(",")
}

// === impl GrpcMetrics ===

/// Request counts and latencies for a gRPC server or client.
///
/// `method` is the full gRPC path (`/skiff.v1.Pods/Get`), `kind` says how it
/// was called (e.g. `unary`, `server_stream`), `code` is the status code's
/// canonical name (see [`grpc_code_label`]).
#[derive(Clone, Debug)]
pub struct GrpcMetrics {
    /// `skiff_grpc_requests_total{method, kind, code}`.
    pub requests_total: IntCounterVec,
    /// `skiff_grpc_request_duration_seconds{method, kind}`.
    pub request_duration_seconds: HistogramVec,
}

impl GrpcMetrics {
    /// Creates both metrics and registers them in `metrics`.
    pub fn register(metrics: &Metrics) -> Result<Self, Error> {
        const REQUESTS: &str = "skiff_grpc_requests_total";
        const DURATION: &str = "skiff_grpc_request_duration_seconds";

        let requests_total = IntCounterVec::new(
            Opts::new(REQUESTS, "gRPC requests completed, by method, kind and status code."),
            &["method", "kind", "code"],
        )
        .map_err(|source| Error::CreateMetric { name: REQUESTS.to_owned(), source })?;
        let request_duration_seconds = HistogramVec::new(
            HistogramOpts::new(DURATION, "gRPC request latency in seconds, by method and kind.")
                .buckets(DURATION_BUCKETS.to_vec()),
            &["method", "kind"],
        )
        .map_err(|source| Error::CreateMetric { name: DURATION.to_owned(), source })?;

        Ok(Self {
            requests_total: metrics.register(requests_total)?,
            request_duration_seconds: metrics.register(request_duration_seconds)?,
        })
    }

    /// Records one finished request.
    pub fn observe(&self, method: &str, kind: &str, code: &str, elapsed: Duration) {
        // The label counts match the vectors built above, so these lookups
        // cannot fail on arity; the label values themselves are free-form.
        self.requests_total.with_label_values(&[method, kind, code]).inc();
        self.request_duration_seconds.with_label_values(&[method, kind]).observe(elapsed.as_secs_f64());
    }
}

/// The canonical upper-snake name of a gRPC status code (`OK`, `NOT_FOUND`),
/// so every service labels codes the same way.
pub fn grpc_code_label(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{IntGauge, TextEncoder};

    fn render(metrics: &Metrics) -> String {
        TextEncoder::new().encode_to_string(&metrics.registry().gather()).expect("text encoding")
    }

    #[test]
    fn observe_counts_and_times() {
        let metrics = Metrics::new();
        let grpc = GrpcMetrics::register(&metrics).expect("register grpc metrics");

        grpc.observe("/skiff.v1.Pods/Get", "unary", "OK", Duration::from_millis(3));
        grpc.observe("/skiff.v1.Pods/Get", "unary", "OK", Duration::from_millis(7));
        grpc.observe("/skiff.v1.Pods/Get", "unary", "NOT_FOUND", Duration::from_micros(50));

        let ok = grpc.requests_total.with_label_values(&["/skiff.v1.Pods/Get", "unary", "OK"]);
        assert_eq!(ok.get(), 2);
        let hist = grpc.request_duration_seconds.with_label_values(&["/skiff.v1.Pods/Get", "unary"]);
        assert_eq!(hist.get_sample_count(), 3);
        assert!((hist.get_sample_sum() - 0.01005).abs() < 1e-9);

        let text = render(&metrics);
        assert!(
            text.contains(r#"skiff_grpc_requests_total{code="NOT_FOUND",kind="unary",method="/skiff.v1.Pods/Get"} 1"#)
        );
        // 3ms and 7ms land in the 10ms bucket, 50µs already in the first one.
        assert!(text.contains(
            r#"skiff_grpc_request_duration_seconds_bucket{kind="unary",method="/skiff.v1.Pods/Get",le="0.0001"} 1"#
        ));
        assert!(text.contains(
            r#"skiff_grpc_request_duration_seconds_bucket{kind="unary",method="/skiff.v1.Pods/Get",le="0.01"} 3"#
        ));
    }

    #[test]
    fn buckets_span_100us_to_10s_in_order() {
        assert_eq!(DURATION_BUCKETS.first(), Some(&0.000_1));
        assert_eq!(DURATION_BUCKETS.last(), Some(&10.0));
        assert!(DURATION_BUCKETS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn services_add_their_own_and_duplicates_are_errors() {
        let metrics = Metrics::new();
        let watchers = metrics
            .register(IntGauge::new("skiff_apiserver_watchers", "Open watches.").expect("gauge"))
            .expect("first registration");
        watchers.set(4);
        assert!(render(&metrics).contains("skiff_apiserver_watchers 4"));

        let again = metrics.register(IntGauge::new("skiff_apiserver_watchers", "Open watches.").expect("gauge"));
        match again {
            Err(Error::RegisterMetric { name, .. }) => {
                assert_eq!(name, "skiff_apiserver_watchers")
            }
            other => panic!("expected RegisterMetric, got {other:?}"),
        }

        // A second GrpcMetrics in the same registry collides the same way.
        GrpcMetrics::register(&metrics).expect("first grpc metrics");
        assert!(matches!(GrpcMetrics::register(&metrics), Err(Error::RegisterMetric { .. })));
    }

    #[test]
    fn code_labels_are_canonical() {
        assert_eq!(grpc_code_label(tonic::Code::Ok), "OK");
        assert_eq!(grpc_code_label(tonic::Code::NotFound), "NOT_FOUND");
        assert_eq!(grpc_code_label(tonic::Status::unavailable("down").code()), "UNAVAILABLE");
    }
}
