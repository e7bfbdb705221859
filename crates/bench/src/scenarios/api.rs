//! The object API's write throughput and watch fan-out, beside raw etcd.
//!
//! Writes: `clients` concurrent clients, each with its own connection,
//! create ConfigMaps as fast as they can; raw etcd gets the same number of
//! clients putting values of the same size. Fan-out: `watchers` watches
//! are open, one object is updated, and the time until every watcher has
//! the event is measured; raw etcd gets the same number of etcd watches.
//! Services: the same clients create `services` Services with no clusterIP,
//! so each create allocates an IP among all the Services already there;
//! the ConfigMap creates above are their baseline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use skiff_api::proto::{self, objects_client::ObjectsClient};
use skiff_client::Client;
use skiff_testkit::{Cluster, ClusterOptions};
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
    Ok(())
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
                record(&mut h, t.elapsed());
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
    let clients = (0..o.clients).map(|_| Client::new(&cluster.server())).collect::<Result<Vec<_>, _>>()?;
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
    let clients = (0..o.clients).map(|_| Client::new(&cluster.server())).collect::<Result<Vec<_>, _>>()?;
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
        let mut c = etcd_client::Client::connect([cluster.etcd_endpoint()], None).await?;
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

/// p50 and max, in ms, over rounds of the time for all watchers to see one
/// update (each round's figure is its slowest watcher).
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
        clients.push(ObjectsClient::connect(cluster.server()).await?);
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
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
                if ev.r#type == proto::watch_event::Type::Modified as i32 && tx.send(Instant::now()).is_err() {
                    return;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut rounds = Vec::new();
    for round in 1..=o.rounds {
        let started = Instant::now();
        writer.patch("ConfigMap", "default", "fanout", &json!({"data": {"n": round.to_string()}})).await?;
        let mut last = started;
        for _ in 0..o.watchers {
            let at = tokio::time::timeout(Duration::from_secs(30), rx.recv())
                .await?
                .ok_or_else(|| anyhow::anyhow!("watchers ended"))?;
            last = last.max(at);
        }
        rounds.push((last - started).as_secs_f64() * 1000.0);
    }
    for t in tasks {
        t.abort();
    }
    Ok(summarize(rounds)?)
}

async fn etcd_fanout(cluster: &Cluster, o: &Options) -> anyhow::Result<(f64, f64)> {
    let mut writer = etcd_client::Client::connect([cluster.etcd_endpoint()], None).await?;
    writer.put("/bench/fanout", "0", None).await?;
    let connections = o.watchers.div_ceil(STREAMS_PER_CONNECTION);
    let mut clients = Vec::new();
    for _ in 0..connections {
        clients.push(etcd_client::Client::connect([cluster.etcd_endpoint()], None).await?);
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let mut tasks = Vec::new();
    for i in 0..o.watchers {
        let mut stream = clients[i % connections].watch("/bench/fanout", None).await?;
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            while let Ok(Some(resp)) = stream.message().await {
                if !resp.events().is_empty() && tx.send(Instant::now()).is_err() {
                    return;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut rounds = Vec::new();
    for round in 1..=o.rounds {
        let started = Instant::now();
        writer.put("/bench/fanout", round.to_string(), None).await?;
        let mut last = started;
        for _ in 0..o.watchers {
            let at = tokio::time::timeout(Duration::from_secs(30), rx.recv())
                .await?
                .ok_or_else(|| anyhow::anyhow!("etcd watchers ended"))?;
            last = last.max(at);
        }
        rounds.push((last - started).as_secs_f64() * 1000.0);
    }
    for t in tasks {
        t.abort();
    }
    Ok(summarize(rounds)?)
}
