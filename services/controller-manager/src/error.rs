//! The controller-manager's one error type: each variant names the API call
//! (or the step) that failed and the object it was about.

use skiff_client::Error as ClientError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("creating {kind} in {namespace}")]
    Create {
        kind: &'static str,
        namespace: String,
        #[source]
        source: ClientError,
    },
    #[error("reading {kind} {key}")]
    Get {
        kind: &'static str,
        key: String,
        #[source]
        source: ClientError,
    },
    #[error("listing {kind} in {namespace}")]
    List {
        kind: String,
        namespace: String,
        #[source]
        source: ClientError,
    },
    #[error("updating {kind} {key}")]
    Update {
        kind: &'static str,
        key: String,
        #[source]
        source: ClientError,
    },
    #[error("updating the status of {kind} {key}")]
    UpdateStatus {
        kind: &'static str,
        key: String,
        #[source]
        source: ClientError,
    },
    #[error("patching {kind} {key}")]
    Patch {
        kind: &'static str,
        key: String,
        #[source]
        source: ClientError,
    },
    #[error("deleting {kind} {key}")]
    Delete {
        kind: String,
        key: String,
        #[source]
        source: ClientError,
    },
    #[error("{kind} {key} has an invalid selector")]
    Selector {
        kind: &'static str,
        key: String,
        #[source]
        source: skiff_api::Error,
    },
    #[error("encoding {what}")]
    Encode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("{kind} {key}: {reason}")]
    Invalid { kind: &'static str, key: String, reason: String },
    #[error("the hash of deployment {key}'s template collides with replica set {existing}; retrying with a new hash")]
    HashCollision { key: String, existing: String },
    #[error("invalid flag {flag}: {reason}")]
    Flag { flag: &'static str, reason: String },
    #[error("connecting to the apiserver")]
    Connect(#[source] ClientError),
    #[error("serving metrics and health")]
    Telemetry(#[from] skiff_telemetry::Error),
    #[error("invalid leader election settings")]
    LeaderConfig(#[source] ClientError),
    #[error("leader election on lease {lease}")]
    Leadership {
        lease: String,
        #[source]
        source: ClientError,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
