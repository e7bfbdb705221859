//! What can stop the scheduler. Scheduling failures of single pods are not
//! errors here: they are retried, reported on the pod and counted.

/// Why the scheduler could not start or keep running.
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
    #[error("waiting for the informers to sync")]
    CacheSync(#[source] skiff_client::Error),
    #[error("invalid leader election settings")]
    LeaderConfig(#[source] skiff_client::Error),
    #[error("leader election on lease {lease}")]
    Leadership {
        lease: String,
        #[source]
        source: skiff_client::Error,
    },
}
