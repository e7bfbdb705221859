//! Carrying W3C trace context through gRPC metadata.
//!
//! Everything here goes through the global propagator, which [`init`](crate::init)
//! only replaces when OTLP export is on. Until then it is OpenTelemetry's no-op
//! propagator, so these calls cost a function call and write nothing.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry::Context;
use tonic::metadata::{KeyRef, MetadataKey, MetadataMap, MetadataValue};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Writes the current `tracing` span's context (`traceparent`, `tracestate`)
/// into outgoing request metadata.
pub fn inject_trace_context(metadata: &mut MetadataMap) {
    let cx = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| inject_with(p, &cx, metadata));
}

/// Reads the caller's trace context from incoming request metadata.
///
/// Returns an empty context when there is none or it does not parse.
pub fn extract_trace_context(metadata: &MetadataMap) -> Context {
    opentelemetry::global::get_text_map_propagator(|p| extract_with(p, metadata))
}

/// Makes `span` a child of the caller's span found in `metadata`.
///
/// For servers: call it on the request's span before entering it. Does
/// nothing when tracing export is off or the metadata carries no context.
pub fn set_remote_parent(span: &tracing::Span, metadata: &MetadataMap) {
    // Fails only when the span is disabled or already started as a child of
    // something else; in both cases there is nothing better to do than keep it.
    let _ = span.set_parent(extract_trace_context(metadata));
}

/// The current `tracing` span's context as HTTP headers (`traceparent`,
/// `tracestate`), for a proxy to pass upstream. Empty when export is off.
pub fn trace_context_headers() -> std::collections::HashMap<String, String> {
    let cx = tracing::Span::current().context();
    let mut headers = std::collections::HashMap::new();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut headers));
    headers
}

/// Makes `span` a child of the trace context in an HTTP request's headers
/// (`traceparent`, `tracestate`), given lower-case.
pub fn set_remote_parent_from_headers(span: &tracing::Span, headers: std::collections::HashMap<String, String>) {
    let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&headers));
    let _ = span.set_parent(cx);
}

/// Whether an incoming request carries a valid trace context: a caller that
/// traces. The apiserver records such a request's context on the objects it
/// creates (see [`current_traceparent`]).
pub fn carries_trace_context(metadata: &MetadataMap) -> bool {
    extract_trace_context(metadata).span().span_context().is_valid()
}

/// The current `tracing` span's context as one W3C `traceparent` value, to
/// be kept on an object so that the work it causes later, in other
/// processes, joins the same trace. None when export is off or there is no
/// span.
pub fn current_traceparent() -> Option<String> {
    trace_context_headers().remove(TRACEPARENT)
}

/// Makes `span` a child of the context in a `traceparent` value kept on an
/// object (see [`current_traceparent`]). A value that does not parse leaves
/// the span as it was: a stale or hand-edited annotation only loses a link.
pub fn set_parent_from_traceparent(span: &tracing::Span, traceparent: &str) {
    let headers = std::collections::HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
    set_remote_parent_from_headers(span, headers);
}

const TRACEPARENT: &str = "traceparent";

fn inject_with(propagator: &dyn TextMapPropagator, cx: &Context, metadata: &mut MetadataMap) {
    propagator.inject_context(cx, &mut MetadataInjector(metadata));
}

fn extract_with(propagator: &dyn TextMapPropagator, metadata: &MetadataMap) -> Context {
    propagator.extract(&MetadataExtractor(metadata))
}

/// A tonic client interceptor that injects the current trace context into
/// every request: `Client::with_interceptor(channel, TraceInterceptor)`.
#[derive(Clone, Copy, Debug, Default)]
pub struct TraceInterceptor;

impl tonic::service::Interceptor for TraceInterceptor {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        inject_trace_context(request.metadata_mut());
        Ok(request)
    }
}

struct MetadataInjector<'a>(&'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        // Propagators only emit lowercase ASCII keys and values; anything
        // else cannot be sent as gRPC metadata, and dropping it only loses
        // the trace link, never the request.
        let Ok(key) = MetadataKey::from_bytes(key.as_bytes()) else {
            return;
        };
        let Ok(value) = MetadataValue::try_from(value) else {
            return;
        };
        self.0.insert(key, value);
    }
}

struct MetadataExtractor<'a>(&'a MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                KeyRef::Ascii(k) => Some(k.as_str()),
                KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use tonic::service::Interceptor;

    fn remote_context() -> Context {
        let sc = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("trace id"),
            SpanId::from_hex("00f067aa0ba902b7").expect("span id"),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        Context::new().with_remote_span_context(sc)
    }

    #[test]
    fn traceparent_round_trips_through_metadata() {
        let propagator = TraceContextPropagator::new();
        let mut metadata = MetadataMap::new();
        inject_with(&propagator, &remote_context(), &mut metadata);

        assert_eq!(
            metadata.get("traceparent").and_then(|v| v.to_str().ok()),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );

        let cx = extract_with(&propagator, &metadata);
        let span = cx.span();
        let sc = span.span_context();
        assert!(sc.is_valid());
        assert!(sc.is_remote());
        assert_eq!(sc.trace_id(), TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("trace id"));
        assert_eq!(sc.span_id(), SpanId::from_hex("00f067aa0ba902b7").expect("span id"));
    }

    #[test]
    fn current_tracing_span_is_what_gets_injected() {
        use opentelemetry::trace::TracerProvider as _;
        use tracing_subscriber::layer::SubscriberExt as _;

        // An SDK provider with no exporter still assigns real ids; a scoped
        // subscriber keeps this test off the process-wide one.
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));

        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("client_call");
            let _entered = span.enter();
            let cx = tracing::Span::current().context();
            let trace_id = cx.span().span_context().trace_id();
            assert_ne!(trace_id, TraceId::INVALID);

            let mut metadata = MetadataMap::new();
            inject_with(&TraceContextPropagator::new(), &cx, &mut metadata);
            let traceparent = metadata.get("traceparent").and_then(|v| v.to_str().ok()).expect("traceparent injected");
            assert!(traceparent.starts_with(&format!("00-{trace_id}-")), "{traceparent}");
        });
    }

    #[test]
    fn garbage_traceparent_extracts_an_empty_context() {
        let propagator = TraceContextPropagator::new();
        let mut metadata = MetadataMap::new();
        metadata.insert("traceparent", MetadataValue::from_static("not-a-trace"));
        let cx = extract_with(&propagator, &metadata);
        assert!(!cx.span().span_context().is_valid());
        assert_eq!(propagator.fields().count(), 2);
    }

    #[test]
    fn unsendable_keys_and_values_are_skipped() {
        let mut metadata = MetadataMap::new();
        let mut injector = MetadataInjector(&mut metadata);
        injector.set("Bad Key", "v".to_owned());
        injector.set("good", "line\nbreak".to_owned());
        injector.set("tracestate", "a=b".to_owned());
        assert_eq!(metadata.len(), 1);
        assert_eq!(metadata.get("tracestate").and_then(|v| v.to_str().ok()), Some("a=b"));
    }

    #[test]
    fn without_otlp_the_global_calls_are_harmless_no_ops() {
        // No test in this crate installs a global propagator, so this
        // exercises the default no-op one.
        let request = TraceInterceptor.call(tonic::Request::new(())).expect("interceptor never rejects");
        assert!(request.metadata().get("traceparent").is_none());

        let cx = extract_trace_context(request.metadata());
        assert!(!cx.span().span_context().is_valid());

        set_remote_parent(&tracing::Span::none(), request.metadata());
    }
}
