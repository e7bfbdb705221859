//! The real kubelet: wires the node agent ([`crate::node`]) and the pod
//! loop ([`crate::pods`]) to containerd's CRI socket and the apiserver,
//! and serves /metrics, /healthz and /readyz (ready once the Node is
//! registered).

use std::future::Future;
use std::sync::Arc;

use skiff_telemetry::ServiceOps;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::node::{self, NodeAgent};
use crate::pods::sync::{PodSyncer, Settings};
use crate::pods::{self, PodInformers, PodLoop};
use crate::runtime::{ContainerRuntime, CriRuntime};
use crate::server;
use crate::serviceaccount::TokenManager;
use crate::volumes::Volumes;
use crate::{Config, Error};

/// Runs the kubelet until `shutdown` resolves. Containers keep running
/// when it stops: a restarted kubelet adopts them.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), Error> {
    let runtime: Arc<dyn ContainerRuntime> = Arc::new(CriRuntime::connect(&config.container_runtime_endpoint)?);
    let mut node = NodeAgent::new(&config)?;
    if config.crash_backoff_initial > config.crash_backoff_max {
        return Err(Error::InvalidFlag {
            flag: "crash-backoff-initial",
            reason: "must not be longer than --crash-backoff-max".into(),
        });
    }
    crate::bootstrap::ensure_client_config(&config, &node.name).await?;
    let client = config.api.client()?;
    let ops = ServiceOps::start(config.metrics_listen).await.map_err(Error::from)?;
    ops.readiness.set_not_ready("registering the node");
    tracing::info!(node = %node.name, ip = %node.ip, endpoint = %config.container_runtime_endpoint, "starting the kubelet");

    // The kubelet API (logs, exec, stats) for the apiserver to proxy to, on
    // the address the Node reports.
    let api_addr = std::net::SocketAddr::from((node.ip, config.kubelet_port));
    let names = [node.ip.to_string(), node.name.clone()];
    let tls = crate::bootstrap::serving_tls(&config, &client, &node.name, &names).await?;
    let security = api_security(&config, &tls, &node.name, &client)?;
    node.kubelet_port = server::serve(api_addr, runtime.clone(), security, ops.stop.raised()).await?.port();
    let node_name = node.name.clone();
    let node = Arc::new(node);

    let informers = PodInformers::new(&client, &node.name);
    let (used_changed, used_changes) = tokio::sync::mpsc::unbounded_channel();
    let used = Arc::new(pods::used::UsedObjects::new(client.clone(), informers.volumes.store(), used_changed));
    let settings = Settings {
        node_name: node.name.clone(),
        node_ip: node.ip.to_string(),
        pod_log_dir: config.pod_log_dir.clone(),
        backoff_initial: config.crash_backoff_initial,
        backoff_max: config.crash_backoff_max,
        dns: pods::dns::NodeDns {
            cluster_dns: config.cluster_dns.clone(),
            cluster_domain: config.cluster_domain.clone(),
            host: pods::dns::HostResolv::read(&config.resolv_conf),
        },
    };
    let mut syncer = PodSyncer::new(runtime.clone(), used.clone(), Volumes::new(&config.root_dir), settings);
    if let Some(ca) = cluster_ca(&config)? {
        syncer = syncer.with_tokens(Arc::new(TokenManager::new(client.clone(), ca)));
    }
    let syncer = Arc::new(syncer);

    let (registered_tx, mut registered_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let timing = node::Timing { lease: config.heartbeat_interval, status: config.status_interval };
    if let Some(conf_dir) = &config.cni_conf_dir {
        let settings = node::cni::CniSettings {
            conf_dir: conf_dir.clone(),
            bridge: config.cni_bridge.clone(),
            mtu: config.cni_mtu,
            ipam_dir: config.cni_ipam_dir.clone(),
        };
        tasks.spawn(node::cni::run(client.clone(), node.name.clone(), settings, ops.stop.clone()));
    }
    tasks.spawn(node::run(client.clone(), runtime.clone(), node, timing, registered_tx, ops.stop.clone()));
    tasks.spawn({
        let (stopped, readiness) = (ops.stop.raised(), ops.readiness.clone());
        async move {
            tokio::select! {
                _ = stopped => {}
                r = registered_rx.wait_for(|r| *r) => if r.is_ok() { readiness.set_ready() },
            }
        }
    });
    let stats = server::StatsMetrics::register(&ops.metrics)?;
    tasks.spawn(stats.run(runtime.clone(), config.status_interval, ops.stop.raised()));
    tasks.spawn({
        let (config, client, node, stop) = (config.clone(), client.clone(), node_name.clone(), ops.stop.clone());
        async move { crate::bootstrap::rotate(&config, client, node, names.to_vec(), stop).await }
    });
    let pod_loop = PodLoop {
        client,
        syncer,
        informers,
        used,
        used_changes,
        node_name: node_name.clone(),
        relist_interval: config.relist_interval,
    };
    tasks.spawn(pods::run(pod_loop, ops.stop.clone()));

    shutdown.await;
    tracing::info!("shutting down");
    ops.shutdown().await;
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// The kubelet API's TLS and who may call it, from the flags.
fn api_security(
    config: &Config,
    tls: &skiff_pki::serve::TlsFlags,
    node: &str,
    client: &skiff_client::Client,
) -> Result<server::ApiSecurity, Error> {
    let tls = tls.server_config()?;
    let auth = server::auth::KubeletAuth::new(
        node.to_string(),
        config.anonymous_auth,
        config.authorization_mode,
        client.clone(),
    );
    Ok(server::ApiSecurity { tls, auth: Arc::new(auth) })
}

/// The cluster CA (PEM) from the kubelet's client config, for pods to
/// verify the apiserver with; None when the cluster has no TLS, and then
/// pods get no ServiceAccount token either.
fn cluster_ca(config: &Config) -> Result<Option<Vec<u8>>, Error> {
    let client_config = skiff_client::ClientConfig::resolve(&config.api)?;
    let Some(path) = client_config.certificate_authority else { return Ok(None) };
    std::fs::read(&path).map(Some).map_err(|e| Error::InvalidFlag {
        flag: "kubeconfig",
        reason: format!("reading the CA {}: {e}", path.display()),
    })
}
