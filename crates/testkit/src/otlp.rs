//! A small OTLP/gRPC trace receiver: what a test points skiff's
//! `OTEL_EXPORTER_OTLP_ENDPOINT` at to see the spans every process exports.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use tokio::sync::oneshot;

use crate::{Error, Result};

/// One exported span, flattened: ids in lower-case hex, the exporting
/// process's `service.name`, and its attributes as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedSpan {
    pub service: String,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub attributes: BTreeMap<String, String>,
}

/// Listens on a free loopback port until dropped, keeping every span it is sent.
pub struct OtlpReceiver {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    _stop: oneshot::Sender<()>,
}

impl OtlpReceiver {
    /// Serves on a thread and runtime of its own, so that it keeps taking
    /// spans while the test's own runtime is blocked (waiting on a
    /// `skiffctl` run, whose exit waits on its export).
    pub fn start() -> Result<Self> {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0))
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|source| Error::Io { what: "binding", path: "the OTLP receiver's port".into(), source })?;
        let addr = listener.local_addr().map_err(|source| Error::Io {
            what: "reading",
            path: "the OTLP receiver's address".into(),
            source,
        })?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| Error::Io { what: "starting", path: "the OTLP receiver's runtime".into(), source })?;
        let spans = Arc::new(Mutex::new(Vec::new()));
        let (stop, stopped) = oneshot::channel::<()>();
        let service = TraceServiceServer::new(Collector { spans: spans.clone() });
        std::thread::spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(error) => return tracing::warn!(%error, "OTLP receiver could not listen"),
                };
                let served = tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming_shutdown(tonic::transport::server::TcpIncoming::from(listener), async {
                        let _ = stopped.await;
                    })
                    .await;
                if let Err(error) = served {
                    tracing::warn!(%error, "OTLP receiver stopped");
                }
            })
        });
        Ok(Self { addr, spans, _stop: stop })
    }

    /// The value for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The environment that makes a skiff process export here at once: the
    /// endpoint, and a batch delay short enough for a test to wait on.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![("OTEL_EXPORTER_OTLP_ENDPOINT".into(), self.endpoint()), ("OTEL_BSP_SCHEDULE_DELAY".into(), "200".into())]
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

struct Collector {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> std::result::Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let received = flatten(request.into_inner());
        self.spans.lock().unwrap_or_else(|e| e.into_inner()).extend(received);
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

fn flatten(request: ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut out = Vec::new();
    for resource_spans in request.resource_spans {
        let resource = resource_spans.resource.map(|r| attributes(&r.attributes)).unwrap_or_default();
        let service = resource.get("service.name").cloned().unwrap_or_default();
        for scope_spans in resource_spans.scope_spans {
            for span in scope_spans.spans {
                out.push(ReceivedSpan {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    attributes: attributes(&span.attributes),
                });
            }
        }
    }
    out
}

fn attributes(pairs: &[KeyValue]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(AnyValue::StringValue(s)) => s.clone(),
                Some(AnyValue::BoolValue(b)) => b.to_string(),
                Some(AnyValue::IntValue(i)) => i.to_string(),
                Some(AnyValue::DoubleValue(d)) => d.to_string(),
                Some(other) => format!("{other:?}"),
                None => String::new(),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    use opentelemetry_proto::tonic::common::v1::AnyValue as Any;
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    fn text(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(Any { value: Some(AnyValue::StringValue(value.into())) }),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn keeps_what_it_is_sent_with_its_service_and_parent() {
        let receiver = OtlpReceiver::start().unwrap();
        let mut client = TraceServiceClient::connect(receiver.endpoint()).await.unwrap();
        let span = Span {
            trace_id: vec![0xab; 16],
            span_id: vec![1; 8],
            parent_span_id: vec![2; 8],
            name: "rpc".into(),
            attributes: vec![text("kind", "Pod")],
            ..Default::default()
        };
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource { attributes: vec![text("service.name", "skiff-test")], ..Default::default() }),
                scope_spans: vec![ScopeSpans { spans: vec![span], ..Default::default() }],
                ..Default::default()
            }],
        };
        client.export(request).await.unwrap();

        let spans = receiver.spans();
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].service, "skiff-test");
        assert_eq!(spans[0].name, "rpc");
        assert_eq!(spans[0].trace_id, "ab".repeat(16));
        assert_eq!(spans[0].parent_span_id, "02".repeat(8));
        assert_eq!(spans[0].attributes.get("kind").map(String::as_str), Some("Pod"));
    }
}
