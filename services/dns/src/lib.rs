//! skiff-dns: the cluster's DNS server, after CoreDNS' kubernetes plugin.
//!
//! - Informers on Services, Endpoints and Pods feed the [`view`] loop,
//!   which rebuilds the [`zone`] after each batch of changes and swaps it
//!   in; queries are answered from memory, never from the API.
//! - Names under `--cluster-domain` are answered by the zone (records,
//!   NODATA, or NXDOMAIN with the SOA); everything else is [`forward`]ed to
//!   the upstream resolvers. See [`handler`].
//! - UDP and TCP on `--listen`, served once the informers have synced;
//!   /readyz turns ready at the same moment.
#![forbid(unsafe_code)]

mod error;
pub mod forward;
pub mod handler;
mod metrics;
pub mod view;
pub mod zone;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hickory_proto::rr::Name;
use hickory_server::Server;
use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use skiff_api::parse_duration;
use skiff_client::{Informer, ListParams};
use skiff_telemetry::ServiceOps;
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinSet;

pub use error::Error;

/// How long a TCP client may idle between queries before it is dropped.
const TCP_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest TCP response buffered per connection.
const TCP_RESPONSE_BUFFER: usize = 64;

/// Flags of `skiff-dns`.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    #[command(flatten)]
    pub api: skiff_client::ApiFlags,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "127.0.0.1:10254")]
    pub metrics_listen: SocketAddr,
    /// Where DNS is served, over UDP and TCP.
    #[arg(long, default_value = "127.0.0.1:53")]
    pub listen: SocketAddr,
    /// Bind `--listen` even while its address is not on any interface yet
    /// (IP_FREEBIND), and serve it once it appears: a CNI bridge's gateway
    /// address, say, which the bridge gets with its first pod.
    #[arg(long)]
    pub freebind: bool,
    /// The cluster's DNS domain: `<svc>.<ns>.svc.<domain>`, `<ip>.<ns>.pod.<domain>`.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Resolvers for other names, comma-separated `IP[:PORT]`
    /// (default: the nameservers in /etc/resolv.conf).
    #[arg(long, value_delimiter = ',')]
    pub upstream: Vec<String>,
    /// TTL of cluster records (and of their negative answers).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub ttl: Duration,
}

/// Runs skiff-dns until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), Error> {
    let client = config.api.client().map_err(Error::Connect)?;
    let origin = Name::from_ascii(config.cluster_domain.trim_end_matches('.'))
        .map_err(|source| Error::ClusterDomain { domain: config.cluster_domain.clone(), source })?;
    let upstreams = upstreams(&config.upstream)?;
    let ttl = u32::try_from(config.ttl.as_secs()).unwrap_or(u32::MAX);
    let ops = ServiceOps::start(config.metrics_listen).await.map_err(Error::from)?;
    let dns_metrics = metrics::DnsMetrics::register(&ops.metrics)?;

    // Bound now so a taken port fails at start; served only after sync, so
    // no one gets NXDOMAIN from a zone not yet filled.
    let (udp, tcp) = bind(config.listen, config.freebind)?;
    let forwarder = if upstreams.is_empty() {
        tracing::warn!("no upstream resolvers: names outside the cluster domain get SERVFAIL");
        None
    } else {
        Some(forward::Forwarder::new(&upstreams)?)
    };

    let svc_informer = Informer::new(client.api::<Service>(""), ListParams::default());
    let eps_informer = Informer::new(client.api::<Endpoints>(""), ListParams::default());
    let pod_informer = Informer::new(client.api::<Pod>(""), ListParams::default());
    let stores =
        view::Stores { services: svc_informer.store(), endpoints: eps_informer.store(), pods: pod_informer.store() };
    let zone: handler::SharedZone = Arc::new(RwLock::new(Arc::new(zone::Zone::new(&origin, ttl, 0))));
    let view = view::View::new(origin.clone(), ttl, stores.clone(), zone.clone(), dns_metrics.zone_names.clone());

    let mut tasks = JoinSet::new();
    let events = view.subscribe();
    tasks.spawn(svc_informer.run(ops.stop.raised()));
    tasks.spawn(eps_informer.run(ops.stop.raised()));
    tasks.spawn(pod_informer.run(ops.stop.raised()));

    let result: Result<(), Error> = async {
        tokio::pin!(shutdown);
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            synced = stores.wait_synced() => synced?,
        }
        view.rebuild();
        tasks.spawn(view.run(events, ops.stop.raised()));

        let mut server = Server::new(handler::Handler::new(zone, forwarder, dns_metrics));
        server.register_socket(udp);
        server.register_listener(tcp, TCP_TIMEOUT, TCP_RESPONSE_BUFFER);
        ops.readiness.set_ready();
        tracing::info!(listen = %config.listen, domain = %origin, ?upstreams, "serving DNS");
        tokio::select! {
            _ = &mut shutdown => {}
            done = server.block_until_done() => done.map_err(Error::Serve)?,
        }
        ops.readiness.set_not_ready("shutting down");
        server.shutdown_gracefully().await.map_err(Error::Serve)
    }
    .await;

    ops.shutdown().await;
    while tasks.join_next().await.is_some() {}
    result
}

/// The UDP socket and TCP listener on `addr`.
fn bind(addr: SocketAddr, freebind: bool) -> Result<(UdpSocket, TcpListener), Error> {
    use socket2::{Domain, Protocol, Socket, Type};
    let open = |protocol: &'static str, ty: Type, proto: Protocol| {
        let err = move |source| Error::Bind { protocol, addr, source };
        let socket = Socket::new(Domain::for_address(addr), ty, Some(proto)).map_err(err)?;
        if freebind {
            match addr {
                SocketAddr::V4(_) => socket.set_freebind_v4(true),
                SocketAddr::V6(_) => socket.set_freebind_v6(true),
            }
            .map_err(err)?;
        }
        if ty == Type::STREAM {
            // As tokio's TcpListener::bind does: a restart may find the
            // last run's connections in TIME_WAIT.
            socket.set_reuse_address(true).map_err(err)?;
        }
        socket.set_nonblocking(true).map_err(err)?;
        socket.bind(&addr.into()).map_err(err)?;
        Ok::<_, Error>((socket, err))
    };
    let (socket, err) = open("UDP", Type::DGRAM, Protocol::UDP)?;
    let udp = UdpSocket::from_std(socket.into()).map_err(err)?;
    let (socket, err) = open("TCP", Type::STREAM, Protocol::TCP)?;
    socket.listen(1024).map_err(err)?;
    let tcp = TcpListener::from_std(socket.into()).map_err(err)?;
    Ok((udp, tcp))
}

/// `--upstream`, or resolv.conf's nameservers when it is empty.
fn upstreams(flag: &[String]) -> Result<Vec<SocketAddr>, Error> {
    let given: Vec<&String> = flag.iter().filter(|s| !s.trim().is_empty()).collect();
    if !given.is_empty() {
        return given.into_iter().map(|s| forward::parse_upstream(s)).collect();
    }
    let text = std::fs::read_to_string(forward::RESOLV_CONF)
        .map_err(|source| Error::ResolvConf { path: forward::RESOLV_CONF, source })?;
    Ok(forward::parse_resolv_conf(&text))
}
