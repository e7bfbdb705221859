//! The object API's write throughput and watch fan-out, beside raw etcd.
//!
//! Writes: `clients` concurrent clients, each with its own connection,
//! create ConfigMaps as fast as they can; raw etcd gets the same number of
//! clients putting values of the same size. Fan-out: `watchers` watches
//! are open, one object is updated, and the time until every watcher has
//! the event is measured; raw etcd gets the same number of etcd watches.
//! Services: the same clients create `services` Services with no clusterIP,
//! so each create allocates an IP among all the Services already there;
//! the ConfigMap creates above are their baseline. REST: the same creates
//! through the Kubernetes REST front, and a list of `list_pods` pods
//! through both fronts, on the cluster without TLS.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use skiff_api::proto;
use skiff_client::Client;
use skiff_testkit::{Cluster, ClusterOptions};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::Barrier;

use crate::error::Error;
use crate::report::{figure, histogram, ms, ratio, record};
use crate::usage::usage;

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Concurrent writers.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Creates per writer.
    #[arg(long, default_value_t = 150)]
    creates_per_client: usize,
    /// Concurrent watchers for the fan-out figure.
    #[arg(long, default_value_t = 1000)]
    watchers: usize,
    /// Updates whose fan-out is timed.
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// Services created (spread over the clients) for the allocation figure.
    #[arg(long, default_value_t = 10_000)]
    services: usize,
    /// Pods listed whole, over gRPC and REST, for the list figures.
    #[arg(long, default_value_t = 10_000)]
    list_pods: usize,
}

/// Watch streams per connection: well under HTTP/2's usual stream limit.
const STREAMS_PER_CONNECTION: usize = 100;

pub async fn run(o: Options) -> anyhow::Result<()> {
    let cluster = Cluster::start_with(ClusterOptions::default()).await?;
    println!(
        "# {} clients x {} creates; {} watchers x {} rounds",
        o.clients, o.creates_per_client, o.watchers, o.rounds
    );
    let payload = "x".repeat(512);

    let apiserver = || usage("apiserver", cluster.apiserver_pid());
    let etcd = || usage("etcd", cluster.etcd.pid());
    let creates = (o.clients * o.creates_per_client) as f64;
    let (api_cpu0, etcd_cpu0) = (apiserver()?.cpu_s, etcd()?.cpu_s);
    let (skiff_rate, skiff_p99) = skiff_creates(&cluster, &o, &payload).await?;
    let (api_cpu1, etcd_cpu1) = (apiserver()?.cpu_s, etcd()?.cpu_s);
    let (etcd_rate, etcd_p99) = etcd_puts(&cluster, &o, &payload).await?;
    let etcd_cpu2 = etcd()?.cpu_s;
    figure("api_create_throughput", skiff_rate, "creates/s")?;
    figure("api_create_p99", skiff_p99, "ms")?;
    figure("etcd_put_throughput", etcd_rate, "puts/s")?;
    figure("etcd_put_p99", etcd_p99, "ms")?;
    ratio("api_create_throughput_vs_etcd", skiff_rate, etcd_rate)?;
    ratio("api_create_p99_vs_etcd", skiff_p99, etcd_p99)?;
    figure("api_create_cpu_apiserver", (api_cpu1 - api_cpu0) * 1e6 / creates, "us/create")?;
    figure("api_create_cpu_etcd", (etcd_cpu1 - etcd_cpu0) * 1e6 / creates, "us/create")?;
    figure("etcd_put_cpu_etcd", (etcd_cpu2 - etcd_cpu1) * 1e6 / creates, "us/put")?;

    let (services, service_rate, service_p99) = service_creates(&cluster, &o).await?;
    figure(format!("api_service_create_throughput_{services}"), service_rate, "creates/s")?;
    figure(format!("api_service_create_p99_{services}"), service_p99, "ms")?;
    ratio("api_service_create_throughput_vs_configmap", service_rate, skiff_rate)?;

    let skiff_fanout = skiff_fanout(&cluster, &o).await?;
    let etcd_fanout = etcd_fanout(&cluster, &o).await?;
    figure("api_watch_fanout_p50", skiff_fanout.0, "ms")?;
    figure("api_watch_fanout_max", skiff_fanout.1, "ms")?;
    figure("etcd_watch_fanout_p50", etcd_fanout.0, "ms")?;
    figure("etcd_watch_fanout_max", etcd_fanout.1, "ms")?;
    ratio("api_watch_fanout_p50_vs_etcd", skiff_fanout.0, etcd_fanout.0)?;
    figure("apiserver_rss", apiserver()?.rss_mib, "MiB")?;
    drop(cluster);

    // What TLS, authentication and RBAC cost a write: the same creates on
    // a cluster that has none of them.
    let insecure = Cluster::start_with(ClusterOptions { insecure: true, ..Default::default() }).await?;
    let (open_rate, open_p99) = skiff_creates(&insecure, &o, &payload).await?;
    figure("api_create_throughput_no_auth", open_rate, "creates/s")?;
    figure("api_create_p99_no_auth", open_p99, "ms")?;
    ratio("api_create_throughput_tls_rbac_vs_no_auth", skiff_rate, open_rate)?;
    rest_figures(&insecure, &o, &payload, open_rate).await
}

/// The Kubernetes REST front beside gRPC on the same cluster (without TLS,
/// so both pay the same transport): creates/s by the same number of
/// clients, and the latency of listing `list_pods` pods whole.
async fn rest_figures(cluster: &Cluster, o: &Options, payload: &str, grpc_rate: f64) -> anyhow::Result<()> {
    let mut clients = Vec::new();
    for _ in 0..o.clients {
        let mut rest = Rest::connect(cluster.rest_listen()).await?;
        rest.call(http::Method::GET, "/api/v1/namespaces/default", None, 200).await?;
        clients.push((rest, Arc::<str>::from(payload)));
    }
    let (rest_rate, rest_p99) = hammer(clients, o.creates_per_client, |(mut rest, payload), id, i| async move {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": format!("rest-{id}-{i}")}, "data": {"payload": &*payload}});
        let r = rest.call(http::Method::POST, "/api/v1/namespaces/default/configmaps", Some(cm.to_string()), 201).await;
        ((rest, payload), r.map(|_| ()))
    })
    .await?;
    figure("rest_create_throughput", rest_rate, "creates/s")?;
    figure("rest_create_p99", rest_p99, "ms")?;
    ratio("rest_create_throughput_vs_grpc", rest_rate, grpc_rate)?;

    let writers = (0..o.clients).map(|_| Client::connect(cluster.admin_config())).collect::<Result<Vec<_>, _>>()?;
    let per_writer = o.list_pods.div_ceil(writers.len().max(1));
    hammer(writers, per_writer, |client, id, i| async move {
        let pod = json!({"metadata": {"name": format!("list-{id}-{i}"), "labels": {"app": "bench"}},
                         "spec": {"containers": [{"name": "c", "image": "bench:1"}]}});
        let r = client.create("Pod", "default", &pod).await.map(|_| ()).map_err(Into::into);
        (client, r)
    })
    .await?;
    let pods = per_writer * o.clients;
    let grpc = Client::connect(cluster.admin_config())?;
    let mut rest = Rest::connect(cluster.rest_listen()).await?;
    let (mut grpc_ms, mut rest_ms) = (Vec::new(), Vec::new());
    for _ in 0..LIST_ROUNDS {
        let started = Instant::now();
        let listed = grpc.list("Pod", "default", &Default::default()).await?;
        grpc_ms.push(started.elapsed().as_secs_f64() * 1e3);
        anyhow::ensure!(listed.items.len() >= pods, "gRPC listed {} of {pods} pods", listed.items.len());
        let started = Instant::now();
        let body = rest.call(http::Method::GET, "/api/v1/namespaces/default/pods", None, 200).await?;
        // Decoded, as the gRPC client's list is.
        let listed: serde_json::Value = serde_json::from_slice(&body)?;
        rest_ms.push(started.elapsed().as_secs_f64() * 1e3);
        let items = listed["items"].as_array().map_or(0, Vec::len);
        anyhow::ensure!(items >= pods, "REST listed {items} of {pods} pods");
    }
    let (grpc_p50, _) = summarize(grpc_ms)?;
    let (rest_p50, _) = summarize(rest_ms)?;
    figure(format!("grpc_list_{pods}_pods_p50"), grpc_p50, "ms")?;
    figure(format!("rest_list_{pods}_pods_p50"), rest_p50, "ms")?;
    ratio(format!("rest_list_{pods}_pods_vs_grpc"), rest_p50, grpc_p50)?;
    Ok(())
}

/// Lists timed per figure.
const LIST_ROUNDS: usize = 5;

/// One HTTP/1.1 keep-alive connection to the REST API, as a client
/// library holds one.
struct Rest {
    sender: hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
}

impl Rest {
    async fn connect(addr: std::net::SocketAddr) -> anyhow::Result<Rest> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(Rest { sender })
    }

    /// Sends one request and reads the whole answer, which must have `status`.
    async fn call(
        &mut self,
        method: http::Method,
        path: &str,
        body: Option<String>,
        status: u16,
    ) -> anyhow::Result<bytes::Bytes> {
        use http_body_util::BodyExt;
        let request = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, "skiff")
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(body.unwrap_or_default())))?;
        // The connection takes the next request only once its task has
        // finished the last one; sending before that fails ("connection was
        // not ready") on a loaded machine.
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let code = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        anyhow::ensure!(code == status, "{path}: {code} {}", String::from_utf8_lossy(&body));
        Ok(body)
    }
}

/// Runs `per_client` timed operations on each of `clients` tasks at once;
/// returns operations/s and p99 latency in ms.
async fn hammer<C, F, Fut>(clients: Vec<C>, per_client: usize, op: F) -> anyhow::Result<(f64, f64)>
where
    C: Send + 'static,
    F: Fn(C, usize, usize) -> Fut + Send + Sync + Copy + 'static,
    Fut: std::future::Future<Output = (C, anyhow::Result<()>)> + Send,
{
    let n = clients.len();
    let barrier = Arc::new(Barrier::new(n + 1));
    let mut tasks = Vec::new();
    for (id, client) in clients.into_iter().enumerate() {
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = histogram();
            let mut client = client;
            barrier.wait().await;
            for i in 0..per_client {
                let t = Instant::now();
                let (c, r) = op(client, id, i).await;
                client = c;
                r?;
                record(&mut h, t.elapsed())?;
            }
            anyhow::Ok(h)
        }));
    }
    barrier.wait().await;
    let started = Instant::now();
    let mut all = histogram();
    for t in tasks {
        all.add(t.await??)?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(((n * per_client) as f64 / elapsed, ms(&all, 0.99)?))
}

async fn skiff_creates(cluster: &Cluster, o: &Options, payload: &str) -> anyhow::Result<(f64, f64)> {
    let clients = (0..o.clients).map(|_| Client::connect(cluster.admin_config())).collect::<Result<Vec<_>, _>>()?;
    // Warm every connection so connecting is not timed.
    for c in &clients {
        c.get("Namespace", "", "default").await?;
    }
    let payload: Arc<str> = payload.into();
    let clients: Vec<(Client, Arc<str>)> = clients.into_iter().map(|c| (c, payload.clone())).collect();
    hammer(clients, o.creates_per_client, |(client, payload), id, i| async move {
        let cm = json!({"metadata": {"name": format!("bench-{id}-{i}")}, "data": {"payload": &*payload}});
        let r = client.create("ConfigMap", "default", &cm).await.map(|_| ()).map_err(Into::into);
        ((client, payload), r)
    })
    .await
}

/// Returns how many Services were created, creates/s and p99 in ms.
async fn service_creates(cluster: &Cluster, o: &Options) -> anyhow::Result<(usize, f64, f64)> {
    let clients = (0..o.clients).map(|_| Client::connect(cluster.admin_config())).collect::<Result<Vec<_>, _>>()?;
    for c in &clients {
        c.get("Namespace", "", "default").await?;
    }
    let per_client = o.services.div_ceil(clients.len().max(1));
    let total = per_client * clients.len();
    let (rate, p99) = hammer(clients, per_client, |client, id, i| async move {
        let svc = json!({"metadata": {"name": format!("bench-{id}-{i}")},
                         "spec": {"ports": [{"port": 80, "targetPort": 8080}]}});
        let r = client.create("Service", "default", &svc).await.map(|_| ()).map_err(Into::into);
        (client, r)
    })
    .await?;
    Ok((total, rate, p99))
}

async fn etcd_puts(cluster: &Cluster, o: &Options, payload: &str) -> anyhow::Result<(f64, f64)> {
    let mut clients = Vec::new();
    for _ in 0..o.clients {
        let mut c = cluster.etcd_client().await?;
        c.get("warm", None).await?;
        clients.push((c, payload.to_string()));
    }
    hammer(clients, o.creates_per_client, |(mut client, payload), id, i| async move {
        // The same shape of write the apiserver makes: a create-if-absent txn.
        let key = format!("/bench/configmaps/{id}/{i}");
        let txn = etcd_client::Txn::new()
            .when([etcd_client::Compare::mod_revision(key.as_str(), etcd_client::CompareOp::Equal, 0)])
            .and_then([etcd_client::TxnOp::put(key.as_str(), payload.as_bytes(), None)]);
        let r = client.txn(txn).await.map(|_| ()).map_err(Into::into);
        ((client, payload), r)
    })
    .await
}

/// One watcher's sight of a write: which watcher, the write's revision,
/// and when.
type Sighting = (usize, String, Instant);

/// How long one write may take to reach every watcher.
const FANOUT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a warm-up write is waited for before the next: a watcher that
/// registered too late for it sees the next one.
const WARM_UP_WRITE: Duration = Duration::from_secs(5);

/// p50 and max, in ms, over `rounds` writes of the time until every one of
/// `watchers` has seen the write (each round's figure is its slowest
/// watcher). `write(n)` writes and returns the write's revision. First,
/// untimed, writes until one reaches every watcher: a watch opened is not
/// yet a watch registered, and one that misses a timed write would be
/// waited for in vain.
async fn fan_out<W, Fut>(
    mut write: W,
    sightings: &mut UnboundedReceiver<Sighting>,
    watchers: usize,
    rounds: usize,
) -> anyhow::Result<(f64, f64)>
where
    W: FnMut(usize) -> Fut,
    Fut: Future<Output = anyhow::Result<String>>,
{
    let warm_until = Instant::now() + FANOUT_TIMEOUT;
    let mut n = 0;
    loop {
        n += 1;
        let started = Instant::now();
        let revision = write(n).await?;
        if all_saw(sightings, watchers, &revision, started, WARM_UP_WRITE).await?.is_some() {
            break;
        }
        anyhow::ensure!(Instant::now() < warm_until, "the watchers never all saw one write");
    }
    let mut times = Vec::new();
    for _ in 0..rounds {
        n += 1;
        let started = Instant::now();
        let revision = write(n).await?;
        let took = all_saw(sightings, watchers, &revision, started, FANOUT_TIMEOUT).await?;
        times.push(took.with_context(|| format!("not every watcher saw revision {revision}"))?);
    }
    Ok(summarize(times)?)
}

/// ms from `started` until each of `watchers` has seen `revision`, or None
/// after `timeout`. Sightings of earlier writes are passed over.
async fn all_saw(
    sightings: &mut UnboundedReceiver<Sighting>,
    watchers: usize,
    revision: &str,
    started: Instant,
    timeout: Duration,
) -> anyhow::Result<Option<f64>> {
    let deadline = started + timeout;
    let mut seen = HashSet::new();
    let mut last = started;
    while seen.len() < watchers {
        match tokio::time::timeout_at(deadline.into(), sightings.recv()).await {
            Err(_) => return Ok(None),
            Ok(None) => anyhow::bail!("the watchers ended"),
            Ok(Some((watcher, rev, at))) if rev == revision => {
                seen.insert(watcher);
                last = last.max(at);
            }
            Ok(Some(_)) => {}
        }
    }
    Ok(Some((last - started).as_secs_f64() * 1000.0))
}

/// p50 and max of the rounds' times.
fn summarize(mut rounds: Vec<f64>) -> Result<(f64, f64), Error> {
    rounds.sort_by(f64::total_cmp);
    let p50 = rounds.get(rounds.len() / 2).copied();
    p50.zip(rounds.last().copied()).ok_or(Error::NoSamples { what: "fan-out round" })
}

async fn skiff_fanout(cluster: &Cluster, o: &Options) -> anyhow::Result<(f64, f64)> {
    let writer = cluster.client();
    writer.create("ConfigMap", "default", &json!({"metadata": {"name": "fanout"}, "data": {"n": "0"}})).await?;
    // Raw gRPC streams: like the etcd watchers below, the watchers only
    // receive the event and don't decode the object, so the two figures
    // measure the same thing — the servers' fan-out.
    let connections = o.watchers.div_ceil(STREAMS_PER_CONNECTION);
    let mut clients = Vec::new();
    for _ in 0..connections {
        clients.push(cluster.client().objects());
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Sighting>();
    let mut tasks = Vec::new();
    for i in 0..o.watchers {
        let req = proto::WatchRequest {
            kind: "ConfigMap".into(),
            namespace: "default".into(),
            field_selector: "metadata.name=fanout".into(),
            ..Default::default()
        };
        let mut stream = clients[i % connections].watch(req).await?.into_inner();
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            while let Ok(Some(ev)) = stream.message().await {
                let at = Instant::now();
                if ev.r#type == proto::watch_event::Type::Modified as i32
                    && tx.send((i, ev.resource_version, at)).is_err()
                {
                    return;
                }
            }
        }));
    }
    let write = |n: usize| {
        let writer = writer.clone();
        async move {
            let patched =
                writer.patch("ConfigMap", "default", "fanout", &json!({"data": {"n": n.to_string()}})).await?;
            let revision = patched["metadata"]["resourceVersion"].as_str().map(str::to_string);
            revision.context("the patched ConfigMap has no resourceVersion")
        }
    };
    let result = fan_out(write, &mut rx, o.watchers, o.rounds).await;
    for t in tasks {
        t.abort();
    }
    result
}

async fn etcd_fanout(cluster: &Cluster, o: &Options) -> anyhow::Result<(f64, f64)> {
    let writer = cluster.etcd_client().await?;
    let connections = o.watchers.div_ceil(STREAMS_PER_CONNECTION);
    let mut clients = Vec::new();
    for _ in 0..connections {
        clients.push(cluster.etcd_client().await?);
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Sighting>();
    let mut tasks = Vec::new();
    for i in 0..o.watchers {
        let mut stream = clients[i % connections].watch("/bench/fanout", None).await?;
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            while let Ok(Some(resp)) = stream.message().await {
                let at = Instant::now();
                for kv in resp.events().iter().filter_map(|e| e.kv()) {
                    if tx.send((i, kv.mod_revision().to_string(), at)).is_err() {
                        return;
                    }
                }
            }
        }));
    }
    let write = |n: usize| {
        let mut writer = writer.clone();
        async move {
            let put = writer.put("/bench/fanout", n.to_string(), None).await?;
            let revision = put.header().map(|h| h.revision().to_string());
            revision.context("etcd's put response has no header")
        }
    };
    let result = fan_out(write, &mut rx, o.watchers, o.rounds).await;
    for t in tasks {
        t.abort();
    }
    result
}
