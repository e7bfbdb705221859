//! The process-wide `tracing` subscriber and optional OTLP span export.

use std::env::VarError;
use std::io::IsTerminal as _;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing::level_filters::LevelFilter;
use tracing::Subscriber;
use tracing_log::AsLog as _;
use tracing_subscriber::filter::{filter_fn, EnvFilter};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::Layer as _;

use crate::Error;

const LOG_FILTER_VAR: &str = "RUST_LOG";
const LOG_FORMAT_VAR: &str = "SKIFF_LOG_FORMAT";
const OTLP_ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
const OTLP_TRACES_ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
const DEFAULT_FILTER: &str = "info";
/// What a CLI prints of its own logs unless `RUST_LOG` says otherwise.
const CLI_LOG_FILTER: &str = "warn";

/// How long dropping the guard waits for buffered spans to leave. Bounded so
/// an unreachable collector cannot hold up a pod's termination.
const EXPORT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Installs the global `tracing` subscriber for a skiff binary.
///
/// - Logs go to stderr, filtered by `RUST_LOG` (default `info`), as text, or
///   as JSON lines when `SKIFF_LOG_FORMAT=json`. `log` records from
///   dependencies are forwarded into the same output.
/// - When `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`)
///   is set, spans are also exported over OTLP/gRPC with
///   `service.name = service_name`, and the W3C TraceContext propagator is
///   installed globally for [`inject_trace_context`](crate::inject_trace_context).
///   The other standard `OTEL_EXPORTER_OTLP_*` variables are honoured too.
///   This mode must be called inside a Tokio runtime.
///
/// Keep the returned guard alive for the life of the process; dropping it
/// flushes and stops span export.
///
/// Calling it again, or after something else installed a global subscriber
/// (a test harness, say), is not an error: it returns a guard that does
/// nothing and whose [`installed`](TelemetryGuard::installed) is `false`.
/// Bad `RUST_LOG` or `SKIFF_LOG_FORMAT` values are errors in every case, so
/// a typo is never silently ignored.
pub fn init(service_name: &'static str) -> Result<TelemetryGuard, Error> {
    let log_filter = env_var(LOG_FILTER_VAR)?;
    let format = LogFormat::parse(env_var(LOG_FORMAT_VAR)?.as_deref())?;
    let otlp = otlp_configured()?;
    let filters = Filters {
        logs: parse_filter(log_filter.as_deref(), DEFAULT_FILTER)?,
        spans: parse_filter(log_filter.as_deref(), DEFAULT_FILTER)?,
    };
    install(service_name, filters, format, otlp)
}

/// [`init`] for a command-line tool, which must stay quiet and cheap: with no
/// OTLP endpoint configured it installs nothing at all. With one, it exports
/// the tool's spans (at `info`, whatever `RUST_LOG` says) and logs only
/// warnings and errors to stderr unless `RUST_LOG` asks for more.
pub fn init_cli(name: &'static str) -> Result<TelemetryGuard, Error> {
    if !otlp_configured()? {
        return Ok(TelemetryGuard::noop());
    }
    let filters = Filters {
        logs: parse_filter(env_var(LOG_FILTER_VAR)?.as_deref(), CLI_LOG_FILTER)?,
        spans: parse_filter(None, DEFAULT_FILTER)?,
    };
    install(name, filters, LogFormat::parse(env_var(LOG_FORMAT_VAR)?.as_deref())?, true)
}

/// What reaches stderr and what is exported, decided apart: a CLI exports
/// spans it would never print.
struct Filters {
    logs: EnvFilter,
    spans: EnvFilter,
}

fn otlp_configured() -> Result<bool, Error> {
    Ok(env_var(OTLP_ENDPOINT_VAR)?.is_some() || env_var(OTLP_TRACES_ENDPOINT_VAR)?.is_some())
}

fn install(
    service_name: &'static str,
    filters: Filters,
    format: LogFormat,
    otlp: bool,
) -> Result<TelemetryGuard, Error> {
    // Checked first so a second call does not build an exporter it would
    // immediately throw away; the race with a concurrent caller is handled
    // by set_global_default below.
    if tracing::dispatcher::has_been_set() {
        return Ok(TelemetryGuard::noop());
    }

    let provider = if otlp { Some(tracer_provider(service_name, None)?) } else { None };
    let tracer = provider.as_ref().map(|p| p.tracer(service_name));

    if tracing::subscriber::set_global_default(subscriber(filters, format, tracer)).is_err() {
        if let Some(provider) = provider {
            shutdown_provider(&provider);
        }
        return Ok(TelemetryGuard::noop());
    }

    // Someone else may own the `log` facade already; our tracing output still
    // works without the bridge, so that is not worth failing startup for.
    if let Err(error) = tracing_log::LogTracer::builder().with_max_level(LevelFilter::current().as_log()).init() {
        tracing::debug!(%error, "`log` records will not be forwarded to tracing");
    }

    if let Some(provider) = &provider {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        opentelemetry::global::set_tracer_provider(provider.clone());
    }
    tracing::debug!(service = service_name, ?format, otlp = provider.is_some(), "telemetry initialised");

    Ok(TelemetryGuard { installed: true, provider })
}

// === impl TelemetryGuard ===

/// Keeps span export running; dropping it flushes and shuts the exporter down.
#[derive(Debug)]
#[must_use = "dropping the guard stops trace export"]
pub struct TelemetryGuard {
    installed: bool,
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    fn noop() -> Self {
        Self { installed: false, provider: None }
    }

    /// Whether the [`init`] call that returned this guard installed the
    /// global subscriber (`false` when one was already in place).
    pub fn installed(&self) -> bool {
        self.installed
    }

    /// Whether spans are being exported over OTLP.
    pub fn exports_traces(&self) -> bool {
        self.provider.is_some()
    }

    /// Flushes and stops span export without blocking the async runtime.
    ///
    /// Prefer this at the end of `main` over dropping the guard: the flush
    /// blocks its thread while tonic's connection tasks need the runtime to
    /// make progress, which a current-thread runtime could not do from a
    /// plain drop (it would wait out the timeout instead).
    pub async fn shutdown(mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = tokio::task::spawn_blocking(move || shutdown_provider(&provider)).await;
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            shutdown_provider(&provider);
        }
    }
}

fn shutdown_provider(provider: &SdkTracerProvider) {
    if let Err(error) = provider.shutdown_with_timeout(EXPORT_SHUTDOWN_TIMEOUT) {
        tracing::warn!(%error, "flushing spans at shutdown");
    }
}

// === configuration ===

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    fn parse(value: Option<&str>) -> Result<Self, Error> {
        match value.map(str::trim) {
            None | Some("") => Ok(Self::Text),
            Some(v) if v.eq_ignore_ascii_case("text") => Ok(Self::Text),
            Some(v) if v.eq_ignore_ascii_case("json") => Ok(Self::Json),
            Some(v) => Err(Error::ParseLogFormat { value: v.to_owned() }),
        }
    }
}

fn parse_filter(value: Option<&str>, default: &str) -> Result<EnvFilter, Error> {
    let value = value.unwrap_or(default);
    EnvFilter::builder().parse(value).map_err(|source| Error::ParseLogFilter { value: value.to_owned(), source })
}

/// A set, non-blank variable's value; unset and blank both mean "not given".
fn env_var(name: &'static str) -> Result<Option<String>, Error> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => Ok(Some(v)),
        Ok(_) | Err(VarError::NotPresent) => Ok(None),
        Err(source) => Err(Error::ReadEnv { name, source }),
    }
}

// === assembly ===

/// Builds the OTLP/gRPC span pipeline. `endpoint` overrides the environment.
fn tracer_provider(service_name: &'static str, endpoint: Option<&str>) -> Result<SdkTracerProvider, Error> {
    // The tonic channel spawns its connection tasks onto the current runtime;
    // without one the exporter builder would panic.
    tokio::runtime::Handle::try_current().map_err(|source| Error::NoRuntime { source })?;

    let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic();
    if let Some(endpoint) = endpoint {
        exporter = exporter.with_endpoint(endpoint);
    }
    let exporter = exporter.build().map_err(|source| Error::BuildSpanExporter { source })?;

    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(service_name).build())
        .build())
}

fn subscriber(filters: Filters, format: LogFormat, tracer: Option<SdkTracer>) -> impl Subscriber + Send + Sync {
    let fmt = match format {
        // Colour codes only help a person at a terminal; in files and
        // container logs they are noise.
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr).boxed(),
    };
    // The exporter's own transport must not produce spans to export, or a
    // debug-level RUST_LOG would feed trace export back into itself.
    let otel = tracer.map(|tracer| {
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(filters.spans)
            .with_filter(filter_fn(|meta| !is_export_transport(meta.target())))
    });
    tracing_subscriber::registry().with(fmt.with_filter(filters.logs)).with(otel)
}

fn is_export_transport(target: &str) -> bool {
    // The OpenTelemetry crates log under both `opentelemetry_sdk::..` and
    // hyphenated names like `opentelemetry-otlp`.
    target.starts_with("opentelemetry")
        || ["tonic", "h2", "hyper", "hyper_util", "tower"]
            .iter()
            .any(|krate| target.strip_prefix(krate).is_some_and(|rest| rest.is_empty() || rest.starts_with("::")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{Span as _, Tracer as _};

    #[test]
    fn log_format_accepts_text_and_json_only() {
        assert_eq!(LogFormat::parse(None).ok(), Some(LogFormat::Text));
        assert_eq!(LogFormat::parse(Some("  ")).ok(), Some(LogFormat::Text));
        assert_eq!(LogFormat::parse(Some("text")).ok(), Some(LogFormat::Text));
        assert_eq!(LogFormat::parse(Some("JSON")).ok(), Some(LogFormat::Json));
        match LogFormat::parse(Some("yaml")) {
            Err(Error::ParseLogFormat { value }) => assert_eq!(value, "yaml"),
            other => panic!("expected ParseLogFormat, got {other:?}"),
        }
    }

    #[test]
    fn filter_defaults_to_info_and_rejects_garbage() {
        assert_eq!(parse_filter(None, DEFAULT_FILTER).expect("default").to_string(), "info");
        assert_eq!(
            parse_filter(Some("warn,skiff_apiserver=debug"), DEFAULT_FILTER)
                .expect("valid directives")
                .max_level_hint(),
            Some(LevelFilter::DEBUG)
        );
        match parse_filter(Some("skiff=notalevel"), DEFAULT_FILTER) {
            Err(Error::ParseLogFilter { value, .. }) => assert_eq!(value, "skiff=notalevel"),
            other => panic!("expected ParseLogFilter, got {other:?}"),
        }
    }

    #[test]
    fn only_transport_crates_are_kept_from_export() {
        assert!(is_export_transport("h2"));
        assert!(is_export_transport("h2::codec"));
        assert!(is_export_transport("opentelemetry_sdk::trace"));
        assert!(is_export_transport("opentelemetry-otlp"));
        assert!(!is_export_transport("h2o"));
        assert!(!is_export_transport("skiff_apiserver::watch"));
    }

    #[test]
    fn otlp_outside_a_runtime_is_an_error_not_a_panic() {
        match tracer_provider("skiff-test", Some("http://127.0.0.1:4317")) {
            Err(Error::NoRuntime { .. }) => {}
            other => panic!("expected NoRuntime, got {other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_is_bounded_when_the_collector_is_unreachable() {
        // Port 1 on loopback refuses connections: export fails fast, and the
        // guard must still come back within its timeout.
        let provider = tracer_provider("skiff-test", Some("http://127.0.0.1:1")).expect("build provider");
        let mut span = provider.tracer("skiff-test").start("unexported");
        span.end();

        let guard = TelemetryGuard { installed: false, provider: Some(provider) };
        assert!(guard.exports_traces());
        let started = std::time::Instant::now();
        tokio::time::timeout(EXPORT_SHUTDOWN_TIMEOUT * 3, guard.shutdown()).await.expect("shutdown exceeded its bound");
        assert!(started.elapsed() < EXPORT_SHUTDOWN_TIMEOUT * 3);
    }

    // In a runtime so the test also passes when the developer's shell has
    // OTEL_EXPORTER_OTLP_ENDPOINT set, which makes init build an exporter.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn second_init_is_a_harmless_no_op() {
        // This is the only test that installs the global subscriber, so the
        // first call installs it and the second must find it in place.
        let first = init("skiff-test").expect("first init");
        assert!(first.installed());
        let second = init("skiff-test").expect("second init");
        assert!(!second.installed());
        assert!(!second.exports_traces());
        assert!(tracing::dispatcher::has_been_set());
        first.shutdown().await;
    }
}
