use tonic::Code;

/// Why a call through the client failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid apiserver address {server:?}")]
    InvalidServer {
        server: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// The apiserver answered with an error status.
    #[error("{}", .0.message())]
    Api(#[from] tonic::Status),
    #[error("decoding {kind} from the apiserver")]
    Decode {
        kind: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("encoding {kind}")]
    Encode {
        kind: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("reading client config {path}: {reason}")]
    Config { path: String, reason: String },
    #[error("no apiserver address: pass --server, set SKIFF_SERVER, or run `skiffctl up` to write {path}")]
    NoServer { path: String },
    #[error("informer for {kind} stopped before its cache synced")]
    InformerStopped { kind: &'static str },
    #[error("invalid lease timings: {reason}")]
    InvalidLeaseTimings { reason: &'static str },
    #[error("lost lease {lease}: {holder} holds it now")]
    LeaseLost { lease: String, holder: String },
    #[error("could not renew lease {lease} within {deadline:?}")]
    LeaseRenewTimedOut { lease: String, deadline: std::time::Duration },
}

impl Error {
    pub fn code(&self) -> Option<Code> {
        match self {
            Error::Api(s) => Some(s.code()),
            _ => None,
        }
    }
    pub fn is_not_found(&self) -> bool {
        self.code() == Some(Code::NotFound)
    }
    pub fn is_already_exists(&self) -> bool {
        self.code() == Some(Code::AlreadyExists)
    }
    /// A compare-and-swap lost to a newer write: re-read and retry.
    pub fn is_conflict(&self) -> bool {
        self.code() == Some(Code::Aborted)
    }
    /// A watch asked for history that is gone: relist.
    pub fn is_expired(&self) -> bool {
        self.code() == Some(Code::OutOfRange)
    }
    /// The object is in a state that forbids the call (a pod already bound,
    /// a namespace terminating): retrying the same call will not help.
    pub fn is_precondition_failed(&self) -> bool {
        self.code() == Some(Code::FailedPrecondition)
    }
    pub fn is_invalid(&self) -> bool {
        self.code() == Some(Code::InvalidArgument)
    }
}
