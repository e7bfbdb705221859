//! Cluster DNS: queries/s and p99 for Service names, from concurrent UDP
//! clients on loopback, with dnsmasq serving the same names from a hosts
//! file as the baseline (when installed: `apt-get install dnsmasq-base`).
//!
//! `services` Services are created with fixed ClusterIPs, skiff-dns starts,
//! and once it answers the last one, `clients` tasks each send
//! `queries_per_client` A queries one at a time (send, wait, next), so
//! latency includes only the server's time and loopback.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::stream::{self, StreamExt, TryStreamExt};
use serde_json::json;
use skiff_testkit::{Cluster, ClusterOptions};
use tokio::net::UdpSocket;

use crate::report::{figure, histogram, ms, ratio, record};

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Services in the cluster (and names in the baseline's hosts file).
    #[arg(long, default_value_t = 1000)]
    services: usize,
    /// Concurrent UDP clients.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Queries each client sends, one after the other.
    #[arg(long, default_value_t = 5000)]
    queries_per_client: usize,
}

/// A query without an answer in this long counts as lost, not as latency.
const QUERY_TIMEOUT: Duration = Duration::from_secs(1);

pub async fn run(o: Options) -> anyhow::Result<()> {
    anyhow::ensure!(o.services > 0 && o.services <= 65_000, "--services must be 1..=65000");
    let mut cluster = Cluster::start_with(ClusterOptions::default()).await?;
    println!("# {} services; {} clients x {} queries", o.services, o.clients, o.queries_per_client);
    let client = cluster.client();
    stream::iter(0..o.services)
        .map(|i| {
            let client = client.clone();
            async move {
                let svc = json!({
                    "apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": format!("svc-{i}")},
                    "spec": {"clusterIP": cluster_ip(i), "ports": [{"name": "http", "port": 80}]},
                });
                client.create("Service", "default", &svc).await.map(|_| ())
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await
        .context("creating services")?;

    let port = free_udp_port().await?;
    let listen = SocketAddr::from(([127, 0, 0, 1], port));
    // Upstream: an unused loopback port; the bench asks only cluster names.
    let args = [format!("--listen={listen}"), "--upstream=127.0.0.1:9".to_string()];
    cluster.start_service("dns", "skiff-dns", &args).await?;
    wait_answers(listen, &name(o.services - 1)).await.context("skiff-dns never answered the last service")?;
    let (qps, p99, lost) = hammer(listen, &o).await?;
    figure("dns_cluster_qps", qps, "queries/s");
    figure("dns_p99", p99, "ms");
    figure("dns_lost", lost as f64, "queries");

    match dnsmasq_baseline(&o).await {
        Ok((base_qps, base_p99, base_lost)) => {
            figure("dnsmasq_qps", base_qps, "queries/s");
            figure("dnsmasq_p99", base_p99, "ms");
            figure("dnsmasq_lost", base_lost as f64, "queries");
            ratio("dns_cluster_qps_vs_dnsmasq", qps, base_qps);
            ratio("dns_p99_vs_dnsmasq", p99, base_p99);
        }
        Err(e) => println!("# no dnsmasq baseline: {e:#}"),
    }
    Ok(())
}

fn cluster_ip(i: usize) -> String {
    format!("10.43.{}.{}", i / 250, i % 250 + 1)
}

fn name(i: usize) -> String {
    format!("svc-{i}.default.svc.cluster.local")
}

async fn free_udp_port() -> anyhow::Result<u16> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    Ok(socket.local_addr()?.port())
}

/// Polls `server` until `name` has an A answer (60 s at most).
async fn wait_answers(server: SocketAddr, name: &str) -> anyhow::Result<()> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    socket.connect(server).await?;
    let packet = encode_query(name);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut buf = [0u8; 1500];
    while Instant::now() < deadline {
        socket.send(&packet).await?;
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(200), socket.recv(&mut buf)).await {
            if let Some((0, answers)) = decode_reply(&buf[..n], 0) {
                if answers > 0 {
                    return Ok(());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("no answer for {name} from {server}")
}

/// Runs the clients against `server`: queries/s, p99 in ms, and lost queries.
async fn hammer(server: SocketAddr, o: &Options) -> anyhow::Result<(f64, f64, u64)> {
    let packets: Arc<Vec<Vec<u8>>> = Arc::new((0..o.services).map(|i| encode_query(&name(i))).collect());
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..o.clients {
        let packets = packets.clone();
        let per_client = o.queries_per_client;
        tasks.push(tokio::spawn(async move {
            let socket = UdpSocket::bind("127.0.0.1:0").await?;
            socket.connect(server).await?;
            let mut h = histogram();
            let mut lost = 0u64;
            let mut buf = [0u8; 1500];
            for q in 0..per_client {
                // Spread the clients over the names without a RNG.
                let mut packet = packets[(c * 7919 + q * 104_729) % packets.len()].clone();
                let id = (q as u16).wrapping_add(1);
                packet[..2].copy_from_slice(&id.to_be_bytes());
                let sent = Instant::now();
                socket.send(&packet).await?;
                let answered = loop {
                    match tokio::time::timeout_at((sent + QUERY_TIMEOUT).into(), socket.recv(&mut buf)).await {
                        // A late answer to an earlier query: keep waiting for ours.
                        Ok(Ok(n)) if buf.len() >= 2 && n >= 2 && buf[..2] != id.to_be_bytes() => continue,
                        Ok(Ok(n)) => break decode_reply(&buf[..n], id).is_some_and(|(rcode, a)| rcode == 0 && a > 0),
                        Ok(Err(_)) | Err(_) => break false,
                    }
                };
                if answered {
                    record(&mut h, sent.elapsed());
                } else {
                    lost += 1;
                }
            }
            anyhow::Ok((h, lost))
        }));
    }
    let mut all = histogram();
    let mut lost = 0;
    for t in tasks {
        let (h, l) = t.await??;
        all.add(&h)?;
        lost += l;
    }
    let elapsed = start.elapsed().as_secs_f64();
    Ok((all.len() as f64 / elapsed, ms(&all, 0.99), lost))
}

/// dnsmasq serving the same names from a hosts file, measured the same way.
async fn dnsmasq_baseline(o: &Options) -> anyhow::Result<(f64, f64, u64)> {
    let binary = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .context("dnsmasq is not installed")?;
    let dir = tempfile_dir()?;
    let hosts = dir.join("hosts");
    let lines: String = (0..o.services).map(|i| format!("{} {}\n", cluster_ip(i), name(i))).collect();
    std::fs::write(&hosts, lines)?;
    let port = free_udp_port().await?;
    let listen = SocketAddr::from(([127, 0, 0, 1], port));
    let mut child = tokio::process::Command::new(binary)
        .args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            "--user=root",
            "--pid-file=",
            "--local=/cluster.local/",
            "--cache-size=10000",
            "--dns-forward-max=1000",
        ])
        .arg(format!("--port={port}"))
        .arg(format!("--addn-hosts={}", hosts.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting dnsmasq")?;
    let result = async {
        wait_answers(listen, &name(o.services - 1)).await?;
        hammer(listen, o).await
    }
    .await;
    let _ = child.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("skiff-bench-dns-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// A recursive A query for `name`, id 0 (patched per send).
fn encode_query(name: &str) -> Vec<u8> {
    let mut p = vec![0, 0, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.trim_end_matches('.').split('.') {
        p.push(label.len() as u8);
        p.extend_from_slice(label.as_bytes());
    }
    p.extend_from_slice(&[0, 0, 1, 0, 1]);
    p
}

/// A reply's rcode and answer count, if it is a response with this id.
fn decode_reply(buf: &[u8], id: u16) -> Option<(u8, u16)> {
    if buf.len() < 12 || buf[..2] != id.to_be_bytes() || buf[2] & 0x80 == 0 {
        return None;
    }
    Some((buf[3] & 0x0f, u16::from_be_bytes([buf[6], buf[7]])))
}
