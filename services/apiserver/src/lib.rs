//! skiff-apiserver: the only component that talks to etcd. It validates,
//! defaults and stores objects, and serves lists and watches from a watch
//! cache so that many watchers cost etcd one watch per kind.
#![forbid(unsafe_code)]

mod admission;
mod allocator;
mod audit;
mod auth;
mod cache;
pub mod encryption;
mod error;
mod proxy;
mod registry;
mod rest;
mod service;
mod storage;
mod watch;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use skiff_api::proto::objects_server::ObjectsServer;
use skiff_api::proto::pod_proxy_server::PodProxyServer;
use skiff_api::KINDS;
use skiff_telemetry::prometheus::{HistogramOpts, HistogramVec, IntGauge};
use skiff_telemetry::{GrpcMetrics, ServiceOps};
use tokio::sync::watch as signal;
use tonic::service::interceptor::InterceptedService;

pub use error::Error;

/// Flags of `skiff-apiserver`.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// etcd client URLs, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
    pub etcd_endpoints: Vec<String>,
    /// The CA (PEM) etcd's serving certificate must come from; with it,
    /// etcd is called over TLS (`https://` endpoints).
    #[arg(long, requires_all = ["etcd_certfile", "etcd_keyfile"])]
    pub etcd_cafile: Option<std::path::PathBuf>,
    /// The client certificate (PEM) presented to etcd.
    #[arg(long, requires = "etcd_cafile")]
    pub etcd_certfile: Option<std::path::PathBuf>,
    /// Its private key (PEM).
    #[arg(long, requires = "etcd_cafile")]
    pub etcd_keyfile: Option<std::path::PathBuf>,
    /// Address of the gRPC API.
    #[arg(long, default_value = "127.0.0.1:6443")]
    pub listen: SocketAddr,
    /// Address of the Kubernetes REST API (what kubectl and client
    /// libraries speak), served with the gRPC API's TLS and credentials.
    /// `off` serves none.
    #[arg(long, default_value = "127.0.0.1:6445")]
    pub rest_listen: RestListen,
    /// REST reads served at once; past it they are answered 429 (0: no limit).
    #[arg(long, default_value_t = 400)]
    pub max_requests_inflight: usize,
    /// REST writes served at once; past it they are answered 429 (0: no limit).
    #[arg(long, default_value_t = 200)]
    pub max_mutating_requests_inflight: usize,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "127.0.0.1:6444")]
    pub metrics_listen: SocketAddr,
    /// Events each kind's watch cache keeps for watches that resume.
    #[arg(long, default_value_t = 10_000)]
    pub watch_cache_events: usize,
    /// How often an idle filtered watch gets a bookmark.
    #[arg(long, default_value = "5s", value_parser = skiff_api::parse_period)]
    pub bookmark_interval: Duration,
    /// The range Service cluster IPs come from (its tenth address is kept for the DNS Service).
    #[arg(long, default_value = "10.43.0.0/16")]
    pub service_cluster_ip_range: skiff_api::cidr::Cidr,
    /// The range NodePort and LoadBalancer Services' node ports come from.
    #[arg(long, default_value = "30000-32767")]
    pub service_node_port_range: allocator::PortRange,
    /// An EncryptionConfiguration (YAML): Secrets are stored encrypted with
    /// its first key; at start, values written with another are re-encrypted.
    #[arg(long)]
    pub encryption_provider_config: Option<std::path::PathBuf>,
    /// Append a JSON line (an audit.k8s.io/v1 Event) per mutating request here.
    #[arg(long)]
    pub audit_log_path: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub tls: skiff_pki::serve::TlsFlags,
    /// Bearer tokens, one per line: `token,user,uid[,"group1,group2"]`.
    #[arg(long)]
    pub token_auth_file: Option<std::path::PathBuf>,
    /// Let calls without credentials in as `system:anonymous` (authorization
    /// still decides what they may do). Off: they are refused.
    #[arg(long, num_args = 0..=1, default_value_t = false, default_missing_value = "true")]
    pub anonymous_auth: bool,
    /// The CA (PEM) that signed the kubelets' serving certificates; with it
    /// the apiserver calls kubelets over TLS.
    #[arg(long, requires_all = ["kubelet_client_certificate", "kubelet_client_key"])]
    pub kubelet_certificate_authority: Option<std::path::PathBuf>,
    /// The client certificate (PEM) the apiserver presents to kubelets.
    #[arg(long, requires = "kubelet_certificate_authority")]
    pub kubelet_client_certificate: Option<std::path::PathBuf>,
    /// Its private key (PEM).
    #[arg(long, requires = "kubelet_certificate_authority")]
    pub kubelet_client_key: Option<std::path::PathBuf>,
    /// The private key (PEM, PKCS#8 ECDSA P-256) ServiceAccount tokens are
    /// signed and verified with. Without it no tokens are issued or accepted.
    #[arg(long)]
    pub service_account_key_file: Option<std::path::PathBuf>,
    /// The issuer (`iss`) of ServiceAccount tokens.
    #[arg(long, default_value = "https://kubernetes.default.svc.cluster.local")]
    pub service_account_issuer: String,
    /// Audiences a token presented to the API must name one of (default:
    /// the issuer), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub api_audiences: Vec<String>,
    /// Who decides what callers may do: `RBAC` (the cluster's Roles and
    /// bindings) or `AlwaysAllow`.
    #[arg(long, value_enum, default_value = "RBAC")]
    pub authorization_mode: AuthorizationMode,
}

/// `--rest-listen`: an address, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestListen(pub Option<SocketAddr>);

impl std::str::FromStr for RestListen {
    type Err = std::net::AddrParseError;
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "off" => Ok(RestListen(None)),
            addr => addr.parse().map(|a| RestListen(Some(a))),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthorizationMode {
    #[value(name = "RBAC")]
    Rbac,
    #[value(name = "AlwaysAllow")]
    AlwaysAllow,
}

/// How the apiserver reaches kubelets: over TLS with its own client
/// certificate when `--kubelet-certificate-authority` is given.
fn kubelets(config: &Config) -> Result<proxy::Kubelets, Error> {
    let (Some(ca), Some(cert), Some(key)) =
        (&config.kubelet_certificate_authority, &config.kubelet_client_certificate, &config.kubelet_client_key)
    else {
        return Ok(proxy::Kubelets::default());
    };
    let read = |path: &std::path::PathBuf| {
        std::fs::read(path).map_err(|source| Error::KubeletTls { path: path.display().to_string(), source })
    };
    Ok(proxy::Kubelets::with_tls(&read(ca)?, &read(cert)?, &read(key)?))
}

/// The largest request the API accepts: above the 1.5 MiB object limit so
/// that an oversized object gets a message naming that limit.
const MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;

/// Runs the apiserver until `shutdown` resolves, then drains: watches end
/// with UNAVAILABLE so clients reconnect elsewhere, in-flight calls finish.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let ops = ServiceOps::start(config.metrics_listen).await?;
    let grpc = GrpcMetrics::register(&ops.metrics)?;
    let etcd_latency = ops.metrics.register(HistogramVec::new(
        HistogramOpts::new("skiff_apiserver_etcd_request_duration_seconds", "Latency of etcd calls by operation")
            .buckets(skiff_telemetry::DURATION_BUCKETS.to_vec()),
        &["operation"],
    )?)?;
    let watchers = ops.metrics.register(IntGauge::new("skiff_apiserver_watchers", "Open client watches")?)?;

    let etcd_tls = storage::EtcdTls::from_flags(&config.etcd_cafile, &config.etcd_certfile, &config.etcd_keyfile)?;
    let etcd: Arc<dyn storage::Storage> =
        Arc::new(storage::Etcd::connect(&config.etcd_endpoints, etcd_tls, etcd_latency).await?);
    let storage: Arc<dyn storage::Storage> = match &config.encryption_provider_config {
        Some(path) => {
            let encrypted = storage::Encrypted::new(etcd, encryption::Encryption::load(path)?);
            let rewritten = encrypted.reencrypt().await?;
            tracing::info!(config = %path.display(), rewritten, "encrypting Secrets at rest");
            Arc::new(encrypted)
        }
        None => etcd,
    };
    let mut caches = HashMap::new();
    let mut synced = Vec::new();
    for info in KINDS {
        let cache = cache::WatchCache::new(info, config.watch_cache_events);
        let (ready_tx, ready_rx) = signal::channel(false);
        tokio::spawn(cache.clone().run(storage.clone(), ready_tx, ops.stop.receiver()));
        synced.push(ready_rx);
        caches.insert(info.kind, cache);
    }
    let registry = Arc::new(registry::Registry::new(
        storage,
        caches,
        allocator::Ranges { cluster_ips: config.service_cluster_ip_range, node_ports: config.service_node_port_range },
    ));
    for mut rx in synced {
        let _ = rx.wait_for(|r| *r).await;
    }
    registry.ensure_system_namespaces().await?;
    registry.ensure_default_storage_class().await?;
    registry.ensure_default_service_accounts().await?;
    tokio::spawn(registry.clone().keep_default_service_accounts(ops.stop.receiver()));
    auth::ensure_default_policy(&registry).await?;
    let authorizer = Arc::new(match config.authorization_mode {
        AuthorizationMode::Rbac => auth::Authorizer::Rbac {
            nodes: auth::node_authorizer::NodeAuthorizer::new(&registry),
            rbac: auth::RbacAuthorizer::new(&registry),
        },
        AuthorizationMode::AlwaysAllow => auth::Authorizer::AlwaysAllow,
    });
    let tokens = match &config.token_auth_file {
        Some(path) => auth::tokens::TokenFile::load(path)?,
        None => auth::tokens::TokenFile::default(),
    };
    let token_signer = match &config.service_account_key_file {
        Some(path) => {
            let audiences = match config.api_audiences.is_empty() {
                true => vec![config.service_account_issuer.clone()],
                false => config.api_audiences.clone(),
            };
            Some(Arc::new(auth::serviceaccount::TokenSigner::load(
                path,
                config.service_account_issuer.clone(),
                audiences,
            )?))
        }
        None => None,
    };
    let service_accounts =
        token_signer.clone().map(|signer| auth::ServiceAccountTokens { signer, registry: registry.clone() });
    let authenticator = Arc::new(auth::Authenticator::new(
        tokens,
        service_accounts,
        auth::bootstrap_tokens::BootstrapTokens::new(registry.clone()),
        config.anonymous_auth,
    ));
    let authenticate = auth::Authenticate(authenticator.clone());
    let tls = config.tls.server_config()?;

    // Logs and exec, streamed through to the pod's kubelet (proxy.rs).
    let pod_proxy = Arc::new(proxy::PodProxyService {
        registry: registry.clone(),
        authorizer: authorizer.clone(),
        metrics: grpc.clone(),
        shutdown: ops.stop.receiver(),
        kubelets: kubelets(&config)?,
    });
    let audit = match &config.audit_log_path {
        Some(path) => Some(
            audit::AuditLog::open(path)
                .await
                .map_err(|source| Error::AuditLog { path: path.display().to_string(), source })?,
        ),
        None => None,
    };
    let service = Arc::new(service::ObjectsService {
        registry,
        authorizer,
        token_signer,
        metrics: grpc,
        watchers,
        shutdown: ops.stop.receiver(),
        bookmark_interval: config.bookmark_interval,
        audit,
    });
    if let RestListen(Some(addr)) = config.rest_listen {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| Error::Listen { addr, source })?;
        tracing::info!(%addr, "serving the Kubernetes REST API");
        let rest = Arc::new(rest::Rest {
            objects: service.clone(),
            pods: pod_proxy.clone(),
            authenticator,
            max_body: MAX_MESSAGE_BYTES,
            inflight: rest::InFlight::new(config.max_requests_inflight, config.max_mutating_requests_inflight),
        });
        tokio::spawn(rest::serve(listener, tls.clone(), rest, ops.stop.raised()));
    }
    let pod_proxy = PodProxyServer::from_arc(pod_proxy);
    let server = ObjectsServer::from_arc(service)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let listen = |source| Error::Listen { addr: config.listen, source };
    let listener = tokio::net::TcpListener::bind(config.listen).await.map_err(listen)?;
    tracing::info!(
        addr = %listener.local_addr().map_err(listen)?,
        tls = tls.is_some(),
        authorization = ?config.authorization_mode,
        "serving the object API"
    );
    ops.readiness.set_ready();
    let incoming = skiff_pki::serve::incoming(listener, tls);
    let drain = {
        let (readiness, stop) = (ops.readiness.clone(), ops.stop.clone());
        async move {
            shutdown.await;
            tracing::info!("shutting down");
            readiness.set_not_ready("shutting down");
            // Ends open watches (UNAVAILABLE) so the server's drain can finish.
            stop.raise();
        }
    };
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(InterceptedService::new(server, authenticate.clone()))
        .add_service(InterceptedService::new(pod_proxy, authenticate))
        .serve_with_incoming_shutdown(incoming, drain)
        .await
        .map_err(Error::Serve)?;
    ops.shutdown().await;
    Ok(())
}
