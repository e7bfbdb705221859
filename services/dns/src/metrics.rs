//! skiff-dns' own metrics, next to the shared ones in skiff-telemetry.

use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use skiff_telemetry::prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts};
use skiff_telemetry::Metrics;

use crate::Error;

/// Where an answer came from: the cluster zone or the upstream resolvers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Cluster,
    Forward,
}

impl Source {
    fn label(self) -> &'static str {
        match self {
            Source::Cluster => "cluster",
            Source::Forward => "forward",
        }
    }
}

#[derive(Clone)]
pub struct DnsMetrics {
    /// `skiff_dns_queries_total{type,rcode}`.
    queries: IntCounterVec,
    /// `skiff_dns_request_duration_seconds{source}`: from the decoded
    /// request to the response handed to the socket.
    duration: HistogramVec,
    /// `skiff_dns_zone_names`: names in the cluster zone's last build.
    pub zone_names: IntGauge,
}

const QUERIES: &str = "skiff_dns_queries_total";
const DURATION: &str = "skiff_dns_request_duration_seconds";
const ZONE_NAMES: &str = "skiff_dns_zone_names";

/// DNS answers take micro- to milliseconds locally and up to the upstream
/// timeout when forwarded, below the shared gRPC buckets' range.
const DNS_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

impl DnsMetrics {
    pub fn register(metrics: &Metrics) -> Result<Self, Error> {
        let err = |name| move |source| Error::CreateMetric { name, source };
        let queries = IntCounterVec::new(
            Opts::new(QUERIES, "DNS queries answered, by query type and response code."),
            &["type", "rcode"],
        )
        .map_err(err(QUERIES))?;
        let duration = HistogramVec::new(
            HistogramOpts::new(DURATION, "DNS request latency in seconds, by source (cluster or forward).")
                .buckets(DNS_BUCKETS.to_vec()),
            &["source"],
        )
        .map_err(err(DURATION))?;
        let zone_names = IntGauge::new(ZONE_NAMES, "Names in the cluster zone (records and empty parents).")
            .map_err(err(ZONE_NAMES))?;
        Ok(Self {
            queries: metrics.register(queries)?,
            duration: metrics.register(duration)?,
            zone_names: metrics.register(zone_names)?,
        })
    }

    pub fn observe(&self, rtype: RecordType, rcode: ResponseCode, source: Source, elapsed: Duration) {
        self.queries.with_label_values(&[type_label(rtype), rcode_label(rcode)]).inc();
        self.duration.with_label_values(&[source.label()]).observe(elapsed.as_secs_f64());
    }
}

/// Query types as labels; anything unusual shares one label so that odd
/// clients cannot blow up the series count.
fn type_label(rtype: RecordType) -> &'static str {
    match rtype {
        RecordType::A => "A",
        RecordType::AAAA => "AAAA",
        RecordType::SRV => "SRV",
        RecordType::PTR => "PTR",
        RecordType::CNAME => "CNAME",
        RecordType::TXT => "TXT",
        RecordType::MX => "MX",
        RecordType::NS => "NS",
        RecordType::SOA => "SOA",
        RecordType::HTTPS => "HTTPS",
        RecordType::ANY => "ANY",
        _ => "other",
    }
}

fn rcode_label(rcode: ResponseCode) -> &'static str {
    match rcode {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::NotImp => "NOTIMP",
        ResponseCode::Refused => "REFUSED",
        _ => "other",
    }
}
