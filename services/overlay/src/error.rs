//! What can stop skiff-overlay. A bad object (a Node with a malformed
//! WireGuard key, a Service nft can't express) is not an error here: it is
//! skipped, logged and reported with an Event.

/// Why skiff-overlay could not start or keep running.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connecting to the apiserver")]
    Connect(#[source] skiff_client::Error),
    #[error("creating metric {name}")]
    CreateMetric {
        name: &'static str,
        #[source]
        source: skiff_telemetry::prometheus::Error,
    },
    #[error("serving metrics and health")]
    Telemetry(#[from] skiff_telemetry::Error),
    #[error("invalid --{flag} {value:?}: {reason}")]
    Flag { flag: &'static str, value: String, reason: String },
    #[error("waiting for the informers to sync")]
    CacheSync(#[source] skiff_client::Error),
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("applying nftables rules: {stderr}")]
    Nft { stderr: String },
    #[error("{what}")]
    Netlink { what: String },
    #[error("WireGuard: {what}")]
    WireGuard { what: String },
    #[error("API call: {what}")]
    Api {
        what: String,
        #[source]
        source: skiff_client::Error,
    },
}
