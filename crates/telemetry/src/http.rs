//! The operational HTTP endpoints: `/metrics`, `/healthz`, `/readyz`.

use std::future::Future;
use std::net::SocketAddr;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use http::header::CONTENT_TYPE;
use http::StatusCode;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::{Error, Readiness};

#[derive(Clone)]
struct AppState {
    registry: Registry,
    readiness: Readiness,
}

/// Binds `addr` and serves the operational endpoints until `shutdown` resolves.
///
/// - `GET /metrics`: everything in `registry`, Prometheus text format 0.0.4.
/// - `GET /healthz`: 200 `ok` for as long as the process can answer at all.
/// - `GET /readyz`: 200 `ok` when `readiness` is ready, else 503 with its reason.
///
/// Binding happens before this returns, so a bad address is an error here
/// rather than a log line later, and port 0 yields the real port. The task
/// finishes once `shutdown` has resolved and open requests have completed.
pub async fn serve_http(
    addr: SocketAddr,
    registry: Registry,
    readiness: Readiness,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(SocketAddr, JoinHandle<()>), Error> {
    let listener = TcpListener::bind(addr).await.map_err(|source| Error::BindHttp { addr, source })?;
    let bound = listener.local_addr().map_err(|source| Error::HttpLocalAddr { source })?;

    let app = router(AppState { registry, readiness });
    let handle = tokio::spawn(async move {
        // Failing here means the accept loop itself broke; the binary's own
        // shutdown path is the right owner of that, so report and end.
        if let Err(error) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
            tracing::error!(%error, addr = %bound, "operational HTTP server failed");
        }
    });
    tracing::debug!(addr = %bound, "serving /metrics, /healthz, /readyz");
    Ok((bound, handle))
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn metrics(State(state): State<AppState>) -> Response {
    let encoder = TextEncoder::new();
    let mut body = Vec::new();
    match encoder.encode(&state.registry.gather(), &mut body) {
        Ok(()) => ([(CONTENT_TYPE, encoder.format_type().to_owned())], body).into_response(),
        Err(error) => {
            tracing::warn!(%error, "encoding metrics");
            (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response()
        }
    }
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.readiness.status() {
        Ok(()) => "ok".into_response(),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{GrpcMetrics, Metrics};
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::sync::oneshot;

    struct Reply {
        status: u16,
        headers: String,
        body: String,
    }

    /// One HTTP/1.1 GET over a raw socket; `Connection: close` lets us read
    /// to EOF instead of parsing lengths or chunks.
    async fn get(addr: SocketAddr, path: &str) -> Reply {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut raw = String::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut raw))
            .await
            .expect("response timed out")
            .expect("read");

        let (head, body) = raw.split_once("\r\n\r\n").expect("header terminator");
        let (status_line, headers) = head.split_once("\r\n").unwrap_or((head, ""));
        let status = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status code");
        Reply { status, headers: headers.to_ascii_lowercase(), body: body.to_owned() }
    }

    async fn start(registry: Registry, readiness: Readiness) -> (SocketAddr, JoinHandle<()>, oneshot::Sender<()>) {
        let (stop, stopped) = oneshot::channel::<()>();
        let (addr, handle) = serve_http("127.0.0.1:0".parse().expect("addr"), registry, readiness, async move {
            let _ = stopped.await;
        })
        .await
        .expect("serve_http");
        (addr, handle, stop)
    }

    #[tokio::test]
    async fn binds_port_zero_and_serves_metrics() {
        let metrics = Metrics::new();
        let grpc = GrpcMetrics::register(&metrics).expect("grpc metrics");
        let (addr, handle, stop) = start(metrics.registry().clone(), Readiness::new()).await;
        assert_ne!(addr.port(), 0, "the real bound port is returned");

        grpc.observe("/skiff.v1.Nodes/List", "unary", "OK", Duration::from_millis(2));

        let reply = get(addr, "/metrics").await;
        assert_eq!(reply.status, 200);
        assert!(reply.headers.contains("content-type: text/plain; version=0.0.4"), "headers: {}", reply.headers);
        assert!(
            reply.body.contains(r#"skiff_grpc_requests_total{code="OK",kind="unary",method="/skiff.v1.Nodes/List"} 1"#),
            "body: {}",
            reply.body
        );
        assert!(reply.body.contains("# TYPE skiff_grpc_request_duration_seconds histogram"));

        stop.send(()).expect("server still running");
        tokio::time::timeout(Duration::from_secs(10), handle)
            .await
            .expect("server did not stop on shutdown")
            .expect("server task panicked");
    }

    #[tokio::test]
    async fn healthz_is_ok_and_readyz_follows_readiness() {
        let readiness = Readiness::new();
        let (addr, _handle, _stop) = start(Registry::new(), readiness.clone()).await;

        let health = get(addr, "/healthz").await;
        assert_eq!((health.status, health.body.as_str()), (200, "ok"));

        let starting = get(addr, "/readyz").await;
        assert_eq!((starting.status, starting.body.as_str()), (503, "starting"));

        readiness.set_ready();
        let ready = get(addr, "/readyz").await;
        assert_eq!((ready.status, ready.body.as_str()), (200, "ok"));

        readiness.set_not_ready("draining");
        let draining = get(addr, "/readyz").await;
        assert_eq!((draining.status, draining.body.as_str()), (503, "draining"));

        // Health does not depend on readiness.
        assert_eq!(get(addr, "/healthz").await.status, 200);
        assert_eq!(get(addr, "/nope").await.status, 404);
    }

    #[tokio::test]
    async fn bind_failure_names_the_address() {
        let taken = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = taken.local_addr().expect("addr");
        let err = serve_http(addr, Registry::new(), Readiness::new(), async {}).await.expect_err("address is in use");
        match err {
            Error::BindHttp { addr: got, .. } => assert_eq!(got, addr),
            other => panic!("expected BindHttp, got {other:?}"),
        }
    }
}
