//! skiff-ingress' own metrics, next to the shared ones in skiff-telemetry.
//! Labels come from the route a request matched (the rule as written, not
//! the request's own host and path), so clients cannot mint new series.

use std::time::Duration;

use skiff_telemetry::prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts};
use skiff_telemetry::{Metrics, DURATION_BUCKETS};

use crate::Error;

const REQUESTS: &str = "skiff_ingress_requests_total";
const DURATION: &str = "skiff_ingress_request_duration_seconds";
const CONNECT_ERRORS: &str = "skiff_ingress_upstream_connect_errors_total";
const ACTIVE: &str = "skiff_ingress_active_requests";
const ROUTES: &str = "skiff_ingress_hosts";
const REBUILDS: &str = "skiff_ingress_route_table_builds_total";

#[derive(Clone)]
pub struct IngressMetrics {
    /// `{ingress, host, path, service, code}`.
    requests: IntCounterVec,
    /// `{ingress, host, path, service}`: request read to response finished.
    duration: HistogramVec,
    /// `{service}`: connections to an endpoint that failed.
    connect_errors: IntCounterVec,
    /// Requests being served now (downstream).
    pub active: IntGauge,
    /// Hosts (exact and wildcard) in the current route table.
    pub hosts: IntGauge,
    pub rebuilds: skiff_telemetry::prometheus::IntCounter,
}

/// What a request is counted under; `-` where it matched no route.
pub struct RouteLabels<'a> {
    pub ingress: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub service: &'a str,
}

impl IngressMetrics {
    pub fn register(metrics: &Metrics) -> Result<Self, Error> {
        let err = |name| move |source| Error::CreateMetric { name, source };
        let route = ["ingress", "host", "path", "service"];
        let requests = IntCounterVec::new(
            Opts::new(REQUESTS, "HTTP requests served, by the Ingress rule they matched and status code."),
            &["ingress", "host", "path", "service", "code"],
        )
        .map_err(err(REQUESTS))?;
        let duration = HistogramVec::new(
            HistogramOpts::new(DURATION, "Request latency in seconds, by the Ingress rule matched.")
                .buckets(DURATION_BUCKETS.to_vec()),
            &route,
        )
        .map_err(err(DURATION))?;
        let connect_errors =
            IntCounterVec::new(Opts::new(CONNECT_ERRORS, "Failed connections to a Service's endpoints."), &["service"])
                .map_err(err(CONNECT_ERRORS))?;
        let active = IntGauge::new(ACTIVE, "Requests in flight.").map_err(err(ACTIVE))?;
        let hosts = IntGauge::new(ROUTES, "Hosts in the route table.").map_err(err(ROUTES))?;
        let rebuilds = skiff_telemetry::prometheus::IntCounter::new(REBUILDS, "Route tables built and swapped in.")
            .map_err(err(REBUILDS))?;
        Ok(Self {
            requests: metrics.register(requests)?,
            duration: metrics.register(duration)?,
            connect_errors: metrics.register(connect_errors)?,
            active: metrics.register(active)?,
            hosts: metrics.register(hosts)?,
            rebuilds: metrics.register(rebuilds)?,
        })
    }

    pub fn observe(&self, route: &RouteLabels<'_>, code: u16, elapsed: Duration) {
        let owned;
        let code = match code_label(code) {
            Some(label) => label,
            None => {
                owned = code.to_string();
                owned.as_str()
            }
        };
        self.requests.with_label_values(&[route.ingress, route.host, route.path, route.service, code]).inc();
        self.duration
            .with_label_values(&[route.ingress, route.host, route.path, route.service])
            .observe(elapsed.as_secs_f64());
    }

    pub fn connect_error(&self, service: &str) {
        self.connect_errors.with_label_values(&[service]).inc();
    }
}

/// The usual status codes as static labels, saving an allocation per request.
fn code_label(code: u16) -> Option<&'static str> {
    Some(match code {
        0 => "0",
        200 => "200",
        201 => "201",
        204 => "204",
        301 => "301",
        302 => "302",
        304 => "304",
        308 => "308",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        413 => "413",
        499 => "499",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        _ => return None,
    })
}
