//! What can go wrong serving the Kubelet API, and the one place those errors
//! become gRPC statuses.
//!
//! Kept apart from the crate's `Error` while the pod lifecycle is written
//! beside this module, so the two don't edit one file; it can fold into it.

use tonic::{Code, Status};

/// The kubelet server's errors, one variant per failed step.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("binding the kubelet server to {addr}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// A runtime call failed (boxed: the crate's error can hold this one).
    #[error(transparent)]
    Runtime(Box<crate::Error>),
    #[error("container {container:?} not found in pod {namespace}/{pod}")]
    ContainerNotFound { namespace: String, pod: String, container: String },
    #[error("previous terminated container {container:?} in pod {namespace}/{pod} not found")]
    PreviousNotFound { namespace: String, pod: String, container: String },
    #[error("container {container:?} in pod {namespace}/{pod} is not running")]
    NotRunning { namespace: String, pod: String, container: String },
    #[error("container {container:?} has no log file")]
    NoLogFile { container: String },
    #[error("reading the host's {path}")]
    ReadHost {
        path: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("reading log file {path}")]
    ReadLog {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    BadRequest(String),
    #[error("exec: the runtime's streaming server at {url}: {reason}")]
    Stream { url: String, reason: String },
    #[error("exec: the runtime's stream failed: {0}")]
    StreamFailed(String),
    /// The exec ended without a usable exit status (the message says why).
    #[error("{0}")]
    ExecFailed(String),
    #[error("the kubelet is shutting down")]
    ShuttingDown,
    #[error("defining a metric")]
    NewMetric(#[from] skiff_telemetry::prometheus::Error),
    #[error("registering metrics")]
    Metric(#[from] skiff_telemetry::Error),
}

impl ServerError {
    pub fn code(&self) -> Code {
        match self {
            ServerError::ContainerNotFound { .. } | ServerError::PreviousNotFound { .. } => Code::NotFound,
            ServerError::NotRunning { .. } | ServerError::NoLogFile { .. } => Code::FailedPrecondition,
            ServerError::BadRequest(_) => Code::InvalidArgument,
            ServerError::Stream { .. } | ServerError::StreamFailed(_) | ServerError::ShuttingDown => Code::Unavailable,
            ServerError::ExecFailed(_) => Code::Unknown,
            // The runtime's own verdict (NOT_FOUND for a vanished container,
            // UNKNOWN for a command that could not start) says most.
            ServerError::Runtime(e) => match e.as_ref() {
                crate::Error::Cri { source, .. } if source.code() != Code::Ok => source.code(),
                _ => Code::Internal,
            },
            ServerError::Bind { .. }
            | ServerError::ReadLog { .. }
            | ServerError::ReadHost { .. }
            | ServerError::Metric(_)
            | ServerError::NewMetric(_) => Code::Internal,
        }
    }
}

impl From<crate::Error> for ServerError {
    fn from(e: crate::Error) -> Self {
        ServerError::Runtime(Box::new(e))
    }
}

impl From<ServerError> for Status {
    fn from(e: ServerError) -> Self {
        skiff_telemetry::status_with_causes(e.code(), &e)
    }
}
