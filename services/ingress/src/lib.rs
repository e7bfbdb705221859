//! skiff-ingress: outside HTTP traffic into the cluster, after ingress-nginx.
//!
//! - Informers on Ingresses, IngressClasses, Services and Endpoints feed the
//!   [`view`] loop, which rebuilds the [`routes`] table after each batch of
//!   changes and swaps it in atomically; requests never wait on the API.
//! - [`proxy`] serves requests through pingora: host and path routing,
//!   straight to the Service's ready endpoints ([`balance`]: round robin,
//!   least connections or a consistent hash; failing endpoints ejected for a
//!   while and connect failures retried elsewhere), `X-Forwarded-*`,
//!   `X-Request-Id`, trace context, one access-log line per request.
//! - [`status`] publishes `status.loadBalancer` on each Ingress it serves and
//!   records a Warning Event for each backend it cannot serve.
//! - Listening starts once the informers have synced (/readyz with it); on
//!   shutdown it stops accepting and drains requests in flight until
//!   `--shutdown-grace`.
#![forbid(unsafe_code)]

pub mod balance;
mod error;
pub mod lb;
mod listen;
mod metrics;
pub mod proxy;
pub mod routes;
pub mod settings;
pub mod status;
pub mod tls;
pub mod view;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use k8s_openapi::api::core::v1::{Endpoints, Secret, Service};
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use skiff_api::parse_duration;
use skiff_client::{key_of, Controller, Informer, InformerEvent, ListParams, WorkQueue};
use skiff_telemetry::prometheus::IntGauge;
use skiff_telemetry::ServiceOps;
use tokio::sync::watch;
use tokio::task::JoinSet;

pub use error::Error;

use crate::metrics::IngressMetrics;
use crate::proxy::{IngressProxy, SharedTable};
use crate::routes::RouteTable;
use crate::tls::Certs;
use crate::view::{Stores, View};

/// Flags of `skiff-ingress`.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    #[command(flatten)]
    pub api: skiff_client::ApiFlags,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "127.0.0.1:10258")]
    pub metrics_listen: SocketAddr,
    /// Where plain HTTP is served.
    #[arg(long, default_value = "0.0.0.0:80")]
    pub http_listen: SocketAddr,
    /// Where HTTPS is served, with certificates from the Ingresses' TLS
    /// Secrets chosen by SNI.
    #[arg(long, default_value = "0.0.0.0:443")]
    pub https_listen: SocketAddr,
    /// Serve no HTTPS (and redirect nothing to it).
    #[arg(long)]
    pub no_https: bool,
    /// The IngressClass served: Ingresses naming it, and those naming none
    /// when it is marked default.
    #[arg(long, default_value = "skiff")]
    pub ingress_class: String,
    /// Addresses published in each served Ingress's status.loadBalancer,
    /// comma-separated (default: the HTTP listen address, or 127.0.0.1
    /// when that is a wildcard).
    #[arg(long, value_delimiter = ',')]
    pub publish_address: Vec<IpAddr>,
    /// Addresses LoadBalancer Services are given, comma-separated (default:
    /// the published addresses). Services share one on different ports.
    #[arg(long, value_delimiter = ',')]
    pub lb_address_pool: Vec<IpAddr>,
    /// On shutdown, how long requests in flight may take to finish.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// Whether spans are exported (OTLP configured): then each request gets
    /// a span, and its trace context goes upstream. Set by main.
    #[arg(skip)]
    pub trace_requests: bool,
}

impl Config {
    fn published(&self) -> Vec<IpAddr> {
        if !self.publish_address.is_empty() {
            return self.publish_address.clone();
        }
        let ip = self.http_listen.ip();
        vec![if ip.is_unspecified() { IpAddr::V4(Ipv4Addr::LOCALHOST) } else { ip }]
    }

    fn lb_pool(&self) -> Vec<IpAddr> {
        if self.lb_address_pool.is_empty() {
            self.published()
        } else {
            self.lb_address_pool.clone()
        }
    }
}

/// Runs skiff-ingress until `shutdown` resolves, then drains.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), Error> {
    let client = config.api.client().map_err(Error::Connect)?;
    let ops = ServiceOps::start(config.metrics_listen).await?;
    let metrics = IngressMetrics::register(&ops.metrics)?;
    // Bound now so a taken port fails at start with its address named;
    // served only after sync, so no one gets a 404 from an empty table.
    let http = listen::bind(config.http_listen, "HTTP")?;
    let https = (!config.no_https).then(|| listen::bind(config.https_listen, "HTTPS")).transpose()?;

    let ing_informer = Informer::new(client.api::<Ingress>(""), ListParams::default());
    let class_informer = Informer::new(client.api::<IngressClass>(""), ListParams::default());
    let svc_informer = Informer::new(client.api::<Service>(""), ListParams::default());
    let eps_informer = Informer::new(client.api::<Endpoints>(""), ListParams::default());
    let secret_informer = Informer::new(client.api::<Secret>(""), ListParams::default());
    let stores = Stores {
        ingresses: ing_informer.store(),
        classes: class_informer.store(),
        services: svc_informer.store(),
        endpoints: eps_informer.store(),
        secrets: secret_informer.store(),
    };
    let table: SharedTable = Arc::new(ArcSwap::from_pointee(RouteTable::default()));
    let certs = Arc::new(ArcSwap::from_pointee(Certs::default()));
    let tls_config = tls::server_config(certs.clone()).map_err(Error::Tls)?;
    let view = View::new(config.ingress_class.clone(), stores.clone(), table.clone(), certs, metrics.clone());
    let changes = view.subscribe();
    let status_queue = WorkQueue::new();
    let mut tasks = JoinSet::new();
    tasks.spawn(feed_status_queue(stores.clone(), status_queue.clone()));
    tasks.spawn(ing_informer.run(ops.stop.raised()));
    tasks.spawn(class_informer.run(ops.stop.raised()));
    tasks.spawn(svc_informer.run(ops.stop.raised()));
    tasks.spawn(eps_informer.run(ops.stop.raised()));
    tasks.spawn(secret_informer.run(ops.stop.raised()));

    let result: Result<(), Error> = async {
        tokio::pin!(shutdown);
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            synced = stores.wait_synced() => synced?,
        }
        view.rebuild();
        tasks.spawn(view.run(changes, ops.stop.raised()));
        let reconciler = status::StatusReconciler::new(
            client.clone(),
            stores.clone(),
            config.ingress_class.clone(),
            config.published(),
        );
        tasks.spawn(run_controller(reconciler, status_queue, ops.stop.raised()));
        let lb_queue = WorkQueue::new();
        let lb_stores = lb::LbStores { services: stores.services.clone(), endpoints: stores.endpoints.clone() };
        let balancers = lb::LoadBalancers::new(config.lb_pool(), lb_stores, client.clone(), lb_queue.clone());
        tasks.spawn(run_controller(balancers.status(client.clone()), lb_queue, ops.stop.raised()));
        let lb_changes = balancers.subscribe();
        tasks.spawn(balancers.run(lb_changes, ops.stop.raised()));

        let https_port = https.as_ref().map(|_| config.https_listen.port());
        let proxy = |scheme| IngressProxy {
            table: table.clone(),
            metrics: metrics.clone(),
            scheme,
            https_port,
            trace_requests: config.trace_requests,
        };
        let (stop_accepting, accepting) = watch::channel(false);
        let mut serving = JoinSet::new();
        serving.spawn(listen::serve_http(proxy("http"), http, accepting.clone()));
        if let Some(https) = https {
            let addr = config.https_listen;
            let https = tokio::net::TcpListener::from_std(https)
                .map_err(|source| Error::Bind { what: "HTTPS", addr, source })?;
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls_config));
            serving.spawn(listen::serve_tls(proxy("https"), https, acceptor, accepting));
        }
        ops.readiness.set_ready();
        tracing::info!(http = %config.http_listen, https = ?https_port.map(|_| config.https_listen), class = %config.ingress_class, "serving");
        shutdown.await;

        ops.readiness.set_not_ready("shutting down");
        let _ = stop_accepting.send(true);
        while serving.join_next().await.is_some() {}
        drain(&metrics.active, config.shutdown_grace).await;
        Ok(())
    }
    .await;

    ops.shutdown().await;
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    result
}

async fn run_controller<R: skiff_client::Reconcile>(
    reconciler: R,
    queue: WorkQueue<String>,
    shutdown: impl Future<Output = ()>,
) {
    if let Err(e) = Controller::new(Arc::new(reconciler), queue).run(shutdown).await {
        tracing::error!(controller = R::NAME, error = %e, "controller stopped");
    }
}

/// Waits for requests in flight to finish, up to `grace`.
async fn drain(in_flight: &IntGauge, grace: Duration) {
    let deadline = Instant::now() + grace;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    while in_flight.get() > 0 && Instant::now() < deadline {
        tick.tick().await;
    }
    match in_flight.get() {
        0 => tracing::info!("drained"),
        left => tracing::warn!(left, "shutdown grace ran out with requests in flight"),
    }
}

/// Puts each Ingress whose status or Events may need writing on the queue:
/// itself when it changes, every Ingress of a namespace when one of its
/// Services changes, and all of them when an IngressClass changes.
async fn feed_status_queue(stores: Stores, queue: WorkQueue<String>) {
    let mut ingresses = stores.ingresses.subscribe();
    let mut services = stores.services.subscribe();
    let mut classes = stores.classes.subscribe();
    let mut secrets = stores.secrets.subscribe();
    let enqueue_where = |pred: &dyn Fn(&Ingress) -> bool| {
        for ing in stores.ingresses.list() {
            if pred(&ing) {
                queue.add(key_of(ing.as_ref()));
            }
        }
    };
    loop {
        tokio::select! {
            Some(ev) = ingresses.recv() => queue.add(ev.key()),
            Some(ev) = services.recv() => {
                let ns = namespace_of(&ev);
                enqueue_where(&|ing| ing.metadata.namespace.as_deref() == Some(ns.as_str()));
            }
            Some(_) = classes.recv() => enqueue_where(&|_| true),
            Some(ev) = secrets.recv() => {
                let ns = ev.object().metadata.namespace.clone().unwrap_or_default();
                enqueue_where(&|ing| ing.metadata.namespace.as_deref() == Some(ns.as_str()));
            }
            else => return,
        }
    }
}

fn namespace_of(ev: &InformerEvent<Service>) -> String {
    ev.object().metadata.namespace.clone().unwrap_or_default()
}
