//! What can stop skiff-dns. A query that fails is not an error here: it is
//! answered with SERVFAIL and counted.

/// Why skiff-dns could not start or keep running.
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
    #[error("invalid cluster domain {domain:?}")]
    ClusterDomain {
        domain: String,
        #[source]
        source: hickory_proto::ProtoError,
    },
    #[error("reading upstream resolvers from {path}")]
    ResolvConf {
        path: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid upstream resolver {0:?} (want IP or IP:PORT)")]
    Upstream(String),
    #[error("building the upstream resolver")]
    Resolver(#[source] hickory_resolver::net::NetError),
    #[error("binding DNS {protocol} on {addr}")]
    Bind {
        protocol: &'static str,
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("waiting for the informers to sync")]
    CacheSync(#[source] skiff_client::Error),
    #[error("serving DNS")]
    Serve(#[source] hickory_resolver::net::NetError),
}
