//! What can stop skiff-ingress. A request that fails is not an error here:
//! it is answered (404, 502, 503…), counted and logged.

use std::net::SocketAddr;

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
    #[error("binding {what} on {addr}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("waiting for the informers to sync")]
    CacheSync(#[source] skiff_client::Error),
    #[error("configuring TLS")]
    Tls(#[source] rustls::Error),
    #[error("running the ingress controller")]
    Controller(#[source] skiff_client::Error),
}
