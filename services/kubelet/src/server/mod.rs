//! The kubelet's own gRPC server, `skiff.v1.Kubelet` (proto/skiff/v1/kubelet.proto):
//! container logs, exec and resource stats, answered from the container
//! runtime over CRI. The apiserver's `PodProxy` dials it at the node's
//! InternalIP and the port [`advertise`] puts on the Node; clients never
//! talk to it directly.
//!
//! A pod's containers are found by the labels the kubelet sets on each
//! ([`labels::POD_NAMESPACE`], [`labels::POD_NAME`],
//! [`labels::CONTAINER_NAME`]) and its restart count
//! ([`labels::RESTART_COUNT_ANNOTATION`], else the CRI attempt).
//!
//! - [`logs`]: the CRI log file, parsed, tailed and followed;
//! - [`exec`]: CRI ExecSync, or for stdin and terminals CRI Exec and the
//!   runtime's streaming server ([`spdy`]);
//! - [`stats`]: CRI ListContainerStats, also as Prometheus metrics
//!   ([`StatsMetrics`]).

pub mod auth;
pub mod cri;
mod error;
mod exec;
pub mod logs;
mod spdy;
mod stats;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use k8s_openapi::api::core::v1::{DaemonEndpoint, Node, NodeDaemonEndpoints, NodeStatus};
use skiff_api::proto::kubelet_server::{Kubelet, KubeletServer};
use skiff_api::proto::{ExecInput, ExecOutput, LogChunk, LogsRequest, StatsReply, StatsRequest};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

pub use error::ServerError;
pub use stats::StatsMetrics;

use crate::runtime::ContainerRuntime;
use cri::{ContainerRef, Instance};

/// Chunks buffered per log stream before reading waits for the client.
const LOG_BUFFER: usize = 16;
/// Output messages buffered per interactive exec.
const EXEC_BUFFER: usize = 16;

/// How the kubelet API is reached and who may use it.
pub struct ApiSecurity {
    /// TLS settings (from `--tls-cert-file` and `--client-ca-file`); None
    /// serves plain HTTP/2, where no caller has a certificate.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub auth: Arc<auth::KubeletAuth>,
}

/// Serves the Kubelet API on `addr` (port 0: any free one) until `shutdown`
/// resolves, answering from the container runtime those callers `security`
/// lets in.
/// Returns the address bound once it listens; the server runs in the
/// background, and followed log streams end when `shutdown` does.
pub async fn serve(
    addr: SocketAddr,
    runtime: Arc<dyn ContainerRuntime>,
    security: ApiSecurity,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<SocketAddr, ServerError> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| ServerError::Bind { addr, source })?;
    let bound = listener.local_addr().map_err(|source| ServerError::Bind { addr, source })?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let service = KubeletService {
        runtime,
        samples: stats::CpuSamples::default(),
        node_samples: stats::CpuSamples::default(),
        stopping: stop_rx,
        auth: security.auth,
    };
    let drain = async move {
        shutdown.await;
        // Followed logs end first: the server waits for open streams.
        let _ = stop_tx.send(true);
    };
    tracing::info!(addr = %bound, tls = security.tls.is_some(), "serving the kubelet API");
    let incoming = skiff_pki::serve::incoming(listener, security.tls);
    // Stops with `shutdown`: the server task owns nothing else.
    tokio::spawn(async move {
        let result = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(KubeletServer::new(service))
            .serve_with_incoming_shutdown(incoming, drain)
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "the kubelet API server failed");
        }
    });
    Ok(bound)
}

/// Puts the kubelet API's port on `node` (status.daemonEndpoints.kubeletEndpoint.Port),
/// where the apiserver looks for it. The apiserver dials the node's
/// `InternalIP` address, which the kubelet sets in status.addresses.
pub fn advertise(node: &mut Node, port: u16) {
    let status = node.status.get_or_insert_with(NodeStatus::default);
    let endpoints = status.daemon_endpoints.get_or_insert_with(NodeDaemonEndpoints::default);
    endpoints.kubelet_endpoint = Some(DaemonEndpoint { port: i32::from(port) });
}

// === impl KubeletService ===

#[derive(Clone)]
struct KubeletService {
    runtime: Arc<dyn ContainerRuntime>,
    samples: stats::CpuSamples,
    /// The host's own last CPU sample, apart: pods' samples are pruned to
    /// the containers listed.
    node_samples: stats::CpuSamples,
    stopping: watch::Receiver<bool>,
    auth: Arc<auth::KubeletAuth>,
}

/// Container logs and exec are `nodes/proxy`, stats `nodes/stats`.
const LOGS: auth::NodeAccess = auth::NodeAccess { verb: "get", subresource: "proxy" };
const EXEC: auth::NodeAccess = auth::NodeAccess { verb: "create", subresource: "proxy" };
const STATS: auth::NodeAccess = auth::NodeAccess { verb: "get", subresource: "stats" };

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Kubelet for KubeletService {
    type LogsStream = ReceiverStream<Result<LogChunk, Status>>;

    async fn logs(&self, req: Request<LogsRequest>) -> Result<Response<Self::LogsStream>, Status> {
        self.auth.check(&req, LOGS).await?;
        let r = req.into_inner();
        tracing::info!(namespace = %r.namespace, pod = %r.pod, container = %r.container, follow = r.follow, "logs");
        let runtime = self.runtime.clone();
        let target = ContainerRef { namespace: &r.namespace, pod: &r.pod, container: &r.container };
        let instance = if r.previous { Instance::Previous } else { Instance::Current };
        let container = cri::find_container(runtime.as_ref(), &target, instance).await?;
        let status = cri::container_status(runtime.as_ref(), &container.id).await?;
        if status.log_path.is_empty() {
            return Err(ServerError::NoLogFile { container: r.container }.into());
        }
        let tail_lines = match r.tail_lines {
            Some(n) if n < 0 => None,
            Some(n) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
            None => None,
        };
        let options = logs::LogOptions { follow: r.follow, tail_lines, timestamps: r.timestamps };
        let (tx, rx) = mpsc::channel(LOG_BUFFER);
        // Ends when the log does, the client leaves (tx closes) or the
        // server stops (`stopping`).
        tokio::spawn(logs::stream_logs(runtime, container.id, status.log_path, options, tx, self.stopping.clone()));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type ExecStream = BoxStream<ExecOutput>;

    async fn exec(&self, req: Request<Streaming<ExecInput>>) -> Result<Response<Self::ExecStream>, Status> {
        self.auth.check(&req, EXEC).await?;
        let mut inbound = req.into_inner();
        let start = exec::read_start(&mut inbound).await?;
        tracing::info!(
            namespace = %start.namespace, pod = %start.pod, container = %start.container,
            stdin = start.stdin, tty = start.tty, "exec"
        );
        if exec::is_interactive(&start) {
            let session = exec::Session::start(self.runtime.as_ref(), &start).await?;
            let (tx, rx) = mpsc::channel(EXEC_BUFFER);
            // Ends with the command, when the client leaves (tx closes) or
            // when the server stops (`stopping`).
            tokio::spawn(session.run(inbound, tx, self.stopping.clone()));
            return Ok(Response::new(Box::pin(ReceiverStream::new(rx))));
        }
        let outputs = exec::run_sync(self.runtime.as_ref(), &start).await?;
        Ok(Response::new(Box::pin(tokio_stream::iter(outputs.into_iter().map(Ok)))))
    }

    async fn stats(&self, req: Request<StatsRequest>) -> Result<Response<StatsReply>, Status> {
        self.auth.check(&req, STATS).await?;
        if req.get_ref().nodes {
            let node = stats::node_stats(&self.node_samples)?;
            return Ok(Response::new(StatsReply { pods: Vec::new(), nodes: vec![node] }));
        }
        let pods = stats::pod_stats(self.runtime.as_ref(), &self.samples, req.get_ref()).await?;
        Ok(Response::new(StatsReply { pods, nodes: Vec::new() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertise_sets_the_kubelet_port() {
        let mut node = Node::default();
        advertise(&mut node, 10250);
        let port =
            node.status.as_ref().and_then(|s| s.daemon_endpoints.as_ref()).and_then(|d| d.kubelet_endpoint.as_ref());
        assert_eq!(port.map(|p| p.port), Some(10250));
    }
}
