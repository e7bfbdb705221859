//! The crate's one error type; each variant names the step that failed.

use std::net::SocketAddr;

/// Everything that can go wrong while setting up telemetry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An environment variable was set but not valid UTF-8.
    #[error("reading environment variable {name}")]
    ReadEnv {
        name: &'static str,
        #[source]
        source: std::env::VarError,
    },

    /// `RUST_LOG` did not parse as a filter directive list.
    #[error("parsing RUST_LOG filter {value:?}")]
    ParseLogFilter {
        value: String,
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },

    /// `SKIFF_LOG_FORMAT` named a format we do not write.
    #[error("unknown SKIFF_LOG_FORMAT {value:?} (expected \"text\" or \"json\")")]
    ParseLogFormat { value: String },

    /// OTLP export was requested outside a Tokio runtime; the tonic channel
    /// needs one to run its connection tasks.
    #[error("starting OTLP export: no Tokio runtime is running")]
    NoRuntime {
        #[source]
        source: tokio::runtime::TryCurrentError,
    },

    /// The OTLP span exporter rejected its configuration.
    #[error("building the OTLP span exporter")]
    BuildSpanExporter {
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },

    /// A metric's options were invalid (bad name, label or buckets).
    #[error("creating metric {name}")]
    CreateMetric {
        name: String,
        #[source]
        source: prometheus::Error,
    },

    /// The registry refused a collector, usually because its name is taken.
    #[error("registering metric {name}")]
    RegisterMetric {
        name: String,
        #[source]
        source: prometheus::Error,
    },

    /// The HTTP listener could not bind its address.
    #[error("binding the HTTP listener on {addr}")]
    BindHttp {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },

    /// The bound HTTP listener could not report its address.
    #[error("reading the HTTP listener's local address")]
    HttpLocalAddr {
        #[source]
        source: std::io::Error,
    },
}
