//! What can go wrong in the kubelet, one variant per failed step.

/// The kubelet's errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the kubelet API's TLS files")]
    ApiTls(#[from] skiff_pki::serve::TlsConfigError),
    #[error("writing the CNI config {path}")]
    CniConfig {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("CRI {op}: {}", source.message())]
    Cri {
        op: &'static str,
        #[source]
        source: tonic::Status,
    },
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Volume(String),
    #[error("{what} was not read in time (may this node read it? is the apiserver reachable?)")]
    NotRead { what: String },
    #[error("writing the status of pod {pod}")]
    WritePodStatus {
        pod: String,
        #[source]
        source: skiff_client::Error,
    },
    #[error("--{flag}: {reason}")]
    InvalidFlag { flag: &'static str, reason: String },
    #[error("registering node {node}")]
    RegisterNode {
        node: String,
        #[source]
        source: skiff_client::Error,
    },
    #[error("writing the status of node {node}")]
    UpdateNodeStatus {
        node: String,
        #[source]
        source: skiff_client::Error,
    },
    #[error("renewing the lease of node {node}")]
    RenewLease {
        node: String,
        #[source]
        source: skiff_client::Error,
    },
    #[error("marking pod {pod} running")]
    UpdatePodStatus {
        pod: String,
        #[source]
        source: skiff_client::Error,
    },
    #[error("deleting pod {pod}")]
    DeletePod {
        pod: String,
        #[source]
        source: skiff_client::Error,
    },
    #[error("node {node} has no pod IP left in {cidr}")]
    PodIpsExhausted { node: String, cidr: String },
    #[error("starting the metrics endpoint")]
    Telemetry(#[from] skiff_telemetry::Error),
    #[error("registering metric")]
    Metric(#[from] skiff_telemetry::prometheus::Error),
    #[error(transparent)]
    Client(#[from] skiff_client::Error),
    #[error("the kubelet API")]
    KubeletApi(#[from] crate::server::ServerError),
}
