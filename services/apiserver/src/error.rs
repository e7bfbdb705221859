use skiff_api::KindInfo;
use tonic::{Code, Status};

/// Why an API call failed. Each variant maps to one gRPC status in
/// `From<Error> for Status`, the only place that mapping happens.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Model(#[from] skiff_api::Error),
    #[error("{kind} {name:?} is invalid: {source}")]
    Invalid {
        kind: &'static str,
        name: String,
        #[source]
        source: skiff_api::Error,
    },
    #[error("{what} is not valid JSON: {source}")]
    BadJson {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("{0}")]
    BadRequest(String),
    #[error("{resource} {name:?} not found")]
    NotFound { resource: String, name: String },
    #[error("{resource} {name:?} already exists")]
    AlreadyExists { resource: String, name: String },
    #[error(
        "operation cannot be fulfilled on {resource} {name:?}: the object has been modified; \
         apply your changes to the latest version and try again"
    )]
    Conflict { resource: String, name: String },
    #[error("namespace {0:?} not found")]
    NamespaceNotFound(String),
    #[error("namespace {0:?} is being terminated: no new objects may be created in it")]
    NamespaceTerminating(String),
    #[error("resourceVersion {requested} is too old (etcd has compacted up to {compacted}): relist")]
    Expired { requested: i64, compacted: i64 },
    /// A version the store has not reached (Kubernetes' "Too large
    /// resource version").
    #[error("Too large resource version: {requested}: no such version yet")]
    TooNew { requested: i64 },
    #[error("{0}")]
    Forbidden(String),
    /// A server-side apply would take fields other appliers own.
    #[error("{0}")]
    ApplyConflict(String),
    /// The caller's roles don't allow the call.
    #[error("{0}")]
    Denied(String),
    #[error("etcd {op} failed")]
    Etcd {
        op: &'static str,
        #[source]
        source: etcd_client::Error,
    },
    #[error("the etcd watch closed")]
    WatchClosed,
    #[error("stored object {key} is not valid JSON")]
    Corrupt {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the apiserver is shutting down")]
    ShuttingDown,
    #[error("pod {pod:?} is not scheduled to a node yet")]
    PodNotScheduled { pod: String },
    #[error("container {container:?} is not valid for pod {pod:?}")]
    ContainerNotInPod { pod: String, container: String },
    #[error("the kubelet of node {node:?} is unreachable: {reason}")]
    KubeletUnreachable { node: String, reason: String },
    #[error("stored object {key} cannot be decrypted or encrypted: {reason}")]
    Encryption { key: String, reason: String },

    // Why the apiserver itself could not start or keep serving; never the
    // answer to a call.
    #[error("serving metrics and health")]
    Telemetry(#[from] skiff_telemetry::Error),
    #[error("registering metric")]
    Metric(#[from] skiff_telemetry::prometheus::Error),
    #[error("listening on {addr}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("serving the object API")]
    Serve(#[source] tonic::transport::Error),
    #[error("the encryption configuration")]
    EncryptionConfig(#[from] crate::encryption::ConfigError),
    #[error("the API's TLS files")]
    TlsConfig(#[from] skiff_pki::serve::TlsConfigError),
    #[error("reading {path} (the kubelet client's TLS files)")]
    KubeletTls {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("--service-account-key-file")]
    ServiceAccountKey(#[from] crate::auth::serviceaccount::KeyError),
    #[error("--token-auth-file")]
    TokenFile(#[from] crate::auth::tokens::TokenFileError),
    #[error("opening the audit log {path}")]
    AuditLog {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The resource name Kubernetes uses in messages: `deployments.apps`, `pods`.
pub fn resource_name(info: &KindInfo) -> String {
    match info.api_version.split_once('/') {
        Some((group, _)) => format!("{}.{}", info.plural, group),
        None => info.plural.to_string(),
    }
}

impl Error {
    pub fn not_found(info: &KindInfo, name: &str) -> Self {
        Error::NotFound { resource: resource_name(info), name: name.into() }
    }
    pub fn conflict(info: &KindInfo, name: &str) -> Self {
        Error::Conflict { resource: resource_name(info), name: name.into() }
    }
    pub fn already_exists(info: &KindInfo, name: &str) -> Self {
        Error::AlreadyExists { resource: resource_name(info), name: name.into() }
    }

    pub fn code(&self) -> Code {
        match self {
            Error::Model(_) | Error::Invalid { .. } | Error::BadJson { .. } | Error::BadRequest(_) => {
                Code::InvalidArgument
            }
            Error::NotFound { .. } | Error::NamespaceNotFound(_) | Error::ContainerNotInPod { .. } => Code::NotFound,
            Error::AlreadyExists { .. } => Code::AlreadyExists,
            Error::Conflict { .. } | Error::ApplyConflict(_) => Code::Aborted,
            Error::NamespaceTerminating(_) | Error::Forbidden(_) | Error::PodNotScheduled { .. } => {
                Code::FailedPrecondition
            }
            Error::Expired { .. } => Code::OutOfRange,
            Error::TooNew { .. } => Code::DeadlineExceeded,
            Error::Denied(_) => Code::PermissionDenied,
            Error::Etcd { .. } | Error::WatchClosed | Error::ShuttingDown | Error::KubeletUnreachable { .. } => {
                Code::Unavailable
            }
            Error::Corrupt { .. }
            | Error::Encryption { .. }
            | Error::EncryptionConfig(_)
            | Error::AuditLog { .. }
            | Error::TlsConfig(_)
            | Error::TokenFile(_)
            | Error::ServiceAccountKey(_)
            | Error::KubeletTls { .. }
            | Error::Telemetry(_)
            | Error::Metric(_)
            | Error::Listen { .. }
            | Error::Serve(_) => Code::Internal,
        }
    }
}

impl Error {
    /// Kubernetes' reason for this failure (a metav1 StatusReason): what
    /// the REST front answers with, beside the gRPC code.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Model(skiff_api::Error::Invalid(_)) | Error::Invalid { .. } => "Invalid",
            Error::Model(skiff_api::Error::TooLarge { .. }) => "RequestEntityTooLarge",
            Error::Model(_) | Error::BadJson { .. } | Error::BadRequest(_) | Error::PodNotScheduled { .. } => {
                "BadRequest"
            }
            Error::NotFound { .. } | Error::NamespaceNotFound(_) | Error::ContainerNotInPod { .. } => "NotFound",
            Error::AlreadyExists { .. } => "AlreadyExists",
            Error::Conflict { .. } | Error::ApplyConflict(_) => "Conflict",
            Error::NamespaceTerminating(_) | Error::Forbidden(_) | Error::Denied(_) => "Forbidden",
            Error::Expired { .. } => "Expired",
            Error::TooNew { .. } => "Timeout",
            Error::Etcd { .. } | Error::WatchClosed | Error::ShuttingDown | Error::KubeletUnreachable { .. } => {
                "ServiceUnavailable"
            }
            _ => "InternalError",
        }
    }

    /// The fields an invalid object is refused for.
    fn causes(&self) -> &[skiff_api::FieldError] {
        match self {
            Error::Model(skiff_api::Error::Invalid(causes))
            | Error::Invalid { source: skiff_api::Error::Invalid(causes), .. } => causes,
            _ => &[],
        }
    }
}

/// A refused server-side apply, as the API's error.
pub fn from_apply(e: skiff_api::apply::ApplyError) -> Error {
    match e {
        skiff_api::apply::ApplyError::Invalid(e) => Error::Model(e),
        conflicts => Error::ApplyConflict(conflicts.to_string()),
    }
}

/// What a Status carries in its details, for the REST front: the reason
/// and, for an invalid object, each field and why (metav1 StatusCause).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct StatusDetails {
    pub reason: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<(String, String)>,
}

impl StatusDetails {
    pub fn of(status: &Status) -> Option<Self> {
        serde_json::from_slice(status.details()).ok()
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let status = skiff_telemetry::status_with_causes(e.code(), &e);
        let details = StatusDetails {
            reason: e.reason().to_string(),
            causes: e.causes().iter().map(|c| (c.path.clone(), c.message.clone())).collect(),
        };
        match serde_json::to_vec(&details) {
            Ok(bytes) => Status::with_details(status.code(), status.message(), bytes.into()),
            Err(_) => status,
        }
    }
}
